//! Keeps each fronted database's catalog current: loaded when the first
//! session of that database starts, reloaded periodically, at once after DDL
//! that passed through the guard has committed, and on the console's
//! `RELOAD CATALOG`.
//!
//! With the event trigger that `zoneguard catalog-trigger` prints installed
//! in the database, DDL from anywhere notifies the guard's connection, and
//! the catalog is reloaded at once.
//!
//! Staleness: between a change made outside this guard (another guard, a
//! direct connection, a DBA) and the next reload, the catalog may not know a
//! new object, which is then judged by its name as written (conservatively),
//! or may still hold a dropped one. DDL through this guard triggers a reload
//! when its transaction ends, and the session that ran it waits for that
//! reload before its next statement is judged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{watch, Notify};

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
        let db = Arc::new(DatabaseCatalog {
            database: database.to_owned(),
            current: ArcSwapOption::empty(),
            version: AtomicU64::new(0),
            requested: AtomicU64::new(1),
            done: watch::channel(0).0,
            wake: Arc::new(Notify::new()),
            last_error: Mutex::new(None),
        });
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
}

/// Loads the catalog when asked and every `refresh_secs`, over one
/// connection that also listens for the event trigger's notifications,
/// until the database's entry (and so the guard) is gone.
async fn reloader(
    db: Weak<DatabaseCatalog>,
    wake: Arc<Notify>,
    upstream: crate::upstream::Upstream,
    settings: CatalogSettings,
    timeout: Duration,
) {
    let period = Duration::from_secs(settings.refresh_secs.max(1));
    let mut client: Option<tokio_postgres::Client> = None;
    let mut failures: u32 = 0;
    loop {
        let Some(this) = db.upgrade() else { return };
        let ticket = this.requested.load(Ordering::Acquire);
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            let weak = db.clone();
            let on_notify = move || {
                if let Some(db) = weak.upgrade() {
                    db.request_reload();
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
                    let version = catalog.version;
                    this.current.store(Some(Arc::new(catalog)));
                    this.version.store(version, Ordering::Release);
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
        let wait = if client.is_none() {
            failures += 1;
            period.min(Duration::from_secs(5 << failures.min(4).saturating_sub(1)))
        } else {
            failures = 0;
            period
        };
        // A reload asked for while this one ran goes again soon: after
        // MIN_GAP, so that a flood of notifications (anyone may NOTIFY the
        // channel) costs the server at most one catalog read per gap.
        if this.requested.load(Ordering::Acquire) != ticket {
            drop(this);
            tokio::time::sleep(MIN_GAP).await;
            continue;
        }
        drop(this);
        // Only the Notify is held while waiting: a guard that is gone wakes
        // its reloaders (CatalogStore's Drop), and they end.
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
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
