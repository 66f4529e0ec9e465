//! The session as both halves of the relay know it, in one place: the replies
//! the server owes (one unit per ReadyForQuery), what the client asked for
//! that the server has not confirmed yet, what the server has confirmed
//! (prepared statements, the settings the reading of SQL depends on, the
//! transaction status), and the rejections still owed an error.
//!
//! The client half records what it sends; the server half settles it from
//! the server's answers. Nothing the client asks for counts until the server
//! says it happened: a Parse is a prepared statement once ParseComplete
//! arrives, a PREPARE once its CommandComplete does, a Close or DEALLOCATE
//! likewise, and everything still pending when an error or ReadyForQuery
//! ends its unit did not happen.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::classify::StatementInfo;
use crate::reject::Rejections;

/// A prepared statement's classification, and the policy generation under
/// which it was last judged allowed (a Bind after a reload or flip judges it
/// again).
#[derive(Debug)]
pub struct Prepared {
    pub statements: Arc<Vec<StatementInfo>>,
    pub judged: AtomicU64,
    /// Running it prepares or deallocates statements (SQL PREPARE, DEALLOCATE,
    /// DISCARD ALL sent through the extended protocol).
    pub effectful: bool,
    /// Running it changes the catalog (DDL): each Bind puts its names in
    /// flux again and has the catalog re-read after its transaction.
    pub changes_catalog: bool,
}

impl Prepared {
    pub fn new(statements: Arc<Vec<StatementInfo>>, generation: u64) -> Arc<Prepared> {
        let effectful = statements
            .iter()
            .any(|s| s.prepares.is_some() || s.deallocates.is_some());
        let changes_catalog = crate::catalog::flux::changes_catalog(&statements);
        Arc::new(Prepared {
            statements,
            judged: AtomicU64::new(generation),
            effectful,
            changes_catalog,
        })
    }
}

/// Something the client asked for whose outcome the server has yet to tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingOp {
    /// Parse of a named (or the unnamed) statement: ParseComplete confirms.
    Parse(Vec<u8>),
    /// Close of a statement: CloseComplete confirms.
    CloseStatement(Vec<u8>),
    /// Close of a portal: CloseComplete, with nothing to learn.
    ClosePortal,
    /// SQL `PREPARE name AS ...`: CommandComplete "PREPARE" confirms.
    Prepare(Vec<u8>),
    /// SQL `DEALLOCATE name`: CommandComplete "DEALLOCATE" confirms.
    Deallocate(Vec<u8>),
    /// `DEALLOCATE ALL` or `DISCARD ALL`: their CommandComplete confirms.
    DeallocateAll,
}

/// One ReadyForQuery the server owes, or (the last unit, while `open`) the
/// extended-protocol batch not yet ended by a Sync.
#[derive(Debug)]
struct Unit {
    /// Highest rejection sequence number issued before the message.
    seq: u64,
    /// The guard's own Query (a session variable refresh): every reply up to
    /// and including its ReadyForQuery is for the guard, not the client.
    swallow: bool,
    open: bool,
    ops: VecDeque<PendingOp>,
    /// It runs DDL the guard let through: when it is over and the session is
    /// idle outside a transaction, the catalog is reloaded.
    ddl: bool,
}

/// Every version a statement name may stand for on the server.
#[derive(Debug, Default)]
struct Versions {
    confirmed: Option<Arc<Prepared>>,
    /// Sent, not yet answered, oldest first (they settle in that order).
    pending: VecDeque<Arc<Prepared>>,
}

/// The session's state. Shared by the two halves behind one mutex; every
/// method is short and never waits.
#[derive(Debug)]
pub struct SessionState {
    pub rejections: Rejections,
    units: VecDeque<Unit>,
    /// An emptied op queue kept for the next unit (one allocation saved per
    /// extended batch).
    spare: VecDeque<PendingOp>,
    statements: HashMap<Vec<u8>, Versions>,
    /// Transaction status of the last ReadyForQuery: b'I', b'T' or b'E'.
    pub status: u8,
    /// The server has sent its first ReadyForQuery: authentication is over.
    pub authenticated: bool,
    /// The server sent an ErrorResponse of severity FATAL or PANIC: it ends
    /// the session itself, and the guard adds no error of its own.
    pub server_fatal: bool,
    /// The settings the reading of SQL depends on, as the server last
    /// reported them (`classify::reading`): only values the guard reads
    /// under are ever recorded, since any other ends the session.
    pub client_encoding: String,
    pub standard_conforming_strings: bool,
    /// The search_path the server last reported (servers that report it:
    /// ParameterStatus), parsed; None: not reported, or unreadable.
    pub search_path: Option<Arc<Vec<String>>>,
    /// The server's major version (`server_version`; 0: not reported).
    pub server_major: u32,
    /// The database's catalog, if the guard keeps one.
    pub catalog: Option<Arc<crate::catalog::DatabaseCatalog>>,
    /// A unit that ran DDL the guard let through has ended since the session
    /// was last idle outside a transaction: at the next such ReadyForQuery
    /// the catalog is reloaded.
    pub catalog_changed: bool,
    /// That reload's ticket: the client half waits for it before judging
    /// the session's next statement.
    pub catalog_ticket: Option<u64>,
    /// The session's names in flux (`catalog::flux`): they end with the
    /// transaction that ran their DDL.
    pub flux_entry: Option<Arc<crate::catalog::flux::FluxEntry>>,
}

impl SessionState {
    pub fn new(nonce: &str) -> Self {
        SessionState {
            rejections: Rejections::new(nonce),
            // The ReadyForQuery that ends authentication is owed by startup.
            units: VecDeque::from([Unit {
                seq: 0,
                swallow: false,
                open: false,
                ops: VecDeque::new(),
                ddl: false,
            }]),
            spare: VecDeque::new(),
            statements: HashMap::new(),
            status: b'I',
            authenticated: false,
            server_fatal: false,
            client_encoding: String::new(),
            standard_conforming_strings: true,
            search_path: None,
            server_major: 0,
            catalog: None,
            catalog_changed: false,
            catalog_ticket: None,
            flux_entry: None,
        }
    }

    // ---- what the client half records ----

    /// Records a request whose outcome a later reply will tell.
    pub fn push_op(&mut self, op: PendingOp) {
        match self.units.back_mut() {
            Some(u) if u.open => u.ops.push_back(op),
            _ => {
                let mut ops = std::mem::take(&mut self.spare);
                ops.push_back(op);
                self.units.push_back(Unit {
                    seq: 0,
                    swallow: false,
                    open: true,
                    ops,
                    ddl: false,
                })
            }
        }
    }

    /// A statement version was sent under `name` (Parse or PREPARE); the
    /// matching [`PendingOp`] must be pushed with it.
    pub fn add_pending(&mut self, name: &[u8], prepared: Arc<Prepared>) {
        match self.statements.get_mut(name) {
            Some(v) => v.pending.push_back(prepared),
            None => {
                self.statements.insert(
                    name.to_vec(),
                    Versions {
                        confirmed: None,
                        pending: VecDeque::from([prepared]),
                    },
                );
            }
        }
    }

    /// Records a Parse of `statements` (judged allowed under `generation`)
    /// as pending under `name`. A driver that parses the same text again
    /// (the unnamed statement, every query) shares the newest version's
    /// record instead of allocating one.
    pub fn add_parsed(
        &mut self,
        name: &[u8],
        statements: Arc<Vec<StatementInfo>>,
        generation: u64,
    ) {
        if let Some(v) = self.statements.get_mut(name) {
            let reuse = v.pending.back().or(v.confirmed.as_ref()).filter(|p| {
                Arc::ptr_eq(&p.statements, &statements)
                    && p.judged.load(Ordering::Relaxed) == generation
            });
            let version = match reuse {
                Some(p) => p.clone(),
                None => Prepared::new(statements, generation),
            };
            v.pending.push_back(version);
        } else {
            self.add_pending(name, Prepared::new(statements, generation));
        }
        self.push_op(PendingOp::Parse(name.to_vec()));
    }

    /// The common Bind: `name` stands for versions all judged allowed under
    /// `generation`, none of which changes the prepared statements. No
    /// allocation; anything else goes through [`candidates`](Self::candidates).
    pub fn settled_for(&self, name: &[u8], generation: u64) -> bool {
        self.statements.get(name).is_some_and(|v| {
            let mut all = v.confirmed.iter().chain(v.pending.iter()).peekable();
            all.peek().is_some()
                && all.all(|p| {
                    !p.effectful
                        && !p.changes_catalog
                        && p.judged.load(Ordering::Relaxed) == generation
                })
        })
    }

    /// Every version `name` may stand for when the next message runs: the
    /// confirmed one and those still pending. Empty: the guard cannot
    /// account for the name.
    pub fn candidates(&self, name: &[u8]) -> Vec<Arc<Prepared>> {
        match self.statements.get(name) {
            Some(v) => v
                .confirmed
                .iter()
                .chain(v.pending.iter())
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    }

    /// A message that the server answers with one ReadyForQuery was sent
    /// (Query, Sync, FunctionCall): it ends the open unit.
    pub fn expect_ready(&mut self) {
        self.close_unit(false);
    }

    /// What the client sent last runs DDL: marks the unit it belongs to (the
    /// open batch, or a new one for a Query about to be closed by
    /// `expect_ready`), so that the catalog is reloaded after that unit's
    /// ReadyForQuery, not an earlier one's.
    pub fn mark_catalog_change(&mut self) {
        match self.units.back_mut() {
            Some(u) if u.open => u.ddl = true,
            _ => {
                let ops = std::mem::take(&mut self.spare);
                self.units.push_back(Unit {
                    seq: 0,
                    swallow: false,
                    open: true,
                    ops,
                    ddl: true,
                })
            }
        }
    }

    /// The guard sent a Query of its own: its replies are not relayed.
    pub fn expect_swallowed_ready(&mut self) {
        self.close_unit(true);
    }

    fn close_unit(&mut self, swallow: bool) {
        let seq = self.rejections.issued();
        match self.units.back_mut() {
            Some(u) if u.open && !swallow => {
                u.open = false;
                u.seq = seq;
            }
            _ => self.units.push_back(Unit {
                seq,
                swallow,
                open: false,
                ops: VecDeque::new(),
                ddl: false,
            }),
        }
    }

    /// The last `n` messages counted by [`expect_ready`](Self::expect_ready)
    /// will not be answered (Syncs the server ignored in copy-in mode): their
    /// units are merged back into one open unit.
    pub fn forget_ready(&mut self, n: usize) {
        let mut ops = VecDeque::new();
        for _ in 0..n {
            // Never one of the guard's own queries: those are not Syncs.
            match self.units.back() {
                Some(u) if !u.open && !u.swallow => {
                    let mut u = self.units.pop_back().unwrap();
                    u.ops.append(&mut ops);
                    ops = u.ops;
                }
                _ => break,
            }
        }
        if let Some(u) = self.units.back_mut().filter(|u| u.open) {
            u.ops.append(&mut ops);
        } else if !ops.is_empty() || n > 0 {
            self.units.push_back(Unit {
                seq: 0,
                swallow: false,
                open: true,
                ops,
                ddl: false,
            });
        }
    }

    /// Whether the server owes no ReadyForQuery: everything sent up to the
    /// last Sync or Query has been answered, and every ParameterStatus sent
    /// before those answers has been seen.
    pub fn idle(&self) -> bool {
        self.units.front().is_none_or(|u| u.open)
    }

    /// Whether the replies arriving now answer the guard's own Query.
    pub fn swallowing(&self) -> bool {
        self.units.front().is_some_and(|u| u.swallow && !u.open)
    }

    // ---- what the server half learns ----

    /// A ParameterStatus the guard can read under (see `reading`).
    pub fn on_parameter(&mut self, name: &[u8], value: &[u8]) {
        match name {
            b"client_encoding" => {
                self.client_encoding = String::from_utf8_lossy(value).into_owned();
            }
            b"standard_conforming_strings" => {
                self.standard_conforming_strings =
                    crate::classify::reading::is_on(&String::from_utf8_lossy(value));
            }
            b"server_version" => {
                let v = String::from_utf8_lossy(value);
                self.server_major = v
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
            }
            b"search_path" => {
                self.search_path = std::str::from_utf8(value)
                    .ok()
                    .and_then(crate::catalog::parse_search_path)
                    .map(Arc::new);
            }
            _ => {}
        }
    }

    /// A ReadyForQuery arrived: its unit is over, and whatever it left
    /// unconfirmed did not happen.
    pub fn on_ready(&mut self, status: u8) {
        self.authenticated = true;
        self.status = status;
        if let Some(u) = self.units.front() {
            self.catalog_changed |= u.ddl && !u.open;
        }
        if status == b'I' && self.catalog_changed {
            // The DDL has committed (or rolled back): what it did is in the
            // catalog the guard's own connection reads.
            self.catalog_changed = false;
            // Every session of the database waits for the reload (no lag).
            if let Some(db) = &self.catalog {
                let ticket = db.request_reload();
                match &self.flux_entry {
                    Some(e) => db.flux_ended(e, ticket),
                    None => db.require(ticket),
                }
                self.catalog_ticket = Some(ticket);
            }
        }
        if let Some(mut u) = self.units.pop_front() {
            self.rejections.settle(u.seq);
            while let Some(op) = u.ops.pop_front() {
                self.settle(op, false);
            }
            if u.ops.capacity() > 0 && self.spare.capacity() == 0 {
                self.spare = u.ops;
            }
        }
    }

    /// An ErrorResponse arrived: the rest of the current unit is skipped (a
    /// simple Query stops; an extended batch skips to Sync).
    pub fn on_error(&mut self, fatal: bool) {
        self.server_fatal |= fatal;
        let ops: Vec<PendingOp> = match self.units.front_mut() {
            Some(u) => u.ops.drain(..).collect(),
            None => return,
        };
        for op in ops {
            self.settle(op, false);
        }
    }

    /// ParseComplete.
    pub fn on_parse_complete(&mut self) {
        self.confirm_first(|op| matches!(op, PendingOp::Parse(_)));
    }

    /// CloseComplete.
    pub fn on_close_complete(&mut self) {
        self.confirm_first(|op| {
            matches!(op, PendingOp::CloseStatement(_) | PendingOp::ClosePortal)
        });
    }

    /// CommandComplete with its tag: confirms a PREPARE, DEALLOCATE, or
    /// DEALLOCATE ALL / DISCARD ALL.
    pub fn on_command_complete(&mut self, tag: &[u8]) {
        let wanted: fn(&PendingOp) -> bool = match tag {
            b"PREPARE" => |op| matches!(op, PendingOp::Prepare(_)),
            b"DEALLOCATE" => |op| matches!(op, PendingOp::Deallocate(_)),
            b"DEALLOCATE ALL" | b"DISCARD ALL" => |op| matches!(op, PendingOp::DeallocateAll),
            _ => return,
        };
        self.confirm_first(wanted);
    }

    /// Confirms the first pending op of the current unit that `wanted`
    /// accepts; ops before it got no answer of their own and did not happen
    /// (keeping a statement the server dropped, or forgetting one it made,
    /// only ever makes the guard stricter).
    fn confirm_first(&mut self, wanted: impl Fn(&PendingOp) -> bool) {
        loop {
            let Some(op) = self.units.front_mut().and_then(|u| u.ops.pop_front()) else {
                return;
            };
            let hit = wanted(&op);
            self.settle(op, hit);
            if hit {
                return;
            }
        }
    }

    fn settle(&mut self, op: PendingOp, happened: bool) {
        match op {
            PendingOp::Parse(name) | PendingOp::Prepare(name) => {
                let Some(v) = self.statements.get_mut(&name) else {
                    return;
                };
                let version = v.pending.pop_front();
                if happened {
                    v.confirmed = version;
                } else if name.is_empty() {
                    // The server drops the unnamed statement before parsing
                    // the new one, whether or not that succeeds.
                    v.confirmed = None;
                }
                if v.confirmed.is_none() && v.pending.is_empty() {
                    self.statements.remove(&name);
                }
            }
            PendingOp::CloseStatement(name) | PendingOp::Deallocate(name) if happened => {
                if let Some(v) = self.statements.get_mut(&name) {
                    v.confirmed = None;
                }
                self.tidy(&name);
            }
            PendingOp::DeallocateAll if happened => {
                self.statements.retain(|name, v| {
                    // The unnamed statement is the protocol's, not DEALLOCATE's.
                    if !name.is_empty() {
                        v.confirmed = None;
                    }
                    v.confirmed.is_some() || !v.pending.is_empty()
                });
            }
            _ => {}
        }
    }

    fn tidy(&mut self, name: &[u8]) {
        if self
            .statements
            .get(name)
            .is_some_and(|v| v.confirmed.is_none() && v.pending.is_empty())
        {
            self.statements.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(cmd: &str) -> Arc<Prepared> {
        Prepared::new(
            Arc::new(vec![StatementInfo {
                command: cmd.into(),
                ..Default::default()
            }]),
            1,
        )
    }

    fn commands(s: &SessionState, name: &[u8]) -> Vec<String> {
        s.candidates(name)
            .iter()
            .map(|p| p.statements[0].command.clone())
            .collect()
    }

    fn started() -> SessionState {
        let mut s = SessionState::new("n");
        s.on_ready(b'I');
        s
    }

    #[test]
    fn a_parse_counts_once_the_server_confirms_it() {
        let mut s = started();
        s.add_pending(b"s1", version("INSERT"));
        s.push_op(PendingOp::Parse(b"s1".to_vec()));
        s.expect_ready();
        assert_eq!(commands(&s, b"s1"), ["INSERT"]);
        s.on_parse_complete();
        s.on_ready(b'I');
        // A second Parse of the same name fails on the server (42P05): the
        // first version stays, and the guard keeps judging by it.
        s.add_pending(b"s1", version("SELECT"));
        s.push_op(PendingOp::Parse(b"s1".to_vec()));
        s.expect_ready();
        assert_eq!(commands(&s, b"s1"), ["INSERT", "SELECT"]);
        s.on_error(false);
        s.on_ready(b'I');
        assert_eq!(commands(&s, b"s1"), ["INSERT"]);
    }

    #[test]
    fn close_and_deallocate_count_when_confirmed() {
        let mut s = started();
        s.add_pending(b"p", version("INSERT"));
        s.push_op(PendingOp::Prepare(b"p".to_vec()));
        s.expect_ready();
        s.on_command_complete(b"PREPARE");
        s.on_ready(b'I');
        s.push_op(PendingOp::Deallocate(b"p".to_vec()));
        s.expect_ready();
        assert_eq!(commands(&s, b"p"), ["INSERT"]);
        s.on_error(false); // the DEALLOCATE failed (e.g. a rejected batch)
        s.on_ready(b'E');
        assert_eq!(commands(&s, b"p"), ["INSERT"]);
        s.push_op(PendingOp::DeallocateAll);
        s.expect_ready();
        s.on_command_complete(b"DISCARD ALL");
        s.on_ready(b'I');
        assert!(s.candidates(b"p").is_empty());
    }

    #[test]
    fn idle_only_when_nothing_is_owed() {
        let mut s = SessionState::new("n");
        assert!(!s.idle());
        s.on_ready(b'I');
        assert!(s.idle());
        s.push_op(PendingOp::Parse(b"".to_vec()));
        assert!(s.idle(), "an open batch owes no ReadyForQuery yet");
        s.expect_ready();
        assert!(!s.idle());
        s.forget_ready(1);
        assert!(s.idle());
    }
}
