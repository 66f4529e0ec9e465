//! SQL classification: what a statement reads, writes, locks and changes.
//!
//! This module owns turning SQL text into facts. It never decides whether a
//! statement is allowed: that is `policy`'s job. It is pure (no I/O, no state).

use std::fmt;

/// The kind of access a statement makes to one relation, in the vocabulary
/// that `policy.toml` uses (`allow = ["read", "insert", ...]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Read,
    Insert,
    Update,
    Delete,
    Truncate,
    /// Row or table locks stronger than ACCESS SHARE: `SELECT ... FOR UPDATE /
    /// NO KEY UPDATE / SHARE / KEY SHARE`, `LOCK TABLE` in any mode but ACCESS SHARE.
    Lock,
    /// Structural change to the relation or its access surface: CREATE / ALTER /
    /// DROP, indexes, triggers, rules, policies, COMMENT, GRANT / REVOKE,
    /// VACUUM FULL, CLUSTER, REINDEX, REFRESH MATERIALIZED VIEW, views created
    /// over it, SELECT INTO / CREATE TABLE AS targets.
    Ddl,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Lock => "lock",
            Op::Ddl => "ddl",
        }
    }
}

/// A relation name normalised the way PostgreSQL resolves identifiers:
/// unquoted parts folded to lower case, quoted parts kept as written.
/// `schema` is `None` for unqualified names (resolved by search_path at run
/// time, so the policy judges them conservatively). A catalog part
/// (`db.schema.table`) is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelationName {
    pub schema: Option<String>,
    pub name: String,
}

impl RelationName {
    pub fn new(schema: Option<&str>, name: &str) -> Self {
        RelationName {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for RelationName {
    /// Displays as PostgreSQL does in messages: `"users"`, `"public"."users"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "\"{s}\".\"{}\"", self.name),
            None => write!(f, "\"{}\"", self.name),
        }
    }
}

/// One access of one statement to one relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableAccess {
    pub op: Op,
    pub table: RelationName,
    /// What the user would call the operation, for messages and the audit
    /// log: "UPDATE", "INSERT", "DELETE", "MERGE", "TRUNCATE", "COPY FROM",
    /// "SELECT FOR UPDATE", "LOCK TABLE", "ALTER TABLE", "DROP TABLE",
    /// "CREATE INDEX", "CREATE TRIGGER", "CREATE VIEW", "GRANT", ...
    pub operation: String,
}

/// Facts about a statement that are not an access to a named relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Special {
    /// `DO $$ ... $$`: runs arbitrary procedural code.
    DoBlock,
    /// `CALL proc(...)`: runs a procedure whose body the guard cannot see.
    Call { routine: String },
    /// DDL on an object that is not a relation (function, procedure, type,
    /// domain, schema, extension, role, database, language, ...).
    /// `operation` e.g. "CREATE FUNCTION", "DROP SCHEMA".
    OtherDdl { operation: String },
    /// `EXECUTE name`: the verdict depends on what `PREPARE name` held.
    ExecutePrepared { name: String },
    /// The statement could not be parsed (or not fully understood), so its
    /// tables are not known. `may_write` is true when anything in it could
    /// write (a write keyword outside strings and comments, a tokenizer
    /// failure, an unknown statement type); `reason` says what went wrong.
    Unparsed { may_write: bool, reason: String },
}

/// A `PREPARE name AS body` statement's body, kept so that a later
/// `EXECUTE name` can be judged by what it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Normalised statement name.
    pub name: String,
    pub body: Box<StatementInfo>,
}

/// Everything the guard needs to know about one statement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatementInfo {
    /// The command in upper case as PostgreSQL would tag it: "SELECT",
    /// "UPDATE", "CREATE TABLE", "BEGIN", "DO", ... ("UNKNOWN" if unparsed).
    pub command: String,
    /// Every access, nested ones included (CTEs, subqueries, EXPLAIN ANALYZE,
    /// PREPARE bodies, rule actions, CREATE TABLE AS sources, ...).
    pub accesses: Vec<TableAccess>,
    pub specials: Vec<Special>,
    /// Set for `PREPARE name AS ...` (its body's accesses are also in `accesses`).
    pub prepares: Option<Prepared>,
    /// Set for `DEALLOCATE name`; `Some("")`... see `Deallocate`.
    pub deallocates: Option<Deallocate>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deallocate {
    Name(String),
    All,
}

/// Classify a SQL string, which may hold several statements separated by `;`.
/// Never fails: what cannot be understood is reported as `Special::Unparsed`.
/// An empty string (or only comments / semicolons) yields no statements.
pub fn classify(sql: &str) -> Vec<StatementInfo> {
    let _ = sql;
    unimplemented!("classifier")
}
