//! Big statements, direct vs through zoneguard (a release binary as a child
//! process, legacy zone read-only, new zone writable): `IN` lists of 1,000 to 1,000,000 integers
//! and bulk `INSERT ... VALUES` of up to 10 MB, sent as applications send
//! them (simple protocol, one statement). Prints a table of median times
//! and the guard's peak RSS.
//!
//! `cargo bench --bench bigstatements`. Environment: BENCH_ROUNDS (default
//! 3), ZONEGUARD_BIN (another zoneguard binary).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use zoneguard::cluster::{free_port, wait_for_port, Cluster};

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    eprintln!("starting a throwaway PostgreSQL ...");
    let cluster = Cluster::start_seeded("shop").expect("cluster");
    let bin = std::env::var("ZONEGUARD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_BIN_EXE_zoneguard")));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    // A minimal policy that older builds read too: the legacy tables
    // read-only, the new zone writable.
    let policy = format!(
        r#"[proxy]
listen = "127.0.0.1:{port}"
upstream = "{upstream}"
max_message_bytes = 67108864

[audit]
file = "{audit}"

[zones.legacy]
tables = ["users", "transactions", "user_assessments"]

[zones.new]
tables = ["entitlements", "commission_rules", "product_sku_map"]

[[rules]]
name = "legacy-read-only"
zone = "legacy"
allow = ["read"]

[[rules]]
name = "new-zone-read-write"
zone = "new"
allow = ["all"]

[defaults]
allow = ["read"]
"#,
        upstream = cluster.addr(),
        audit = dir.path().join("audit.jsonl").display(),
    );
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let mut child = Command::new(&bin)
        .env("ZONEGUARD__STATE__ENABLED", "false")
        .arg("--policy")
        .arg(&path)
        .arg("--log-level")
        .arg("warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start zoneguard");
    wait_for_port(port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let connect = |url: String| {
        rt.block_on(async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c
        })
    };
    let direct = connect(cluster.url("app", "shop"));
    let guarded = connect(format!("postgresql://app@127.0.0.1:{port}/shop"));

    let in_list = |n: usize| {
        let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        format!("SELECT count(*) FROM users WHERE id IN ({})", ids.join(","))
    };
    let insert = |n: usize| {
        let rows: Vec<String> = (0..n)
            .map(|i| format!("(1, NULL, 'SKU-{i:08}', 'ACTIVE')"))
            .collect();
        format!(
            "INSERT INTO entitlements (user_id, source_trx_id, sku, status) VALUES {}",
            rows.join(", ")
        )
    };
    let cases: Vec<(String, String)> = vec![
        ("IN list, 1,000 ints".into(), in_list(1_000)),
        ("IN list, 10,000 ints".into(), in_list(10_000)),
        ("IN list, 100,000 ints".into(), in_list(100_000)),
        ("IN list, 300,000 ints".into(), in_list(300_000)),
        ("IN list, 1,000,000 ints".into(), in_list(1_000_000)),
        ("INSERT VALUES, 5,000 rows".into(), insert(5_000)),
        ("INSERT VALUES, 50,000 rows".into(), insert(50_000)),
        ("INSERT VALUES, 250,000 rows".into(), insert(250_000)),
        // Every row holds an expression, all of one shape: one row of
        // it is judged.
        (
            "INSERT VALUES with expressions, 50,000 rows".into(),
            insert(50_000).replace("'SKU-", "'X' || 'SKU-"),
        ),
        (
            "INSERT VALUES with expressions, 200,000 rows".into(),
            insert(200_000).replace("'SKU-", "'X' || 'SKU-"),
        ),
        // No fast path: every row calls a function with its own argument
        // (a call's arguments are part of a row's shape), judged in full.
        (
            "INSERT VALUES, a different call per row, 50,000 rows".into(),
            insert(50_000)
                .replace("'SKU-", "lower('SKU-")
                .replace("', 'ACTIVE')", "'), 'ACTIVE')"),
        ),
        // Django's bulk_update: a CASE arm per row, and an IN list.
        ("UPDATE with CASE arms (bulk_update), 20,000 rows".into(), {
            let arms: Vec<String> = (0..20_000)
                .map(|i| format!("WHEN (\"entitlements\".\"id\" = {i}) THEN 'SKU-{i:08}'"))
                .collect();
            let ids: Vec<String> = (0..20_000).map(|i| i.to_string()).collect();
            format!(
                "UPDATE \"entitlements\" SET \"sku\" = CASE {} ELSE NULL END WHERE \"entitlements\".\"id\" IN ({})",
                arms.join(" "),
                ids.join(", ")
            )
        }),
        // Over [proxy] max_statement_bytes: judged in pieces.
        (
            "INSERT VALUES, a different call per row, 200,000 rows".into(),
            insert(200_000)
                .replace("'SKU-", "lower('SKU-")
                .replace("', 'ACTIVE')", "'), 'ACTIVE')"),
        ),
    ];
    println!();
    println!("| statement | bytes | direct ms | zoneguard ms | ratio |");
    println!("|---|---:|---:|---:|---:|");
    for (name, sql) in &cases {
        let mut times = [Vec::new(), Vec::new()];
        let mut refused = None;
        for _ in 0..rounds {
            for (k, client) in [&direct, &guarded].into_iter().enumerate() {
                let t = Instant::now();
                match rt.block_on(client.batch_execute(sql)) {
                    Ok(()) => times[k].push(t.elapsed()),
                    // An older guard may refuse big statements: say so.
                    Err(e) if k == 1 => {
                        refused = Some(e.code().map_or("error".into(), |c| c.code().to_owned()))
                    }
                    Err(e) => panic!("{name}: {e}"),
                }
                // Keep the table small between rounds.
                rt.block_on(direct.batch_execute("TRUNCATE entitlements"))
                    .unwrap();
            }
        }
        for t in &mut times {
            t.sort();
        }
        let d = times[0][times[0].len() / 2];
        match refused {
            Some(code) => println!(
                "| {name} | {} | {:.1} | refused ({code}) | - |",
                sql.len(),
                d.as_secs_f64() * 1e3
            ),
            None => {
                let g = times[1][times[1].len() / 2];
                println!(
                    "| {name} | {} | {:.1} | {:.1} | {:.2} |",
                    sql.len(),
                    d.as_secs_f64() * 1e3,
                    g.as_secs_f64() * 1e3,
                    g.as_secs_f64() / d.as_secs_f64()
                );
            }
        }
    }
    println!();
    println!(
        "zoneguard peak RSS over the run: {:.1} MiB (largest statement {:.1} MB)",
        peak_rss_kib(child.id()) as f64 / 1024.0,
        cases.iter().map(|(_, s)| s.len()).max().unwrap_or(0) as f64 / 1e6
    );
    let _ = child.kill();
    let _ = child.wait();
}
