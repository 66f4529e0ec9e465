//! The on-disk shape of `policy.toml` and its validation into a [`Policy`].
//!
//! Parsing goes through the `toml` crate with spans so that every error names
//! the line; the operational settings (`[proxy]`, `[audit]`) are read through
//! the `config` crate as well so that `ZONEGUARD__SECTION__KEY` environment
//! variables override the file.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{Allowed, Policy, RoleOptions, Rule, Settings, Switch, Zone, UNLISTED_ZONE};
use crate::classify::RelationName;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: settings: {message}")]
    Settings { path: String, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    // [proxy] and [audit] are operational settings, read by `settings()`
    // through the config crate (with environment overrides); listed here so
    // that deny_unknown_fields accepts them.
    #[serde(default)]
    #[allow(dead_code)]
    proxy: Option<toml::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    audit: Option<toml::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    catalog: Option<toml::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    state: Option<toml::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    tls: Option<toml::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    metrics: Option<toml::Value>,
    #[serde(default)]
    defaults: DefaultsFile,
    #[serde(default)]
    zones: BTreeMap<Spanned<String>, ZoneFile>,
    #[serde(default)]
    rules: Vec<RuleFile>,
    #[serde(default)]
    switches: BTreeMap<Spanned<String>, SwitchFile>,
    #[serde(default)]
    roles: BTreeMap<Spanned<String>, RoleFile>,
    #[serde(default)]
    admin: AdminFile,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AdminFile {
    /// Role name -> PostgreSQL md5 hash: "md5" + md5(password || role).
    #[serde(default)]
    users: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DefaultsFile {
    allow: Option<Vec<Spanned<String>>>,
    mode: Option<Spanned<String>>,
    do_blocks: Option<bool>,
    call: Option<bool>,
    function_calls: Option<bool>,
    other_ddl: Option<bool>,
    replication: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneFile {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    tables: Vec<Spanned<String>>,
    #[serde(default)]
    schemas: Vec<Spanned<String>>,
    /// Sequences and indexes placed in this zone by their own name (else
    /// they are in their table's zone).
    #[serde(default)]
    sequences: Vec<Spanned<String>>,
    #[serde(default)]
    indexes: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: Spanned<String>,
    zone: Spanned<String>,
    #[serde(default)]
    tables: Vec<Spanned<String>>,
    #[serde(default)]
    roles: Vec<Spanned<String>>,
    #[serde(default)]
    when: BTreeMap<Spanned<String>, bool>,
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    hint: Option<String>,
    #[serde(default)]
    action: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchFile {
    default: bool,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RoleFile {
    mode: Option<Spanned<String>>,
    do_blocks: Option<bool>,
    call: Option<bool>,
    function_calls: Option<bool>,
    other_ddl: Option<bool>,
    replication: Option<bool>,
}

/// Loads, validates and returns the policy and the operational settings.
pub fn load(path: &Path) -> Result<(Policy, Settings), PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, path)
}

/// Parses policy text (as if read from `path`, which is used in messages and
/// to resolve relative file names).
pub fn parse(text: &str, path: &Path) -> Result<(Policy, Settings), PolicyError> {
    let shown = path.display().to_string();
    // Valid TOML, and it would leave everything at the defaults: never
    // what anyone meant (most often a file caught mid-write or truncated).
    if text.trim().is_empty() {
        return Err(PolicyError::Syntax {
            path: shown,
            message: "the policy file is empty".into(),
        });
    }
    let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Syntax {
        path: shown.clone(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let policy = validate(file, text, &shown)?;
    let settings = settings(text, path)?;
    Ok((policy, settings))
}

fn settings(text: &str, path: &Path) -> Result<Settings, PolicyError> {
    use config::{Config, Environment, File, FileFormat};
    let err = |e: config::ConfigError| PolicyError::Settings {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let cfg = Config::builder()
        .add_source(File::from_str(text, FileFormat::Toml))
        .add_source(
            Environment::with_prefix("ZONEGUARD")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .map_err(err)?;
    let mut settings = Settings::default();
    if let Ok(proxy) = cfg.get::<super::ProxySettings>("proxy") {
        settings.proxy = proxy;
    } else if cfg.get_table("proxy").is_ok() {
        settings.proxy = cfg.get("proxy").map_err(err)?;
    }
    if cfg.get_table("audit").is_ok() {
        settings.audit = cfg.get("audit").map_err(err)?;
    }
    if cfg.get_table("catalog").is_ok() {
        settings.catalog = cfg.get("catalog").map_err(err)?;
    }
    if cfg.get_table("state").is_ok() {
        settings.state = cfg.get("state").map_err(err)?;
    }
    if cfg.get_table("tls").is_ok() {
        settings.tls = cfg.get("tls").map_err(err)?;
    }
    if cfg.get_table("metrics").is_ok() {
        settings.metrics = cfg.get("metrics").map_err(err)?;
    }
    if let Err(message) = crate::net::Endpoint::parse(&settings.proxy.upstream) {
        return Err(PolicyError::Settings {
            path: path.display().to_string(),
            message: format!("[proxy] upstream: {message}"),
        });
    }
    // Relative audit paths are relative to the policy file, so that the guard
    // writes to the same place whatever directory it was started from.
    // So are the certificate files.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        for file in [
            &mut settings.audit.file,
            &mut settings.tls.cert_file,
            &mut settings.tls.key_file,
            &mut settings.proxy.upstream_ca_file,
        ] {
            let special = *file == "-" || *file == "syslog" || file.starts_with("syslog:");
            if !file.is_empty() && !special && PathBuf::from(&*file).is_relative() {
                *file = dir.join(&*file).display().to_string();
            }
        }
    }
    Ok(settings)
}

struct Ctx<'a> {
    text: &'a str,
    path: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        let line = self.text[..span.start.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1;
        PolicyError::Invalid {
            path: self.path.to_owned(),
            line,
            message: message.into(),
        }
    }

    fn mode(&self, m: &Spanned<String>) -> Result<super::Mode, PolicyError> {
        match m.get_ref().as_str() {
            "enforce" => Ok(super::Mode::Enforce),
            "shadow" => Ok(super::Mode::Shadow),
            other => Err(self.err(
                m.span(),
                format!("mode must be \"enforce\" or \"shadow\", not {other:?}"),
            )),
        }
    }

    fn allowed(&self, list: &[Spanned<String>]) -> Result<Allowed, PolicyError> {
        let mut allowed = Allowed::default();
        for op in list {
            allowed = allowed.union(Allowed::parse(op.get_ref()).ok_or_else(|| {
                self.err(
                    op.span(),
                    format!(
                        "unknown operation {:?}; use read, insert, update, delete, truncate, lock, ddl, write (insert+update+delete+truncate) or all",
                        op.get_ref()
                    ),
                )
            })?);
        }
        Ok(allowed)
    }
}

fn validate(file: PolicyFile, text: &str, path: &str) -> Result<Policy, PolicyError> {
    let cx = Ctx { text, path };
    let mut zones = Vec::new();
    let mut seen_tables: BTreeMap<RelationName, String> = BTreeMap::new();
    let mut seen_patterns: Vec<(String, RelationName)> = Vec::new();
    let mut seen_schemas: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_own: BTreeMap<(String, RelationName), String> = BTreeMap::new();
    for (name, zone) in &file.zones {
        if name.get_ref() == UNLISTED_ZONE {
            return Err(cx.err(
                name.span(),
                format!("zone name {UNLISTED_ZONE:?} is reserved for tables no zone names"),
            ));
        }
        let mut tables = Vec::new();
        let mut patterns = Vec::new();
        for t in &zone.tables {
            if let Some(pat) = parse_table_pattern(t.get_ref()) {
                for (other_zone, other) in &seen_patterns {
                    let schemas_meet = pat.schema.is_none()
                        || other.schema.is_none()
                        || pat.schema == other.schema;
                    if other_zone != name.get_ref()
                        && schemas_meet
                        && super::globs_overlap(&pat.name, &other.name)
                    {
                        return Err(cx.err(
                            t.span(),
                            format!(
                                "pattern {:?} can match the same tables as pattern {:?} of zone {other_zone:?}; patterns of two zones must not overlap (list the table by name in one zone: a name beats a pattern)",
                                t.get_ref(),
                                other.name
                            ),
                        ));
                    }
                }
                seen_patterns.push((name.get_ref().clone(), pat.clone()));
                patterns.push(pat);
                continue;
            }
            let rel = parse_table_name(t.get_ref())
                .ok_or_else(|| cx.err(t.span(), format!("not a table name: {:?}", t.get_ref())))?;
            if let Some(other) = seen_tables.insert(rel.clone(), name.get_ref().clone()) {
                return Err(cx.err(
                    t.span(),
                    format!(
                        "table {rel} is already in zone {other:?}; a table belongs to one zone"
                    ),
                ));
            }
            tables.push(rel);
        }
        let mut schemas = Vec::new();
        for s in &zone.schemas {
            let schema = match parse_table_name(s.get_ref()) {
                Some(RelationName { schema: None, name }) => name,
                _ => return Err(cx.err(s.span(), format!("not a schema name: {:?}", s.get_ref()))),
            };
            if let Some(other) = seen_schemas.insert(schema.clone(), name.get_ref().clone()) {
                return Err(cx.err(
                    s.span(),
                    format!("schema {schema:?} is already in zone {other:?}; a schema belongs to one zone"),
                ));
            }
            schemas.push(schema);
        }
        let mut own_kind = |list: &[Spanned<String>], noun: &str| {
            let mut out = Vec::new();
            for t in list {
                let rel = parse_table_name(t.get_ref()).ok_or_else(|| {
                    cx.err(t.span(), format!("not a {noun} name: {:?}", t.get_ref()))
                })?;
                if let Some(other) =
                    seen_own.insert((noun.to_owned(), rel.clone()), name.get_ref().clone())
                {
                    return Err(cx.err(
                        t.span(),
                        format!("{noun} {rel} is already in zone {other:?}; a {noun} belongs to one zone"),
                    ));
                }
                out.push(rel);
            }
            Ok(out)
        };
        let sequences = own_kind(&zone.sequences, "sequence")?;
        let indexes = own_kind(&zone.indexes, "index")?;
        zones.push(Zone {
            name: name.get_ref().clone(),
            description: zone.description.clone(),
            tables,
            patterns,
            schemas,
            sequences,
            indexes,
        });
    }
    let mut switches = BTreeMap::new();
    for (name, sw) in &file.switches {
        if !is_plain_identifier(name.get_ref()) {
            return Err(cx.err(
                name.span(),
                "switch names are lower-case letters, digits and _",
            ));
        }
        switches.insert(
            name.get_ref().clone(),
            Switch {
                default: sw.default,
                description: sw.description.clone(),
            },
        );
    }
    let mut rules = Vec::new();
    let mut rule_names = BTreeSet::new();
    for r in &file.rules {
        if !rule_names.insert(r.name.get_ref().clone()) {
            return Err(cx.err(
                r.name.span(),
                format!("duplicate rule name {:?}", r.name.get_ref()),
            ));
        }
        let zone = r.zone.get_ref();
        if zone != UNLISTED_ZONE && !zones.iter().any(|z| &z.name == zone) {
            let known: Vec<_> = zones.iter().map(|z| z.name.as_str()).collect();
            return Err(cx.err(
                r.zone.span(),
                format!(
                    "rule {:?} names zone {zone:?}, which is not defined (zones: {}, or {UNLISTED_ZONE:?})",
                    r.name.get_ref(),
                    known.join(", ")
                ),
            ));
        }
        let mut when = Vec::new();
        for (sw, pos) in &r.when {
            if !switches.contains_key(sw.get_ref()) {
                return Err(cx.err(
                    sw.span(),
                    format!(
                        "rule {:?} depends on switch {:?}, which is not declared under [switches]",
                        r.name.get_ref(),
                        sw.get_ref()
                    ),
                ));
            }
            when.push((sw.get_ref().clone(), *pos));
        }
        let mut tables = Vec::new();
        for t in &r.tables {
            let rel = parse_table_name(t.get_ref())
                .ok_or_else(|| cx.err(t.span(), format!("not a table name: {:?}", t.get_ref())))?;
            let in_zone = zones
                .iter()
                .find(|z| &z.name == zone)
                .is_some_and(|z| z.tables.contains(&rel));
            if !in_zone {
                return Err(cx.err(
                    t.span(),
                    format!(
                        "rule {:?} names table {rel}, which is not in zone {zone:?}",
                        r.name.get_ref()
                    ),
                ));
            }
            tables.push(rel);
        }
        rules.push(Rule {
            name: r.name.get_ref().clone(),
            zone: zone.clone(),
            tables,
            roles: r.roles.iter().map(|s| s.get_ref().clone()).collect(),
            when,
            allow: cx.allowed(&r.allow)?,
            reason: r.reason.clone(),
            hint: r.hint.clone(),
            action: match &r.action {
                None => None,
                Some(a) => Some(match a.get_ref().as_str() {
                    "reject" => super::Mode::Enforce,
                    "log" => super::Mode::Shadow,
                    other => {
                        return Err(cx.err(
                            a.span(),
                            format!("rule action must be \"reject\" or \"log\", not {other:?}"),
                        ))
                    }
                }),
            },
        });
    }
    let defaults = &file.defaults;
    let base = RoleOptions {
        do_blocks: defaults.do_blocks.unwrap_or(false),
        call: defaults.call.unwrap_or(false),
        function_calls: defaults.function_calls.unwrap_or(false),
        other_ddl: defaults.other_ddl.unwrap_or(false),
        replication: defaults.replication.unwrap_or(false),
        mode: None,
    };
    let mode = match &defaults.mode {
        None => super::Mode::Enforce,
        Some(m) => cx.mode(m)?,
    };
    let default_allow = match &defaults.allow {
        Some(list) => cx.allowed(list)?,
        None => Allowed::READ,
    };
    let mut roles = BTreeMap::new();
    for (name, r) in &file.roles {
        roles.insert(
            name.get_ref().clone(),
            RoleOptions {
                do_blocks: r.do_blocks.unwrap_or(base.do_blocks),
                call: r.call.unwrap_or(base.call),
                function_calls: r.function_calls.unwrap_or(base.function_calls),
                other_ddl: r.other_ddl.unwrap_or(base.other_ddl),
                replication: r.replication.unwrap_or(base.replication),
                mode: match &r.mode {
                    None => None,
                    Some(m) => Some(cx.mode(m)?),
                },
            },
        );
    }
    let mut admins = BTreeMap::new();
    for (name, hash) in &file.admin.users {
        let h = hash.get_ref();
        if !crate::admin::valid_hash(h) {
            return Err(cx.err(
                hash.span(),
                format!(
                    "admin {name:?}: expected a password hash as PostgreSQL stores it: SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (make one with `zoneguard hash-password`) or md5 followed by 32 lower-case hex digits; plain-text passwords are not accepted"
                ),
            ));
        }
        admins.insert(name.clone(), h.clone());
    }
    Ok(Policy {
        admins,
        zones,
        rules,
        switches,
        default_allow,
        default_options: base,
        roles,
        mode,
    })
}

fn is_plain_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Parses a table name as a DBA writes it in the policy, with PostgreSQL's
/// rules: `users`, `public.users`, `"MixedCase"`, `app."Orders"`.
/// A zone entry with `*` or `?` in its unquoted text is a name pattern:
/// `django_*`, `app.auth_*`. The schema part, if any, is exact; quoted parts
/// are not allowed in patterns.
fn parse_table_pattern(s: &str) -> Option<RelationName> {
    if !s.contains(['*', '?']) || s.contains('"') {
        return None;
    }
    let plain: String = s
        .chars()
        .map(|c| if c == '*' || c == '?' { 'x' } else { c })
        .collect();
    let shape = parse_table_name(&plain)?;
    let lower = s.trim().to_lowercase();
    let (schema, name) = match shape.schema {
        Some(_) => {
            let (a, b) = lower.split_once('.')?;
            if a.contains(['*', '?']) {
                return None;
            }
            (Some(a.to_owned()), b.to_owned())
        }
        None => (None, lower),
    };
    Some(RelationName { schema, name })
}

pub fn parse_table_name(s: &str) -> Option<RelationName> {
    let mut parts = Vec::new();
    let mut chars = s.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if !(c.is_alphanumeric() || c == '_' || c == '$') {
                    return None;
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(_) => return None,
        }
    }
    match parts.len() {
        1 => Some(RelationName::new(None, &parts[0])),
        2 => Some(RelationName::new(Some(&parts[0]), &parts[1])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_fold_like_postgres() {
        assert_eq!(
            parse_table_name("Users"),
            Some(RelationName::new(None, "users"))
        );
        assert_eq!(
            parse_table_name("public.\"Users\""),
            Some(RelationName::new(Some("public"), "Users"))
        );
        assert_eq!(parse_table_name("a.b.c"), None);
        assert_eq!(parse_table_name("bad name"), None);
        assert_eq!(
            parse_table_name("\"a\"\"b\""),
            Some(RelationName::new(None, "a\"b"))
        );
    }

    #[test]
    fn errors_name_the_line() {
        let text = "[zones.legacy]\ntables = [\"users\"]\n\n[[rules]]\nname = \"x\"\nzone = \"legcy\"\nallow = [\"read\"]\n";
        let err = parse(text, Path::new("p.toml")).unwrap_err().to_string();
        assert!(err.starts_with("p.toml:6:"), "{err}");
        assert!(err.contains("legcy"), "{err}");
        let text = "[[rules]]\nname = \"x\"\nzone = \"unlisted\"\nallow = [\"read\", \"wirte\"]\n";
        let err = parse(text, Path::new("p.toml")).unwrap_err().to_string();
        assert!(err.starts_with("p.toml:4:"), "{err}");
        let err = parse("[zones.a]\ntablez = []\n", Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        // A key no other test sets: environment variables are process-wide.
        std::env::set_var("ZONEGUARD__AUDIT__MAX_STATEMENT_CHARS", "77");
        let (_, settings) =
            parse("[audit]\nmax_statement_chars = 5\n", Path::new("p.toml")).unwrap();
        std::env::remove_var("ZONEGUARD__AUDIT__MAX_STATEMENT_CHARS");
        assert_eq!(settings.audit.max_statement_chars, 77);
    }

    #[test]
    fn the_upstream_is_an_address_or_a_socket_path() {
        let err = parse("[proxy]\nupstream = \"localhost\"\n", Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[proxy] upstream"), "{err}");
        let (_, s) = parse(
            "[proxy]\nupstream = \"/var/run/postgresql\"\n",
            Path::new("p.toml"),
        )
        .unwrap();
        assert_eq!(s.proxy.upstream, "/var/run/postgresql");
    }

    #[test]
    fn plain_text_admin_passwords_are_refused() {
        let err = parse("[admin]\nusers = { a = \"secret\" }\n", Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.toml:2:") && err.contains("md5"), "{err}");
    }

    #[test]
    fn a_table_belongs_to_one_zone() {
        let text = "[zones.a]\ntables = [\"users\"]\n[zones.b]\ntables = [\"USERS\"]\n";
        let err = parse(text, Path::new("p.toml")).unwrap_err().to_string();
        assert!(err.contains("p.toml:4:"), "{err}");
    }
}
