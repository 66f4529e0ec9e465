//! A throwaway PostgreSQL cluster for the demo, the tests and the
//! benchmarks: `initdb` into a temporary directory, `pg_ctl start` on a free
//! loopback port, stopped (`-m immediate`) when dropped or when the process
//! that started it dies. Works as root by running the server binaries as the
//! `postgres` OS user, since initdb refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL (e.g. `apt-get install -y postgresql`) or set ZONEGUARD_PG_BIN to their directory")]
    NoBinaries,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The seed's schema: the legacy zone and the new zone of the DMS document.
pub const SCHEMA_SQL: &str = concat!(
    include_str!("sql/legacy.sql"),
    "\n",
    include_str!("sql/new_zone.sql")
);
/// A small set of sample rows for the demo and the tests.
pub const SAMPLE_SQL: &str = include_str!("sql/sample.sql");

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<String>,
    watchdog: Option<std::process::Child>,
}

/// Finds the directory with `initdb` and `pg_ctl`.
pub fn find_bindir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("ZONEGUARD_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
}

fn is_root() -> bool {
    // SAFETY-free way: the effective uid of this process from /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A free loopback TCP port (bound, then released).
/// A temporary directory for a server, owned by the user it runs as.
fn server_dir(prefix: &str, run_as: Option<&str>) -> Result<tempfile::TempDir, ClusterError> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    if let Some(user) = run_as {
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{user}:"))
            .arg(dir.path())
            .status()?;
        if !st.success() {
            return Err(ClusterError::Command {
                what: "chown".into(),
                detail: format!("{st}"),
            });
        }
    }
    Ok(dir)
}

/// Waits until something listens on 127.0.0.1:`port` (a server the caller
/// started), at most 20 s; panics otherwise (benchmarks and tests).
pub fn wait_for_port(port: u16) {
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "nothing listens on port {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Cluster {
    /// Creates and starts a cluster. Roles: the superuser `postgres`, and
    /// password roles for the authentication tests (`scram_user` with
    /// SCRAM-SHA-256, `md5_user` with md5, both password `secret`); every
    /// other local connection is trusted.
    pub fn start() -> Result<Cluster, ClusterError> {
        Self::start_with("")
    }

    /// [`Cluster::start`], with extra server options (`-c name=value ...`).
    pub fn start_with(extra_options: &str) -> Result<Cluster, ClusterError> {
        let bin = find_bindir().ok_or(ClusterError::NoBinaries)?;
        let run_as = is_root().then(|| "postgres".to_string());
        let dir = server_dir("zoneguard-pg-", run_as.as_deref())?;
        let mut cluster = Cluster {
            bin,
            port: 0,
            run_as,
            watchdog: None,
            dir,
        };
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let hba = "local all all trust\n\
                   host all scram_user 127.0.0.1/32 scram-sha-256\n\
                   host all scram_user ::1/128 scram-sha-256\n\
                   host all md5_user 127.0.0.1/32 md5\n\
                   host all md5_user ::1/128 md5\n\
                   host all all 127.0.0.1/32 trust\n\
                   host all all ::1/128 trust\n\
                   host replication all 127.0.0.1/32 trust\n";
        std::fs::write(data.join("pg_hba.conf"), hba)?;
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            let opts = format!(
                "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=700 -c shared_buffers=128MB -c max_prepared_transactions=10 {extra_options}",
                cluster.dir.path().display()
            );
            let log = cluster.dir.path().join("postgres.log");
            match cluster.pg_ctl_start(&opts) {
                Ok(()) => {
                    cluster.port = port;
                    last_err = None;
                    break;
                }
                Err(e) => {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    last_err = Some(ClusterError::Command {
                        what: "pg_ctl start".into(),
                        detail: format!("{e}\n{log}"),
                    });
                }
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        cluster.watchdog = cluster.spawn_watchdog().ok();
        cluster.psql("postgres", "CREATE ROLE scram_user LOGIN SUPERUSER; CREATE ROLE md5_user LOGIN SUPERUSER; SET password_encryption = 'scram-sha-256'; ALTER ROLE scram_user PASSWORD 'secret'; SET password_encryption = 'md5'; ALTER ROLE md5_user PASSWORD 'secret'; CREATE ROLE app LOGIN SUPERUSER; CREATE ROLE legacy_app LOGIN SUPERUSER; CREATE ROLE zoneguard_catalog LOGIN;")?;
        Ok(cluster)
    }

    /// Starts a streaming replica of this cluster (pg_basebackup -R) on a
    /// port of its own, for tests of replication-aware behaviour. It reports
    /// its progress every second, so the primary's replay_lag is current.
    pub fn start_standby(&self) -> Result<Cluster, ClusterError> {
        let dir = server_dir("zoneguard-standby-", self.run_as.as_deref())?;
        let mut standby = Cluster {
            bin: self.bin.clone(),
            port: 0,
            run_as: self.run_as.clone(),
            watchdog: None,
            dir,
        };
        let data = standby.data_dir();
        standby.run(
            "pg_basebackup",
            &[
                "-D",
                data.to_str().unwrap(),
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
            ],
        )?;
        let port = free_port()?;
        let opts = format!(
            // A hot standby needs at least the primary's connection limits.
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c hot_standby=on -c wal_receiver_status_interval=1 -c max_connections=700 -c max_prepared_transactions=10",
            standby.dir.path().display()
        );
        standby.pg_ctl_start(&opts)?;
        standby.port = port;
        standby.watchdog = standby.spawn_watchdog().ok();
        Ok(standby)
    }

    /// `pg_ctl start` with these server options, waiting until it accepts
    /// connections; its log is `postgres.log` in the cluster's directory.
    fn pg_ctl_start(&self, options: &str) -> Result<(), ClusterError> {
        let data = self.data_dir();
        let log = self.dir.path().join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    /// A process that stops the cluster when this process dies, even on a
    /// panic or abort, so no server outlives its test binary. It runs in a
    /// process group of its own, so that a signal to ours (Ctrl-C, `timeout`)
    /// does not take it down before it has done its job.
    fn spawn_watchdog(&self) -> std::io::Result<std::process::Child> {
        use std::os::unix::process::CommandExt;
        let stop = self.stop_command();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}",
            pid = std::process::id()
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    }

    fn stop_command(&self) -> String {
        let pg_ctl = self.bin.join("pg_ctl");
        let base = format!(
            "{} -D {} -m immediate stop",
            pg_ctl.display(),
            self.data_dir().display()
        );
        match &self.run_as {
            Some(u) => format!(
                "runuser -u {u} -- {base} >/dev/null 2>&1; rm -rf {}",
                self.dir.path().display()
            ),
            None => format!(
                "{base} >/dev/null 2>&1; rm -rf {}",
                self.dir.path().display()
            ),
        }
    }

    /// The data directory (server logs go to `log/` in it).
    pub fn data_path(&self) -> PathBuf {
        self.data_dir()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bindir(&self) -> &Path {
        &self.bin
    }

    /// The server's Unix-domain socket file (it also listens there).
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join(format!(".s.PGSQL.{}", self.port))
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A libpq URL for a direct connection to `db` as `user`.
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgresql://{user}@127.0.0.1:{}/{db}", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(u).arg("--").arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), ClusterError> {
        let out = self
            .command(program)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ClusterError::Command {
                what: program.to_string(),
                detail: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            })
        }
    }

    /// Runs SQL with psql as the superuser, stopping at the first error.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, ClusterError> {
        let psql = self.bin.join("psql");
        let psql = if psql.exists() {
            psql
        } else {
            PathBuf::from("psql")
        };
        let out = Command::new(psql)
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(ClusterError::Command {
                what: "psql".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }

    /// Starts a cluster holding database `name` with the seed's schema and
    /// sample data (the demo's and the backfill benchmark's start).
    pub fn start_seeded(name: &str) -> Result<Cluster, ClusterError> {
        let cluster = Cluster::start()?;
        cluster.create_seeded_db(name)?;
        Ok(cluster)
    }

    /// Creates database `name` holding the seed's schema and sample data.
    pub fn create_seeded_db(&self, name: &str) -> Result<(), ClusterError> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        self.psql(name, SCHEMA_SQL)?;
        self.psql(name, SAMPLE_SQL)?;
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                self.data_dir().to_str().unwrap_or(""),
                "-m",
                "immediate",
                "stop",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}
