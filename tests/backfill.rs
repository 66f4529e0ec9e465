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
    let excluded: Vec<(&str, Option<&str>, u64, Vec<i64>)> = r
        .excluded
        .iter()
        .map(|e| {
            (
                e.reason.as_str(),
                e.key.as_deref(),
                e.count,
                e.example_ids.clone(),
            )
        })
        .collect();
    assert_eq!(
        excluded,
        [
            ("before_window", None, 1, vec![6]),
            ("status", Some("PENDING"), 1, vec![5]),
            ("unmapped", Some("LEGACY-WEBINAR"), 1, vec![7]),
        ]
    );
    assert_eq!((r.bound, r.candidates), (7, 4));
    let text = r.to_string();
    for want in [
        "transactions scanned:      5\n",
        "entitlements created:      5\n",
        "    status ACTIVE       2\n    status COMPLETED    3\n",
        "already present:           0\n",
        "left out:                  3 transactions\n",
        "status \"PENDING\" (not PAID)",
        "paid before the window",
        "product \"LEGACY-WEBINAR\" has no mapping",
        "bound:                     transactions up to id 7",
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
                         AND a.product_id = t.product_id AND a.answers IS NOT NULL
                         AND jsonb_typeof(a.answers) <> 'null'
                         AND a.answers NOT IN ('{}'::jsonb, '[]'::jsonb)
                         AND NOT (jsonb_typeof(a.answers) = 'string'
                                  AND btrim(a.answers #>> '{}') = ''))
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
        "--progress-every",
        "0",
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

/// The seed's rule: answers present -> COMPLETED, "empty or not tested yet"
/// -> ACTIVE, for every empty form a jsonb column can hold, and for a text
/// column too.
#[tokio::test]
async fn empty_answers_count_as_not_tested() {
    let forms: &[(&str, &str)] = &[
        ("NULL", "ACTIVE"),
        ("'null'", "ACTIVE"),
        ("'{}'", "ACTIVE"),
        ("'{ }'", "ACTIVE"),
        ("'[]'", "ACTIVE"),
        ("'\"\"'", "ACTIVE"),
        ("'\"   \"'", "ACTIVE"),
        ("'{\"q1\": null}'", "COMPLETED"),
        ("'[0]'", "COMPLETED"),
        ("'\"x\"'", "COMPLETED"),
        ("'false'", "COMPLETED"),
        ("'{\"q1\": \"a\"}'", "COMPLETED"),
    ];
    let text_forms: &[(&str, &str)] = &[
        ("''", "ACTIVE"),
        ("'   '", "ACTIVE"),
        ("' { } '", "ACTIVE"),
        ("'[ ]'", "ACTIVE"),
        ("'NULL'", "ACTIVE"),
        ("'yes'", "COMPLETED"),
    ];
    for (column_type, forms) in [("jsonb", forms), ("text", text_forms)] {
        let db = fresh_db();
        let d = direct(&db).await;
        d.batch_execute(&format!(
            "DELETE FROM user_assessments; DELETE FROM transactions; \
             ALTER TABLE user_assessments ALTER COLUMN answers TYPE {column_type} USING answers::text::{column_type}"
        ))
        .await
        .unwrap();
        for (i, (answers, _)) in forms.iter().enumerate() {
            let user = i as i64 % 5 + 1;
            // One transaction per form, each with its own assessment row
            // (a distinct product id per form keeps them apart).
            let product = format!("TALENT-BASIC-{i}");
            d.batch_execute(&format!(
                "INSERT INTO transactions (id, user_id, product_id, status, amount, paid_at) \
                 VALUES ({id}, {user}, '{product}', 'PAID', 1, '2024-01-01'); \
                 INSERT INTO user_assessments (user_id, product_id, answers) \
                 VALUES ({user}, '{product}', {answers});",
                id = 100 + i
            ))
            .await
            .unwrap();
        }
        let mapping: String = std::iter::once("product_id,sku".to_string())
            .chain((0..forms.len()).map(|i| format!("TALENT-BASIC-{i},SKU-{i}")))
            .collect::<Vec<_>>()
            .join("\n");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        std::fs::write(&path, mapping).unwrap();
        let g = TestGuard::start(SHIPPED_POLICY).await;
        let opts = Options::new(g.url("app", &db), Mapping::load(&path).unwrap());
        run(&opts).await.unwrap();
        for (i, (answers, want)) in forms.iter().enumerate() {
            let got: String = d
                .query_one(
                    "SELECT status FROM entitlements WHERE source_trx_id = $1",
                    &[&(100 + i as i64)],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(&got, want, "{column_type} answers {answers}");
        }
    }
}

/// Nothing is skipped silently: each reason, with quoted keys (a trailing
/// space shows), counts and example ids, in the text and the JSON report.
#[tokio::test]
async fn the_report_says_what_was_left_out_and_why() {
    let db = fresh_db();
    let d = direct(&db).await;
    d.batch_execute(
        "INSERT INTO transactions (id, user_id, product_id, status, amount, paid_at) VALUES
            (20, 1, 'TALENT-BASIC', 'PAID ', 1, '2024-01-01'),
            (21, 1, 'TALENT-BASIC', 'paid', 1, '2024-01-01'),
            (22, 2, 'TALENT-BASIC', 'PAID', 1, NULL),
            (23, 2, 'TALENT-BASIC ', 'PAID', 1, '2024-01-01'),
            (24, 2, 'TALENT-BASIC', 'PAID', 1, '2026-06-01')",
    )
    .await
    .unwrap();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let url = g.url("app", &db);
    let mapping = shipped_mapping_path();
    let out = cli(&[
        "backfill",
        "--database-url",
        &url,
        "--mapping",
        mapping.to_str().unwrap(),
        "--report-json",
        json.to_str().unwrap(),
        "--quiet",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "status \"PAID \" (not PAID)",
        "status \"paid\" (not PAID)",
        "status \"PENDING\" (not PAID)",
        "PAID, no paid_at",
        "paid after the window",
        "paid before the window",
        "product \"TALENT-BASIC \" has no mapping",
        "product \"LEGACY-WEBINAR\" has no mapping",
        "left out:                  8 transactions",
    ] {
        assert!(stdout.contains(want), "{want:?} not in\n{stdout}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["schema"], "zoneguard-backfill-report/1");
    assert_eq!(v["created"], 5);
    assert_eq!(v["bound"], 24);
    assert_eq!(v["time_zone"], "Etc/UTC");
    assert_eq!(v["created_by_status"]["COMPLETED"], 3);
    let reasons: Vec<(String, String, u64, Vec<i64>)> = v["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap().to_owned(),
                e["key"].as_str().unwrap_or("NULL").to_owned(),
                e["count"].as_u64().unwrap(),
                e["example_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_i64().unwrap())
                    .collect(),
            )
        })
        .collect();
    let r = |a: &str, b: &str, n: u64, ids: &[i64]| (a.to_owned(), b.to_owned(), n, ids.to_vec());
    assert_eq!(
        reasons,
        [
            r("after_window", "NULL", 1, &[24]),
            r("before_window", "NULL", 1, &[6]),
            r("no_paid_at", "NULL", 1, &[22]),
            r("status", "PAID ", 1, &[20]),
            r("status", "PENDING", 1, &[5]),
            r("status", "paid", 1, &[21]),
            r("unmapped", "LEGACY-WEBINAR", 1, &[7]),
            r("unmapped", "TALENT-BASIC ", 1, &[23]),
        ]
    );
}

/// `--from`/`--to` are read in an explicit zone, the database's by default,
/// printed in the report.
#[tokio::test]
async fn the_window_is_read_in_a_stated_time_zone() {
    let db = fresh_db();
    let d = direct(&db).await;
    d.batch_execute(&format!(
        "ALTER DATABASE {db} SET timezone TO 'Asia/Jakarta';
         INSERT INTO transactions (id, user_id, product_id, status, amount, paid_at)
         VALUES (30, 1, 'TALENT-PRO', 'PAID', 1, '2023-01-01 00:30+07')"
    ))
    .await
    .unwrap();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    // In UTC, 2023-01-01 00:30+07 is still 2022: before the window.
    let mut opts = Options::new(g.url("app", &db), shipped_mapping());
    opts.dry_run = true;
    opts.time_zone = Some("UTC".into());
    let r = run(&opts).await.unwrap();
    assert_eq!(r.time_zone, "UTC");
    assert!(
        r.window_from.starts_with("2023-01-01 00:00:00+00"),
        "{}",
        r.window_from
    );
    assert!(r
        .excluded
        .iter()
        .any(|e| e.reason == "before_window" && e.example_ids.contains(&30)));
    // The database's zone (Jakarta): inside the window.
    opts.time_zone = None;
    let r = run(&opts).await.unwrap();
    assert_eq!(r.time_zone, "Asia/Jakarta");
    assert!(
        r.window_from.starts_with("2023-01-01 00:00:00+07"),
        "{}",
        r.window_from
    );
    assert!(!r.excluded.iter().any(|e| e.example_ids.contains(&30)));
    assert!(r.to_string().contains("in time zone Asia/Jakarta"));
}

async fn spawn_backfill(
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_zoneguard"))
        .args(args)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// A run works on the transactions that existed when it started (rows
/// added during it are left for the next run, which picks them up), and
/// --max-rows-per-sec holds it to the rate it implies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_bounded_and_throttled() {
    let db = fresh_db();
    let d = direct(&db).await;
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let url = g.url("app", &db);
    let mapping = shipped_mapping_path();
    let args = [
        "backfill",
        "--database-url",
        &url,
        "--mapping",
        mapping.to_str().unwrap(),
        "--batch-size",
        "1",
        "--max-rows-per-sec",
        "2",
        "--max-replica-lag",
        "5",
        "--progress-every",
        "0",
    ];
    let (mut child, mut lines) = spawn_backfill(&args).await;
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    // The bound is printed before the first batch: rows added now come
    // after it, while the run is still going (5 rows at 2 per second).
    loop {
        let line = lines.next_line().await.unwrap().expect("output");
        out.push(line.clone());
        if line.contains("transactions up to id 7") {
            break;
        }
    }
    d.batch_execute(
        "INSERT INTO transactions (id, user_id, product_id, status, amount, paid_at) VALUES
            (40, 2, 'TALENT-PRO', 'PAID', 1, '2024-05-05'),
            (41, 4, 'TALENT-BASIC', 'PAID', 1, '2024-05-05')",
    )
    .await
    .unwrap();
    while let Some(line) = lines.next_line().await.unwrap() {
        out.push(line);
    }
    assert!(child.wait().await.unwrap().success(), "{out:#?}");
    let elapsed = started.elapsed();
    let text = out.join("\n");
    // 5 rows read at 2 per second: at least 2 s of waiting.
    assert!(elapsed.as_secs_f64() >= 2.0, "{elapsed:?}\n{text}");
    assert!(text.contains("throttled:"), "{text}");
    assert!(text.contains("0 pauses (0.0s) for replica lag"), "{text}");
    assert_eq!(entitlements(&d).await, expected());
    // The next run picks the new rows up.
    let out = cli(&args).await;
    assert!(out.status.success());
    assert_eq!(
        count(
            &d,
            "SELECT count(*) FROM entitlements WHERE source_trx_id IN (40, 41)"
        )
        .await,
        2
    );
}

/// Ctrl-C stops after the current batch, says how to resume, and what is
/// committed stays; the rerun finishes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_after_the_batch_and_the_rerun_resumes() {
    let db = fresh_db();
    let d = direct(&db).await;
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let url = g.url("app", &db);
    let mapping = shipped_mapping_path();
    let args = [
        "backfill",
        "--database-url",
        &url,
        "--mapping",
        mapping.to_str().unwrap(),
        "--batch-size",
        "1",
        "--max-rows-per-sec",
        "1",
        "--progress-every",
        "0",
    ];
    let (mut child, mut lines) = spawn_backfill(&args).await;
    let mut out = Vec::new();
    loop {
        let line = lines.next_line().await.unwrap().expect("output");
        let progress = line.starts_with("progress:");
        out.push(line);
        if progress {
            break;
        }
    }
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    while let Some(line) = lines.next_line().await.unwrap() {
        out.push(line);
    }
    let status = child.wait().await.unwrap();
    let text = out.join("\n");
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(
        text.contains("INTERRUPTED") && text.contains("run the same command again to resume"),
        "{text}"
    );
    let partial = entitlements(&d).await.len();
    assert!(partial < SAMPLE_EXPECTED.len(), "{partial}\n{text}");
    let out = cli(&args).await;
    assert!(out.status.success());
    assert_eq!(entitlements(&d).await, expected());
}

/// With a real streaming replica whose replay is paused, the run pauses
/// while the lag is above --max-replica-lag, goes on once the replica
/// catches up, and reports the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_lag_pauses_the_run() {
    use zoneguard::cluster::Cluster;
    let primary = tokio::task::spawn_blocking(|| {
        let c = Cluster::start().expect("primary");
        c.create_seeded_db("shop").unwrap();
        c
    })
    .await
    .unwrap();
    let standby = primary.start_standby().expect("standby");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let until = |sql: &'static str, want: &'static str| {
        let primary = &primary;
        async move {
            loop {
                let got = primary.psql("postgres", sql).unwrap();
                if got.trim() == want {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "{sql}: {got}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    until(
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        "1",
    )
    .await;
    standby
        .psql("postgres", "SELECT pg_wal_replay_pause()")
        .unwrap();
    primary
        .psql(
            "postgres",
            "CREATE TABLE lag_maker AS SELECT generate_series(1, 1000) g",
        )
        .unwrap();
    until(
        "SELECT bool_or(replay_lag > interval '1.5 s') FROM pg_stat_replication",
        "t",
    )
    .await;

    let g = TestGuard::start_with_upstream(SHIPPED_POLICY, &primary.addr()).await;
    let url = g.url("app", "shop");
    let mapping = shipped_mapping_path();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_zoneguard"))
        .args([
            "backfill",
            "--database-url",
            &url,
            "--mapping",
            mapping.to_str().unwrap(),
            "--max-replica-lag",
            "1",
        ])
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut errs = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    loop {
        let line = errs.next_line().await.unwrap().expect("the run pauses");
        let paused = line.contains("replica lag above --max-replica-lag");
        log.push(line);
        if paused {
            break;
        }
    }
    // Nothing is written while paused.
    let d = tokio_postgres::connect(&primary.url("postgres", "shop"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(d.1);
    let d = d.0;
    assert_eq!(count(&d, "SELECT count(*) FROM entitlements").await, 0);
    standby
        .psql("postgres", "SELECT pg_wal_replay_resume()")
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{log:#?}");
    assert!(stdout.contains("1 pauses"), "{stdout}");
    assert_eq!(entitlements(&d).await, expected());
}
