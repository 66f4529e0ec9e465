//! End-to-end benchmark: pgbench against PostgreSQL directly, through
//! PgBouncer (session mode), through zoneguard (release binary, a child
//! process) and through a relay that only forwards bytes (the floor any
//! proxy pays on this machine), in interleaved rounds. Each proxy reaches
//! the server over TCP and over its Unix-domain socket; pgbench connects to
//! every target (direct included) over TCP, or with BENCH_CLIENT=unix over
//! each one's Unix-domain socket.
//!
//! `cargo bench --bench pgbench`. Environment: BENCH_SECONDS (per run,
//! default 5), BENCH_ROUNDS (default 3), BENCH_SCALE (default 10),
//! BENCH_IDLE (idle connections for the RSS probe, default 500),
//! BENCH_UPSTREAM (`tcp`, `unix` or `both`, default both),
//! BENCH_CLIENT (`tcp` or `unix`, default tcp),
//! BENCH_TLS=1 (pgbench reaches PgBouncer and zoneguard over TLS,
//! `sslmode=require`, with a certificate the bench makes; the floor relay,
//! which cannot terminate TLS, is left out; direct stays plain),
//! ZONEGUARD_BIN (another zoneguard binary, e.g. an older build),
//! ZONEGUARD_BASELINE_BIN (a second zoneguard binary run alongside as
//! `zg-before`, for before/after figures from the same run).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use zoneguard::cluster::{free_port, wait_for_port, Cluster};
use zoneguard::protocol;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// (utime, stime) of a process, in seconds.
fn cpu_secs(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat; index 11 and 12 after the command name.
    // Clock ticks: 100 per second on Linux.
    (t(11) / 100.0, t(12) / 100.0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

struct Target {
    name: &'static str,
    /// Where pgbench connects: 127.0.0.1, or a socket directory.
    host: String,
    /// How the proxy reaches the server ("-" for direct).
    upstream: &'static str,
    port: u16,
    /// The proxy's process, for CPU and RSS.
    pid: Option<u32>,
    /// pgbench connects with sslmode=require.
    tls: bool,
}

/// Where a proxy finds the server.
#[derive(Clone, Copy, PartialEq)]
enum Upstream {
    Tcp,
    Unix,
}

impl Upstream {
    fn name(self) -> &'static str {
        match self {
            Upstream::Tcp => "tcp",
            Upstream::Unix => "unix",
        }
    }
}

/// Set in the environment of the bench binary when it runs as the floor
/// relay: `LISTEN UPSTREAM` (an address, or a socket path).
const FLOOR_ENV: &str = "ZONEGUARD_BENCH_FLOOR_RELAY";

/// The floor: forwards bytes both ways and nothing else, on the same
/// runtime shape as zoneguard's default (one current-thread loop).
fn floor_relay(spec: &str) -> ! {
    let mut parts = spec.split(' ');
    let listen = parts.next().expect("LISTEN").to_string();
    let upstream = parts.next().expect("UPSTREAM").to_string();
    let socket = parts.next().map(str::to_string);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tcp = tokio::net::TcpListener::bind(&listen).await.unwrap();
        let unix = socket.map(|p| tokio::net::UnixListener::bind(p).unwrap());
        loop {
            let upstream = upstream.clone();
            tokio::select! {
                a = tcp.accept() => {
                    let (client, _) = a.unwrap();
                    let _ = client.set_nodelay(true);
                    tokio::spawn(forward(client, upstream));
                }
                a = async { unix.as_ref().unwrap().accept().await }, if unix.is_some() => {
                    tokio::spawn(forward(a.unwrap().0, upstream));
                }
            }
        }
    })
}

async fn forward<C>(mut client: C, upstream: String)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if upstream.starts_with('/') {
        let mut u = tokio::net::UnixStream::connect(&upstream).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client, &mut u).await;
    } else {
        let mut u = tokio::net::TcpStream::connect(&upstream).await.unwrap();
        let _ = u.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut u).await;
    }
}

fn start_floor(upstream: &str, unix_clients: bool) -> Spawned {
    let port = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = format!("127.0.0.1:{port} {upstream}");
    if unix_clients {
        spec.push_str(&format!(" {}/.s.PGSQL.{port}", dir.path().display()));
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .env(FLOOR_ENV, spec)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the floor relay");
    wait_for_port(port);
    Spawned { child, port, dir }
}

struct PgBouncer {
    child: Child,
    pid: u32,
    port: u16,
    /// Its files, and its client socket when it has one.
    dir: tempfile::TempDir,
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        let _ = self.child.wait();
    }
}

fn find_pgbouncer() -> Option<PathBuf> {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A certificate and key (PEM files in `dir`) for client-side TLS.
fn make_certificate(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.join("bench.crt"), dir.join("bench.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn start_pgbouncer(
    pg_port: u16,
    socket_dir: Option<&std::path::Path>,
    unix_clients: bool,
    tls: bool,
) -> Option<PgBouncer> {
    let bin = find_pgbouncer().or_else(|| {
        eprintln!("pgbouncer not found: trying apt-get install -y pgbouncer");
        let _ = Command::new("apt-get")
            .args(["install", "-y", "pgbouncer"])
            .stdout(Stdio::null())
            .status();
        find_pgbouncer()
    })?;
    let dir = tempfile::Builder::new().prefix("zg-pgb-").tempdir().ok()?;
    let port = free_port().ok()?;
    let d = dir.path().display();
    std::fs::write(dir.path().join("userlist.txt"), "\"postgres\" \"\"\n").ok()?;
    let host = socket_dir
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let listen_dir = if unix_clients {
        d.to_string()
    } else {
        String::new()
    };
    let tls_lines = if tls {
        let (c, k) = make_certificate(dir.path());
        format!(
            "client_tls_sslmode = prefer\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
            c.display(),
            k.display()
        )
    } else {
        String::new()
    };
    let ini = format!(
        "[databases]\nbench = host={host} port={pg_port} dbname=bench\n\n[pgbouncer]\n{tls_lines}\
         listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir = {listen_dir}\n\
         auth_type = trust\nauth_file = {d}/userlist.txt\npool_mode = session\n\
         max_client_conn = 2000\ndefault_pool_size = 650\nlogfile = {d}/pgbouncer.log\n\
         pidfile = {d}/pgbouncer.pid\nignore_startup_parameters = extra_float_digits\n"
    );
    let ini_path = dir.path().join("pgbouncer.ini");
    std::fs::write(&ini_path, ini).ok()?;
    let mut cmd = if is_root() {
        let _ = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(dir.path())
            .status();
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    cmd.arg(&ini_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().ok()?;
    let pid = child.id();
    wait_for_port(port);
    Some(PgBouncer {
        child,
        pid,
        port,
        dir,
    })
}

/// A proxy the bench started as its child (the floor relay or zoneguard);
/// killed when dropped.
struct Spawned {
    child: Child,
    port: u16,
    /// Its files, and its client socket when it has one.
    dir: tempfile::TempDir,
}

impl Spawned {
    fn target(&self, name: &'static str, upstream: Upstream, host: String) -> Target {
        Target {
            name,
            host,
            upstream: upstream.name(),
            port: self.port,
            pid: Some(self.child.id()),
            tls: false,
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_zoneguard(upstream: &str, unix_clients: bool, tls: bool, bin: Option<PathBuf>) -> Spawned {
    let bin = bin.unwrap_or_else(|| {
        std::env::var("ZONEGUARD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_BIN_EXE_zoneguard")))
    });
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    // pgbench's tables form a writable zone, so TPC-B's writes are allowed;
    // every statement is still classified and judged.
    let policy = format!(
        r#"[proxy]
listen = "127.0.0.1:{port}"
unix_socket_dir = "{socket_dir}"
upstream = "{upstream}"
max_clients = 2000

[audit]
file = "{audit}"

[zones.legacy]
tables = ["users", "transactions"]

[zones.bench]
tables = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]

[[rules]]
name = "legacy-read-only"
zone = "legacy"
allow = ["read"]

[[rules]]
name = "bench-read-write"
zone = "bench"
allow = ["all"]

[[rules]]
name = "unlisted-read-only"
zone = "unlisted"
allow = ["read"]

[defaults]
allow = ["read"]
"#,
        audit = dir.path().join("audit.jsonl").display(),
        socket_dir = if unix_clients {
            dir.path().display().to_string()
        } else {
            String::new()
        },
    );
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let mut cmd = Command::new(&bin);
    // Settings through the environment, which older builds ignore: no
    // switch state database here; client-side TLS when asked.
    cmd.env("ZONEGUARD__STATE__ENABLED", "false");
    if tls {
        let (c, k) = make_certificate(dir.path());
        cmd.env("ZONEGUARD__TLS__CERT_FILE", c)
            .env("ZONEGUARD__TLS__KEY_FILE", k);
    }
    let child = cmd
        .arg("--policy")
        .arg(&path)
        .arg("--log-level")
        .arg("warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    wait_for_port(port);
    Spawned { child, port, dir }
}

struct Run {
    tps: f64,
    latency_ms: f64,
    /// The proxy's (user, system) CPU time per transaction, in µs.
    cpu_us_per_txn: Option<(f64, f64)>,
}

fn pgbench(host: &str, port: u16, args: &[&str], secs: u64, pid: Option<u32>, tls: bool) -> Run {
    let cpu0 = pid.map(cpu_secs);
    let out = Command::new("pgbench")
        .env("PGSSLMODE", if tls { "require" } else { "disable" })
        .args(["-h", host, "-p", &port.to_string(), "-U", "postgres", "-n"])
        .args(["-T", &secs.to_string()])
        .args(args)
        .arg("bench")
        .output()
        .expect("run pgbench");
    let cpu1 = pid.map(cpu_secs);
    let text = String::from_utf8_lossy(&out.stdout);
    let find = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().find_map(|w| w.parse::<f64>().ok()))
            .unwrap_or_else(|| {
                panic!(
                    "pgbench {args:?} on port {port}: no {prefix:?} in output:\n{text}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    };
    let tps = find("tps =");
    let latency_ms = find("latency average =");
    let txns = find("number of transactions actually processed:");
    let cpu_us_per_txn = match (cpu0, cpu1) {
        (Some(a), Some(b)) if txns > 0.0 => {
            Some(((b.0 - a.0) * 1e6 / txns, (b.1 - a.1) * 1e6 / txns))
        }
        _ => None,
    };
    Run {
        tps,
        latency_ms,
        cpu_us_per_txn,
    }
}

/// Opens `n` idle sessions through `port` (startup, wait for ReadyForQuery)
/// and returns the RSS growth of `pid` per session, in KiB.
fn idle_rss_per_conn(port: u16, pid: u32, n: usize) -> f64 {
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let msg = protocol::startup_message(&[("user", "postgres"), ("database", "bench")]);
        s.write_all(&msg).unwrap();
        // Read messages until ReadyForQuery.
        loop {
            let mut head = [0u8; 5];
            s.read_exact(&mut head).expect("startup reply");
            let len = i32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
            let mut rest = vec![0u8; len - 4];
            s.read_exact(&mut rest).unwrap();
            assert_ne!(head[0], b'E', "startup failed on port {port}");
            if head[0] == b'Z' {
                break;
            }
        }
        conns.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    for mut s in conns {
        let _ = s.write_all(&[b'X', 0, 0, 0, 4]);
    }
    std::thread::sleep(Duration::from_millis(500));
    (after as f64 - before as f64) / n as f64
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn main() {
    if let Ok(spec) = std::env::var(FLOOR_ENV) {
        floor_relay(&spec);
    }
    // `cargo bench` passes --bench; ignore arguments.
    let secs = env_num("BENCH_SECONDS", 5);
    let rounds = env_num("BENCH_ROUNDS", 3);
    let scale = env_num("BENCH_SCALE", 10);
    let idle = env_num("BENCH_IDLE", 500) as usize;
    let unix_clients = std::env::var("BENCH_CLIENT").as_deref() == Ok("unix");
    let upstreams: Vec<Upstream> = match std::env::var("BENCH_UPSTREAM").as_deref() {
        Ok("tcp") => vec![Upstream::Tcp],
        Ok("unix") => vec![Upstream::Unix],
        _ => vec![Upstream::Tcp, Upstream::Unix],
    };

    eprintln!("starting a throwaway PostgreSQL ...");
    let cluster = Cluster::start().expect("start PostgreSQL");
    cluster
        .psql("postgres", "CREATE DATABASE bench")
        .expect("create bench db");
    let st = Command::new("pgbench")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port().to_string(),
            "-U",
            "postgres",
        ])
        .args(["-i", "-q", "-s", &scale.to_string(), "bench"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("pgbench -i");
    assert!(st.success(), "pgbench -i failed");

    let socket = cluster.socket_path();
    let socket_dir = socket.parent().unwrap().to_path_buf();
    // Where pgbench finds a target: over TCP, or in its socket directory.
    let host = |dir: &std::path::Path| {
        if unix_clients {
            dir.display().to_string()
        } else {
            "127.0.0.1".to_string()
        }
    };
    let mut targets = vec![Target {
        name: "direct",
        host: host(&socket_dir),
        upstream: "-",
        port: cluster.port(),
        pid: None,
        tls: false,
    }];
    let tls = std::env::var("BENCH_TLS").is_ok_and(|v| v == "1");
    let baseline = std::env::var("ZONEGUARD_BASELINE_BIN")
        .ok()
        .map(PathBuf::from);
    // Kept alive until the end; dropping one stops its process.
    let mut spawned = Vec::new();
    let mut bouncers = Vec::new();
    for &up in &upstreams {
        let addr = match up {
            Upstream::Tcp => cluster.addr(),
            Upstream::Unix => socket.display().to_string(),
        };
        if !tls {
            let floor = start_floor(&addr, unix_clients);
            targets.push(floor.target("floor", up, host(floor.dir.path())));
            spawned.push(floor);
        }
        match start_pgbouncer(
            cluster.port(),
            (up == Upstream::Unix).then_some(socket_dir.as_path()),
            unix_clients,
            tls,
        ) {
            Some(b) => {
                targets.push(Target {
                    name: "pgbouncer",
                    host: host(b.dir.path()),
                    upstream: up.name(),
                    port: b.port,
                    pid: Some(b.pid),
                    tls,
                });
                bouncers.push(b);
            }
            None => eprintln!("PgBouncer unavailable: its rows are skipped"),
        }
        let zg = start_zoneguard(&addr, unix_clients, tls, None);
        targets.push(Target {
            tls,
            ..zg.target("zoneguard", up, host(zg.dir.path()))
        });
        spawned.push(zg);
        if let Some(bin) = &baseline {
            let zg = start_zoneguard(&addr, unix_clients, tls, Some(bin.clone()));
            targets.push(Target {
                tls,
                ..zg.target("zg-before", up, host(zg.dir.path()))
            });
            spawned.push(zg);
        }
    }

    let workloads: Vec<(&str, Vec<&str>)> = vec![
        (
            "-S -c8 simple",
            vec!["-S", "-c", "8", "-j", "2", "-M", "simple"],
        ),
        (
            "-S -c8 extended",
            vec!["-S", "-c", "8", "-j", "2", "-M", "extended"],
        ),
        (
            "-S -c8 prepared",
            vec!["-S", "-c", "8", "-j", "2", "-M", "prepared"],
        ),
        ("-S -c1 (latency)", vec!["-S", "-c", "1"]),
        ("TPC-B -c8", vec!["-c", "8", "-j", "2"]),
    ];
    let est = rounds * workloads.len() as u64 * targets.len() as u64 * (secs + 1);
    eprintln!(
        "{rounds} rounds x {} workloads x {} targets x {secs}s: about {est}s",
        workloads.len(),
        targets.len()
    );
    // (workload, target) -> runs
    let mut results: BTreeMap<(usize, usize), Vec<Run>> = BTreeMap::new();
    for round in 0..rounds {
        for (wi, (wname, args)) in workloads.iter().enumerate() {
            // Rotate the order so no target always runs first.
            for k in 0..targets.len() {
                let ti = (k + round as usize + wi) % targets.len();
                let t = &targets[ti];
                let r = pgbench(&t.host, t.port, args, secs, t.pid, t.tls);
                eprintln!(
                    "round {} {wname:<18} {:<10} {:<4} tps {:>9.0}  lat {:.3} ms  cpu {}",
                    round + 1,
                    t.name,
                    t.upstream,
                    r.tps,
                    r.latency_ms,
                    r.cpu_us_per_txn
                        .map(|(u, s)| format!("{:.1} us/txn ({u:.1} user)", u + s))
                        .unwrap_or_default()
                );
                results.entry((wi, ti)).or_default().push(r);
            }
        }
    }

    let mut rss = Vec::new();
    for (ti, t) in targets.iter().enumerate() {
        // Idle clients hold the same memory whatever the upstream.
        if t.upstream == upstreams[0].name() {
            if let Some(pid) = t.pid {
                rss.push((ti, idle_rss_per_conn(t.port, pid, idle)));
            }
        }
    }

    println!();
    println!(
        "pgbench, scale {scale}, {secs}s per run, medians of {rounds} interleaved rounds; pgbench connects over {}{}; \"upstream\" is how the proxy reaches PostgreSQL",
        if unix_clients { "Unix-domain sockets" } else { "TCP" },
        if tls { " with TLS (sslmode=require) to the proxies, plain to direct" } else { "" }
    );
    println!(
        "| workload | target | upstream | TPS | latency ms | vs direct | vs PgBouncer | vs floor | CPU µs/txn (user) |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
    let find = |name: &str, upstream: &str| {
        targets
            .iter()
            .position(|t| t.name == name && t.upstream == upstream)
    };
    for (wi, (wname, _)) in workloads.iter().enumerate() {
        let med = |ti: usize, f: &dyn Fn(&Run) -> Option<f64>| -> f64 {
            let mut v: Vec<f64> = results
                .get(&(wi, ti))
                .map(|rs| rs.iter().filter_map(f).collect())
                .unwrap_or_default();
            median(&mut v)
        };
        let tps_of = |ti: usize| med(ti, &|r| Some(r.tps));
        let direct_tps = tps_of(0);
        let direct_lat = med(0, &|r| Some(r.latency_ms));
        for (ti, t) in targets.iter().enumerate() {
            let tps = tps_of(ti);
            let lat = med(ti, &|r| Some(r.latency_ms));
            let cpu = med(ti, &|r| r.cpu_us_per_txn.map(|(u, s)| u + s));
            let user = med(ti, &|r| r.cpu_us_per_txn.map(|(u, _)| u));
            // Proxies are compared with the same upstream transport.
            let ratio = |name: &str| {
                find(name, t.upstream)
                    .filter(|_| ti > 0)
                    .map(|o| format!("{:.2}", tps / tps_of(o)))
                    .unwrap_or_else(|| "-".into())
            };
            let extra = if wname.contains("latency") && ti > 0 {
                format!(" (+{:.0} µs)", (lat - direct_lat) * 1000.0)
            } else {
                String::new()
            };
            println!(
                "| {wname} | {} | {} | {tps:.0} | {lat:.3}{extra} | {:.2} | {} | {} | {} |",
                t.name,
                t.upstream,
                tps / direct_tps,
                ratio("pgbouncer"),
                ratio("floor"),
                if cpu.is_nan() {
                    "-".into()
                } else {
                    format!("{cpu:.1} ({user:.1})")
                }
            );
        }
    }
    println!();
    println!("| proxy | RSS per idle client ({idle} open) |");
    println!("|---|---:|");
    for (ti, kib) in &rss {
        println!("| {} | {kib:.1} KiB |", targets[*ti].name);
    }
    drop(spawned);
    drop(bouncers);
    drop(cluster);
}
