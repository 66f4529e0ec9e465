//! TLS on both sides: psql (libpq) to the guard with sslmode=require and
//! verify-full against a CA the test makes, the guard to a PostgreSQL with
//! ssl=on (pg_stat_ssl shows it), host name checks, require modes, channel
//! binding never offered, cancel requests, certificate reload.

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use zoneguard::cluster::Cluster;

/// A CA and a certificate it signed, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, and a certificate for `names` (host names or IP addresses).
    fn new(names: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "zoneguard test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.crt"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Readable by the `postgres` OS user the test cluster runs as (the
    /// key 0600, owned by it, as PostgreSQL insists).
    fn give_to_postgres(&self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let uid = |flag: &str| -> Option<u32> {
            let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        if let (Some(u), Some(g)) = (uid("-u"), uid("-g")) {
            for f in ["server.crt", "server.key", "ca.crt"] {
                let _ = std::os::unix::fs::chown(self.path(f), Some(u), Some(g));
            }
        }
        std::fs::set_permissions(
            self.path("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
}

/// A PostgreSQL with ssl=on (its certificate names `localhost`), shared by
/// this file's tests.
fn tls_cluster() -> &'static (Cluster, Pki) {
    static C: OnceLock<(Cluster, Pki)> = OnceLock::new();
    C.get_or_init(|| {
        let pki = Pki::new(&["localhost"]);
        pki.give_to_postgres();
        let opts = format!(
            "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            pki.path("server.crt").display(),
            pki.path("server.key").display()
        );
        let c = Cluster::start_with(&opts).expect("a PostgreSQL with ssl=on");
        (c, pki)
    })
}

/// The shipped policy with extra `[proxy]` keys and a `[tls]` section.
fn policy(proxy: &str, tls: &str) -> String {
    format!(
        "{}\n[tls]\n{tls}\n",
        SHIPPED_POLICY.replacen("[proxy]\n", &format!("[proxy]\n{proxy}\n"), 1)
    )
}

fn client_tls(pki: &Pki, mode: &str) -> String {
    format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\nclient_mode = \"{mode}\"",
        pki.path("server.crt").display(),
        pki.path("server.key").display()
    )
}

/// psql with a libpq connection string; (success, stdout, stderr).
fn psql(conninfo: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new(psql_bin())
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-c",
            sql,
        ])
        .env_remove("PGSSLMODE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn conn(host: &str, g: &TestGuard, user: &str, db: &str, extra: &str) -> String {
    format!(
        "host={host} port={} user={user} dbname={db} connect_timeout=5 {extra}",
        g.addr.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connect_with_sslmode_require_and_verify_full() {
    let pki = Pki::new(&["localhost"]);
    let db = fresh_db();
    let g = TestGuard::start(&policy("", &client_tls(&pki, "allow"))).await;
    let ca = pki.path("ca.crt").display().to_string();

    let users = count(&direct(&db).await, "SELECT count(*) FROM users").await;
    let (ok, out, err) = psql(
        &conn("127.0.0.1", &g, "app", &db, "sslmode=require"),
        "SELECT count(*) FROM users",
    );
    assert!(ok, "{err}");
    assert_eq!(out, users.to_string());
    // Judged as ever over TLS.
    let (ok, _, err) = psql(
        &conn("127.0.0.1", &g, "app", &db, "sslmode=require"),
        "DELETE FROM users",
    );
    assert!(!ok && err.contains("not allowed"), "{err}");

    let (ok, _, err) = psql(
        &conn(
            "localhost",
            &g,
            "app",
            &db,
            &format!("sslmode=verify-full sslrootcert={ca}"),
        ),
        "SELECT 1",
    );
    assert!(ok, "verify-full with the right name: {err}");
    // The certificate names localhost, not 127.0.0.1.
    let (ok, _, err) = psql(
        &conn(
            "127.0.0.1",
            &g,
            "app",
            &db,
            &format!("sslmode=verify-full sslrootcert={ca}"),
        ),
        "SELECT 1",
    );
    assert!(!ok && err.contains("does not match host name"), "{err}");
    // allow: plain text still works, and the console over TLS too.
    let (ok, _, err) = psql(
        &conn("127.0.0.1", &g, "app", &db, "sslmode=disable"),
        "SELECT 1",
    );
    assert!(ok, "{err}");
    let (ok, out, err) = psql(
        &conn(
            "127.0.0.1",
            &g,
            "zgadmin",
            "zoneguard",
            "sslmode=require password=zgadmin",
        ),
        "SHOW MODE",
    );
    assert!(ok && out.contains("enforce"), "{out} {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_require_refuses_plain_text_with_a_clear_fatal() {
    let pki = Pki::new(&["localhost"]);
    let db = fresh_db();
    let g = TestGuard::start(&policy("", &client_tls(&pki, "require"))).await;
    let (ok, _, err) = psql(
        &conn("127.0.0.1", &g, "app", &db, "sslmode=disable"),
        "SELECT 1",
    );
    assert!(!ok);
    assert!(
        err.contains("zoneguard accepts only TLS connections"),
        "{err}"
    );
    let (ok, _, err) = psql(
        &conn("127.0.0.1", &g, "app", &db, "sslmode=require"),
        "SELECT 1",
    );
    assert!(ok, "{err}");
    // A certificate that is not there at start is an error naming it.
    let bad = policy(
        "",
        "cert_file = \"/nonexistent/server.crt\"\nkey_file = \"/nonexistent/server.key\"",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, bad).unwrap();
    let (p, s) = zoneguard::policy::load(&path).unwrap();
    let e = zoneguard::guard::Guard::new(p, s, None)
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("/nonexistent/server.crt"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_still_reaches_the_server_over_tls() {
    let pki = Pki::new(&["localhost"]);
    let db = fresh_db();
    let g = TestGuard::start(&policy("", &client_tls(&pki, "require"))).await;
    let child = Command::new(psql_bin())
        .args([
            "-X",
            "-d",
            &conn("127.0.0.1", &g, "app", &db, "sslmode=require"),
            "-c",
            "SELECT pg_sleep(60)",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the sleep runs, then interrupt psql: it sends a
    // CancelRequest on a new connection.
    let d = direct(&db).await;
    within(Duration::from_secs(10), || async {
        count(
            &d,
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'",
        )
        .await
            == 1
    })
    .await;
    let started = Instant::now();
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("canceling statement due to user request"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_talks_tls_to_an_upstream_with_ssl_on() {
    let (c, pki) = tls_cluster();
    let ca = pki.path("ca.crt").display().to_string();
    let probe = "SELECT ssl::text || ' ' || version FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    for (mode, host) in [
        ("require", "127.0.0.1"),
        ("verify-ca", "127.0.0.1"),
        ("verify-full", "localhost"),
    ] {
        let upstream = format!("{host}:{}", c.port());
        let g = TestGuard::start_with_upstream(
            &policy(
                &format!("upstream_tls = \"{mode}\"\nupstream_ca_file = \"{ca}\""),
                "",
            ),
            &upstream,
        )
        .await;
        let (ok, out, err) = psql(&conn("127.0.0.1", &g, "app", "postgres", ""), probe);
        assert!(ok, "{mode}: {err}");
        assert!(out.starts_with("true TLSv1.3"), "{mode}: {out}");
    }
    // verify-full checks the name: the certificate says localhost.
    let g = TestGuard::start_with_upstream(
        &policy(
            &format!("upstream_tls = \"verify-full\"\nupstream_ca_file = \"{ca}\""),
            "",
        ),
        &c.addr(),
    )
    .await;
    let (ok, _, err) = psql(&conn("127.0.0.1", &g, "app", "postgres", ""), "SELECT 1");
    assert!(!ok, "a certificate for another name must be refused");
    assert!(err.contains("certificate"), "{err}");
    // require against a server without TLS: refused, not silently plain.
    let g = TestGuard::start(&policy("upstream_tls = \"require\"", "")).await;
    let (ok, _, err) = psql(&conn("127.0.0.1", &g, "app", "postgres", ""), "SELECT 1");
    assert!(!ok && err.contains("does not support TLS"), "{err}");
    // prefer (the default) against it: plain text.
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let (ok, _, err) = psql(&conn("127.0.0.1", &g, "app", "postgres", ""), "SELECT 1");
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_channel_binding_is_never_offered_through_the_guard() {
    // TLS on both sides: the server offers SCRAM-SHA-256-PLUS to the guard;
    // a client on TLS choosing it would bind to the guard's certificate and
    // fail, so it is stripped from the offer.
    let (c, pki) = tls_cluster();
    let g = TestGuard::start_with_upstream(
        &policy("upstream_tls = \"require\"", &client_tls(pki, "allow")),
        &c.addr(),
    )
    .await;
    let scram = |extra: &str| {
        psql(
            &conn(
                "127.0.0.1",
                &g,
                "scram_user",
                "postgres",
                &format!("password=secret {extra}"),
            ),
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
    };
    let (ok, out, err) = scram("sslmode=require channel_binding=disable");
    assert!(ok, "{err}");
    assert_eq!(out, "t", "TLS to the server too");
    // A plain-text client does not expect binding: it logs in.
    let (ok, _, err) = scram("sslmode=disable");
    assert!(ok, "{err}");
    // A client that insists on channel binding is told it is not offered
    // (it would have chosen SCRAM-SHA-256-PLUS and failed at the server).
    let (ok, _, err) = scram("sslmode=require channel_binding=require");
    assert!(!ok && err.contains("channel binding"), "{err}");
    // libpq's default (prefer) on TLS says "I could bind": the server
    // would call that a downgrade; the guard says what to do instead.
    let (ok, _, err) = scram("sslmode=require");
    assert!(!ok && err.contains("channel_binding=disable"), "{err}");
    // With plain text to the server, the same client logs in.
    let g2 = TestGuard::start(&policy("", &client_tls(pki, "allow"))).await;
    let (ok, _, err) = psql(
        &conn(
            "127.0.0.1",
            &g2,
            "scram_user",
            "postgres",
            "password=secret sslmode=require",
        ),
        "SELECT 1",
    );
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_sighup_without_dropping_sessions() {
    let pki = Pki::new(&["localhost"]);
    let db = fresh_db();
    let g = TestGuard::start(&policy("", &client_tls(&pki, "require"))).await;
    // A session that stays open across the reload.
    let mut held = Command::new(psql_bin())
        .args([
            "-X",
            "-A",
            "-t",
            "-d",
            &conn("127.0.0.1", &g, "app", &db, "sslmode=require"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = held.stdin.take().unwrap();
    use std::io::Write;
    writeln!(stdin, "SELECT 'before';").unwrap();

    // New certificate, from a new CA, in place of the old files.
    let next = Pki::new(&["localhost"]);
    for f in ["server.crt", "server.key"] {
        std::fs::copy(next.path(f), pki.path(f)).unwrap();
    }
    let console = conn(
        "127.0.0.1",
        &g,
        "zgadmin",
        "zoneguard",
        "sslmode=require password=zgadmin",
    );
    let (ok, _, err) = psql(&console, "RELOAD");
    assert!(ok, "{err}");
    let new_ca = next.path("ca.crt").display().to_string();
    let old_ca = pki.path("ca.crt").display().to_string();
    let verify = |ca: &str| {
        psql(
            &conn(
                "localhost",
                &g,
                "app",
                &db,
                &format!("sslmode=verify-full sslrootcert={ca}"),
            ),
            "SELECT 1",
        )
        .0
    };
    assert!(verify(&new_ca), "new sessions get the new certificate");
    assert!(!verify(&old_ca));
    writeln!(stdin, "SELECT 'after';").unwrap();
    drop(stdin);
    let out = held.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("before") && text.contains("after"), "{text}");
    // A broken certificate file: refused, the one in force stays.
    std::fs::write(pki.path("server.crt"), "not a certificate").unwrap();
    let (ok, _, err) = psql(&console, "RELOAD");
    assert!(ok, "{err}");
    assert!(g.audit().iter().any(|r| r["event"] == "tls_reload_refused"));
    assert!(verify(&new_ca));
}

/// tokio-postgres over rustls, trusting `ca` and offering ALPN
/// "postgresql" (what PostgreSQL 17 clients send).
mod pgtls {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
    use tokio_rustls::rustls;

    #[derive(Clone)]
    pub struct Connector(Arc<rustls::ClientConfig>);

    impl Connector {
        pub fn new(ca: &std::path::Path) -> Connector {
            Connector(Arc::new(client_config(ca, true)))
        }
    }

    /// A rustls client trusting `ca`, offering ALPN "postgresql" or none.
    pub fn client_config(ca: &std::path::Path, alpn: bool) -> rustls::ClientConfig {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        if alpn {
            config.alpn_protocols = vec![b"postgresql".to_vec()];
        }
        config
    }

    pub struct Connect(Arc<rustls::ClientConfig>, String);
    pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

    impl<S> MakeTlsConnect<S> for Connector
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        type Stream = Stream<S>;
        type TlsConnect = Connect;
        type Error = std::io::Error;
        fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, std::io::Error> {
            Ok(Connect(self.0.clone(), domain.to_string()))
        }
    }

    impl<S> TlsConnect<S> for Connect
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        type Stream = Stream<S>;
        type Error = std::io::Error;
        type Future = Pin<Box<dyn Future<Output = std::io::Result<Stream<S>>> + Send>>;
        fn connect(self, stream: S) -> Self::Future {
            Box::pin(async move {
                let name = rustls_pki_types::ServerName::try_from(self.1)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(self.0)
                    .connect(name, stream)
                    .await?;
                Ok(Stream(tls))
            })
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
        fn channel_binding(&self) -> ChannelBinding {
            ChannelBinding::none()
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_connects_with_sslrequest_and_with_direct_tls() {
    let pki = Pki::new(&["localhost"]);
    let db = fresh_db();
    let g = TestGuard::start(&policy("", &client_tls(&pki, "require"))).await;
    let tls = pgtls::Connector::new(&pki.path("ca.crt"));
    for direct in [false, true] {
        let mut config: tokio_postgres::Config = format!(
            "host=localhost port={} user=app dbname={db} sslmode=require",
            g.addr.port()
        )
        .parse()
        .unwrap();
        if direct {
            config.ssl_negotiation(tokio_postgres::config::SslNegotiation::Direct);
        }
        let (client, conn) = config
            .connect(tls.clone())
            .await
            .unwrap_or_else(|e| panic!("direct={direct}: {e}"));
        tokio::spawn(conn);
        let n: i64 = client
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .unwrap()
            .get(0);
        assert!(n > 0);
        assert_eq!(
            sqlstate(client.batch_execute("DELETE FROM users").await),
            "42501",
            "judged as ever (direct={direct})"
        );
    }
    // Direct TLS from a client that does not name the protocol: refused
    // (as PostgreSQL 17 refuses it), not taken for a database client.
    let mut raw = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let plain = pgtls::client_config(&pki.path("ca.crt"), false);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(plain))
        .connect(name, &mut raw)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = s
        .write_all(&zoneguard::protocol::startup_message(&[
            ("user", "app"),
            ("database", &db),
        ]))
        .await;
    let mut buf = [0u8; 1];
    let n = s.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
}
