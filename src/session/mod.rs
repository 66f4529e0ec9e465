//! One client connection: the startup handshake, then two relays (client to
//! server in `client`, server to client in `server`) that frame messages,
//! judge what must be judged and pass everything else through as the bytes
//! that arrived.

mod client;
mod server;
pub(crate) mod state;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};

use crate::admission::{Slot, Ticket};
use crate::audit::{self, SessionInfo};
use crate::guard::Guard;
use crate::net;
use crate::protocol::{self, FirstPacket, ProtocolError, Severity, Startup};

pub async fn serve(guard: Arc<Guard>, client: net::Stream, peer: String, ticket: Ticket) {
    let timeout = Duration::from_secs(guard.settings.proxy.startup_timeout_secs);
    let evicted = ticket.evicted();
    let mut client = Some(client);
    let startup = tokio::select! {
        r = tokio::time::timeout(timeout, startup_phase(&guard, &mut client)) => r,
        _ = evicted => {
            tracing::debug!(?peer, "evicted before its startup packet");
            return;
        }
    };
    let startup = match startup {
        Err(_) => {
            tracing::debug!(?peer, "startup timed out");
            return;
        }
        Ok(Err(ProtocolError::BadLength { len, .. })) => {
            // As PostgreSQL does: no answer to a packet that cannot be a
            // startup packet (e.g. a regular message sent first).
            tracing::info!(?peer, len, "invalid length of startup packet");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(?peer, error = ?e, "bad startup");
            let msg = protocol::error_response(Severity::Fatal, "08P01", &e.to_string(), None);
            if let Some(c) = client.as_mut() {
                let _ = c.write_all(&msg).await;
            }
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(s))) => s,
    };
    let Some(mut client) = client else { return };
    if guard.tls.mode == crate::tls::ClientMode::Require && !client.is_tls() {
        // As PostgreSQL answers a hostssl-only pg_hba.conf.
        let msg = protocol::error_response(
            Severity::Fatal,
            "28000",
            &format!(
                "zoneguard accepts only TLS connections: user \"{}\", database \"{}\", no encryption",
                startup.user(),
                startup.database()
            ),
            Some("Connect with sslmode=require (or verify-ca / verify-full with the guard's CA)."),
        );
        let _ = client.write_all(&msg).await;
        return;
    }
    let info = SessionInfo {
        id: guard.next_session_id(),
        client_addr: peer,
        user: startup.user().to_string(),
        database: startup.database().to_string(),
        application_name: startup.param("application_name").unwrap_or("").to_string(),
    };
    let console = startup.database() == crate::admin::DATABASE;
    let Some(_slot) = guard.admission.slot(if console {
        Slot::Console
    } else {
        Slot::Database
    }) else {
        let msg = protocol::error_response(
            Severity::Fatal,
            "53300",
            "sorry, too many clients already",
            Some("zoneguard's [proxy] max_clients limit is reached."),
        );
        let _ = client.write_all(&msg).await;
        return;
    };
    if console {
        crate::admin::serve(guard, client, startup, info, ticket).await;
        return;
    }
    if let Some(mode) = replication_mode(&startup) {
        if !guard
            .runtime
            .load()
            .policy
            .options_for(&info.user)
            .replication
        {
            refuse_replication(&guard, &info, mode, &mut client).await;
            return;
        }
    }
    let upstream = match connect_upstream(&guard).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(session = info.id, error = %e, "upstream unreachable");
            let msg = protocol::error_response(
                Severity::Fatal,
                "08006",
                &format!(
                    "zoneguard could not connect to the database server at {}: {e}",
                    guard.upstream
                ),
                Some("Check that PostgreSQL is running and that [proxy] upstream in policy.toml points at it."),
            );
            let _ = client.write_all(&msg).await;
            return;
        }
    };
    tracing::debug!(session = info.id, user = ?info.user, db = ?info.database, "session start");
    let id = info.id;
    guard.clients_registry.lock().unwrap().insert(
        id,
        crate::guard::ClientEntry {
            user: info.user.clone(),
            database: info.database.clone(),
            application_name: info.application_name.clone(),
            client_addr: info.client_addr.clone(),
            connected_at: audit::now_rfc3339(),
        },
    );
    relay(guard.clone(), info, startup, client, upstream, ticket).await;
    guard.clients_registry.lock().unwrap().remove(&id);
}

/// Answers SSLRequest (`S` and a TLS handshake when the guard has a
/// certificate, else `N`) and GSSENCRequest (`N`), forwards a
/// CancelRequest, and returns the StartupMessage. `client` is replaced by
/// its TLS stream after a handshake, and is None when one failed.
async fn startup_phase(
    guard: &Guard,
    client: &mut Option<net::Stream>,
) -> Result<Option<Startup>, ProtocolError> {
    // Direct TLS (PostgreSQL 17's sslnegotiation=direct): the client starts
    // the handshake at once; it must then name the protocol by ALPN, as
    // PostgreSQL requires, so a TLS client of some other protocol is not
    // taken for a database client.
    if let (Some(net::Stream::Tcp(tcp)), Some(acceptor)) = (client.as_ref(), guard.tls.acceptor()) {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 1 && first[0] == crate::tls::TLS_HANDSHAKE {
            let plain = client.take().expect("matched above");
            *client = handshake(&acceptor, plain, true).await;
        }
    }
    loop {
        let Some(stream) = client.as_mut() else {
            return Ok(None);
        };
        match protocol::read_first_packet(stream).await? {
            None => return Ok(None),
            Some(FirstPacket::Ssl) => match guard.tls.acceptor() {
                Some(acceptor) if !stream.is_tls() => {
                    stream.write_all(b"S").await?;
                    // Nothing the client sent after its SSLRequest was
                    // read: the handshake starts at the next byte, so no
                    // plain text can be slipped in ahead of it.
                    let plain = client.take().expect("checked above");
                    *client = handshake(&acceptor, plain, false).await;
                }
                Some(_) => {
                    return Err(ProtocolError::Malformed(
                        "SSLRequest after the TLS handshake",
                    ))
                }
                None => stream.write_all(b"N").await?,
            },
            Some(FirstPacket::GssEnc) => stream.write_all(b"N").await?,
            Some(FirstPacket::Cancel(raw)) => {
                // Forwarded as is: BackendKeyData passed through unchanged,
                // so the key the client holds is the server's own.
                if let Ok(mut up) = connect_upstream(guard).await {
                    let _ = up.write_all(&raw).await;
                    let mut sink = [0u8; 1];
                    let _ = up.read(&mut sink).await;
                }
                return Ok(None);
            }
            Some(FirstPacket::Startup(s)) => return Ok(Some(s)),
        }
    }
}

/// A client's TLS handshake: its stream, or None (logged) when the handshake
/// fails or, for direct TLS (`need_alpn`), the client did not name the
/// protocol by ALPN.
async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    plain: net::Stream,
    need_alpn: bool,
) -> Option<net::Stream> {
    match acceptor.accept(plain).await {
        Ok(tls) if need_alpn && tls.get_ref().1.alpn_protocol() != Some(crate::tls::ALPN) => {
            tracing::info!("direct TLS without ALPN \"postgresql\" refused");
            None
        }
        Ok(tls) => Some(net::Stream::TlsServer(Box::new(tls))),
        Err(e) => {
            tracing::info!(error = %e, "TLS handshake with a client failed");
            None
        }
    }
}

/// The `replication` startup parameter, if it asks for a walsender: anything
/// PostgreSQL would not read as false (`database`, or a true boolean; an
/// invalid value is refused by the server anyway).
fn replication_mode(startup: &Startup) -> Option<&str> {
    let v = startup.param("replication")?;
    let lower = v.trim().to_ascii_lowercase();
    let off = ["false", "no", "off", "0"]
        .iter()
        .any(|f| !lower.is_empty() && f.starts_with(&lower) && lower != "o");
    (!off).then_some(v)
}

/// Refuses a replication connection the policy does not allow: audited,
/// and a FATAL naming the reason.
async fn refuse_replication(
    guard: &Guard,
    info: &SessionInfo,
    mode: &str,
    client: &mut net::Stream,
) {
    let message = format!(
        "replication connections are not allowed through zoneguard for role \"{}\"",
        info.user
    );
    let denial = crate::policy::Denial {
        operation: "REPLICATION".into(),
        table: None,
        zone: None,
        rule: "replication".into(),
        sqlstate: "42501",
        message: message.clone(),
        hint: String::new(),
        shadow: false,
    };
    guard.stats.count_rejection(&denial, &info.user);
    guard
        .audit
        .write(&audit::AuditRecord {
            time: audit::now_rfc3339(),
            event: "rejected",
            session_id: info.id,
            client_addr: info.client_addr.clone(),
            user: info.user.clone(),
            database: info.database.clone(),
            application_name: info.application_name.clone(),
            protocol: "startup",
            operation: "REPLICATION".into(),
            table: None,
            zone: None,
            rule: "replication".into(),
            sqlstate: "42501".into(),
            message: message.clone(),
            statement: format!("replication={mode}"),
            statement_truncated: false,
        })
        .await;
    let msg = protocol::error_response(
        Severity::Fatal,
        "42501",
        &message,
        Some("A walsender's commands (CREATE_REPLICATION_SLOT, DROP_REPLICATION_SLOT, BASE_BACKUP, ...) are not SQL and cannot be judged. Connect to PostgreSQL directly, or set replication = true for this role in policy.toml."),
    );
    let _ = client.write_all(&msg).await;
}

async fn connect_upstream(guard: &Guard) -> std::io::Result<net::Stream> {
    let timeout = Duration::from_secs(guard.settings.proxy.connect_timeout_secs);
    let r = guard.upstream.connect(timeout).await;
    if r.is_err() {
        guard
            .stats
            .upstream_connect_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    r
}

/// How the client-to-server half ended.
pub(crate) enum ClientEnd {
    /// Terminate, EOF or a broken socket: nothing more to tell the client.
    Gone,
    /// A protocol violation: the error was handed to the other half to send.
    Fatal,
}

async fn relay(
    guard: Arc<Guard>,
    info: SessionInfo,
    startup: Startup,
    client: net::Stream,
    mut upstream: net::Stream,
    ticket: Ticket,
) {
    if upstream.write_all(&startup.raw).await.is_err() {
        return;
    }
    // A client that asked for a newer protocol hears first that it is 3.0.
    let mut client = client;
    if let Some(v) = &startup.negotiate {
        if client.write_all(v).await.is_err() {
            return;
        }
    }
    let tls_both_sides = client.is_tls() && upstream.is_tls();
    // Owned halves of the concrete socket types: no lock between the halves.
    use net::Stream::{Tcp, Unix};
    match (client, upstream) {
        (Tcp(c), Tcp(u)) => {
            let ((cr, cw), (ur, uw)) = (c.into_split(), u.into_split());
            relay_halves(guard, info, ticket, tls_both_sides, cr, cw, ur, uw).await
        }
        (Tcp(c), Unix(u)) => {
            let ((cr, cw), (ur, uw)) = (c.into_split(), u.into_split());
            relay_halves(guard, info, ticket, tls_both_sides, cr, cw, ur, uw).await
        }
        (Unix(c), Tcp(u)) => {
            let ((cr, cw), (ur, uw)) = (c.into_split(), u.into_split());
            relay_halves(guard, info, ticket, tls_both_sides, cr, cw, ur, uw).await
        }
        (Unix(c), Unix(u)) => {
            let ((cr, cw), (ur, uw)) = (c.into_split(), u.into_split());
            relay_halves(guard, info, ticket, tls_both_sides, cr, cw, ur, uw).await
        }
        // TLS on either side: one stream, split by a lock.
        (c, u) => {
            let ((cr, cw), (ur, uw)) = (tokio::io::split(c), tokio::io::split(u));
            relay_halves(guard, info, ticket, tls_both_sides, cr, cw, ur, uw).await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn relay_halves<CR, CW, UR, UW>(
    guard: Arc<Guard>,
    info: SessionInfo,
    ticket: Ticket,
    tls_both_sides: bool,
    cr: CR,
    cw: CW,
    ur: UR,
    uw: UW,
) where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let state = Arc::new(Mutex::new(state::SessionState::new(&guard.nonce)));
    let ready = Arc::new(Notify::new());
    let (fatal_tx, fatal_rx) = oneshot::channel::<Bytes>();
    let mut c2s = client::ClientSide::new(guard.clone(), info, state.clone(), ready.clone());
    c2s.tls_both_sides = tls_both_sides;
    let c2s = c2s.run(cr, uw, fatal_tx);
    // The ticket goes with the server half, which drops it once the server
    // has authenticated the client; until then the session can be evicted.
    let shutdown = guard.shutdown.subscribe();
    let s2c = server::server_to_client(ur, cw, state, fatal_rx, ready, Some(ticket), shutdown);
    tokio::pin!(c2s, s2c);
    tokio::select! {
        // A fixed order: no random number drawn on every wake-up.
        biased;
        _ = &mut s2c => {}
        end = &mut c2s => {
            if let ClientEnd::Fatal = end {
                // Let the server half deliver the error, briefly.
                let _ = tokio::time::timeout(Duration::from_secs(5), s2c).await;
            }
        }
    }
}
