//! DDL on relations: CREATE TABLE / VIEW, COMMENT, ALTER TABLE operations
//! that reach other tables, GRANT targets, and the names of DDL on objects
//! that are not relations.

use sqlparser::ast::{
    AlterTableOperation, ColumnDef, ColumnOption, CommentObject, CreateTable, CreateTableLikeKind,
    CreateView, DropBehavior, Expr, ForeignKeyConstraint, GrantObjects, ObjectName, ObjectType,
    RenameTableNameKind, SequenceOptions, Set, Statement, TableConstraint, Value,
};

use super::walk::{name_parts, relation_from_parts, Walker};
use super::{Op, RelationName, Special};

pub(crate) fn object_is_relation(t: &ObjectType) -> bool {
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
    pub(crate) fn ddl_all(&mut self, names: &[ObjectName], operation: &str) {
        for n in names {
            self.target(Op::Ddl, n, operation);
        }
    }

    pub(crate) fn create_table(&mut self, ct: &CreateTable) -> String {
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
        self.column_references(&ct.columns);
        for c in &ct.constraints {
            self.constraint_references(c);
        }
        op.to_owned()
    }

    /// A foreign key is a `reference` to the table it names (see
    /// [`Op::Reference`]); the table that holds it is changed by the DDL
    /// that adds it.
    fn foreign_key(&mut self, fk: &ForeignKeyConstraint) {
        self.target(Op::Reference, &fk.foreign_table, "REFERENCES");
    }

    pub(crate) fn column_references(&mut self, columns: &[ColumnDef]) {
        for col in columns {
            for opt in &col.options {
                if let ColumnOption::ForeignKey(fk) = &opt.option {
                    self.foreign_key(fk);
                }
            }
        }
    }

    pub(crate) fn constraint_references(&mut self, c: &TableConstraint) {
        if let TableConstraint::ForeignKey(fk) = c {
            self.foreign_key(fk);
        }
    }

    /// `OWNED BY table.column` makes the sequence part of that table (its
    /// zone's), so it is DDL on the table.
    pub(crate) fn sequence_owner(&mut self, options: &[SequenceOptions], operation: &str) {
        for o in options {
            if let SequenceOptions::OwnedBy(Some(col)) = o {
                let parts = name_parts(col).unwrap_or_default();
                match parts
                    .len()
                    .checked_sub(1)
                    .and_then(|n| relation_from_parts(&parts[..n]))
                {
                    Some(rel) if parts.len() <= 4 => self.add(Op::Ddl, rel, operation),
                    _ => self.unparsed("OWNED BY target not understood"),
                }
            }
        }
    }

    pub(crate) fn create_view(&mut self, cv: &CreateView) -> String {
        if let Some(to) = &cv.to {
            self.target(Op::Insert, to, "CREATE VIEW TO");
        }
        if cv.materialized {
            self.target(Op::Ddl, &cv.name, "CREATE MATERIALIZED VIEW");
            self.query(&cv.query);
            return "CREATE MATERIALIZED VIEW".to_owned();
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
        "CREATE VIEW".to_owned()
    }

    pub(crate) fn comment(&mut self, object_type: &CommentObject, object_name: &ObjectName) {
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
    }

    pub(crate) fn alter_table_operation(&mut self, table: &ObjectName, op: &AlterTableOperation) {
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
            AlterTableOperation::DropColumn {
                drop_behavior: Some(DropBehavior::Cascade),
                ..
            }
            | AlterTableOperation::DropConstraint {
                drop_behavior: Some(DropBehavior::Cascade),
                ..
            } => {
                // What depends on the column or constraint goes too: views,
                // other tables' foreign keys (see `catalog::reach`).
                self.target(Op::Ddl, table, "ALTER TABLE DROP ... CASCADE");
            }
            AlterTableOperation::AddConstraint { constraint, .. } => {
                self.nested(constraint);
                self.constraint_references(constraint);
            }
            AlterTableOperation::AddColumn { column_def, .. } => {
                self.nested(column_def);
                self.column_references(std::slice::from_ref(column_def));
            }
            other => self.nested(other),
        }
    }

    pub(crate) fn grant_objects(&mut self, objects: &Option<GrantObjects>, operation: &str) {
        match objects {
            Some(GrantObjects::Tables(names))
            | Some(GrantObjects::Views(names))
            | Some(GrantObjects::Sequences(names)) => self.ddl_all(names, operation),
            _ => self.other_ddl(operation),
        }
    }

    /// `SET` of a setting the reading of SQL depends on, in any spelling
    /// (setting names are case-insensitive, quoted or not).
    pub(crate) fn check_set(&mut self, set: &Set) {
        match set {
            Set::SingleAssignment {
                variable, values, ..
            } => {
                let Some(var) = name_parts(variable).and_then(|p| p.last().cloned()) else {
                    return;
                };
                let value = match values.as_slice() {
                    [Expr::Identifier(i)] => Some(i.value.clone()),
                    [Expr::Value(v)] => match &v.value {
                        Value::Boolean(b) => Some(b.to_string()),
                        Value::SingleQuotedString(s) => Some(s.clone()),
                        Value::Number(n, _) => Some(n.clone()),
                        _ => None,
                    },
                    _ => None,
                };
                self.check_setting(&var, value.as_deref());
            }
            Set::SetNames { charset_name, .. } => {
                self.check_setting("client_encoding", Some(&charset_name.value))
            }
            _ => {}
        }
    }

    /// Fails closed on `name = value` if it would leave a state the guard
    /// reads exactly (`reading`, R3). `value` is `None` when not a literal;
    /// DEFAULT goes back to the session's start, which the server reported
    /// (and the guard accepted) then.
    pub(crate) fn check_setting(&mut self, name: &str, value: Option<&str>) {
        let name = name.trim().to_ascii_lowercase();
        // A value the guard cannot see (a parameter, an expression) is
        // allowed: what it sets is reported by the server before anything
        // read under it is judged (`reading`, R2 and R3).
        let Some(v) = value else { return };
        let readable = v.eq_ignore_ascii_case("default")
            || match name.as_str() {
                "standard_conforming_strings" => super::reading::is_on(v),
                "client_encoding" => super::reading::encoding_readable(v),
                _ => return,
            };
        if !readable {
            let special = Special::UnreadableSetting {
                setting: name,
                value: v.to_owned(),
            };
            if !self.specials.contains(&special) {
                self.specials.push(special);
            }
        }
    }
}

/// DDL on objects that are not relations.
pub(crate) fn other_ddl_name(s: &Statement) -> Option<&'static str> {
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
