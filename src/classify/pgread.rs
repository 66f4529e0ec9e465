//! The second reader: PostgreSQL's own grammar (libpg_query, PostgreSQL
//! 18's `gram.y` compiled in by the `pg_query` crate), for what sqlparser
//! cannot parse.
//!
//! Invariants:
//! - sqlparser stays the first reader: a text it parses is judged as
//!   before. Each statement of a text it cannot parse is cut out by
//!   PostgreSQL's own statement boundaries and given to sqlparser alone
//!   first; only what it still cannot read is judged from PostgreSQL's tree.
//! - The tree is walked whole (every node of every type, through its serde
//!   form), so nothing nested in an unfamiliar node escapes: every relation
//!   is an access whose kind comes from the nearest statement that holds it
//!   (a write for a DML target, a lock under `FOR UPDATE`, DDL under any
//!   statement that is not a read or a known harmless utility), every
//!   function call is judged as the first reader judges it.
//! - A text PostgreSQL's grammar rejects runs nothing on a server whose
//!   grammar is no newer (a simple Query or Parse is parsed whole before
//!   anything runs): it is passed on, and the client gets the server's own
//!   error ([`Special::SyntaxError`]; the session refuses it on a newer
//!   server).

use serde_json::Value;

use super::walk::Walker;
use super::{CursorOp, Deallocate, Op, Prepared, RelationName, Special, StatementInfo};

/// The PostgreSQL major version whose grammar this reader has.
pub const GRAMMAR_MAJOR: u32 = 18;

/// Classifies `sql` with PostgreSQL's grammar; None if the library fails in
/// a way that is not a syntax error (then the caller's fallback judges).
pub(crate) fn classify(sql: &str) -> Option<Vec<StatementInfo>> {
    let parsed = match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
        Ok(p) => p,
        // Only a syntax error proper: the library's other refusals (its
        // stack depth limit is smaller than a server's) say nothing of
        // what the server would run.
        Err(pg_query::Error::Parse(message)) if is_syntax_error(&message) => {
            return Some(vec![syntax_error_statement(message)])
        }
        Err(_) => return None,
    };
    let mut out = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let start = raw.stmt_location.max(0) as usize;
        let end = match raw.stmt_len {
            0 => sql.len(),
            n => (start + n as usize).min(sql.len()),
        };
        let text = sql.get(start..end).unwrap_or("");
        if let Some(first) = super::first_reader(text) {
            out.extend(first);
            continue;
        }
        let Some(node) = raw.stmt.as_deref() else {
            continue;
        };
        let tree = serde_json::to_value(node).ok()?;
        out.push(statement(&tree)?);
    }
    Some(out)
}

/// The statement that stands for a whole text PostgreSQL's grammar rejects,
/// if it does (for a big text judged in pieces).
pub(crate) fn syntax_error(sql: &str) -> Option<StatementInfo> {
    match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
        Err(pg_query::Error::Parse(message)) if is_syntax_error(&message) => {
            Some(syntax_error_statement(message))
        }
        _ => None,
    }
}

fn syntax_error_statement(message: String) -> StatementInfo {
    StatementInfo {
        command: "SYNTAX ERROR".into(),
        specials: vec![Special::SyntaxError { message }],
        ..Default::default()
    }
}

/// Messages of PostgreSQL's grammar and lexer for text that is not SQL.
fn is_syntax_error(message: &str) -> bool {
    [
        "syntax error",
        "unterminated ",
        "zero-length delimited identifier",
        "trailing junk",
    ]
    .iter()
    .any(|m| message.starts_with(m))
}

/// One statement from its tree (`{"node": {"UpdateStmt": {...}}}`).
fn statement(tree: &Value) -> Option<StatementInfo> {
    let (kind, body) = node_of(tree)?;
    let mut w = Walker::default();
    let command = walk_statement(&mut w, kind, body);
    Some(super::stmt::finish(w, command))
}

/// The node type and body of a `Node` (`{"node": {"Kind": body}}`) or of a
/// bare `{"Kind": body}`.
fn node_of(v: &Value) -> Option<(&str, &Value)> {
    let v = v.get("node").unwrap_or(v);
    let obj = v.as_object()?;
    if obj.len() != 1 {
        return None;
    }
    let (k, body) = obj.iter().next()?;
    k.starts_with(|c: char| c.is_ascii_uppercase())
        .then_some((k.as_str(), body))
}

/// What a relation met while walking a statement is accessed as.
#[derive(Clone, Copy)]
enum Role<'a> {
    Read,
    Lock,
    Ddl(&'a str),
}

/// Statements that change no relation and run no code of their own.
const HARMLESS: &[&str] = &[
    "TransactionStmt",
    "VariableShowStmt",
    "DiscardStmt",
    "ListenStmt",
    "UnlistenStmt",
    "NotifyStmt",
    "CheckPointStmt",
    "ConstraintsSetStmt",
];

/// The command tag of a statement node: `CreateDomainStmt` → "CREATE DOMAIN".
fn command_of(kind: &str) -> String {
    match kind {
        "SelectStmt" => return "SELECT".into(),
        "CreateStmt" => return "CREATE TABLE".into(),
        "ViewStmt" => return "CREATE VIEW".into(),
        "IndexStmt" => return "CREATE INDEX".into(),
        "RuleStmt" => return "CREATE RULE".into(),
        "CreateTableAsStmt" => return "CREATE TABLE AS".into(),
        "CreateTrigStmt" => return "CREATE TRIGGER".into(),
        "DoStmt" => return "DO".into(),
        "VariableSetStmt" => return "SET".into(),
        "DeclareCursorStmt" => return "DECLARE CURSOR".into(),
        "ClosePortalStmt" => return "CLOSE CURSOR".into(),
        "DefineStmt" => return "CREATE".into(),
        "CreateSeqStmt" => return "CREATE SEQUENCE".into(),
        "CheckPointStmt" => return "CHECKPOINT".into(),
        "CreateStatsStmt" => return "CREATE STATISTICS".into(),
        "AlterStatsStmt" => return "ALTER STATISTICS".into(),
        "CreateEventTrigStmt" => return "CREATE EVENT TRIGGER".into(),
        "AlterSeqStmt" => return "ALTER SEQUENCE".into(),
        _ => {}
    }
    let base = kind.strip_suffix("Stmt").unwrap_or(kind);
    let mut out = String::new();
    for (i, c) in base.char_indices() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Walks one statement node; returns its command tag.
fn walk_statement(w: &mut Walker, kind: &str, b: &Value) -> String {
    let mut command = command_of(kind);
    match kind {
        "TransactionStmt" => {
            use pg_query::protobuf::TransactionStmtKind as K;
            command = pick(
                b,
                "kind",
                [
                    (K::TransStmtBegin as i64, "BEGIN"),
                    (K::TransStmtStart as i64, "START TRANSACTION"),
                    (K::TransStmtCommit as i64, "COMMIT"),
                    (K::TransStmtRollback as i64, "ROLLBACK"),
                    (K::TransStmtSavepoint as i64, "SAVEPOINT"),
                    (K::TransStmtRelease as i64, "RELEASE"),
                    (K::TransStmtRollbackTo as i64, "ROLLBACK TO"),
                    (K::TransStmtPrepare as i64, "PREPARE TRANSACTION"),
                    (K::TransStmtCommitPrepared as i64, "COMMIT PREPARED"),
                    (K::TransStmtRollbackPrepared as i64, "ROLLBACK PREPARED"),
                ],
            )
            .unwrap_or("TRANSACTION")
            .to_owned();
        }
        "SelectStmt" => {
            let role = if nonempty(b, "locking_clause") {
                Role::Lock
            } else {
                Role::Read
            };
            walk_children(w, b, role);
        }
        "InsertStmt" => {
            target(w, b.get("relation"), Op::Insert, "INSERT");
            let updates = b
                .get("on_conflict_clause")
                .and_then(|c| c.get("action"))
                .and_then(Value::as_i64)
                == Some(pg_query::protobuf::OnConflictAction::OnconflictUpdate as i64);
            if updates {
                target(
                    w,
                    b.get("relation"),
                    Op::Update,
                    "INSERT ON CONFLICT DO UPDATE",
                );
            }
            walk_except(w, b, &["relation"], Role::Read);
        }
        "UpdateStmt" => {
            target(w, b.get("relation"), Op::Update, "UPDATE");
            walk_except(w, b, &["relation"], Role::Read);
        }
        "DeleteStmt" => {
            target(w, b.get("relation"), Op::Delete, "DELETE");
            walk_except(w, b, &["relation"], Role::Read);
        }
        "MergeStmt" => {
            for op in [Op::Insert, Op::Update, Op::Delete] {
                target(w, b.get("relation"), op, "MERGE");
            }
            walk_except(w, b, &["relation"], Role::Read);
        }
        "CopyStmt" => {
            let from = b.get("is_from").and_then(Value::as_bool) == Some(true);
            if from {
                target(w, b.get("relation"), Op::Insert, "COPY FROM");
            } else {
                target(w, b.get("relation"), Op::Read, "COPY TO");
            }
            walk_except(w, b, &["relation"], Role::Read);
        }
        "TruncateStmt" => {
            for r in list(b, "relations") {
                target(w, Some(r), Op::Truncate, "TRUNCATE");
            }
        }
        "LockStmt" => {
            // Mode 1 is ACCESS SHARE: what a plain read takes.
            let (op, operation) = match b.get("mode").and_then(Value::as_i64) {
                Some(1) => (Op::Read, "LOCK TABLE IN ACCESS SHARE MODE"),
                _ => (Op::Lock, "LOCK TABLE"),
            };
            for r in list(b, "relations") {
                target(w, Some(r), op, operation);
            }
        }
        "ExplainStmt" => {
            // Plain EXPLAIN runs nothing; EXPLAIN ANALYZE runs its statement.
            let analyze = list(b, "options").any(|o| {
                node_of(o).is_some_and(|(k, d)| {
                    k == "DefElem"
                        && d.get("defname").and_then(Value::as_str) == Some("analyze")
                        && !d
                            .get("arg")
                            .and_then(literal)
                            .is_some_and(|v| matches!(v.as_str(), "false" | "off" | "0"))
                })
            });
            if analyze {
                if let Some((k, q)) = b.get("query").and_then(node_of) {
                    w.within("EXPLAIN ANALYZE", |w| {
                        walk_statement(w, k, q);
                    });
                }
            }
        }
        "DoStmt" => push_special(w, Special::DoBlock),
        "CallStmt" => {
            let routine = b
                .get("funccall")
                .map(|f| func_name(f).join("."))
                .unwrap_or_default();
            push_special(w, Special::Call { routine });
        }
        "VariableSetStmt" => {
            use pg_query::protobuf::VariableSetKind as V;
            let name = b.get("name").and_then(Value::as_str).unwrap_or("");
            let kind = b.get("kind").and_then(Value::as_i64).unwrap_or(0);
            if kind == V::VarReset as i64 || kind == V::VarResetAll as i64 {
                command = "RESET".into();
            }
            let value = if kind == V::VarSetValue as i64 {
                list(b, "args").next().and_then(literal)
            } else {
                Some("default".into())
            };
            match value {
                Some(v) => w.check_setting(name, Some(&v)),
                None => w.check_setting(name, None),
            }
        }
        "PrepareStmt" => {
            let name = b
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let body = b.get("query").and_then(statement);
            if body.is_none() {
                w.unparsed("PREPARE of a statement zoneguard cannot read");
            }
            if let Some(body) = body {
                for mut a in body.accesses.iter().cloned() {
                    a.origin = Some("PREPARE");
                    w.accesses.push(a);
                }
                for s in &body.specials {
                    push_special(w, s.clone());
                }
                w.prepares = Some(Prepared {
                    name,
                    body: Box::new(body),
                });
            }
        }
        "ExecuteStmt" => {
            let name = b
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            push_special(w, Special::ExecutePrepared { name });
            walk_children(w, b, Role::Read);
        }
        "DeallocateStmt" => {
            w.deallocates = Some(if b.get("isall").and_then(Value::as_bool) == Some(true) {
                Deallocate::All
            } else {
                Deallocate::Name(
                    b.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                )
            });
        }
        "DeclareCursorStmt" => {
            let name = b.get("portalname").and_then(Value::as_str).unwrap_or("");
            w.cursor = Some(CursorOp::Declare(name.to_owned()));
            walk_children(w, b, Role::Read);
        }
        "FetchStmt" => {
            if b.get("ismove").and_then(Value::as_bool) == Some(true) {
                command = "MOVE".into();
            }
            let name = b.get("portalname").and_then(Value::as_str).unwrap_or("");
            w.cursor = Some(CursorOp::Fetch(name.to_owned()));
        }
        "ClosePortalStmt" => {
            let name = b.get("portalname").and_then(Value::as_str).unwrap_or("");
            w.cursor = Some(CursorOp::Close((!name.is_empty()).then(|| name.to_owned())));
        }
        "ViewStmt" => {
            target(w, b.get("view"), Op::Ddl, "CREATE VIEW");
            let start = w.accesses.len();
            walk_except(w, b, &["view"], Role::Read);
            // A view over a relation is DDL on it (as the first reader has it).
            for a in &mut w.accesses[start..] {
                if a.op == Op::Read {
                    a.op = Op::Ddl;
                    a.operation = "CREATE VIEW over".to_owned();
                }
            }
        }
        "CreateStmt" => {
            target(w, b.get("relation"), Op::Ddl, "CREATE TABLE");
            let parents = if b.get("partbound").is_some_and(|p| !p.is_null()) {
                "CREATE TABLE PARTITION OF"
            } else {
                "CREATE TABLE INHERITS"
            };
            for r in list(b, "inh_relations") {
                target(w, Some(r), Op::Ddl, parents);
            }
            for e in list(b, "table_elts") {
                match node_of(e) {
                    Some(("TableLikeClause", like)) => {
                        target(w, like.get("relation"), Op::Read, "CREATE TABLE LIKE")
                    }
                    Some((k, d)) => walk_node(w, k, d, Role::Ddl("CREATE TABLE")),
                    None => {}
                }
            }
            walk_except(
                w,
                b,
                &["relation", "inh_relations", "table_elts"],
                Role::Ddl("CREATE TABLE"),
            );
        }
        "CreateTableAsStmt" => {
            if let Some(rel) = b.get("into").and_then(|i| i.get("rel")) {
                target(w, Some(rel), Op::Ddl, "CREATE TABLE AS");
            }
            walk_except(w, b, &["into"], Role::Read);
        }
        "RuleStmt" => {
            target(w, b.get("relation"), Op::Ddl, "CREATE RULE");
            if let Some(c) = b.get("where_clause") {
                walk_value(w, c, Role::Read);
            }
            for a in list(b, "actions") {
                if let Some((k, d)) = node_of(a) {
                    w.within("rule action", |w| {
                        walk_statement(w, k, d);
                    });
                }
            }
        }
        "RenameStmt" => {
            // A relation renamed: DDL on it, and its new name is the same
            // relation (in its schema). A column, constraint, trigger or
            // rule renamed: DDL on its relation. Statistics: on the
            // statistics object (in its table's zone). Anything else is an
            // object that is not a relation.
            use pg_query::protobuf::ObjectType as T;
            let rename_type = b.get("rename_type").and_then(Value::as_i64).unwrap_or(0);
            let relation = b.get("relation").filter(|r| !r.is_null());
            let op = "ALTER TABLE";
            if let Some(rel) = relation {
                target(w, Some(rel), Op::Ddl, op);
                let relation_kinds = [
                    T::ObjectTable,
                    T::ObjectView,
                    T::ObjectMatview,
                    T::ObjectIndex,
                    T::ObjectSequence,
                    T::ObjectForeignTable,
                ];
                if relation_kinds.iter().any(|t| *t as i64 == rename_type) {
                    if let Some(new) = b.get("newname").and_then(Value::as_str) {
                        let schema = rel
                            .get("schemaname")
                            .and_then(Value::as_str)
                            .filter(|s| !s.is_empty());
                        w.add(
                            Op::Ddl,
                            RelationName::new(schema, new),
                            "ALTER TABLE RENAME",
                        );
                    }
                }
            } else if rename_type == T::ObjectStatisticExt as i64 {
                let parts = names_of(b.get("object"));
                match super::walk::relation_from_parts(&parts) {
                    Some(rel) => w.add(Op::Ddl, rel, "ALTER STATISTICS"),
                    None => w.unparsed("ALTER STATISTICS of a name zoneguard cannot read"),
                }
            } else {
                w.other_ddl(&command);
            }
        }
        "ClusterStmt" => match b.get("relation").filter(|r| !r.is_null()) {
            Some(rel) => {
                target(w, Some(rel), Op::Ddl, "CLUSTER");
                if let Some(ix) = b
                    .get("indexname")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                {
                    let schema = rel
                        .get("schemaname")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty());
                    w.add(Op::Ddl, RelationName::new(schema, ix), "CLUSTER");
                }
            }
            None => w.unparsed("CLUSTER of every clustered table"),
        },
        "ReindexStmt" => match b.get("relation").filter(|r| !r.is_null()) {
            Some(rel) => target(w, Some(rel), Op::Ddl, "REINDEX"),
            None => w.unparsed("REINDEX of a whole schema or database"),
        },
        "DropStmt" => {
            command = drop_statement(w, b);
        }
        "AlterTableStmt" => {
            use pg_query::protobuf::ObjectType as T;
            command = pick(
                b,
                "objtype",
                [
                    (T::ObjectIndex as i64, "ALTER INDEX"),
                    (T::ObjectView as i64, "ALTER VIEW"),
                    (T::ObjectMatview as i64, "ALTER MATERIALIZED VIEW"),
                    (T::ObjectSequence as i64, "ALTER SEQUENCE"),
                    (T::ObjectForeignTable as i64, "ALTER FOREIGN TABLE"),
                ],
            )
            .unwrap_or("ALTER TABLE")
            .to_owned();
            walk_children(w, b, Role::Ddl(&command));
        }
        "CreateSeqStmt" | "AlterSeqStmt" => {
            walk_children(w, b, Role::Ddl(&command));
            // OWNED BY table.column makes the sequence part of that table.
            for o in list(b, "options") {
                let Some(("DefElem", d)) = node_of(o) else {
                    continue;
                };
                if d.get("defname").and_then(Value::as_str) != Some("owned_by") {
                    continue;
                }
                let parts = names_of(d.get("arg"));
                if parts.len() == 1 && parts[0] == "none" {
                    continue;
                }
                let owner = parts
                    .len()
                    .checked_sub(1)
                    .and_then(|n| super::walk::relation_from_parts(&parts[..n]));
                match owner {
                    Some(rel) => w.add(Op::Ddl, rel, &format!("{command} OWNED BY")),
                    None => w.unparsed("OWNED BY target not understood"),
                }
            }
        }
        "CreateSchemaStmt" => {
            // Its elements are made in the new schema.
            let schema = b.get("schemaname").and_then(Value::as_str).unwrap_or("");
            let start = w.accesses.len();
            walk_children(w, b, Role::Ddl(&command));
            for a in &mut w.accesses[start..] {
                if a.table.schema.is_none() && !schema.is_empty() {
                    a.table.schema = Some(schema.to_owned());
                }
            }
            w.other_ddl(&command);
        }
        // COMMENT and SECURITY LABEL on a relation (or its column) are DDL
        // on it; on other objects, DDL outside the zones.
        "CommentStmt" | "SecLabelStmt" => {
            use pg_query::protobuf::ObjectType as T;
            let kind = b.get("objtype").and_then(Value::as_i64).unwrap_or(0);
            let relation = [
                T::ObjectTable,
                T::ObjectView,
                T::ObjectMatview,
                T::ObjectIndex,
                T::ObjectSequence,
                T::ObjectForeignTable,
                T::ObjectColumn,
            ]
            .iter()
            .find(|t| **t as i64 == kind);
            match relation {
                Some(t) => {
                    let mut parts = names_of(b.get("object"));
                    if *t == T::ObjectColumn {
                        parts.pop();
                    }
                    match super::walk::relation_from_parts(&parts) {
                        Some(rel) => w.add(Op::Ddl, rel, &command),
                        None => w.unparsed(format!("{command} of a name zoneguard cannot read")),
                    }
                }
                None => w.other_ddl(&command),
            }
        }
        // What these reach depends on who owns what, or on what a remote
        // server holds: not visible in SQL.
        "DropOwnedStmt" | "ReassignOwnedStmt" | "ImportForeignSchemaStmt" => {
            w.unparsed(format!(
                "{command}: the relations it changes are not named in it"
            ));
        }
        "VacuumStmt" => {
            let full = list(b, "options").any(|o| {
                node_of(o).is_some_and(|(_, d)| {
                    d.get("defname").and_then(Value::as_str) == Some("full")
                        && !d
                            .get("arg")
                            .and_then(literal)
                            .is_some_and(|v| matches!(v.as_str(), "false" | "off" | "0"))
                })
            });
            if full {
                let start = w.accesses.len();
                walk_children(w, b, Role::Ddl("VACUUM FULL"));
                if w.accesses.len() == start {
                    w.unparsed("VACUUM FULL of the whole database");
                }
            }
        }
        k if HARMLESS.contains(&k) => walk_children(w, b, Role::Read),
        _ => {
            // Any other statement changes something: DDL on the relations
            // it names, or on an object that is not a relation.
            let start = w.accesses.len();
            walk_children(w, b, Role::Ddl(&command));
            if !w.accesses[start..].iter().any(|a| a.op == Op::Ddl) {
                w.other_ddl(&command);
            }
        }
    }
    command
}

/// `DROP TABLE | VIEW | INDEX | SEQUENCE | ...` names relations by lists of
/// strings; other DROPs are DDL on objects that are not relations.
fn drop_statement(w: &mut Walker, b: &Value) -> String {
    use pg_query::protobuf::ObjectType as T;
    let kind = b.get("remove_type").and_then(Value::as_i64).unwrap_or(0);
    // (type, noun, whether the name's last part is an object on a table:
    // `DROP RULE r ON t` names `t` then `r`).
    let noun = [
        (T::ObjectTable, "TABLE", false),
        (T::ObjectView, "VIEW", false),
        (T::ObjectMatview, "MATERIALIZED VIEW", false),
        (T::ObjectIndex, "INDEX", false),
        (T::ObjectSequence, "SEQUENCE", false),
        (T::ObjectForeignTable, "FOREIGN TABLE", false),
        (T::ObjectStatisticExt, "STATISTICS", false),
        (T::ObjectRule, "RULE", true),
        (T::ObjectTrigger, "TRIGGER", true),
        (T::ObjectPolicy, "POLICY", true),
    ]
    .into_iter()
    .find(|(t, _, _)| *t as i64 == kind);
    let Some((_, noun, on_table)) = noun else {
        w.other_ddl("DROP");
        return "DROP".into();
    };
    let cascade = b.get("behavior").and_then(Value::as_i64)
        == Some(pg_query::protobuf::DropBehavior::DropCascade as i64);
    let operation = if cascade {
        format!("DROP {noun} CASCADE")
    } else {
        format!("DROP {noun}")
    };
    for names in list(b, "objects") {
        let mut parts = names_of(Some(names));
        if on_table {
            parts.pop();
        }
        match super::walk::relation_from_parts(&parts) {
            Some(rel) => w.add(Op::Ddl, rel, &operation),
            None => w.unparsed(format!("{operation} of a name zoneguard cannot read")),
        }
    }
    format!("DROP {noun}")
}

/// Walks every node below a node body, as `role` where a relation appears
/// outside a statement of its own.
fn walk_children(w: &mut Walker, b: &Value, role: Role<'_>) {
    walk_except(w, b, &[], role);
}

fn walk_except(w: &mut Walker, b: &Value, skip: &[&str], role: Role<'_>) {
    if let Some(obj) = b.as_object() {
        for (k, v) in obj {
            if !skip.contains(&k.as_str()) {
                walk_value(w, v, role);
            }
        }
    }
}

/// Walks any value: objects whose one key is a node type are nodes.
fn walk_value(w: &mut Walker, v: &Value, role: Role<'_>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| walk_value(w, i, role)),
        Value::Object(obj) => {
            if let Some((k, body)) = node_of(v).filter(|_| obj.len() == 1) {
                walk_node(w, k, body, role);
            } else if is_range_var(v) {
                // A field typed as a relation is not tagged as a node.
                walk_node(w, "RangeVar", v, role);
            } else {
                obj.values().for_each(|x| walk_value(w, x, role));
            }
        }
        _ => {}
    }
}

/// A `RangeVar` met as a plain field (its message type, untagged).
fn is_range_var(v: &Value) -> bool {
    v.get("relname").is_some() && v.get("relpersistence").is_some() && v.get("inh").is_some()
}

fn walk_node(w: &mut Walker, kind: &str, b: &Value, role: Role<'_>) {
    match kind {
        "RangeVar" => {
            let (op, operation) = match role {
                Role::Read => (Op::Read, "SELECT"),
                Role::Lock => (Op::Lock, "SELECT FOR UPDATE"),
                Role::Ddl(op) => (Op::Ddl, op),
            };
            target(w, Some(b), op, operation);
        }
        "FuncCall" => {
            function(w, b);
            walk_children(w, b, role);
        }
        // A foreign key references its table (a privilege of its own).
        "Constraint" => {
            if let Some(t) = b.get("pktable").filter(|t| !t.is_null()) {
                target(w, Some(t), Op::Reference, "REFERENCES");
            }
            walk_except(w, b, &["pktable"], role);
        }
        // A locking clause's own list names relations already accessed.
        "LockingClause" => {}
        // A sub-SELECT under FOR UPDATE is locked too (PostgreSQL applies
        // the clause to sub-queries in FROM); elsewhere it is read.
        "SelectStmt" => {
            let role = match role {
                Role::Lock => Role::Lock,
                _ if nonempty(b, "locking_clause") => Role::Lock,
                _ => Role::Read,
            };
            walk_children(w, b, role);
        }
        k if k.ends_with("Stmt") => {
            walk_statement(w, k, b);
        }
        _ => walk_children(w, b, role),
    }
}

/// Functions judged on the relation they name, set_config, and calls that
/// write outside SQL (as the first reader judges them).
fn function(w: &mut Walker, b: &Value) {
    let name = func_name(b).pop().unwrap_or_default();
    let args: Vec<&Value> = list(b, "args").collect();
    if let Some((op, operation)) = super::nested::relation_function(&name) {
        match args.first().and_then(|a| relation_argument(a)) {
            Some(rel) => w.add(op, rel, operation),
            None => w.unparsed(format!(
                "{name}() of a relation the guard cannot name: pass its name as a string literal or 'name'::regclass"
            )),
        }
        return;
    }
    if name == "set_config" {
        if let Some(setting) = args.first().and_then(|a| literal(a)) {
            w.check_setting(&setting, args.get(1).and_then(|a| literal(a)).as_deref());
        }
        return;
    }
    if super::nested::WRITES_OUTSIDE_SQL.contains(&name.as_str()) {
        push_special(w, Special::Call { routine: name });
    }
}

/// The relation a function's argument names: a string literal read as
/// regclass input, a cast of one, or `pg_get_serial_sequence('t', 'c')`.
fn relation_argument(v: &Value) -> Option<RelationName> {
    match node_of(v)? {
        ("TypeCast", c) => relation_argument(c.get("arg")?),
        ("FuncCall", f)
            if func_name(f).last().map(String::as_str) == Some("pg_get_serial_sequence") =>
        {
            relation_argument(list(f, "args").next()?)
        }
        ("AConst", _) => super::nested::regclass_name(&literal(v)?),
        _ => None,
    }
}

/// A constant's text (`'x'`, `42`, `true`), or of a cast constant.
fn literal(v: &Value) -> Option<String> {
    match node_of(v)? {
        ("AConst", c) => {
            let (k, val) = node_of(c.get("val")?)?;
            match k {
                "Sval" => val.get("sval")?.as_str().map(str::to_owned),
                "Ival" => Some(
                    val.get("ival")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                        .to_string(),
                ),
                "Boolval" => Some(
                    val.get("boolval")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                        .to_string(),
                ),
                "Fval" => val.get("fval")?.as_str().map(str::to_owned),
                _ => None,
            }
        }
        ("TypeCast", c) => literal(c.get("arg")?),
        ("String", s) => s.get("sval")?.as_str().map(str::to_owned),
        // Option values (`FULL 0`, `ANALYZE false`) are bare value nodes.
        ("Integer", i) => Some(
            i.get("ival")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .to_string(),
        ),
        ("Boolean", b) => Some(
            b.get("boolval")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string(),
        ),
        ("Float", f) => f.get("fval")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// The value of an enum field, by the names it has in a table.
fn pick<const N: usize>(
    b: &Value,
    field: &str,
    names: [(i64, &'static str); N],
) -> Option<&'static str> {
    let v = b.get(field).and_then(Value::as_i64)?;
    names.into_iter().find(|(t, _)| *t == v).map(|(_, n)| n)
}

/// A dotted name given as a list of strings (`{"List": {"items": [...]}}`).
fn names_of(v: Option<&Value>) -> Vec<String> {
    v.and_then(node_of)
        .map(|(_, l)| list(l, "items").filter_map(string_node).collect())
        .unwrap_or_default()
}

fn func_name(b: &Value) -> Vec<String> {
    list(b, "funcname").filter_map(string_node).collect()
}

fn string_node(v: &Value) -> Option<String> {
    match node_of(v)? {
        ("String", s) => s.get("sval")?.as_str().map(str::to_owned),
        _ => None,
    }
}

fn list<'a>(b: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    b.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn nonempty(b: &Value, key: &str) -> bool {
    b.get(key)
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

/// An access to the relation of a `RangeVar` body.
fn target(w: &mut Walker, rv: Option<&Value>, op: Op, operation: &str) {
    let Some(rv) = rv.filter(|r| !r.is_null()) else {
        return;
    };
    let rv = node_of(rv).map_or(rv, |(_, b)| b);
    let Some(name) = rv.get("relname").and_then(Value::as_str) else {
        return;
    };
    let schema = rv
        .get("schemaname")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    // `inh` false: `ONLY name`.
    let only = rv.get("inh").and_then(Value::as_bool) == Some(false);
    w.add_only(op, RelationName::new(schema, name), operation, only);
}

fn push_special(w: &mut Walker, s: Special) {
    if !w.specials.contains(&s) {
        w.specials.push(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accesses(sql: &str) -> Vec<String> {
        classify(sql)
            .unwrap()
            .iter()
            .flat_map(|s| s.accesses.iter())
            .map(|a| format!("{} {}", a.op.as_str(), a.table))
            .collect()
    }

    #[test]
    fn what_sqlparser_cannot_parse_is_read_exactly() {
        assert_eq!(accesses("UPDATE t SET arr[1] = 42"), ["update \"t\""]);
        assert_eq!(
            accesses("INSERT INTO t (f[1], f[2]) VALUES (1, 2)"),
            ["insert \"t\""]
        );
        assert_eq!(
            accesses("INSERT INTO t (a) VALUES (1) ON CONFLICT (lower(a)) DO UPDATE SET a = 2"),
            ["insert \"t\"", "update \"t\""]
        );
        assert_eq!(
            accesses("SELECT * FROM users WHERE b ISNULL"),
            ["read \"users\""]
        );
        assert_eq!(
            accesses("EXPLAIN UPDATE users SET arr[1] = 1"),
            Vec::<String>::new()
        );
        assert_eq!(
            accesses("EXPLAIN (ANALYZE) UPDATE users SET arr[1] = 1"),
            ["update \"users\""]
        );
        assert_eq!(
            accesses("MERGE INTO users u USING (s JOIN x ON true) ON u.id = s.id WHEN NOT MATCHED THEN INSERT DEFAULT VALUES"),
            ["insert \"users\"", "update \"users\"", "delete \"users\"", "read \"s\"", "read \"x\""]
        );
        assert_eq!(
            accesses("SELECT * FROM (SELECT * FROM users WHERE b ISNULL) s FOR NO KEY UPDATE"),
            ["lock \"users\""]
        );
        assert_eq!(
            accesses("SELECT nextval('users_id_seq') WHERE b ISNULL"),
            ["insert \"users_id_seq\""]
        );
    }

    #[test]
    fn syntax_errors_are_the_servers_to_report() {
        let st = classify("UPDATE users SET WHERE").unwrap();
        assert!(matches!(st[0].specials[0], Special::SyntaxError { .. }));
    }

    #[test]
    fn statements_sqlparser_reads_are_read_by_it() {
        // The first statement parses with sqlparser, the second does not.
        let st = classify("SELECT 1; UPDATE t SET a[1] = 2").unwrap();
        assert_eq!(st.len(), 2);
        assert_eq!(st[0].command, "SELECT");
        assert_eq!(st[1].command, "UPDATE");
    }
}
