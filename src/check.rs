//! `zoneguard check`: what an application really sends, read from
//! PostgreSQL's own logs (csvlog, jsonlog, stderr with `log_statement =
//! 'all'`), a pg_stat_statements export or a plain SQL file, judged against
//! a policy: what would be rejected (grouped by rule, table and operation,
//! with counts and an example), what could not be classified, and the
//! policy edits that would let the rejected statements through (as
//! suggestions, never applied). Streams its input: memory stays constant
//! whatever the size of the log.

use std::collections::BTreeMap;
use std::fmt;
use std::io::BufRead;

use crate::catalog::Catalog;
use crate::classify::{self, Special, StatementInfo};
use crate::policy::{Facts, Policy, Verdict};

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csvlog,
    Jsonlog,
    Stderr,
    Sql,
    Pgss,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "csvlog" | "csv" => Format::Csvlog,
            "jsonlog" | "json" => Format::Jsonlog,
            "stderr" | "log" => Format::Stderr,
            "sql" => Format::Sql,
            "pgss" => Format::Pgss,
            _ => return None,
        })
    }

    /// From a file name: `.csv` csvlog (or a pg_stat_statements export if
    /// its header has a `query` column), `.json` jsonlog, `.sql` sql,
    /// anything else stderr.
    pub fn guess(path: &std::path::Path, first_line: &str) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("csv")
                if first_line
                    .split(',')
                    .any(|c| c.trim().trim_matches('"') == "query") =>
            {
                Format::Pgss
            }
            Some("csv") => Format::Csvlog,
            Some("json") => Format::Jsonlog,
            Some("sql") => Format::Sql,
            _ => Format::Stderr,
        }
    }
}

/// One statement text found in the input, with the role that sent it (if
/// the input says).
pub struct Sent {
    pub sql: String,
    pub role: Option<String>,
}

/// The SQL in a log message written with `log_statement`: `statement: ...`
/// (simple protocol) or `execute <name>: ...` (extended).
pub fn statement_of(message: &str) -> Option<&str> {
    if let Some(rest) = message.strip_prefix("statement: ") {
        return Some(rest);
    }
    let rest = message.strip_prefix("execute ")?;
    let colon = rest.find(": ")?;
    Some(&rest[colon + 2..])
}

/// Reads statements from `input` in `format`, calling `each` for every one;
/// `bytes` is told how far the input has been read (for progress).
pub fn read(format: Format, input: impl BufRead, each: &mut dyn FnMut(Sent)) -> Result<(), String> {
    match format {
        Format::Csvlog | Format::Pgss => {
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(format == Format::Pgss)
                .flexible(true)
                .from_reader(input);
            let (mut query_col, mut role_col) = (None, None);
            if format == Format::Pgss {
                let h = rdr.headers().map_err(|e| e.to_string())?;
                query_col = h.iter().position(|c| c == "query");
                role_col = h
                    .iter()
                    .position(|c| c == "rolname" || c == "user" || c == "usename");
                if query_col.is_none() {
                    return Err("a pg_stat_statements export needs a `query` column".into());
                }
            }
            for rec in rdr.records() {
                let rec = rec.map_err(|e| e.to_string())?;
                if format == Format::Pgss {
                    if let Some(q) = query_col.and_then(|i| rec.get(i)) {
                        each(Sent {
                            sql: q.to_owned(),
                            role: role_col.and_then(|i| rec.get(i)).map(str::to_owned),
                        });
                    }
                    continue;
                }
                // csvlog: user_name is column 2, message column 14.
                if let Some(sql) = rec.get(13).and_then(statement_of) {
                    each(Sent {
                        sql: sql.to_owned(),
                        role: rec.get(1).filter(|u| !u.is_empty()).map(str::to_owned),
                    });
                }
            }
        }
        Format::Jsonlog => {
            for line in input.lines() {
                let line = line.map_err(|e| e.to_string())?;
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if let Some(sql) = v["message"].as_str().and_then(statement_of) {
                    each(Sent {
                        sql: sql.to_owned(),
                        role: v["user"].as_str().map(str::to_owned),
                    });
                }
            }
        }
        Format::Stderr => {
            // `<prefix>LOG:  statement: ...`, continued on lines that start
            // with a tab; `user=NAME` in the prefix names the role.
            let mut current: Option<Sent> = None;
            for line in input.lines() {
                let line = line.map_err(|e| e.to_string())?;
                if let Some(cont) = line.strip_prefix('\t') {
                    if let Some(c) = current.as_mut() {
                        c.sql.push('\n');
                        c.sql.push_str(cont);
                    }
                    continue;
                }
                if let Some(done) = current.take() {
                    each(done);
                }
                let Some(at) = line.find("LOG:  ") else {
                    continue;
                };
                let (prefix, message) = (&line[..at], &line[at + 6..]);
                if let Some(sql) = statement_of(message) {
                    let role = prefix
                        .split(|c: char| c.is_whitespace() || c == ',' || c == '@')
                        .find_map(|w| w.strip_prefix("user="))
                        .map(str::to_owned);
                    current = Some(Sent {
                        sql: sql.to_owned(),
                        role,
                    });
                }
            }
            if let Some(done) = current {
                each(done);
            }
        }
        Format::Sql => {
            // Statements end at a `;` that ends a line outside strings and
            // comments; psql meta-commands are skipped.
            let mut acc = String::new();
            for line in input.lines() {
                let line = line.map_err(|e| e.to_string())?;
                if acc.is_empty() && line.trim_start().starts_with('\\') {
                    continue;
                }
                acc.push_str(&line);
                acc.push('\n');
                if line.trim_end().ends_with(';')
                    && classify::reading::scan(acc.as_bytes())
                        != classify::reading::Lexed::Unterminated
                {
                    each(Sent {
                        sql: std::mem::take(&mut acc),
                        role: None,
                    });
                }
            }
            if !acc.trim().is_empty() {
                each(Sent {
                    sql: acc,
                    role: None,
                });
            }
        }
    }
    Ok(())
}

/// Statements the policy would reject, grouped.
#[derive(Debug, Default)]
pub struct Report {
    pub statements: u64,
    pub allowed: u64,
    /// (rule, table, operation, role) -> count, one example, the message.
    pub rejected: BTreeMap<(String, String, String, String), Group>,
    /// Statements the guard could not classify (whatever their verdict).
    pub unclassified: BTreeMap<String, Group>,
    /// Suggested policy edits, each with how many statements it would let
    /// through.
    pub suggestions: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
pub struct Group {
    pub count: u64,
    pub example: String,
    pub message: String,
}

impl Report {
    pub fn rejected_count(&self) -> u64 {
        self.rejected.values().map(|g| g.count).sum()
    }

    /// Judges one statement text sent by `role`.
    pub fn add(
        &mut self,
        policy: &Policy,
        sql: &str,
        role: &str,
        switches: &BTreeMap<String, bool>,
        catalog: Option<&Catalog>,
    ) {
        let facts = Facts {
            role,
            switches,
            catalog,
            search_path: None,
            flux: &[],
        };
        let mut prepared: Vec<(String, StatementInfo)> = Vec::new();
        for st in classify::classify(sql) {
            self.statements += 1;
            for s in &st.specials {
                if let Special::Unparsed { reason, .. } = s {
                    let g = self.unclassified.entry(reason.clone()).or_default();
                    g.count += 1;
                    if g.example.is_empty() {
                        g.example = cut(sql);
                    }
                }
            }
            let lookup = |name: &str| crate::explain::bodies(&prepared, name);
            match policy.judge(&st, facts, &lookup) {
                Verdict::Deny(d) if !d.shadow => {
                    let key = (
                        d.rule.clone(),
                        d.table.clone().unwrap_or_default(),
                        d.operation.clone(),
                        role.to_owned(),
                    );
                    let g = self.rejected.entry(key).or_default();
                    g.count += 1;
                    if g.example.is_empty() {
                        g.example = cut(sql);
                        g.message = d.message.clone();
                    }
                    *self
                        .suggestions
                        .entry(suggest(policy, &st, &d, role))
                        .or_default() += 1;
                }
                _ => self.allowed += 1,
            }
            if let Some(p) = &st.prepares {
                prepared.push((p.name.clone(), (*p.body).clone()));
            }
        }
    }
}

fn cut(sql: &str) -> String {
    let one_line: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 200 {
        one_line.chars().take(200).collect::<String>() + "..."
    } else {
        one_line
    }
}

/// A policy edit that would let the statement through: for a zone rule, a
/// rule for this role allowing the operation (placed before the one that
/// refused it); for an unlisted table, a zone for it; for a guard option,
/// the option for this role.
fn suggest(policy: &Policy, st: &StatementInfo, d: &crate::policy::Denial, role: &str) -> String {
    let option = |name: &str| format!("[roles.{role}] {name} = true");
    match d.rule.as_str() {
        "do_blocks" => return option("do_blocks"),
        "call" => return option("call"),
        "other_ddl" => return option("other_ddl"),
        "function_calls" => return option("function_calls"),
        "unparsed" => {
            return "rewrite the statement in plainer SQL (zoneguard could not tell whether it writes)".into()
        }
        _ => {}
    }
    let op = st
        .accesses
        .iter()
        .find(|a| d.message.starts_with(&a.operation))
        .map_or("write", |a| a.op.as_str());
    match d.zone.as_deref() {
        Some(crate::policy::UNLISTED_ZONE) | None => format!(
            "put {} in a zone whose rules allow {op} for role {role}",
            d.table.as_deref().unwrap_or("the table")
        ),
        Some(zone) => {
            let before = if policy.rules.iter().any(|r| r.name == d.rule) {
                format!(" before rule \"{}\"", d.rule)
            } else {
                String::new()
            };
            format!(
                "[[rules]] name = \"learned-{zone}-{role}-{op}\", zone = \"{zone}\", roles = [\"{role}\"], allow = [\"{op}\"]{before}"
            )
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} statements: {} allowed, {} would be rejected, {} not classified",
            self.statements,
            self.allowed,
            self.rejected_count(),
            self.unclassified.values().map(|g| g.count).sum::<u64>()
        )?;
        if !self.rejected.is_empty() {
            writeln!(
                f,
                "\nwould be rejected (rule, table, operation, role: count):"
            )?;
            for ((rule, table, op, role), g) in &self.rejected {
                writeln!(f, "  {rule}  {table}  {op}  role {role}: {}", g.count)?;
                writeln!(f, "      {}", g.message)?;
                writeln!(f, "      e.g. {}", g.example)?;
            }
        }
        if !self.unclassified.is_empty() {
            writeln!(f, "\nnot classified:")?;
            for (reason, g) in &self.unclassified {
                writeln!(f, "  {reason}: {}", g.count)?;
                writeln!(f, "      e.g. {}", g.example)?;
            }
        }
        if !self.suggestions.is_empty() {
            writeln!(
                f,
                "\npolicy edits that would let them through (suggestions, not applied):"
            )?;
            for (s, n) in &self.suggestions {
                writeln!(f, "  {s}    ({n} statements)")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_messages() {
        assert_eq!(statement_of("statement: SELECT 1"), Some("SELECT 1"));
        assert_eq!(
            statement_of("execute <unnamed>: SELECT $1"),
            Some("SELECT $1")
        );
        assert_eq!(
            statement_of("execute s1: UPDATE t SET a = 1"),
            Some("UPDATE t SET a = 1")
        );
        assert_eq!(statement_of("duration: 1 ms"), None);
    }

    #[test]
    fn stderr_and_sql_inputs() {
        let log = "2026-12-02 10:00:00 UTC [12] user=app@shop LOG:  statement: SELECT 1;\n\
                   \tSELECT 2\n\
                   2026-12-02 10:00:01 UTC [12] user=app@shop LOG:  duration: 0.1 ms\n\
                   2026-12-02 10:00:02 UTC [13] user=legacy_app@shop LOG:  execute <unnamed>: UPDATE users SET a = 1\n";
        let mut got = Vec::new();
        read(Format::Stderr, log.as_bytes(), &mut |s| {
            got.push((s.sql, s.role))
        })
        .unwrap();
        assert_eq!(
            got,
            [
                ("SELECT 1;\nSELECT 2".to_owned(), Some("app".to_owned())),
                (
                    "UPDATE users SET a = 1".to_owned(),
                    Some("legacy_app".to_owned())
                ),
            ]
        );
        let sql = "\\set x 1\nSELECT ';\n';\nUPDATE users\n  SET a = 1;\n";
        let mut got = Vec::new();
        read(Format::Sql, sql.as_bytes(), &mut |s| got.push(s.sql)).unwrap();
        assert_eq!(got, ["SELECT ';\n';\n", "UPDATE users\n  SET a = 1;\n"]);
    }
}
