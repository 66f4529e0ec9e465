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
use super::{Op, Special};

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
    /// Also functions known to write where no table name in the SQL shows it:
    /// `setval('seq', ...)` is an update of that sequence (a relation, judged
    /// by its zone); dblink and large-object writers are treated like CALL.
    fn check_function(&mut self, e: &Expr) {
        let Expr::Function(f) = e else { return };
        let Some(name) = name_parts(&f.name).and_then(|p| p.last().cloned()) else {
            return;
        };
        let arg = |n: usize| match &f.args {
            FunctionArguments::List(l) => match l.args.get(n) {
                Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) => {
                    match &v.value {
                        Value::SingleQuotedString(s)
                        | Value::EscapedStringLiteral(s)
                        | Value::UnicodeStringLiteral(s) => Some(s.clone()),
                        Value::DollarQuotedString(d) => Some(d.value.clone()),
                        _ => None,
                    }
                }
                _ => None,
            },
            _ => None,
        };
        let literal = arg(0);
        match name.as_str() {
            "set_config" => self.check_set_config(literal, arg(1)),
            "setval" => match literal.as_deref().and_then(crate::policy::parse_table_name) {
                Some(seq) => self.add(Op::Update, seq, "SETVAL"),
                None => self.unparsed("setval() of a sequence the guard cannot name"),
            },
            "dblink" | "dblink_exec" | "dblink_send_query" | "lo_import" | "lo_export"
            | "lo_unlink" | "lo_put" | "lo_truncate" | "lo_truncate64" | "lo_create"
            | "lo_creat" | "lo_from_bytea" | "pg_file_write" | "pg_file_unlink"
            | "pg_file_rename" => {
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
