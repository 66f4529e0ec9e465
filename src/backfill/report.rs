//! What a backfill run did (the final report, as text and as a stable JSON
//! document) and how it shows progress while running: a progress bar on a
//! terminal, a plain line every few seconds otherwise.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Counts of one run. In a dry run, `created_*` count what would be created.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub dry_run: bool,
    /// The session's TimeZone, in which `--from`/`--to` without an offset
    /// were read.
    pub time_zone: String,
    /// The window as PostgreSQL read it: [from, to).
    pub window_from: String,
    pub window_to: String,
    /// The highest transaction id when the run started: later rows are left
    /// for the next run.
    pub bound: i64,
    /// Transactions up to the bound that the window, status and mapping
    /// admit (what the batches read).
    pub candidates: u64,
    /// PAID transactions in the window that were read.
    pub transactions_scanned: u64,
    /// Entitlements the mapped transactions call for.
    pub entitlements_wanted: u64,
    pub created_by_status: BTreeMap<String, u64>,
    pub created_by_sku: BTreeMap<String, u64>,
    /// Entitlements that already existed (an earlier or interrupted run).
    pub already_present: u64,
    pub already_present_by_status: BTreeMap<String, u64>,
    pub already_present_by_sku: BTreeMap<String, u64>,
    /// Transactions up to the bound that were left out, per reason.
    pub excluded: Vec<Exclusion>,
    /// Transactions per product that has no mapping row (read by batches).
    #[serde(skip)]
    pub unmapped: BTreeMap<String, u64>,
    pub batches: u64,
    /// The last transaction id a committed batch covered.
    pub last_id: i64,
    /// Waits to stay under --max-rows-per-sec, and for replica lag.
    pub throttle_waits: u64,
    #[serde(serialize_with = "secs")]
    pub throttle_wait_time: Duration,
    pub replica_lag_pauses: u64,
    #[serde(serialize_with = "secs")]
    pub replica_lag_pause_time: Duration,
    /// Stopped early (Ctrl-C) after a committed batch: rerun to resume.
    pub interrupted: bool,
    #[serde(rename = "duration_secs", serialize_with = "secs")]
    pub elapsed: Duration,
}

/// Transactions left out for one reason (and key: the status or product).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exclusion {
    /// `status` (not exactly 'PAID'), `no_paid_at`, `before_window`,
    /// `after_window`, `unmapped`.
    pub reason: String,
    /// The status or product, exactly as stored (None: SQL NULL).
    pub key: Option<String>,
    pub count: u64,
    /// The lowest few transaction ids.
    pub example_ids: Vec<i64>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

impl Exclusion {
    /// What the reason means, for the text report.
    pub fn describe(&self) -> String {
        let key = match &self.key {
            Some(k) => format!("{k:?}"),
            None => "NULL".to_owned(),
        };
        match self.reason.as_str() {
            "status" => format!("status {key} (not PAID)"),
            "no_paid_at" => "PAID, no paid_at".to_owned(),
            "before_window" => "paid before the window".to_owned(),
            "after_window" => "paid after the window".to_owned(),
            "unmapped" => format!("product {key} has no mapping"),
            other => other.to_owned(),
        }
    }
}

impl Report {
    pub fn created(&self) -> u64 {
        self.created_by_status.values().sum()
    }

    pub fn unmapped_transactions(&self) -> u64 {
        self.unmapped.values().sum()
    }

    pub fn excluded_transactions(&self) -> u64 {
        self.excluded.iter().map(|e| e.count).sum()
    }

    /// The report as a stable JSON document (`--report-json`).
    pub fn to_json(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("schema".into(), "zoneguard-backfill-report/1".into());
            o.insert("created".into(), self.created().into());
        }
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would be created"
        } else {
            "created"
        };
        writeln!(
            f,
            "backfill {}{}in {:.1}s ({} batches)",
            if self.dry_run { "dry run " } else { "" },
            if self.interrupted { "INTERRUPTED " } else { "" },
            self.elapsed.as_secs_f64(),
            self.batches
        )?;
        let line = |f: &mut fmt::Formatter<'_>, label: &str, value: String| {
            writeln!(f, "  {label:<26} {value}")
        };
        line(
            f,
            "window:",
            format!(
                "[{}, {}) in time zone {}",
                self.window_from, self.window_to, self.time_zone
            ),
        )?;
        line(
            f,
            "bound:",
            format!(
                "transactions up to id {} (the highest when the run started)",
                self.bound
            ),
        )?;
        line(f, "candidates:", self.candidates.to_string())?;
        line(
            f,
            "transactions scanned:",
            self.transactions_scanned.to_string(),
        )?;
        line(
            f,
            &format!("entitlements {verb}:"),
            self.created().to_string(),
        )?;
        for (status, n) in &self.created_by_status {
            writeln!(f, "    status {status:<12} {n}")?;
        }
        for (sku, n) in &self.created_by_sku {
            writeln!(f, "    sku    {sku:<12} {n}")?;
        }
        line(f, "already present:", self.already_present.to_string())?;
        line(
            f,
            "left out:",
            format!("{} transactions", self.excluded_transactions()),
        )?;
        for e in &self.excluded {
            let ids: Vec<String> = e.example_ids.iter().map(i64::to_string).collect();
            writeln!(
                f,
                "    {:<40} {:>8}  e.g. ids {}",
                e.describe(),
                e.count,
                ids.join(", ")
            )?;
        }
        if self.throttle_waits > 0 || self.replica_lag_pauses > 0 {
            line(
                f,
                "throttled:",
                format!(
                    "{} waits ({:.1}s) for --max-rows-per-sec, {} pauses ({:.1}s) for replica lag",
                    self.throttle_waits,
                    self.throttle_wait_time.as_secs_f64(),
                    self.replica_lag_pauses,
                    self.replica_lag_pause_time.as_secs_f64()
                ),
            )?;
        }
        if self.interrupted {
            writeln!(
                f,
                "  stopped after the batch ending at transaction id {}: every batch so far is committed; run the same command again to resume",
                self.last_id
            )?;
        }
        Ok(())
    }
}

/// Shows progress: a bar with rate and ETA on a terminal, a plain line at
/// most every `every` otherwise.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    total: u64,
    started: Instant,
    last_line: Option<Instant>,
    every: Duration,
}

impl Progress {
    /// `total`: transactions the batches will read (for the percentage).
    pub fn new(total: u64, quiet: bool, every: Duration) -> Progress {
        let bar = (!quiet && std::io::stdout().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} transactions ({percent}%) {per_sec} eta {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Progress {
            bar,
            quiet,
            total,
            started: Instant::now(),
            last_line: None,
            every,
        }
    }

    /// Reports a finished batch.
    pub fn batch(&mut self, r: &Report, last_id: i64) {
        if self.quiet {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_position(r.transactions_scanned);
            bar.set_message(format!(
                "{} {}, last id {last_id}",
                r.created(),
                if r.dry_run { "to create" } else { "created" }
            ));
            return;
        }
        if self.last_line.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last_line = Some(Instant::now());
        let pct = if self.total == 0 {
            100.0
        } else {
            100.0 * r.transactions_scanned as f64 / self.total as f64
        };
        let secs = self.started.elapsed().as_secs_f64();
        let rate = r.transactions_scanned as f64 / secs.max(0.001);
        let eta = if rate > 0.0 {
            (self.total.saturating_sub(r.transactions_scanned)) as f64 / rate
        } else {
            0.0
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "progress: {}/{} transactions ({pct:.1}%), {} entitlements {}, {} already present, last id {last_id}, {rate:.0} trx/s, eta {eta:.0}s",
            r.transactions_scanned,
            self.total,
            r.created(),
            if r.dry_run { "to create" } else { "created" },
            r.already_present,
        );
        let _ = out.flush();
    }

    /// Ends the progress display.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
