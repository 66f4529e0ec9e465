//! Statement dispatch: what each kind of parsed statement does (DML, DDL,
//! utility commands), failing closed on any statement type not listed here.

use sqlparser::ast::{
    CopySource, CopyTarget, CreateRuleAction, Expr, LockTableMode, ObjectType, Statement, Value,
};

use super::ddl::{object_is_relation, other_ddl_name};
use super::walk::{ident, name_parts, Walker};
use super::{CursorOp, Deallocate, Op, Prepared, Special, StatementInfo, TableAccess};

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
        cursor: w.cursor,
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

impl Walker {
    fn merge_info(&mut self, info: StatementInfo, origin: &'static str) {
        let mark = self.origin.or(Some(origin));
        self.accesses
            .extend(info.accesses.into_iter().map(|a| TableAccess {
                origin: a.origin.or(mark),
                ..a
            }));
        self.specials.extend(info.specials);
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
                    self.target_only(Op::Truncate, &target.name, "TRUNCATE", target.only);
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
                    self.merge_info(inner, "EXPLAIN ANALYZE");
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
                self.merge_info(body.clone(), "PREPARE");
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
                if let [d] = stmts.as_slice() {
                    if let [name] = d.names.as_slice() {
                        self.cursor = Some(CursorOp::Declare(ident(name)));
                    }
                }
                for d in stmts {
                    match &d.for_query {
                        Some(q) => self.query(q),
                        None => self.nested(&d.assignment),
                    }
                }
                tag("DECLARE CURSOR")
            }
            Statement::Fetch {
                into: None, name, ..
            } => {
                self.cursor = Some(CursorOp::Fetch(ident(name)));
                tag("FETCH")
            }
            Statement::Close { cursor } => {
                self.cursor = Some(CursorOp::Close(match cursor {
                    sqlparser::ast::CloseCursor::All => None,
                    sqlparser::ast::CloseCursor::Specific { name } => Some(ident(name)),
                }));
                tag("CLOSE CURSOR")
            }
            Statement::CreateTable(ct) => self.create_table(ct),
            Statement::CreateView(cv) => self.create_view(cv),
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
                        self.within("rule action", |w| {
                            w.statement(s);
                        });
                    }
                    CreateRuleAction::Statements(ss) => {
                        for s in ss {
                            self.within("rule action", |w| {
                                w.statement(s);
                            });
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
                cascade,
                ..
            } => {
                // CASCADE also drops what depends on the object (views over
                // it, other tables' foreign keys): see `catalog::reach`.
                let tag = format!("DROP {object_type}");
                let op = if *cascade {
                    format!("{tag} CASCADE")
                } else {
                    tag.clone()
                };
                if object_is_relation(object_type) {
                    self.ddl_all(names, &op);
                    if let Some(t) = table {
                        self.target(Op::Ddl, t, &op);
                    }
                } else {
                    self.other_ddl(&tag);
                    if *cascade && matches!(object_type, ObjectType::Schema) {
                        for n in names {
                            match name_parts(n).as_deref() {
                                Some([.., schema]) => {
                                    self.specials.push(Special::DropSchemaCascade {
                                        schema: schema.clone(),
                                    })
                                }
                                _ => self.unparsed("DROP SCHEMA name not understood"),
                            }
                        }
                    }
                }
                tag
            }
            Statement::CreateSequence {
                name,
                sequence_options,
                ..
            } => {
                self.target(Op::Ddl, name, "CREATE SEQUENCE");
                self.nested(sequence_options);
                self.sequence_owner(sequence_options, "CREATE SEQUENCE OWNED BY");
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
                self.comment(object_type, object_name);
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
                    self.target_only(op, &t.name, operation, t.only);
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
            Statement::Discard { object_type } => {
                // DISCARD ALL also deallocates every prepared statement.
                if matches!(object_type, sqlparser::ast::DiscardObject::ALL) {
                    self.deallocates = Some(Deallocate::All);
                }
                tag("DISCARD")
            }
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
}
