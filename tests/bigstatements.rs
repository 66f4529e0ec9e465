//! Big statements through the guard (issue 15): bulk INSERTs and long IN
//! lists near the message limit are judged like any statement, allowed into
//! the new zone and rejected into the legacy zone.

mod common;

use common::*;

fn rows(n: usize) -> String {
    (0..n)
        .map(|i| format!("(1, NULL, 'SKU-{i:07}', 'ACTIVE')"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test]
async fn bulk_inserts_and_in_lists_near_the_limit() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    let d = direct(&db).await;
    // The harness caps messages at 1 MiB: ~30,000 rows is just under it.
    let n = 29_000;
    let insert = format!(
        "INSERT INTO entitlements (user_id, source_trx_id, sku, status) VALUES {}",
        rows(n)
    );
    assert!(
        insert.len() > 1_000_000 && insert.len() < (1 << 20) - 100,
        "{}",
        insert.len()
    );
    app.batch_execute(&insert).await.unwrap();
    assert_eq!(
        count(&d, "SELECT count(*) FROM entitlements").await,
        n as i64
    );
    // The same shape into the legacy zone is rejected.
    let legacy = format!(
        "INSERT INTO users (email) VALUES {}",
        (0..40_000)
            .map(|i| format!("('u{i}@example.com')"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(legacy.len() > 900_000);
    assert_eq!(sqlstate(app.batch_execute(&legacy).await), "42501");
    // IN lists: a read passes, a legacy delete is rejected.
    let ids: Vec<String> = (0..150_000).map(|i| i.to_string()).collect();
    let list = ids.join(",");
    let read = format!("SELECT count(*) FROM users WHERE id IN ({list})");
    assert!(read.len() > 900_000);
    assert_eq!(count(&app, &read).await, 5);
    let delete = format!("DELETE FROM users WHERE id IN ({list})");
    assert_eq!(sqlstate(app.batch_execute(&delete).await), "42501");
    assert_eq!(count(&d, "SELECT count(*) FROM users").await, 5);
    // Through the extended protocol too.
    let delete_new = format!("DELETE FROM entitlements WHERE id IN ({list})");
    let deleted = app.execute(&delete_new, &[]).await.unwrap();
    assert_eq!(deleted, n as u64);
}

/// A long chain of set operations whose arms hold commas once overflowed a
/// worker thread's stack while its syntax tree was walked, and the guard
/// process aborted: now judged (on a thread with a large stack), and the
/// guard goes on serving.
#[tokio::test]
async fn a_long_union_chain_is_judged_and_the_guard_survives() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    let d = direct(&db).await;
    // Arms with commas of their own: SELECT 1, 'U<i>', ...
    let arms = |n: usize, rest: &str| {
        (0..n)
            .map(|i| format!("SELECT 1, 'U{i}', {rest}"))
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    };
    let n = 20_000;
    let insert = format!(
        "INSERT INTO entitlements (user_id, sku, status) {}",
        arms(n, "'ACTIVE'")
    );
    assert!(insert.len() > 600_000);
    // Allowed by the guard; PostgreSQL itself refuses a chain this long.
    assert_eq!(sqlstate(app.batch_execute(&insert).await), "54001");
    let legacy = format!("INSERT INTO users (id, email, name) {}", arms(n, "'x'"));
    assert_eq!(sqlstate(app.batch_execute(&legacy).await), "42501");
    // A chain PostgreSQL runs, and the guard still serving.
    let insert = format!(
        "INSERT INTO entitlements (user_id, sku, status) {}",
        arms(2_000, "'ACTIVE'")
    );
    app.batch_execute(&insert).await.unwrap();
    assert_eq!(
        count(&d, "SELECT count(*) FROM entitlements WHERE sku LIKE 'U%'").await,
        2_000
    );
}
