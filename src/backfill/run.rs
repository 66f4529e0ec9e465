//! Running a backfill: connect (through the guard, like any application),
//! check the window and the schema, then one set-based INSERT ... SELECT per
//! keyset batch of transactions, each batch committed on its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio_postgres::{Client, Config, NoTls};

use super::mapping::Mapping;
use super::report::{Exclusion, Progress, Report};
use super::sql;

/// What to backfill and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// libpq URL or key=value string; point it at the guard.
    pub database_url: String,
    pub mapping: Mapping,
    /// Half-open paid_at window [from, to), as PostgreSQL timestamptz text.
    pub from: String,
    pub to: String,
    /// Transactions per batch (and per database transaction).
    pub batch_size: i64,
    pub dry_run: bool,
    /// Create the new-zone tables and the unique index first if missing.
    pub ensure_schema: bool,
    /// No progress output.
    pub quiet: bool,
    pub connect_timeout: Duration,
    /// The time zone `from`/`to` are read in (None: the session's, i.e.
    /// the database's or role's TimeZone).
    pub time_zone: Option<String>,
    /// Read at most this many transactions per second (waits between
    /// batches).
    pub max_rows_per_sec: Option<f64>,
    /// Pause before a batch while a replica's replay lag exceeds this.
    pub max_replica_lag: Option<Duration>,
    /// Set (by Ctrl-C): stop after the current batch.
    pub stop: Option<Arc<AtomicBool>>,
    /// Time between progress lines when not on a terminal.
    pub progress_every: Duration,
}

impl Options {
    pub fn new(database_url: impl Into<String>, mapping: Mapping) -> Options {
        Options {
            database_url: database_url.into(),
            mapping,
            from: "2023-01-01".into(),
            to: "2026-01-01".into(),
            batch_size: 50_000,
            dry_run: false,
            ensure_schema: false,
            quiet: true,
            connect_timeout: Duration::from_secs(10),
            time_zone: None,
            max_rows_per_sec: None,
            max_replica_lag: None,
            stop: None,
            progress_every: Duration::from_secs(5),
        }
    }
}

/// Describes where a URL points, without its password.
pub fn describe(config: &Config) -> String {
    let host = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let port = config
        .get_ports()
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{}@{}:{}/{}",
        config.get_user().unwrap_or("?"),
        if host.is_empty() { "localhost" } else { &host },
        if port.is_empty() { "5432" } else { &port },
        config.get_dbname().unwrap_or("?")
    )
}

/// Connects, with a clear error naming the target (never the password).
pub async fn connect(url: &str, timeout: Duration, app: &str) -> anyhow::Result<Client> {
    let mut config: Config = url
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid database URL: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name(app);
    }
    let target = describe(&config);
    let (client, conn) =
        tokio::time::timeout(timeout + Duration::from_secs(1), config.connect(NoTls))
            .await
            .map_err(|_| anyhow::anyhow!("cannot connect to the database at {target}: timed out"))?
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot connect to the database at {target}: {}",
                    pg_error(&e)
                )
            })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("database connection ended: {e}");
        }
    });
    Ok(client)
}

/// A PostgreSQL error with its SQLSTATE, detail and hint when there are any.
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; detail: {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => {
            use std::error::Error;
            match e.source() {
                Some(src) => format!("{e}: {src}"),
                None => e.to_string(),
            }
        }
    }
}

/// Runs a backfill and returns its report. Nothing is written in a dry run,
/// nor when any check fails before the first batch.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    if opts.batch_size < 1 {
        bail!("--batch-size must be at least 1");
    }
    if opts.dry_run && opts.ensure_schema {
        bail!("--dry-run writes nothing, so it cannot --ensure-schema; run --ensure-schema on its own first");
    }
    let started = Instant::now();
    let client = connect(
        &opts.database_url,
        opts.connect_timeout,
        "zoneguard-backfill",
    )
    .await?;

    if let Some(tz) = &opts.time_zone {
        client
            .query_one("SELECT set_config('TimeZone', $1, false)", &[tz])
            .await
            .map_err(|e| anyhow::anyhow!("invalid --time-zone {tz:?}: {}", pg_error(&e)))?;
    }
    let time_zone: String = client
        .query_one("SELECT current_setting('TimeZone')", &[])
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the session's time zone: {}", pg_error(&e)))?
        .get(0);
    let row = client
        .query_one(sql::PREFLIGHT_WINDOW, &[&opts.from, &opts.to])
        .await
        .map_err(|e| anyhow::anyhow!("invalid --from/--to window: {}", pg_error(&e)))?;
    let (from, to, ordered): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
    if !ordered {
        bail!("empty window: --from {from} is not before --to {to}");
    }
    if opts.max_rows_per_sec.is_some_and(|r| r <= 0.0) {
        bail!("--max-rows-per-sec must be positive");
    }
    if opts.max_replica_lag.is_some() {
        // The lag is only visible to roles allowed to see it; without it the
        // throttle would never pause, so refuse rather than pretend.
        let row = client
            .query_one(sql::REPLICA_LAG, &[])
            .await
            .map_err(|e| anyhow::anyhow!("cannot read pg_stat_replication: {}", pg_error(&e)))?;
        let (replicas, visible): (i64, Option<bool>) = (row.get(1), row.get(2));
        if replicas > 0 && visible != Some(true) {
            bail!("--max-replica-lag: this role cannot see the replicas' lag in pg_stat_replication; GRANT pg_monitor (or pg_read_all_stats) to it");
        }
    }

    if opts.ensure_schema {
        client
            .batch_execute(sql::ENSURE_SCHEMA)
            .await
            .map_err(|e| anyhow::anyhow!("cannot apply the new-zone schema: {}", pg_error(&e)))?;
    }
    let row = client
        .query_one(sql::SCHEMA_CHECK, &[])
        .await
        .map_err(|e| anyhow::anyhow!("cannot inspect the schema: {}", pg_error(&e)))?;
    let (has_table, has_index): (bool, bool) = (row.get(0), row.get(1));
    if !has_table {
        bail!("table entitlements does not exist: run `zoneguard backfill --ensure-schema` (or apply src/sql/new_zone.sql)");
    }
    if !has_index {
        bail!("entitlements has no unique index on (source_trx_id, sku), which makes the backfill idempotent: run `zoneguard backfill --ensure-schema`");
    }

    let products = opts.mapping.product_ids();
    let skus = opts.mapping.skus();
    // The bound first: the report and the batches see the same rows, and
    // rows added while the run goes are left for the next one.
    let bound: i64 = client
        .query_one(sql::BOUND, &[])
        .await
        .map_err(|e| anyhow::anyhow!("cannot read transactions: {}", pg_error(&e)))?
        .get(0);
    let mut report = Report {
        dry_run: opts.dry_run,
        time_zone,
        window_from: from,
        window_to: to,
        bound,
        ..Report::default()
    };
    // What is left out, and why: one pass over the transactions, on a
    // second connection while the batches run (it reads; the window is read
    // in the same time zone).
    let exclusions = {
        let other = connect(
            &opts.database_url,
            opts.connect_timeout,
            "zoneguard-backfill-report",
        )
        .await?;
        other
            .query_one(
                "SELECT set_config('TimeZone', $1, false)",
                &[&report.time_zone],
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot set the time zone: {}", pg_error(&e)))?;
        let (from, to, products) = (opts.from.clone(), opts.to.clone(), products.clone());
        tokio::spawn(async move {
            other
                .query(sql::EXCLUSIONS, &[&from, &to, &bound, &products])
                .await
                .map_err(|e| anyhow::anyhow!("cannot read transactions: {}", pg_error(&e)))
        })
    };
    let total = client
        .query_one(sql::COUNT_TO_READ, &[&opts.from, &opts.to, &bound])
        .await
        .map_err(|e| anyhow::anyhow!("cannot read transactions: {}", pg_error(&e)))?
        .get::<_, i64>(0) as u64;
    if !opts.quiet {
        println!(
            "backfill: window [{}, {}) in time zone {}; transactions up to id {bound} (the highest now; later ones are left for the next run); {} to read",
            report.window_from, report.window_to, report.time_zone, total
        );
    }

    let text = if opts.dry_run {
        sql::batch_dry_run()
    } else {
        sql::batch_write()
    };
    let stmt = client
        .prepare(&text)
        .await
        .map_err(|e| anyhow::anyhow!("cannot prepare the batch statement: {}", pg_error(&e)))?;

    let mut progress = Progress::new(total, opts.quiet, opts.progress_every);
    let mut last_id: i64 = 0;
    let reading = Instant::now();
    loop {
        if let Some(max) = opts.max_replica_lag {
            wait_for_replicas(&client, max, &mut report).await?;
        }
        let rows = client
            .query(
                &stmt,
                &[&last_id, &opts.from, &opts.to, &opts.batch_size, &products, &skus, &bound],
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "batch after transaction id {last_id} failed (earlier batches are committed; rerun to resume): {}",
                    pg_error(&e)
                )
            })?;
        let mut scanned = 0u64;
        let mut batch_last = None;
        let mut wanted: std::collections::BTreeMap<(String, String), u64> = Default::default();
        let mut made: std::collections::BTreeMap<(String, String), u64> = Default::default();
        for row in &rows {
            let kind: &str = row.get(0);
            let key: Option<String> = row.get(1);
            let status: Option<String> = row.get(2);
            let n = row.get::<_, i64>(3) as u64;
            let pair = || {
                (
                    key.clone().unwrap_or_default(),
                    status.clone().unwrap_or_default(),
                )
            };
            match kind {
                "batch" => {
                    scanned = n;
                    batch_last = row.get::<_, Option<i64>>(4);
                }
                "unmapped" => *report.unmapped.entry(key.unwrap_or_default()).or_default() += n,
                "want" => *wanted.entry(pair()).or_default() += n,
                "made" => *made.entry(pair()).or_default() += n,
                other => bail!("unexpected row kind {other:?} from the batch statement"),
            }
        }
        let Some(batch_last) = batch_last else { break };
        for ((sku, status), want) in &wanted {
            let m = made
                .get(&(sku.clone(), status.clone()))
                .copied()
                .unwrap_or(0);
            let present = want.saturating_sub(m);
            report.entitlements_wanted += want;
            report.already_present += present;
            if present > 0 {
                *report
                    .already_present_by_status
                    .entry(status.clone())
                    .or_default() += present;
                *report
                    .already_present_by_sku
                    .entry(sku.clone())
                    .or_default() += present;
            }
        }
        for ((sku, status), m) in made {
            *report.created_by_status.entry(status).or_default() += m;
            *report.created_by_sku.entry(sku).or_default() += m;
        }
        report.batches += 1;
        report.transactions_scanned += scanned;
        last_id = batch_last;
        report.last_id = last_id;
        progress.batch(&report, last_id);
        if (scanned as i64) < opts.batch_size {
            break;
        }
        if opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            report.interrupted = true;
            break;
        }
        if let Some(rate) = opts.max_rows_per_sec {
            // Stay at or under the rate on average since the first batch.
            let due = Duration::from_secs_f64(report.transactions_scanned as f64 / rate);
            let spent = reading.elapsed();
            if due > spent {
                let wait = due - spent;
                report.throttle_waits += 1;
                report.throttle_wait_time += wait;
                if sleep_or_stop(wait, opts.stop.as_ref()).await {
                    report.interrupted = true;
                    break;
                }
            }
        }
    }
    progress.finish();
    let rows = exclusions
        .await
        .map_err(|e| anyhow::anyhow!("the report's query did not finish: {e}"))??;
    for row in rows {
        let reason: String = row.get(0);
        let count = row.get::<_, i64>(2) as u64;
        if reason == "candidate" {
            report.candidates = count;
            continue;
        }
        report.excluded.push(Exclusion {
            reason,
            key: row.get(1),
            count,
            example_ids: row.get(3),
        });
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Sleeps `d`, or less if `stop` is set meanwhile; returns whether it was.
async fn sleep_or_stop(d: Duration, stop: Option<&Arc<AtomicBool>>) -> bool {
    let deadline = Instant::now() + d;
    loop {
        if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
}

/// Pauses while a replica's replay lag exceeds `max` (no replicas: no
/// pause), re-reading the lag every second.
async fn wait_for_replicas(
    client: &Client,
    max: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut paused: Option<Instant> = None;
    loop {
        let row = client
            .query_one(sql::REPLICA_LAG, &[])
            .await
            .map_err(|e| anyhow::anyhow!("cannot read pg_stat_replication: {}", pg_error(&e)))?;
        let lag: f64 = row.get(0);
        if lag <= max.as_secs_f64() {
            if let Some(p) = paused {
                report.replica_lag_pause_time += p.elapsed();
            }
            return Ok(());
        }
        if paused.is_none() {
            paused = Some(Instant::now());
            report.replica_lag_pauses += 1;
            tracing::info!(
                lag_secs = lag,
                "replica lag above --max-replica-lag: pausing"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
