//! `zoneguard grants`: the second wall. PostgreSQL's own privileges that
//! give each role at most what the policy allows, so that what a proxy
//! cannot see (clients that bypass it, functions, triggers) meets the same
//! limits; and `--verify`, which reports where a database's privileges are
//! wider than the policy.
//!
//! Pure: the policy, the catalog and the switch positions in, SQL text or
//! findings out (the command does the I/O).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::catalog::{Catalog, Kind, ObjectId};
use crate::classify::Op;
use crate::policy::{Allowed, Facts, Policy};

/// Table privileges PostgreSQL has, with the policy operation each stands
/// for. FOR UPDATE / LOCK need UPDATE (or more) in PostgreSQL, and DDL needs
/// ownership: neither maps to a privilege of its own (see the comments the
/// SQL carries).
const TABLE_PRIVILEGES: [(&str, Op); 6] = [
    ("SELECT", Op::Read),
    ("INSERT", Op::Insert),
    ("UPDATE", Op::Update),
    ("DELETE", Op::Delete),
    ("TRUNCATE", Op::Truncate),
    ("REFERENCES", Op::Reference),
];

/// What one role may do to one relation, as privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: String,
    pub object: ObjectId,
    /// "TABLE" or "SEQUENCE".
    pub kind: &'static str,
    pub privileges: Vec<&'static str>,
}

/// The operations `role` may make on object `id` under `switches`: the
/// strictest of the zones the object is in (the catalog places it).
pub fn allowed(
    policy: &Policy,
    cat: &Catalog,
    id: ObjectId,
    role: &str,
    switches: &BTreeMap<String, bool>,
) -> Allowed {
    let facts = Facts {
        role,
        switches,
        catalog: Some(cat),
        search_path: None,
        flux: &[],
    };
    let mut out: Option<Allowed> = None;
    for (zone, decided_by) in policy.zones_of_object(cat, id, 0) {
        let owner = &cat.object(decided_by).name;
        let a = policy
            .rule_for(zone, owner, facts)
            .map_or(policy.default_allow, |r| r.allow);
        out = Some(match out {
            None => a,
            Some(prev) => prev.intersect(a),
        });
    }
    out.unwrap_or(policy.default_allow)
}

/// The relations grants are made for: tables, views, foreign tables and
/// sequences in user schemas (indexes and statistics carry no privileges).
fn granted_objects(cat: &Catalog) -> Vec<ObjectId> {
    (0..cat.len() as ObjectId)
        .filter(|&i| {
            let o = cat.object(i);
            let schema = o.name.schema.as_deref().unwrap_or("");
            matches!(
                o.kind,
                Kind::Table
                    | Kind::PartitionedTable
                    | Kind::View
                    | Kind::MaterializedView
                    | Kind::ForeignTable
                    | Kind::Sequence
            ) && !matches!(schema, "pg_catalog" | "information_schema")
                && !schema.starts_with("pg_temp_")
                && !schema.starts_with("pg_toast")
        })
        .collect()
}

/// Every (role, object) grant the policy calls for.
pub fn plan(
    policy: &Policy,
    cat: &Catalog,
    roles: &[String],
    switches: &BTreeMap<String, bool>,
) -> Vec<Grant> {
    let mut out = Vec::new();
    for role in roles {
        for id in granted_objects(cat) {
            let o = cat.object(id);
            let a = allowed(policy, cat, id, role, switches);
            let (kind, privileges) = if o.kind == Kind::Sequence {
                // nextval (what inserting takes) needs USAGE, setval needs
                // UPDATE, currval needs SELECT.
                let mut p = Vec::new();
                if a.contains(Op::Read) {
                    p.push("SELECT");
                }
                if a.contains(Op::Insert) {
                    p.push("USAGE");
                }
                if a.contains(Op::Update) {
                    p.push("UPDATE");
                }
                ("SEQUENCE", p)
            } else {
                (
                    "TABLE",
                    TABLE_PRIVILEGES
                        .iter()
                        .filter(|(_, op)| a.contains(*op))
                        .map(|(p, _)| *p)
                        .collect(),
                )
            };
            out.push(Grant {
                role: role.clone(),
                object: id,
                kind,
                privileges,
            });
        }
    }
    out
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn qualified(cat: &Catalog, id: ObjectId) -> String {
    let n = &cat.object(id).name;
    match &n.schema {
        Some(schema) => format!("{}.{}", ident(schema), ident(&n.name)),
        None => ident(&n.name),
    }
}

/// The SQL for a plan: per role, USAGE on the schemas, then for each
/// relation REVOKE ALL and GRANT what the policy allows.
pub fn sql(cat: &Catalog, grants: &[Grant]) -> String {
    let mut s = String::new();
    let mut by_role: BTreeMap<&str, Vec<&Grant>> = BTreeMap::new();
    for g in grants {
        by_role.entry(g.role.as_str()).or_default().push(g);
    }
    for (role, gs) in by_role {
        let _ = writeln!(s, "-- role {role}");
        let mut schemas: Vec<&str> = gs
            .iter()
            .filter(|g| !g.privileges.is_empty())
            .filter_map(|g| cat.object(g.object).name.schema.as_deref())
            .collect();
        schemas.sort_unstable();
        schemas.dedup();
        for schema in schemas {
            let _ = writeln!(
                s,
                "GRANT USAGE ON SCHEMA {} TO {};",
                ident(schema),
                ident(role)
            );
        }
        for g in gs {
            let obj = qualified(cat, g.object);
            let _ = writeln!(s, "REVOKE ALL ON {} {obj} FROM {};", g.kind, ident(role));
            if !g.privileges.is_empty() {
                let _ = writeln!(
                    s,
                    "GRANT {} ON {} {obj} TO {};",
                    g.privileges.join(", "),
                    g.kind,
                    ident(role)
                );
            }
        }
        let _ = writeln!(s);
    }
    s
}

/// What the SQL cannot express, as comments: operations the policy allows
/// that need ownership (ddl) or more than they say (lock needs UPDATE), and
/// the grants that change with each switch.
pub fn notes(
    policy: &Policy,
    cat: &Catalog,
    roles: &[String],
    switches: &BTreeMap<String, bool>,
) -> String {
    let mut s = String::new();
    for role in roles {
        for id in granted_objects(cat) {
            let a = allowed(policy, cat, id, role, switches);
            let name = qualified(cat, id);
            if a.contains(Op::Ddl) {
                let _ = writeln!(
                    s,
                    "-- {role}: ddl on {name} needs ownership (or membership in the owner role): not a privilege"
                );
            }
            if a.contains(Op::Lock) && !a.contains(Op::Update) {
                let _ = writeln!(
                    s,
                    "-- {role}: lock on {name} without update: PostgreSQL needs UPDATE for FOR UPDATE; not granted"
                );
            }
        }
    }
    for (name, pos) in switches {
        let mut flipped = switches.clone();
        flipped.insert(name.clone(), !pos);
        let now = plan(policy, cat, roles, switches);
        let then = plan(policy, cat, roles, &flipped);
        let changes: Vec<Grant> = then.into_iter().filter(|g| !now.contains(g)).collect();
        if changes.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            "-- switch {name} = {}: run this when it flips (and the SQL above when it flips back):",
            if *pos { "off" } else { "on" }
        );
        for line in sql(cat, &changes).lines() {
            if line.is_empty() || line.starts_with("--") {
                continue;
            }
            let _ = writeln!(s, "--   {line}");
        }
    }
    s
}

/// Where a database's privileges are wider than the plan: (role, object,
/// privilege) for each privilege held that the policy does not allow.
/// `held` answers whether `role` holds `privilege` on the relation.
pub fn wider(
    cat: &Catalog,
    grants: &[Grant],
    held: &mut dyn FnMut(&str, &crate::classify::RelationName, &str) -> bool,
) -> Vec<(String, String, &'static str)> {
    let mut out = Vec::new();
    for g in grants {
        let all: &[&'static str] = if g.kind == "SEQUENCE" {
            &["SELECT", "USAGE", "UPDATE"]
        } else {
            &[
                "SELECT",
                "INSERT",
                "UPDATE",
                "DELETE",
                "TRUNCATE",
                "REFERENCES",
                "TRIGGER",
            ]
        };
        let obj = qualified(cat, g.object);
        for p in all {
            if !g.privileges.contains(p) && held(&g.role, &cat.object(g.object).name, p) {
                out.push((g.role.clone(), obj.clone(), *p));
            }
        }
    }
    out
}

/// The roles to plan for when none is given: those the policy names.
pub fn policy_roles(policy: &Policy) -> Vec<String> {
    let mut v: Vec<String> = policy
        .rules
        .iter()
        .flat_map(|r| r.roles.iter().cloned())
        .chain(policy.roles.keys().cloned())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Without a database: the tables the zones list by name (patterns and
/// schemas cannot be enumerated; sequences are not known).
pub fn listed_tables(policy: &Policy) -> Catalog {
    let objects = policy
        .zones
        .iter()
        .flat_map(|z| &z.tables)
        .map(|t| crate::catalog::Object::new(t.clone(), Kind::Table))
        .collect();
    Catalog::new(objects)
}
