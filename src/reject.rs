//! Rejection by substitution: a rejected statement is replaced, before it
//! reaches the server, by one that fails on the server at once with a marker
//! in its error. The server then does everything PostgreSQL does after an
//! error (fails the transaction, skips to Sync, keeps pipelined replies in
//! order), and the guard swaps the marked error for its own 42501 on the way
//! back. No rejected SQL ever reaches the server.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::policy::Denial;
use crate::protocol::{self, Severity};

/// Per-session bookkeeping of rejections the server still owes an error for.
/// Which reply settles which rejection is the session state's business
/// (`session::state`): it calls [`settle`](Self::settle) on each
/// ReadyForQuery with the highest sequence number issued before the message
/// that ReadyForQuery answers.
#[derive(Debug)]
pub struct Rejections {
    /// `zoneguard_reject_<nonce>_`: unguessable per process, so no SQL a
    /// client writes can produce a marked error by accident.
    prefix: String,
    next_seq: u64,
    pending: VecDeque<(u64, Denial)>,
}

impl Rejections {
    pub fn new(nonce: &str) -> Self {
        Rejections {
            prefix: format!("zoneguard_reject_{nonce}_"),
            next_seq: 1,
            pending: VecDeque::new(),
        }
    }

    /// Registers a rejection and returns the SQL that fails in its place:
    /// a cast to regclass fails in parse analysis, before anything runs, so
    /// it also fails a Parse message at once (the Bind that follows is then
    /// skipped by the server, whatever parameters it carries).
    pub fn register(&mut self, denial: Denial) -> String {
        format!(
            "SELECT '{}'::pg_catalog.regclass",
            self.register_marker(denial)
        )
    }

    /// Registers a rejection and returns its bare marker, a name that no
    /// relation or prepared statement has (e.g. for a Bind that must fail).
    pub fn register_marker(&mut self, denial: Denial) -> String {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back((seq, denial));
        format!("{}{}", self.prefix, seq)
    }

    /// The sequence number of the last rejection issued (0: none yet).
    pub fn issued(&self) -> u64 {
        self.next_seq - 1
    }

    /// Rejections up to `seq` are settled: their error came, or the server
    /// skipped them after an earlier error.
    pub fn settle(&mut self, seq: u64) {
        while self.pending.front().is_some_and(|(s, _)| *s <= seq) {
            self.pending.pop_front();
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// If `frame` (an ErrorResponse from the server) is the failure of a
    /// substituted statement, returns the guard's error to send instead.
    pub fn rewrite_error(&mut self, frame: &[u8]) -> Option<Bytes> {
        let at = protocol::find(frame, self.prefix.as_bytes())? + self.prefix.len();
        let digits: Vec<u8> = frame[at..]
            .iter()
            .copied()
            .take_while(u8::is_ascii_digit)
            .collect();
        let seq: u64 = std::str::from_utf8(&digits).ok()?.parse().ok()?;
        let mut found = None;
        while self.pending.front().is_some_and(|(s, _)| *s <= seq) {
            let (s, d) = self.pending.pop_front().unwrap();
            if s == seq {
                found = Some(d);
            }
        }
        let d = found?;
        Some(protocol::error_response(
            Severity::Error,
            d.sqlstate,
            &d.message,
            Some(&d.hint),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(m: &str) -> Denial {
        Denial {
            operation: "UPDATE".into(),
            table: Some("\"users\"".into()),
            zone: Some("legacy".into()),
            rule: "r".into(),
            sqlstate: "42501",
            message: m.into(),
            hint: "h".into(),
            shadow: false,
        }
    }

    #[test]
    fn marked_errors_are_rewritten_in_order() {
        let mut r = Rejections::new("abc");
        let sql1 = r.register(denial("one"));
        let sql2 = r.register(denial("two"));
        assert!(sql1.contains("zoneguard_reject_abc_1'"));
        // The server skipped the first (an earlier error) and failed the second.
        let server_err = protocol::error_response(
            Severity::Error,
            "42P01",
            "relation \"zoneguard_reject_abc_2\" does not exist",
            None,
        );
        let ours = r.rewrite_error(&server_err).unwrap();
        assert!(protocol::find(&ours, b"two").is_some());
        assert!(protocol::find(&ours, b"C42501").is_some());
        assert!(!r.has_pending());
        let _ = sql2;
    }

    #[test]
    fn unmarked_errors_pass_and_ready_settles() {
        let mut r = Rejections::new("abc");
        r.register(denial("one"));
        let other = protocol::error_response(Severity::Error, "25P02", "aborted", None);
        assert!(r.rewrite_error(&other).is_none());
        assert!(r.has_pending());
        r.settle(r.issued());
        assert!(!r.has_pending());
    }
}
