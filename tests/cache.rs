//! The classification cache never changes a classification: for a corpus of
//! statements (the classifier table's SQL, pgbench's, and variants with other
//! literals) the cached result equals a fresh `classify()`.

use zoneguard::cache::ClassifyCache;
use zoneguard::classify::{classify, Op};

/// The string literals of tests/classify_table.rs (plain and raw).
fn table_strings() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/classify_table.rs"
    ))
    .unwrap();
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"r#\"") {
            let start = i + 3;
            let end = start + text[start..].find("\"#").unwrap();
            out.push(text[start..end].to_string());
            i = end + 2;
        } else if b[i] == b'"' {
            let mut s = String::new();
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                    s.push(match b[i] {
                        b'n' => '\n',
                        b't' => '\t',
                        c => c as char,
                    });
                } else {
                    let ch = text[i..].chars().next().unwrap();
                    s.push(ch);
                    i += ch.len_utf8() - 1;
                }
                i += 1;
            }
            out.push(s);
            i += 1;
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            i += text[i..].find('\n').unwrap_or(text.len() - i);
        } else if b[i] == b'\'' {
            // char literals such as '"'
            i += if b.get(i + 2) == Some(&b'\'') { 3 } else { 1 };
        } else {
            i += 1;
        }
    }
    out
}

const EXTRA: &[&str] = &[
    "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
    "UPDATE pgbench_accounts SET abalance = abalance + -3906 WHERE aid = 86532;",
    "UPDATE pgbench_tellers SET tbalance = tbalance + 12 WHERE tid = 3;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (5, 1, 8, -3906, CURRENT_TIMESTAMP);",
    "INSERT INTO users (id, name) VALUES (1, 'a'), (2, 'b''c')",
    "SELECT * FROM users WHERE id IN (1, 2, 3) AND name = 'x'",
    "SELECT x::numeric(10, 2) = 1 FROM users",
    "SELECT CAST(1 AS varchar(10)) = 'a' FROM users",
    "SELECT * FROM users LIMIT 5 OFFSET 10",
    "SELECT * FROM users FETCH FIRST 5 ROWS ONLY",
    "EXPLAIN (ANALYZE 0) UPDATE users SET name = 'x' WHERE id = 1",
    "EXPLAIN (ANALYZE 1) UPDATE users SET name = 'x' WHERE id = 1",
    "VACUUM (FULL 0) users",
    "VACUUM (FULL 1) users",
    "SET standard_conforming_strings = 'off'",
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "SELECT data->>'k' = 'v' FROM entitlements WHERE id = 7",
    "WITH x AS (UPDATE users SET name = 'n' WHERE id = 1 RETURNING *) SELECT * FROM x WHERE id = 2",
    "SELECT 1 FROM users WHERE id = 1.5e3 AND a = 'it''s'",
    "SELECT 1 FROM users WHERE id = 0x1F",
    "SELECT * FROM users WHERE name = E'a\\'b'",
    "SELECT * FROM users WHERE id = 1 -- UPDATE users SET id = 2",
    "SELECT * FROM users WHERE id = 1 /* ; DELETE FROM users */",
    "SELECT * FROM users WHERE id = 99999999999999999999999999999",
    "DELETE FROM transactions WHERE id = 5 OR id = 'x'",
    "SELECT * FROM users FOR UPDATE",
    "SELECT * FROM users WHERE id = $1",
    "SELECT $$ x $$ = 'a' FROM users",
];

/// The statement with its digit runs and single-quoted contents changed.
fn variants(sql: &str) -> Vec<String> {
    let mut v = Vec::new();
    for digits in ["7", "0", "123456789012345678901234567890"] {
        let mut out = String::new();
        let mut in_digits = false;
        for c in sql.chars() {
            if c.is_ascii_digit() {
                if !in_digits {
                    out.push_str(digits);
                }
                in_digits = true;
            } else {
                in_digits = false;
                out.push(c);
            }
        }
        v.push(out);
    }
    for content in ["", "x", "off", "a''b", "UPDATE users SET id = 1", "1"] {
        let mut out = String::new();
        let mut parts = sql.split('\'');
        out.push_str(parts.next().unwrap());
        let mut inside = true;
        for p in parts {
            out.push('\'');
            out.push_str(if inside { content } else { p });
            inside = !inside;
        }
        v.push(out);
    }
    v
}

#[test]
fn cached_classification_equals_fresh() {
    let mut corpus: Vec<String> = table_strings();
    corpus.extend(EXTRA.iter().map(|s| s.to_string()));
    assert!(corpus.len() > 300, "corpus of {} strings", corpus.len());
    let mut all = Vec::new();
    for s in &corpus {
        all.push(s.clone());
        all.extend(variants(s));
    }
    // A small cache too, so eviction is exercised.
    for cache in [ClassifyCache::default(), ClassifyCache::new(64)] {
        for pass in 0..2 {
            for s in &all {
                let cached = cache.classify(s);
                assert_eq!(*cached, classify(s), "pass {pass}: {s:?}");
            }
        }
    }
}

#[test]
fn literals_that_matter_are_not_merged() {
    let cache = ClassifyCache::default();
    let off = cache.classify("EXPLAIN (ANALYZE 0) UPDATE users SET name = 'x' WHERE id = 1");
    let on = cache.classify("EXPLAIN (ANALYZE 1) UPDATE users SET name = 'x' WHERE id = 1");
    assert!(!off[0].accesses.iter().any(|a| a.op == Op::Update));
    assert!(on[0].accesses.iter().any(|a| a.op == Op::Update));
    let off = cache.classify("VACUUM (FULL 0) users");
    let on = cache.classify("VACUUM (FULL 1) users");
    assert_ne!(off, on);
    let safe = cache.classify("SELECT set_config('search_path', 'x', false)");
    let risky = cache.classify("SELECT set_config('standard_conforming_strings', 'off', false)");
    assert_ne!(safe, risky);
    // Same shape, different literal: one entry serves both, and is right.
    let a = cache.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1;");
    let b = cache.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 2;");
    assert!(std::sync::Arc::ptr_eq(&a, &b));
}

/// A literal that names a relation (nextval's, setval's) is not a value the
/// classifier ignores: statements that differ only in it never share an
/// entry.
#[test]
fn relation_naming_literals_are_not_normalised() {
    let cache = ClassifyCache::default();
    for (a, b) in [
        (
            "INSERT INTO entitlements (id) VALUES (nextval('entitlements_id_seq'))",
            "INSERT INTO entitlements (id) VALUES (nextval('users_id_seq'))",
        ),
        (
            "SELECT * FROM entitlements WHERE id = nextval('entitlements_id_seq')",
            "SELECT * FROM entitlements WHERE id = nextval('users_id_seq')",
        ),
        (
            "UPDATE entitlements SET id = setval('entitlements_id_seq', 1) WHERE id IN (1, 2)",
            "UPDATE entitlements SET id = setval('users_id_seq', 1) WHERE id IN (1, 2)",
        ),
    ] {
        let first = cache.classify(a);
        assert_eq!(*first, classify(a));
        let second = cache.classify(b);
        assert_eq!(*second, classify(b), "{b} got {a}'s classification");
    }
}

/// A stream of distinct statements, large ones included, cannot grow the
/// cache past its byte budget, and what it returns is still exact.
#[test]
fn the_cache_is_bounded_in_bytes() {
    let budget = 1 << 20;
    let cache = ClassifyCache::with_budget(1_000_000, budget);
    for i in 0..5_000 {
        // Up to ~4 KB of text naming up to ~150 relations each.
        let n = 1 + i % 150;
        let tables: Vec<String> = (0..n).map(|k| format!("t{i}_{k}")).collect();
        let sql = format!("SELECT 1 FROM {}", tables.join(", "));
        let got = cache.classify(&sql);
        assert_eq!(*got, classify(&sql));
        assert!(cache.bytes() <= budget, "{} > {budget}", cache.bytes());
    }
    assert!(cache.len() > 10, "it still caches: {}", cache.len());
    // A hit is the same as a fresh classification.
    let sql = "SELECT 1 FROM t4999_0";
    assert_eq!(*cache.classify(sql), classify(sql));
}
