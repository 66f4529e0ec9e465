//! The state every session shares: the policy in force with its switch
//! positions, the settings, the audit log, the caches, the counters.
//!
//! Dependencies run one way: the entry points (`server`'s accept loop, the
//! admin console, `control`, `state`) and the sessions use this module; it
//! uses only policy, audit, cache, catalog and admission, never them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::audit::AuditLog;
use crate::policy::{Policy, Settings};

/// The policy in force and the switch positions, swapped as one.
#[derive(Debug)]
pub struct Runtime {
    pub policy: Policy,
    /// Each switch's position in force: its flip, else the policy's default.
    pub switches: BTreeMap<String, bool>,
    /// Positions set by flips: the state database's (shared by every
    /// instance), or, without one, this instance's own console flips.
    pub flipped: BTreeMap<String, Flipped>,
    /// Bumped on every swap, so sessions notice a change cheaply.
    pub generation: u64,
}

/// A switch's position as last flipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flipped {
    /// None: back to the policy file's default.
    pub on: Option<bool>,
    /// The state database's flip generation (0 for a flip on this instance
    /// without a state database). Positions only move forward: an older
    /// generation never replaces a newer one.
    pub generation: i64,
}

impl Runtime {
    pub fn new(policy: Policy, flipped: BTreeMap<String, Flipped>, generation: u64) -> Runtime {
        let mut switches = policy.default_switches();
        for (name, on) in switches.iter_mut() {
            if let Some(Flipped { on: Some(f), .. }) = flipped.get(name) {
                *on = *f;
            }
        }
        Runtime {
            policy,
            switches,
            flipped,
            generation,
        }
    }

    /// The newest state-database flip applied here.
    pub fn switch_generation(&self) -> i64 {
        self.flipped
            .values()
            .map(|f| f.generation)
            .max()
            .unwrap_or(0)
    }
}

/// State shared by all sessions, passed in (never global) so that tests can
/// run several guards in one process.
pub struct Guard {
    pub runtime: ArcSwap<Runtime>,
    /// `runtime`'s generation, readable without loading it: sessions check
    /// it on every read from the client.
    pub generation: AtomicU64,
    pub settings: Settings,
    /// `settings.proxy.upstream`, parsed, with its TLS settings.
    pub upstream: crate::upstream::Upstream,
    /// TLS for clients: the certificate in force (reloaded on SIGHUP).
    pub tls: crate::tls::ClientTls,
    pub audit: AuditLog,
    /// Random per process; part of every rejection marker.
    pub nonce: String,
    /// Where the policy came from, for reloads and SET MODE write-back.
    pub policy_path: Option<PathBuf>,
    /// Serialises reloads and flips.
    pub control_lock: tokio::sync::Mutex<()>,
    pub stats: Stats,
    pub clients_registry: std::sync::Mutex<BTreeMap<u64, ClientEntry>>,
    /// Classification results by statement text, shared by all sessions.
    pub cache: crate::cache::ClassifyCache,
    next_session: AtomicU64,
    pub admission: Arc<crate::admission::Admission>,
    /// Failed admin console logins per client address.
    pub console_throttle: crate::admin::Throttle,
    /// What the names denote, per database fronted.
    pub catalogs: crate::catalog::CatalogStore,
    /// The switches' shared state: its connection, how fresh our view is.
    pub state: crate::state::handle::StateHandle,
    /// The guard's own time per judged SQL text (metrics).
    pub judge_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Where shutdown stands; sessions watch it.
    pub shutdown: tokio::sync::watch::Sender<Shutdown>,
}

/// Graceful shutdown, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shutdown {
    Running,
    /// No new clients; each session is closed (57P01) once it is idle
    /// outside a transaction, so running work finishes.
    Draining,
    /// The drain timeout passed: every session is closed now.
    Terminating,
}

impl Guard {
    pub async fn new(
        policy: Policy,
        settings: Settings,
        policy_path: Option<PathBuf>,
    ) -> std::io::Result<Arc<Guard>> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let upstream =
            crate::upstream::Upstream::from_settings(&settings.proxy).map_err(invalid)?;
        let tls = crate::tls::ClientTls::new(&settings.tls).map_err(|e| invalid(e.to_string()))?;
        let audit =
            AuditLog::open(&settings.audit.file, settings.audit.max_statement_chars).await?;
        let cache = crate::cache::ClassifyCache::with_budget(4096, settings.proxy.cache_bytes);
        let catalogs = crate::catalog::CatalogStore::new(
            settings.catalog.clone(),
            upstream.clone(),
            std::time::Duration::from_secs(settings.proxy.connect_timeout_secs),
        );
        Ok(Arc::new(Guard {
            catalogs,
            state: crate::state::handle::StateHandle::new(&settings),
            runtime: ArcSwap::from_pointee(Runtime::new(policy, BTreeMap::new(), 1)),
            // From 1 µs doubling to about 16 ms.
            judge_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1e-6, 2.0, 15),
            ),
            shutdown: tokio::sync::watch::channel(Shutdown::Running).0,
            generation: AtomicU64::new(1),
            policy_path,
            control_lock: tokio::sync::Mutex::new(()),
            stats: Stats::default(),
            clients_registry: std::sync::Mutex::new(BTreeMap::new()),
            admission: crate::admission::Admission::new(
                settings.proxy.max_clients,
                settings.proxy.reserved_console_slots,
                settings.proxy.max_unauthenticated_per_address,
                settings.proxy.max_unauthenticated,
            ),
            settings,
            upstream,
            tls,
            audit,
            cache,
            nonce: format!("{:016x}", rand::random::<u64>()),
            console_throttle: Default::default(),
            next_session: AtomicU64::new(1),
        }))
    }

    /// Shutting down: no new clients, the health check fails.
    pub fn draining(&self) -> bool {
        *self.shutdown.borrow() != Shutdown::Running
    }

    /// Stops sessions gracefully: each closes (57P01) once idle outside a
    /// transaction; after `timeout` the rest are closed at once. Returns
    /// when every relayed session has ended (or 5 s after that).
    pub async fn drain(&self, timeout: std::time::Duration) {
        let sessions = || self.clients_registry.lock().unwrap().len();
        tracing::info!(
            sessions = sessions(),
            ?timeout,
            "draining: new clients are refused, sessions end once idle"
        );
        self.shutdown.send_replace(Shutdown::Draining);
        let until_empty = |limit: std::time::Duration| async move {
            let start = std::time::Instant::now();
            while sessions() > 0 && start.elapsed() < limit {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        until_empty(timeout).await;
        if sessions() > 0 {
            tracing::warn!(
                sessions = sessions(),
                "drain timeout: closing the remaining sessions (57P01)"
            );
            self.shutdown.send_replace(Shutdown::Terminating);
            until_empty(std::time::Duration::from_secs(5)).await;
        }
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}

/// Counters for the admin console's SHOW STATS and the metrics endpoint.
#[derive(Default)]
pub struct Stats {
    pub statements: AtomicU64,
    pub allowed: AtomicU64,
    pub rejected: AtomicU64,
    /// Rejections by (rule, zone, operation, role).
    pub rejected_by: std::sync::Mutex<BTreeMap<DenialKey, u64>>,
    /// Statements let through in shadow mode that would have been rejected.
    pub shadowed: AtomicU64,
    pub shadowed_by: std::sync::Mutex<BTreeMap<DenialKey, u64>>,
    /// Connections to the upstream that failed (sessions, cancels).
    pub upstream_connect_failures: AtomicU64,
    /// Policy files (or certificates) refused at reload.
    pub reloads_refused: AtomicU64,
}

/// What a rejection is counted by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DenialKey {
    pub rule: String,
    pub zone: String,
    pub operation: String,
    pub role: String,
}

impl DenialKey {
    fn of(d: &crate::policy::Denial, role: &str) -> DenialKey {
        DenialKey {
            rule: d.rule.clone(),
            zone: d.zone.clone().unwrap_or_default(),
            operation: d.operation.clone(),
            role: role.to_string(),
        }
    }
}

impl Stats {
    pub fn count_shadowed(&self, d: &crate::policy::Denial, role: &str) {
        self.shadowed.fetch_add(1, Ordering::Relaxed);
        *self
            .shadowed_by
            .lock()
            .unwrap()
            .entry(DenialKey::of(d, role))
            .or_default() += 1;
    }

    pub fn count_rejection(&self, d: &crate::policy::Denial, role: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        *self
            .rejected_by
            .lock()
            .unwrap()
            .entry(DenialKey::of(d, role))
            .or_default() += 1;
    }

    /// Counts by rule alone, for SHOW STATS.
    pub fn by_rule(map: &std::sync::Mutex<BTreeMap<DenialKey, u64>>) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (k, n) in map.lock().unwrap().iter() {
            *out.entry(k.rule.clone()).or_default() += n;
        }
        out
    }
}

/// A connected client, for SHOW CLIENTS.
#[derive(Debug, Clone)]
pub struct ClientEntry {
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub client_addr: String,
    pub connected_at: String,
}
