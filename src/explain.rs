//! `zoneguard explain` and the console's `EXPLAIN VERDICT`: what the guard
//! sees in a SQL text and what it decides, statement by statement, with
//! the same classifier and the same judgement as a session (pure: no
//! socket; the catalog, if any, is passed in).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::catalog::Catalog;
use crate::classify::{self, Special, StatementInfo};
use crate::policy::{Facts, Policy, Verdict};

/// The whole answer.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub role: String,
    pub switches: BTreeMap<String, bool>,
    /// Whether names were resolved through a database's catalog.
    pub catalog: bool,
    pub statements: Vec<StatementReport>,
    /// "allowed", "rejected", or "would_reject" (shadow: it runs, recorded).
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StatementReport {
    pub command: String,
    pub accesses: Vec<AccessReport>,
    /// Facts that are not accesses to a relation (DO, CALL, EXECUTE, ...).
    pub specials: Vec<String>,
    pub verdict: &'static str,
}

#[derive(Debug, Serialize)]
pub struct AccessReport {
    /// The policy's word: read, insert, ..., ddl, reference.
    pub op: &'static str,
    /// What the user would call it: "UPDATE", "NEXTVAL", "CREATE INDEX", ...
    pub operation: String,
    /// Where a nested access comes from: WITH, EXPLAIN ANALYZE, PREPARE,
    /// rule action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<&'static str>,
    pub table: String,
    /// The zones its name places it in, each with the rule that decides
    /// there (the catalog may place the object elsewhere: see `verdict`).
    pub zones: Vec<(String, String)>,
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn word(v: &Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allowed",
        Verdict::Deny(d) if d.shadow => "would_reject",
        Verdict::Deny(_) => "rejected",
    }
}

/// Explains `sql` for `role` under `switches` (missing ones at their
/// defaults), resolving names through `catalog` when given.
pub fn explain(
    policy: &Policy,
    sql: &str,
    role: &str,
    switches: &BTreeMap<String, bool>,
    catalog: Option<&Catalog>,
) -> Explanation {
    let mut positions = policy.default_switches();
    positions.extend(switches.iter().map(|(k, v)| (k.clone(), *v)));
    let facts = Facts {
        role,
        switches: &positions,
        catalog,
        search_path: None,
        flux: &[],
    };
    let statements = classify::classify(sql);
    // A PREPARE earlier in the text counts for an EXECUTE later in it, as
    // in a session.
    let mut prepared: Vec<(String, StatementInfo)> = Vec::new();
    let mut reports = Vec::new();
    let mut first_denial = None;
    let mut shadow_denial = None;
    for st in &statements {
        let lookup = |name: &str| bodies(&prepared, name);
        let verdict = policy.judge(st, facts, &lookup);
        let accesses = st
            .accesses
            .iter()
            .map(|a| {
                let one = StatementInfo {
                    command: st.command.clone(),
                    accesses: vec![a.clone()],
                    ..Default::default()
                };
                let v = policy.judge(&one, facts, &lookup);
                AccessReport {
                    op: a.op.as_str(),
                    operation: a.operation.clone(),
                    origin: a.origin,
                    table: a.table.to_string(),
                    zones: policy
                        .zones_of(&a.table)
                        .into_iter()
                        .map(|z| {
                            let rule = policy
                                .rule_for(z, &a.table, facts)
                                .map_or("defaults".to_owned(), |r| r.name.clone());
                            (z.to_owned(), rule)
                        })
                        .collect(),
                    verdict: word(&v),
                    message: match v {
                        Verdict::Deny(d) => Some(d.message),
                        Verdict::Allow => None,
                    },
                }
            })
            .collect();
        reports.push(StatementReport {
            command: st.command.clone(),
            accesses,
            specials: st.specials.iter().map(describe_special).collect(),
            verdict: word(&verdict),
        });
        if let Verdict::Deny(d) = verdict {
            if d.shadow {
                shadow_denial.get_or_insert(d);
            } else if first_denial.is_none() {
                first_denial = Some(d);
            }
        }
        if let Some(p) = &st.prepares {
            prepared.push((p.name.clone(), (*p.body).clone()));
        }
    }
    let (verdict, denial) = match (first_denial, shadow_denial) {
        (Some(d), _) => ("rejected", Some(d)),
        (None, Some(d)) => ("would_reject", Some(d)),
        (None, None) => ("allowed", None),
    };
    Explanation {
        role: role.to_owned(),
        switches: positions,
        catalog: catalog.is_some(),
        statements: reports,
        verdict,
        rule: denial.as_ref().map(|d| d.rule.clone()),
        sqlstate: denial.as_ref().map(|d| d.sqlstate.to_owned()),
        message: denial.as_ref().map(|d| d.message.clone()),
        hint: denial.map(|d| d.hint),
    }
}

/// What `EXECUTE name` may run, given the PREPAREs seen earlier in a text
/// (explain and check judge texts outside a session).
pub(crate) fn bodies(prepared: &[(String, StatementInfo)], name: &str) -> Vec<StatementInfo> {
    prepared
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, b)| b.clone())
        .collect()
}

fn describe_special(s: &Special) -> String {
    match s {
        Special::DoBlock => "DO block (its code is not visible)".into(),
        Special::Call { routine } => format!("CALL {routine} (its body is not visible)"),
        Special::OtherDdl { operation } => format!("{operation} (DDL outside the zones)"),
        Special::ExecutePrepared { name } => format!("EXECUTE {name}: judged by what {name} holds"),
        Special::Unparsed { may_write, reason } => format!(
            "not understood ({reason}){}",
            if *may_write {
                "; could write"
            } else {
                "; cannot write"
            }
        ),
        Special::UnreadableSetting { setting, value } => {
            format!("sets {setting} = {value}, which zoneguard cannot read under")
        }
        Special::DropSchemaCascade { schema } => {
            format!("drops every relation in schema {schema}")
        }
        Special::SyntaxError { message } => {
            format!("PostgreSQL's grammar rejects it ({message}): the server reports the error")
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let switches: Vec<String> = self
            .switches
            .iter()
            .map(|(k, v)| format!("{k}={}", if *v { "on" } else { "off" }))
            .collect();
        writeln!(
            f,
            "role {:?}; switches {}; names {}",
            self.role,
            if switches.is_empty() {
                "(none)".to_owned()
            } else {
                switches.join(", ")
            },
            if self.catalog {
                "resolved through the database's catalog"
            } else {
                "judged as written (no --database-url)"
            }
        )?;
        for (i, st) in self.statements.iter().enumerate() {
            writeln!(f, "statement {}: {} -> {}", i + 1, st.command, st.verdict)?;
            for a in &st.accesses {
                let zones: Vec<String> = a
                    .zones
                    .iter()
                    .map(|(z, r)| format!("{z} (rule {r})"))
                    .collect();
                let operation = match a.origin {
                    Some(o) => format!("{} (in {o})", a.operation),
                    None => a.operation.clone(),
                };
                writeln!(
                    f,
                    "  {:<9} {:<22} {:<30} zone {} -> {}",
                    a.op,
                    operation,
                    a.table,
                    zones.join(" / "),
                    a.verdict
                )?;
                if let Some(m) = &a.message {
                    writeln!(f, "            {m}")?;
                }
            }
            for s in &st.specials {
                writeln!(f, "  {s}")?;
            }
        }
        if self.statements.is_empty() {
            writeln!(f, "(no statement)")?;
        }
        write!(f, "verdict: {}", self.verdict)?;
        match (&self.sqlstate, &self.message) {
            (Some(code), Some(m)) => {
                writeln!(f, " ({code})")?;
                writeln!(f, "  ERROR:  {m}")?;
                if let Some(h) = &self.hint {
                    writeln!(f, "  HINT:   {h}")?;
                }
                Ok(())
            }
            _ => writeln!(f),
        }
    }
}
