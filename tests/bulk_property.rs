//! Property: for big statements, classifying the shortened text (literal
//! lists cut to their first row or item) gives exactly what the full parse
//! gives, on generated bulk INSERTs, IN lists and their hostile variants.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zoneguard::classify::{classify, classify_unshortened, Special, StatementInfo};

/// The facts a verdict depends on: an unparsed statement's reason text
/// (which quotes a position in the text) left out.
fn facts(v: Vec<StatementInfo>) -> Vec<StatementInfo> {
    v.into_iter()
        .map(|mut s| {
            for sp in &mut s.specials {
                if let Special::Unparsed { reason, .. } = sp {
                    reason.clear();
                }
            }
            s
        })
        .collect()
}

fn literal(rng: &mut StdRng) -> String {
    let base = match rng.random_range(0..12) {
        0 => rng.random_range(-1000..1000).to_string(),
        1 => format!("{}.{}", rng.random_range(0..100), rng.random_range(0..100)),
        2 => format!("{}e-{}", rng.random_range(1..9), rng.random_range(1..9)),
        3 => "'plain'".to_owned(),
        4 => "'it''s; DELETE FROM users'".to_owned(),
        5 => "E'back\\\\slash\\' quote'".to_owned(),
        6 => "NULL".to_owned(),
        7 => "TRUE".to_owned(),
        8 => "DEFAULT".to_owned(),
        9 => format!("${}", rng.random_range(1..50)),
        10 => "'Zürich ✓'".to_owned(),
        _ => "'values (1), (2) in (3)'".to_owned(),
    };
    match rng.random_range(0..6) {
        0 => format!("{base}::int"),
        1 => format!("{base}::timestamp with time zone"),
        2 => format!("{base} :: text[]"),
        _ => base,
    }
}

/// Something that is not a plain literal, now and then.
fn intrusion(rng: &mut StdRng) -> String {
    match rng.random_range(0..8) {
        0 => "(SELECT nextval('users_id_seq'))".to_owned(),
        1 => "f(1)".to_owned(),
        2 => "(SELECT max(id) FROM transactions)".to_owned(),
        3 => "1 /* c */".to_owned(),
        4 => "'x' || (SELECT email FROM users LIMIT 1)".to_owned(),
        5 => "1::numeric(5,2)".to_owned(),
        6 => "(WITH d AS (DELETE FROM users RETURNING id) SELECT 1)".to_owned(),
        _ => "setval('users_id_seq', 1)".to_owned(),
    }
}

fn item(rng: &mut StdRng) -> String {
    if rng.random_range(0..200) == 0 {
        intrusion(rng)
    } else {
        literal(rng)
    }
}

fn list(rng: &mut StdRng, n: usize) -> String {
    (0..n).map(|_| item(rng)).collect::<Vec<_>>().join(", ")
}

fn n_rows(rng: &mut StdRng) -> usize {
    rng.random_range(300..800)
}

fn statement(rng: &mut StdRng) -> String {
    let table =
        ["entitlements", "users", "\"Mixed\"", "legacy.transactions"][rng.random_range(0..4)];
    let tail = match rng.random_range(0..6) {
        0 => " ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status".to_owned(),
        1 => " RETURNING id".to_owned(),
        2 => "; DELETE FROM users WHERE id IN (1, 2, 3)".to_owned(),
        3 => " -- VALUES (1), (2)\n".to_owned(),
        _ => String::new(),
    };
    match rng.random_range(0..5) {
        0 | 1 => {
            let cols = rng.random_range(1..5);
            let n = rng.random_range(50..400);
            let rows: Vec<String> = (0..n).map(|_| format!("({})", list(rng, cols))).collect();
            format!("INSERT INTO {table} VALUES {}{tail}", rows.join(",\n  "))
        }
        2 => {
            let n = rng.random_range(300..2000);
            format!(
                "SELECT * FROM {table} WHERE id IN ({}) AND x NOT IN ({}){tail}",
                list(rng, n),
                list(rng, 3)
            )
        }
        3 => {
            let n = rng.random_range(300..2000);
            format!(
                "UPDATE {table} SET a = 1 WHERE id IN ({}){tail}",
                list(rng, n)
            )
        }
        _ => format!(
            "WITH v (a) AS (VALUES {}) DELETE FROM {table} WHERE id IN (SELECT a FROM v){tail}",
            (0..n_rows(rng))
                .map(|_| format!("({})", item(rng)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[test]
fn shortened_and_full_classifications_agree() {
    let mut rng = StdRng::seed_from_u64(0x5eed_2026);
    let mut checked = 0;
    for _ in 0..300 {
        let sql = statement(&mut rng);
        if sql.len() <= 4096 {
            continue;
        }
        assert_eq!(
            facts(classify(&sql)),
            facts(classify_unshortened(&sql)),
            "differs for:\n{}",
            &sql[..sql.len().min(2000)]
        );
        checked += 1;
    }
    assert!(checked > 200, "{checked} statements checked");
}

/// Statements of any size up to the message limit are judged, not refused
/// for their size: a 10 MB bulk INSERT and a 1,000,000-item IN list.
#[test]
fn very_big_lists_are_judged() {
    let rows: Vec<String> = (0..200_000)
        .map(|i| format!("({i}, 'sku-{i}', 'ACTIVE', '2024-01-01 00:00:00+00')"))
        .collect();
    let sql = format!(
        "INSERT INTO entitlements (user_id, sku, status, created_at) VALUES {}",
        rows.join(", ")
    );
    assert!(sql.len() > 9_000_000);
    let info = classify(&sql);
    assert_eq!(info.len(), 1);
    assert!(info[0].specials.is_empty(), "{:?}", info[0].specials);
    assert_eq!(info[0].accesses[0].table.name, "entitlements");
    let ids: Vec<String> = (0..1_000_000).map(|i| i.to_string()).collect();
    let sql = format!("SELECT * FROM users WHERE id IN ({})", ids.join(","));
    let info = classify(&sql);
    assert!(info[0].specials.is_empty(), "{:?}", info[0].specials);
    assert_eq!(info[0].accesses[0].table.name, "users");
    // A hostile row deep inside is still seen.
    let mut rows = rows;
    rows[150_000] = "(1, (SELECT email FROM users), 'x', now())".into();
    rows[150_001] = "(1, 'x', 'y', (WITH d AS (DELETE FROM users RETURNING 1) SELECT 1))".into();
    let sql = format!("INSERT INTO entitlements VALUES {}", rows.join(", "));
    let info = classify(&sql);
    assert!(
        info[0]
            .accesses
            .iter()
            .any(|a| a.table.name == "users" && a.op.as_str() == "delete")
            || !info[0].specials.is_empty(),
        "{:?}",
        info[0]
    );
}
