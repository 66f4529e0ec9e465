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
    pub upstream: crate::net::Upstream,
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
    pub state: crate::state::StateHandle,
}

impl Guard {
    pub async fn new(
        policy: Policy,
        settings: Settings,
        policy_path: Option<PathBuf>,
    ) -> std::io::Result<Arc<Guard>> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let endpoint = crate::net::Endpoint::parse(&settings.proxy.upstream).map_err(invalid)?;
        let upstream_tls = crate::tls::UpstreamTls::new(
            &settings.proxy.upstream_tls,
            &settings.proxy.upstream_ca_file,
            &endpoint,
        )
        .map_err(|e| invalid(e.to_string()))?;
        let upstream = crate::net::Upstream {
            endpoint,
            tls: Arc::new(upstream_tls),
        };
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
            state: crate::state::StateHandle::new(&settings, &policy),
            runtime: ArcSwap::from_pointee(Runtime::new(policy, BTreeMap::new(), 1)),
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

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}

/// Counters for the admin console's SHOW STATS.
#[derive(Default)]
pub struct Stats {
    pub statements: AtomicU64,
    pub allowed: AtomicU64,
    pub rejected: AtomicU64,
    pub rejected_by_rule: std::sync::Mutex<BTreeMap<String, u64>>,
    /// Statements let through in shadow mode that would have been rejected.
    pub shadowed: AtomicU64,
    pub shadowed_by_rule: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    pub fn count_shadowed(&self, rule: &str) {
        self.shadowed.fetch_add(1, Ordering::Relaxed);
        *self
            .shadowed_by_rule
            .lock()
            .unwrap()
            .entry(rule.to_string())
            .or_default() += 1;
    }

    pub fn count_rejection(&self, rule: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        *self
            .rejected_by_rule
            .lock()
            .unwrap()
            .entry(rule.to_string())
            .or_default() += 1;
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
