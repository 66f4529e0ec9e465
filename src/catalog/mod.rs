//! The catalog view: what the names in a statement denote in the upstream
//! database, so that the policy judges objects, not spellings.
//!
//! PostgreSQL decides privileges on objects after resolving names under the
//! session's search_path. The guard keeps, per database it fronts, a
//! snapshot of the relations there and how they hang together: an index
//! belongs to its table, a sequence to the table whose column owns it
//! (serial, identity, OWNED BY), an extended-statistics object to its table,
//! a partition or inheritance child to its parent; a view reaches the
//! relations its query names; a rule adds the actions it runs.
//!
//! Invariants, each closing a class of holes:
//! - A name is judged as every object it may denote: a qualified name as the
//!   relation in that schema; an unqualified one as the relation of that name
//!   in every schema (the session's search_path picks one of them, and the
//!   guard does not assume which).
//! - An object that the policy does not place in a zone by its own name or
//!   schema is in its owner's zone (index, sequence, statistics) or its
//!   parents' (partition, inheritance child).
//! - A change to a relation reaches its partitions and inheritance children
//!   (not under ONLY, nor an INSERT into an inheritance parent), a write or
//!   lock through a view reaches what the view reads, a TRUNCATE reaches the
//!   tables that reference the table, and a write to a relation with rules
//!   also runs the rules' actions.
//! - A name the catalog does not know (not loaded yet, created since the
//!   last refresh, or a typo) is judged by its spelling, as without a
//!   catalog: conservatively.
//!
//! This module is pure data and lookups; `load` reads it from PostgreSQL and
//! `store` keeps it current.

pub mod flux;
mod load;
mod store;

use std::collections::HashMap;
use std::time::Duration;

pub use load::{connect, load, read_catalog, LoadError, NOTIFY_CHANNEL};
pub use store::{CatalogStore, DatabaseCatalog};

use crate::classify::{Op, RelationName, TableAccess};

/// The change log: an event trigger that records every DDL command in
/// `zoneguard.catalog_changes`, so the guard's catalog connection sees a
/// new row once (and only once) the DDL has committed, from wherever it
/// came (printed by `zoneguard catalog-trigger`; event triggers need a
/// superuser). An INSERT, unlike NOTIFY, can be prepared: two-phase commit
/// of DDL works with it installed. Old rows are trimmed now and then,
/// skipping rows other transactions hold, so DDL never waits on DDL.
pub const TRIGGER_SQL: &str = "\
-- zoneguard: record DDL so the guard re-reads the catalog once it commits.
CREATE SCHEMA IF NOT EXISTS zoneguard;
CREATE TABLE IF NOT EXISTS zoneguard.catalog_changes (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now()
);
GRANT USAGE ON SCHEMA zoneguard TO PUBLIC;
GRANT SELECT ON zoneguard.catalog_changes TO PUBLIC;
CREATE OR REPLACE FUNCTION zoneguard.catalog_changed() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    n bigint;
BEGIN
    INSERT INTO zoneguard.catalog_changes DEFAULT VALUES RETURNING id INTO n;
    IF n % 1000 = 0 THEN
        DELETE FROM zoneguard.catalog_changes WHERE id IN (
            SELECT id FROM zoneguard.catalog_changes WHERE id < n - 100
            FOR UPDATE SKIP LOCKED);
    END IF;
END
$$;
REVOKE ALL ON FUNCTION zoneguard.catalog_changed() FROM PUBLIC;
DROP EVENT TRIGGER IF EXISTS zoneguard_catalog_changed;
CREATE EVENT TRIGGER zoneguard_catalog_changed ON ddl_command_end
    EXECUTE FUNCTION zoneguard.catalog_changed();
-- The NOTIFY of earlier versions could not be prepared (PREPARE TRANSACTION).
DROP FUNCTION IF EXISTS public.zoneguard_catalog_changed();
";

/// The change log's counter, as the guard reads it.
pub const CHANGES_SQL: &str = "SELECT coalesce(max(id), 0)::int8 FROM zoneguard.catalog_changes";

/// What kind of object a name denotes (`pg_class.relkind`, and extended
/// statistics, which have a namespace of their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Table,
    PartitionedTable,
    View,
    MaterializedView,
    Index,
    Sequence,
    ForeignTable,
    CompositeType,
    Toast,
    Statistics,
}

impl Kind {
    pub fn from_relkind(k: &str) -> Kind {
        match k {
            "r" => Kind::Table,
            "p" => Kind::PartitionedTable,
            "v" => Kind::View,
            "m" => Kind::MaterializedView,
            "i" | "I" => Kind::Index,
            "S" => Kind::Sequence,
            "f" => Kind::ForeignTable,
            "c" => Kind::CompositeType,
            _ => Kind::Toast,
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            Kind::Table | Kind::PartitionedTable => "table",
            Kind::View => "view",
            Kind::MaterializedView => "materialized view",
            Kind::Index => "index",
            Kind::Sequence => "sequence",
            Kind::ForeignTable => "foreign table",
            Kind::CompositeType => "type",
            Kind::Toast => "TOAST table",
            Kind::Statistics => "statistics object",
        }
    }
}

/// An object's index in [`Catalog::objects`].
pub type ObjectId = u32;

/// One object of the catalog.
#[derive(Debug, Clone)]
pub struct Object {
    /// Always schema-qualified.
    pub name: RelationName,
    pub kind: Kind,
    /// The table it belongs to: an index's, a sequence's owning column's, a
    /// statistics object's.
    pub owner: Option<ObjectId>,
    /// Partitioned or inheritance parents.
    pub parents: Vec<ObjectId>,
    /// Partitions and inheritance children.
    pub children: Vec<ObjectId>,
    /// For a view: the relations its query names.
    pub reads: Vec<ObjectId>,
    /// Tables with a foreign key to this one: TRUNCATE reaches them (it
    /// fails without CASCADE unless they are truncated too), and so does a
    /// DROP ... CASCADE (it drops their foreign keys).
    pub referenced_by: Vec<ObjectId>,
    /// Views whose query names this relation: DROP ... CASCADE drops them.
    pub read_by: Vec<ObjectId>,
    /// Rules other than a view's `_RETURN`: the event they fire on (insert,
    /// update, delete) and what their actions access.
    pub rules: Vec<(Op, Vec<TableAccess>)>,
    /// Sequences of other tables that its column defaults call (nextval):
    /// a row written here burns their ids.
    pub uses: Vec<ObjectId>,
}

impl Object {
    /// Whether an access of kind `op` to this object goes through to what
    /// it reads: a write or row lock through a view.
    pub fn passes_through(&self, op: Op) -> bool {
        self.kind == Kind::View && matches!(op, Op::Insert | Op::Update | Op::Delete | Op::Lock)
    }

    /// An object with nothing hanging on it yet.
    pub fn new(name: RelationName, kind: Kind) -> Object {
        Object {
            name,
            kind,
            owner: None,
            parents: Vec::new(),
            children: Vec::new(),
            reads: Vec::new(),
            referenced_by: Vec::new(),
            read_by: Vec::new(),
            rules: Vec::new(),
            uses: Vec::new(),
        }
    }
}

/// A snapshot of one database's catalog.
#[derive(Debug, Default)]
pub struct Catalog {
    pub objects: Vec<Object>,
    by_name: HashMap<String, Vec<ObjectId>>,
    /// Increases with every load of this database's catalog; verdicts
    /// remembered under one version are not reused under another.
    pub version: u64,
    /// How long the load took.
    pub loaded_in: Duration,
    /// The database's OID: a database dropped and made again under the same
    /// name is another database (`store` reloads when it changes).
    pub database_oid: u32,
    /// The change log's counter in the load's snapshot (None: no change
    /// log in this database, so only the guard's own DDL and the periodic
    /// reload keep the catalog current).
    pub changes: Option<i64>,
}

/// A search_path value as the server reports it (`"$user", public`):
/// comma-separated names, `"quoted"` as written, others folded to lower case.
/// None if it cannot be read.
pub fn parse_search_path(value: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    if value.trim().is_empty() {
        return Some(out);
    }
    for part in split_outside_quotes(value)? {
        let p = part.trim();
        let name = if let Some(inner) = p.strip_prefix('"') {
            let inner = inner.strip_suffix('"')?;
            if inner.replace("\"\"", "").contains('"') {
                return None;
            }
            inner.replace("\"\"", "\"")
        } else {
            if p.is_empty() || p.contains(|c: char| c == '"' || c.is_whitespace()) {
                return None;
            }
            p.to_ascii_lowercase()
        };
        out.push(name);
    }
    Some(out)
}

fn split_outside_quotes(s: &str) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return None;
    }
    parts.push(&s[start..]);
    Some(parts)
}

/// How deep expansion goes (views over views, partitions of partitions,
/// rules); deeper chains are cut, and what is cut is judged by name.
pub const MAX_DEPTH: usize = 16;

impl Catalog {
    /// Builds the name index over `objects`.
    pub fn new(objects: Vec<Object>) -> Catalog {
        let mut by_name: HashMap<String, Vec<ObjectId>> = HashMap::new();
        for (i, o) in objects.iter().enumerate() {
            by_name
                .entry(o.name.name.clone())
                .or_default()
                .push(i as ObjectId);
        }
        Catalog {
            objects,
            by_name,
            version: 0,
            loaded_in: Duration::ZERO,
            database_oid: 0,
            changes: None,
        }
    }

    pub fn object(&self, id: ObjectId) -> &Object {
        &self.objects[id as usize]
    }

    /// The objects a name, as written in a statement, may denote (empty:
    /// the catalog does not know it). `pg_temp` means the session's
    /// temporary schema, which is one of the `pg_temp_N`.
    pub fn candidates(&self, name: &RelationName) -> Vec<ObjectId> {
        let Some(ids) = self.by_name.get(&name.name) else {
            return Vec::new();
        };
        match &name.schema {
            None => ids.clone(),
            Some(s) if s == "pg_temp" => ids
                .iter()
                .copied()
                .filter(|&i| {
                    self.object(i)
                        .name
                        .schema
                        .as_deref()
                        .is_some_and(|x| x.starts_with("pg_temp_"))
                })
                .collect(),
            Some(s) => ids
                .iter()
                .copied()
                .filter(|&i| self.object(i).name.schema.as_deref() == Some(s.as_str()))
                .collect(),
        }
    }

    /// The objects an unqualified name may denote under a search_path the
    /// server reported (see `session::state`): PostgreSQL's order, the
    /// session's temporary schema first unless the path places `pg_temp`,
    /// then `pg_catalog` unless the path places it, then the path. The first
    /// schema that has the name decides; any temporary schema's object may
    /// be the session's own, so all count and the search goes on; `$user`
    /// (the current role, which SET ROLE changes) may be any schema the path
    /// does not name, so those count too and the search goes on. No match:
    /// empty, and the name is judged as written.
    pub fn candidates_on_path(&self, name: &RelationName, path: &[String]) -> Vec<ObjectId> {
        let all = self.candidates(name);
        if name.schema.is_some() || all.is_empty() {
            return all;
        }
        let schema = |i: ObjectId| self.object(i).name.schema.as_deref().unwrap_or("");
        let is_temp = |s: &str| s.starts_with("pg_temp_");
        let named = |s: &str| path.iter().any(|p| p == s);
        let mut order: Vec<&str> = Vec::new();
        if !named("pg_temp") {
            order.push("pg_temp");
        }
        if !named("pg_catalog") {
            order.push("pg_catalog");
        }
        order.extend(path.iter().map(String::as_str));
        let mut out = Vec::new();
        for step in order {
            match step {
                "pg_temp" => out.extend(all.iter().copied().filter(|&i| is_temp(schema(i)))),
                "$user" => out.extend(all.iter().copied().filter(|&i| {
                    let s = schema(i);
                    !is_temp(s) && s != "pg_catalog" && !named(s)
                })),
                s => {
                    let hit: Vec<ObjectId> =
                        all.iter().copied().filter(|&i| schema(i) == s).collect();
                    if !hit.is_empty() {
                        out.extend(hit);
                        break;
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The objects an access of kind `op` to object `id` reaches, with the
    /// op each is reached with: the object itself, its partitions and
    /// inheritance children (every op but an INSERT into an inheritance
    /// parent, which writes the parent alone: a change to a parent changes
    /// them, a read reads them), for a write or lock through a view, what the view
    /// reads (recursively), and for TRUNCATE, the tables whose foreign keys
    /// point at it (TRUNCATE ... CASCADE empties them; without CASCADE it
    /// fails unless they are truncated too). With `cascade` (DDL that drops
    /// dependents: DROP ... CASCADE, ALTER TABLE DROP ... CASCADE), also the
    /// views over it and the tables whose foreign keys point at it. Rules are not followed here: their actions
    /// are accesses of their own ([`Object::rules`]).
    pub fn reach(&self, id: ObjectId, op: Op, cascade: bool) -> Vec<ObjectId> {
        self.reach_from(id, op, cascade, false)
    }

    /// [`reach`](Self::reach) of `ONLY` the object when `only`: its own
    /// partitions and inheritance children are not reached.
    pub fn reach_from(&self, id: ObjectId, op: Op, cascade: bool, only: bool) -> Vec<ObjectId> {
        let mut out = vec![id];
        let mut seen = std::collections::HashSet::from([id]);
        let mut i = 0;
        while i < out.len() && out.len() < 100_000 {
            let o = self.object(out[i]);
            // A row inserted into an inheritance parent stays in the parent;
            // one inserted into a partitioned table goes to a partition.
            let children: &[ObjectId] =
                if op == Op::Insert && o.kind != Kind::PartitionedTable || only && i == 0 {
                    &[]
                } else {
                    &o.children
                };
            let next = children
                .iter()
                .chain(if o.passes_through(op) {
                    &o.reads[..]
                } else {
                    &[]
                })
                .chain(if op == Op::Truncate || cascade {
                    &o.referenced_by[..]
                } else {
                    &[]
                })
                .chain(if cascade { &o.read_by[..] } else { &[] });
            for &n in next {
                if seen.insert(n) {
                    out.push(n);
                }
            }
            i += 1;
        }
        out
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Rough heap size, for the console and the benchmark.
    pub fn approx_bytes(&self) -> usize {
        let per_object: usize = self
            .objects
            .iter()
            .map(|o| {
                std::mem::size_of::<Object>()
                    + o.name.name.len()
                    + o.name.schema.as_ref().map_or(0, String::len)
                    + 4 * (o.parents.len() + o.children.len() + o.reads.len())
                    + o.rules.len() * 256
            })
            .sum();
        per_object
            + self
                .by_name
                .keys()
                .map(|k| k.len() + 48 + std::mem::size_of::<Vec<ObjectId>>())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(schema: &str, name: &str, kind: Kind) -> Object {
        Object::new(RelationName::new(Some(schema), name), kind)
    }

    fn names(c: &Catalog, ids: Vec<ObjectId>) -> Vec<String> {
        ids.into_iter()
            .map(|i| c.object(i).name.to_string())
            .collect()
    }

    #[test]
    fn search_path_values() {
        let p = |s: &str| parse_search_path(s);
        assert_eq!(p(r#""$user", public"#).unwrap(), ["$user", "public"]);
        assert_eq!(p("App,LEGACY").unwrap(), ["app", "legacy"]);
        assert_eq!(p(r#""a,b", "X""Y""#).unwrap(), ["a,b", "X\"Y"]);
        assert_eq!(p("").unwrap(), Vec::<String>::new());
        assert!(p(r#""open"#).is_none());
        assert!(p("a b").is_none());
    }

    #[test]
    fn resolution_follows_the_path() {
        let c = Catalog::new(vec![
            obj("legacy", "users", Kind::Table),
            obj("app", "users", Kind::Table),
            obj("pg_temp_3", "users", Kind::Table),
            obj("pg_catalog", "pg_class", Kind::Table),
            obj("app", "pg_class", Kind::Table),
            obj("other", "orders", Kind::Table),
        ]);
        let users = RelationName::new(None, "users");
        let path = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Temp first (it may be ours), then the first schema on the path.
        assert_eq!(
            names(&c, c.candidates_on_path(&users, &path(&["app", "legacy"]))),
            ["\"app\".\"users\"", "\"pg_temp_3\".\"users\""]
        );
        // pg_temp placed last: app decides, temp never reached.
        assert_eq!(
            names(&c, c.candidates_on_path(&users, &path(&["app", "pg_temp"]))),
            ["\"app\".\"users\""]
        );
        // $user may be any schema the path does not name.
        assert_eq!(
            names(
                &c,
                c.candidates_on_path(&users, &path(&["$user", "app", "pg_temp"]))
            ),
            ["\"legacy\".\"users\"", "\"app\".\"users\""]
        );
        // pg_catalog is searched first unless placed.
        let pgc = RelationName::new(None, "pg_class");
        assert_eq!(
            names(&c, c.candidates_on_path(&pgc, &path(&["app"]))),
            ["\"pg_catalog\".\"pg_class\""]
        );
        assert_eq!(
            names(
                &c,
                c.candidates_on_path(&pgc, &path(&["app", "pg_catalog"]))
            ),
            ["\"app\".\"pg_class\""]
        );
        // Off the path: no candidate (judged as written).
        let orders = RelationName::new(None, "orders");
        assert!(c.candidates_on_path(&orders, &path(&["app"])).is_empty());
        // Qualified names ignore the path.
        let q = RelationName::new(Some("legacy"), "users");
        assert_eq!(c.candidates_on_path(&q, &path(&["app"])).len(), 1);
    }
}
