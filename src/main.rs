//! The `zoneguard` command: run the guard, or a self-contained demo.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::{TcpListener, UnixListener};

use zoneguard::cluster::Cluster;
use zoneguard::guard::Guard;
use zoneguard::policy::{self, Policy, Settings};
use zoneguard::server;

/// The policy that ships with zoneguard, used by `demo` when no policy file
/// is found.
const EMBEDDED_POLICY: &str = include_str!("../policy.toml");

#[derive(Parser, Debug)]
#[command(
    name = "zoneguard",
    version,
    about = "PostgreSQL wire-protocol guard: applications connect through it, it parses every statement and rejects writes the policy forbids.",
    long_about = "PostgreSQL wire-protocol guard.\n\nApplications point their DATABASE_URL at zoneguard; it relays their traffic to the real PostgreSQL, parses every statement with sqlparser, and enforces policy.toml: legacy tables read-only, the new zone writable. Rejected statements get SQLSTATE 42501 and an audit record.\n\nSettings come from the policy file ([proxy], [audit]), then environment variables ZONEGUARD__<SECTION>__<KEY> (e.g. ZONEGUARD__PROXY__UPSTREAM=127.0.0.1:5432), then the flags below."
)]
struct Cli {
    /// Policy file (zones, rules, switches, [proxy] and [audit] settings).
    #[arg(
        long,
        global = true,
        default_value = "policy.toml",
        env = "ZONEGUARD_POLICY"
    )]
    policy: PathBuf,
    /// Address to listen on, overriding [proxy] listen.
    #[arg(long, global = true)]
    listen: Option<String>,
    /// Also listen on a Unix-domain socket in this directory, overriding [proxy] unix_socket_dir.
    #[arg(long, global = true)]
    unix_socket_dir: Option<String>,
    /// The PostgreSQL server, HOST:PORT or a Unix-socket path, overriding [proxy] upstream.
    #[arg(long, global = true)]
    upstream: Option<String>,
    /// Where audit records go (a file, or - for standard output), overriding [audit] file.
    #[arg(long, global = true)]
    audit_file: Option<String>,
    /// The guard's TLS certificate chain (PEM) for clients, overriding [tls] cert_file.
    #[arg(long, global = true, value_name = "FILE")]
    tls_cert: Option<String>,
    /// Its private key (PEM), overriding [tls] key_file.
    #[arg(long, global = true, value_name = "FILE")]
    tls_key: Option<String>,
    /// TLS for clients: disable, allow (the default with a certificate) or
    /// require, overriding [tls] client_mode.
    #[arg(long, global = true, value_name = "MODE")]
    client_tls: Option<String>,
    /// TLS to the upstream, as libpq's sslmode: disable, prefer (default),
    /// require, verify-ca, verify-full; overriding [proxy] upstream_tls.
    #[arg(long, global = true, value_name = "MODE")]
    upstream_tls: Option<String>,
    /// The CA certificate (PEM) the upstream's certificate must chain to,
    /// overriding [proxy] upstream_ca_file.
    #[arg(long, global = true, value_name = "FILE")]
    upstream_ca: Option<String>,
    /// Serve GET /metrics (Prometheus) and /healthz on this address,
    /// overriding [metrics] listen.
    #[arg(long, global = true, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive);
    /// RUST_LOG is used when this is not given.
    #[arg(long, global = true, env = "ZONEGUARD_LOG")]
    log_level: Option<String>,
    /// Worker threads of the runtime (0: half the cores, at least one). With
    /// one, a single event loop serves every client, as in PgBouncer.
    #[arg(long, global = true, env = "ZONEGUARD_THREADS", default_value_t = 0)]
    threads: usize,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the guard (the default when no command is given).
    Run,
    /// Print the hash of a password for `[admin] users` in policy.toml
    /// (SCRAM-SHA-256, as PostgreSQL stores it; --md5 ROLE for an md5 hash).
    /// Reads the password from standard input.
    HashPassword {
        /// Make an md5 hash for this role instead (weaker; SCRAM is preferred).
        #[arg(long, value_name = "ROLE")]
        md5: Option<String>,
    },
    /// Start a throwaway PostgreSQL with the seed's schema and sample data,
    /// and the guard in front of it; prints the URL to connect to. Ctrl-C
    /// stops both and deletes the database. Works on a temporary copy of
    /// the policy (./policy.toml, or the shipped one if there is none).
    Demo,
    /// Give existing customers their entitlements: PAID legacy
    /// transactions -> entitlements, through the guard, idempotent and
    /// resumable.
    Backfill(zoneguard::backfill::BackfillArgs),
    /// Generate legacy users, transactions and assessments for trying the
    /// backfill. Writes legacy tables: connect DIRECTLY to PostgreSQL, not
    /// through the guard.
    GenLegacy(zoneguard::backfill::GenLegacyArgs),
    /// Benchmark the backfill on a throwaway cluster with generated data.
    BenchBackfill(zoneguard::backfill::BenchBackfillArgs),
    /// Create the switch state database's schema and role (run once, as a
    /// superuser; idempotent): every instance then keeps the switches'
    /// positions there and follows each flip within a second.
    InstallState(zoneguard::state::cli::InstallStateArgs),
    /// Flip or show the kill switches of every instance, through the state
    /// database (no console needed).
    #[command(subcommand)]
    Switch(zoneguard::state::cli::SwitchCommand),
    /// Print the SQL of the change log: an event trigger that records DDL so
    /// the guard re-reads the catalog once it commits (run it as a superuser
    /// in each fronted database: `zoneguard catalog-trigger | psql -U
    /// postgres DB`).
    CatalogTrigger,
    /// Show what the guard sees in a SQL text and what it decides: each
    /// statement's tables and operations, their zones and rules, and the
    /// verdict with the message a client would get. Exit 0 when allowed
    /// (or only recorded in shadow mode), 1 when rejected.
    Explain {
        /// The SQL text (one or more statements).
        sql: String,
        /// The database role to judge for (the startup user).
        #[arg(long, default_value = "app")]
        role: String,
        /// A switch position to judge under, e.g. enable_new_commerce=off
        /// (repeatable; others at their defaults).
        #[arg(long = "switch", value_name = "NAME=on|off")]
        switches: Vec<String>,
        /// Resolve names through this database's catalog, as the running
        /// guard does (a direct URL; reading the catalog needs LOGIN only).
        #[arg(long)]
        database_url: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Judge what an application really sends against the policy: PostgreSQL
    /// logs (log_statement = 'all'; csvlog, jsonlog or stderr), a
    /// pg_stat_statements export (CSV with a `query` column) or a SQL file.
    /// Reports what would be rejected (by rule, table, operation and role),
    /// what could not be classified, and policy edits that would let it
    /// through. Exit 1 when anything would be rejected.
    Check {
        /// Log or SQL files (streamed).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// Judge every statement as this role (default: the role each log
        /// line names; statements with none as a role no rule names).
        #[arg(long)]
        role: Option<String>,
        /// auto (from the file name), csvlog, jsonlog, stderr, sql, pgss.
        #[arg(long, default_value = "auto")]
        format: String,
        /// Judge under a switch position, e.g. enable_new_commerce=off.
        #[arg(long = "switch", value_name = "NAME=on|off")]
        switches: Vec<String>,
        /// Resolve names through this database's catalog.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Print the GRANT/REVOKE statements that give each role at most what
    /// the policy allows (the second wall, for what a proxy cannot see), or
    /// with --verify report where the database's privileges are wider
    /// (exit 1 if anywhere).
    Grants {
        /// A role to plan for (repeatable; default: the roles the policy names).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Plan for a switch position, e.g. enable_new_commerce=off
        /// (repeatable; others at their defaults).
        #[arg(long = "switch", value_name = "NAME=on|off")]
        switches: Vec<String>,
        /// The database whose relations to cover (a direct URL). Without
        /// it, only the tables the zones list by name.
        #[arg(long)]
        database_url: Option<String>,
        /// Compare the database's privileges with the policy instead.
        #[arg(long)]
        verify: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = cli
        .log_level
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).context("bad --log-level")?,
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Right-sized runtime. The guard usually shares its machine with the
    // database or the application, so by default it takes half the cores.
    // One thread means a current-thread runtime: no cross-thread wake-ups,
    // like PgBouncer's single event loop (on the 2-core benchmark machine it
    // cut CPU per transaction by 10-20 % against two worker threads).
    let threads = match cli.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        n => n,
    };
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = builder.enable_all().build()?;
    if let Some(Command::HashPassword { md5 }) = &cli.command {
        let mut password = String::new();
        std::io::stdin().read_line(&mut password)?;
        let password = password.trim_end_matches(['\r', '\n']);
        anyhow::ensure!(!password.is_empty(), "no password on standard input");
        match md5 {
            Some(role) => println!("{}", zoneguard::admin::md5_hash(role, password)),
            None => println!("{}", zoneguard::admin::scram_verifier(password)),
        }
        return Ok(());
    }
    if let Some(Command::CatalogTrigger) = &cli.command {
        print!("{}", zoneguard::catalog::TRIGGER_SQL);
        return Ok(());
    }
    rt.block_on(async move {
        match cli.command {
            Some(Command::HashPassword { .. } | Command::CatalogTrigger) => {
                unreachable!("handled above")
            }
            Some(Command::InstallState(ref args)) => {
                zoneguard::state::cli::install_state(args).await
            }
            Some(Command::Switch(ref cmd)) => {
                zoneguard::state::cli::switch(cmd, load_policy_settings(&cli)).await
            }
            Some(Command::Explain {
                ref sql,
                ref role,
                ref switches,
                ref database_url,
                json,
            }) => explain(&cli, sql, role, switches, database_url.as_deref(), json).await,
            Some(Command::Check {
                ref files,
                ref role,
                ref format,
                ref switches,
                ref database_url,
            }) => {
                check(
                    &cli,
                    files,
                    role.as_deref(),
                    format,
                    switches,
                    database_url.as_deref(),
                )
                .await
            }
            Some(Command::Grants {
                ref roles,
                ref switches,
                ref database_url,
                verify,
            }) => grants(&cli, roles, switches, database_url.as_deref(), verify).await,
            None | Some(Command::Run) => run(&cli).await,
            Some(Command::Demo) => demo(&cli).await,
            Some(Command::Backfill(a)) => zoneguard::backfill::backfill_command(a).await,
            Some(Command::GenLegacy(a)) => zoneguard::backfill::gen_legacy_command(a).await,
            Some(Command::BenchBackfill(a)) => zoneguard::backfill::bench_command(a).await,
        }
    })
}

/// `zoneguard explain`: prints the explanation; exits 1 when rejected.
async fn explain(
    cli: &Cli,
    sql: &str,
    role: &str,
    switches: &[String],
    database_url: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let (policy, _) = policy::load(&cli.policy)?;
    let positions = switch_positions(&policy, &cli.policy, switches)?;
    let catalog = match database_url {
        Some(url) => Some(read_catalog(url).await?),
        None => None,
    };
    let e = zoneguard::explain::explain(&policy, sql, role, &positions, catalog.as_ref());
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print!("{e}");
    }
    if e.verdict == "rejected" {
        std::process::exit(1);
    }
    Ok(())
}

/// `--switch NAME=on|off` flags, checked against the policy.
fn switch_positions(
    policy: &Policy,
    path: &std::path::Path,
    switches: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, bool>> {
    let mut positions = std::collections::BTreeMap::new();
    for s in switches {
        let (name, pos) = s
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--switch {s:?}: expected NAME=on|off"))?;
        anyhow::ensure!(
            policy.switches.contains_key(name),
            "--switch {name:?}: no such switch in {}",
            path.display()
        );
        let on = match pos {
            "on" | "true" => true,
            "off" | "false" => false,
            _ => anyhow::bail!("--switch {s:?}: the position is on or off"),
        };
        positions.insert(name.to_owned(), on);
    }
    Ok(positions)
}

/// Reads a database's catalog over a direct URL.
async fn read_catalog(url: &str) -> anyhow::Result<zoneguard::catalog::Catalog> {
    let timeout = std::time::Duration::from_secs(10);
    let client = zoneguard::backfill::run::connect(url, timeout, "zoneguard").await?;
    zoneguard::catalog::read_catalog(&client, timeout)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the catalog: {e}"))
}

/// `zoneguard check`.
async fn check(
    cli: &Cli,
    files: &[std::path::PathBuf],
    role: Option<&str>,
    format: &str,
    switches: &[String],
    database_url: Option<&str>,
) -> anyhow::Result<()> {
    use std::io::BufRead;
    use zoneguard::check;
    let (policy, _) = policy::load(&cli.policy)?;
    let mut positions = policy.default_switches();
    positions.extend(switch_positions(&policy, &cli.policy, switches)?);
    let catalog = match database_url {
        Some(url) => Some(read_catalog(url).await?),
        None => None,
    };
    let fixed = match format {
        "auto" => None,
        f => Some(check::Format::parse(f).ok_or_else(|| {
            anyhow::anyhow!("--format {f:?}: one of auto, csvlog, jsonlog, stderr, sql, pgss")
        })?),
    };
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let p = indicatif::ProgressBar::new_spinner();
        p.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} statements read {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        p
    });
    let mut report = check::Report::default();
    for path in files {
        let file = std::fs::File::open(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let mut input = std::io::BufReader::new(file);
        let format = match fixed {
            Some(f) => f,
            None => {
                let first = String::from_utf8_lossy(input.fill_buf()?)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                check::Format::guess(path, &first)
            }
        };
        check::read(format, input, &mut |sent| {
            let who = role.map(str::to_owned).or(sent.role).unwrap_or_default();
            report.add(&policy, &sent.sql, &who, &positions, catalog.as_ref());
            if let Some(p) = &progress {
                p.inc(1);
            }
        })
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    print!("{report}");
    if report.rejected_count() > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// `zoneguard grants`.
async fn grants(
    cli: &Cli,
    roles: &[String],
    switches: &[String],
    database_url: Option<&str>,
    verify: bool,
) -> anyhow::Result<()> {
    use zoneguard::grants;
    let (policy, _) = policy::load(&cli.policy)?;
    let mut positions = policy.default_switches();
    positions.extend(switch_positions(&policy, &cli.policy, switches)?);
    let roles: Vec<String> = if roles.is_empty() {
        grants::policy_roles(&policy)
    } else {
        roles.to_vec()
    };
    anyhow::ensure!(
        !roles.is_empty(),
        "no role to plan for: name the application's roles with --role"
    );
    let catalog = match database_url {
        Some(url) => read_catalog(url).await?,
        None => {
            anyhow::ensure!(!verify, "--verify needs --database-url");
            grants::listed_tables(&policy)
        }
    };
    let plan = grants::plan(&policy, &catalog, &roles, &positions);
    if !verify {
        let pos: Vec<String> = positions
            .iter()
            .map(|(k, v)| format!("{k}={}", if *v { "on" } else { "off" }))
            .collect();
        println!(
            "-- zoneguard grants: policy {}, switches {}, roles {}",
            cli.policy.display(),
            if pos.is_empty() {
                "(none)".into()
            } else {
                pos.join(", ")
            },
            roles.join(", ")
        );
        if database_url.is_none() {
            println!("-- only the tables the zones list by name (give --database-url for every relation and the sequences)");
        }
        println!("-- privileges granted to PUBLIC are not revoked here: `zoneguard grants --verify` reports them");
        println!("BEGIN;");
        print!("{}", grants::sql(&catalog, &plan));
        print!("{}", grants::notes(&policy, &catalog, &roles, &positions));
        println!("COMMIT;");
        return Ok(());
    }
    let url = database_url.expect("checked above");
    let client = zoneguard::backfill::run::connect(
        url,
        std::time::Duration::from_secs(10),
        "zoneguard grants",
    )
    .await?;
    let mut held: std::collections::BTreeSet<(String, String, String, String)> = Default::default();
    let mut findings = Vec::new();
    for role in &roles {
        let row = client
            .query_opt("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[role])
            .await?;
        match row {
            None => anyhow::bail!("role {role:?} does not exist in the database"),
            Some(r) if r.get::<_, bool>(0) => findings.push(format!(
                "role {role} is a superuser: no privilege limits it"
            )),
            Some(_) => {}
        }
        for r in client
            .query(
                r"SELECT n.nspname::text, c.relname::text, p.priv
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                      unnest(ARRAY['SELECT','INSERT','UPDATE','DELETE','TRUNCATE','REFERENCES','TRIGGER','USAGE']) AS p(priv)
                 WHERE c.relkind IN ('r','p','v','m','f','S')
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                   AND n.nspname NOT LIKE 'pg\_to%'
                   AND ((c.relkind = 'S' AND p.priv IN ('SELECT','USAGE','UPDATE')
                         AND has_sequence_privilege($1, c.oid, p.priv))
                     OR (c.relkind <> 'S' AND p.priv <> 'USAGE'
                         AND has_table_privilege($1, c.oid, p.priv)))",
                &[role],
            )
            .await?
        {
            held.insert((role.clone(), r.get(0), r.get(1), r.get(2)));
        }
    }
    let mut lookup = |role: &str, rel: &zoneguard::classify::RelationName, privilege: &str| {
        held.contains(&(
            role.to_owned(),
            rel.schema.clone().unwrap_or_default(),
            rel.name.clone(),
            privilege.to_owned(),
        ))
    };
    for (role, obj, privilege) in grants::wider(&catalog, &plan, &mut lookup) {
        findings.push(format!(
            "{role} holds {privilege} on {obj}, which the policy does not allow"
        ));
    }
    if findings.is_empty() {
        println!(
            "ok: no role holds more than the policy allows ({} roles, {} relations)",
            roles.len(),
            plan.len() / roles.len().max(1)
        );
        return Ok(());
    }
    for f in &findings {
        println!("{f}");
    }
    println!(
        "{} findings: apply `zoneguard grants` to narrow them",
        findings.len()
    );
    std::process::exit(1);
}

fn load_policy(cli: &Cli) -> anyhow::Result<(Policy, Settings)> {
    Ok(load_policy_settings(cli)?)
}

/// The policy file with the command line's overrides.
fn load_policy_settings(cli: &Cli) -> Result<(Policy, Settings), policy::PolicyError> {
    let (policy, mut settings) = policy::load(&cli.policy)?;
    if let Some(l) = &cli.listen {
        settings.proxy.listen = l.clone();
    }
    if let Some(d) = &cli.unix_socket_dir {
        settings.proxy.unix_socket_dir = d.clone();
    }
    if let Some(u) = &cli.upstream {
        zoneguard::net::Endpoint::parse(u).map_err(|message| policy::PolicyError::Settings {
            path: "--upstream".into(),
            message,
        })?;
        settings.proxy.upstream = u.clone();
    }
    if let Some(a) = &cli.audit_file {
        settings.audit.file = a.clone();
    }
    for (flag, setting) in [
        (&cli.tls_cert, &mut settings.tls.cert_file),
        (&cli.tls_key, &mut settings.tls.key_file),
        (&cli.client_tls, &mut settings.tls.client_mode),
        (&cli.upstream_tls, &mut settings.proxy.upstream_tls),
        (&cli.upstream_ca, &mut settings.proxy.upstream_ca_file),
        (&cli.metrics_listen, &mut settings.metrics.listen),
    ] {
        if let Some(v) = flag {
            *setting = v.clone();
        }
    }
    Ok((policy, settings))
}

/// The guard's listeners: TCP, and the Unix-domain socket if configured.
struct Listeners {
    tcp: TcpListener,
    unix: Option<(UnixListener, PathBuf)>,
}

impl Listeners {
    /// Serves until Ctrl-C or SIGTERM; then stops accepting, removes the
    /// socket file, and drains the sessions (see `Guard::drain`).
    async fn serve(self, guard: std::sync::Arc<Guard>) {
        let (unix, path) = match self.unix {
            Some((l, p)) => (Some(l), Some(p)),
            None => (None, None),
        };
        server::run_listeners(self.tcp, unix, guard.clone(), shutdown_signal()).await;
        if let Some(p) = path {
            let _ = std::fs::remove_file(p);
        }
        let timeout = std::time::Duration::from_secs(guard.settings.proxy.drain_timeout_secs);
        tokio::select! {
            _ = guard.drain(timeout) => {}
            // A second signal: close everything now.
            _ = shutdown_signal() => {
                tracing::warn!("second signal: closing every session now");
                guard.shutdown.send_replace(zoneguard::guard::Shutdown::Terminating);
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

async fn start(
    policy: Policy,
    settings: Settings,
    path: Option<PathBuf>,
) -> anyhow::Result<(Listeners, std::sync::Arc<Guard>)> {
    let tcp = TcpListener::bind(&settings.proxy.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.proxy.listen))?;
    let unix = if settings.proxy.unix_socket_dir.is_empty() {
        None
    } else {
        let dir = PathBuf::from(&settings.proxy.unix_socket_dir);
        let port = tcp.local_addr()?.port();
        Some(
            zoneguard::net::bind_client_socket(&dir, port)
                .with_context(|| format!("cannot listen on a Unix socket in {}", dir.display()))?,
        )
    };
    let guard = Guard::new(policy, settings, path)
        .await
        .context("cannot start the guard (audit log or [proxy] upstream)")?;
    zoneguard::control::spawn_watchers(guard.clone());
    zoneguard::state::start(guard.clone()).await;
    if !guard.settings.metrics.listen.is_empty() {
        let addr = &guard.settings.metrics.listen;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        tracing::info!(listen = %listener.local_addr()?, "metrics and health check: GET /metrics, /healthz");
        tokio::spawn(zoneguard::metrics::serve(listener, guard.clone()));
    }
    Ok((Listeners { tcp, unix }, guard))
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// A file size limit (ulimit -f) must make the audit write fail (and be
/// reported), not kill the guard: SIGXFSZ is caught and ignored.
fn ignore_file_size_signal() {
    #[cfg(target_os = "linux")]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // The handler stays installed for the life of the process.
        let _ = signal(SignalKind::from_raw(25));
    }
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    ignore_file_size_signal();
    let (policy, settings) = load_policy(cli)?;
    let (listeners, guard) = start(policy, settings, Some(cli.policy.clone())).await?;
    tracing::info!(
        listen = %listeners.tcp.local_addr()?,
        unix_socket = ?listeners.unix.as_ref().map(|(_, p)| p.display().to_string()),
        upstream = %guard.settings.proxy.upstream,
        audit = %guard.audit.target,
        "zoneguard ready"
    );
    listeners.serve(guard).await;
    tracing::info!("zoneguard stopped");
    Ok(())
}

async fn demo(cli: &Cli) -> anyhow::Result<()> {
    // The demo works on a copy of the policy in a temporary directory, so
    // that its console's SET MODE (written back to the file) and its audit
    // log never touch the checkout.
    let dir = tempfile::Builder::new()
        .prefix("zoneguard-demo-")
        .tempdir()?;
    let text = match std::fs::read_to_string(&cli.policy) {
        Ok(t) => t,
        Err(_) => {
            tracing::info!(path = %cli.policy.display(), "policy file not found; using the embedded default policy");
            EMBEDDED_POLICY.to_string()
        }
    };
    let copy = dir.path().join("policy.toml");
    std::fs::write(&copy, text)?;
    let demo_cli = Cli {
        policy: copy.clone(),
        listen: cli.listen.clone(),
        upstream: None,
        unix_socket_dir: cli.unix_socket_dir.clone(),
        audit_file: cli.audit_file.clone(),
        tls_cert: cli.tls_cert.clone(),
        tls_key: cli.tls_key.clone(),
        client_tls: cli.client_tls.clone(),
        upstream_tls: cli.upstream_tls.clone(),
        upstream_ca: cli.upstream_ca.clone(),
        metrics_listen: cli.metrics_listen.clone(),
        log_level: None,
        threads: cli.threads,
        command: None,
    };
    let (policy, mut settings) = load_policy(&demo_cli)?;
    eprintln!("starting a throwaway PostgreSQL ...");
    let cluster = tokio::task::spawn_blocking(|| {
        let c = Cluster::start_seeded("shop")?;
        // The change log, as the deployment installs it (docs/catalog.md).
        c.psql("shop", zoneguard::catalog::TRIGGER_SQL)?;
        // The switches' shared state, as `zoneguard install-state` makes it.
        c.psql(
            "postgres",
            &zoneguard::state::install_sql("zoneguard_state", None),
        )?;
        Ok::<_, zoneguard::cluster::ClusterError>(c)
    })
    .await??;
    settings.proxy.upstream = cluster.addr();
    // A throwaway self-signed certificate, so that sslmode=require works
    // as it does against a hosted database (unless one was given).
    if settings.tls.cert_file.is_empty() {
        let key = rcgen::KeyPair::generate()?;
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
        let (c, k) = (dir.path().join("demo.crt"), dir.path().join("demo.key"));
        std::fs::write(&c, cert.pem())?;
        std::fs::write(&k, key.serialize_pem())?;
        settings.tls.cert_file = c.display().to_string();
        settings.tls.key_file = k.display().to_string();
    }
    let (listeners, guard) = start(policy, settings, Some(copy.clone())).await?;
    let addr = listeners.tcp.local_addr()?;
    println!();
    println!("zoneguard demo is up.");
    println!("  through the guard:  psql postgresql://app@{addr}/shop");
    println!("  as the legacy app:  psql postgresql://legacy_app@{addr}/shop");
    println!(
        "  direct (no guard):  psql {}",
        cluster.url("postgres", "shop")
    );
    println!("  admin console:      psql postgresql://zgadmin:zgadmin@{addr}/zoneguard");
    println!("  over TLS:           psql 'postgresql://app@{addr}/shop?sslmode=require' (a throwaway certificate)");
    if !guard.settings.metrics.listen.is_empty() {
        println!(
            "  metrics, health:    http://{}/metrics, /healthz",
            guard.settings.metrics.listen
        );
    }
    if let Some((_, path)) = &listeners.unix {
        let dir = path.parent().unwrap_or(path).display();
        println!(
            "  over the socket:    psql -h {dir} -p {} -U app shop",
            addr.port()
        );
    }
    println!(
        "  flip for every instance: zoneguard switch set enable_new_commerce off --reason test --database-url {}",
        cluster.url("zoneguard_state", "postgres")
    );
    println!("  policy (a copy):    {}", copy.display());
    println!("  audit log:          {}", guard.audit.target);
    println!("Ctrl-C stops the guard and deletes the database.");
    listeners.serve(guard).await;
    drop(cluster);
    drop(dir);
    Ok(())
}
