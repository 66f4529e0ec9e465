//! `zoneguard bench-backfill`: a throwaway cluster, an in-process guard,
//! generated legacy data, then timings of a full backfill through the guard,
//! a second (no-op) run, and the floor: one hand-written INSERT ... SELECT
//! straight to PostgreSQL.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;

use super::gen::{generate, GenOptions};
use super::mapping::Mapping;
use super::run::{connect, pg_error, run, Options};
use crate::cluster::Cluster;
use crate::guard::Guard;
use crate::policy;
use crate::server;

const SHIPPED_POLICY: &str = include_str!("../../policy.toml");
/// The demo mapping, also used by the benchmark.
pub const EXAMPLE_MAPPING: &str = include_str!("../../examples/sku_mapping.csv");

/// The floor: the same result in one statement, no guard, no batches.
fn direct() -> String {
    DIRECT.replace("{HAS_ANSWERS}", super::sql::HAS_ANSWERS)
}

const DIRECT: &str = "
INSERT INTO entitlements (user_id, source_trx_id, sku, status)
SELECT t.user_id, t.id, m.sku,
       CASE WHEN EXISTS (SELECT 1 FROM user_assessments a
                         WHERE a.user_id = t.user_id AND a.product_id = t.product_id
                           AND {HAS_ANSWERS})
            THEN 'COMPLETED' ELSE 'ACTIVE' END
FROM transactions t
JOIN unnest($1::text[], $2::text[]) AS m(product_id, sku) ON m.product_id = t.product_id
WHERE t.status = 'PAID'
  AND t.paid_at >= '2023-01-01' AND t.paid_at < '2026-01-01'
ON CONFLICT (source_trx_id, sku) DO NOTHING";

pub struct BenchOptions {
    pub transactions: i64,
    pub users: i64,
    pub batch_size: i64,
}

/// Runs the benchmark and prints its table on standard output.
pub async fn bench(o: &BenchOptions) -> anyhow::Result<()> {
    eprintln!("starting a throwaway PostgreSQL ...");
    let cluster = tokio::task::spawn_blocking(|| Cluster::start_seeded("bench")).await??;
    let direct_url = cluster.url("postgres", "bench");
    eprintln!(
        "generating {} transactions for {} users (direct) ...",
        o.transactions, o.users
    );
    let g = generate(
        &GenOptions {
            database_url: direct_url.clone(),
            transactions: o.transactions,
            users: o.users,
        },
        |_| {},
    )
    .await?;
    eprintln!(
        "generated in {:.1}s: {} users, {} transactions, {} assessments",
        g.elapsed.as_secs_f64(),
        g.users,
        g.transactions,
        g.assessments
    );

    let dir = tempfile::tempdir()?;
    let (pol, mut settings) = policy::parse(SHIPPED_POLICY, Path::new("policy.toml"))?;
    settings.proxy.upstream = cluster.addr();
    settings.audit.file = dir.path().join("audit.jsonl").display().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let guard = Guard::new(pol, settings, None)
        .await
        .context("cannot open the audit log")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(listener, guard, async move {
        let _ = stopped.await;
    }));

    let mapping = Mapping::parse(EXAMPLE_MAPPING, "examples/sku_mapping.csv")?;
    let mut opts = Options::new(format!("postgresql://app@{addr}/bench"), mapping.clone());
    opts.batch_size = o.batch_size;
    let first = run(&opts).await?;
    eprintln!("{first}");
    let second = run(&opts).await?;
    eprintln!("{second}");

    let c = connect(&direct_url, Duration::from_secs(10), "zoneguard-bench").await?;
    c.batch_execute("TRUNCATE entitlements")
        .await
        .map_err(|e| anyhow::anyhow!("{}", pg_error(&e)))?;
    let t = Instant::now();
    let n = c
        .execute(&direct(), &[&mapping.product_ids(), &mapping.skus()])
        .await
        .map_err(|e| anyhow::anyhow!("direct INSERT ... SELECT: {}", pg_error(&e)))?;
    let floor = t.elapsed();
    let _ = stop.send(());
    let _ = server.await;

    if n != first.created() || second.created() != 0 || second.already_present != n {
        anyhow::bail!(
            "runs disagree: first created {}, second created {} (already present {}), direct inserted {n}",
            first.created(),
            second.created(),
            second.already_present
        );
    }
    println!(
        "backfill benchmark: {} transactions ({} PAID in 2023..2025), {} entitlements, batch size {}",
        g.transactions, first.transactions_scanned, n, o.batch_size
    );
    println!("| run                                   | seconds | target |");
    println!("|---------------------------------------|--------:|-------:|");
    println!(
        "| full backfill through the guard       | {:>7.2} | < 30 s |",
        first.elapsed.as_secs_f64()
    );
    println!(
        "| second run (no-op) through the guard  | {:>7.2} | < 10 s |",
        second.elapsed.as_secs_f64()
    );
    println!(
        "| one INSERT ... SELECT, direct (floor) | {:>7.2} |        |",
        floor.as_secs_f64()
    );
    drop(cluster);
    Ok(())
}
