//! The AST walker for queries: identifier normalisation, which relations a
//! query reads, FROM lists, row locks (`FOR UPDATE / SHARE`) and CTE scoping.

use sqlparser::ast::{
    Expr, Ident, Join, JoinConstraint, JoinOperator, LockClause, LockType, ObjectName,
    ObjectNamePart, Query, Select, SetExpr, Statement, TableAlias, TableFactor, TableWithJoins,
};

use super::{Deallocate, Op, Prepared, RelationName, Special, TableAccess};

/// PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
const MAX_IDENT_BYTES: usize = 63;

/// Normalise one identifier as PostgreSQL resolves it: unquoted parts fold
/// to lower case (ASCII only, as in a UTF-8 database), quoted parts stay as
/// written; both are truncated to 63 bytes.
pub(crate) fn norm_ident(value: &str, quoted: bool) -> String {
    let mut s = if quoted {
        value.to_owned()
    } else {
        value.to_ascii_lowercase()
    };
    if s.len() > MAX_IDENT_BYTES {
        let mut cut = MAX_IDENT_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

pub(crate) fn ident(i: &Ident) -> String {
    norm_ident(&i.value, i.quote_style.is_some())
}

/// The identifier parts of an object name, normalised; `None` if a part is
/// not a plain identifier.
pub(crate) fn name_parts(name: &ObjectName) -> Option<Vec<String>> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(ident(i)),
            _ => None,
        })
        .collect()
}

/// `[db.]schema.table` parts to a relation name (the catalog part is dropped).
pub(crate) fn relation_from_parts(parts: &[String]) -> Option<RelationName> {
    match parts {
        [name] => Some(RelationName::new(None, name)),
        [.., schema, name] => Some(RelationName::new(Some(schema), name)),
        [] => None,
    }
}

/// One entry of a FROM list, for `FOR UPDATE [OF name]`: the name it is
/// referred to by and the relations it reads.
pub(crate) struct FromItem {
    key: Option<String>,
    rels: Vec<RelationName>,
}

/// Collects the facts of one statement.
#[derive(Default)]
pub(crate) struct Walker {
    /// Where accesses added now come from (see `TableAccess::origin`).
    pub origin: Option<&'static str>,
    pub accesses: Vec<TableAccess>,
    pub specials: Vec<Special>,
    pub prepares: Option<Prepared>,
    pub deallocates: Option<Deallocate>,
    pub cursor: Option<super::CursorOp>,
    /// Names of the CTEs in scope (normalised).
    ctes: Vec<String>,
}

impl Walker {
    pub fn add(&mut self, op: Op, table: RelationName, operation: &str) {
        self.add_only(op, table, operation, false);
    }

    /// [`add`](Self::add), of `ONLY table` when `only`.
    pub fn add_only(&mut self, op: Op, table: RelationName, operation: &str, only: bool) {
        self.accesses.push(TableAccess {
            op,
            table,
            operation: operation.to_owned(),
            origin: self.origin,
            only,
        });
    }

    pub fn unparsed(&mut self, reason: impl Into<String>) {
        self.specials.push(Special::Unparsed {
            may_write: true,
            reason: reason.into(),
        });
    }

    pub fn other_ddl(&mut self, operation: &str) {
        self.specials.push(Special::OtherDdl {
            operation: operation.to_owned(),
        });
    }

    /// Resolve a relation name, failing closed if it has an unusual shape.
    pub fn relation(&mut self, name: &ObjectName) -> Option<RelationName> {
        let rel = name_parts(name).and_then(|p| relation_from_parts(&p));
        if rel.is_none() {
            self.unparsed(format!("relation name {name} is not understood"));
        }
        rel
    }

    /// Report `op` on the relation `name`.
    pub fn target(&mut self, op: Op, name: &ObjectName, operation: &str) {
        self.target_only(op, name, operation, false);
    }

    /// [`target`](Self::target), of `ONLY name` when `only`.
    pub fn target_only(&mut self, op: Op, name: &ObjectName, operation: &str, only: bool) {
        if let Some(rel) = self.relation(name) {
            self.add_only(op, rel, operation, only);
        }
    }

    fn is_cte(&self, rel: &RelationName) -> bool {
        rel.schema.is_none() && self.ctes.contains(&rel.name)
    }

    /// Reads added since `start`, for locks and views.
    fn reads_since(&self, start: usize) -> Vec<RelationName> {
        self.accesses[start..]
            .iter()
            .filter(|a| a.op == Op::Read)
            .map(|a| a.table.clone())
            .collect()
    }

    /// Walks with `origin` marked on what is added (the outermost mark wins).
    pub fn within(&mut self, origin: &'static str, f: impl FnOnce(&mut Self)) {
        let saved = self.origin;
        self.origin = saved.or(Some(origin));
        f(self);
        self.origin = saved;
    }

    pub fn query(&mut self, q: &Query) {
        let saved = self.ctes.len();
        if let Some(with) = &q.with {
            if with.recursive {
                for cte in &with.cte_tables {
                    self.ctes.push(ident(&cte.alias.name));
                }
                for cte in &with.cte_tables {
                    self.within("WITH", |w| w.query(&cte.query));
                }
            } else {
                // A plain WITH's names are visible to later CTEs and the body.
                for cte in &with.cte_tables {
                    self.within("WITH", |w| w.query(&cte.query));
                    self.ctes.push(ident(&cte.alias.name));
                }
            }
        }
        let start = self.accesses.len();
        let items = self.set_expr(&q.body);
        for lock in &q.locks {
            self.lock(lock, items.as_deref(), start);
        }
        self.nested(&q.order_by);
        self.nested(&q.limit_clause);
        self.nested(&q.fetch);
        self.nested(&q.settings);
        self.nested(&q.format_clause);
        self.nested(&q.for_clause);
        if !q.pipe_operators.is_empty() {
            self.unparsed("pipe operators are not understood by zoneguard");
            self.nested(&q.pipe_operators);
        }
        self.ctes.truncate(saved);
    }

    /// `FOR UPDATE / SHARE [OF name]`: lock the FROM items of the SELECT (all
    /// reads of the body if it is not a plain SELECT).
    fn lock(&mut self, lock: &LockClause, items: Option<&[FromItem]>, start: usize) {
        let operation = match lock.lock_type {
            LockType::Update => "SELECT FOR UPDATE",
            LockType::Share => "SELECT FOR SHARE",
        };
        let mut rels = Vec::new();
        match (&lock.of, items) {
            (None, Some(items)) => rels.extend(items.iter().flat_map(|i| i.rels.clone())),
            (None, None) => rels = self.reads_since(start),
            (Some(of), _) => {
                let key = name_parts(of).and_then(|p| p.last().cloned());
                let found: Vec<&FromItem> = items
                    .unwrap_or(&[])
                    .iter()
                    .filter(|i| i.key.is_some() && i.key == key)
                    .collect();
                if found.is_empty() {
                    // Unknown name: lock what it names (PostgreSQL would refuse).
                    match self.relation(of) {
                        Some(rel) => rels.push(rel),
                        None => return,
                    }
                } else {
                    rels.extend(found.iter().flat_map(|i| i.rels.clone()));
                }
            }
        }
        for rel in rels {
            self.add(Op::Lock, rel, operation);
        }
    }

    /// Walk a query body; returns the FROM items when it is a plain SELECT.
    fn set_expr(&mut self, body: &SetExpr) -> Option<Vec<FromItem>> {
        match body {
            SetExpr::Select(s) => return Some(self.select(s)),
            SetExpr::Query(q) => self.query(q),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left);
                self.set_expr(right);
            }
            SetExpr::Values(v) => self.nested(v),
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
                self.dml(s)
            }
            SetExpr::Table(t) => match &t.table_name {
                Some(name) => {
                    let name = ident(name);
                    let rel = match &t.schema_name {
                        Some(s) => RelationName::new(Some(&ident(s)), &name),
                        None => RelationName::new(None, &name),
                    };
                    if !self.is_cte(&rel) {
                        self.add(Op::Read, rel, "SELECT");
                    }
                }
                None => self.unparsed("TABLE without a name"),
            },
        }
        None
    }

    /// A statement nested in a query (data-modifying CTE) or rule action.
    fn dml(&mut self, s: &Statement) {
        match s {
            Statement::Insert(i) => self.insert(i),
            Statement::Update(u) => self.update(u),
            Statement::Delete(d) => self.delete(d),
            Statement::Merge(m) => self.merge(m),
            other => {
                self.unparsed(format!(
                    "nested statement {} is not understood by zoneguard",
                    super::stmt::variant_name(other)
                ));
                self.nested(other);
            }
        }
    }

    fn select(&mut self, s: &Select) -> Vec<FromItem> {
        let Select {
            select_token: _,
            optimizer_hints: _,
            distinct,
            select_modifiers: _,
            top,
            top_before_distinct: _,
            projection,
            exclude: _,
            into,
            from,
            lateral_views,
            prewhere,
            selection,
            connect_by,
            group_by,
            cluster_by,
            distribute_by,
            sort_by,
            having,
            named_window,
            qualify,
            window_before_qualify: _,
            value_table_mode: _,
            flavor: _,
        } = s;
        let mut items = Vec::new();
        for twj in from {
            self.table_with_joins(twj, &mut items);
        }
        if let Some(into) = into {
            for t in &into.targets {
                match t {
                    Expr::Identifier(i) => {
                        self.add(Op::Ddl, RelationName::new(None, &ident(i)), "SELECT INTO")
                    }
                    Expr::CompoundIdentifier(parts) => {
                        let parts: Vec<String> = parts.iter().map(ident).collect();
                        match relation_from_parts(&parts) {
                            Some(rel) => self.add(Op::Ddl, rel, "SELECT INTO"),
                            None => self.unparsed("SELECT INTO target not understood"),
                        }
                    }
                    _ => self.unparsed("SELECT INTO target not understood"),
                }
            }
        }
        self.nested(distinct);
        self.nested(top);
        self.nested(projection);
        self.nested(lateral_views);
        self.nested(prewhere);
        self.nested(selection);
        self.nested(connect_by);
        self.nested(group_by);
        self.nested(cluster_by);
        self.nested(distribute_by);
        self.nested(sort_by);
        self.nested(having);
        self.nested(named_window);
        self.nested(qualify);
        items
    }

    pub fn table_with_joins(&mut self, twj: &TableWithJoins, items: &mut Vec<FromItem>) {
        self.table_factor(&twj.relation, items);
        for join in &twj.joins {
            self.join(join, items);
        }
    }

    pub(crate) fn join(&mut self, join: &Join, items: &mut Vec<FromItem>) {
        self.table_factor(&join.relation, items);
        let constraint = match &join.join_operator {
            JoinOperator::Join(c)
            | JoinOperator::Inner(c)
            | JoinOperator::Left(c)
            | JoinOperator::LeftOuter(c)
            | JoinOperator::Right(c)
            | JoinOperator::RightOuter(c)
            | JoinOperator::FullOuter(c)
            | JoinOperator::CrossJoin(c)
            | JoinOperator::Semi(c)
            | JoinOperator::LeftSemi(c)
            | JoinOperator::RightSemi(c)
            | JoinOperator::Anti(c)
            | JoinOperator::LeftAnti(c)
            | JoinOperator::RightAnti(c)
            | JoinOperator::StraightJoin(c) => c,
            JoinOperator::AsOf {
                match_condition,
                constraint,
            } => {
                self.nested(match_condition);
                constraint
            }
            JoinOperator::CrossApply
            | JoinOperator::OuterApply
            | JoinOperator::ArrayJoin
            | JoinOperator::LeftArrayJoin
            | JoinOperator::InnerArrayJoin => return,
        };
        if let JoinConstraint::On(e) = constraint {
            self.nested(e);
        }
    }

    pub fn table_factor(&mut self, tf: &TableFactor, items: &mut Vec<FromItem>) {
        let key = |alias: &Option<TableAlias>| alias.as_ref().map(|a| ident(&a.name));
        match tf {
            TableFactor::Table {
                name,
                alias,
                args,
                with_hints,
                version,
                sample,
                ..
            } => {
                self.nested(with_hints);
                self.nested(version);
                self.nested(sample);
                if let Some(args) = args {
                    // A table function call: not a relation.
                    self.nested(&args.args);
                    return;
                }
                let Some(rel) = self.relation(name) else {
                    return;
                };
                let k = key(alias).or_else(|| Some(rel.name.clone()));
                if self.is_cte(&rel) {
                    items.push(FromItem {
                        key: k,
                        rels: vec![],
                    });
                    return;
                }
                self.add(Op::Read, rel.clone(), "SELECT");
                items.push(FromItem {
                    key: k,
                    rels: vec![rel],
                });
            }
            TableFactor::Derived {
                subquery,
                alias,
                sample,
                ..
            } => {
                let start = self.accesses.len();
                self.query(subquery);
                self.nested(sample);
                let rels = self.reads_since(start);
                items.push(FromItem {
                    key: key(alias),
                    rels,
                });
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let mut inner = Vec::new();
                self.table_with_joins(table_with_joins, &mut inner);
                if alias.is_some() {
                    let rels = inner.into_iter().flat_map(|i| i.rels).collect();
                    items.push(FromItem {
                        key: key(alias),
                        rels,
                    });
                } else {
                    items.extend(inner);
                }
            }
            TableFactor::TableFunction { expr, .. } => self.nested(expr),
            TableFactor::Function { args, .. } => self.nested(args),
            TableFactor::UNNEST { array_exprs, .. } => self.nested(array_exprs),
            TableFactor::JsonTable {
                json_expr, columns, ..
            } => {
                self.nested(json_expr);
                self.nested(columns);
            }
            TableFactor::XmlTable {
                row_expression,
                passing,
                columns,
                namespaces,
                ..
            } => {
                self.nested(namespaces);
                self.nested(row_expression);
                self.nested(passing);
                self.nested(columns);
            }
            TableFactor::OpenJsonTable { .. }
            | TableFactor::Pivot { .. }
            | TableFactor::Unpivot { .. }
            | TableFactor::UnpivotExpr { .. }
            | TableFactor::MatchRecognize { .. }
            | TableFactor::SemanticView { .. } => {
                self.unparsed("table expression is not understood by zoneguard");
            }
        }
    }
}
