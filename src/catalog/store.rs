//! Keeps each fronted database's catalog current: loaded when the first
//! session of that database starts, reloaded periodically, at once after DDL
//! that passed through the guard has committed, and on the console's
//! `RELOAD CATALOG`.
//!
//! With the event trigger that `zoneguard catalog-trigger` prints installed
//! in the database, DDL from anywhere notifies the guard's connection, and
//! the catalog is reloaded at once.
//!
//! No lag (docs/catalog.md): a reload that must be in force before the
//! next statement is *required*: after DDL through the guard has ended its
//! transaction (for every session of the database, not only the one that
//! ran it), when the change log moved, and when the catalog connection was
//! lost (notifications or changes may have been missed). Every session
//! waits for a required reload before judging, at most the connect timeout,
//! and then refuses rather than judge on the old catalog. A required reload
//! that fails (a concurrent DROP makes `pg_get_ruledef` fail) is retried at
//! once. Until a session's DDL has ended, its names are in flux
//! (`catalog::flux`), for it and for every other session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{watch, Notify};

use super::flux::{EntryState, FluxEntry, FluxName};
use super::Catalog;
use crate::policy::CatalogSettings;

/// Least time between two loads of one database's catalog.
const MIN_GAP: Duration = Duration::from_millis(50);

/// The catalogs of every database the guard fronts.
pub struct CatalogStore {
    settings: CatalogSettings,
    upstream: crate::upstream::Upstream,
    timeout: Duration,
    databases: Mutex<HashMap<String, Arc<DatabaseCatalog>>>,
}

/// One database's catalog and its reloads.
pub struct DatabaseCatalog {
    pub database: String,
    current: ArcSwapOption<Catalog>,
    /// `current`'s version, readable without touching it.
    version: AtomicU64,
    /// Reloads asked for, and the number of the last one whose load started
    /// after it was asked for and has finished (successfully or not).
    requested: AtomicU64,
    done: watch::Sender<u64>,
    /// The ticket of the last load that succeeded.
    loaded: AtomicU64,
    /// The newest ticket every session must see loaded before it judges.
    required: AtomicU64,
    /// The sessions whose DDL has put names in flux, and a counter that
    /// moves with every change to them (part of each session's epoch).
    flux: Mutex<Vec<Arc<FluxEntry>>>,
    flux_version: AtomicU64,
    wake: Arc<Notify>,
    /// The last load's error, for the console.
    pub last_error: Mutex<Option<String>>,
}

impl CatalogStore {
    pub fn new(
        settings: CatalogSettings,
        upstream: crate::upstream::Upstream,
        timeout: Duration,
    ) -> CatalogStore {
        CatalogStore {
            settings,
            upstream,
            timeout,
            databases: Mutex::new(HashMap::new()),
        }
    }

    /// The catalog of `database`, starting its loader if this is its first
    /// session. None: catalogs are off, or too many databases are kept.
    pub fn database(&self, database: &str) -> Option<Arc<DatabaseCatalog>> {
        if !self.settings.enabled {
            return None;
        }
        let mut dbs = self.databases.lock().unwrap();
        if let Some(db) = dbs.get(database) {
            return Some(db.clone());
        }
        if dbs.len() >= self.settings.max_databases {
            return None;
        }
        let db = Arc::new(DatabaseCatalog::new(database));
        dbs.insert(database.to_owned(), db.clone());
        tokio::spawn(reloader(
            Arc::downgrade(&db),
            db.wake.clone(),
            self.upstream.clone(),
            self.settings.clone(),
            self.timeout,
        ));
        Some(db)
    }

    /// Every kept database's catalog, for the console.
    pub fn all(&self) -> Vec<Arc<DatabaseCatalog>> {
        let mut v: Vec<_> = self.databases.lock().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.database.cmp(&b.database));
        v
    }
}

impl std::fmt::Debug for DatabaseCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseCatalog")
            .field("database", &self.database)
            .field("version", &self.current().map(|c| c.version))
            .finish()
    }
}

impl DatabaseCatalog {
    /// A database's entry before its first load (which is asked for).
    fn new(database: &str) -> DatabaseCatalog {
        DatabaseCatalog {
            database: database.to_owned(),
            current: ArcSwapOption::empty(),
            version: AtomicU64::new(0),
            requested: AtomicU64::new(1),
            done: watch::channel(0).0,
            loaded: AtomicU64::new(0),
            required: AtomicU64::new(0),
            flux: Mutex::new(Vec::new()),
            flux_version: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
            last_error: Mutex::new(None),
        }
    }

    pub fn current(&self) -> Option<Arc<Catalog>> {
        self.current.load_full()
    }

    /// The current catalog's version (0: none loaded yet).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Asks for a reload; returns a ticket for [`Self::wait_for`].
    pub fn request_reload(&self) -> u64 {
        let ticket = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake.notify_one();
        ticket
    }

    /// Waits until a load that started after `ticket` was issued has
    /// finished, or `timeout` passes.
    pub async fn wait_for(&self, ticket: u64, timeout: Duration) {
        let mut rx = self.done.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|done| *done >= ticket)).await;
    }

    /// Waits for the first load to finish (or `timeout`).
    pub async fn wait_first(&self, timeout: Duration) {
        self.wait_for(1, timeout).await
    }

    /// Makes the load of `ticket` required: no session judges before it
    /// has landed.
    pub fn require(&self, ticket: u64) {
        self.required.fetch_max(ticket, Ordering::AcqRel);
    }

    /// Asks for a reload and requires it.
    pub fn require_reload(&self) -> u64 {
        let t = self.request_reload();
        self.require(t);
        t
    }

    /// The required ticket that has not been loaded yet, if any. Two atomic
    /// loads: this runs before every judgement.
    pub fn outstanding(&self) -> Option<u64> {
        let r = self.required.load(Ordering::Acquire);
        (r > self.loaded.load(Ordering::Acquire)).then_some(r)
    }

    /// Whether the load of `ticket` (or a later one) has succeeded.
    pub fn loaded(&self, ticket: u64) -> bool {
        self.loaded.load(Ordering::Acquire) >= ticket
    }

    /// Waits until the load of `ticket` has succeeded, at most `timeout`;
    /// false if it has not by then.
    pub async fn wait_loaded(&self, ticket: u64, timeout: Duration) -> bool {
        let mut rx = self.done.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|_| self.loaded(ticket))).await;
        self.loaded(ticket)
    }

    /// The counter that moves whenever names enter or leave flux.
    pub fn flux_version(&self) -> u64 {
        self.flux_version.load(Ordering::Acquire)
    }

    /// Registers a session's entry (once), or notes that its names changed.
    pub fn flux_changed(&self, entry: &Arc<FluxEntry>) {
        let mut all = self.flux.lock().unwrap();
        if !all.iter().any(|e| Arc::ptr_eq(e, entry)) {
            all.push(entry.clone());
        }
        self.flux_version.fetch_add(1, Ordering::AcqRel);
    }

    /// A session's entry is gone (the session ended). If its DDL may have
    /// committed unseen (the client vanished during COMMIT), the reload is
    /// required.
    pub fn flux_gone(&self, entry: &Arc<FluxEntry>) {
        let st = std::mem::take(&mut *entry.state.lock().unwrap());
        self.flux.lock().unwrap().retain(|e| !Arc::ptr_eq(e, entry));
        // Open (the client may have vanished after sending COMMIT) or ended
        // but not re-read yet: the reload is required.
        if !st.names.is_empty() && (st.ended == 0 || !self.loaded(st.ended)) {
            self.require_reload();
        }
        self.flux_version.fetch_add(1, Ordering::AcqRel);
    }

    /// The DDL of a session's entry has ended its transaction; the reload
    /// asked for is `ticket`, and it is required first, so that no session
    /// stops counting the names before it must wait for the reload.
    pub fn flux_ended(&self, entry: &FluxEntry, ticket: u64) {
        self.require(ticket);
        let mut st = entry.state.lock().unwrap();
        if !st.names.is_empty() {
            st.ended = ticket;
        }
        drop(st);
        self.flux_version.fetch_add(1, Ordering::AcqRel);
    }

    /// The names that other sessions' open DDL has in flux (marked as not
    /// this session's own).
    pub fn others_in_flux(&self, own: Option<&Arc<FluxEntry>>, out: &mut Vec<FluxName>) {
        for e in self.flux.lock().unwrap().iter() {
            if own.is_some_and(|o| Arc::ptr_eq(o, e)) {
                continue;
            }
            let st: &EntryState = &e.state.lock().unwrap();
            if st.ended == 0 {
                out.extend(st.names.iter().cloned().map(|mut f| {
                    f.own = false;
                    f
                }));
            }
        }
    }
}

/// Loads the catalog when asked and every `refresh_secs`, over one
/// connection that also reads the change log's counter every `poll_ms`
/// (and listens for the notifications of earlier event triggers), until
/// the database's entry (and so the guard) is gone.
async fn reloader(
    db: Weak<DatabaseCatalog>,
    wake: Arc<Notify>,
    upstream: crate::upstream::Upstream,
    settings: CatalogSettings,
    timeout: Duration,
) {
    let period = Duration::from_secs(settings.refresh_secs.max(1));
    let poll_every = Duration::from_millis(settings.poll_ms.max(10));
    let mut client: Option<tokio_postgres::Client> = None;
    let mut failures: u32 = 0;
    let mut oid = 0u32;
    loop {
        let Some(this) = db.upgrade() else { return };
        let ticket = this.requested.load(Ordering::Acquire);
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            let weak = db.clone();
            // A notification, or the connection's end: what was missed
            // meanwhile must be read before anyone judges again.
            let on_notify = move || {
                if let Some(db) = weak.upgrade() {
                    db.require_reload();
                }
            };
            client = match super::connect(&upstream, &settings, &this.database, timeout, on_notify)
                .await
            {
                Ok(c) => Some(c),
                Err(e) => {
                    this.failed(&settings, e.to_string());
                    None
                }
            };
        }
        if let Some(c) = &client {
            match super::read_catalog(c, timeout).await {
                Ok(mut catalog) => {
                    // Only this task stores catalogs: the next version is
                    // the current one's successor.
                    catalog.version = this.version() + 1;
                    tracing::debug!(
                        database = ?this.database,
                        objects = catalog.len(),
                        ms = catalog.loaded_in.as_millis() as u64,
                        "catalog loaded"
                    );
                    if oid != 0 && catalog.database_oid != oid {
                        tracing::info!(database = ?this.database, "the database was dropped and made again: its new catalog is in force");
                    }
                    oid = catalog.database_oid;
                    let version = catalog.version;
                    this.current.store(Some(Arc::new(catalog)));
                    this.version.store(version, Ordering::Release);
                    this.loaded.fetch_max(ticket, Ordering::AcqRel);
                    if this.last_error.lock().unwrap().take().is_some() {
                        tracing::info!(database = ?this.database, "catalog readable again");
                    }
                }
                Err(e) => {
                    this.failed(&settings, e.to_string());
                    client = None;
                }
            }
        }
        this.done.send_replace(ticket);
        // A catalog that cannot be read is retried soon, then less and less
        // often (5 s, 10 s, 20 s, ... up to the period): a missing role
        // should not fill the server's log.
        let mut wait = if client.is_none() {
            failures += 1;
            period.min(Duration::from_secs(5 << failures.min(4).saturating_sub(1)))
        } else {
            failures = 0;
            period
        };
        // A reload asked for while this one ran goes again soon: after
        // MIN_GAP, so that a flood of notifications (anyone may NOTIFY the
        // channel) costs the server at most one catalog read per gap. So
        // does a required reload that failed (a concurrent DROP): sessions
        // are waiting for it.
        if this.requested.load(Ordering::Acquire) != ticket
            || this.outstanding().is_some() && failures < 20
        {
            drop(this);
            tokio::time::sleep(MIN_GAP).await;
            continue;
        }
        let seen = this
            .current()
            .filter(|_| client.is_some())
            .and_then(|c| c.changes);
        drop(this);
        // Only the Notify is held while waiting: a guard that is gone wakes
        // its reloaders (CatalogStore's Drop), and they end.
        loop {
            let step = match seen {
                Some(_) => poll_every.min(wait),
                None => wait,
            };
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = wake.notified() => break,
            }
            wait = wait.saturating_sub(step);
            if wait.is_zero() {
                break;
            }
            let (Some(seen), Some(c)) = (seen, &client) else {
                continue;
            };
            let read = tokio::time::timeout(timeout, c.query_one(super::CHANGES_SQL, &[])).await;
            let Some(this) = db.upgrade() else { return };
            match read {
                Ok(Ok(row)) if row.get::<_, i64>(0) == seen => continue,
                Ok(Ok(_)) => {}
                // The log is gone, or the connection: read everything again.
                _ => client = None,
            }
            this.require_reload();
            break;
        }
    }
}

impl DatabaseCatalog {
    /// A load failed: logged once per distinct error.
    fn failed(&self, settings: &CatalogSettings, msg: String) {
        let mut last = self.last_error.lock().unwrap();
        if last.as_deref() != Some(msg.as_str()) {
            tracing::warn!(
                database = ?self.database,
                user = ?settings.user,
                error = %msg,
                "cannot read the catalog: names are judged as written until it can (see [catalog] in policy.toml)"
            );
        }
        *last = Some(msg);
    }
}

impl Drop for CatalogStore {
    fn drop(&mut self) {
        for db in self.databases.lock().unwrap().values() {
            db.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::flux::{Change, FluxName};
    use crate::classify::RelationName;

    /// An entry with no reloader, whose loads up to 5 have landed.
    fn detached() -> DatabaseCatalog {
        let db = DatabaseCatalog::new("t");
        db.version.store(1, Ordering::Release);
        db.requested.store(5, Ordering::Release);
        db.done.send_replace(5);
        db.loaded.store(5, Ordering::Release);
        db.required.store(5, Ordering::Release);
        db
    }

    fn entry(ended: u64) -> Arc<FluxEntry> {
        let e = Arc::new(FluxEntry::default());
        let mut st = e.state.lock().unwrap();
        st.names.push(FluxName {
            name: RelationName::new(None, "v"),
            change: Change::Opaque,
            operation: "CREATE VIEW".into(),
            parents: vec![],
            own: true,
        });
        st.ended = ended;
        drop(st);
        e
    }

    /// A session that vanished with its DDL's transaction open (perhaps
    /// after sending COMMIT) leaves a required reload behind; one whose DDL
    /// ended and was re-read does not.
    #[test]
    fn a_vanished_session_with_open_ddl_requires_a_reload() {
        let db = detached();
        let open = entry(0);
        db.flux_changed(&open);
        assert!(db.outstanding().is_none());
        db.flux_gone(&open);
        assert!(db.outstanding().is_some(), "no reload required");

        let db = detached();
        let done = entry(3);
        db.flux_changed(&done);
        db.flux_gone(&done);
        assert!(db.outstanding().is_none());
    }
}
