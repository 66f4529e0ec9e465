//! What a backfill run did (the final report) and how it shows progress
//! while running: a redrawn line on a terminal, plain lines otherwise.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Counts of one run. In a dry run, `created_*` count what would be created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub dry_run: bool,
    /// PAID transactions in the window that were read.
    pub transactions_scanned: u64,
    /// Entitlements the mapped transactions call for.
    pub entitlements_wanted: u64,
    pub created_by_status: BTreeMap<String, u64>,
    pub created_by_sku: BTreeMap<String, u64>,
    /// Entitlements that already existed (an earlier or interrupted run).
    pub already_present: u64,
    /// Transactions per product that has no mapping row.
    pub unmapped: BTreeMap<String, u64>,
    pub batches: u64,
    pub elapsed: Duration,
}

impl Report {
    pub fn created(&self) -> u64 {
        self.created_by_status.values().sum()
    }

    pub fn unmapped_transactions(&self) -> u64 {
        self.unmapped.values().sum()
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
            "backfill {}in {:.1}s ({} batches)",
            if self.dry_run { "dry run " } else { "" },
            self.elapsed.as_secs_f64(),
            self.batches
        )?;
        let line = |f: &mut fmt::Formatter<'_>, label: &str, value: String| {
            writeln!(f, "  {label:<26} {value}")
        };
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
            "unmapped products:",
            format!(
                "{} ({} transactions)",
                self.unmapped.len(),
                self.unmapped_transactions()
            ),
        )?;
        for (product, n) in &self.unmapped {
            writeln!(f, "    {product:<20} {n} transactions")?;
        }
        Ok(())
    }
}

/// Shows progress on standard output.
pub struct Progress {
    tty: bool,
    quiet: bool,
    total: u64,
    started: Instant,
}

impl Progress {
    /// `total`: transactions in the window (for the percentage).
    pub fn new(total: u64, quiet: bool) -> Progress {
        Progress {
            tty: std::io::stdout().is_terminal(),
            quiet,
            total,
            started: Instant::now(),
        }
    }

    /// Reports a finished batch: redraws the line on a terminal, else one
    /// line per batch.
    pub fn batch(&mut self, r: &Report, last_id: i64) {
        if self.quiet {
            return;
        }
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
        let text = format!(
            "progress: {}/{} transactions ({pct:.1}%), {} entitlements {}, {} already present, last id {last_id}, {rate:.0} trx/s, eta {eta:.0}s",
            r.transactions_scanned,
            self.total,
            r.created(),
            if r.dry_run { "to create" } else { "created" },
            r.already_present,
        );
        let mut out = std::io::stdout().lock();
        if self.tty {
            let bar_w = 24usize;
            let filled = ((pct / 100.0) * bar_w as f64).round() as usize;
            let bar = format!(
                "[{}{}]",
                "#".repeat(filled.min(bar_w)),
                "-".repeat(bar_w - filled.min(bar_w))
            );
            let _ = write!(out, "\r\x1b[2K{bar} {text}");
        } else {
            let _ = writeln!(out, "{text}");
        }
        let _ = out.flush();
    }

    /// Ends the progress display (a newline after a redrawn line).
    pub fn finish(&self) {
        if self.tty && !self.quiet {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out);
            let _ = out.flush();
        }
    }
}
