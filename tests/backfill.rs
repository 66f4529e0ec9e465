//! The backfill (issue 4) end to end: the real command through a real guard
//! to a real PostgreSQL, on the sample data and on generated data.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use zoneguard::backfill::gen::{generate, GenOptions};
use zoneguard::backfill::{run::run, Mapping, Options};

fn shipped_mapping_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sku_mapping.csv")
}

fn shipped_mapping() -> Mapping {
    Mapping::load(&shipped_mapping_path()).unwrap()
}

/// What sample.sql calls for, by hand: transactions 1..4 are PAID in
/// 2023..2025 and mapped (5 is PENDING, 6 paid in 2022, 7 is the unmapped
/// LEGACY-WEBINAR). User 1 answered TALENT-BASIC (trx 1), user 3 answered
/// TALENT-BUNDLE (trx 4, two SKUs); the rest are ACTIVE.
const SAMPLE_EXPECTED: &[(i64, i64, &str, &str)] = &[
    (1, 1, "ASSESS-BASIC", "COMPLETED"),
    (2, 1, "ASSESS-PRO", "ACTIVE"),
    (3, 2, "ASSESS-BASIC", "ACTIVE"),
    (4, 3, "ASSESS-BASIC", "COMPLETED"),
    (4, 3, "ASSESS-PRO", "COMPLETED"),
];

async fn entitlements(c: &tokio_postgres::Client) -> Vec<(i64, i64, String, String)> {
    c.query(
        "SELECT source_trx_id, user_id, sku, status FROM entitlements ORDER BY 1, 3",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

fn expected() -> Vec<(i64, i64, String, String)> {
    SAMPLE_EXPECTED
        .iter()
        .map(|(t, u, s, st)| (*t, *u, s.to_string(), st.to_string()))
        .collect()
}

fn counts(pairs: &[(&str, u64)]) -> std::collections::BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test]
async fn backfill_through_guard_writes_exactly_the_expected_entitlements() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let d = direct(&db).await;
    let before = legacy_snapshot(&d).await;

    let mut opts = Options::new(g.url("app", &db), shipped_mapping());
    opts.batch_size = 2; // several batches even on the sample data
    let r = run(&opts).await.unwrap();

    assert_eq!(entitlements(&d).await, expected());
    assert_eq!(r.transactions_scanned, 5);
    assert_eq!(r.created(), 5);
    assert_eq!(
        r.created_by_status,
        counts(&[("ACTIVE", 2), ("COMPLETED", 3)])
    );
    assert_eq!(
        r.created_by_sku,
        counts(&[("ASSESS-BASIC", 3), ("ASSESS-PRO", 2)])
    );
    assert_eq!(r.already_present, 0);
    assert_eq!(r.unmapped, counts(&[("LEGACY-WEBINAR", 1)]));
    assert_eq!(r.batches, 3);
    let text = r.to_string();
    for want in [
        "transactions scanned:      5\n",
        "entitlements created:      5\n",
        "    status ACTIVE       2\n    status COMPLETED    3\n",
        "already present:           0\n",
        "unmapped products:         1 (1 transactions)\n    LEGACY-WEBINAR       1 transactions\n",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    assert!(g.audit().is_empty(), "{:?}", g.audit());
    assert_eq!(legacy_snapshot(&d).await, before);
}

#[tokio::test]
async fn second_run_creates_nothing_and_reports_already_present() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let opts = Options::new(g.url("app", &db), shipped_mapping());
    run(&opts).await.unwrap();
    let r = run(&opts).await.unwrap();
    assert_eq!(r.created(), 0);
    assert_eq!(r.already_present, 5);
    assert_eq!(r.transactions_scanned, 5);
    assert_eq!(entitlements(&direct(&db).await).await, expected());
    assert!(g.audit().is_empty(), "{:?}", g.audit());
}

#[tokio::test]
async fn dry_run_counts_what_it_would_write_and_writes_nothing() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let d = direct(&db).await;
    // One entitlement already there: the dry run must not count it.
    d.batch_execute(
        "INSERT INTO entitlements (user_id, source_trx_id, sku, status) VALUES (1, 1, 'ASSESS-BASIC', 'COMPLETED')",
    )
    .await
    .unwrap();
    let mut opts = Options::new(g.url("app", &db), shipped_mapping());
    opts.dry_run = true;
    let r = run(&opts).await.unwrap();
    assert!(r.dry_run);
    assert_eq!(
        r.created_by_status,
        counts(&[("ACTIVE", 2), ("COMPLETED", 2)])
    );
    assert_eq!(
        r.created_by_sku,
        counts(&[("ASSESS-BASIC", 2), ("ASSESS-PRO", 2)])
    );
    assert_eq!(r.already_present, 1);
    assert_eq!(r.unmapped, counts(&[("LEGACY-WEBINAR", 1)]));
    assert_eq!(count(&d, "SELECT count(*) FROM entitlements").await, 1);
    assert!(r.to_string().contains("would be created: 4"), "{r}");
    assert!(g.audit().is_empty(), "{:?}", g.audit());
}

async fn cli(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_zoneguard"))
        .args(args)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mapping_files_are_rejected_before_anything_is_written() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "dup.csv",
            "product_id,sku\nTALENT-BASIC,ASSESS-BASIC\nTALENT-PRO,ASSESS-PRO\nTALENT-BASIC,ASSESS-BASIC\n",
            "line 4: duplicate mapping TALENT-BASIC -> ASSESS-BASIC (first on line 2)",
        ),
        (
            "unknown.csv",
            "product_id,sku,price\nTALENT-BASIC,ASSESS-BASIC,1\n",
            "unknown column(s) \"price\"",
        ),
        ("missing.csv", "product,sku\nA,B\n", "missing column(s) \"product_id\""),
        ("empty.csv", "", "the file is empty"),
    ];
    let url = g.url("app", &db);
    for (name, text, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = cli(&[
            "backfill",
            "--database-url",
            &url,
            "--mapping",
            path.to_str().unwrap(),
        ])
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(stderr.contains(want), "{name}: {stderr}");
    }
    let d = direct(&db).await;
    assert_eq!(count(&d, "SELECT count(*) FROM entitlements").await, 0);
    assert!(g.audit().is_empty(), "{:?}", g.audit());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_is_a_clear_error() {
    let port = zoneguard::cluster::free_port().unwrap();
    let url = format!("postgresql://app:s3cret@127.0.0.1:{port}/shop");
    let out = cli(&[
        "backfill",
        "--database-url",
        &url,
        "--mapping",
        shipped_mapping_path().to_str().unwrap(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "cannot connect to the database at app@127.0.0.1:{port}/shop"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_schema_creates_the_new_zone_through_the_guard() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let d = direct(&db).await;
    d.batch_execute("DROP TABLE entitlements").await.unwrap();
    let mut opts = Options::new(g.url("app", &db), shipped_mapping());
    let err = run(&opts).await.unwrap_err().to_string();
    assert!(err.contains("--ensure-schema"), "{err}");
    opts.ensure_schema = true;
    let r = run(&opts).await.unwrap();
    assert_eq!(r.created(), 5);
    assert_eq!(entitlements(&d).await, expected());
    assert!(g.audit().is_empty(), "{:?}", g.audit());
}

/// The entitlements the data calls for, computed in one direct query.
const EXPECTED_SET: &str = "
SELECT t.id AS source_trx_id, t.user_id, m.sku,
       CASE WHEN EXISTS (SELECT 1 FROM user_assessments a WHERE a.user_id = t.user_id
                         AND a.product_id = t.product_id AND a.answers IS NOT NULL)
            THEN 'COMPLETED' ELSE 'ACTIVE' END AS status
FROM transactions t
JOIN (VALUES ('TALENT-BASIC', 'ASSESS-BASIC'), ('TALENT-PRO', 'ASSESS-PRO'),
             ('TALENT-BUNDLE', 'ASSESS-BASIC'), ('TALENT-BUNDLE', 'ASSESS-PRO'))
     AS m(product_id, sku) ON m.product_id = t.product_id
WHERE t.status = 'PAID' AND t.paid_at >= '2023-01-01' AND t.paid_at < '2026-01-01'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_run_resumes_to_exactly_the_expected_rows() {
    let db = fresh_db();
    generate(
        &GenOptions {
            database_url: cluster().url("postgres", &db),
            transactions: 200_000,
            users: 20_000,
        },
        |_| {},
    )
    .await
    .unwrap();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let d = direct(&db).await;
    let want = count(&d, &format!("SELECT count(*) FROM ({EXPECTED_SET}) e")).await;
    let url = g.url("app", &db);
    let mapping = shipped_mapping_path();
    let args = [
        "backfill",
        "--database-url",
        &url,
        "--mapping",
        mapping.to_str().unwrap(),
        "--batch-size",
        "1000",
    ];

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_zoneguard"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = 0;
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.starts_with("progress:") {
            seen += 1;
            if seen == 5 {
                break;
            }
        }
    }
    assert_eq!(seen, 5, "the backfill ended before reporting progress");
    child.start_kill().unwrap(); // SIGKILL
    let status = child.wait().await.unwrap();
    assert!(!status.success());
    let partial = count(&d, "SELECT count(*) FROM entitlements").await;
    assert!(partial > 0 && partial < want, "{partial} of {want}");

    let out = cli(&args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The batch in flight when the client died may still commit on the
    // server, so at least `partial` rows are already present.
    let number = |label: &str| -> i64 {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(label));
        let line = line.unwrap_or_else(|| panic!("no {label:?} in\n{stdout}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let present = number("already present:");
    let created = number("entitlements created:");
    assert!(present >= partial, "{present} < {partial}\n{stdout}");
    assert_eq!(created + present, want, "{stdout}");

    let diff = count(
        &d,
        &format!(
            "SELECT count(*) FROM (
                (SELECT source_trx_id, user_id, sku, status FROM entitlements
                 EXCEPT ALL SELECT * FROM ({EXPECTED_SET}) e)
                UNION ALL
                (SELECT * FROM ({EXPECTED_SET}) e
                 EXCEPT ALL SELECT source_trx_id, user_id, sku, status FROM entitlements)) x"
        ),
    )
    .await;
    assert_eq!(diff, 0);
    assert_eq!(count(&d, "SELECT count(*) FROM entitlements").await, want);
    assert!(g.audit().is_empty(), "{:?}", g.audit());
}
