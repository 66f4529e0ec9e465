//! The client-to-server half of a session: frames the client's messages,
//! judges Query, Parse, Bind and FunctionCall, substitutes rejections, keeps
//! the server's zoneguard.* variables current, and holds messages behind a
//! string-syntax barrier.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};

use super::ClientEnd;
use crate::audit::{self, AuditRecord, SessionInfo};
use crate::classify::{Deallocate, Special, StatementInfo};
use crate::policy::{Denial, Facts, Verdict};
use crate::protocol::{self, ProtocolError, Severity};
use crate::reject::Rejections;
use crate::server::Guard;

pub(crate) struct ClientSide {
    guard: Arc<Guard>,
    info: SessionInfo,
    /// Bodies of SQL-level `PREPARE name AS ...` seen in this session, so
    /// that `EXECUTE name` is judged by what it runs. A name prepared twice
    /// keeps both bodies merged (the server keeps the first; the guard
    /// cannot know which one succeeded, so it judges by all of them).
    prepared: HashMap<String, StatementInfo>,
    rejections: Arc<Mutex<Rejections>>,
    /// The policy generation whose switch positions the server session's
    /// `zoneguard.<switch>` variables hold (0: not set yet, or wiped).
    switches_applied: u64,
    /// Extended-protocol statements the server holds, by name: the policy
    /// generation they were judged under, and their SQL. A Bind of one
    /// judged under an older policy (a reload or a switch flip since) is
    /// judged again, so a statement prepared before a flip cannot write
    /// where the flip forbids.
    parsed: HashMap<Vec<u8>, (u64, String)>,
    /// Extended-protocol messages were sent since the last Sync: the server
    /// is inside a batch (perhaps skipping to Sync after an error), so the
    /// guard must not slip a Query of its own in.
    unsynced: bool,
    /// A statement that may change how strings are read was allowed (see
    /// `Special::StringSyntaxBarrier`): nothing sent after it is judged until
    /// the server has answered it, so a changed standard_conforming_strings
    /// is seen (and closes the session) before it could matter.
    barrier_pending: bool,
    /// Such a statement came in an extended batch: wait at its Sync.
    barrier_at_sync: bool,
    /// Syncs sent since the last Execute or Query. If that started a COPY
    /// FROM STDIN, the server ignores them (they arrive in copy-in mode),
    /// which the client's CopyDone or CopyFail reveals.
    syncs_since_execute: usize,
    /// Notified by the server half on every ReadyForQuery.
    ready: Arc<Notify>,
    /// Classifications (shared with the cache) this session recently saw
    /// allowed, with the policy generation they were judged under. The
    /// verdict is a pure function of the classification, the session's role
    /// and the policy (switches included) of that generation, except for
    /// `EXECUTE name`, which depends on the session's PREPAREs and is never
    /// remembered here. A hit skips judging, not classifying.
    allowed_memo: [Option<(Arc<Vec<StatementInfo>>, u64)>; MEMO],
    memo_next: usize,
}

/// How many allowed classifications a session remembers.
const MEMO: usize = 8;

impl ClientSide {
    pub(crate) fn new(
        guard: Arc<Guard>,
        info: SessionInfo,
        rejections: Arc<Mutex<Rejections>>,
        ready: Arc<Notify>,
    ) -> Self {
        ClientSide {
            guard,
            info,
            prepared: HashMap::new(),
            rejections,
            switches_applied: 0,
            parsed: HashMap::new(),
            unsynced: false,
            barrier_pending: false,
            barrier_at_sync: false,
            syncs_since_execute: 0,
            ready,
            allowed_memo: Default::default(),
            memo_next: 0,
        }
    }

    /// When the switches changed since the server session's variables were
    /// set, and the session is idle with nothing in flight, returns a Query
    /// that sets them (its replies are swallowed). `SHOW zoneguard.<switch>`
    /// then answers in both protocols, prepared or not, without touching a
    /// table. Inside a transaction the value read stays as it was when the
    /// transaction began; enforcement never waits for this.
    fn refresh_switch_variables(&mut self) -> Option<Bytes> {
        let current = self
            .guard
            .generation
            .load(std::sync::atomic::Ordering::Acquire);
        if current == self.switches_applied {
            return None;
        }
        let runtime = self.guard.runtime.load();
        if runtime.generation == self.switches_applied {
            return None;
        }
        let mut r = self.rejections.lock().unwrap();
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
        let max = self.guard.settings.proxy.max_message_bytes;
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
                let frame = match protocol::next_frame(&mut buf, max) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return self.violation(e, &mut uw, &out, fatal).await,
                };
                match frame.tag() {
                    b'P' | b'B' | b'D' | b'C' | b'H' => self.unsynced = true,
                    b'E' => {
                        self.unsynced = true;
                        self.syncs_since_execute = 0;
                    }
                    b'Q' => self.syncs_since_execute = 0,
                    b'S' => {
                        self.unsynced = false;
                        self.syncs_since_execute += 1;
                    }
                    b'c' | b'f' => {
                        let ignored = std::mem::take(&mut self.syncs_since_execute);
                        self.rejections.lock().unwrap().forget_ready(ignored);
                    }
                    _ => {}
                }
                match self.judge_frame(&frame).await {
                    Ok(Some(replacement)) => out.extend_from_slice(&replacement),
                    Ok(None) => out.extend_from_slice(&frame.raw),
                    Err(e) => return self.violation(e, &mut uw, &out, fatal).await,
                }
                if frame.tag() == b'X' {
                    let _ = uw.write_all(&out).await;
                    let _ = uw.shutdown().await;
                    return ClientEnd::Gone;
                }
                let wait = match frame.tag() {
                    b'Q' | b'F' => std::mem::take(&mut self.barrier_pending),
                    b'P' => {
                        self.barrier_at_sync |= std::mem::take(&mut self.barrier_pending);
                        false
                    }
                    b'S' => std::mem::take(&mut self.barrier_at_sync),
                    _ => false,
                };
                if wait {
                    if uw.write_all(&out).await.is_err() {
                        return ClientEnd::Gone;
                    }
                    out.clear();
                    self.wait_until_answered().await;
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

    /// Returns the bytes to send instead of `frame`, if it is rejected.
    async fn judge_frame(
        &mut self,
        frame: &protocol::Frame,
    ) -> Result<Option<Bytes>, ProtocolError> {
        match frame.tag() {
            b'Q' => {
                let sql = protocol::sql_text(protocol::query_text(frame.body())?);
                let verdict = self.judge_sql(&sql);
                let out = match verdict {
                    Some(denial) => {
                        let replacement = self.reject(denial, "simple", &sql).await;
                        Some(protocol::query_message(&replacement))
                    }
                    None => None,
                };
                self.rejections.lock().unwrap().expect_ready();
                Ok(out)
            }
            b'P' => {
                let msg = protocol::parse_message(frame.body())?;
                let sql = protocol::sql_text(msg.query);
                let generation = self.guard.runtime.load().generation;
                let verdict = if self.barrier_at_sync {
                    Some(pipelined_after_barrier())
                } else {
                    self.judge_sql(&sql)
                };
                match verdict {
                    Some(denial) => {
                        self.parsed.remove(msg.name);
                        let replacement = self.reject(denial, "extended", &sql).await;
                        Ok(Some(protocol::parse_message_bytes(msg.name, &replacement)))
                    }
                    None => {
                        // Drivers re-parse the unnamed statement for every
                        // query: reuse its entry's allocations.
                        match self.parsed.get_mut(msg.name) {
                            Some(entry) => {
                                entry.0 = generation;
                                entry.1.clear();
                                entry.1.push_str(&sql);
                            }
                            None => {
                                self.parsed
                                    .insert(msg.name.to_vec(), (generation, sql.into_owned()));
                            }
                        }
                        Ok(None)
                    }
                }
            }
            b'B' => {
                let name = protocol::bind_statement(frame.body())?;
                let generation = self.guard.runtime.load().generation;
                let stale = match self.parsed.get(name) {
                    Some((judged, sql)) if *judged != generation => sql.clone(),
                    _ => return Ok(None),
                };
                match self.judge_sql(&stale) {
                    Some(denial) => {
                        self.audit(&denial, "extended", &stale).await;
                        let marker = self.rejections.lock().unwrap().register_marker(denial);
                        Ok(Some(protocol::bind_message(&marker)))
                    }
                    None => {
                        if let Some(entry) = self.parsed.get_mut(name) {
                            entry.0 = generation;
                        }
                        Ok(None)
                    }
                }
            }
            b'C' => {
                let body = frame.body();
                if body.first() == Some(&b'S') {
                    let mut rest = &body[1..];
                    if let Some(name) = protocol::take_cstr(&mut rest) {
                        self.parsed.remove(name);
                    }
                }
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
                    Verdict::Deny(d) => {
                        let replacement = self.reject(*d, "function_call", "").await;
                        Some(protocol::query_message(&replacement))
                    }
                };
                self.rejections.lock().unwrap().expect_ready();
                Ok(out)
            }
            b'S' => {
                self.rejections.lock().unwrap().expect_ready();
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Waits until the server owes no ReadyForQuery.
    async fn wait_until_answered(&self) {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.rejections.lock().unwrap().idle() {
                return;
            }
            notified.await;
        }
    }

    /// Classifies and judges every statement of `sql`; the first denial wins.
    fn judge_sql(&mut self, sql: &str) -> Option<Denial> {
        let runtime = self.guard.runtime.load();
        let statements = self.guard.cache.classify(sql);
        let stats = &self.guard.stats;
        stats.statements.fetch_add(
            statements.len().max(1) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let facts = Facts {
            role: &self.info.user,
            switches: &runtime.switches,
        };
        let remembered = self
            .allowed_memo
            .iter()
            .flatten()
            .any(|(seen, generation)| {
                *generation == runtime.generation && Arc::ptr_eq(seen, &statements)
            });
        if !remembered {
            let prepared = &self.prepared;
            for st in statements.iter() {
                if let Verdict::Deny(d) =
                    runtime.policy.judge(st, facts, &|name| prepared.get(name))
                {
                    stats.count_rejection(&d.rule);
                    return Some(*d);
                }
            }
            let executes = statements.iter().any(|st| {
                st.specials
                    .iter()
                    .any(|sp| matches!(sp, Special::ExecutePrepared { .. }))
            });
            if !executes {
                self.allowed_memo[self.memo_next] = Some((statements.clone(), runtime.generation));
                self.memo_next = (self.memo_next + 1) % MEMO;
            }
        }
        stats.allowed.fetch_add(
            statements.len().max(1) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        for st in statements.iter() {
            if st.specials.contains(&Special::StringSyntaxBarrier) {
                self.barrier_pending = true;
            }
            if st.command == "DISCARD" || st.command == "RESET" {
                // DISCARD ALL / RESET ALL wipe the zoneguard.* variables.
                self.switches_applied = 0;
            }
            if let Some(p) = &st.prepares {
                let entry = self.prepared.entry(p.name.clone()).or_default();
                entry.accesses.extend(p.body.accesses.iter().cloned());
                entry.specials.extend(p.body.specials.iter().cloned());
            }
            match &st.deallocates {
                Some(Deallocate::All) => self.prepared.clear(),
                Some(Deallocate::Name(n)) => {
                    self.prepared.remove(n);
                }
                None => {}
            }
        }
        None
    }

    /// Audits a rejection, registers it, and returns the SQL to run instead.
    async fn reject(&self, d: Denial, protocol: &'static str, sql: &str) -> String {
        self.audit(&d, protocol, sql).await;
        self.rejections.lock().unwrap().register(d)
    }

    /// Writes the audit record of a rejection (before the client hears of it).
    async fn audit(&self, d: &Denial, protocol: &'static str, sql: &str) {
        let (statement, truncated) = audit::cap(sql, self.guard.audit.max_statement_chars);
        tracing::info!(session = self.info.id, user = %self.info.user, rule = %d.rule, "rejected: {}", d.message);
        let record = AuditRecord {
            time: audit::now_rfc3339(),
            event: "rejected",
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

/// A Parse pipelined after a possible change of string syntax, before Sync.
fn pipelined_after_barrier() -> Denial {
    Denial {
        operation: "PARSE".into(),
        table: None,
        zone: None,
        rule: "string_syntax".into(),
        sqlstate: crate::policy::SQLSTATE_REJECTED,
        message: "statement rejected: it was pipelined after a set_config() call that may change how strings are read, in the same batch".into(),
        hint: "Send a Sync after the set_config() call before sending more statements.".into(),
    }
}
