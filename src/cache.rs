//! The classification cache: owns remembering `classify()` results by
//! statement text (bounded, shared by all sessions), and the literal
//! normalisation that lets statements differing only in harmless literals
//! share one entry.
//!
//! Classification is a pure function of the text, so an exact-text key is
//! always correct. A normalised key (numeric and standard `'...'` literals
//! replaced by a marker) is used only where the literal is an operand of an
//! arithmetic/comparison operator or an item of a `VALUES (...)` / `IN (...)`
//! list, in a plain DML statement with no comments, dollar quotes, escape
//! strings, backslashes or mention of `standard_conforming_strings`: there
//! the parser reads the literal as a value expression whatever it holds, and
//! the classifier never looks at value expressions. As a second line of
//! defence, a result that says "unparsed" is never stored under a normalised
//! key (its reason text may quote the literal).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::classify::{self, Special, StatementInfo};

/// Statements longer than this are classified without the cache.
pub const MAX_KEY_BYTES: usize = 4096;
const SHARDS: usize = 16;

/// A bounded, sharded cache from statement text to its classification.
/// Each shard evicts with the CLOCK algorithm (second chance).
pub struct ClassifyCache {
    /// Keyed by the statement's exact text.
    exact: Vec<Mutex<Shard>>,
    /// Keyed by the normalised text (see [`normalize`]). Two sets of
    /// shards, so a lookup needs no key built from the exact text.
    normalized: Vec<Mutex<Shard>>,
    hasher: RandomState,
    /// Lookups answered from the cache, and texts classified anew.
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

struct Shard {
    map: HashMap<Arc<str>, usize>,
    slots: Vec<Slot>,
    hand: usize,
    /// Most entries.
    cap: usize,
    /// Most bytes (keys and classifications, estimated), and the bytes held.
    budget: usize,
    bytes: usize,
}

struct Slot {
    key: Arc<str>,
    value: Arc<Vec<StatementInfo>>,
    referenced: bool,
    bytes: usize,
}

impl Shard {
    fn get(&mut self, key: &str) -> Option<Arc<Vec<StatementInfo>>> {
        let i = *self.map.get(key)?;
        let slot = &mut self.slots[i];
        slot.referenced = true;
        Some(slot.value.clone())
    }

    /// Inserts, evicting (CLOCK: second chance) until both the entry count
    /// and the byte budget hold. An entry larger than the whole budget is
    /// not kept.
    fn insert(&mut self, key: Arc<str>, value: Arc<Vec<StatementInfo>>) {
        let bytes = key.len() + approx_bytes(&value) + SLOT_OVERHEAD;
        if bytes > self.budget {
            return;
        }
        if let Some(&i) = self.map.get(&*key) {
            self.bytes = self.bytes - self.slots[i].bytes + bytes;
            self.slots[i].value = value;
            self.slots[i].bytes = bytes;
            self.shrink_to(self.budget);
            return;
        }
        while !self.slots.is_empty()
            && (self.slots.len() >= self.cap || self.bytes + bytes > self.budget)
        {
            self.evict_one();
        }
        self.map.insert(key.clone(), self.slots.len());
        self.slots.push(Slot {
            key,
            value,
            referenced: false,
            bytes,
        });
        self.bytes += bytes;
    }

    fn shrink_to(&mut self, budget: usize) {
        while self.bytes > budget && !self.slots.is_empty() {
            self.evict_one();
        }
    }

    /// Removes the first slot the clock hand finds not referenced since it
    /// last passed (clearing the marks it passes).
    fn evict_one(&mut self) {
        loop {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let i = self.hand;
            if self.slots[i].referenced {
                self.slots[i].referenced = false;
                self.hand += 1;
                continue;
            }
            let gone = self.slots.swap_remove(i);
            self.map.remove(&*gone.key);
            self.bytes -= gone.bytes;
            if let Some(moved) = self.slots.get(i) {
                self.map.insert(moved.key.clone(), i);
            }
            return;
        }
    }
}

/// What an entry costs beyond its key and classification: the map entry,
/// the slot, the Arcs.
const SLOT_OVERHEAD: usize = 128;

/// An estimate of a classification's heap size, for the byte budget.
pub fn approx_bytes(v: &[StatementInfo]) -> usize {
    v.iter()
        .map(|s| {
            std::mem::size_of::<StatementInfo>()
                + s.command.len()
                + s.accesses
                    .iter()
                    .map(|a| {
                        std::mem::size_of_val(a)
                            + a.table.name.len()
                            + a.table.schema.as_ref().map_or(0, String::len)
                            + a.operation.len()
                    })
                    .sum::<usize>()
                + s.specials.len() * (std::mem::size_of::<Special>() + 64)
                + s.prepares.as_ref().map_or(0, |p| {
                    p.name.len() + approx_bytes(std::slice::from_ref(&*p.body))
                })
        })
        .sum()
}

impl Default for ClassifyCache {
    fn default() -> Self {
        Self::new(4096)
    }
}

/// The default byte budget of the whole cache (both sets of shards).
pub const DEFAULT_BYTES: usize = 64 << 20;

impl ClassifyCache {
    /// A cache holding at most about `capacity` statements, in at most
    /// [`DEFAULT_BYTES`].
    pub fn new(capacity: usize) -> Self {
        Self::with_budget(capacity, DEFAULT_BYTES)
    }

    /// A cache holding at most about `capacity` statements (exact and
    /// normalised alike) and about `bytes` bytes of keys and
    /// classifications: a stream of distinct large statements cannot grow
    /// it past that.
    pub fn with_budget(capacity: usize, bytes: usize) -> Self {
        let cap = capacity.div_ceil(SHARDS).max(1);
        let budget = (bytes / (2 * SHARDS)).max(1);
        let shards = || {
            (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::with_capacity(cap),
                        slots: Vec::with_capacity(cap),
                        hand: 0,
                        cap,
                        budget,
                        bytes: 0,
                    })
                })
                .collect()
        };
        ClassifyCache {
            exact: shards(),
            normalized: shards(),
            hasher: RandomState::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard<'a>(&self, set: &'a [Mutex<Shard>], key: &str) -> &'a Mutex<Shard> {
        let h = self.hasher.hash_one(key) as usize;
        &set[h % SHARDS]
    }

    fn get(&self, set: &[Mutex<Shard>], key: &str) -> Option<Arc<Vec<StatementInfo>>> {
        self.shard(set, key).lock().unwrap().get(key)
    }

    fn insert(&self, set: &[Mutex<Shard>], key: &str, value: Arc<Vec<StatementInfo>>) {
        let key: Arc<str> = key.into();
        self.shard(set, &key).lock().unwrap().insert(key, value);
    }

    /// Number of cached statements (at most about `capacity` exact ones and
    /// as many normalised ones).
    pub fn len(&self) -> usize {
        self.exact
            .iter()
            .chain(self.normalized.iter())
            .map(|s| s.lock().unwrap().slots.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (estimated: keys and classifications).
    pub fn bytes(&self) -> usize {
        self.exact
            .iter()
            .chain(self.normalized.iter())
            .map(|s| s.lock().unwrap().bytes)
            .sum()
    }

    /// Same result as [`classify::classify`], from the cache when possible.
    pub fn classify(&self, sql: &str) -> Arc<Vec<StatementInfo>> {
        if sql.len() > MAX_KEY_BYTES {
            return Arc::new(classify::classify(sql));
        }
        let (exact, normalized) = (&self.exact[..], &self.normalized[..]);
        // The exact text first: it needs no normalising, and it is what
        // statements with parameters instead of literals (the extended
        // protocol's usual case) hit every time.
        if let Some(v) = self.get(exact, sql) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return v;
        }
        match normalize(sql) {
            Some(norm) => {
                if let Some(v) = self.get(normalized, &norm) {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return v;
                }
                self.misses.fetch_add(1, Ordering::Relaxed);
                let v = Arc::new(classify::classify(sql));
                if has_unparsed(&v) {
                    self.insert(exact, sql, v.clone());
                } else {
                    self.insert(normalized, &norm, v.clone());
                }
                v
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                let v = Arc::new(classify::classify(sql));
                self.insert(exact, sql, v.clone());
                v
            }
        }
    }
}

fn has_unparsed(v: &[StatementInfo]) -> bool {
    v.iter().any(|s| {
        s.specials
            .iter()
            .any(|sp| matches!(sp, Special::Unparsed { .. }))
            || s.prepares
                .as_ref()
                .is_some_and(|p| has_unparsed(std::slice::from_ref(&*p.body)))
    })
}

/// Statement kinds whose literals may be normalised.
const DML_STARTS: [&str; 6] = ["SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES"];

/// The normalised key being built: `sql` as written, except replaced
/// literals. Unchanged runs are copied in one piece when a literal is
/// replaced (and at the end), not byte by byte.
struct Key<'a> {
    sql: &'a str,
    out: String,
    /// `sql[..copied]` is in `out` already.
    copied: usize,
    replaced: bool,
}

impl<'a> Key<'a> {
    /// A literal at `sql[start..end]`: replaced by `marker` where its
    /// position makes it a plain value (after an operator, or a list item),
    /// else kept as written.
    fn literal(&mut self, last: Last, marker: &str, start: usize, end: usize) {
        if matches!(last, Last::Op | Last::ListItem) {
            self.out.push_str(&self.sql[self.copied..start]);
            self.out.push_str(marker);
            self.copied = end;
            self.replaced = true;
        }
    }

    fn finish(mut self) -> Option<String> {
        self.replaced.then(|| {
            self.out.push_str(&self.sql[self.copied..]);
            self.out
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    /// Start of text, a word, a literal, `]`, `.`, ...: a literal here is not
    /// known to be a plain value.
    Other,
    /// An arithmetic or comparison operator character.
    Op,
    /// `(` or `,` directly inside a `VALUES (` / `IN (` list.
    ListItem,
    /// A `,` outside such a list, right after the `)` that closed one
    /// (`VALUES (1), (2)`).
    CommaAfterList,
    /// A `(` that opens no list, or a `,` in one.
    Open,
    Close {
        list: bool,
    },
    Word,
}

/// The cache key for `sql` with value literals replaced by markers, or `None`
/// if `sql` must be keyed exactly. Normalised and exact keys live in separate
/// maps, so they never collide; markers contain NUL, which a protocol string
/// cannot, so two different statements never share a normalised key unless
/// they differ only in replaced literals.
pub fn normalize(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    if b.contains(&0) || b.contains(&b'\\') {
        return None;
    }
    let first = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()?;
    if !DML_STARTS.iter().any(|k| first.eq_ignore_ascii_case(k)) {
        return None;
    }
    if contains_ignore_case(b, b"standard_conforming") || contains_ignore_case(b, b"escape_string")
    {
        return None;
    }
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$';
    let mut key = Key {
        sql,
        out: String::with_capacity(sql.len()),
        copied: 0,
        replaced: false,
    };
    let mut lists: Vec<bool> = Vec::new();
    let mut last = Last::Other;
    let mut last_word = "";
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let prev = if i > 0 { b[i - 1] } else { b' ' };
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c => {
                i += 1;
                continue;
            }
            _ if !c.is_ascii() || c.is_ascii_control() => return None,
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            b'$' if !b.get(i + 1).is_some_and(u8::is_ascii_digit) => return None,
            b';' => {
                if !sql[i + 1..].trim().is_empty() {
                    return None;
                }
                break;
            }
            b'"' => {
                let end = quoted_end(b, i, b'"')?;
                i = end;
                last = Last::Other;
                continue;
            }
            b'\'' => {
                if ident(prev) || prev == b'&' || prev == b'\'' {
                    return None;
                }
                let end = quoted_end(b, i, b'\'')?;
                key.literal(last, "\0s", i, end);
                i = end;
                last = Last::Other;
                continue;
            }
            b'0'..=b'9' if ident(prev) || prev == b'.' => {
                // Part of a word or a `$n` parameter.
                i += b[i..].iter().take_while(|&&c| ident(c)).count();
                continue;
            }
            b'0'..=b'9' => {
                let end = number_end(b, i)?;
                key.literal(last, "\0n", i, end);
                i = end;
                last = Last::Other;
                continue;
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) && !ident(prev) => return None,
            _ if ident(c) => {
                let end = i + b[i..].iter().take_while(|&&c| ident(c)).count();
                last_word = &sql[i..end];
                i = end;
                last = Last::Word;
                continue;
            }
            b'(' => {
                let list = (last == Last::Word
                    && (last_word.eq_ignore_ascii_case("values")
                        || last_word.eq_ignore_ascii_case("in")))
                    || last == Last::CommaAfterList;
                lists.push(list);
                last = if list { Last::ListItem } else { Last::Open };
            }
            b')' => {
                let list = lists.pop().unwrap_or(false);
                last = Last::Close { list };
            }
            b',' => {
                last = if lists.last() == Some(&true) {
                    Last::ListItem
                } else if last == (Last::Close { list: true }) {
                    Last::CommaAfterList
                } else {
                    Last::Open
                };
            }
            b'=' | b'<' | b'>' | b'+' | b'-' | b'*' | b'/' | b'%' | b'!' => last = Last::Op,
            _ => last = Last::Other,
        }
        i += 1;
    }
    key.finish()
}

/// Whether `hay` contains `needle` (lower case ASCII), ignoring ASCII case;
/// no allocation, unlike lowering the whole statement first.
fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w[0].eq_ignore_ascii_case(&needle[0]) && w.eq_ignore_ascii_case(needle))
}

/// End (exclusive) of the quoted string or identifier starting at `start`;
/// a doubled quote is part of it.
fn quoted_end(b: &[u8], start: usize, q: u8) -> Option<usize> {
    let mut i = start + 1;
    loop {
        let off = b[i..].iter().position(|&c| c == q)?;
        i += off + 1;
        if b.get(i) == Some(&q) {
            i += 1;
            continue;
        }
        return Some(i);
    }
}

/// End of a plain decimal number (`12`, `1.5`, `2e10`); `None` for anything
/// followed by a letter, digit, `_`, `$`, `.` or a quote (`0x1f`, `1_000`,
/// `1.2.3`), which stays exact.
fn number_end(b: &[u8], start: usize) -> Option<usize> {
    let digits = |i: usize| b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = start + digits(start);
    if b.get(i) == Some(&b'.') {
        i += 1;
        i += digits(i);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let n = digits(j);
        if n == 0 {
            return None;
        }
        i = j + n;
    }
    match b.get(i) {
        Some(&c) if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'.' | b'\'' | b'"') => {
            None
        }
        _ => Some(i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_statements_normalise() {
        let a = normalize("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;").unwrap();
        let b = normalize("SELECT abalance FROM pgbench_accounts WHERE aid = 7;").unwrap();
        assert_eq!(a, b);
        let a =
            normalize("UPDATE pgbench_accounts SET abalance = abalance + -3906 WHERE aid = 86532;");
        let b = normalize("UPDATE pgbench_accounts SET abalance = abalance + -12 WHERE aid = 1;");
        assert_eq!(a.unwrap(), b.unwrap());
        let a = normalize("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (5, 1, 8, -3906, CURRENT_TIMESTAMP);");
        let b = normalize("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (9, 2, 1, -3, CURRENT_TIMESTAMP);");
        assert_eq!(a.unwrap(), b.unwrap());
    }

    #[test]
    fn literals_that_matter_stay_exact() {
        for sql in [
            "SET standard_conforming_strings = off",
            "SELECT * FROM t WHERE x = current_setting('STANDARD_Conforming_Strings')",
            "SELECT * FROM t WHERE x = 'a' AND y = current_setting('Escape_String_Warning')",
            "EXPLAIN (ANALYZE 0) UPDATE users SET name = 'x'",
            "SELECT set_config('standard_conforming_strings', 'off', false)",
            "SELECT 1 -- = 2",
            "SELECT $$x$$ = 'a'",
            "SELECT E'\\'' = 'a'",
            "VACUUM (FULL 0) users",
            "SELECT 1; UPDATE users SET id = 1",
        ] {
            assert!(normalize(sql).is_none(), "{sql}");
        }
        // Type modifiers and function arguments are not operands.
        let a = normalize("SELECT x::numeric(10, 2) = 1").unwrap();
        let b = normalize("SELECT x::numeric(99999999999999999999999, 2) = 1").unwrap();
        assert_ne!(a, b);
        let a = normalize("SELECT f(1) = 1").unwrap();
        let b = normalize("SELECT f(2) = 1").unwrap();
        assert_ne!(a, b);
        let a = normalize("SELECT 1 FROM t LIMIT 5 OFFSET 0 = 0");
        let b = normalize("SELECT 1 FROM t LIMIT 6 OFFSET 0 = 0");
        assert_ne!(a, b);
    }

    #[test]
    fn clock_evicts_within_bound() {
        let c = ClassifyCache::new(32);
        for i in 0..500 {
            c.classify(&format!("SELECT c{i} FROM t"));
        }
        assert!(c.len() <= 32);
    }
}
