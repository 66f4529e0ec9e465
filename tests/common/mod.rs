//! Shared harness for the end-to-end suites: one throwaway PostgreSQL per
//! test binary (a fixture database cloned per test), and a real zoneguard
//! started in-process on port 0.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::net::TcpListener;
use tokio_postgres::{Client, NoTls};
use zoneguard::cluster::{Cluster, SAMPLE_SQL, SCHEMA_SQL};
use zoneguard::guard::Guard;
use zoneguard::policy;
use zoneguard::server;

pub const SHIPPED_POLICY: &str = include_str!("../../policy.toml");

pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let c = Cluster::start().expect("start a throwaway PostgreSQL");
        c.psql("postgres", "CREATE DATABASE fixture").unwrap();
        c.psql("fixture", SCHEMA_SQL).unwrap();
        c.psql("fixture", SAMPLE_SQL).unwrap();
        c
    })
}

/// A fresh database cloned from the fixture (schema + sample data).
pub fn fresh_db() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let c = cluster();
    let name = format!(
        "t{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    c.psql(
        "postgres",
        &format!("CREATE DATABASE {name} TEMPLATE fixture"),
    )
    .unwrap();
    name
}

pub struct TestGuard {
    pub addr: std::net::SocketAddr,
    pub guard: Arc<Guard>,
    pub audit_path: PathBuf,
    pub policy_path: PathBuf,
    /// Where the client socket is, when started with one.
    pub socket_dir: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestGuard {
    /// Starts a guard in front of the test cluster with the given policy text.
    pub async fn start(policy_text: &str) -> TestGuard {
        Self::start_with_upstream(policy_text, &cluster().addr()).await
    }

    pub async fn start_with_upstream(policy_text: &str, upstream: &str) -> TestGuard {
        Self::start_full(policy_text, upstream, false, None, &|_| {}).await
    }

    /// With its settings changed by `tune` after the harness's own (the
    /// harness caps client messages at 1 MiB).
    #[allow(dead_code)]
    pub async fn start_tuned(
        policy_text: &str,
        tune: &(dyn Fn(&mut policy::Settings) + Sync),
    ) -> TestGuard {
        Self::start_full(policy_text, &cluster().addr(), false, None, tune).await
    }

    /// Also listening on a Unix-domain socket in `socket_dir`.
    pub async fn start_with_unix_socket(policy_text: &str) -> TestGuard {
        Self::start_full(policy_text, &cluster().addr(), true, None, &|_| {}).await
    }

    /// With the switch state kept in database `state_db` of the test
    /// cluster (see [`state_db`]), as instance `instance`. Returns once the
    /// guard has tried to read it.
    pub async fn start_with_state(policy_text: &str, state_db: &str, instance: &str) -> TestGuard {
        Self::start_full(
            policy_text,
            &cluster().addr(),
            false,
            Some((state_db, instance)),
            &|_| {},
        )
        .await
    }

    async fn start_full(
        policy_text: &str,
        upstream: &str,
        unix: bool,
        state: Option<(&str, &str)>,
        tune: &(dyn Fn(&mut policy::Settings) + Sync),
    ) -> TestGuard {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, policy_text).unwrap();
        let (policy, mut settings) = policy::load(&path).expect("valid policy");
        settings.proxy.upstream = upstream.to_string();
        // The switch state database only where a test asks for one (its own
        // database, so that tests running at once do not share switches).
        settings.state.enabled = false;
        if let Some((db, instance)) = state {
            settings.state.enabled = true;
            settings.state.database = db.to_string();
            settings.state.instance = instance.to_string();
        }
        settings.proxy.max_message_bytes = 1 << 20;
        tune(&mut settings);
        let audit_path = dir.path().join("audit.jsonl");
        settings.audit.file = audit_path.display().to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let guard = Guard::new(policy, settings, Some(path.clone()))
            .await
            .unwrap();
        zoneguard::control::spawn_watchers(guard.clone());
        zoneguard::state::start(guard.clone()).await;
        let unix = unix.then(|| {
            zoneguard::net::bind_client_socket(dir.path(), addr.port())
                .unwrap()
                .0
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server::run_listeners(
            listener,
            unix,
            guard.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        TestGuard {
            addr,
            guard,
            audit_path,
            policy_path: path,
            socket_dir: dir.path().to_path_buf(),
            _dir: dir,
            stop: Some(tx),
        }
    }

    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgresql://{user}@127.0.0.1:{}/{db}", self.addr.port())
    }

    pub async fn connect(&self, user: &str, db: &str) -> Client {
        connect_url(&self.url(user, db)).await
    }

    /// The audit records written so far.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.audit_path)
    }
}

impl Drop for TestGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A new database of the test cluster holding the switch state schema, as
/// `zoneguard install-state` makes it.
pub fn state_db() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let c = cluster();
    let name = format!(
        "state{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    c.psql("postgres", &format!("CREATE DATABASE {name}"))
        .unwrap();
    c.psql(
        &name,
        &zoneguard::state::install_sql("zoneguard_state", None),
    )
    .unwrap();
    name
}

/// The guard's admin console, as the shipped demo admin.
pub async fn admin(g: &TestGuard) -> Client {
    connect_url(&format!(
        "postgresql://zgadmin:zgadmin@127.0.0.1:{}/zoneguard",
        g.addr.port()
    ))
    .await
}

/// The rows of a simple-query reply, as text.
pub fn rows(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The first audit record of `event`, waiting up to 3 s for it.
pub async fn audit_event(g: &TestGuard, event: &str) -> serde_json::Value {
    within(std::time::Duration::from_secs(3), || async {
        g.audit().iter().any(|r| r["event"] == event)
    })
    .await;
    g.audit()
        .into_iter()
        .find(|r| r["event"] == event)
        .expect("found above")
}

/// Polls until `f` holds, at most `limit`; returns how long it took.
pub async fn within<F, Fut>(limit: std::time::Duration, mut f: F) -> std::time::Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

pub async fn connect_url(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A direct connection to the test cluster, bypassing the guard.
pub async fn direct(db: &str) -> Client {
    connect_url(&cluster().url("postgres", db)).await
}

pub async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get::<_, i64>(0)
}

/// The SQLSTATE of an error, or panics if the result is not an error.
pub fn sqlstate<T: std::fmt::Debug>(r: Result<T, tokio_postgres::Error>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .as_db_error()
            .unwrap_or_else(|| panic!("not a database error: {e}"))
            .code()
            .code()
            .to_string(),
    }
}

pub fn db_error<T: std::fmt::Debug>(
    r: Result<T, tokio_postgres::Error>,
) -> tokio_postgres::error::DbError {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .as_db_error()
            .unwrap_or_else(|| panic!("not a database error: {e}"))
            .clone(),
    }
}

/// The legacy tables' contents, to prove nothing changed.
pub async fn legacy_snapshot(c: &Client) -> String {
    let row = c
        .query_one(
            "SELECT (SELECT string_agg(id || ':' || email, ',' ORDER BY id) FROM users) || '|' ||
                    (SELECT string_agg(id || ':' || status || ':' || amount, ',' ORDER BY id) FROM transactions) || '|' ||
                    (SELECT count(*) FROM user_assessments)::text",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

/// A Python interpreter with psycopg 3, installing it into a venv under
/// target/ when the system one lacks it (needs PyPI).
pub fn python_with_psycopg() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let ok = |py: &Path| {
            std::process::Command::new(py)
                .args(["-c", "import psycopg"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        let system = PathBuf::from("python3");
        if ok(&system) {
            return system;
        }
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv");
        let py = venv.join("bin/python");
        if !ok(&py) {
            let st = std::process::Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .expect("python3 -m venv");
            assert!(st.success(), "python3 -m venv failed");
            let st = std::process::Command::new(&py)
                .args(["-m", "pip", "install", "-q", "psycopg[binary]>=3.1"])
                .status()
                .expect("pip install psycopg");
            assert!(st.success(), "pip install psycopg failed");
        }
        py
    })
    .clone()
}

/// Runs psycopg's Python with these arguments, off the async threads;
/// asserts it exits 0 and returns what it printed.
pub async fn run_python(args: Vec<String>) -> String {
    let py = python_with_psycopg();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(py).args(&args).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub fn psql_bin() -> PathBuf {
    let p = cluster().bindir().join("psql");
    if p.exists() {
        p
    } else {
        PathBuf::from("psql")
    }
}

/// A raw protocol session as `app`, read up to the first ReadyForQuery.
pub async fn raw_session(g: &TestGuard, db: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let pkt = zoneguard::protocol::startup_message(&[("user", "app"), ("database", db)]);
    tokio::io::AsyncWriteExt::write_all(&mut s, &pkt)
        .await
        .unwrap();
    // Read until ReadyForQuery.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I']) {
        let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
            .await
            .unwrap();
        assert!(n > 0, "closed during startup");
        seen.extend_from_slice(&buf[..n]);
    }
    s
}

/// Reads from a raw session until a ReadyForQuery arrives; returns the bytes.
pub async fn read_until_ready(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(5).any(|w| w == [b'Z', 0, 0, 0, 5]) {
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(s, &mut buf),
        )
        .await
        .expect("no ReadyForQuery within 10 s")
        .unwrap();
        assert!(n > 0, "connection closed");
        seen.extend_from_slice(&buf[..n]);
    }
    seen
}

/// Encodes a frontend message.
pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}
