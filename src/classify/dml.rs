//! INSERT / UPDATE / DELETE / MERGE: which relations they write and read.

use sqlparser::ast::{
    Delete, FromTable, Insert, Merge, MergeAction, OnConflictAction, OnInsert, TableFactor,
    TableInheritance, TableObject, TableWithJoins, Update, UpdateTableFromKind,
};

use super::walk::Walker;
use super::Op;

impl Walker {
    pub fn insert(&mut self, i: &Insert) {
        match &i.table {
            TableObject::TableName(name) => {
                self.target(Op::Insert, name, "INSERT");
                if let Some(OnInsert::OnConflict(oc)) = &i.on {
                    if let OnConflictAction::DoUpdate(du) = &oc.action {
                        self.target(Op::Update, name, "INSERT ON CONFLICT DO UPDATE");
                        self.nested(&du.assignments);
                        self.nested(&du.selection);
                    }
                }
                if let Some(OnInsert::DuplicateKeyUpdate(a)) = &i.on {
                    self.target(Op::Update, name, "INSERT ON DUPLICATE KEY UPDATE");
                    self.nested(a);
                }
            }
            _ => self.unparsed("INSERT target is not understood by zoneguard"),
        }
        if let Some(q) = &i.source {
            self.query(q);
        }
        self.nested(&i.assignments);
        self.nested(&i.partitioned);
        self.nested(&i.returning);
        self.nested(&i.output);
        self.nested(&i.settings);
        if i.multi_table_insert_type.is_some()
            || !i.multi_table_into_clauses.is_empty()
            || !i.multi_table_when_clauses.is_empty()
            || i.multi_table_else_clause.is_some()
        {
            self.unparsed("multi-table INSERT is not understood by zoneguard");
        }
    }

    /// Report `op` on every plain table of a target list (`UPDATE a JOIN b`
    /// and `DELETE FROM a, b` are not PostgreSQL, but fail closed).
    fn write_targets(&mut self, op: Op, twj: &TableWithJoins, operation: &str) {
        let factors = std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation));
        for tf in factors {
            match tf {
                TableFactor::Table {
                    name,
                    args: None,
                    inheritance,
                    ..
                } => self.target_only(
                    op,
                    name,
                    operation,
                    matches!(inheritance, Some(TableInheritance::Only { .. })),
                ),
                _ => self.unparsed(format!("{operation} target is not understood")),
            }
        }
        for j in &twj.joins {
            self.join(j, &mut Vec::new());
        }
    }

    pub fn update(&mut self, u: &Update) {
        self.write_targets(Op::Update, &u.table, "UPDATE");
        if let Some(from) = &u.from {
            let (UpdateTableFromKind::BeforeSet(f) | UpdateTableFromKind::AfterSet(f)) = from;
            for twj in f {
                self.table_with_joins(twj, &mut Vec::new());
            }
        }
        self.nested(&u.assignments);
        self.nested(&u.selection);
        self.nested(&u.returning);
        self.nested(&u.output);
        self.nested(&u.order_by);
        self.nested(&u.limit);
    }

    pub fn delete(&mut self, d: &Delete) {
        let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
        if d.tables.is_empty() {
            for twj in from {
                self.write_targets(Op::Delete, twj, "DELETE");
            }
        } else {
            for t in &d.tables {
                self.target(Op::Delete, t, "DELETE");
            }
            for twj in from {
                self.table_with_joins(twj, &mut Vec::new());
            }
        }
        for twj in d.using.iter().flatten() {
            self.table_with_joins(twj, &mut Vec::new());
        }
        self.nested(&d.selection);
        self.nested(&d.returning);
        self.nested(&d.output);
        self.nested(&d.order_by);
        self.nested(&d.limit);
    }

    pub fn merge(&mut self, m: &Merge) {
        let target = match &m.table {
            TableFactor::Table {
                name, args: None, ..
            } => Some(name),
            _ => {
                self.unparsed("MERGE target is not understood by zoneguard");
                None
            }
        };
        for clause in &m.clauses {
            let op = match &clause.action {
                MergeAction::Insert(_) => Some(Op::Insert),
                MergeAction::Update(_) => Some(Op::Update),
                MergeAction::Delete { .. } => Some(Op::Delete),
                MergeAction::DoNothing { .. } => None,
            };
            if let (Some(op), Some(name)) = (op, target) {
                self.target(op, name, "MERGE");
            }
            self.nested(&clause.predicate);
            self.nested(&clause.action);
        }
        self.table_factor(&m.source, &mut Vec::new());
        self.nested(&m.on);
        self.nested(&m.output);
    }
}
