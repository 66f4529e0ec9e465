//! The accept loop: hands each connection to a session.

use std::future::Future;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};

use crate::guard::Guard;
use crate::net::Stream;

/// Accepts clients until `shutdown` completes. Takes an already-bound
/// listener, so tests bind port 0 and run the real server in-process.
pub async fn run(listener: TcpListener, guard: Arc<Guard>, shutdown: impl Future<Output = ()>) {
    run_listeners(listener, None, guard, shutdown).await
}

/// [`run`], also accepting clients on a Unix-domain socket.
pub async fn run_listeners(
    tcp: TcpListener,
    unix: Option<UnixListener>,
    guard: Arc<Guard>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = tcp.accept() => a.map(|(socket, peer)| {
                let _ = socket.set_nodelay(true);
                (Stream::Tcp(socket), peer.to_string())
            }),
            a = async { unix.as_ref().unwrap().accept().await }, if unix.is_some() => {
                a.map(|(socket, _)| (Stream::Unix(socket), "[local]".to_string()))
            }
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // A place among the unauthenticated (the oldest such connection
        // makes room at a cap); a session slot is taken after the startup
        // packet, when the guard knows whether it is a console login.
        let ticket = guard.admission.admit(&peer);
        tokio::spawn(crate::session::serve(guard.clone(), socket, peer, ticket));
    }
}
