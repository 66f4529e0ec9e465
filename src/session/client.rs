//! The client-to-server half of a session: frames the client's messages,
//! judges Query, Parse, Bind and FunctionCall, substitutes rejections, keeps
//! the server's zoneguard.* variables current, records in the session state
//! what it sent, and holds a text whose reading depends on the session's
//! settings until the server has confirmed them (`classify::reading`, R2).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};

use super::state::{PendingOp, Prepared, SessionState};
use super::ClientEnd;
use crate::audit::{self, AuditRecord, SessionInfo};
use crate::catalog::flux::{self, FluxEntry, FluxName};
use crate::classify::{reading, CursorOp, Deallocate, Special, StatementInfo};
use crate::guard::{Guard, Runtime};
use crate::policy::{Denial, Facts, Verdict};
use crate::protocol::{self, ProtocolError, Severity};

/// Largest message accepted from a client before the server has
/// authenticated it: PostgreSQL's own limit on an authentication token
/// (PG_MAX_AUTH_TOKEN_LENGTH). Startup packets are capped at 10,000 bytes
/// before this half starts.
pub(crate) const MAX_PRE_AUTH_MESSAGE: usize = 65_535;

pub(crate) struct ClientSide {
    /// TLS between the client and the guard and between the guard and the
    /// server: SCRAM's channel-binding flag then decides the login.
    pub(crate) tls_both_sides: bool,
    guard: Arc<Guard>,
    info: SessionInfo,
    state: Arc<Mutex<SessionState>>,
    /// The policy generation whose switch positions the server session's
    /// `zoneguard.<switch>` variables hold (0: not set yet, or wiped).
    switches_applied: u64,
    /// Extended-protocol messages were sent since the last Sync: the server
    /// is inside a batch (perhaps skipping to Sync after an error), so the
    /// guard must not slip a Query of its own in.
    unsynced: bool,
    /// An Execute was sent since the last Sync or Query: it may have changed
    /// a setting the reading of SQL depends on, and the server will not say
    /// so before the batch ends (R2: no waiting, so ambiguous texts are
    /// rejected until then).
    executed_in_batch: bool,
    /// A Parse or Bind of the current batch was replaced by a rejection: the
    /// server skips everything up to the Sync, so a Bind there is not judged
    /// (no second rejection, no audit record for what never runs).
    rejected_in_batch: bool,
    /// Syncs sent since the last Execute or Query. If that started a COPY
    /// FROM STDIN, the server ignores them (they arrive in copy-in mode),
    /// which the client's CopyDone or CopyFail reveals.
    syncs_since_execute: usize,
    /// The server has authenticated the client (messages may then be up to
    /// `max_message_bytes`).
    authenticated: bool,
    /// Notified by the server half on every ReadyForQuery.
    ready: Arc<Notify>,
    /// Classifications (shared with the cache) this session recently saw
    /// allowed, with the epoch (policy generation and catalog version) they
    /// were judged under. The verdict is a pure function of the
    /// classification, the session's role, the policy (switches included)
    /// and the catalog of that epoch, except for
    /// `EXECUTE name`, which depends on the session's prepared statements and
    /// is never remembered here. A hit skips judging, not classifying.
    allowed_memo: [Option<(Arc<Vec<StatementInfo>>, u64)>; MEMO],
    /// The catalog the session's statements are judged against (refreshed
    /// before each judgement; see `crate::catalog`).
    catalog: Option<Arc<crate::catalog::Catalog>>,
    /// The first catalog load was waited for.
    catalog_waited: bool,
    /// The database's catalog was asked for (after authentication).
    catalog_asked: bool,
    /// Its keeper (None: catalogs are off, or not kept for this database).
    db: Option<Arc<crate::catalog::DatabaseCatalog>>,
    /// The search_path the current message's first statement is judged
    /// under (see `refresh_catalog`).
    search_path: Option<Arc<Vec<String>>>,
    /// Denials only recorded (shadow mode) while judging the current
    /// message: audited as `would_reject` before it is sent on.
    shadowed: Vec<Denial>,
    /// What was just judged allowed runs DDL: its unit is marked (see
    /// `SessionState::mark_catalog_change`) once it is recorded.
    ran_ddl: bool,
    /// See `epoch`.
    epoch: u64,
    epoch_inputs: (u64, u64, Option<Arc<Vec<String>>>),
    memo_next: usize,
    /// Portals bound to a statement that prepares or deallocates (SQL
    /// PREPARE sent through the extended protocol): what their Execute does.
    portal_effects: HashMap<Vec<u8>, Vec<Effect>>,
    /// This session's names in flux, shared with the database's other
    /// sessions (created at its first DDL; see `catalog::flux`).
    flux_entry: Option<Arc<FluxEntry>>,
    /// The names in flux the session's statements are judged under: its
    /// own and other sessions' open DDL's.
    flux_view: Vec<FluxName>,
    /// The database's flux counter `flux_view` was built at.
    flux_seen: u64,
    /// Moves whenever `flux_view` changes (part of the epoch).
    flux_gen: u64,
    /// Portals bound and not yet run to completion, with the policy
    /// generation (switch positions) they were judged under: an Execute
    /// after a flip judges them again.
    bound: Vec<BoundPortal>,
    /// A portal was bound since the last Sync (so it is alive although the
    /// server owes nothing).
    bound_in_batch: bool,
    /// A forgotten entry of `bound`, kept for the next Bind (no allocation
    /// per Bind).
    bound_spare: Option<BoundPortal>,
    /// SQL cursors declared through the guard: the declaring statement and
    /// the `Guard::generation` it was last judged under. A FETCH or MOVE
    /// after a flip judges the cursor's query again (a `FOR UPDATE` cursor
    /// locks the rows it moves over).
    cursors: HashMap<String, (u64, StatementInfo)>,
    /// The server's major version, as it reported it.
    server_major: u32,
    /// A required catalog reload did not land in time: statements are
    /// refused with this until it does (never judged on the old catalog).
    catalog_refusal: Option<Denial>,
}

impl Drop for ClientSide {
    fn drop(&mut self) {
        if let (Some(db), Some(e)) = (&self.db, &self.flux_entry) {
            db.flux_gone(e);
        }
    }
}

/// Most SQL cursors a session's map holds.
const MAX_CURSORS: usize = 256;

/// How many allowed classifications a session remembers.
const MEMO: usize = 8;

/// SQL texts longer than this are classified off the async threads (on the
/// blocking pool, one at a time), so a multi-megabyte statement neither
/// stalls the other sessions nor, with several at once, multiplies the
/// memory its syntax tree takes.
const OFFLOAD_BYTES: usize = 256 << 10;

/// One big classification at a time, guard-wide.
static BIG_CLASSIFICATIONS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// A change to the session's prepared statements that a statement makes
/// when it runs, recorded as pending with it.
#[derive(Debug, Clone)]
struct Effect {
    op: PendingOp,
    /// For a PREPARE: the version it creates.
    version: Option<Arc<Prepared>>,
}

/// A portal the guard let the server bind.
#[derive(Debug)]
struct BoundPortal {
    portal: Vec<u8>,
    statement: Vec<u8>,
    /// `Guard::generation` when it was judged.
    generation: u64,
    /// The versions it was bound to, kept once the statement's name was
    /// parsed again while the portal lived (else the name's versions).
    versions: Option<Vec<Arc<Prepared>>>,
}

/// What judging a text gave.
struct Judged {
    statements: Arc<Vec<StatementInfo>>,
    generation: u64,
    effects: Vec<Effect>,
}

impl ClientSide {
    pub(crate) fn new(
        guard: Arc<Guard>,
        info: SessionInfo,
        state: Arc<Mutex<SessionState>>,
        ready: Arc<Notify>,
    ) -> Self {
        ClientSide {
            guard,
            info,
            state,
            switches_applied: 0,
            unsynced: false,
            executed_in_batch: false,
            rejected_in_batch: false,
            syncs_since_execute: 0,
            tls_both_sides: false,
            authenticated: false,
            ready,
            allowed_memo: Default::default(),
            catalog: None,
            catalog_waited: false,
            catalog_asked: false,
            db: None,
            search_path: None,
            ran_ddl: false,
            shadowed: Vec::new(),
            epoch: 1,
            epoch_inputs: (0, 0, None),
            memo_next: 0,
            portal_effects: HashMap::new(),
            flux_entry: None,
            flux_view: Vec::new(),
            flux_seen: 0,
            flux_gen: 0,
            catalog_refusal: None,
            server_major: 0,
            bound: Vec::new(),
            bound_in_batch: false,
            bound_spare: None,
            cursors: HashMap::new(),
        }
    }

    /// When the switches changed since the server session's variables were
    /// set, and the session is idle with nothing in flight, returns a Query
    /// that sets them (its replies are swallowed). `SHOW zoneguard.<switch>`
    /// then answers in both protocols, prepared or not, without touching a
    /// table. Inside a transaction the value read stays as it was when the
    /// transaction began; enforcement never waits for this.
    fn refresh_switch_variables(&mut self) -> Option<Bytes> {
        let current = self.guard.generation.load(Ordering::Acquire);
        if current == self.switches_applied {
            return None;
        }
        let runtime = self.guard.runtime.load();
        if runtime.generation == self.switches_applied {
            return None;
        }
        let mut r = self.state.lock().unwrap();
        if self.unsynced || !r.idle() || r.status != b'I' {
            return None;
        }
        let mut sql = String::new();
        for (name, on) in &runtime.switches {
            // Switch names are validated as [a-z0-9_]+.
            sql.push_str(&format!(
                "SET zoneguard.{name} = '{}';",
                if *on { "on" } else { "off" }
            ));
        }
        self.switches_applied = runtime.generation;
        if sql.is_empty() {
            return None;
        }
        r.expect_swallowed_ready();
        Some(protocol::query_message(&sql))
    }

    /// Ends the session on a protocol violation: what was judged before it is
    /// sent on, the error goes to the other half to deliver, the server side
    /// is closed.
    async fn violation<W: AsyncWrite + Unpin>(
        &self,
        e: ProtocolError,
        uw: &mut W,
        out: &[u8],
        fatal: oneshot::Sender<Bytes>,
    ) -> ClientEnd {
        tracing::info!(session = self.info.id, error = %e, "protocol violation from client");
        let _ = uw.write_all(out).await;
        let code = match e {
            ProtocolError::TooLarge { .. } => "54000",
            _ => "08P01",
        };
        let msg = protocol::error_response(
            Severity::Fatal,
            code,
            &format!("zoneguard: {e}"),
            Some("The connection is closed; nothing after the last complete message was run."),
        );
        let _ = fatal.send(msg);
        let _ = uw.shutdown().await;
        ClientEnd::Fatal
    }

    /// The client's SCRAM login says "I can bind, you can't" (gs2 flag
    /// `y`): over a TLS connection the server takes that for a downgrade
    /// attack and fails the login with a cryptic error. Channel binding
    /// cannot cross a proxy that terminates TLS, so say what to do instead.
    async fn refuse_channel_binding<W: AsyncWrite + Unpin>(
        &self,
        uw: &mut W,
        out: &[u8],
        fatal: oneshot::Sender<Bytes>,
    ) -> ClientEnd {
        tracing::info!(
            session = self.info.id,
            "SCRAM login expecting channel binding refused"
        );
        let _ = uw.write_all(out).await;
        let msg = protocol::error_response(
            Severity::Fatal,
            "28000",
            "SCRAM channel binding cannot pass through zoneguard: it terminates TLS, and the database server, also reached over TLS, would fail this login",
            Some("Add channel_binding=disable to the client's connection string (the TLS to the guard still protects the password exchange), or use md5/trust for this role."),
        );
        let _ = fatal.send(msg);
        let _ = uw.shutdown().await;
        ClientEnd::Fatal
    }

    pub(crate) async fn run<R, W>(
        &mut self,
        mut cr: R,
        mut uw: W,
        fatal: oneshot::Sender<Bytes>,
    ) -> ClientEnd
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let mut out = BytesMut::new();
        loop {
            match cr.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    // The client vanished: closing our side makes the server
                    // end the session and roll back any open transaction.
                    let _ = uw.shutdown().await;
                    return ClientEnd::Gone;
                }
                Ok(_) => {}
            }
            if let Some(set) = self.refresh_switch_variables() {
                out.extend_from_slice(&set);
            }
            loop {
                if !self.authenticated {
                    self.authenticated = self.state.lock().unwrap().authenticated;
                }
                // Until the server has authenticated the client, nobody
                // unknown makes the guard hold more than an auth token.
                let max = if self.authenticated {
                    self.guard.settings.proxy.max_message_bytes
                } else {
                    MAX_PRE_AUTH_MESSAGE
                };
                let frame = match protocol::next_frame(&mut buf, max) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return self.violation(e, &mut uw, &out, fatal).await,
                };
                match frame.tag() {
                    b'P' | b'B' | b'D' | b'C' | b'H' => self.unsynced = true,
                    b'E' | b'Q' => self.syncs_since_execute = 0,
                    b'S' => {
                        self.unsynced = false;
                        self.syncs_since_execute += 1;
                    }
                    b'c' | b'f' => {
                        let ignored = std::mem::take(&mut self.syncs_since_execute);
                        if ignored > 0 {
                            // The batch that ran the COPY goes on: its Sync
                            // is still to come (R2: no waiting inside it).
                            self.unsynced = true;
                            self.executed_in_batch = true;
                        }
                        self.state.lock().unwrap().forget_ready(ignored);
                    }
                    _ => {}
                }
                // R2: a text whose reading depends on the session's settings
                // is judged once the server owes nothing, so every change
                // it made has been reported (and refused, if unreadable).
                if !self.executed_in_batch
                    && sql_of(&frame).is_some_and(reading::depends_on_settings)
                    && !self.state.lock().unwrap().idle()
                {
                    if uw.write_all(&out).await.is_err() {
                        return ClientEnd::Gone;
                    }
                    out.clear();
                    self.wait_until_answered().await;
                }
                if !self.authenticated
                    && self.tls_both_sides
                    && frame.tag() == b'p'
                    && scram_binding_expected(&frame.raw[5..])
                {
                    return self.refuse_channel_binding(&mut uw, &out, fatal).await;
                }
                match self.judge_frame(&frame).await {
                    Ok(Some(replacement)) => out.extend_from_slice(&replacement),
                    Ok(None) => out.extend_from_slice(&frame.raw),
                    Err(e) => return self.violation(e, &mut uw, &out, fatal).await,
                }
                match frame.tag() {
                    b'E' => {
                        self.unsynced = true;
                        self.executed_in_batch = true;
                    }
                    b'S' => {
                        self.executed_in_batch = false;
                        self.rejected_in_batch = false;
                        self.bound_in_batch = false;
                    }
                    b'Q' => self.executed_in_batch = false,
                    b'X' => {
                        let _ = uw.write_all(&out).await;
                        let _ = uw.shutdown().await;
                        return ClientEnd::Gone;
                    }
                    _ => {}
                }
            }
            if !out.is_empty() {
                if uw.write_all(&out).await.is_err() {
                    return ClientEnd::Gone;
                }
                out.clear();
            }
        }
    }

    /// What a verdict depends on besides the statement's text: the policy
    /// generation, the catalog version and the search_path it was judged
    /// under. A session counter that moves whenever any of them changes, so
    /// a verdict remembered under one is never reused under another.
    fn epoch(&mut self, runtime: &Runtime) -> u64 {
        // The names in flux count as part of the catalog's version.
        let version = self.catalog.as_ref().map_or(0, |c| c.version) ^ (self.flux_gen << 40);
        let (generation, catalog, path) = &self.epoch_inputs;
        let same_path = match (path, &self.search_path) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if *generation != runtime.generation || *catalog != version || !same_path {
            self.epoch_inputs = (runtime.generation, version, self.search_path.clone());
            self.epoch += 1;
        }
        self.epoch
    }

    /// Brings the session's view of the catalog up to date before a
    /// judgement: the first load of the database's catalog, and the reload
    /// after this session's own DDL, are waited for (at most the connect
    /// timeout); later reloads are picked up as they land.
    async fn refresh_catalog(&mut self) {
        // One lock, and no reference-count traffic when nothing changed:
        // this runs for every Query, Parse and Bind.
        let ticket = {
            let mut st = self.state.lock().unwrap();
            // Only a client the server has authenticated makes the guard
            // keep a database's catalog (and open a connection for it).
            if !self.catalog_asked && st.authenticated {
                self.catalog_asked = true;
                self.server_major = st.server_major;
                st.catalog = self.guard.catalogs.database(&self.info.database);
                self.db = st.catalog.clone();
            }
            // The reported search_path holds for the next statement only if
            // nothing that may change it is still running: the server owes
            // no reply but the current batch's, and that batch has executed
            // nothing yet (names resolve when a statement is parsed and
            // again when a prepared one runs: both happen after what came
            // before).
            let settled = st.idle() && !self.executed_in_batch;
            let path = if settled {
                st.search_path.as_ref()
            } else {
                None
            };
            let same = match (path, &self.search_path) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            if !same {
                self.search_path = path.cloned();
            }
            st.catalog_ticket.take()
        };
        let Some(db) = &self.db else { return };
        if !self.catalog_waited || ticket.is_some() {
            let db = db.clone();
            let timeout = std::time::Duration::from_secs(
                self.guard.settings.proxy.connect_timeout_secs.max(1),
            );
            if !self.catalog_waited {
                self.catalog_waited = true;
                db.wait_first(timeout).await;
            }
            if let Some(t) = ticket {
                db.wait_for(t, timeout).await;
            }
        }
        let db = self.db.clone().expect("set above");
        // No lag: a reload required by DDL that has ended (here or in any
        // session), by the change log or by a lost connection is waited
        // for; if it does not land, statements are refused rather than
        // judged on the old catalog. (Before any catalog was ever read,
        // names are judged as written, as documented.)
        self.catalog_refusal = None;
        if let Some(t) = db.outstanding() {
            let timeout = std::time::Duration::from_secs(
                self.guard.settings.proxy.connect_timeout_secs.max(1),
            );
            if db.version() > 0 && !db.wait_loaded(t, timeout).await {
                self.catalog_refusal = Some(catalog_unreadable(&db));
            }
        }
        if db.version() != self.catalog.as_ref().map_or(0, |c| c.version) {
            self.catalog = db.current();
        }
        // This session's names leave flux once the reload that followed the
        // end of their DDL's transaction has landed.
        if let Some(e) = &self.flux_entry {
            let mut st = e.state.lock().unwrap();
            if st.ended != 0 && db.loaded(st.ended) {
                st.names.clear();
                st.ended = 0;
                drop(st);
                db.flux_changed(e);
            }
        }
        let v = db.flux_version();
        if v != self.flux_seen {
            self.flux_seen = v;
            self.flux_view.clear();
            if let Some(e) = &self.flux_entry {
                self.flux_view
                    .extend(e.state.lock().unwrap().names.iter().cloned());
            }
            db.others_in_flux(self.flux_entry.as_ref(), &mut self.flux_view);
            self.flux_gen += 1;
        }
    }

    /// Puts names that an allowed statement's DDL changes in flux, for this
    /// session at once and for every other session of the database.
    fn add_flux(&mut self, names: Vec<FluxName>) {
        let Some(db) = &self.db else { return };
        if names.is_empty() {
            return;
        }
        let entry = match &self.flux_entry {
            Some(e) => e.clone(),
            None => {
                let e = Arc::new(FluxEntry::default());
                self.state.lock().unwrap().flux_entry = Some(e.clone());
                self.flux_entry = Some(e.clone());
                e
            }
        };
        {
            let mut st = entry.state.lock().unwrap();
            st.ended = 0;
            for n in &names {
                if !st.names.contains(n) {
                    st.names.push(n.clone());
                }
            }
        }
        db.flux_changed(&entry);
        self.flux_view.extend(names);
        self.flux_gen += 1;
    }

    /// Returns the bytes to send instead of `frame`, if it is rejected, and
    /// records in the session state what the server is asked to do.
    async fn judge_frame(
        &mut self,
        frame: &protocol::Frame,
    ) -> Result<Option<Bytes>, ProtocolError> {
        if matches!(frame.tag(), b'Q' | b'P' | b'B') {
            self.refresh_catalog().await;
            self.ran_ddl = false;
        }
        let out = self.judge_message(frame).await;
        if std::mem::take(&mut self.ran_ddl) && frame.tag() != b'Q' {
            self.state.lock().unwrap().mark_catalog_change();
        }
        if !self.shadowed.is_empty() {
            let (protocol, sql) = match frame.tag() {
                b'Q' => ("simple", sql_of(frame).map(protocol::sql_text)),
                b'P' => ("extended", sql_of(frame).map(protocol::sql_text)),
                _ => ("extended", None),
            };
            let sql = sql.unwrap_or_else(|| "(a prepared statement, at Bind)".into());
            for d in std::mem::take(&mut self.shadowed) {
                self.audit_event(&d, "would_reject", protocol, &sql).await;
            }
        }
        out
    }

    async fn judge_message(
        &mut self,
        frame: &protocol::Frame,
    ) -> Result<Option<Bytes>, ProtocolError> {
        match frame.tag() {
            b'Q' => {
                let text = protocol::query_text(frame.body())?;
                let classified = classify_big(text, &self.guard).await;
                let out = match self.judge_text(text, classified) {
                    Ok(judged) => {
                        self.record(judged.effects);
                        None
                    }
                    Err(denial) => {
                        let sql = protocol::sql_text(text);
                        let replacement = self.reject(*denial, "simple", &sql).await;
                        Some(protocol::query_message(&replacement))
                    }
                };
                let mut st = self.state.lock().unwrap();
                if std::mem::take(&mut self.ran_ddl) {
                    st.mark_catalog_change();
                }
                st.expect_ready();
                Ok(out)
            }
            b'P' => {
                let msg = protocol::parse_message(frame.body())?;
                if !self.bound.is_empty() {
                    let st = self.state.lock().unwrap();
                    for p in &mut self.bound {
                        if p.versions.is_none() && p.statement == msg.name {
                            p.versions = Some(st.candidates(msg.name));
                        }
                    }
                }
                let classified = classify_big(msg.query, &self.guard).await;
                match self.judge_text(msg.query, classified) {
                    Ok(judged) => {
                        // What a PREPARE or DEALLOCATE text does happens at
                        // its Execute (see Bind), not here.
                        self.state.lock().unwrap().add_parsed(
                            msg.name,
                            judged.statements,
                            judged.generation,
                        );
                        Ok(None)
                    }
                    Err(denial) => {
                        // Nothing is recorded: the server fails the
                        // replacement, so the name keeps what it had.
                        let sql = protocol::sql_text(msg.query);
                        let replacement = self.reject(*denial, "extended", &sql).await;
                        self.rejected_in_batch = true;
                        Ok(Some(protocol::parse_message_bytes(msg.name, &replacement)))
                    }
                }
            }
            b'B' => {
                let (portal, name) = protocol::bind_names(frame.body())?;
                if self.rejected_in_batch {
                    // Skipped by the server (it is failing to the Sync).
                    return Ok(None);
                }
                match self.judge_bind(portal, name) {
                    Ok(()) => {
                        self.bind_recorded(portal, name);
                        Ok(None)
                    }
                    Err(rejected) => Ok(Some(self.reject_in_batch(*rejected).await)),
                }
            }
            b'E' => {
                let mut b = frame.body();
                let portal =
                    protocol::take_cstr(&mut b).ok_or(ProtocolError::Malformed("Execute"))?;
                let all_rows = b.get(..4).is_none_or(|n| n == [0, 0, 0, 0]);
                if !self.rejected_in_batch {
                    if let Err(rejected) = self.judge_execute(portal, all_rows) {
                        return Ok(Some(self.reject_in_batch(*rejected).await));
                    }
                }
                if !self.portal_effects.is_empty() {
                    if let Some(effects) = self.portal_effects.remove(portal) {
                        self.record(effects);
                    }
                }
                Ok(None)
            }
            b'C' => {
                let body = frame.body();
                let mut rest = body.get(1..).unwrap_or_default();
                let name =
                    protocol::take_cstr(&mut rest).ok_or(ProtocolError::Malformed("Close"))?;
                let op = match body[0] {
                    b'S' => PendingOp::CloseStatement(name.to_vec()),
                    _ => {
                        self.portal_effects.remove(name);
                        self.bound.retain(|p| p.portal != name);
                        PendingOp::ClosePortal
                    }
                };
                self.state.lock().unwrap().push_op(op);
                Ok(None)
            }
            b'F' => {
                let verdict = self
                    .guard
                    .runtime
                    .load()
                    .policy
                    .judge_function_call(&self.info.user);
                let out = match verdict {
                    Verdict::Allow => None,
                    Verdict::Deny(d) if d.shadow => {
                        self.guard.stats.count_shadowed(&d, &self.info.user);
                        self.audit_event(&d, "would_reject", "function_call", "")
                            .await;
                        None
                    }
                    Verdict::Deny(d) => {
                        let replacement = self.reject(*d, "function_call", "").await;
                        Some(protocol::query_message(&replacement))
                    }
                };
                self.state.lock().unwrap().expect_ready();
                Ok(out)
            }
            b'S' => {
                self.state.lock().unwrap().expect_ready();
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Records what an allowed statement will do to the prepared statements.
    fn record(&self, effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        let mut st = self.state.lock().unwrap();
        for e in effects {
            if let (PendingOp::Prepare(name), Some(v)) = (&e.op, e.version) {
                st.add_pending(name, v);
            }
            st.push_op(e.op);
        }
    }

    /// Judges a Bind by every version its statement may stand for on the
    /// server; a name the guard cannot account for is refused. On a
    /// rejection, returns the denial and the SQL to audit.
    fn judge_bind(&mut self, portal: &[u8], name: &[u8]) -> Result<(), Box<(Denial, String)>> {
        if let Some(d) = &self.catalog_refusal {
            return Err(Box::new((d.clone(), String::new())));
        }
        let runtime = self.guard.runtime.load();
        let epoch = self.epoch(&runtime);
        let candidates = {
            let st = self.state.lock().unwrap();
            if st.settled_for(name, epoch) {
                if !self.portal_effects.is_empty() {
                    self.portal_effects.remove(portal);
                }
                return Ok(());
            }
            st.candidates(name)
        };
        let shown = String::from_utf8_lossy(name).into_owned();
        if candidates.is_empty() {
            return Err(Box::new((unknown_statement(&shown), String::new())));
        }
        for c in &candidates {
            if c.judged.load(Ordering::Relaxed) == epoch {
                // DDL runs again at each Execute: its names go in flux and
                // the catalog is re-read after its transaction.
                if c.changes_catalog && self.db.is_some() {
                    self.ran_ddl = true;
                    self.add_flux(c.statements.iter().flat_map(flux::changes).collect());
                }
                continue;
            }
            match self.judge_statements(&c.statements, &runtime) {
                Ok(_) => c.judged.store(self.epoch(&runtime), Ordering::Relaxed),
                Err(d) => return Err(Box::new((*d, describe(&c.statements)))),
            }
        }
        if !self.portal_effects.is_empty() {
            self.portal_effects.remove(portal);
        }
        let effects: Vec<Effect> = candidates
            .iter()
            .flat_map(|c| effects_of(&c.statements, c.judged.load(Ordering::Relaxed)))
            .collect();
        if !effects.is_empty() {
            if candidates.len() > 1 {
                return Err(Box::new((
                    ambiguous_statement(&shown),
                    describe(&candidates[0].statements),
                )));
            }
            self.portal_effects.insert(portal.to_vec(), effects);
        }
        Ok(())
    }

    /// Remembers a portal the server is about to bind. Outside a transaction
    /// block, with nothing owed, no portal of earlier batches is alive.
    fn bind_recorded(&mut self, portal: &[u8], statement: &[u8]) {
        let generation = self.guard.generation.load(Ordering::Acquire);
        if !self.bound.is_empty() {
            let st = self.state.lock().unwrap();
            if st.idle() && st.status == b'I' && !self.bound_in_batch {
                drop(st);
                while let Some(p) = self.bound.pop() {
                    self.bound_spare = Some(p);
                }
            }
        }
        self.bound_in_batch = true;
        match self.bound.iter_mut().find(|p| p.portal == portal) {
            Some(p) => {
                p.statement.clear();
                p.statement.extend_from_slice(statement);
                p.generation = generation;
                p.versions = None;
            }
            None => {
                let mut p = self.bound_spare.take().unwrap_or(BoundPortal {
                    portal: Vec::new(),
                    statement: Vec::new(),
                    generation,
                    versions: None,
                });
                p.portal.clear();
                p.portal.extend_from_slice(portal);
                p.statement.clear();
                p.statement.extend_from_slice(statement);
                p.generation = generation;
                p.versions = None;
                self.bound.push(p);
            }
        }
    }

    /// An Execute runs its portal under the switch positions in force now
    /// (a flip applies to every session's next statement, a portal bound
    /// before it included): a portal judged under other positions is judged
    /// again, and refused if its verdict changed. A portal run to completion
    /// is forgotten; a suspended one (row limit) is judged again on resume.
    fn judge_execute(
        &mut self,
        portal: &[u8],
        all_rows: bool,
    ) -> Result<(), Box<(Denial, String)>> {
        let Some(i) = self.bound.iter().position(|p| p.portal == portal) else {
            return Ok(());
        };
        let generation = self.guard.generation.load(Ordering::Acquire);
        if self.bound[i].generation != generation {
            let versions = match &self.bound[i].versions {
                Some(v) => v.clone(),
                None => self
                    .state
                    .lock()
                    .unwrap()
                    .candidates(&self.bound[i].statement),
            };
            let runtime = self.guard.runtime.load();
            for v in &versions {
                if let Err(d) = self.judge_statements(&v.statements, &runtime) {
                    self.bound.swap_remove(i);
                    return Err(Box::new((*d, describe(&v.statements))));
                }
            }
            self.bound[i].generation = generation;
        }
        if all_rows {
            self.bound_spare = Some(self.bound.swap_remove(i));
        }
        Ok(())
    }

    /// Waits until the server owes no ReadyForQuery.
    async fn wait_until_answered(&self) {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state.lock().unwrap().idle() {
                return;
            }
            notified.await;
        }
    }

    /// Reads, classifies and judges the SQL text of a Query or Parse (and
    /// times it, for the metrics' histogram).
    fn judge_text(
        &mut self,
        text: &[u8],
        classified: Option<Arc<Vec<StatementInfo>>>,
    ) -> Result<Judged, Box<Denial>> {
        let started = std::time::Instant::now();
        let judged = self.judge_text_untimed(text, classified);
        self.guard
            .judge_seconds
            .observe(started.elapsed().as_secs_f64());
        judged
    }

    fn judge_text_untimed(
        &mut self,
        text: &[u8],
        classified: Option<Arc<Vec<StatementInfo>>>,
    ) -> Result<Judged, Box<Denial>> {
        let Ok(sql) = std::str::from_utf8(text) else {
            return Err(Box::new(invalid_utf8()));
        };
        let runtime = self.guard.runtime.load();
        if self.executed_in_batch && reading::depends_on_settings(text) {
            let ascii_names = runtime.policy.ascii_names();
            if let Some(why) = reading::ambiguous_mid_batch(text, ascii_names) {
                return Err(Box::new(ambiguous_mid_batch(why)));
            }
        }
        let statements = match classified {
            Some(s) => s,
            None => self.guard.cache.classify(sql),
        };
        let effects = self.judge_statements(&statements, &runtime)?;
        for st in statements.iter() {
            if st.command == "DISCARD" || st.command == "RESET" {
                // DISCARD ALL / RESET ALL wipe the zoneguard.* variables.
                self.switches_applied = 0;
            }
        }
        Ok(Judged {
            statements,
            generation: self.epoch(&runtime),
            effects,
        })
    }

    /// Judges every statement of a classification in order (a PREPARE
    /// earlier in the text counts for an EXECUTE later in it); the first
    /// denial wins. Returns what the statements do to prepared statements.
    fn judge_statements(
        &mut self,
        statements: &Arc<Vec<StatementInfo>>,
        runtime: &Runtime,
    ) -> Result<Vec<Effect>, Box<Denial>> {
        if let Some(d) = &self.catalog_refusal {
            return Err(Box::new(d.clone()));
        }
        if !self.cursors.is_empty() {
            self.judge_fetches(statements, runtime)?;
        }
        let epoch = self.epoch(runtime);
        let stats = &self.guard.stats;
        let n = statements.len().max(1) as u64;
        stats.statements.fetch_add(n, Ordering::Relaxed);
        let remembered = self
            .allowed_memo
            .iter()
            .flatten()
            .any(|(seen, judged)| *judged == epoch && Arc::ptr_eq(seen, statements));
        let effects = effects_of(statements, epoch);
        let mut shadowed: Vec<Denial> = Vec::new();
        // What the statements' DDL puts in flux: a later statement of the
        // same text is judged under it already (it runs after the DDL).
        let mut added: Vec<FluxName> = Vec::new();
        let mut view: Option<Vec<FluxName>> = None;
        if !remembered {
            let mut executes = false;
            let mut earlier: Vec<(&str, &StatementInfo)> = Vec::new();
            let mut search_path = self.search_path.as_deref().map(Vec::as_slice);
            for st in statements.iter() {
                let facts = Facts {
                    role: &self.info.user,
                    switches: &runtime.switches,
                    catalog: self.catalog.as_deref(),
                    search_path,
                    flux: view.as_deref().unwrap_or(&self.flux_view),
                };
                executes |= st
                    .specials
                    .iter()
                    .any(|sp| matches!(sp, Special::ExecutePrepared { .. }));
                let state = &self.state;
                let lookup = |name: &str| -> Vec<StatementInfo> {
                    let mut bodies: Vec<StatementInfo> = earlier
                        .iter()
                        .filter(|(n, _)| *n == name)
                        .map(|(_, b)| (*b).clone())
                        .collect();
                    for p in state.lock().unwrap().candidates(name.as_bytes()) {
                        bodies.extend(p.statements.iter().cloned());
                    }
                    bodies
                };
                let verdict = match newer_grammar(st, self.server_major) {
                    Some(d) => Verdict::Deny(Box::new(d)),
                    None => runtime.policy.judge(st, facts, &lookup),
                };
                match verdict {
                    Verdict::Deny(d) if d.shadow => {
                        // Shadow: it runs; the record says it would not
                        // have (written before it is sent on).
                        stats.count_shadowed(&d, &self.info.user);
                        shadowed.push(*d);
                    }
                    Verdict::Deny(d) => {
                        stats.count_rejection(&d, &self.info.user);
                        return Err(d);
                    }
                    Verdict::Allow => {}
                }
                let mut new = flux::changes(st);
                for sp in &st.specials {
                    if let Special::ExecutePrepared { name } = sp {
                        for body in lookup(name) {
                            new.extend(flux::changes(&body));
                        }
                    }
                }
                if !new.is_empty() && self.db.is_some() {
                    view.get_or_insert_with(|| self.flux_view.clone())
                        .extend(new.iter().cloned());
                    added.extend(new);
                }
                // A later statement of the same text is parsed after this
                // one has run, which may have changed the search_path.
                search_path = None;
                if let Some(p) = &st.prepares {
                    earlier.push((&p.name, &p.body));
                }
            }
            self.ran_ddl |= flux::changes_catalog(statements);
            // A shadowed statement is recorded every time it is sent: not
            // remembered as allowed.
            if !executes && shadowed.is_empty() {
                self.allowed_memo[self.memo_next] = Some((statements.clone(), epoch));
                self.memo_next = (self.memo_next + 1) % MEMO;
            }
        } else if self.db.is_some() && flux::changes_catalog(statements) {
            // Remembered DDL runs again: its names go in flux again.
            self.ran_ddl = true;
            added.extend(statements.iter().flat_map(flux::changes));
        }
        stats.allowed.fetch_add(n, Ordering::Relaxed);
        self.add_flux(added);
        self.note_cursors(statements);
        self.shadowed.extend(shadowed);
        Ok(effects)
    }

    /// A FETCH or MOVE runs its cursor's query further under the switch
    /// positions in force now: a cursor declared (or last fetched) under
    /// others is judged again, and the FETCH refused if its verdict changed.
    fn judge_fetches(
        &mut self,
        statements: &[StatementInfo],
        runtime: &Runtime,
    ) -> Result<(), Box<Denial>> {
        let generation = self.guard.generation.load(Ordering::Acquire);
        for st in statements {
            let Some(CursorOp::Fetch(name)) = &st.cursor else {
                continue;
            };
            let Some((judged, declared)) = self.cursors.get(name) else {
                continue;
            };
            if *judged == generation {
                continue;
            }
            let declared = Arc::new(vec![declared.clone()]);
            self.judge_statements(&declared, runtime)?;
            if let Some(c) = self.cursors.get_mut(name) {
                c.0 = generation;
            }
        }
        Ok(())
    }

    /// Remembers the cursors that allowed statements declare or close.
    fn note_cursors(&mut self, statements: &[StatementInfo]) {
        for st in statements {
            match &st.cursor {
                Some(CursorOp::Declare(name)) => {
                    // Cursors end with their transaction unless WITH HOLD:
                    // the map is bounded, not exact (a FETCH of a cursor it
                    // no longer holds is judged as before).
                    if self.cursors.len() >= MAX_CURSORS {
                        self.cursors.clear();
                    }
                    let generation = self.guard.generation.load(Ordering::Acquire);
                    self.cursors.insert(name.clone(), (generation, st.clone()));
                }
                Some(CursorOp::Close(Some(name))) => {
                    self.cursors.remove(name);
                }
                Some(CursorOp::Close(None)) => self.cursors.clear(),
                _ => {}
            }
        }
    }

    /// Audits a rejected Bind or Execute and returns the Bind that fails in
    /// its place (of a statement name no statement has: the server then
    /// skips to Sync, as after its own error).
    async fn reject_in_batch(&mut self, (denial, sql): (Denial, String)) -> Bytes {
        self.audit(&denial, "extended", &sql).await;
        let marker = self
            .state
            .lock()
            .unwrap()
            .rejections
            .register_marker(denial);
        self.rejected_in_batch = true;
        protocol::bind_message(&marker)
    }

    /// Audits a rejection, registers it, and returns the SQL to run instead.
    async fn reject(&self, d: Denial, protocol: &'static str, sql: &str) -> String {
        self.audit(&d, protocol, sql).await;
        self.state.lock().unwrap().rejections.register(d)
    }

    /// Writes the audit record of a rejection (before the client hears of it).
    async fn audit(&self, d: &Denial, protocol: &'static str, sql: &str) {
        self.audit_event(d, "rejected", protocol, sql).await
    }

    /// Writes an audit record: `rejected`, or `would_reject` for a denial
    /// only recorded (shadow mode), before the statement is sent on.
    async fn audit_event(
        &self,
        d: &Denial,
        event: &'static str,
        protocol: &'static str,
        sql: &str,
    ) {
        let (statement, truncated) = audit::cap(sql, self.guard.audit.max_statement_chars);
        tracing::info!(session = self.info.id, user = ?self.info.user, rule = ?d.rule, event, "{:?}", d.message);
        let record = AuditRecord {
            time: audit::now_rfc3339(),
            event,
            session_id: self.info.id,
            client_addr: self.info.client_addr.to_string(),
            user: self.info.user.clone(),
            database: self.info.database.clone(),
            application_name: self.info.application_name.clone(),
            protocol,
            operation: d.operation.clone(),
            table: d.table.clone(),
            zone: d.zone.clone(),
            rule: d.rule.clone(),
            sqlstate: d.sqlstate.to_string(),
            message: d.message.clone(),
            statement,
            statement_truncated: truncated,
        };
        self.guard.audit.write(&record).await;
    }
}

/// The SQL text of a Query or Parse frame, if it is one (malformed frames
/// are reported when judged).
fn sql_of(frame: &protocol::Frame) -> Option<&[u8]> {
    match frame.tag() {
        b'Q' => protocol::query_text(frame.body()).ok(),
        b'P' => protocol::parse_message(frame.body()).ok().map(|m| m.query),
        _ => None,
    }
}

/// What running `statements` does to the session's prepared statements.
fn effects_of(statements: &[StatementInfo], generation: u64) -> Vec<Effect> {
    let mut effects = Vec::new();
    for st in statements {
        if let Some(p) = &st.prepares {
            effects.push(Effect {
                op: PendingOp::Prepare(p.name.as_bytes().to_vec()),
                version: Some(Prepared::new(Arc::new(vec![(*p.body).clone()]), generation)),
            });
        }
        match &st.deallocates {
            Some(Deallocate::All) => effects.push(Effect {
                op: PendingOp::DeallocateAll,
                version: None,
            }),
            Some(Deallocate::Name(n)) => effects.push(Effect {
                op: PendingOp::Deallocate(n.as_bytes().to_vec()),
                version: None,
            }),
            None => {}
        }
    }
    effects
}

/// A short description of a prepared statement for the audit record.
fn describe(statements: &[StatementInfo]) -> String {
    let commands: Vec<&str> = statements.iter().map(|s| s.command.as_str()).collect();
    format!("(prepared statement: {})", commands.join("; "))
}

fn denial(
    operation: &str,
    rule: &str,
    sqlstate: &'static str,
    message: String,
    hint: &str,
) -> Denial {
    Denial {
        operation: operation.into(),
        table: None,
        zone: None,
        rule: rule.into(),
        sqlstate,
        message,
        hint: hint.into(),
        shadow: false,
    }
}

/// A text that is not valid UTF-8 (R2: the only encoding the guard reads).
fn invalid_utf8() -> Denial {
    denial(
        "PARSE",
        "encoding",
        "22021",
        "invalid byte sequence for encoding \"UTF8\": zoneguard judges statements as UTF-8 text"
            .into(),
        "Send statements in UTF-8 (client_encoding UTF8).",
    )
}

/// A text pipelined after an Execute in the same batch that another state
/// of the session's settings would read differently (R2).
fn ambiguous_mid_batch(why: &str) -> Denial {
    denial(
        "PARSE",
        "session_settings",
        crate::policy::SQLSTATE_REJECTED,
        format!("statement rejected: it follows an Execute in the same batch, and {why}; the Execute may have changed client_encoding or standard_conforming_strings, which the server reports only at the batch's Sync"),
        "Send a Sync after the Execute before sending this statement.",
    )
}

/// A text PostgreSQL's grammar (of the second reader's version) rejects
/// runs nothing on a server no newer: passed on, the server reports its own
/// error. A newer server may accept syntax that grammar does not know, so
/// there it is refused.
fn newer_grammar(st: &StatementInfo, server_major: u32) -> Option<Denial> {
    let grammar = crate::classify::pgread::GRAMMAR_MAJOR;
    let Some(Special::SyntaxError { message }) = st
        .specials
        .iter()
        .find(|s| matches!(s, Special::SyntaxError { .. }))
    else {
        return None;
    };
    (server_major > grammar).then(|| {
        denial(
            "PARSE",
            "unparsed",
            crate::policy::SQLSTATE_REJECTED,
            format!("statement rejected: PostgreSQL {grammar}'s grammar, which zoneguard reads with, rejects it ({message}), and this server (PostgreSQL {server_major}) may accept it"),
            "Rewrite the statement in syntax PostgreSQL 18 accepts, or run it over a direct connection.",
        )
    })
}

/// A reload the statement must be judged after did not land in time.
fn catalog_unreadable(db: &crate::catalog::DatabaseCatalog) -> Denial {
    let why = db
        .last_error
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| "the reload did not finish in time".into());
    denial(
        "PARSE",
        "catalog",
        "55000",
        format!("statement refused: the catalog of database \"{}\" changed and zoneguard could not re-read it ({why}); it judges nothing on the catalog from before the change", db.database),
        "Try again in a moment; if it persists, check the [catalog] settings (SHOW CATALOGS on the admin console).",
    )
}

/// A Bind of a statement the guard saw no successful Parse or PREPARE of.
fn unknown_statement(name: &str) -> Denial {
    denial(
        "BIND",
        "prepared_statements",
        "26000",
        format!("prepared statement \"{name}\" does not exist (zoneguard has seen no successful Parse or PREPARE of it in this session)"),
        "Prepare the statement through zoneguard in this session before binding it.",
    )
}

/// A Bind whose statement may be one of several versions, one of which
/// changes the prepared statements.
fn ambiguous_statement(name: &str) -> Denial {
    denial(
        "BIND",
        "prepared_statements",
        crate::policy::SQLSTATE_REJECTED,
        format!("prepared statement \"{name}\" is being redefined in the same pipeline and prepares or deallocates statements itself"),
        "Wait for the server's answer to the Parse before binding the statement.",
    )
}

/// A SASLInitialResponse for SCRAM-SHA-256 whose gs2 header is `y`: the
/// client supports channel binding and believes the server does not.
fn scram_binding_expected(body: &[u8]) -> bool {
    let Some(rest) = body.strip_prefix(b"SCRAM-SHA-256\0") else {
        return false;
    };
    rest.len() > 4 && rest[4] == b'y'
}

/// Classifies a text over [`OFFLOAD_BYTES`] on the blocking pool, one such
/// text at a time guard-wide, parsing at most `[proxy] max_statement_bytes`
/// at once (after lists are shortened; bigger ones in pieces); None for
/// shorter texts (classified inline, through the cache) and for texts that
/// are not UTF-8 (refused inline).
async fn classify_big(text: &[u8], guard: &Guard) -> Option<Arc<Vec<StatementInfo>>> {
    let max = guard.settings.proxy.max_statement_bytes;
    if text.len() <= OFFLOAD_BYTES.min(max) {
        return None;
    }
    let sql = std::str::from_utf8(text).ok()?.to_owned();
    let _permit = BIG_CLASSIFICATIONS.acquire().await.ok()?;
    match tokio::task::spawn_blocking(move || crate::classify::classify_limited(&sql, max)).await {
        Ok(statements) => Some(Arc::new(statements)),
        // The classification panicked: judged as unparsed (fail closed).
        Err(_) => Some(Arc::new(vec![crate::classify::unjudgeable(
            "the statement could not be judged",
        )])),
    }
}
