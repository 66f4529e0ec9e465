//! The server-to-client half of a session: relays the server's replies in
//! place, swaps marked errors for the guard's own, swallows the replies to
//! the guard's own queries, settles the session state from the server's
//! answers, and ends the session if the server reports a setting under which
//! the guard cannot read SQL (`classify::reading`, R3).

use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};

use super::state::SessionState;
use crate::classify::reading;
use crate::protocol::{self, Severity};

/// Largest message accepted from the server (PostgreSQL's own limit is 1 GB).
const MAX_SERVER_MESSAGE: usize = 1 << 30;

/// Records a ParameterStatus; if it reports a state the guard cannot read,
/// returns the FATAL error that ends the session (R3).
fn parameter(st: &mut SessionState, body: &[u8]) -> Option<Bytes> {
    let mut b = body;
    let (name, value) = (protocol::take_cstr(&mut b)?, protocol::take_cstr(&mut b)?);
    let Some((message, hint)) = reading::refused_parameter(name, value) else {
        st.on_parameter(name, value);
        return None;
    };
    Some(protocol::error_response(
        Severity::Fatal,
        "0A000",
        &message,
        Some(&hint),
    ))
}

/// Whether an ErrorResponse body has severity FATAL or PANIC (the server
/// ends the session after it).
fn is_fatal(body: &[u8]) -> bool {
    let mut b = body;
    let mut severity = None;
    while let Some((&field, rest)) = b.split_first() {
        if field == 0 {
            break;
        }
        b = rest;
        let Some(value) = protocol::take_cstr(&mut b) else {
            break;
        };
        match field {
            // V: never localized (9.6+); S: possibly localized.
            b'V' => severity = Some(value),
            b'S' if severity.is_none() => severity = Some(value),
            _ => {}
        }
    }
    matches!(severity, Some(b"FATAL") | Some(b"PANIC"))
}

pub(crate) async fn server_to_client<R, W>(
    mut ur: R,
    mut cw: W,
    state: Arc<Mutex<SessionState>>,
    mut fatal: oneshot::Receiver<Bytes>,
    ready: Arc<Notify>,
    mut ticket: Option<crate::admission::Ticket>,
    shutdown: tokio::sync::watch::Receiver<crate::guard::Shutdown>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out = BytesMut::new();
    let evicted = match &ticket {
        Some(t) => t.evicted(),
        None => crate::admission::Ticket::never(),
    };
    tokio::pin!(evicted);
    // Shutting down: the session ends once idle outside a transaction.
    let mut draining = false;
    // One future for the next change of the shutdown state, kept across
    // reads: a fresh `changed()` per batch would enter and leave the watch
    // channel's waiter list on every reply the server sends.
    let mut stop = Box::pin(next_shutdown_state(
        shutdown,
        crate::guard::Shutdown::Running,
    ));
    loop {
        if draining && closable(&state) {
            let _ = cw.write_all(&terminating()).await;
            let _ = cw.shutdown().await;
            return;
        }
        tokio::select! {
            biased;
            (now, rx) = &mut stop => {
                if now == crate::guard::Shutdown::Terminating {
                    let _ = cw.write_all(&terminating()).await;
                    let _ = cw.shutdown().await;
                    return;
                }
                draining = now == crate::guard::Shutdown::Draining;
                stop = Box::pin(next_shutdown_state(rx, now));
                continue;
            }
            // Until the server has authenticated the client, the admission
            // may evict the session to make room (see `admission`); the
            // branch is off afterwards, so the hot path does not poll it.
            _ = &mut evicted, if ticket.is_some() => {
                tracing::debug!("evicted before authentication");
                let _ = cw.shutdown().await;
                return;
            }
            msg = &mut fatal => {
                if let Ok(msg) = msg {
                    let _ = cw.write_all(&msg).await;
                }
                let _ = cw.shutdown().await;
                return;
            }
            read = ur.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    // One FATAL: if the server ended the session with its
                    // own, the client has it already.
                    if state.lock().unwrap().server_fatal {
                        let _ = cw.shutdown().await;
                        return;
                    }
                    let msg = protocol::error_response(
                        Severity::Fatal,
                        "08006",
                        "zoneguard: the database server closed the connection",
                        None,
                    );
                    let _ = cw.write_all(&msg).await;
                    let _ = cw.shutdown().await;
                    return;
                }
                Ok(_) => {}
            }
        }
        // One lock for the whole batch: the scan does not wait on anything.
        let scanned = {
            let mut st = state.lock().unwrap();
            let scanned = scan(&mut buf, &mut out, &mut st, &ready);
            if ticket.is_some() && st.authenticated {
                // No longer among the unauthenticated.
                ticket = None;
            }
            scanned
        };
        let off = match scanned {
            Scan::Relay(off) => off,
            Scan::BadFrame(e, off) => {
                tracing::error!(error = %e, "bad message from the database server");
                let msg = protocol::error_response(
                    Severity::Fatal,
                    "08P01",
                    &format!("zoneguard: bad message from the database server: {e}"),
                    None,
                );
                out.extend_from_slice(&buf[..off]);
                let _ = cw.write_all(&out).await;
                let _ = cw.write_all(&msg).await;
                return;
            }
            Scan::Refused(msg, off) => {
                tracing::info!(
                    "session ended: the server reports a setting the guard cannot read under"
                );
                out.extend_from_slice(&buf[..off]);
                let _ = cw.write_all(&out).await;
                let _ = cw.write_all(&msg).await;
                let _ = cw.shutdown().await;
                return;
            }
        };
        if out.is_empty() {
            if off > 0 && cw.write_all(&buf[..off]).await.is_err() {
                return;
            }
        } else {
            out.extend_from_slice(&buf[..off]);
        }
        buf.advance(off);
        // Room for a large message that is still arriving.
        if let Ok(None) = protocol::peek_frame_len(&buf, MAX_SERVER_MESSAGE) {
            protocol::reserve_for_frame(&mut buf);
        }
        if !out.is_empty() {
            if cw.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// The shutdown state once it differs from `from` (Terminating if the guard
/// dropped the channel), with the receiver to watch on with.
async fn next_shutdown_state(
    mut rx: tokio::sync::watch::Receiver<crate::guard::Shutdown>,
    from: crate::guard::Shutdown,
) -> (
    crate::guard::Shutdown,
    tokio::sync::watch::Receiver<crate::guard::Shutdown>,
) {
    loop {
        if rx.changed().await.is_err() {
            return (crate::guard::Shutdown::Terminating, rx);
        }
        let now = *rx.borrow_and_update();
        if now != from {
            return (now, rx);
        }
    }
}

/// Idle outside a transaction, nothing owed: closing now loses nothing.
fn closable(state: &Mutex<SessionState>) -> bool {
    let st = state.lock().unwrap();
    st.authenticated && st.idle() && st.status == b'I'
}

/// PostgreSQL's own words when an administrator stops the server.
fn terminating() -> Bytes {
    protocol::error_response(
        Severity::Fatal,
        "57P01",
        "terminating connection due to administrator command",
        Some("zoneguard is shutting down: reconnect (through another instance)."),
    )
}

/// What [`scan`] found.
enum Scan {
    /// `buf[..n]` is to be relayed (after `out`, if `out` is not empty).
    Relay(usize),
    /// A malformed frame at `buf[n..]`.
    BadFrame(protocol::ProtocolError, usize),
    /// The frame at `buf[n..]` reports a setting the guard cannot read
    /// under: the FATAL error to send instead.
    Refused(Bytes, usize),
}

/// Walks the complete frames at the start of `buf`. Frames are inspected in
/// place; the bytes that pass through stay in `buf`, and are copied into
/// `out` only when a rejection's error is rewritten or a reply to the
/// guard's own query is swallowed in the same batch (consumed frames are
/// advanced out of `buf`).
fn scan(buf: &mut BytesMut, out: &mut BytesMut, st: &mut SessionState, ready: &Notify) -> Scan {
    let mut off = 0;
    loop {
        let total = match protocol::peek_frame_len(&buf[off..], MAX_SERVER_MESSAGE) {
            Ok(Some(n)) => n,
            Ok(None) => return Scan::Relay(off),
            Err(e) => return Scan::BadFrame(e, off),
        };
        let tag = buf[off];
        let body = &buf[off + 5..off + total];
        if st.swallowing() {
            // Replies to the guard's own Query: not relayed.
            match tag {
                b'Z' => {
                    st.on_ready(body.first().copied().unwrap_or(b'I'));
                    ready.notify_waiters();
                }
                b'E' => tracing::warn!(
                    error = ?String::from_utf8_lossy(body),
                    "setting zoneguard.* session variables failed"
                ),
                _ => {}
            }
            out.extend_from_slice(&buf[..off]);
            buf.advance(off + total);
            off = 0;
            continue;
        }
        match tag {
            b'R' if !st.authenticated => {
                if let Some(ours) = crate::tls::strip_channel_binding(body) {
                    out.extend_from_slice(&buf[..off]);
                    out.extend_from_slice(&ours);
                    buf.advance(off + total);
                    off = 0;
                    continue;
                }
            }
            b'S' => {
                if let Some(fatal) = parameter(st, body) {
                    return Scan::Refused(fatal, off);
                }
            }
            b'E' => {
                st.on_error(is_fatal(body));
                if st.rejections.has_pending() {
                    if let Some(ours) = st.rejections.rewrite_error(&buf[off..off + total]) {
                        out.extend_from_slice(&buf[..off]);
                        out.extend_from_slice(&ours);
                        buf.advance(off + total);
                        off = 0;
                        continue;
                    }
                }
            }
            b'1' => st.on_parse_complete(),
            b'3' => st.on_close_complete(),
            b'C' => st.on_command_complete(body.strip_suffix(&[0]).unwrap_or(body)),
            b'Z' => {
                st.on_ready(body.first().copied().unwrap_or(b'I'));
                ready.notify_waiters();
            }
            _ => {}
        }
        off += total;
    }
}
