//! SQL classification: what a statement reads, writes, locks and changes.
//!
//! This module owns turning SQL text into facts. It never decides whether a
//! statement is allowed: that is `policy`'s job. It is pure (no I/O, no state).

use std::fmt;

mod bulk;
mod ddl;
mod dml;
mod fallback;
mod nested;
pub mod pgread;
pub mod reading;
mod stmt;
mod tokens;
mod walk;

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
    /// A foreign key that references the relation (`REFERENCES t`): it adds
    /// internal triggers to the referenced table and locks it briefly while
    /// the constraint is created, but changes none of its rows. PostgreSQL
    /// has a privilege of its own for it (REFERENCES).
    Reference,
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
            Op::Reference => "reference",
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
    /// Where a nested access comes from: "WITH" (a CTE), "EXPLAIN ANALYZE",
    /// "PREPARE" (the prepared body), "rule action"; None at top level.
    pub origin: Option<&'static str>,
    /// `ONLY name`: the relation alone, not its partitions or inheritance
    /// children.
    pub only: bool,
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
    /// `DROP SCHEMA name CASCADE`: drops every relation in the schema, so it
    /// is judged as DDL on each of them (through the catalog; without one
    /// the guard cannot see what the schema holds).
    DropSchemaCascade { schema: String },
    /// The statement could not be parsed (or not fully understood), so its
    /// tables are not known. `may_write` is true when anything in it could
    /// write (a write keyword outside strings and comments, a tokenizer
    /// failure, an unknown statement type); `reason` says what went wrong.
    Unparsed { may_write: bool, reason: String },
    /// A setting the guard's reading of SQL depends on would be set to a
    /// value under which the guard could not read statements as the server
    /// does (`client_encoding` SJIS, `standard_conforming_strings` off, or a
    /// value it cannot see). See `reading`.
    UnreadableSetting { setting: String, value: String },
    /// PostgreSQL's own grammar rejects the text (`pgread`): nothing in it
    /// runs, and the server reports the error itself.
    SyntaxError { message: String },
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
    /// What it does to a SQL cursor (DECLARE, FETCH / MOVE, CLOSE).
    pub cursor: Option<CursorOp>,
}

/// A statement's use of a SQL cursor (names normalised).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorOp {
    Declare(String),
    /// FETCH or MOVE: runs the cursor's query further (and, FOR UPDATE,
    /// locks the rows it moves over).
    Fetch(String),
    /// CLOSE name; None: CLOSE ALL.
    Close(Option<String>),
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
    classify_limited(sql, usize::MAX)
}

/// [`classify`], parsing at most `max_parsed` bytes of SQL at once (by
/// [`bulk::weight`]: a syntax tree takes about 150 times the SQL outside
/// literals in memory while it is judged). A bigger statement is judged
/// in pieces, its lists cut into runs (see [`bulk::pieces`]), after its
/// lists are shortened; one that cannot be cut small enough is judged as
/// one that may write.
pub fn classify_limited(sql: &str, max_parsed: usize) -> Vec<StatementInfo> {
    // Big statements: lists shortened first (see `bulk`), so the cost
    // stays linear in the length and the parse small.
    let short = (sql.len() > bulk::THRESHOLD)
        .then(|| bulk::shorten(sql))
        .flatten();
    let text = short.as_deref().unwrap_or(sql);
    if text.len() <= max_parsed {
        return classify_text(text);
    }
    let weight = bulk::weight(text.as_bytes());
    if weight <= max_parsed {
        return classify_text(text);
    }
    match bulk::pieces(text, max_parsed) {
        Some(pieces) => {
            let parts: Vec<Vec<StatementInfo>> = pieces.iter().map(|p| classify_text(p)).collect();
            // A part PostgreSQL's grammar rejects: if the whole is rejected
            // too, the server runs nothing and reports it itself.
            let rejected = parts
                .iter()
                .flatten()
                .any(|s| s.specials.iter().any(|x| matches!(x, Special::SyntaxError { .. })));
            if rejected {
                if let Some(whole) = pgread::syntax_error(text) {
                    return vec![whole];
                }
            }
            merge(parts.into_iter().map(without_syntax_verdict))
        }
        None => vec![unparsed(
            true,
            format!(
                "statement too big to judge: it weighs {weight} bytes of SQL to parse (each literal counts 16), over [proxy] max_statement_bytes = {max_parsed}, and has no list that can be cut into parts that small"
            ),
        )],
    }
}

/// The classification of a statement judged in pieces: the union of the
/// pieces' (see [`bulk::pieces`]), statement by statement. Pieces that do
/// not read as the same statements are judged as one that may write.
/// A piece of a statement cut for judging is not what the server runs: that
/// PostgreSQL's grammar rejects the piece says nothing of the whole, so it
/// counts as a piece the guard cannot read (which may write).
fn without_syntax_verdict(mut v: Vec<StatementInfo>) -> Vec<StatementInfo> {
    for st in &mut v {
        for sp in &mut st.specials {
            if let Special::SyntaxError { message } = sp {
                *sp = Special::Unparsed {
                    may_write: true,
                    reason: format!(
                        "a part of a big statement PostgreSQL's grammar rejects ({message})"
                    ),
                };
                st.command = "UNKNOWN".to_owned();
            }
        }
    }
    v
}

fn merge(parts: impl Iterator<Item = Vec<StatementInfo>>) -> Vec<StatementInfo> {
    let mut out: Option<Vec<StatementInfo>> = None;
    for part in parts {
        let Some(whole) = out.as_mut() else {
            out = Some(part);
            continue;
        };
        if whole.len() != part.len() {
            return vec![unparsed(
                true,
                "statement judged in parts read differently part to part",
            )];
        }
        for (w, p) in whole.iter_mut().zip(part) {
            if !merge_one(w, p) {
                return vec![unparsed(
                    true,
                    "statement judged in parts read differently part to part",
                )];
            }
        }
    }
    out.unwrap_or_default()
}

fn merge_one(w: &mut StatementInfo, p: StatementInfo) -> bool {
    if w.deallocates != p.deallocates {
        return false;
    }
    if w.command != p.command {
        // A piece that could not be parsed (an element in it is junk)
        // makes the statement unparsed; its reason, and whether it may
        // write, are kept with the rest.
        if w.command != "UNKNOWN" && p.command != "UNKNOWN" {
            return false;
        }
        w.command = "UNKNOWN".to_owned();
    }
    for a in p.accesses {
        if !w.accesses.contains(&a) {
            w.accesses.push(a);
        }
    }
    for s in p.specials {
        if !w.specials.contains(&s) {
            w.specials.push(s);
        }
    }
    match (&mut w.prepares, p.prepares) {
        (None, None) => true,
        (Some(a), Some(b)) if a.name == b.name => merge_one(&mut a.body, *b.body),
        _ => false,
    }
}

/// [`bulk::pieces`], for the property tests.
#[doc(hidden)]
pub fn pieces(sql: &str, max: usize) -> Option<Vec<String>> {
    bulk::pieces(sql, max)
}

/// [`classify`] without shortening big statements' literal lists: what
/// the shortened classification must equal (the property tests use it).
#[doc(hidden)]
pub fn classify_unshortened(sql: &str) -> Vec<StatementInfo> {
    classify_text(sql)
}

/// The text [`classify`] parses for a big statement, if shortened (the
/// property tests use it).
#[doc(hidden)]
pub fn shortened(sql: &str) -> Option<String> {
    bulk::shorten(sql)
}

fn classify_text(sql: &str) -> Vec<StatementInfo> {
    let tokens = match tokens::tokenize(sql) {
        Ok(t) => t,
        Err(e) => {
            if sql.trim().is_empty() {
                return Vec::new();
            }
            // The guard's reading is exact (see `reading`): a text that ends
            // inside a string, quoted identifier or comment cannot run at
            // all, and PostgreSQL reports its own syntax error.
            let unterminated = reading::scan(sql.as_bytes()) == reading::Lexed::Unterminated;
            return vec![unparsed(
                !unterminated,
                format!("SQL could not be tokenized: {e}"),
            )];
        }
    };
    if !tokens.iter().any(|t| tokens::significant(&t.token)) {
        return Vec::new();
    }
    let mut tokens = tokens;
    tokens::rewrite(&mut tokens);
    if sql.len() > BIG_STATEMENT_BYTES || tokens::depth_bound(&tokens) > INLINE_DEPTH {
        // Large or deep input: judge statement by statement, on a big stack;
        // if sqlparser cannot read one, the text with PostgreSQL's grammar.
        let pieces = tokens::split(tokens);
        let text = sql.to_owned();
        return on_big_stack(move || {
            let mut out = Vec::new();
            for p in &pieces {
                match first_reader_tokens(p) {
                    Ok(stmts) => out.extend(stmts),
                    Err(_) => {
                        return pgread::classify(&text).unwrap_or_else(|| {
                            pieces.iter().flat_map(|p| classify_piece(p)).collect()
                        })
                    }
                }
            }
            out
        });
    }
    if !tokens::has_unicode_ident(&tokens) {
        if let Ok(stmts) = parse(tokens.clone()) {
            return stmts.iter().map(stmt::classify_statement).collect();
        }
    }
    // What sqlparser cannot parse is read with PostgreSQL's own grammar.
    if let Some(stmts) = pgread::classify(sql) {
        return stmts;
    }
    tokens::split(tokens)
        .iter()
        .flat_map(|p| classify_piece(p))
        .collect()
}

/// Texts longer than this are classified on a thread with a large stack.
/// The longest text parsed is the caller's to say ([`classify_limited`]:
/// the session passes `[proxy] max_statement_bytes`, and classifies long
/// texts off the async threads, one at a time).
const BIG_STATEMENT_BYTES: usize = 1 << 20;
/// Parser nesting limit.
const RECURSION_LIMIT: usize = 64;
/// Token runs longer than this (deep left-associative chains) are classified
/// on a thread with a large stack; runs longer than `MAX_DEPTH` are not parsed.
const INLINE_DEPTH: usize = 1_000;
const MAX_DEPTH: usize = 50_000;
const BIG_STACK_BYTES: usize = 256 << 20;

/// A statement the guard could not read: judged as one that may write.
pub fn unjudgeable(reason: &str) -> StatementInfo {
    unparsed(true, reason)
}

fn unparsed(may_write: bool, reason: impl Into<String>) -> StatementInfo {
    StatementInfo {
        command: "UNKNOWN".to_owned(),
        specials: vec![Special::Unparsed {
            may_write,
            reason: reason.into(),
        }],
        ..Default::default()
    }
}

fn parse(
    tokens: Vec<sqlparser::tokenizer::TokenWithSpan>,
) -> Result<Vec<sqlparser::ast::Statement>, sqlparser::parser::ParserError> {
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    sqlparser::parser::Parser::new(&dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .with_tokens_with_locations(tokens)
        .parse_statements()
}

/// Classify one statement's tokens (split at top-level `;`).
fn classify_piece(piece: &[sqlparser::tokenizer::TokenWithSpan]) -> Vec<StatementInfo> {
    match first_reader_tokens(piece) {
        Ok(stmts) => stmts,
        Err(err) => vec![fallback::classify_tokens(piece, &err)],
    }
}

/// One statement's tokens as the first reader (sqlparser) reads them; its
/// error if it cannot.
fn first_reader_tokens(
    piece: &[sqlparser::tokenizer::TokenWithSpan],
) -> Result<Vec<StatementInfo>, String> {
    if tokens::depth_bound(piece) > MAX_DEPTH {
        return Ok(vec![unparsed(true, "expression too deep to judge")]);
    }
    if tokens::has_unicode_ident(piece) {
        return Err("U&\"...\" identifiers are not understood by sqlparser".into());
    }
    let err = match parse(piece.to_vec()) {
        Ok(stmts) => return Ok(stmts.iter().map(stmt::classify_statement).collect()),
        Err(e) => e,
    };
    let mut rewritten = piece.to_vec();
    if tokens::rewrite_table_queries(&mut rewritten) {
        if let Ok(stmts) = parse(rewritten) {
            return Ok(stmts.iter().map(stmt::classify_statement).collect());
        }
    }
    Err(err.to_string())
}

/// One statement's text as the first reader reads it, if it can (`pgread`
/// asks before reading a statement itself).
pub(crate) fn first_reader(text: &str) -> Option<Vec<StatementInfo>> {
    let mut tokens = tokens::tokenize(text).ok()?;
    tokens::rewrite(&mut tokens);
    first_reader_tokens(&tokens).ok()
}

/// Run `f` on a thread with a large stack (syntax trees of long chains are
/// deep, and walking or dropping them recurses). Fails closed if the thread
/// cannot be started or panics.
fn on_big_stack<F>(f: F) -> Vec<StatementInfo>
where
    F: FnOnce() -> Vec<StatementInfo> + Send + 'static,
{
    std::thread::Builder::new()
        .name("zoneguard-classify".to_owned())
        .stack_size(BIG_STACK_BYTES)
        .spawn(f)
        .ok()
        .and_then(|h| h.join().ok())
        .unwrap_or_else(|| vec![unparsed(true, "statement could not be judged")])
}
