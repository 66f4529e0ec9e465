//! Names in flux: what DDL the guard let through has changed, before the
//! guard's own catalog connection can see it.
//!
//! The invariant (docs/catalog.md, "No lag"): **no statement is judged
//! against a catalog older than the statements the server will have
//! executed before it.** The catalog is a snapshot read over another
//! connection, so it cannot see a session's uncommitted DDL, nor DDL whose
//! commit the guard has relayed but not yet re-read. Every relation name
//! that such DDL touches is therefore *in flux* until a catalog load that
//! started after the DDL's transaction ended has landed:
//!
//! - [`Change::Fresh`]: the name may denote something new that has nothing
//!   hanging on it (a plain table, sequence, a dropped name, an altered
//!   table): it is judged as written *and* as the objects the old catalog
//!   knows under it; a partition or inheritance child made by `PARTITION
//!   OF` / `INHERITS` is in its parents' zone unless listed itself.
//! - [`Change::Opaque`]: the name may now reach relations the guard cannot
//!   derive from the statement (a view, a rule, a rename's target, a table
//!   made with `LIKE`, an attached or inheriting table): a write, row lock
//!   or function acting on it is refused until the catalog is re-read;
//!   reads and DDL are judged as for `Fresh`.
//!
//! The names of a session's open DDL are shared with every other session of
//! the database (a statement of theirs may run after that DDL commits, for
//! instance queued behind its lock); once the DDL's transaction has ended,
//! every session waits for the reload instead (`store`).

use std::sync::Mutex;

use crate::classify::{Op, RelationName, Special, StatementInfo};

/// How a name in flux is judged (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Fresh,
    Opaque,
}

/// One name that DDL changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluxName {
    /// As written in the DDL; `None` schema matches the name in any schema.
    /// `*` (with no schema) stands for every name (`ALTER SCHEMA`).
    pub name: RelationName,
    pub change: Change,
    /// The DDL, for messages ("CREATE RULE").
    pub operation: String,
    /// For a new partition or inheritance child: its parents.
    pub parents: Vec<RelationName>,
    /// Changed by this session (else by another session's DDL that has not
    /// committed yet).
    pub own: bool,
}

impl FluxName {
    /// Whether `rel`, as written in a statement or as the catalog names it,
    /// may be this name.
    pub fn matches(&self, rel: &RelationName) -> bool {
        if self.name.schema.is_none() && self.name.name == "*" {
            return true;
        }
        self.name.name == rel.name
            && match (&self.name.schema, &rel.schema) {
                (Some(a), Some(b)) => a == b || a == "pg_temp" && b.starts_with("pg_temp"),
                _ => true,
            }
    }
}

/// The name in flux that `rel` may be: an opaque one if any (a DROP then a
/// CREATE VIEW of the same name leaves it opaque, whatever came first),
/// else the first, whose parents (a partition's) decide its zone.
pub fn lookup<'a>(flux: &'a [FluxName], rel: &RelationName) -> Option<&'a FluxName> {
    let mut first = None;
    for f in flux.iter().filter(|f| f.matches(rel)) {
        if f.change == Change::Opaque {
            return Some(f);
        }
        first = first.or(Some(f));
    }
    first
}

/// Operations on a relation that do not change what its name denotes or
/// reaches: no name goes into flux for them.
const KEEPS_MEANING: &[&str] = &[
    "CREATE VIEW over",
    "CREATE INDEX",
    "CREATE TRIGGER",
    "DROP TRIGGER",
    "ALTER TRIGGER",
    "CREATE POLICY",
    "ALTER POLICY",
    "DROP POLICY",
    "COMMENT",
    "GRANT",
    "REVOKE",
    "VACUUM FULL",
    "CLUSTER",
    "REINDEX",
    "REFRESH MATERIALIZED VIEW",
    "CREATE STATISTICS",
    "ALTER INDEX",
];

/// Operations after which the name may reach what the statement does not
/// show.
const OPAQUE: &[&str] = &[
    "CREATE VIEW",
    "CREATE RULE",
    "ALTER VIEW",
    "ALTER TABLE RENAME",
    "RENAME TABLE",
    "ALTER TABLE ATTACH PARTITION",
    "ALTER TABLE DETACH PARTITION",
    "ALTER TABLE INHERIT",
    "ALTER TABLE SWAP",
];

/// What running `st` puts in flux (empty for statements that change no
/// relation). Accesses of a PREPARE's body are not run by the PREPARE.
pub fn changes(st: &StatementInfo) -> Vec<FluxName> {
    let mut out = Vec::new();
    let made_like = st
        .accesses
        .iter()
        .any(|a| a.operation == "CREATE TABLE LIKE" || a.operation == "CREATE TABLE CLONE");
    let parents: Vec<RelationName> = st
        .accesses
        .iter()
        .filter(|a| {
            a.op == Op::Ddl
                && a.origin.is_none()
                && a.operation.contains(" TABLE ")
                && (a.operation.ends_with("PARTITION OF") || a.operation.ends_with("INHERITS"))
        })
        .map(|a| a.table.clone())
        .collect();
    for a in &st.accesses {
        if a.op != Op::Ddl || a.origin == Some("PREPARE") {
            continue;
        }
        let op = a.operation.as_str();
        if KEEPS_MEANING.contains(&op) {
            continue;
        }
        let creates = op == "CREATE TABLE" || op == "CREATE FOREIGN TABLE";
        let (change, of) = if OPAQUE.contains(&op) || creates && made_like {
            (Change::Opaque, Vec::new())
        } else if creates {
            (Change::Fresh, parents.clone())
        } else {
            (Change::Fresh, Vec::new())
        };
        push(&mut out, a.table.clone(), change, op, of);
    }
    for sp in &st.specials {
        if let Special::OtherDdl { operation } = sp {
            if operation == "ALTER SCHEMA" {
                push(
                    &mut out,
                    RelationName::new(None, "*"),
                    Change::Opaque,
                    operation,
                    Vec::new(),
                );
            }
        }
    }
    out
}

fn push(
    out: &mut Vec<FluxName>,
    name: RelationName,
    change: Change,
    operation: &str,
    parents: Vec<RelationName>,
) {
    if let Some(f) = out.iter_mut().find(|f| f.name == name) {
        if change == Change::Opaque {
            f.change = Change::Opaque;
            f.operation = operation.to_owned();
        }
        f.parents.extend(parents);
        return;
    }
    out.push(FluxName {
        name,
        change,
        operation: operation.to_owned(),
        parents,
        own: true,
    });
}

/// Whether statements change the catalog, so it is re-read after their
/// transaction ends: DDL on relations or other objects, and `COMMIT
/// PREPARED` (which commits DDL that another session may have run).
pub fn changes_catalog(statements: &[StatementInfo]) -> bool {
    statements.iter().any(|s| {
        s.command == "COMMIT PREPARED"
            || s.accesses.iter().any(|a| a.op == Op::Ddl)
            || s.specials
                .iter()
                .any(|sp| matches!(sp, Special::OtherDdl { .. }))
    })
}

/// One session's names in flux, as every session of the database sees them.
#[derive(Debug, Default)]
pub struct FluxEntry {
    pub state: Mutex<EntryState>,
}

#[derive(Debug, Default)]
pub struct EntryState {
    pub names: Vec<FluxName>,
    /// 0 while the DDL's transaction may still be open; then the ticket of
    /// the reload asked for when it ended (every session waits for that
    /// reload, so the names no longer count for others).
    pub ended: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;

    fn of(sql: &str) -> Vec<(String, Change, Vec<RelationName>)> {
        classify(sql)
            .iter()
            .flat_map(changes)
            .map(|f| (f.name.to_string(), f.change, f.parents))
            .collect()
    }

    #[test]
    fn what_ddl_puts_in_flux() {
        use Change::*;
        assert_eq!(of("SELECT 1"), []);
        assert_eq!(of("CREATE INDEX i ON users (id)"), []);
        assert_eq!(
            of("CREATE VIEW app.v AS SELECT * FROM users"),
            [("\"app\".\"v\"".into(), Opaque, vec![])]
        );
        assert_eq!(
            of("CREATE RULE \"_RETURN\" AS ON SELECT TO t DO INSTEAD SELECT * FROM users"),
            [("\"t\"".into(), Opaque, vec![])]
        );
        assert_eq!(
            of("CREATE TABLE t (LIKE users INCLUDING DEFAULTS)"),
            [("\"t\"".into(), Opaque, vec![])]
        );
        assert_eq!(
            of("CREATE TABLE t (id int)"),
            [("\"t\"".into(), Fresh, vec![])]
        );
        let p = of("CREATE TABLE l27 PARTITION OF ledger FOR VALUES FROM (1) TO (2)");
        assert_eq!(
            p[0],
            (
                "\"l27\"".into(),
                Fresh,
                vec![RelationName::new(None, "ledger")]
            )
        );
        assert_eq!(
            of("ALTER TABLE t RENAME TO u"),
            [
                ("\"t\"".into(), Fresh, vec![]),
                ("\"u\"".into(), Opaque, vec![])
            ]
        );
        assert_eq!(of("ALTER SCHEMA a RENAME TO b")[0].1, Opaque);
        assert!(changes_catalog(&classify("COMMIT PREPARED 'x'")));
        assert!(!changes_catalog(&classify("COMMIT")));
    }

    #[test]
    fn an_opaque_change_wins_over_an_earlier_fresh_one() {
        let flux: Vec<FluxName> = classify("DROP TABLE app.t; CREATE VIEW app.t AS SELECT 1")
            .iter()
            .flat_map(changes)
            .collect();
        assert_eq!(flux.len(), 2);
        let got = lookup(&flux, &RelationName::new(None, "t")).unwrap();
        assert_eq!(got.change, Change::Opaque);
    }

    #[test]
    fn names_match_across_qualification() {
        let f = FluxName {
            name: RelationName::new(Some("app"), "v"),
            change: Change::Opaque,
            operation: "CREATE VIEW".into(),
            parents: vec![],
            own: true,
        };
        assert!(f.matches(&RelationName::new(None, "v")));
        assert!(f.matches(&RelationName::new(Some("app"), "v")));
        assert!(!f.matches(&RelationName::new(Some("public"), "v")));
        assert!(!f.matches(&RelationName::new(None, "w")));
    }
}
