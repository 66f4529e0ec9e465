//! `zoneguard check` (issue 13) on logs written by a real PostgreSQL
//! (csvlog and jsonlog, `log_statement = 'all'`): what an application sent,
//! judged against the policy.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use zoneguard::cluster::Cluster;

fn run_check(args: &[&str], files: &[&Path]) -> (i32, String) {
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zoneguard"))
        .arg("check")
        .arg("--policy")
        .arg(&policy)
        .args(args)
        .args(files)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Waits until `path` holds `marker` (the logging collector writes
/// asynchronously), at most 20 s.
fn wait_for(path: &Path, marker: &str) {
    let start = Instant::now();
    loop {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(marker)) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} lacks {marker}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reads_real_postgres_logs() {
    let c = tokio::task::spawn_blocking(|| {
        let c = Cluster::start_with(
            "-c logging_collector=on -c log_destination=csvlog,jsonlog,stderr \
             -c log_directory=log -c log_filename=pg -c log_statement=all \
             -c log_line_prefix='%m [%p] user=%u@%d '",
        )
        .expect("cluster");
        c.create_seeded_db("shop").unwrap();
        c
    })
    .await
    .unwrap();
    // The application, directly (as it would before the guard is put in).
    let app = connect_url(&c.url("app", "shop")).await;
    app.batch_execute("SELECT count(*) FROM users")
        .await
        .unwrap();
    app.batch_execute("UPDATE users SET email = email WHERE id = 1")
        .await
        .unwrap();
    app.execute("UPDATE users SET email = email WHERE id = $1", &[&2i64])
        .await
        .unwrap();
    app.execute(
        "INSERT INTO entitlements (user_id, sku, status) VALUES ($1, 'X', 'ACTIVE')",
        &[&1i64],
    )
    .await
    .unwrap();
    app.batch_execute("DO $$ BEGIN PERFORM 1; END $$")
        .await
        .unwrap();
    let legacy = connect_url(&c.url("legacy_app", "shop")).await;
    legacy
        .batch_execute("UPDATE transactions SET amount = amount WHERE id = 1")
        .await
        .unwrap();
    app.batch_execute("SELECT 'zg-end-marker'").await.unwrap();

    let dir: PathBuf = c.data_path().join("log");
    let csv = dir.join("pg.csv");
    let json = dir.join("pg.json");
    let stderr = dir.join("pg");
    for f in [&csv, &json, &stderr] {
        wait_for(f, "zg-end-marker");
    }
    for file in [&csv, &json, &stderr] {
        let format = match file.extension().and_then(|e| e.to_str()) {
            Some("csv") => "csvlog",
            Some("json") => "jsonlog",
            _ => "stderr",
        };
        let (code, out) = run_check(&["--format", format], &[file]);
        assert_eq!(code, 1, "{format}: {out}");
        // Both UPDATEs of users by app, simple and extended, one group.
        assert!(
            out.contains("legacy-read-only  \"users\"  UPDATE  role app: 2"),
            "{format}: {out}"
        );
        assert!(out.contains("do_blocks"), "{format}: {out}");
        assert!(
            out.contains("[roles.app] do_blocks = true"),
            "{format}: {out}"
        );
        assert!(
            out.contains("[[rules]] name = \"learned-legacy-app-update\", zone = \"legacy\", roles = [\"app\"], allow = [\"update\"] before rule \"legacy-read-only\""),
            "{format}: {out}"
        );
        // The legacy application's own write is allowed (its rule).
        assert!(!out.contains("role legacy_app"), "{format}: {out}");
    }
    // The role can be forced: judged as legacy_app, nothing is rejected
    // but the DO block... which legacy_app may run too.
    let (code, out) = run_check(&["--format", "csvlog", "--role", "legacy_app"], &[&csv]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn check_reads_sql_files_and_pgss_exports() {
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("app.sql");
    std::fs::write(
        &sql,
        "SELECT * FROM users;\nINSERT INTO entitlements (user_id, sku, status)\n  VALUES (1, 'A', 'ACTIVE');\nDELETE FROM transactions\n WHERE id = 3;\n",
    )
    .unwrap();
    let (code, out) = run_check(&["--role", "app"], &[&sql]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("3 statements: 2 allowed, 1 would be rejected"),
        "{out}"
    );
    let pgss = dir.path().join("pgss.csv");
    std::fs::write(
        &pgss,
        "rolname,calls,query\napp,10,SELECT * FROM users WHERE id = $1\napp,2,\"UPDATE users SET email = $1 WHERE id = $2\"\n",
    )
    .unwrap();
    let (code, out) = run_check(&[], &[&pgss]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("role app: 1"), "{out}");
    // Nothing rejected: exit 0.
    std::fs::write(&sql, "SELECT 1;\n").unwrap();
    let (code, out) = run_check(&["--role", "app"], &[&sql]);
    assert_eq!(code, 0, "{out}");
}
