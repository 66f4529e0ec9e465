//! Running a backfill: connect (through the guard, like any application),
//! check the window and the schema, then one set-based INSERT ... SELECT per
//! keyset batch of transactions, each batch committed on its own.

use std::time::{Duration, Instant};

use anyhow::bail;
use tokio_postgres::{Client, Config, NoTls};

use super::mapping::Mapping;
use super::report::{Progress, Report};
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

    let row = client
        .query_one(sql::PREFLIGHT_WINDOW, &[&opts.from, &opts.to])
        .await
        .map_err(|e| anyhow::anyhow!("invalid --from/--to window: {}", pg_error(&e)))?;
    let (from, to, ordered): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
    if !ordered {
        bail!("empty window: --from {from} is not before --to {to}");
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

    let row = client
        .query_one(sql::COUNT_CANDIDATES, &[&opts.from, &opts.to])
        .await
        .map_err(|e| anyhow::anyhow!("cannot read transactions: {}", pg_error(&e)))?;
    let total: i64 = row.get(0);

    let text = if opts.dry_run {
        sql::batch_dry_run()
    } else {
        sql::batch_write()
    };
    let stmt = client
        .prepare(&text)
        .await
        .map_err(|e| anyhow::anyhow!("cannot prepare the batch statement: {}", pg_error(&e)))?;
    let products = opts.mapping.product_ids();
    let skus = opts.mapping.skus();

    let mut report = Report {
        dry_run: opts.dry_run,
        ..Report::default()
    };
    let mut progress = Progress::new(total as u64, opts.quiet);
    let mut last_id: i64 = 0;
    loop {
        let rows = client
            .query(
                &stmt,
                &[&last_id, &opts.from, &opts.to, &opts.batch_size, &products, &skus],
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
        let (mut wanted, mut made) = (0u64, 0u64);
        for row in &rows {
            let kind: &str = row.get(0);
            let key: Option<String> = row.get(1);
            let status: Option<String> = row.get(2);
            let n = row.get::<_, i64>(3) as u64;
            match kind {
                "batch" => {
                    scanned = n;
                    batch_last = row.get::<_, Option<i64>>(4);
                }
                "unmapped" => *report.unmapped.entry(key.unwrap_or_default()).or_default() += n,
                "want" => wanted += n,
                "made" => {
                    made += n;
                    *report
                        .created_by_status
                        .entry(status.unwrap_or_default())
                        .or_default() += n;
                    *report
                        .created_by_sku
                        .entry(key.unwrap_or_default())
                        .or_default() += n;
                }
                other => bail!("unexpected row kind {other:?} from the batch statement"),
            }
        }
        let Some(batch_last) = batch_last else { break };
        report.batches += 1;
        report.transactions_scanned += scanned;
        report.entitlements_wanted += wanted;
        report.already_present += wanted - made;
        last_id = batch_last;
        progress.batch(&report, last_id);
        if (scanned as i64) < opts.batch_size {
            break;
        }
    }
    progress.finish();
    report.elapsed = started.elapsed();
    Ok(report)
}
