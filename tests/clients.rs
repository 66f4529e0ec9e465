//! Real client programs through zoneguard: psql, and Python psycopg 3 in
//! simple, extended, prepared and pipeline modes.

mod common;

use common::*;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_sees_allowed_and_rejected_statements() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let url = g.url("app", &db);
    let run = |sql: &str| {
        Command::new(psql_bin())
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", &url, "-c", sql])
            .output()
            .unwrap()
    };
    let ok = run("SELECT count(*) FROM users");
    assert!(ok.status.success());
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "5");

    let bad = run("UPDATE users SET email = 'psql'");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("ERROR:  UPDATE on \"users\" is not allowed: legacy zone is read-only"),
        "{stderr}"
    );
    assert!(stderr.contains("HINT:"), "{stderr}");

    let ins = run("INSERT INTO entitlements (user_id, sku, status) VALUES (2, 'PSQL', 'ACTIVE')");
    assert!(
        ins.status.success(),
        "{}",
        String::from_utf8_lossy(&ins.stderr)
    );

    // A psql script with a transaction: the rejection aborts it.
    let script = "BEGIN;\nINSERT INTO entitlements (user_id, sku, status) VALUES (3, 'PSQL-TX', 'ACTIVE');\nDELETE FROM users;\nCOMMIT;\n";
    let out = Command::new(psql_bin())
        .args(["-X", "-At", &url])
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let d = direct(&db).await;
    assert_eq!(
        count(
            &d,
            "SELECT count(*) FROM entitlements WHERE sku = 'PSQL-TX'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&d, "SELECT count(*) FROM entitlements WHERE sku = 'PSQL'").await,
        1
    );
    assert_eq!(count(&d, "SELECT count(*) FROM users").await, 5);
    assert_eq!(g.audit().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_simple_extended_prepared_and_pipeline() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/psycopg_modes.py");
    let guard_url = g.url("app", &db);
    let direct_url = cluster().url("postgres", &db);
    let stdout = run_python(vec![script.into(), guard_url, direct_url]).await;
    assert!(stdout.contains("psycopg: all checks passed"));
    // Every rejection the script provoked is in the audit log.
    let audit = g.audit();
    assert_eq!(audit.len(), 6, "{audit:?}");
    assert!(audit.iter().any(|r| r["protocol"] == "simple"));
    assert!(audit.iter().any(|r| r["protocol"] == "extended"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_works_through_the_guard() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let url = g.url("app", &db);
    let pg_dump = cluster().bindir().join("pg_dump");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(pg_dump)
            .args(["--no-owner", "-t", "users", "-t", "transactions", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dump.contains("CREATE TABLE public.users"), "{dump}");
    assert!(dump.contains("budi@example.com"));
    assert!(g.audit().is_empty(), "{:?}", g.audit());
}
