//! Running it as operators do: the real binary with a metrics endpoint
//! (Prometheus text, health check) and a graceful shutdown on SIGTERM.

mod common;

use common::*;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;
use zoneguard::cluster::{free_port, wait_for_port};

struct Running {
    child: Child,
    port: u16,
    metrics: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The zoneguard binary with the shipped policy in front of `upstream`.
fn run(upstream: &str, env: &[(&str, &str)]) -> Running {
    run_limited(upstream, env, None)
}

/// [`run`], with a soft file size limit of `blocks` 512-byte blocks (`ulimit -S
/// -f`; SIGXFSZ ignored, so writes past it fail as on a full disk).
fn run_limited(upstream: &str, env: &[(&str, &str)], blocks: Option<u32>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, SHIPPED_POLICY).unwrap();
    let (port, metrics) = (free_port().unwrap(), free_port().unwrap());
    let bin = env!("CARGO_BIN_EXE_zoneguard");
    let mut cmd = match blocks {
        None => Command::new(bin),
        Some(n) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!(
                    "trap '' XFSZ; ulimit -S -f {n}; exec \"$0\" \"$@\""
                ))
                .arg(bin);
            c
        }
    };
    cmd.arg("--policy")
        .arg(&policy)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", upstream])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .env("ZONEGUARD__STATE__ENABLED", "false")
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    wait_for_port(port);
    wait_for_port(metrics);
    Running {
        child,
        port,
        metrics,
        _dir: dir,
    }
}

/// GET `path` over plain HTTP/1.1: (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the metric line starting with `series` (name and labels).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_count_what_was_judged_and_the_health_check_follows_the_upstream() {
    let db = fresh_db();
    let g = run(&cluster().addr(), &[]);
    let url = format!("postgresql://app@127.0.0.1:{}/{db}", g.port);
    let app = connect_url(&url).await;
    app.simple_query("SELECT count(*) FROM users")
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            sqlstate(app.simple_query("DELETE FROM users").await),
            "42501"
        );
    }
    let (status, text) = get(g.metrics, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        metric(&text, "zoneguard_statements_rejected_total{rule=\"legacy-read-only\",zone=\"legacy\",operation=\"DELETE\",role=\"app\"}"),
        Some(2.0),
        "{text}"
    );
    assert!(metric(&text, "zoneguard_statements_judged_total").unwrap() >= 3.0);
    assert_eq!(metric(&text, "zoneguard_clients_connected"), Some(1.0));
    assert_eq!(
        metric(&text, "zoneguard_switch_on{switch=\"enable_new_commerce\"}"),
        Some(1.0)
    );
    assert!(metric(&text, "zoneguard_judge_seconds_count").unwrap() >= 3.0);
    assert!(metric(&text, "zoneguard_classify_cache_hits_total").unwrap() >= 1.0);
    assert!(text.contains("zoneguard_policy_info{checksum=\""), "{text}");
    assert_eq!(metric(&text, "zoneguard_reloads_refused_total"), Some(0.0));
    assert_eq!(
        metric(&text, "zoneguard_audit_write_failures_total"),
        Some(0.0)
    );
    let (status, body) = get(g.metrics, "/healthz");
    assert_eq!(status, 200, "{body}");

    // An upstream that does not answer: 503, with the reason, and the
    // failed connection counted.
    let dead = format!("127.0.0.1:{}", free_port().unwrap());
    let g = run(&dead, &[]);
    let (status, body) = get(g.metrics, "/healthz");
    assert_eq!(status, 503);
    assert!(body.contains("unreachable"), "{body}");
    let _ =
        tokio_postgres::connect(&format!("postgresql://app@127.0.0.1:{}/x", g.port), NoTls).await;
    let (_, text) = get(g.metrics, "/metrics");
    assert_eq!(
        metric(&text, "zoneguard_upstream_connect_failures_total"),
        Some(1.0)
    );
}

/// A session whose connection task reports how it ended.
async fn session(
    url: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Option<String>>,
) {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    let ended = tokio::spawn(async move {
        conn.await
            .err()
            .and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()))
    });
    (client, ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_sessions_then_closes_the_rest_with_57p01_and_exits_0() {
    let db = fresh_db();
    let mut g = run(
        &cluster().addr(),
        &[("ZONEGUARD__PROXY__DRAIN_TIMEOUT_SECS", "2")],
    );
    let url = format!("postgresql://app@127.0.0.1:{}/{db}", g.port);
    let (idle, idle_end) = session(&url).await;
    idle.simple_query("SELECT 1").await.unwrap();
    let (busy, busy_end) = session(&url).await;
    busy.batch_execute(
        "BEGIN; INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'DRAIN-1', 'ACTIVE')",
    )
    .await
    .unwrap();
    let (stuck, stuck_end) = session(&url).await;
    stuck
        .batch_execute("BEGIN; INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'DRAIN-STUCK', 'ACTIVE')")
        .await
        .unwrap();

    let sent = Instant::now();
    Command::new("kill")
        .args(["-TERM", &g.child.id().to_string()])
        .status()
        .unwrap();
    // The idle session is closed at once, as PostgreSQL's admin shutdown.
    assert_eq!(idle_end.await.unwrap().as_deref(), Some("57P01"));
    // Draining: no new clients, and the health check says so.
    let refused =
        tokio::time::timeout(Duration::from_secs(2), tokio_postgres::connect(&url, NoTls))
            .await
            .unwrap();
    assert!(refused.is_err(), "a new client while draining");
    let (status, body) = get(g.metrics, "/healthz");
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    // The session in a transaction finishes its work.
    busy.batch_execute(
        "INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'DRAIN-2', 'ACTIVE'); COMMIT",
    )
    .await
    .unwrap();
    assert_eq!(busy_end.await.unwrap().as_deref(), Some("57P01"));
    // The one that never finishes is closed at the drain timeout; its
    // transaction is rolled back.
    assert_eq!(stuck_end.await.unwrap().as_deref(), Some("57P01"));
    let status = g.child.wait().unwrap();
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "{took:?}"
    );
    let d = direct(&db).await;
    assert_eq!(
        count(
            &d,
            "SELECT count(*) FROM entitlements WHERE sku IN ('DRAIN-1', 'DRAIN-2')"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &d,
            "SELECT count(*) FROM entitlements WHERE sku = 'DRAIN-STUCK'"
        )
        .await,
        0
    );
    eprintln!(
        "SIGTERM -> exit 0 in {took:?} (drain timeout 2 s, one session held a transaction open)"
    );
}

#[tokio::test]
async fn a_write_that_fails_part_way_never_leaves_a_torn_audit_record() {
    let db = fresh_db();
    // 2 KiB: room for a few records, then a write that fails part-way.
    let g = run_limited(&cluster().addr(), &[], Some(4));
    let audit = g._dir.path().join("zoneguard-audit.jsonl");
    let app = connect_url(&format!("postgresql://app@127.0.0.1:{}/{db}", g.port)).await;
    let lines_ok = || {
        let text = std::fs::read_to_string(&audit).unwrap();
        text.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
            && (text.is_empty() || text.ends_with('\n'))
    };
    for i in 0..12 {
        let sql = format!("DELETE FROM users WHERE id = {i}");
        // Rejected whether or not its record could be written.
        assert_eq!(sqlstate(app.simple_query(&sql).await), "42501");
    }
    let (_, text) = get(g.metrics, "/metrics");
    let failures = metric(&text, "zoneguard_audit_write_failures_total").unwrap();
    assert!(failures >= 1.0, "{text}");
    assert!(
        lines_ok(),
        "a fragment was left: {:?}",
        std::fs::read_to_string(&audit)
    );
    // Room again: the next record is whole, on its own line.
    let st = Command::new("prlimit")
        .args(["--pid", &g.child.id().to_string(), "--fsize=unlimited"])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        sqlstate(app.simple_query("DELETE FROM users WHERE id = 999").await),
        "42501"
    );
    assert!(lines_ok(), "{:?}", std::fs::read_to_string(&audit));
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(text.lines().last().unwrap().contains("id = 999"));
}

#[tokio::test]
async fn audit_records_can_go_to_syslog() {
    let db = fresh_db();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("log.sock");
    let syslogd = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    syslogd
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let target = format!("syslog:{}", sock.display());
    let g = run(
        &cluster().addr(),
        &[("ZONEGUARD__AUDIT__FILE", target.as_str())],
    );
    let app = connect_url(&format!("postgresql://app@127.0.0.1:{}/{db}", g.port)).await;
    assert_eq!(
        sqlstate(app.simple_query("DELETE FROM users WHERE id = 7").await),
        "42501"
    );
    let mut buf = vec![0u8; 65536];
    let n = syslogd.recv(&mut buf).expect("a syslog datagram");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    // RFC 3164: <PRI> (local0.notice = 133), then "zoneguard[pid]: " and the record.
    assert!(msg.starts_with("<133>"), "{msg}");
    let json = &msg[msg.find(": {").expect("a JSON record") + 2..];
    let record: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(record["event"], "rejected");
    assert_eq!(record["statement"], "DELETE FROM users WHERE id = 7");
}

/// Over the old 1 MiB limit, in a shape no fast path shortens (every row
/// calls a function with an argument of its own, so no two rows have one
/// shape): judged, not refused; and judged off the async threads, so with
/// a single-threaded guard another session is served while it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_megabyte_statement_of_any_shape_is_judged_while_others_are_served() {
    let db = fresh_db();
    let g = run(&cluster().addr(), &[("ZONEGUARD_THREADS", "1")]);
    let url = format!("postgresql://app@127.0.0.1:{}/{db}", g.port);
    let app = connect_url(&url).await;
    let other = connect_url(&url).await;
    let rows = |sku: &str| {
        (0..45_000)
            .map(|i| format!("(1, concat('{sku}-', {i}), 'ACTIVE')"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let insert = format!(
        "INSERT INTO entitlements (user_id, sku, status) VALUES {}",
        rows("BIG")
    );
    assert!(insert.len() > 1 << 20, "{}", insert.len());
    let started = Instant::now();
    let big = tokio::spawn(async move {
        let r = app.batch_execute(&insert).await;
        (r, app)
    });
    let mut slowest = Duration::ZERO;
    while !big.is_finished() {
        let t = Instant::now();
        other.simple_query("SELECT 1").await.unwrap();
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (r, app) = big.await.unwrap();
    r.unwrap();
    let took = started.elapsed();
    eprintln!("1.4 MB insert judged and run in {took:?}; another session's slowest SELECT 1 meanwhile: {slowest:?}");
    let d = direct(&db).await;
    assert_eq!(
        count(
            &d,
            "SELECT count(*) FROM entitlements WHERE sku LIKE 'BIG-%'"
        )
        .await,
        45_000
    );
    assert!(
        slowest < took / 2,
        "the other session waited {slowest:?} of {took:?}"
    );
    // The same shape into the legacy zone: rejected.
    let legacy = format!("INSERT INTO users (id, email, name) VALUES {}", rows("u"));
    assert_eq!(sqlstate(app.batch_execute(&legacy).await), "42501");
}

/// Over `[proxy] max_statement_bytes`, a statement with long lists is
/// judged in pieces (its rows in runs, each parsed alone), so it is not
/// refused for its size and a hostile row anywhere in it is seen; one with
/// nothing to cut is refused, naming the setting.
#[tokio::test]
async fn a_statement_over_max_statement_bytes_is_judged_in_pieces_or_refused_naming_the_setting() {
    let db = fresh_db();
    let g = run(
        &cluster().addr(),
        &[("ZONEGUARD__PROXY__MAX_STATEMENT_BYTES", "300000")],
    );
    let app = connect_url(&format!("postgresql://app@127.0.0.1:{}/{db}", g.port)).await;
    // Every row of a shape of its own: nothing shortens it.
    let distinct_rows = |n: usize| {
        (0..n)
            .map(|i| format!("(1, concat('E-', {i}), 'ACTIVE')"))
            .collect::<Vec<_>>()
    };
    let insert = |rows: &[String]| {
        format!(
            "INSERT INTO entitlements (user_id, sku, status) VALUES {}",
            rows.join(", ")
        )
    };
    let mut many = distinct_rows(20_000);
    let whole = insert(&many);
    assert!(whole.len() > 600_000, "{}", whole.len());
    app.batch_execute(&whole).await.unwrap();
    let d = direct(&db).await;
    assert_eq!(
        count(&d, "SELECT count(*) FROM entitlements WHERE sku LIKE 'E-%'").await,
        20_000
    );
    // A row near the end takes a legacy table's sequence: seen in its
    // piece, and the whole statement refused.
    many[19_500] = "(1, nextval('users_id_seq')::text, 'ACTIVE')".into();
    let e = app.batch_execute(&insert(&many)).await.unwrap_err();
    let e = e.as_db_error().unwrap();
    assert_eq!(e.code().code(), "42501", "{e:?}");
    assert!(e.message().contains("users"), "{e:?}");
    assert_eq!(
        count(&d, "SELECT count(*) FROM entitlements").await,
        20_000,
        "nothing of the refused statement ran"
    );
    // A long literal is one token, parsed at a fraction of its length's
    // cost: a document in one string is judged whole (here 400 KB of it,
    // over the setting).
    let doc = format!("SELECT length('{}')", "x".repeat(400_000));
    let got = rows(&app.simple_query(&doc).await.unwrap());
    assert_eq!(got, vec![vec!["400000".to_string()]]);
    // No list to cut (a chain of ORs): refused, naming the setting.
    let chain = (0..40_000)
        .map(|i| format!("id = {i}"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let chain = format!("SELECT count(*) FROM entitlements WHERE {chain}");
    assert!(chain.len() > 300_000);
    let e = app.simple_query(&chain).await.unwrap_err();
    let e = e.as_db_error().unwrap();
    assert_eq!(e.code().code(), "42501");
    let said = format!(
        "{} {} {}",
        e.message(),
        e.detail().unwrap_or(""),
        e.hint().unwrap_or("")
    );
    assert!(said.contains("max_statement_bytes"), "{e:?}");
}
