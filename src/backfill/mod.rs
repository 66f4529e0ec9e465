//! The backfill: give existing customers their entitlements.
//! Reads PAID legacy transactions in a paid_at window, maps each product to
//! its SKU(s) with a CSV file, and writes one entitlement per (transaction,
//! SKU) through the guard, idempotently and in resumable batches. This
//! module holds the command-line arguments and entry points; [`mapping`],
//! [`run`], [`sql`], [`report`], [`gen`] and [`bench`] do the work.

pub mod bench;
pub mod gen;
pub mod mapping;
pub mod report;
pub mod run;
pub mod sql;

use std::path::PathBuf;
use std::time::Duration;

pub use mapping::Mapping;
pub use report::Report;
pub use run::Options;

/// `zoneguard backfill`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    long_about = "Give existing customers their entitlements: reads the PAID transactions whose paid_at is in [--from, --to), maps each product_id to its SKU(s) with --mapping, and inserts one entitlement per (transaction, SKU) into the new zone: COMPLETED when the user already has assessment answers for that product, ACTIVE otherwise.\n\nConnect through the guard, like any application: the backfill only reads the legacy zone and only writes entitlements. Safe to rerun or to resume after a crash (INSERT ... ON CONFLICT (source_trx_id, sku) DO NOTHING, one committed batch at a time)."
)]
pub struct BackfillArgs {
    /// Where to connect: the guard's URL, e.g. postgresql://app@127.0.0.1:6432/shop.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// CSV file with the header `product_id,sku`, one row per (product, SKU).
    #[arg(long, default_value = "examples/sku_mapping.csv")]
    pub mapping: PathBuf,
    /// Start of the paid_at window (inclusive), any PostgreSQL timestamptz
    /// text; without an offset it is read in --time-zone.
    #[arg(long, default_value = "2023-01-01")]
    pub from: String,
    /// End of the paid_at window (exclusive).
    #[arg(long, default_value = "2026-01-01")]
    pub to: String,
    /// Transactions per batch; each batch is one INSERT ... SELECT and one
    /// database transaction.
    #[arg(long, default_value_t = 50_000)]
    pub batch_size: i64,
    /// Show what would be written (counts per status and SKU) without writing.
    #[arg(long)]
    pub dry_run: bool,
    /// First create the new-zone tables and the unique index on
    /// entitlements (source_trx_id, sku) if they are missing.
    #[arg(long)]
    pub ensure_schema: bool,
    /// No progress output (the final report is still printed).
    #[arg(long, short)]
    pub quiet: bool,
    /// Seconds to wait for the connection.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u64,
    /// The time zone --from/--to are read in (e.g. UTC, Asia/Jakarta);
    /// default: the database's TimeZone. Printed in the report.
    #[arg(long)]
    pub time_zone: Option<String>,
    /// Also write the report as JSON to this file (a stable document for
    /// runbooks and auditors).
    #[arg(long, value_name = "FILE")]
    pub report_json: Option<PathBuf>,
    /// Read at most this many transactions per second (waits between
    /// batches; pair with a small --batch-size for a smooth rate).
    #[arg(long, value_name = "N")]
    pub max_rows_per_sec: Option<f64>,
    /// Pause before each batch while a replica's replay lag (from
    /// pg_stat_replication) exceeds this many seconds; no replicas, no
    /// pause. The role needs pg_monitor to see the lag.
    #[arg(long, value_name = "SECS")]
    pub max_replica_lag: Option<f64>,
    /// Seconds between progress lines when standard output is not a
    /// terminal (0: after every batch).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub progress_every: f64,
}

/// `zoneguard gen-legacy`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    long_about = "Generate legacy data for trying the backfill: N users, M transactions (85% PAID, paid_at over 2022..2025, four products) and assessment answers for a third of the users. Set-based (generate_series), deterministic for given sizes, adds to what is there.\n\nIt WRITES THE LEGACY TABLES, which the guard forbids: connect directly to PostgreSQL (or through the guard as the legacy_app role), not through the guard as an application."
)]
pub struct GenLegacyArgs {
    /// A direct PostgreSQL URL (not the guard's).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    #[arg(long, default_value_t = 1_000_000)]
    pub transactions: i64,
    #[arg(long, default_value_t = 100_000)]
    pub users: i64,
}

/// `zoneguard bench-backfill`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchBackfillArgs {
    #[arg(long, default_value_t = 1_000_000)]
    pub transactions: i64,
    #[arg(long, default_value_t = 100_000)]
    pub users: i64,
    #[arg(long, default_value_t = 50_000)]
    pub batch_size: i64,
}

/// Runs `zoneguard backfill`: validates the mapping, then backfills and
/// prints the report.
pub async fn backfill_command(args: BackfillArgs) -> anyhow::Result<()> {
    let mapping = Mapping::load(&args.mapping)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opts = Options {
        database_url: args.database_url,
        mapping,
        from: args.from,
        to: args.to,
        batch_size: args.batch_size,
        dry_run: args.dry_run,
        ensure_schema: args.ensure_schema,
        quiet: args.quiet,
        connect_timeout: Duration::from_secs(args.connect_timeout),
        time_zone: args.time_zone,
        max_rows_per_sec: args.max_rows_per_sec,
        max_replica_lag: match args.max_replica_lag {
            Some(s) if !(s.is_finite() && s >= 0.0) => {
                anyhow::bail!("--max-replica-lag must be a number of seconds, at least 0")
            }
            s => s.map(Duration::from_secs_f64),
        },
        stop: Some(stop.clone()),
        progress_every: Duration::from_secs_f64(args.progress_every.max(0.0)),
    };
    // Ctrl-C: stop after the current batch (a second one ends at once).
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping after the current batch (Ctrl-C again to quit at once; what is committed stays)");
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let report = run::run(&opts).await?;
    print!("{report}");
    if let Some(path) = &args.report_json {
        std::fs::write(path, report.to_json())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if report.interrupted {
        std::process::exit(130);
    }
    Ok(())
}

/// Runs `zoneguard gen-legacy`.
pub async fn gen_legacy_command(args: GenLegacyArgs) -> anyhow::Result<()> {
    let g = gen::generate(
        &gen::GenOptions {
            database_url: args.database_url,
            transactions: args.transactions,
            users: args.users,
        },
        |g| println!("progress: {} transactions", g.transactions),
    )
    .await?;
    println!(
        "generated in {:.1}s: {} users, {} transactions, {} assessments",
        g.elapsed.as_secs_f64(),
        g.users,
        g.transactions,
        g.assessments
    );
    Ok(())
}

/// Runs `zoneguard bench-backfill`.
pub async fn bench_command(args: BenchBackfillArgs) -> anyhow::Result<()> {
    bench::bench(&bench::BenchOptions {
        transactions: args.transactions,
        users: args.users,
        batch_size: args.batch_size,
    })
    .await
}
