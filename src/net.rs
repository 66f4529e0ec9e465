//! The guard's sockets: the upstream PostgreSQL server, over TCP
//! (`host:port`) or a Unix-domain socket (an absolute path), as libpq and
//! PgBouncer allow, and the optional Unix-domain socket clients on the same
//! machine connect to. A socket is cheaper than TCP: no TCP stack on the way
//! (see README, "Performance").

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// The port PostgreSQL's socket file is named after when `upstream` names a
/// directory (libpq's default).
const DEFAULT_PORT: u16 = 5432;

/// Where the upstream server is, as `[proxy] upstream` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `host:port`.
    Tcp(String),
    /// The socket file, e.g. `/var/run/postgresql/.s.PGSQL.5432`.
    Unix(PathBuf),
}

impl Endpoint {
    /// `host:port` is TCP; an absolute path is a Unix-domain socket: the
    /// socket file itself (`.../.s.PGSQL.5433`) or the directory holding it
    /// (then `.s.PGSQL.5432` in it, libpq's default port).
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        if s.starts_with('/') {
            let path = Path::new(s);
            let named_socket = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".s.PGSQL."));
            return Ok(Endpoint::Unix(if named_socket {
                path.to_path_buf()
            } else {
                path.join(format!(".s.PGSQL.{DEFAULT_PORT}"))
            }));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Endpoint::Tcp(s.to_string()))
            }
            _ => Err(format!(
                "{s:?} is neither host:port nor an absolute path to a Unix-domain socket (or its directory)"
            )),
        }
    }

    /// Connects, within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> io::Result<Stream> {
        let connect = async {
            Ok::<_, io::Error>(match self {
                Endpoint::Tcp(addr) => {
                    let s = TcpStream::connect(addr).await?;
                    s.set_nodelay(true)?;
                    Stream::Tcp(s)
                }
                Endpoint::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
            })
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))?
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => f.write_str(a),
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A connection: to the upstream server, or from a client.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A client's connection after the guard accepted its SSLRequest.
    TlsServer(Box<tokio_rustls::server::TlsStream<Stream>>),
    /// The connection to an upstream that accepted the guard's SSLRequest.
    TlsClient(Box<tokio_rustls::client::TlsStream<Stream>>),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::TlsServer(_) | Stream::TlsClient(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsServer(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsClient(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsServer(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsClient(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsServer(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsClient(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsServer(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsClient(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Binds the clients' Unix-domain socket `dir/.s.PGSQL.<port>`, named like
/// PostgreSQL's and PgBouncer's, so `psql -h dir -p port` finds it. A socket
/// file left by a guard that died is replaced; one that answers is in use
/// and refused. The file is readable and writable by everyone (as
/// PostgreSQL's default `unix_socket_permissions` 0777): authentication is
/// the server's.
pub fn bind_client_socket(
    dir: &Path,
    port: u16,
) -> io::Result<(tokio::net::UnixListener, PathBuf)> {
    let path = dir.join(format!(".s.PGSQL.{port}"));
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another server", path.display()),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
    Ok((listener, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_client_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let stale = std::os::unix::net::UnixListener::bind(dir.path().join(".s.PGSQL.7")).unwrap();
        drop(stale); // the file stays, nobody answers
        let (_listener, path) = bind_client_socket(dir.path(), 7).unwrap();
        assert_eq!(path, dir.path().join(".s.PGSQL.7"));
        let other = bind_client_socket(dir.path(), 7);
        assert_eq!(
            other.err().map(|e| e.kind()),
            Some(io::ErrorKind::AddrInUse)
        );
    }

    #[test]
    fn endpoints() {
        let tcp = |s: &str| Endpoint::Tcp(s.into());
        let unix = |s: &str| Endpoint::Unix(s.into());
        for (input, want) in [
            ("127.0.0.1:5432", Ok(tcp("127.0.0.1:5432"))),
            ("db.internal:6543", Ok(tcp("db.internal:6543"))),
            ("[::1]:5432", Ok(tcp("[::1]:5432"))),
            (
                "/var/run/postgresql",
                Ok(unix("/var/run/postgresql/.s.PGSQL.5432")),
            ),
            (
                "/var/run/postgresql/",
                Ok(unix("/var/run/postgresql/.s.PGSQL.5432")),
            ),
            ("/tmp/.s.PGSQL.5433", Ok(unix("/tmp/.s.PGSQL.5433"))),
        ] {
            assert_eq!(Endpoint::parse(input), want, "{input}");
        }
        for bad in ["localhost", "db:port", ":5432", "relative/dir", ""] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}

impl Endpoint {
    /// The password for `database` and `user` on this server in the
    /// passfile, as libpq looks it up (PGPASSFILE, else ~/.pgpass; lines
    /// `host:port:database:user:password`, `*` matches anything, `\` escapes;
    /// a Unix socket is host `localhost`). The file is ignored when group
    /// or others can read it, as libpq does.
    pub fn passfile_password(&self, database: &str, user: &str) -> Option<String> {
        let path = std::env::var_os("PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).ok()?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "passfile ignored: it is readable by group or others (chmod 0600)");
                return None;
            }
        }
        let text = std::fs::read_to_string(&path).ok()?;
        let (host, port) = match self {
            Endpoint::Tcp(addr) => {
                let (h, p) = addr.rsplit_once(':').unwrap_or((addr, "5432"));
                (h.trim_matches(['[', ']']).to_string(), p.to_string())
            }
            Endpoint::Unix(path) => {
                let port = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix(".s.PGSQL."))
                    .unwrap_or("5432")
                    .to_string();
                ("localhost".to_string(), port)
            }
        };
        passfile_lookup(&text, &[&host, &port, database, user])
    }
}

/// The password of the first passfile line whose four fields match `want`.
fn passfile_lookup(text: &str, want: &[&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::with_capacity(5);
        let mut field = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => field.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        fields.push(field);
        if fields.len() == 5
            && fields[..4]
                .iter()
                .zip(want)
                .all(|(f, w)| f == "*" || f == w)
        {
            return fields.pop();
        }
    }
    None
}

#[cfg(test)]
mod passfile_tests {
    use super::passfile_lookup;

    #[test]
    fn the_first_matching_line_wins_with_wildcards_and_escapes() {
        let text = "# comment\nother:5432:*:*:no\n127.0.0.1:6000:postgres:zoneguard_state:s\\:ecret\\\\\n*:*:*:*:fallback\n";
        assert_eq!(
            passfile_lookup(text, &["127.0.0.1", "6000", "postgres", "zoneguard_state"]).as_deref(),
            Some("s:ecret\\")
        );
        assert_eq!(
            passfile_lookup(text, &["127.0.0.1", "6001", "postgres", "x"]).as_deref(),
            Some("fallback")
        );
        assert_eq!(passfile_lookup("a:b:c:d\n", &["a", "b", "c", "d"]), None);
    }
}
