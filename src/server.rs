//! The accept loop and the state every session shares.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, UnixListener};

use crate::audit::AuditLog;
use crate::net::Stream;
use crate::policy::{Policy, Settings};

/// The policy in force and the switch positions, swapped as one.
#[derive(Debug)]
pub struct Runtime {
    pub policy: Policy,
    pub switches: BTreeMap<String, bool>,
    /// Bumped on every swap, so sessions notice a change cheaply.
    pub generation: u64,
}

/// State shared by all sessions, passed in (never global) so that tests can
/// run several guards in one process.
pub struct Guard {
    pub runtime: ArcSwap<Runtime>,
    /// `runtime`'s generation, readable without loading it: sessions check
    /// it on every read from the client.
    pub generation: AtomicU64,
    pub settings: Settings,
    /// `settings.proxy.upstream`, parsed.
    pub upstream: crate::net::Endpoint,
    pub audit: AuditLog,
    /// Random per process; part of every rejection marker.
    pub nonce: String,
    /// Where the policy came from, for reloads and switch write-back.
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
}

impl Guard {
    pub async fn new(
        policy: Policy,
        settings: Settings,
        policy_path: Option<PathBuf>,
    ) -> std::io::Result<Arc<Guard>> {
        let upstream = crate::net::Endpoint::parse(&settings.proxy.upstream)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let audit =
            AuditLog::open(&settings.audit.file, settings.audit.max_statement_chars).await?;
        let switches = policy.default_switches();
        let cache = crate::cache::ClassifyCache::with_budget(4096, settings.proxy.cache_bytes);
        let catalogs = crate::catalog::CatalogStore::new(
            settings.catalog.clone(),
            upstream.clone(),
            std::time::Duration::from_secs(settings.proxy.connect_timeout_secs),
        );
        Ok(Arc::new(Guard {
            catalogs,
            runtime: ArcSwap::from_pointee(Runtime {
                policy,
                switches,
                generation: 1,
            }),
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

/// Accepts clients until `shutdown` completes. Takes an already-bound
/// listener, so tests bind port 0 and run the real server in-process.
pub async fn run(listener: TcpListener, guard: Arc<Guard>, shutdown: impl Future<Output = ()>) {
    run_listeners(listener, None, guard, shutdown).await
}

/// [`run`], also accepting clients on a Unix-domain socket.
pub async fn run_listeners(
    tcp: TcpListener,
    unix: Option<UnixListener>,
    guard: Arc<Guard>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = tcp.accept() => a.map(|(socket, peer)| {
                let _ = socket.set_nodelay(true);
                (Stream::Tcp(socket), peer.to_string())
            }),
            a = async { unix.as_ref().unwrap().accept().await }, if unix.is_some() => {
                a.map(|(socket, _)| (Stream::Unix(socket), "[local]".to_string()))
            }
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // A place among the unauthenticated (the oldest such connection
        // makes room at a cap); a session slot is taken after the startup
        // packet, when the guard knows whether it is a console login.
        let ticket = guard.admission.admit(&peer);
        tokio::spawn(crate::session::serve(guard.clone(), socket, peer, ticket));
    }
}
