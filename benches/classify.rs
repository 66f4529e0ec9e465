//! Cold classification (sqlparser + walk) against a cached verdict, for
//! realistic statements. `cargo bench --bench classify`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use zoneguard::cache::ClassifyCache;
use zoneguard::classify::classify;

const STATEMENTS: [(&str, &str); 8] = [
    ("select_pk", "SELECT id, email, name FROM users WHERE id = 42"),
    (
        "join3",
        "SELECT u.name, t.amount, e.sku FROM users u JOIN transactions t ON t.user_id = u.id \
         JOIN entitlements e ON e.user_id = u.id WHERE u.id = 42 AND t.created_at > now() - interval '7 days' \
         ORDER BY t.created_at DESC LIMIT 20",
    ),
    (
        "insert_select_case",
        "INSERT INTO entitlements (user_id, sku, tier) SELECT u.id, p.sku, CASE WHEN t.amount > 1000 \
         THEN 'gold' WHEN t.amount > 100 THEN 'silver' ELSE 'bronze' END FROM users u \
         JOIN transactions t ON t.user_id = u.id JOIN product_sku_map p ON p.product_id = t.product_id \
         WHERE t.created_at > '2026-01-01'",
    ),
    (
        "update_params",
        "UPDATE commission_rules SET rate = $1, updated_at = now() WHERE id = $2 AND active",
    ),
    (
        "pgbench_select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
    ),
    (
        "pgbench_update",
        "UPDATE pgbench_accounts SET abalance = abalance + -3906 WHERE aid = 86532;",
    ),
    (
        "pgbench_insert",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (57, 6, 86532, -3906, CURRENT_TIMESTAMP);",
    ),
    ("pgbench_select_param", "SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
];

fn bench(c: &mut Criterion) {
    let cache = ClassifyCache::default();
    for (name, sql) in STATEMENTS {
        c.bench_function(&format!("cold/{name}"), |b| {
            b.iter(|| classify(black_box(sql)))
        });
        cache.classify(sql);
        c.bench_function(&format!("cached/{name}"), |b| {
            b.iter(|| cache.classify(black_box(sql)))
        });
    }
    // A different literal each time: served by the normalised key.
    let mut n = 0u64;
    c.bench_function("cached/pgbench_select_new_literal", |b| {
        b.iter(|| {
            n += 1;
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {n};");
            cache.classify(black_box(&sql))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
