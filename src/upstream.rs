//! The upstream server as the guard reaches it: its address, TLS to it,
//! and the guard's own connections to it (catalog reader, switch state).

use std::io;
use std::time::Duration;

use crate::net::{Endpoint, Stream};

/// Why one of the guard's own upstream connections failed.
#[derive(Debug, thiserror::Error)]
pub enum OwnConnectionError {
    #[error("could not reach the database server: {0}")]
    Connect(#[from] io::Error),
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("timed out")]
    Timeout,
}

/// Who one of the guard's own connections (the catalog reader, the switch
/// state) logs in as.
pub struct Login<'a> {
    pub user: &'a str,
    /// Empty: the passfile's (PGPASSFILE, else ~/.pgpass), if it has one.
    pub password: &'a str,
    pub database: &'a str,
    pub application_name: &'a str,
}

/// The upstream server and how to talk TLS to it.
#[derive(Clone)]
pub struct Upstream {
    pub endpoint: Endpoint,
    pub tls: std::sync::Arc<crate::tls::UpstreamTls>,
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.endpoint.fmt(f)
    }
}

impl Upstream {
    /// `[proxy] upstream`, `upstream_tls` and `upstream_ca_file`, checked.
    pub fn from_settings(proxy: &crate::policy::ProxySettings) -> Result<Upstream, String> {
        let endpoint =
            Endpoint::parse(&proxy.upstream).map_err(|e| format!("[proxy] upstream: {e}"))?;
        let tls =
            crate::tls::UpstreamTls::new(&proxy.upstream_tls, &proxy.upstream_ca_file, &endpoint)
                .map_err(|e| e.to_string())?;
        Ok(Upstream {
            endpoint,
            tls: std::sync::Arc::new(tls),
        })
    }

    /// Without TLS (tests and tools).
    pub fn plain(endpoint: Endpoint) -> Upstream {
        Upstream {
            endpoint,
            tls: std::sync::Arc::new(crate::tls::UpstreamTls::disabled()),
        }
    }

    /// Connects within `timeout`, and negotiates TLS as configured.
    pub async fn connect(&self, timeout: Duration) -> io::Result<Stream> {
        let stream = self.endpoint.connect(timeout).await?;
        tokio::time::timeout(timeout, self.tls.negotiate(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS negotiation timed out"))?
    }

    /// Opens one of the guard's own connections, within twice `timeout`.
    /// Notifications (after a LISTEN) go to `on_notify(channel, payload)`, and
    /// `on_notify("", "")` says the connection has ended;
    /// the connection lives as long as the client.
    pub async fn own_connection(
        &self,
        login: &Login<'_>,
        timeout: Duration,
        on_notify: impl Fn(&str, &str) + Send + 'static,
    ) -> Result<tokio_postgres::Client, OwnConnectionError> {
        let work = async {
            let stream = self.connect(timeout).await?;
            let mut config = tokio_postgres::Config::new();
            config
                .user(login.user)
                .dbname(login.database)
                .application_name(login.application_name);
            if !login.password.is_empty() {
                config.password(login.password);
            } else if let Some(p) = self.endpoint.passfile_password(login.database, login.user) {
                config.password(p);
            }
            let (client, mut connection) =
                config.connect_raw(stream, tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                while let Some(Ok(msg)) =
                    std::future::poll_fn(|cx| connection.poll_message(cx)).await
                {
                    if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                        on_notify(n.channel(), n.payload());
                    }
                }
                // The connection is gone: an empty channel says so.
                on_notify("", "");
            });
            Ok::<_, OwnConnectionError>(client)
        };
        tokio::time::timeout(timeout.max(Duration::from_secs(1)) * 2, work)
            .await
            .map_err(|_| OwnConnectionError::Timeout)?
    }
}
