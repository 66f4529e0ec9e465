//! The policy: zones, rules, switches and per-role options, and the pure
//! decision that turns a classified statement plus session facts into a
//! [`Verdict`]. Nothing here touches a socket.

mod file;
mod judge;
mod zones;

use std::collections::BTreeMap;

use serde::Deserialize;

pub use file::{load, parse, parse_table_name, PolicyError};
pub use judge::{Denial, Facts, Lookup, Verdict, SQLSTATE_REJECTED};
pub use zones::{glob_match, globs_overlap};

use crate::classify::{Op, RelationName};

/// The pseudo-zone of tables that no zone names.
pub const UNLISTED_ZONE: &str = "unlisted";

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub zones: Vec<Zone>,
    /// In file order: the first rule that matches wins (like pg_hba.conf).
    pub rules: Vec<Rule>,
    pub switches: BTreeMap<String, Switch>,
    /// What is allowed where no rule matches.
    pub default_allow: Allowed,
    pub default_options: RoleOptions,
    pub roles: BTreeMap<String, RoleOptions>,
    /// Policy-wide: enforce, or only record what would be rejected
    /// (`[defaults] mode`). A role's or rule's own setting wins.
    pub mode: Mode,
    /// Admin console users: role name -> password hash (a SCRAM-SHA-256
    /// verifier or an md5 hash, as PostgreSQL stores them).
    pub admins: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Zone {
    pub name: String,
    pub description: Option<String>,
    /// Tables listed by name.
    pub tables: Vec<RelationName>,
    /// Name patterns (`*` any run, `?` one character); the schema part, if
    /// any, is exact.
    pub patterns: Vec<RelationName>,
    /// Every relation in these schemas.
    pub schemas: Vec<String>,
    /// Sequences and indexes listed under keys of their own: only these
    /// name them (a `tables` entry or pattern matches tables, partitioned
    /// tables, views, materialized views and foreign tables).
    pub sequences: Vec<RelationName>,
    pub indexes: Vec<RelationName>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub zone: String,
    /// Only these tables of the zone (as written in the zone); empty: all.
    pub tables: Vec<RelationName>,
    /// Empty: every role.
    pub roles: Vec<String>,
    /// Switch positions this rule needs; empty: always.
    pub when: Vec<(String, bool)>,
    pub allow: Allowed,
    pub reason: Option<String>,
    pub hint: Option<String>,
    /// `action = "reject" | "log"`; None: the role's or policy's mode.
    pub action: Option<Mode>,
}

/// Whether a rejection is carried out or only recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Rejected with 42501 and audited (`mode = "enforce"`, `action = "reject"`).
    #[default]
    Enforce,
    /// Let through, and audited as `would_reject` (`mode = "shadow"`,
    /// `action = "log"`).
    Shadow,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Switch {
    pub default: bool,
    pub description: Option<String>,
}

/// Statement kinds the guard cannot see into, allowed per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleOptions {
    pub do_blocks: bool,
    pub call: bool,
    pub function_calls: bool,
    pub other_ddl: bool,
    /// Replication connections (startup `replication=true|database`): a
    /// walsender takes commands that are not SQL (CREATE/DROP_REPLICATION_SLOT,
    /// BASE_BACKUP, ...), which the guard cannot judge. Off by default.
    pub replication: bool,
    /// The role's own mode (`[roles.X] mode`); None: the policy's.
    pub mode: Option<Mode>,
}

/// Every operation, in the order messages list them.
const ALL_OPS: [Op; 8] = [
    Op::Read,
    Op::Insert,
    Op::Update,
    Op::Delete,
    Op::Truncate,
    Op::Lock,
    Op::Ddl,
    Op::Reference,
];

/// A set of [`Op`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allowed(u8);

impl Allowed {
    pub const NONE: Allowed = Allowed(0);
    pub const READ: Allowed = Allowed(1 << Op::Read as u8);

    pub fn of(op: Op) -> Allowed {
        Allowed(1 << op as u8)
    }

    pub fn contains(self, op: Op) -> bool {
        self.0 & (1 << op as u8) != 0
    }

    pub fn union(self, other: Allowed) -> Allowed {
        Allowed(self.0 | other.0)
    }

    pub fn intersect(self, other: Allowed) -> Allowed {
        Allowed(self.0 & other.0)
    }

    /// Parses one word of an `allow = [...]` list.
    pub fn parse(word: &str) -> Option<Allowed> {
        let ops: &[Op] = match word {
            "read" => &[Op::Read],
            "insert" => &[Op::Insert],
            "update" => &[Op::Update],
            "delete" => &[Op::Delete],
            "truncate" => &[Op::Truncate],
            "lock" => &[Op::Lock],
            "ddl" => &[Op::Ddl],
            "reference" => &[Op::Reference],
            "write" => &[Op::Insert, Op::Update, Op::Delete, Op::Truncate],
            "all" => &ALL_OPS,
            _ => return None,
        };
        Some(
            ops.iter()
                .fold(Allowed::NONE, |a, op| a.union(Allowed::of(*op))),
        )
    }

    /// The operations in the set, as policy words.
    pub fn words(self) -> Vec<&'static str> {
        ALL_OPS
            .into_iter()
            .filter(|op| self.contains(*op))
            .map(Op::as_str)
            .collect()
    }
}

impl Policy {
    /// Whether every table the zones name is spelled in ASCII (see
    /// `classify::reading::ambiguous_mid_batch`).
    pub fn ascii_names(&self) -> bool {
        self.zones
            .iter()
            .flat_map(|z| z.tables.iter().chain(&z.patterns))
            .all(|t| t.name.is_ascii() && t.schema.as_deref().is_none_or(str::is_ascii))
            && self
                .zones
                .iter()
                .flat_map(|z| &z.schemas)
                .all(|s| s.is_ascii())
    }

    /// Whether a rejection decided by `rule` (None: a guard option) for
    /// `role` is only recorded: the rule's action, else the role's mode,
    /// else the policy's.
    pub fn shadowed(&self, role: &str, rule: Option<&Rule>) -> bool {
        rule.and_then(|r| r.action)
            .or_else(|| self.roles.get(role).and_then(|o| o.mode))
            .unwrap_or(self.mode)
            == Mode::Shadow
    }

    pub fn options_for(&self, role: &str) -> RoleOptions {
        self.roles
            .get(role)
            .copied()
            .unwrap_or(self.default_options)
    }

    /// The switch positions a fresh start begins with.
    /// A short digest of everything that decides verdicts (zones, rules,
    /// switches and their defaults, roles, mode, console users), but not
    /// the operational settings, which differ from instance to instance:
    /// instances with the same checksum judge alike (SHOW INSTANCES).
    pub fn checksum(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{self:?}").as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn default_switches(&self) -> BTreeMap<String, bool> {
        self.switches
            .iter()
            .map(|(k, v)| (k.clone(), v.default))
            .collect()
    }
}

/// Operational settings (not policy): where to listen, where the database
/// is, limits, and where audit records go. Overridable by environment
/// variables `ZONEGUARD__PROXY__LISTEN`, `ZONEGUARD__AUDIT__FILE`, ...
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub proxy: ProxySettings,
    pub audit: AuditSettings,
    pub catalog: CatalogSettings,
    pub state: StateSettings,
    pub tls: TlsSettings,
    pub metrics: MetricsSettings,
}

/// The Prometheus and health-check endpoint (see `crate::metrics`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// `host:port` to serve GET /metrics and /healthz on ("" = off).
    pub listen: String,
}

/// TLS between clients and the guard (see `crate::tls`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The guard's certificate chain (PEM); relative to the policy file.
    pub cert_file: String,
    /// Its private key (PEM).
    pub key_file: String,
    /// disable, allow or require ("" = allow with a certificate, else disable).
    pub client_mode: String,
}

/// Where the switches' live positions are kept: a small schema in one
/// database of the upstream server, shared by every instance (see
/// `crate::state`). Off, or unreachable at start: each switch is at its
/// policy-file default until flipped on this instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateSettings {
    pub enabled: bool,
    /// The database holding the `zoneguard` schema (`zoneguard install-state`).
    pub database: String,
    /// The role the guard connects as (created by install-state).
    pub user: String,
    /// Its password, if the server asks for one: better through
    /// ZONEGUARD__STATE__PASSWORD, or a passfile (PGPASSFILE, ~/.pgpass).
    pub password: String,
    /// Re-read the positions this often even without a notification.
    pub refresh_ms: u64,
    /// Report this instance (policy checksum, generation applied) this often.
    pub heartbeat_secs: u64,
    /// This instance's name in SHOW INSTANCES ("" = host name and listen port).
    pub instance: String,
}

impl Default for StateSettings {
    fn default() -> Self {
        StateSettings {
            enabled: true,
            database: "postgres".into(),
            user: "zoneguard_state".into(),
            password: String::new(),
            refresh_ms: 1000,
            heartbeat_secs: 5,
            instance: String::new(),
        }
    }
}

/// The guard's own upstream connection that reads the catalog (see
/// `crate::catalog`). It needs LOGIN and CONNECT only: the catalog tables it
/// reads are readable by every role.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogSettings {
    /// Off: names are judged as written, never resolved.
    pub enabled: bool,
    /// The role the guard reads the catalog as.
    pub user: String,
    /// Its password, if the server asks for one (better set through
    /// ZONEGUARD__CATALOG__PASSWORD than written here).
    pub password: String,
    /// Reload every so many seconds (DDL through the guard, and the console's
    /// RELOAD CATALOG, reload at once).
    pub refresh_secs: u64,
    /// With the change log that `zoneguard catalog-trigger` installs, read
    /// its counter this often (milliseconds) and reload when it moved: DDL
    /// made outside the guard is in force within this (plus a load).
    pub poll_ms: u64,
    /// Most databases whose catalogs are kept; sessions of others are judged
    /// by names as written.
    pub max_databases: usize,
}

impl Default for CatalogSettings {
    fn default() -> Self {
        CatalogSettings {
            enabled: true,
            user: "zoneguard_catalog".into(),
            password: String::new(),
            refresh_secs: 60,
            poll_ms: 100,
            max_databases: 64,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxySettings {
    /// Address the guard listens on.
    pub listen: String,
    /// A directory where the guard also listens on a Unix-domain socket,
    /// `.s.PGSQL.<listen port>` (as PgBouncer's `unix_socket_dir`); empty:
    /// TCP only.
    pub unix_socket_dir: String,
    /// The real PostgreSQL server: `host:port`, or an absolute path to its
    /// Unix-domain socket (the socket file, or its directory for port 5432).
    pub upstream: String,
    /// Largest protocol message accepted from a client or server, in bytes.
    pub max_message_bytes: usize,
    /// How long a client may take to send its startup packet, in seconds.
    pub startup_timeout_secs: u64,
    /// How long to wait for the upstream connection, in seconds.
    pub connect_timeout_secs: u64,
    /// Most client connections served at once; more get 53300.
    pub max_clients: usize,
    /// Slots beyond `max_clients` that only admin console logins may take.
    pub reserved_console_slots: usize,
    /// Most connections from one client address that have not authenticated
    /// yet; at the cap the oldest of them is dropped.
    pub max_unauthenticated_per_address: usize,
    /// Most unauthenticated connections in all; at the cap the oldest is
    /// dropped.
    pub max_unauthenticated: usize,
    /// Bytes the classification cache may hold (keys and classifications,
    /// estimated), whatever the statements' sizes.
    pub cache_bytes: usize,
    /// TLS to the upstream, as libpq's sslmode: disable, prefer, require,
    /// verify-ca, verify-full.
    pub upstream_tls: String,
    /// The CA certificate(s) (PEM) that sign the upstream's certificate.
    pub upstream_ca_file: String,
    /// The most SQL the guard parses at once, in bytes outside literals (a
    /// literal counts 16 however long): a syntax tree takes about 150 times
    /// that in memory while it is judged, one such text at a time. Long
    /// lists are shortened to one element of each shape first, and a
    /// statement still over this is judged in pieces, its lists cut into
    /// runs; one with nothing to cut is rejected.
    pub max_statement_bytes: usize,
    /// At SIGTERM, how long sessions get to reach an idle moment outside a
    /// transaction before the rest are closed (57P01).
    pub drain_timeout_secs: u64,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            listen: "127.0.0.1:6432".into(),
            unix_socket_dir: String::new(),
            upstream: "127.0.0.1:5432".into(),
            max_message_bytes: 64 << 20,
            startup_timeout_secs: 10,
            connect_timeout_secs: 5,
            max_clients: 1000,
            reserved_console_slots: 3,
            max_unauthenticated_per_address: 256,
            max_unauthenticated: 2048,
            cache_bytes: crate::cache::DEFAULT_BYTES,
            upstream_tls: "prefer".into(),
            upstream_ca_file: String::new(),
            drain_timeout_secs: 30,
            max_statement_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// A file path (JSON lines, appended), or "-" for standard output.
    pub file: String,
    /// Statements longer than this many characters are cut in the record.
    pub max_statement_chars: usize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            file: "zoneguard-audit.jsonl".into(),
            max_statement_chars: 4096,
        }
    }
}
