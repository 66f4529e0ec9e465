//! Statement dispatch: what each kind of parsed statement does (DML, DDL,
//! utility commands), failing closed on any statement type not listed here.

use sqlparser::ast::{
    AlterTableOperation, CommentObject, CopySource, CopyTarget, CreateRuleAction,
    CreateTableLikeKind, Expr, GrantObjects, LockTableMode, ObjectName, ObjectType,
    RenameTableNameKind, Set, Statement, Value,
};

use super::walk::{ident, name_parts, relation_from_parts, Walker};
use super::{Deallocate, Op, Prepared, RelationName, Special, StatementInfo};

/// The name of a statement's variant, for messages.
pub(crate) fn variant_name(s: &Statement) -> String {
    let dbg = format!("{s:?}");
    dbg.chars().take_while(|c| c.is_alphanumeric()).collect()
}

/// Classify one parsed statement.
pub(crate) fn classify_statement(s: &Statement) -> StatementInfo {
    let mut w = Walker::default();
    let command = w.statement(s);
    finish(w, command)
}

pub(crate) fn finish(w: Walker, command: String) -> StatementInfo {
    let mut accesses = Vec::new();
    for a in w.accesses {
        if !accesses.contains(&a) {
            accesses.push(a);
        }
    }
    let mut specials = Vec::new();
    for s in w.specials {
        if !specials.contains(&s) {
            specials.push(s);
        }
    }
    StatementInfo {
        command,
        accesses,
        specials,
        prepares: w.prepares,
        deallocates: w.deallocates,
    }
}

/// Is this `EXPLAIN` option list asking for ANALYZE (execution)?
fn explain_analyzes(options: &Option<Vec<sqlparser::ast::UtilityOption>>) -> bool {
    options.iter().flatten().any(|o| {
        if !o.name.value.eq_ignore_ascii_case("analyze")
            && !o.name.value.eq_ignore_ascii_case("analyse")
        {
            return false;
        }
        let off = match &o.arg {
            None => false,
            Some(Expr::Value(v)) => match &v.value {
                Value::Boolean(b) => !*b,
                Value::Number(n, _) => n == "0",
                Value::SingleQuotedString(s) => is_false_word(s),
                _ => false,
            },
            Some(Expr::Identifier(i)) => is_false_word(&i.value),
            Some(_) => false,
        };
        !off
    })
}

fn is_false_word(s: &str) -> bool {
    ["false", "off", "no", "0", "f", "n"].contains(&s.to_ascii_lowercase().as_str())
}

fn object_is_relation(t: &ObjectType) -> bool {
    matches!(
        t,
        ObjectType::Table
            | ObjectType::View
            | ObjectType::MaterializedView
            | ObjectType::Index
            | ObjectType::Sequence
            | ObjectType::ForeignTable
    )
}

impl Walker {
    fn merge_info(&mut self, info: StatementInfo) {
        self.accesses.extend(info.accesses);
        self.specials.extend(info.specials);
    }

    fn ddl_all(&mut self, names: &[ObjectName], operation: &str) {
        for n in names {
            self.target(Op::Ddl, n, operation);
        }
    }

    /// Walk one statement; returns its command tag.
    pub fn statement(&mut self, s: &Statement) -> String {
        let tag = |t: &str| t.to_owned();
        match s {
            Statement::Query(q) => {
                self.query(q);
                tag(match q.body.as_ref() {
                    sqlparser::ast::SetExpr::Insert(_) => "INSERT",
                    sqlparser::ast::SetExpr::Update(_) => "UPDATE",
                    sqlparser::ast::SetExpr::Delete(_) => "DELETE",
                    sqlparser::ast::SetExpr::Merge(_) => "MERGE",
                    _ => "SELECT",
                })
            }
            Statement::Insert(i) => {
                self.insert(i);
                tag("INSERT")
            }
            Statement::Update(u) => {
                self.update(u);
                tag("UPDATE")
            }
            Statement::Delete(d) => {
                self.delete(d);
                tag("DELETE")
            }
            Statement::Merge(m) => {
                self.merge(m);
                tag("MERGE")
            }
            Statement::Truncate(t) => {
                for target in &t.table_names {
                    self.target(Op::Truncate, &target.name, "TRUNCATE");
                }
                tag("TRUNCATE TABLE")
            }
            Statement::Copy {
                source, to, target, ..
            } => {
                match (source, to) {
                    (CopySource::Table { table_name, .. }, false) => {
                        self.target(Op::Insert, table_name, "COPY FROM")
                    }
                    (CopySource::Table { table_name, .. }, true) => {
                        self.target(Op::Read, table_name, "COPY TO")
                    }
                    (CopySource::Query(q), true) => self.query(q),
                    (CopySource::Query(q), false) => {
                        self.query(q);
                        self.unparsed("COPY (query) FROM is not understood");
                    }
                }
                match target {
                    CopyTarget::Program { .. } => self.other_ddl("COPY PROGRAM"),
                    CopyTarget::File { .. } if *to => self.other_ddl("COPY TO FILE"),
                    _ => {}
                }
                tag("COPY")
            }
            Statement::Explain {
                analyze,
                statement,
                options,
                ..
            } => {
                let inner = classify_statement(statement);
                if *analyze || explain_analyzes(options) {
                    self.merge_info(inner);
                } else {
                    for a in inner.accesses {
                        self.add(Op::Read, a.table, "EXPLAIN");
                    }
                    self.specials.extend(inner.specials);
                }
                tag("EXPLAIN")
            }
            Statement::Prepare {
                name, statement, ..
            } => {
                let body = classify_statement(statement);
                self.accesses.extend(body.accesses.iter().cloned());
                self.specials.extend(body.specials.iter().cloned());
                self.prepares = Some(Prepared {
                    name: ident(name),
                    body: Box::new(body),
                });
                tag("PREPARE")
            }
            Statement::Execute {
                name: Some(name),
                parameters,
                immediate: false,
                into,
                using,
                ..
            } if into.is_empty() && using.is_empty() => {
                match name_parts(name).as_deref() {
                    Some([n]) => self
                        .specials
                        .push(Special::ExecutePrepared { name: n.clone() }),
                    _ => self.unparsed("EXECUTE of an unusual name"),
                }
                self.nested(parameters);
                tag("EXECUTE")
            }
            Statement::Deallocate { name, .. } => {
                self.deallocates = Some(
                    if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
                        Deallocate::All
                    } else {
                        Deallocate::Name(ident(name))
                    },
                );
                tag("DEALLOCATE")
            }
            Statement::Declare { stmts, .. } => {
                for d in stmts {
                    match &d.for_query {
                        Some(q) => self.query(q),
                        None => self.nested(&d.assignment),
                    }
                }
                tag("DECLARE CURSOR")
            }
            Statement::Fetch { into: None, .. } => tag("FETCH"),
            Statement::Close { .. } => tag("CLOSE CURSOR"),
            Statement::CreateTable(ct) => {
                let op = if ct.query.is_some() {
                    "CREATE TABLE AS"
                } else {
                    "CREATE TABLE"
                };
                self.target(Op::Ddl, &ct.name, op);
                if let Some(q) = &ct.query {
                    self.query(q);
                }
                if let Some(CreateTableLikeKind::Parenthesized(l) | CreateTableLikeKind::Plain(l)) =
                    &ct.like
                {
                    self.target(Op::Read, &l.name, "CREATE TABLE LIKE");
                }
                if let Some(c) = &ct.clone {
                    self.target(Op::Read, c, "CREATE TABLE CLONE");
                }
                if let Some(p) = &ct.partition_of {
                    self.target(Op::Ddl, p, "CREATE TABLE PARTITION OF");
                }
                self.ddl_all(
                    ct.inherits.as_deref().unwrap_or(&[]),
                    "CREATE TABLE INHERITS",
                );
                self.nested(&ct.columns);
                self.nested(&ct.constraints);
                tag(op)
            }
            Statement::CreateView(cv) => {
                if let Some(to) = &cv.to {
                    self.target(Op::Insert, to, "CREATE VIEW TO");
                }
                if cv.materialized {
                    self.target(Op::Ddl, &cv.name, "CREATE MATERIALIZED VIEW");
                    self.query(&cv.query);
                    return tag("CREATE MATERIALIZED VIEW");
                }
                self.target(Op::Ddl, &cv.name, "CREATE VIEW");
                let start = self.accesses.len();
                self.query(&cv.query);
                for a in &mut self.accesses[start..] {
                    if a.op == Op::Read {
                        a.op = Op::Ddl;
                        a.operation = "CREATE VIEW over".to_owned();
                    }
                }
                tag("CREATE VIEW")
            }
            Statement::CreateIndex(ci) => {
                self.target(Op::Ddl, &ci.table_name, "CREATE INDEX");
                self.nested(&ci.columns);
                self.nested(&ci.predicate);
                self.nested(&ci.with);
                tag("CREATE INDEX")
            }
            Statement::CreateTrigger(ct) => {
                self.target(Op::Ddl, &ct.table_name, "CREATE TRIGGER");
                if let Some(r) = &ct.referenced_table_name {
                    self.target(Op::Ddl, r, "CREATE TRIGGER");
                }
                self.nested(&ct.condition);
                self.nested(&ct.statements);
                tag("CREATE TRIGGER")
            }
            Statement::DropTrigger(dt) => {
                match &dt.table_name {
                    Some(t) => self.target(Op::Ddl, t, "DROP TRIGGER"),
                    None => self.unparsed("DROP TRIGGER without a table"),
                }
                tag("DROP TRIGGER")
            }
            Statement::AlterTrigger(at) => {
                self.target(Op::Ddl, &at.table_name, "ALTER TRIGGER");
                tag("ALTER TRIGGER")
            }
            Statement::CreateRule(cr) => {
                self.target(Op::Ddl, &cr.table_name, "CREATE RULE");
                self.nested(&cr.condition);
                match &cr.action {
                    CreateRuleAction::Nothing => {}
                    CreateRuleAction::Statement(s) => {
                        self.statement(s);
                    }
                    CreateRuleAction::Statements(ss) => {
                        for s in ss {
                            self.statement(s);
                        }
                    }
                }
                tag("CREATE RULE")
            }
            Statement::DropRule(dr) => {
                self.target(Op::Ddl, &dr.table_name, "DROP RULE");
                tag("DROP RULE")
            }
            Statement::CreatePolicy(cp) => {
                self.target(Op::Ddl, &cp.table_name, "CREATE POLICY");
                self.nested(&cp.using);
                self.nested(&cp.with_check);
                tag("CREATE POLICY")
            }
            Statement::AlterPolicy(ap) => {
                self.target(Op::Ddl, &ap.table_name, "ALTER POLICY");
                self.nested(&ap.operation);
                tag("ALTER POLICY")
            }
            Statement::DropPolicy(dp) => {
                self.target(Op::Ddl, &dp.table_name, "DROP POLICY");
                tag("DROP POLICY")
            }
            Statement::AlterTable(at) => {
                self.target(Op::Ddl, &at.name, "ALTER TABLE");
                for op in &at.operations {
                    self.alter_table_operation(&at.name, op);
                }
                tag("ALTER TABLE")
            }
            Statement::AlterIndex { name, .. } => {
                self.target(Op::Ddl, name, "ALTER INDEX");
                tag("ALTER INDEX")
            }
            Statement::AlterView(av) => {
                let op = if av.materialized {
                    "ALTER MATERIALIZED VIEW"
                } else {
                    "ALTER VIEW"
                };
                self.target(Op::Ddl, &av.name, op);
                self.nested(&av.operation);
                tag(op)
            }
            Statement::RenameTable(rs) => {
                for r in rs {
                    self.target(Op::Ddl, &r.old_name, "RENAME TABLE");
                    self.target(Op::Ddl, &r.new_name, "RENAME TABLE");
                }
                tag("RENAME TABLE")
            }
            Statement::Drop {
                object_type,
                names,
                table,
                ..
            } => {
                let op = format!("DROP {object_type}");
                if object_is_relation(object_type) {
                    self.ddl_all(names, &op);
                    if let Some(t) = table {
                        self.target(Op::Ddl, t, &op);
                    }
                } else {
                    self.other_ddl(&op);
                }
                op
            }
            Statement::CreateSequence {
                name,
                sequence_options,
                ..
            } => {
                self.target(Op::Ddl, name, "CREATE SEQUENCE");
                self.nested(sequence_options);
                tag("CREATE SEQUENCE")
            }
            Statement::CreateForeignTable(cf) => {
                self.target(Op::Ddl, &cf.name, "CREATE FOREIGN TABLE");
                if let Some(p) = &cf.partition_of {
                    self.target(Op::Ddl, p, "CREATE FOREIGN TABLE PARTITION OF");
                }
                self.ddl_all(
                    cf.inherits.as_deref().unwrap_or(&[]),
                    "CREATE FOREIGN TABLE INHERITS",
                );
                tag("CREATE FOREIGN TABLE")
            }
            Statement::Comment {
                object_type,
                object_name,
                ..
            } => {
                match object_type {
                    CommentObject::Table
                    | CommentObject::View
                    | CommentObject::MaterializedView
                    | CommentObject::ForeignTable
                    | CommentObject::Index
                    | CommentObject::Sequence => self.target(Op::Ddl, object_name, "COMMENT"),
                    CommentObject::Column => {
                        let parts = name_parts(object_name).unwrap_or_default();
                        match parts
                            .len()
                            .checked_sub(1)
                            .and_then(|n| relation_from_parts(&parts[..n]))
                        {
                            Some(rel) if parts.len() <= 4 => self.add(Op::Ddl, rel, "COMMENT"),
                            _ => self.unparsed("COMMENT ON COLUMN name not understood"),
                        }
                    }
                    _ => self.other_ddl("COMMENT"),
                }
                tag("COMMENT")
            }
            Statement::Grant(g) => {
                self.grant_objects(&g.objects, "GRANT");
                tag("GRANT")
            }
            Statement::Revoke(r) => {
                self.grant_objects(&r.objects, "REVOKE");
                tag("REVOKE")
            }
            Statement::GrantRole(_) => {
                self.other_ddl("GRANT ROLE");
                tag("GRANT ROLE")
            }
            Statement::RevokeRole(_) => {
                self.other_ddl("REVOKE ROLE");
                tag("REVOKE ROLE")
            }
            Statement::AlterDefaultPrivileges(_) => {
                self.other_ddl("ALTER DEFAULT PRIVILEGES");
                tag("ALTER DEFAULT PRIVILEGES")
            }
            Statement::RefreshMaterializedView(r) => {
                self.target(Op::Ddl, &r.name, "REFRESH MATERIALIZED VIEW");
                tag("REFRESH MATERIALIZED VIEW")
            }
            Statement::Vacuum(v) => {
                if v.full {
                    match &v.table_name {
                        Some(t) => self.target(Op::Ddl, t, "VACUUM FULL"),
                        None => self.unparsed("VACUUM FULL of the whole database"),
                    }
                }
                tag("VACUUM")
            }
            Statement::Analyze(_) => tag("ANALYZE"),
            Statement::Lock(l) => {
                let (op, operation) = match l.lock_mode {
                    Some(LockTableMode::AccessShare) => {
                        (Op::Read, "LOCK TABLE IN ACCESS SHARE MODE")
                    }
                    _ => (Op::Lock, "LOCK TABLE"),
                };
                for t in &l.tables {
                    self.target(op, &t.name, operation);
                }
                tag("LOCK TABLE")
            }
            Statement::Call(f) => {
                let routine = match name_parts(&f.name) {
                    Some(p) => p.join("."),
                    None => f.name.to_string(),
                };
                self.specials.push(Special::Call { routine });
                self.nested(&f.args);
                tag("CALL")
            }
            Statement::Set(set) => {
                self.check_set(set);
                tag("SET")
            }
            Statement::StartTransaction { statements, .. } => {
                for st in statements {
                    self.statement(st);
                }
                tag("BEGIN")
            }
            Statement::Commit { .. } => tag("COMMIT"),
            Statement::Rollback { .. } => tag("ROLLBACK"),
            Statement::Savepoint { .. } => tag("SAVEPOINT"),
            Statement::ReleaseSavepoint { .. } => tag("RELEASE"),
            Statement::Reset(_) => tag("RESET"),
            Statement::ShowVariable { .. } => tag("SHOW"),
            Statement::Discard { .. } => tag("DISCARD"),
            Statement::LISTEN { .. } => tag("LISTEN"),
            Statement::UNLISTEN { .. } => tag("UNLISTEN"),
            Statement::NOTIFY { .. } => tag("NOTIFY"),
            Statement::Load { .. } => {
                self.other_ddl("LOAD");
                tag("LOAD")
            }
            other => {
                if let Some(op) = other_ddl_name(other) {
                    self.other_ddl(op);
                    return op.to_owned();
                }
                self.unparsed(format!(
                    "statement type {} is not understood by zoneguard",
                    variant_name(other)
                ));
                tag("UNKNOWN")
            }
        }
    }

    fn alter_table_operation(&mut self, table: &ObjectName, op: &AlterTableOperation) {
        match op {
            AlterTableOperation::AttachPartitionOf { partition, .. } => {
                self.target(Op::Ddl, partition, "ALTER TABLE ATTACH PARTITION")
            }
            AlterTableOperation::DetachPartitionOf { partition, .. } => {
                self.target(Op::Ddl, partition, "ALTER TABLE DETACH PARTITION")
            }
            AlterTableOperation::Inherit { parent } | AlterTableOperation::NoInherit { parent } => {
                self.target(Op::Ddl, parent, "ALTER TABLE INHERIT")
            }
            AlterTableOperation::SwapWith { table_name } => {
                self.target(Op::Ddl, table_name, "ALTER TABLE SWAP")
            }
            AlterTableOperation::RenameTable { table_name } => {
                let (RenameTableNameKind::As(new) | RenameTableNameKind::To(new)) = table_name;
                // An unqualified new name stays in the table's schema.
                let old = name_parts(table).and_then(|p| relation_from_parts(&p));
                let new = name_parts(new).and_then(|p| relation_from_parts(&p));
                match (old, new) {
                    (Some(old), Some(new)) => {
                        let schema = new.schema.or(old.schema);
                        self.add(
                            Op::Ddl,
                            RelationName {
                                schema,
                                name: new.name,
                            },
                            "ALTER TABLE RENAME",
                        );
                    }
                    _ => self.unparsed("ALTER TABLE RENAME target not understood"),
                }
            }
            other => self.nested(other),
        }
    }

    fn grant_objects(&mut self, objects: &Option<GrantObjects>, operation: &str) {
        match objects {
            Some(GrantObjects::Tables(names))
            | Some(GrantObjects::Views(names))
            | Some(GrantObjects::Sequences(names)) => self.ddl_all(names, operation),
            _ => self.other_ddl(operation),
        }
    }

    /// `SET standard_conforming_strings = off` would make the tokenizer
    /// misread later string literals: fail closed on it.
    fn check_set(&mut self, set: &Set) {
        let Set::SingleAssignment {
            variable, values, ..
        } = set
        else {
            return;
        };
        let var = name_parts(variable).and_then(|p| p.last().cloned());
        if var.as_deref() != Some("standard_conforming_strings") {
            return;
        }
        let on = matches!(values.as_slice(), [v] if match v {
            Expr::Identifier(i) => ["on", "true", "yes", "1"].contains(&i.value.to_ascii_lowercase().as_str()),
            Expr::Value(v) => match &v.value {
                Value::Boolean(b) => *b,
                Value::SingleQuotedString(s) => ["on", "true", "yes", "1"].contains(&s.to_ascii_lowercase().as_str()),
                Value::Number(n, _) => n == "1",
                _ => false,
            },
            _ => false,
        });
        if !on {
            self.unparsed(
                "turning off standard_conforming_strings changes how the guard must read strings",
            );
        }
    }
}

/// DDL on objects that are not relations.
fn other_ddl_name(s: &Statement) -> Option<&'static str> {
    Some(match s {
        Statement::CreateFunction(_) => "CREATE FUNCTION",
        Statement::CreateProcedure { .. } => "CREATE PROCEDURE",
        Statement::CreateType { .. } => "CREATE TYPE",
        Statement::CreateDomain(_) => "CREATE DOMAIN",
        Statement::CreateSchema { .. } => "CREATE SCHEMA",
        Statement::CreateExtension(_) => "CREATE EXTENSION",
        Statement::CreateRole(_) => "CREATE ROLE",
        Statement::CreateUser(_) => "CREATE USER",
        Statement::CreateDatabase { .. } => "CREATE DATABASE",
        Statement::CreateCollation(_) => "CREATE COLLATION",
        Statement::CreateOperator(_) => "CREATE OPERATOR",
        Statement::CreateOperatorFamily(_) => "CREATE OPERATOR FAMILY",
        Statement::CreateOperatorClass(_) => "CREATE OPERATOR CLASS",
        Statement::CreateTextSearch(_) => "CREATE TEXT SEARCH",
        Statement::CreateServer(_) => "CREATE SERVER",
        Statement::CreateForeignDataWrapper(_) => "CREATE FOREIGN DATA WRAPPER",
        Statement::CreateUserMapping(_) => "CREATE USER MAPPING",
        Statement::CreateAggregate(_) => "CREATE AGGREGATE",
        Statement::AlterSchema(_) => "ALTER SCHEMA",
        Statement::AlterFunction(_) => "ALTER FUNCTION",
        Statement::AlterType(_) => "ALTER TYPE",
        Statement::AlterCollation(_) => "ALTER COLLATION",
        Statement::AlterOperator(_) => "ALTER OPERATOR",
        Statement::AlterOperatorFamily(_) => "ALTER OPERATOR FAMILY",
        Statement::AlterOperatorClass(_) => "ALTER OPERATOR CLASS",
        Statement::AlterTextSearch(_) => "ALTER TEXT SEARCH",
        Statement::AlterRole { .. } => "ALTER ROLE",
        Statement::AlterUser(_) => "ALTER USER",
        Statement::DropFunction(_) => "DROP FUNCTION",
        Statement::DropDomain(_) => "DROP DOMAIN",
        Statement::DropProcedure { .. } => "DROP PROCEDURE",
        Statement::DropExtension(_) => "DROP EXTENSION",
        Statement::DropOperator(_) => "DROP OPERATOR",
        Statement::DropOperatorFamily(_) => "DROP OPERATOR FAMILY",
        Statement::DropOperatorClass(_) => "DROP OPERATOR CLASS",
        _ => return None,
    })
}
