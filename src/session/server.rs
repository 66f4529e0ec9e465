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
        // Frames are inspected in place; the bytes that pass through are
        // written straight from `buf`, copied into `out` only when a
        // rejection's error is rewritten in the same batch.
        let mut off = 0;
        loop {
            let total = match protocol::peek_frame_len(&buf[off..], MAX_SERVER_MESSAGE) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => {
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
            };
            let tag = buf[off];
            if rejections.lock().unwrap().swallowing() {
                // Replies to the guard's own Query: not relayed.
                match tag {
                    b'Z' => {
                        rejections.lock().unwrap().on_ready();
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
                b'E' => {
                    let mut r = rejections.lock().unwrap();
                    if r.has_pending() {
                        if let Some(ours) = r.rewrite_error(&buf[off..off + total]) {
                            out.extend_from_slice(&buf[..off]);
                            out.extend_from_slice(&ours);
                            buf.advance(off + total);
                            off = 0;
                            continue;
                        }
                    }
                }
                b'Z' => {
                    let mut r = rejections.lock().unwrap();
                    r.on_ready();
                    r.status = buf.get(off + 5).copied().unwrap_or(b'I');
                    drop(r);
                    ready.notify_waiters();
                }
                _ => {}
            }
            off += total;
        }
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
