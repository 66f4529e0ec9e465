//! The switches' live positions, kept in PostgreSQL so that every instance
//! agrees on them without a shared disk.
//!
//! A small schema (`zoneguard`, made by `zoneguard install-state`) in one
//! database of the upstream server holds each switch's position with the
//! generation of its last flip, an append-only log of flips, and one row
//! per instance (its heartbeat). A flip is one call of `zoneguard.flip()`:
//! the row lock on the switch serialises concurrent flips (no command fails
//! because another admin flipped at the same moment), the log row and the
//! NOTIFY commit with it.
//!
//! Invariants:
//! 1. A flip never touches the policy file: the file keeps the rules and
//!    each switch's default; the database keeps where a switch was flipped.
//! 2. Positions only move forward: a row is applied only if its generation
//!    is at least the one in force (generations come from one sequence), so
//!    a slow re-read can never undo a newer flip.
//! 3. Every instance hears a flip at once (LISTEN on its own connection)
//!    and re-reads every `refresh_ms` anyway, so a lost notification or a
//!    reconnect leaves it behind for one period at most.
//! 4. Unreachable: at start an instance runs on the file's defaults and
//!    says so; later it keeps the last positions it confirmed; either way
//!    its staleness is reported (SHOW STATE, SHOW INSTANCES, heartbeat).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_postgres::Client;

pub mod cli;
pub mod handle;

pub use handle::{StateHandle, Status};

use crate::guard::{Flipped, Guard};
use crate::policy::{Policy, StateSettings};

/// The channel `zoneguard.flip()` notifies.
pub const CHANNEL: &str = "zoneguard_switch";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{0}")]
    Connection(#[from] crate::upstream::OwnConnectionError),
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("timed out")]
    Timeout,
    #[error("the switch state database is off ([state] enabled = false)")]
    Disabled,
}

impl StateError {
    /// What an operator should do about it, when the server said why.
    pub fn hint(&self) -> Option<&'static str> {
        let code = match self {
            StateError::Postgres(e) => e.code()?.code(),
            StateError::Connection(crate::upstream::OwnConnectionError::Postgres(e)) => {
                e.code()?.code()
            }
            _ => return None,
        };
        match code {
            // undefined_table, invalid_schema_name, undefined_function,
            // invalid_authorization_specification, insufficient_privilege,
            // invalid_catalog_name
            "42P01" | "3F000" | "42883" | "28000" | "42501" | "3D000" => Some(
                "run `zoneguard install-state --database-url postgresql://SUPERUSER@HOST/postgres` once (see docs/killswitch.md)",
            ),
            "28P01" => Some("set the role's password in ZONEGUARD__STATE__PASSWORD or a passfile"),
            _ => None,
        }
    }

    /// The error with its hint, for logs and the console.
    pub fn explain(&self) -> String {
        match self.hint() {
            Some(h) => format!("{self}; {h}"),
            None => self.to_string(),
        }
    }
}

fn connect_timeout(guard: &Guard) -> Duration {
    Duration::from_secs(guard.settings.proxy.connect_timeout_secs.max(1))
}

/// The state database's connection: the follower's, or a new one.
pub async fn client(guard: &Guard) -> Result<Arc<Client>, StateError> {
    guard
        .state
        .client(&guard.upstream, connect_timeout(guard))
        .await
}

/// A flip's target as the console and the CLI spell it: on, off (and
/// PostgreSQL's other boolean spellings), or default (None). Err: the
/// message for anything else.
pub fn parse_position(word: &str) -> Result<Option<bool>, String> {
    match word.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(Some(true)),
        "off" | "false" | "0" | "no" => Ok(Some(false)),
        "default" => Ok(None),
        other => Err(format!(
            "switch position must be on, off or default, not {other:?}"
        )),
    }
}

/// A flipped position as shown: on, off, or default (None).
pub fn position_word(on: Option<bool>) -> &'static str {
    match on {
        Some(true) => "on",
        Some(false) => "off",
        None => "default",
    }
}

/// A switch's row in the state database.
#[derive(Debug, Clone)]
pub struct Position {
    pub name: String,
    pub on: Option<bool>,
    pub generation: i64,
    pub changed_by: Option<String>,
    pub reason: Option<String>,
}

/// The outcome of a flip.
#[derive(Debug, Clone, Copy)]
pub struct Flip {
    pub generation: i64,
    /// The switch's flipped position before (None: it was at its default).
    pub from: Option<bool>,
}

async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StateError> {
    Ok(tokio::time::timeout(limit, f)
        .await
        .map_err(|_| StateError::Timeout)??)
}

/// Flips a switch in the state database: `on` None puts it back to the
/// policy file's default. Serialised with every other flip of it by the
/// row lock; logged and notified in the same transaction.
pub async fn flip(
    client: &Client,
    name: &str,
    on: Option<bool>,
    who: &str,
    reason: Option<&str>,
    instance: Option<&str>,
) -> Result<Flip, StateError> {
    let row = within(
        Duration::from_secs(30),
        client.query_one(
            "SELECT flip_generation, old_position FROM zoneguard.flip($1, $2, $3, $4, $5)",
            &[&name, &on, &who, &reason, &instance],
        ),
    )
    .await?;
    Ok(Flip {
        generation: row.get(0),
        from: row.get(1),
    })
}

/// Every switch's row.
pub async fn positions(client: &Client) -> Result<Vec<Position>, StateError> {
    let rows = within(
        Duration::from_secs(10),
        client.query(
            "SELECT name, is_on, generation, changed_by, reason FROM zoneguard.switches ORDER BY name",
            &[],
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| Position {
            name: r.get(0),
            on: r.get(1),
            generation: r.get(2),
            changed_by: r.get(3),
            reason: r.get(4),
        })
        .collect())
}

/// A flip in the log.
#[derive(Debug, Clone)]
pub struct LoggedFlip {
    pub at: String,
    pub switch: String,
    pub from: Option<bool>,
    pub to: Option<bool>,
    pub generation: i64,
    pub who: String,
    pub reason: Option<String>,
    pub instance: Option<String>,
}

/// The newest `limit` flips, newest first.
pub async fn flips(client: &Client, limit: i64) -> Result<Vec<LoggedFlip>, StateError> {
    let rows = within(
        Duration::from_secs(10),
        client.query(
            "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), switch, from_on, to_on, generation, who, reason, instance
               FROM zoneguard.flips ORDER BY id DESC LIMIT $1",
            &[&limit],
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| LoggedFlip {
            at: r.get(0),
            switch: r.get(1),
            from: r.get(2),
            to: r.get(3),
            generation: r.get(4),
            who: r.get(5),
            reason: r.get(6),
            instance: r.get(7),
        })
        .collect())
}

/// An instance as it last reported itself, with what the fleet makes of it.
#[derive(Debug, Clone)]
pub struct Instance {
    pub instance: String,
    pub version: String,
    pub policy_checksum: String,
    pub switch_generation: i64,
    pub positions: String,
    /// Its own view's staleness when it reported (None: never confirmed).
    pub stale_ms: Option<i64>,
    pub started_at: String,
    pub last_seen_ms: i64,
    /// "ok", or what is wrong with it.
    pub status: String,
}

/// Every registered instance; `silent_after` is how long without a
/// heartbeat makes one "silent". Disagreement is measured against the live
/// instances: the most common policy checksum and positions, the newest
/// generation (ProxySQL's cluster checksums are the model).
pub async fn instances(
    client: &Client,
    silent_after: Duration,
) -> Result<Vec<Instance>, StateError> {
    let rows = within(
        Duration::from_secs(10),
        client.query(
            "SELECT instance, version, policy_checksum, switch_generation, positions, stale_ms,
                    to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    (extract(epoch FROM clock_timestamp() - last_seen) * 1000)::bigint
               FROM zoneguard.instances ORDER BY instance",
            &[],
        ),
    )
    .await?;
    let mut out: Vec<Instance> = rows
        .iter()
        .map(|r| Instance {
            instance: r.get(0),
            version: r.get(1),
            policy_checksum: r.get(2),
            switch_generation: r.get(3),
            positions: r.get(4),
            stale_ms: r.get(5),
            started_at: r.get(6),
            last_seen_ms: r.get(7),
            status: String::new(),
        })
        .collect();
    let silent_ms = silent_after.as_millis() as i64;
    let live: Vec<&Instance> = out.iter().filter(|i| i.last_seen_ms <= silent_ms).collect();
    let most_common = |f: &dyn Fn(&Instance) -> &str| -> Option<String> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for i in &live {
            *counts.entry(f(i)).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(v, _)| v.to_string())
    };
    let checksum = most_common(&|i| i.policy_checksum.as_str());
    let positions = most_common(&|i| i.positions.as_str());
    let newest = live.iter().map(|i| i.switch_generation).max().unwrap_or(0);
    for i in &mut out {
        let mut wrong = Vec::new();
        if i.last_seen_ms > silent_ms {
            wrong.push(format!("silent for {} s", i.last_seen_ms / 1000));
        } else {
            if checksum.as_deref().is_some_and(|c| c != i.policy_checksum) {
                wrong.push("policy differs".to_string());
            }
            if positions.as_deref().is_some_and(|p| p != i.positions) {
                wrong.push("positions differ".to_string());
            }
            if i.switch_generation < newest {
                wrong.push(format!(
                    "behind (generation {} < {newest})",
                    i.switch_generation
                ));
            }
            if i.stale_ms.is_none() {
                wrong.push("never confirmed the positions".to_string());
            }
        }
        i.status = if wrong.is_empty() {
            "ok".to_string()
        } else {
            wrong.join("; ")
        };
    }
    Ok(out)
}

/// How long without a heartbeat makes an instance "silent": three missed
/// heartbeats and some slack.
pub fn silent_after(settings: &StateSettings) -> Duration {
    Duration::from_secs(settings.heartbeat_secs.max(1) * 3 + 2)
}

/// "name=on,other=off": the positions in force, for the heartbeat.
fn positions_text(switches: &BTreeMap<String, bool>) -> String {
    switches
        .iter()
        .map(|(k, v)| format!("{k}={}", if *v { "on" } else { "off" }))
        .collect::<Vec<_>>()
        .join(",")
}

/// Registers this instance's switches (so that scripts can check a name
/// before flipping it) and reports the instance.
async fn register(client: &Client, guard: &Guard) -> Result<(), StateError> {
    let names: Vec<String> = guard
        .runtime
        .load()
        .policy
        .switches
        .keys()
        .cloned()
        .collect();
    within(
        Duration::from_secs(10),
        client.execute(
            "INSERT INTO zoneguard.switches (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING",
            &[&names],
        ),
    )
    .await?;
    heartbeat(client, guard).await
}

/// Reports this instance: policy checksum, positions and generation in
/// force, staleness, version.
async fn heartbeat(client: &Client, guard: &Guard) -> Result<(), StateError> {
    let rt = guard.runtime.load_full();
    let h = &guard.state;
    let started = h
        .started
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let stale: Option<i64> = h.staleness().map(|d| d.as_millis() as i64);
    within(
        Duration::from_secs(10),
        client.execute(
            "INSERT INTO zoneguard.instances AS i
                    (instance, version, policy_checksum, switch_generation, positions, stale_ms, started_at, last_seen)
             VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7::float8), clock_timestamp())
             ON CONFLICT (instance) DO UPDATE SET
                    version = EXCLUDED.version, policy_checksum = EXCLUDED.policy_checksum,
                    switch_generation = EXCLUDED.switch_generation, positions = EXCLUDED.positions,
                    stale_ms = EXCLUDED.stale_ms, started_at = EXCLUDED.started_at,
                    last_seen = EXCLUDED.last_seen",
            &[
                &h.instance,
                &env!("CARGO_PKG_VERSION"),
                &rt.policy.checksum(),
                &rt.switch_generation(),
                &positions_text(&rt.switches),
                &stale,
                &started,
            ],
        ),
    )
    .await?;
    Ok(())
}

/// Reads every position and applies what is newer.
async fn refresh(client: &Client, guard: &Guard) -> Result<(), StateError> {
    let rows = positions(client).await?;
    guard.state.confirmed();
    crate::control::apply_positions(guard, &rows, "state").await;
    Ok(())
}

/// Keeps this instance's positions in step with the state database: one
/// connection, LISTENing on [`CHANNEL`], re-reading every `refresh_ms` and
/// on every notification, reporting every `heartbeat_secs`; reconnecting
/// with backoff when it is lost. Returns after the first attempt (at most
/// twice the connect timeout), so that an instance started while a switch
/// is flipped does not serve a moment on the file's default.
pub async fn start(guard: Arc<Guard>) {
    if !guard.state.enabled() {
        return;
    }
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let limit = connect_timeout(&guard) * 2 + Duration::from_secs(1);
    tokio::spawn(async move {
        let mut first = Some(first_tx);
        let mut backoff = Duration::from_millis(250);
        loop {
            let mut connected = false;
            let result = follow(&guard, &mut connected, &mut first).await;
            *guard.state.client.lock().unwrap() = None;
            // A server that is down is retried often (it comes back); a
            // missing schema or role only after an operator acts, so it is
            // retried slowly, not to fill the server's log with failures.
            let mut most = Duration::from_secs(5);
            if let Err(e) = result {
                if e.hint().is_some() {
                    most = Duration::from_secs(60);
                }
                guard.state.set_status(Status::Unreachable(e.explain()));
            }
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            if connected {
                backoff = Duration::from_millis(250);
            }
            // Woken early by the console's RELOAD or SIGHUP (an operator
            // who has just run install-state need not wait).
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = guard.state.wake.notified() => {}
            }
            backoff = (backoff * 2).min(most);
        }
    });
    let _ = tokio::time::timeout(limit, first_rx).await;
}

async fn follow(
    guard: &Arc<Guard>,
    connected: &mut bool,
    first: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), StateError> {
    let h = &guard.state;
    let wake = h.wake.clone();
    let client = Arc::new(
        guard
            .upstream
            .own_connection(&h.login(), connect_timeout(guard), move |channel, _| {
                if channel == CHANNEL {
                    wake.notify_one();
                }
            })
            .await?,
    );
    within(
        Duration::from_secs(10),
        client.batch_execute(&format!("LISTEN {CHANNEL}")),
    )
    .await?;
    refresh(&client, guard).await?;
    register(&client, guard).await?;
    *h.client.lock().unwrap() = Some(client.clone());
    h.set_status(Status::Connected);
    *connected = true;
    if let Some(tx) = first.take() {
        let _ = tx.send(());
    }
    let mut tick = tokio::time::interval(Duration::from_millis(h.settings.refresh_ms.max(50)));
    let mut beat = tokio::time::interval(Duration::from_secs(h.settings.heartbeat_secs.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Reported again as soon as what this instance applies changes (a flip
    // made here, or heard), not only every heartbeat.
    let applied = |g: &Guard| {
        let rt = g.runtime.load();
        (rt.switch_generation(), rt.switches.clone())
    };
    let mut reported = applied(guard);
    loop {
        tokio::select! {
            _ = h.wake.notified() => { refresh(&client, guard).await?; }
            _ = tick.tick() => { refresh(&client, guard).await?; }
            _ = beat.tick() => {
                heartbeat(&client, guard).await?;
                reported = applied(guard);
                continue;
            }
        }
        let now = applied(guard);
        if now != reported {
            heartbeat(&client, guard).await?;
            reported = now;
        }
    }
}

/// The SQL `zoneguard install-state` runs (in one transaction): the role
/// (LOGIN only; with `password_verifier` as its password if given), the
/// schema, and exactly the privileges the guard uses: read and flip the
/// switches, append to the log (never change or delete it), keep its own
/// instance row. Idempotent: running it again changes nothing that exists.
pub fn install_sql(role: &str, password_verifier: Option<&str>) -> String {
    let r = quote_ident(role);
    let lit = quote_literal(role);
    let password = password_verifier
        .map(|v| format!("ALTER ROLE {r} PASSWORD {};\n", quote_literal(v)))
        .unwrap_or_default();
    format!(
        r#"BEGIN;
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {lit}) THEN
        CREATE ROLE {r} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;  -- made meanwhile
END $$;
{password}CREATE SCHEMA IF NOT EXISTS zoneguard;
REVOKE ALL ON SCHEMA zoneguard FROM PUBLIC;
CREATE SEQUENCE IF NOT EXISTS zoneguard.generation;
-- Each switch's flipped position (NULL: the policy file's default).
CREATE TABLE IF NOT EXISTS zoneguard.switches (
    name        text PRIMARY KEY,
    is_on       boolean,
    generation  bigint NOT NULL DEFAULT 0,
    changed_at  timestamptz,
    changed_by  text,
    reason      text,
    instance    text
);
-- Every flip, append-only.
CREATE TABLE IF NOT EXISTS zoneguard.flips (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    switch      text NOT NULL,
    from_on     boolean,
    to_on       boolean,
    generation  bigint NOT NULL,
    who         text NOT NULL,
    reason      text,
    instance    text
);
-- One row per guard instance: its heartbeat.
CREATE TABLE IF NOT EXISTS zoneguard.instances (
    instance          text PRIMARY KEY,
    version           text NOT NULL,
    policy_checksum   text NOT NULL,
    switch_generation bigint NOT NULL,
    positions         text NOT NULL,
    stale_ms          bigint,
    started_at        timestamptz NOT NULL,
    last_seen         timestamptz NOT NULL
);
-- A flip: serialised by the switch's row lock, logged and notified in the
-- same transaction. Also for runbooks: SELECT * FROM zoneguard.flip('enable_new_commerce', false, 'alice', 'incident 42');
CREATE OR REPLACE FUNCTION zoneguard.flip(
    switch_name text, new_position boolean,
    flipped_by text DEFAULT current_user, flip_reason text DEFAULT NULL, via_instance text DEFAULT NULL,
    OUT flip_generation bigint, OUT old_position boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    INSERT INTO zoneguard.switches (name) VALUES (switch_name) ON CONFLICT (name) DO NOTHING;
    SELECT s.is_on INTO old_position FROM zoneguard.switches s WHERE s.name = switch_name FOR UPDATE;
    flip_generation := nextval('zoneguard.generation');
    UPDATE zoneguard.switches s
       SET is_on = new_position, generation = flip_generation, changed_at = clock_timestamp(),
           changed_by = flipped_by, reason = flip_reason, instance = via_instance
     WHERE s.name = switch_name;
    INSERT INTO zoneguard.flips (switch, from_on, to_on, generation, who, reason, instance)
    VALUES (switch_name, old_position, new_position, flip_generation, flipped_by, flip_reason, via_instance);
    PERFORM pg_notify('{CHANNEL}', switch_name);
END
$f$;
REVOKE ALL ON FUNCTION zoneguard.flip(text, boolean, text, text, text) FROM PUBLIC;
GRANT USAGE ON SCHEMA zoneguard TO {r};
GRANT SELECT, INSERT, UPDATE ON zoneguard.switches TO {r};
GRANT SELECT, INSERT ON zoneguard.flips TO {r};
GRANT USAGE ON SEQUENCE zoneguard.flips_id_seq, zoneguard.generation TO {r};
GRANT SELECT, INSERT, UPDATE, DELETE ON zoneguard.instances TO {r};
GRANT EXECUTE ON FUNCTION zoneguard.flip(text, boolean, text, text, text) TO {r};
COMMIT;
"#
    )
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The flips to apply: rows of switches this policy has, at least as new
/// as what is in force (invariant 2), that change something.
pub fn newer(
    flipped: &BTreeMap<String, Flipped>,
    policy: &Policy,
    rows: &[Position],
) -> Vec<(String, Flipped)> {
    rows.iter()
        .filter(|r| policy.switches.contains_key(&r.name))
        .filter_map(|r| {
            let new = Flipped {
                on: r.on,
                generation: r.generation,
            };
            match flipped.get(&r.name) {
                Some(cur) if cur.generation > r.generation || *cur == new => None,
                None if r.on.is_none() && r.generation == 0 => None,
                _ => Some((r.name.clone(), new)),
            }
        })
        .collect()
}
