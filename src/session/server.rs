//! The server-to-client half of a session: relays the server's replies in
//! place, swaps marked errors for the guard's own, swallows the replies to
//! the guard's own queries, tracks ReadyForQuery, and ends the session if the
//! server reports standard_conforming_strings off.

use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};

use crate::protocol::{self, Severity};
use crate::reject::Rejections;

/// Largest message accepted from the server (PostgreSQL's own limit is 1 GB).
const MAX_SERVER_MESSAGE: usize = 1 << 30;

/// Whether a ParameterStatus body reports standard_conforming_strings off.
fn standard_strings_off(body: &[u8]) -> bool {
    let mut b = body;
    matches!(
        (protocol::take_cstr(&mut b), protocol::take_cstr(&mut b)),
        (Some(b"standard_conforming_strings"), Some(v)) if v.eq_ignore_ascii_case(b"off")
    )
}

pub(crate) async fn server_to_client<R, W>(
    mut ur: R,
    mut cw: W,
    rejections: Arc<Mutex<Rejections>>,
    mut fatal: oneshot::Receiver<Bytes>,
    ready: Arc<Notify>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out = BytesMut::new();
    loop {
        tokio::select! {
            biased;
            msg = &mut fatal => {
                if let Ok(msg) = msg {
                    let _ = cw.write_all(&msg).await;
                }
                let _ = cw.shutdown().await;
                return;
            }
            read = ur.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => {
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
        let scanned = scan(&mut buf, &mut out, &mut rejections.lock().unwrap(), &ready);
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
            Scan::StandardStringsOff(off) => {
                let msg = protocol::error_response(
                    Severity::Fatal,
                    "0A000",
                    "zoneguard requires standard_conforming_strings = on",
                    Some("With it off, backslashes in strings change where a string ends, and the guard could misread a statement. Set it back to on for this role and database."),
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

/// What [`scan`] found.
enum Scan {
    /// `buf[..n]` is to be relayed (after `out`, if `out` is not empty).
    Relay(usize),
    /// A malformed frame at `buf[n..]`.
    BadFrame(protocol::ProtocolError, usize),
    /// The frame at `buf[n..]` reports standard_conforming_strings off.
    StandardStringsOff(usize),
}

/// Walks the complete frames at the start of `buf`. Frames are inspected in
/// place; the bytes that pass through stay in `buf`, and are copied into
/// `out` only when a rejection's error is rewritten or a reply to the
/// guard's own query is swallowed in the same batch (consumed frames are
/// advanced out of `buf`).
fn scan(buf: &mut BytesMut, out: &mut BytesMut, r: &mut Rejections, ready: &Notify) -> Scan {
    let mut off = 0;
    loop {
        let total = match protocol::peek_frame_len(&buf[off..], MAX_SERVER_MESSAGE) {
            Ok(Some(n)) => n,
            Ok(None) => return Scan::Relay(off),
            Err(e) => return Scan::BadFrame(e, off),
        };
        let tag = buf[off];
        if r.swallowing() {
            // Replies to the guard's own Query: not relayed.
            match tag {
                b'Z' => {
                    r.on_ready();
                    ready.notify_waiters();
                }
                b'E' => tracing::warn!(
                    error = %String::from_utf8_lossy(&buf[off + 5..off + total]),
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
            b'S' if standard_strings_off(&buf[off + 5..off + total]) => {
                return Scan::StandardStringsOff(off)
            }
            b'E' if r.has_pending() => {
                if let Some(ours) = r.rewrite_error(&buf[off..off + total]) {
                    out.extend_from_slice(&buf[..off]);
                    out.extend_from_slice(&ours);
                    buf.advance(off + total);
                    off = 0;
                    continue;
                }
            }
            b'Z' => {
                r.on_ready();
                r.status = buf.get(off + 5).copied().unwrap_or(b'I');
                ready.notify_waiters();
            }
            _ => {}
        }
        off += total;
    }
}
