//! The generic visitor for AST fragments that are not walked structurally
//! (expressions, select items, options): it hands the outermost queries,
//! table factors and statements in them to the walker, and spots
//! `set_config` calls that would change how strings are read.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectName, Query, Statement,
    TableFactor, Value, Visit, Visitor,
};

use super::walk::{name_parts, Walker};
use super::{Op, RelationName, Special};

impl Walker {
    /// Visit an AST fragment that is not walked structurally, reporting the
    /// queries, table factors and statements nested in it.
    pub fn nested<T: Visit + ?Sized>(&mut self, node: &T) {
        let mut v = Nested { w: self, depth: 0 };
        let _ = node.visit(&mut v);
    }

    /// `set_config('standard_conforming_strings', 'off', ...)` would make
    /// the guard misread string literals in later statements.
    ///
    /// Functions that act on a relation named by an argument (text or
    /// regclass) are judged as that access to the relation: see
    /// [`relation_function`]. dblink and large-object writers are treated
    /// like CALL.
    fn check_function(&mut self, e: &Expr) {
        let Expr::Function(f) = e else { return };
        let Some(name) = name_parts(&f.name).and_then(|p| p.last().cloned()) else {
            return;
        };
        let args: Vec<&Expr> = match &f.args {
            FunctionArguments::List(l) => l
                .args
                .iter()
                .filter_map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let literal = |n: usize| args.get(n).and_then(|e| string_literal(e));
        if let Some((op, operation)) = relation_function(&name) {
            match args.first().and_then(|e| relation_argument(e)) {
                Some(rel) => self.add(op, rel, operation),
                None => self.unparsed(format!(
                    "{name}() of a relation the guard cannot name: pass its name as a string literal or 'name'::regclass"
                )),
            }
            return;
        }
        match name.as_str() {
            "set_config" => self.check_set_config(literal(0), literal(1)),
            n if WRITES_OUTSIDE_SQL.contains(&n) => {
                let call = Special::Call { routine: name };
                if !self.specials.contains(&call) {
                    self.specials.push(call);
                }
            }
            _ => {}
        }
    }

    /// `set_config(name, value, ...)` of a setting the reading of SQL
    /// depends on, with a value the guard cannot read under (or cannot see).
    /// A computed name is allowed: if it changes one of them, the server
    /// reports it before anything read under the new value is judged (see
    /// `reading`, R2 and R3).
    fn check_set_config(&mut self, name: Option<String>, value: Option<String>) {
        if let Some(name) = name {
            self.check_setting(&name, value.as_deref());
        }
    }
}

/// Functions that write outside SQL (another database, large objects,
/// files): judged like CALL.
pub(crate) const WRITES_OUTSIDE_SQL: &[&str] = &[
    "dblink",
    "dblink_exec",
    "dblink_send_query",
    "lo_import",
    "lo_export",
    "lo_unlink",
    "lo_put",
    "lo_truncate",
    "lo_truncate64",
    "lo_create",
    "lo_creat",
    "lo_from_bytea",
    "pg_file_write",
    "pg_file_unlink",
    "pg_file_rename",
];

/// Functions that change a relation named by their first argument, with the
/// access they make and the operation's name. Invariant: a function the
/// guard lets write to a relation is judged on that relation, resolved as
/// PostgreSQL resolves the argument (`regclass` input: search_path for an
/// unqualified name), and through the catalog on its owner: a sequence
/// belongs to the table that owns it, an index to its table.
///
/// `nextval` is what inserting a row with a serial or identity key takes,
/// so it is an insert; `setval` moves the sequence and is an update;
/// `currval`/`lastval` only read the session's own value.
pub(crate) fn relation_function(name: &str) -> Option<(Op, &'static str)> {
    Some(match name {
        "nextval" => (Op::Insert, "NEXTVAL"),
        "setval" => (Op::Update, "SETVAL"),
        "brin_summarize_new_values"
        | "brin_summarize_range"
        | "brin_desummarize_range"
        | "gin_clean_pending_list" => (Op::Ddl, "INDEX MAINTENANCE"),
        _ => return None,
    })
}

/// The relation an argument names: a string literal read as `regclass`
/// input, the same cast to `regclass` (or text), or
/// `pg_get_serial_sequence('table', 'column')`, whose sequence belongs to
/// that table.
fn relation_argument(e: &Expr) -> Option<RelationName> {
    match e {
        Expr::Nested(inner) => relation_argument(inner),
        Expr::Cast { expr, .. } => relation_argument(expr),
        Expr::Function(f) => {
            let name = name_parts(&f.name).and_then(|p| p.last().cloned())?;
            if name != "pg_get_serial_sequence" {
                return None;
            }
            let FunctionArguments::List(l) = &f.args else {
                return None;
            };
            match l.args.first() {
                Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(t))) => relation_argument(t),
                _ => None,
            }
        }
        _ => regclass_name(&string_literal(e)?),
    }
}

fn string_literal(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::UnicodeStringLiteral(s) => Some(s.clone()),
            Value::DollarQuotedString(d) => Some(d.value.clone()),
            _ => None,
        },
        Expr::TypedString(t) => match &t.value.value {
            Value::SingleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// A relation name as PostgreSQL's `regclass` input reads it
/// (`stringToQualifiedNameList`): dot-separated parts with optional
/// whitespace around them, `"quoted"` parts as written (`""` is a quote),
/// unquoted parts folded to lower case (ASCII only, as for a UTF-8
/// database) and cut at 63 bytes; `catalog.schema.name` drops the catalog.
pub(crate) fn regclass_name(text: &str) -> Option<RelationName> {
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        let mut part = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' || c.is_ascii_whitespace() {
                    break;
                }
                part.push(c);
                chars.next();
            }
            if part.is_empty() {
                return None;
            }
        }
        parts.push(super::walk::norm_ident(&part, quoted));
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(_) => return None,
        }
    }
    if parts.len() > 3 {
        return None;
    }
    super::walk::relation_from_parts(&parts)
}

/// Visits an AST fragment and hands the outermost queries, table factors and
/// statements in it to the walker.
struct Nested<'w> {
    w: &'w mut Walker,
    depth: usize,
}

impl Visitor for Nested<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if self.depth == 0 {
            self.w.query(q);
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
        if self.depth == 0 {
            self.w.table_factor(tf, &mut Vec::new());
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, _: &TableFactor) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        if self.depth == 0 {
            self.w.statement(s);
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _: &Statement) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
        if self.depth == 0 {
            self.w
                .unparsed(format!("unexpected reference to relation {r}"));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if self.depth == 0 {
            self.w.check_function(e);
        }
        ControlFlow::Continue(())
    }
}
