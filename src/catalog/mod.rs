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
//!   (the guard ignores ONLY: over-approximating is fail-closed), a write or
//!   lock through a view reaches what the view reads, and a write to a
//!   relation with rules also runs the rules' actions.
//! - A name the catalog does not know (not loaded yet, created since the
//!   last refresh, or a typo) is judged by its spelling, as without a
//!   catalog: conservatively.
//!
//! This module is pure data and lookups; `load` reads it from PostgreSQL and
//! `store` keeps it current.

mod load;
mod store;

use std::collections::HashMap;
use std::time::Duration;

pub use load::{load, LoadError};
pub use store::{CatalogStore, DatabaseCatalog};

use crate::classify::{Op, RelationName, TableAccess};

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
    /// Rules other than a view's `_RETURN`: the event they fire on (insert,
    /// update, delete) and what their actions access.
    pub rules: Vec<(Op, Vec<TableAccess>)>,
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

    /// The objects an access of kind `op` to object `id` reaches, with the
    /// op each is reached with: the object itself, its partitions and
    /// inheritance children (every op: a change to a parent changes them, a
    /// read reads them), and for a write or lock through a view, what the
    /// view reads (recursively). Rules are not followed here: their actions
    /// are accesses of their own ([`Object::rules`]).
    pub fn reach(&self, id: ObjectId, op: Op) -> Vec<ObjectId> {
        let mut out = vec![id];
        let mut seen = std::collections::HashSet::from([id]);
        let mut i = 0;
        while i < out.len() && out.len() < 100_000 {
            let o = self.object(out[i]);
            let through_view = matches!(o.kind, Kind::View)
                && matches!(op, Op::Insert | Op::Update | Op::Delete | Op::Lock);
            let next = o
                .children
                .iter()
                .chain(if through_view { &o.reads[..] } else { &[] });
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
