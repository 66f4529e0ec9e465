//! The fuzz targets' checks (fuzz/src/lib.rs, included below) on a fixed,
//! small budget for CI: deterministic pseudo-random byte strings, seeded
//! mutations of realistic inputs, and every saved crash input in
//! tests/fuzz_crashes/. A failure here is a panic or a broken invariant in
//! code that reads untrusted bytes; `cargo fuzz` (see fuzz/README.md)
//! searches the same space for much longer.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zoneguard::protocol;

/// Iterations per test; each test stays well under a second in debug builds.
const RANDOM_INPUTS: usize = 300;
const MUTATIONS: usize = 400;

/// Statement texts as clients send them, including the constructs whose
/// reading depends on the session's settings.
fn sql_seeds() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        "SELECT 1",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
        "UPDATE pgbench_accounts SET abalance = abalance + -3906 WHERE aid = 86532;",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (5, 1, 8, -3906, CURRENT_TIMESTAMP);",
        "INSERT INTO legacy.orders (id, note) VALUES (1, 'it''s'), (2, 'two')",
        "DELETE FROM users WHERE name IN ('a', 'b') AND id > 3",
        "WITH w AS (UPDATE t SET x = 1 RETURNING *) SELECT * FROM w",
        "SELECT E'\\'', 'x' FROM t",
        "SELECT 'a\\' ; DELETE FROM legacy.orders; --'",
        "SELECT E'a' \n 'b\\'c'",
        "SELECT $$ ' $$, $q$ $$ $q$ -- '",
        "DO $body$ BEGIN DELETE FROM legacy.orders; END $body$",
        "SELECT a$b$c, $1, 1",
        "SELECT /* /* nested */ */ 1; /* unterminated",
        "SELECT \"x\"\"y\" FROM \"Legacy\".\"Orders\"",
        "SELECT U&'\\0041' UESCAPE '!', U&\"a\"",
        "SELECT 1e'x'",
        "PREPARE p AS UPDATE t SET a = $1; EXECUTE p(1); DEALLOCATE p",
        "SET standard_conforming_strings = off",
        "SET client_encoding = 'SJIS'",
        "COPY legacy.orders FROM STDIN",
        "CREATE TABLE x (a int); ALTER TABLE legacy.orders ADD COLUMN b int",
        "BEGIN; TRUNCATE legacy.orders; COMMIT",
        "SELECT 'é', \"naïve\" FROM ünïcode",
        "",
        ";;",
        "-- only a comment",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    // Shift_JIS: 0x81 0x5c is one character whose second byte is `\`.
    v.push(b"SELECT '\x81\x5c'; DELETE FROM legacy.orders; --'".to_vec());
    v.push(b"SELECT E'\x81\x5c' FROM t".to_vec());
    // Latin-1 and lone continuation/lead bytes (invalid UTF-8).
    v.push(b"SELECT '\xe9t\xe9' FROM caf\xe9".to_vec());
    v.push(b"SELECT $\x81$ x $\x82$; UPDATE t SET a = 1".to_vec());
    v.push(b"UPDATE t SET a = '\xc3' WHERE b = 1\xff".to_vec());
    v
}

/// Frontend byte streams: valid frames, alone and back to back.
fn frame_seeds() -> Vec<Vec<u8>> {
    let q = protocol::query_message("SELECT 1; UPDATE legacy.orders SET a = 'x\\'");
    let p = protocol::parse_message_bytes(b"s1", "UPDATE t SET a = $1");
    let b = protocol::bind_message("s1");
    let mut batch = Vec::new();
    batch.extend_from_slice(&p);
    batch.extend_from_slice(&b);
    // Execute (unnamed portal, no row limit), then Sync.
    batch.extend_from_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
    batch.extend_from_slice(&[b'S', 0, 0, 0, 4]);
    let mut typed = protocol::parse_message_bytes(b"", "SELECT $1").to_vec();
    // One declared parameter type (int4, oid 23): fix the count and length.
    let n = typed.len();
    typed[n - 2..].copy_from_slice(&1i16.to_be_bytes());
    typed.extend_from_slice(&23i32.to_be_bytes());
    let len = (typed.len() - 1) as i32;
    typed[1..5].copy_from_slice(&len.to_be_bytes());
    vec![
        q.to_vec(),
        p.to_vec(),
        b.to_vec(),
        batch,
        typed,
        [
            &protocol::query_message("SELECT '\u{e9}'")[..],
            &[b'X', 0, 0, 0, 4],
        ]
        .concat(),
    ]
}

/// First packets of a connection.
fn startup_seeds() -> Vec<Vec<u8>> {
    let mut cancel = vec![0, 0, 0, 16];
    cancel.extend_from_slice(&protocol::CANCEL_REQUEST.to_be_bytes());
    cancel.extend_from_slice(&[0, 0, 0, 42, 1, 2, 3, 4]);
    let ssl = [
        &8i32.to_be_bytes()[..],
        &protocol::SSL_REQUEST.to_be_bytes(),
    ]
    .concat();
    let gss = [
        &8i32.to_be_bytes()[..],
        &protocol::GSSENC_REQUEST.to_be_bytes(),
    ]
    .concat();
    vec![
        protocol::startup_message(&[("user", "app"), ("database", "shop")]).to_vec(),
        protocol::startup_message(&[
            ("user", "app"),
            ("client_encoding", "SJIS"),
            ("options", "-c standard_conforming_strings=off"),
        ])
        .to_vec(),
        protocol::startup_message(&[]).to_vec(),
        cancel,
        ssl,
        gss,
    ]
}

/// A byte string of random length (up to `max`), biased towards bytes that
/// matter to the lexers and frame headers.
fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    const INTERESTING: &[u8] = b"'\"$\\-/*;()\n\r\t eEuU&0123456789,.=<>+%!\x00\x81\x5c\xc3\xff";
    let len = rng.random_range(0..=max);
    (0..len)
        .map(|_| {
            if rng.random_bool(0.5) {
                INTERESTING[rng.random_range(0..INTERESTING.len())]
            } else {
                rng.random()
            }
        })
        .collect()
}

/// One to four random edits of `seed`: flip, insert, delete, duplicate a
/// range, splice in part of another seed, or overwrite a 4-byte length.
fn mutate(rng: &mut StdRng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = rng.random_range(0..=v.len());
        match rng.random_range(0..6) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let bytes = random_bytes(rng, 4);
                v.splice(at..at, bytes);
            }
            2 if !v.is_empty() => {
                let end = (at + rng.random_range(1..=8)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 if !v.is_empty() => {
                let start = rng.random_range(0..v.len());
                let end = (start + rng.random_range(1..=16)).min(v.len());
                let part = v[start..end].to_vec();
                v.splice(at..at, part);
            }
            4 => {
                let other = &others[rng.random_range(0..others.len())];
                let start = rng.random_range(0..=other.len());
                let end = (start + rng.random_range(0..=24)).min(other.len());
                v.splice(at..at, other[start..end].iter().copied());
            }
            _ if v.len() >= 4 => {
                let i = rng.random_range(0..=v.len() - 4);
                let len: i32 = match rng.random_range(0..4) {
                    0 => rng.random_range(-8..16),
                    1 => v.len() as i32 - i as i32 + rng.random_range(-2..3),
                    2 => rng.random_range(9_990..10_010),
                    _ => rng.random(),
                };
                v[i..i + 4].copy_from_slice(&len.to_be_bytes());
            }
            _ => v.push(rng.random()),
        }
    }
    v
}

#[test]
fn seeds_pass_the_checks() {
    let cache = checks::CacheCheck::default();
    for s in sql_seeds() {
        checks::classify(&s, Some(&cache));
    }
    for f in frame_seeds() {
        checks::frames(&f);
    }
    for p in startup_seeds() {
        checks::startup(&p);
    }
}

#[test]
fn random_bytes_classify() {
    let mut rng = StdRng::seed_from_u64(0x5a6e_0001);
    let cache = checks::CacheCheck::default();
    for _ in 0..RANDOM_INPUTS {
        checks::classify(&random_bytes(&mut rng, 120), Some(&cache));
    }
}

#[test]
fn mutated_sql_classify() {
    let mut rng = StdRng::seed_from_u64(0x5a6e_0002);
    let seeds = sql_seeds();
    let cache = checks::CacheCheck::default();
    for _ in 0..MUTATIONS {
        let seed = &seeds[rng.random_range(0..seeds.len())];
        checks::classify(&mutate(&mut rng, seed, &seeds), Some(&cache));
    }
}

/// Statements differing only in their literals, through one cache: each
/// result must be what a fresh classification gives.
#[test]
fn literal_variants_share_the_cache_correctly() {
    let mut rng = StdRng::seed_from_u64(0x5a6e_0003);
    let cache = checks::CacheCheck::default();
    let templates = [
        "SELECT abalance FROM pgbench_accounts WHERE aid = {}",
        "UPDATE t SET a = a + {} WHERE id = {}",
        "INSERT INTO legacy.orders (id, note) VALUES ({}, {}), ({}, {})",
        "DELETE FROM t WHERE x IN ({}, {}) AND y < {}",
        "SELECT * FROM t WHERE a = {} LIMIT {}",
        "WITH w AS (SELECT {} AS a) SELECT a * {} FROM w",
    ];
    let literals = [
        "1", "-3906", "1.5", "2e10", "'x'", "'it''s'", "''", "'a b'", "0", "'SELECT'", "'; DROP'",
    ];
    for _ in 0..MUTATIONS {
        let t = templates[rng.random_range(0..templates.len())];
        let mut sql = String::new();
        for (i, part) in t.split("{}").enumerate() {
            if i > 0 {
                sql.push_str(literals[rng.random_range(0..literals.len())]);
            }
            sql.push_str(part);
        }
        checks::classify(sql.as_bytes(), Some(&cache));
    }
}

#[test]
fn random_bytes_frames() {
    let mut rng = StdRng::seed_from_u64(0x5a6e_0004);
    for _ in 0..RANDOM_INPUTS {
        checks::frames(&random_bytes(&mut rng, 64));
    }
}

#[test]
fn mutated_frames() {
    let mut rng = StdRng::seed_from_u64(0x5a6e_0005);
    let seeds = frame_seeds();
    for _ in 0..MUTATIONS {
        let seed = &seeds[rng.random_range(0..seeds.len())];
        checks::frames(&mutate(&mut rng, seed, &seeds));
    }
}

#[tokio::test]
async fn random_bytes_startup() {
    let mut rng = StdRng::seed_from_u64(0x5a6e_0006);
    for _ in 0..RANDOM_INPUTS {
        let mut data = random_bytes(&mut rng, 40);
        // Half the time a plausible length, so the body is read too.
        if data.len() >= 4 && rng.random_bool(0.5) {
            let len = data.len() as i32;
            data[..4].copy_from_slice(&len.to_be_bytes());
        }
        checks::startup_async(&data).await;
    }
}

#[tokio::test]
async fn mutated_startup() {
    let mut rng = StdRng::seed_from_u64(0x5a6e_0007);
    let seeds = startup_seeds();
    for _ in 0..MUTATIONS {
        let seed = &seeds[rng.random_range(0..seeds.len())];
        checks::startup_async(&mutate(&mut rng, seed, &seeds)).await;
    }
}

/// Every file in tests/fuzz_crashes/ (inputs a fuzz target once crashed on)
/// through all three targets' checks.
#[test]
fn crash_inputs_do_not_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_crashes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README"))
        .collect();
    files.sort();
    for path in files {
        let data = std::fs::read(&path).unwrap();
        let name = path.display();
        let run = |what: &str, f: &dyn Fn()| {
            if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{name} ({what}): {msg}");
            }
        };
        run("frames", &|| checks::frames(&data));
        run("startup", &|| checks::startup(&data));
        run("classify", &|| checks::classify(&data, None));
    }
}
