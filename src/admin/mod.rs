//! The admin console: a virtual database named `zoneguard`, answered by the
//! guard itself in the style of PgBouncer's (`psql -h HOST -p PORT -U admin
//! zoneguard`). Only the admins named in the policy get in, with a SCRAM or
//! md5 password check against the hash in the policy (see `auth`).

mod auth;
pub mod throttle;

pub use auth::{md5_hash, scram_verifier, valid_hash};
pub use throttle::Throttle;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::net::Stream;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use crate::audit::SessionInfo;
use crate::control;
use crate::guard::Guard;
use crate::protocol::{self, Severity, Startup};

/// The virtual database name that opens the console.
pub const DATABASE: &str = "zoneguard";

const HELP: &str = "commands: SHOW SWITCHES; SET SWITCH <name> = on|off|default [REASON '...']; SHOW STATE; SHOW INSTANCES; SHOW FLIPS; SHOW POLICY; SHOW ZONES; SHOW CLIENTS; SHOW STATS; SHOW CATALOGS; SHOW MODE; SET MODE enforce|shadow; EXPLAIN VERDICT 'sql' [AS ROLE r] [IN DATABASE d]; RELOAD; RELOAD CATALOG";

async fn fatal(client: &mut Stream, code: &str, msg: &str) {
    let _ = client
        .write_all(&protocol::error_response(Severity::Fatal, code, msg, None))
        .await;
}

pub async fn serve(
    guard: Arc<Guard>,
    mut client: Stream,
    startup: Startup,
    info: SessionInfo,
    ticket: crate::admission::Ticket,
) {
    let user = startup.user().to_string();
    let address = crate::admission::host_of(&info.client_addr).to_owned();
    if let Some(left) = guard.console_throttle.locked(&address) {
        // Not logged per attempt (the lockout's start is): a locked-out
        // flood cannot flood the log.
        fatal(
            &mut client,
            "28000",
            &format!(
                "too many failed admin console logins from this address: try again in {} s",
                left.as_secs() + 1
            ),
        )
        .await;
        return;
    }
    let stored = guard.runtime.load().policy.admins.get(&user).cloned();
    let mut buf = BytesMut::with_capacity(1024);
    // An unknown name goes through a SCRAM exchange that always fails, as
    // PostgreSQL does, so the answer does not tell which names exist.
    let mock = auth::mock_verifier(&guard.nonce, &user);
    let timeout = std::time::Duration::from_secs(guard.settings.proxy.startup_timeout_secs);
    let exchange = tokio::time::timeout(
        timeout,
        auth::authenticate(&mut client, &mut buf, stored.as_deref(), mock),
    );
    let answered = tokio::select! {
        r = exchange => r.ok().flatten(),
        _ = ticket.evicted() => return,
    };
    if answered != Some(true) {
        if answered == Some(false) {
            let failures = guard.console_throttle.failed(&address);
            tracing::warn!(user = ?user, addr = ?info.client_addr, failures, "admin console: authentication failed");
            if failures == throttle::MAX_FAILURES {
                tracing::warn!(addr = ?address, "admin console: too many failed logins, this address is locked out for a minute");
            }
            tokio::time::sleep(throttle::FAILURE_DELAY).await;
        }
        fatal(
            &mut client,
            "28P01",
            &format!("password authentication failed for user \"{user}\""),
        )
        .await;
        return;
    }
    tracing::info!(user = ?user, addr = ?info.client_addr, "admin console: login");
    guard.console_throttle.succeeded(&address);
    drop(ticket);
    let mut hello = BytesMut::new();
    hello.extend_from_slice(&protocol::authentication(0, &[]));
    for (k, v) in [
        ("server_version", "15.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", "zoneguard admin"),
    ] {
        hello.extend_from_slice(&protocol::parameter_status(k, v));
    }
    hello.extend_from_slice(&protocol::backend_key_data(0, 0));
    hello.extend_from_slice(&protocol::ready_for_query(b'I'));
    if client.write_all(&hello).await.is_err() {
        return;
    }
    let mut skipping = false;
    while let Some(frame) = auth::read_frame(&mut client, &mut buf).await {
        let reply = match frame.tag() {
            b'X' => return,
            b'Q' => {
                skipping = false;
                let sql =
                    String::from_utf8_lossy(protocol::query_text(frame.body()).unwrap_or_default())
                        .into_owned();
                let mut out = BytesMut::new();
                for cmd in sql.split(';').map(str::trim).filter(|c| !c.is_empty()) {
                    match command(&guard, &user, cmd).await {
                        Ok(b) => out.extend_from_slice(&b),
                        Err(msg) => {
                            out.extend_from_slice(&protocol::error_response(
                                Severity::Error,
                                "42601",
                                &msg,
                                Some(HELP),
                            ));
                            break;
                        }
                    }
                }
                if sql.trim().trim_matches(';').is_empty() {
                    out.extend_from_slice(&protocol::message_empty_query());
                }
                out.extend_from_slice(&protocol::ready_for_query(b'I'));
                out.freeze()
            }
            b'S' => {
                skipping = false;
                protocol::ready_for_query(b'I')
            }
            _ if skipping => continue,
            _ => {
                skipping = true;
                protocol::error_response(
                    Severity::Error,
                    "0A000",
                    "the zoneguard admin console speaks the simple query protocol only",
                    Some("Use psql, or send commands as simple queries."),
                )
            }
        };
        if client.write_all(&reply).await.is_err() {
            return;
        }
    }
}

fn table(columns: &[&str], rows: &[Vec<String>], tag: &str) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(&protocol::row_description(columns));
    for r in rows {
        let vals: Vec<Option<&str>> = r.iter().map(|v| Some(v.as_str())).collect();
        out.extend_from_slice(&protocol::data_row(&vals));
    }
    out.extend_from_slice(&protocol::command_complete(&format!(
        "{tag} {}",
        rows.len()
    )));
    out.freeze()
}

fn on_off(b: bool) -> String {
    if b { "on" } else { "off" }.to_string()
}

/// Splits a trailing `REASON 'text'` (a SQL string literal, '' for a
/// quote) off a command.
fn split_reason(cmd: &str) -> Result<(&str, Option<String>), String> {
    let lower = cmd.to_ascii_lowercase();
    // The keyword as a whole word: after whitespace, before whitespace or
    // the quote (a switch may be named reason_..., and a reason may say
    // "reason" inside its quotes, after the keyword).
    let Some(at) = lower.match_indices("reason").map(|(i, _)| i).find(|&i| {
        i > 0
            && cmd[..i].ends_with(char::is_whitespace)
            && cmd[i + 6..].starts_with(|c: char| c.is_whitespace() || c == '\'')
    }) else {
        return Ok((cmd, None));
    };
    let rest = cmd[at + 6..].trim_start();
    let Some(body) = rest.strip_prefix('\'') else {
        return Err("REASON takes a quoted string: REASON 'why'".into());
    };
    let mut text = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '\'' {
            text.push(c);
            continue;
        }
        if chars.peek().is_some_and(|(_, n)| *n == '\'') {
            chars.next();
            text.push('\'');
            continue;
        }
        let tail = body[i + 1..].trim().trim_end_matches(';').trim();
        if !tail.is_empty() {
            return Err(format!("unexpected {tail:?} after REASON '...'"));
        }
        return Ok((&cmd[..at], Some(text)));
    }
    Err("REASON '...' is missing its closing quote".into())
}

/// Runs one console command.
async fn command(guard: &Guard, admin: &str, cmd: &str) -> Result<Bytes, String> {
    let trimmed = cmd.trim().trim_end_matches(';').trim_end();
    if trimmed
        .get(..15)
        .is_some_and(|p| p.eq_ignore_ascii_case("explain verdict"))
    {
        return explain_verdict(guard, &trimmed[15..]);
    }
    let (cmd, reason) = split_reason(cmd)?;
    let words: Vec<String> = cmd
        .split(|c: char| c.is_whitespace() || c == '=')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    if reason.is_some() && !matches!(w.as_slice(), ["set", "switch", ..]) {
        return Err("REASON '...' goes with SET SWITCH only".into());
    }
    let rt = guard.runtime.load();
    match w.as_slice() {
        ["show", "switches"] => {
            let rows: Vec<Vec<String>> = rt
                .policy
                .switches
                .iter()
                .map(|(name, sw)| {
                    let source = match rt.flipped.get(name) {
                        Some(f) if f.generation > 0 && f.on.is_some() => {
                            format!("state database (generation {})", f.generation)
                        }
                        Some(f) if f.on.is_some() => "flipped on this instance".to_string(),
                        _ => "policy file default".to_string(),
                    };
                    vec![
                        name.clone(),
                        on_off(rt.switches.get(name).copied().unwrap_or(sw.default)),
                        on_off(sw.default),
                        source,
                        sw.description.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            Ok(table(
                &["name", "position", "default", "source", "description"],
                &rows,
                "SHOW",
            ))
        }
        ["set", "switch", name, pos] | ["set", "switch", name, "to", pos] => {
            let on = crate::state::parse_position(pos)?;
            control::set_switch(
                guard,
                name,
                on,
                &format!("console:{admin}"),
                reason.as_deref(),
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok(protocol::command_complete("SET SWITCH"))
        }
        ["show", "state"] => {
            let st = &guard.state;
            let rows = vec![
                vec!["status".to_string(), st.status().to_string()],
                vec!["database".to_string(), st.settings.database.clone()],
                vec!["instance".to_string(), st.instance.clone()],
                vec![
                    "confirmed_ms_ago".to_string(),
                    st.staleness()
                        .map_or("never".to_string(), |d| d.as_millis().to_string()),
                ],
                vec![
                    "switch_generation".to_string(),
                    rt.switch_generation().to_string(),
                ],
                vec!["policy_checksum".to_string(), rt.policy.checksum()],
            ];
            Ok(table(&["key", "value"], &rows, "SHOW"))
        }
        ["show", "instances"] => {
            let st = &guard.state;
            let client = crate::state::client(guard).await.map_err(|e| e.explain())?;
            let silent = crate::state::silent_after(&st.settings);
            let list = crate::state::instances(&client, silent)
                .await
                .map_err(|e| e.explain())?;
            let rows: Vec<Vec<String>> = list
                .into_iter()
                .map(|i| {
                    vec![
                        i.instance,
                        i.status,
                        i.policy_checksum,
                        i.switch_generation.to_string(),
                        i.positions,
                        i.stale_ms.map_or("never".into(), |m| m.to_string()),
                        i.last_seen_ms.to_string(),
                        i.version,
                        i.started_at,
                    ]
                })
                .collect();
            Ok(table(
                &[
                    "instance",
                    "status",
                    "policy_checksum",
                    "switch_generation",
                    "positions",
                    "confirmed_ms_ago",
                    "last_seen_ms_ago",
                    "version",
                    "started_at",
                ],
                &rows,
                "SHOW",
            ))
        }
        ["show", "flips"] => {
            let client = crate::state::client(guard).await.map_err(|e| e.explain())?;
            let list = crate::state::flips(&client, 50)
                .await
                .map_err(|e| e.explain())?;
            let pos = |p: Option<bool>| crate::state::position_word(p).to_string();
            let rows: Vec<Vec<String>> = list
                .into_iter()
                .map(|f| {
                    vec![
                        f.at,
                        f.switch,
                        pos(f.from),
                        pos(f.to),
                        f.generation.to_string(),
                        f.who,
                        f.reason.unwrap_or_default(),
                        f.instance.unwrap_or_default(),
                    ]
                })
                .collect();
            Ok(table(
                &[
                    "at",
                    "switch",
                    "from",
                    "to",
                    "generation",
                    "who",
                    "reason",
                    "instance",
                ],
                &rows,
                "SHOW",
            ))
        }
        ["show", "policy"] | ["show", "rules"] => {
            let rows: Vec<Vec<String>> = rt
                .policy
                .rules
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        r.zone.clone(),
                        if r.roles.is_empty() {
                            "*".into()
                        } else {
                            r.roles.join(",")
                        },
                        r.when
                            .iter()
                            .map(|(s, p)| format!("{s}={}", on_off(*p)))
                            .collect::<Vec<_>>()
                            .join(","),
                        r.allow.words().join(","),
                    ]
                })
                .collect();
            Ok(table(
                &["rule", "zone", "roles", "when", "allow"],
                &rows,
                "SHOW",
            ))
        }
        ["show", "zones"] => {
            let rows: Vec<Vec<String>> = rt
                .policy
                .zones
                .iter()
                .map(|z| {
                    vec![
                        z.name.clone(),
                        z.tables
                            .iter()
                            .map(|t| t.to_string())
                            .chain(z.patterns.iter().map(|p| match &p.schema {
                                Some(s) => format!("{s}.{} (pattern)", p.name),
                                None => format!("{} (pattern)", p.name),
                            }))
                            .chain(z.schemas.iter().map(|s| format!("schema {s}")))
                            .collect::<Vec<_>>()
                            .join(", "),
                        z.description.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            Ok(table(&["zone", "tables", "description"], &rows, "SHOW"))
        }
        ["show", "clients"] => {
            let rows: Vec<Vec<String>> = guard
                .clients_registry
                .lock()
                .unwrap()
                .iter()
                .map(|(id, c)| {
                    vec![
                        id.to_string(),
                        c.user.clone(),
                        c.database.clone(),
                        c.application_name.clone(),
                        c.client_addr.clone(),
                        c.connected_at.clone(),
                    ]
                })
                .collect();
            Ok(table(
                &[
                    "session_id",
                    "user",
                    "database",
                    "application_name",
                    "client_addr",
                    "connected_at",
                ],
                &rows,
                "SHOW",
            ))
        }
        ["show", "stats"] => {
            let s = &guard.stats;
            let mut rows = vec![
                vec![
                    "statements".to_string(),
                    s.statements.load(Ordering::Relaxed).to_string(),
                ],
                vec![
                    "allowed".to_string(),
                    s.allowed.load(Ordering::Relaxed).to_string(),
                ],
                vec![
                    "rejected".to_string(),
                    s.rejected.load(Ordering::Relaxed).to_string(),
                ],
                vec!["policy_generation".to_string(), rt.generation.to_string()],
            ];
            for (rule, n) in crate::guard::Stats::by_rule(&s.rejected_by).iter() {
                rows.push(vec![format!("rejected[{rule}]"), n.to_string()]);
            }
            rows.push(vec![
                "would_reject".to_string(),
                s.shadowed.load(Ordering::Relaxed).to_string(),
            ]);
            for (rule, n) in crate::guard::Stats::by_rule(&s.shadowed_by).iter() {
                rows.push(vec![format!("would_reject[{rule}]"), n.to_string()]);
            }
            Ok(table(&["metric", "value"], &rows, "SHOW"))
        }
        ["show", "mode"] => {
            let p = &rt.policy;
            let mut rows = vec![vec!["policy".to_string(), p.mode.as_str().to_string()]];
            for (role, o) in &p.roles {
                if let Some(m) = o.mode {
                    rows.push(vec![format!("role {role}"), m.as_str().to_string()]);
                }
            }
            for r in &p.rules {
                if let Some(a) = r.action {
                    let action = if a == crate::policy::Mode::Shadow {
                        "log"
                    } else {
                        "reject"
                    };
                    rows.push(vec![format!("rule {}", r.name), action.to_string()]);
                }
            }
            Ok(table(&["scope", "mode"], &rows, "SHOW"))
        }
        ["set", "mode", m] | ["set", "mode", "to", m] => {
            let mode = match m.trim_matches('\'') {
                "enforce" => crate::policy::Mode::Enforce,
                "shadow" => crate::policy::Mode::Shadow,
                other => return Err(format!("mode must be enforce or shadow, not {other:?}")),
            };
            control::set_mode(guard, mode, &format!("console:{admin}"))
                .await
                .map_err(|e| format!("mode not changed: {e}"))?;
            Ok(protocol::command_complete("SET MODE"))
        }
        ["show", "catalogs"] => {
            let rows: Vec<Vec<String>> = guard
                .catalogs
                .all()
                .iter()
                .map(|db| {
                    let cur = db.current();
                    vec![
                        db.database.clone(),
                        cur.as_ref().map_or("-".into(), |c| c.version.to_string()),
                        cur.as_ref().map_or("-".into(), |c| c.len().to_string()),
                        cur.as_ref()
                            .map_or("-".into(), |c| c.loaded_in.as_millis().to_string()),
                        db.last_error.lock().unwrap().clone().unwrap_or_default(),
                    ]
                })
                .collect();
            Ok(table(
                &["database", "version", "objects", "load_ms", "last_error"],
                &rows,
                "SHOW",
            ))
        }
        ["reload", "catalog"] | ["reload", "catalogs"] => {
            let dbs = guard.catalogs.all();
            let timeout =
                std::time::Duration::from_secs(guard.settings.proxy.connect_timeout_secs.max(1));
            for db in &dbs {
                let ticket = db.request_reload();
                db.wait_for(ticket, timeout).await;
            }
            Ok(protocol::command_complete("RELOAD"))
        }
        ["reload"] => {
            control::reload(guard, "console", &format!("console:{admin}"))
                .await
                .map_err(|e| format!("reload refused, the running policy stays in force: {e}"))?;
            Ok(protocol::command_complete("RELOAD"))
        }
        _ => Err(format!("unknown admin console command: {cmd}")),
    }
}

/// `EXPLAIN VERDICT 'sql' [AS ROLE r] [IN DATABASE d]`: what the guard would
/// decide for that SQL now (current policy and switch positions), with the
/// catalog of database `d` if the guard keeps one. One row per access.
fn explain_verdict(guard: &Guard, rest: &str) -> Result<Bytes, String> {
    let rest = rest.trim_start();
    let usage = "usage: EXPLAIN VERDICT 'sql' [AS ROLE role] [IN DATABASE db]";
    let Some(body) = rest.strip_prefix('\'') else {
        return Err(usage.to_owned());
    };
    // A standard string: '' is a quote.
    let mut sql = String::new();
    let mut chars = body.char_indices().peekable();
    let mut end = None;
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            if chars.peek().is_some_and(|(_, n)| *n == '\'') {
                chars.next();
                sql.push('\'');
                continue;
            }
            end = Some(i + 1);
            break;
        }
        sql.push(c);
    }
    let Some(end) = end else {
        return Err(usage.to_owned());
    };
    let words: Vec<&str> = body[end..].split_whitespace().collect();
    let (mut role, mut database) = ("app".to_owned(), None);
    let mut i = 0;
    while i < words.len() {
        match (
            words[i].to_ascii_lowercase().as_str(),
            words.get(i + 1),
            words.get(i + 2),
        ) {
            ("as", Some(r), Some(name)) if r.eq_ignore_ascii_case("role") => {
                role = name.to_string();
                i += 3;
            }
            ("in", Some(d), Some(name)) if d.eq_ignore_ascii_case("database") => {
                database = Some(name.to_string());
                i += 3;
            }
            _ => return Err(usage.to_owned()),
        }
    }
    let rt = guard.runtime.load();
    let catalog = match &database {
        Some(db) => Some(
            guard
                .catalogs
                .all()
                .into_iter()
                .find(|c| &c.database == db)
                .and_then(|c| c.current())
                .ok_or_else(|| {
                    format!("no catalog kept for database {db:?} (see SHOW CATALOGS)")
                })?,
        ),
        None => None,
    };
    let e = crate::explain::explain(&rt.policy, &sql, &role, &rt.switches, catalog.as_deref());
    let mut rows = Vec::new();
    for (n, st) in e.statements.iter().enumerate() {
        for a in &st.accesses {
            let zones: Vec<String> = a.zones.iter().map(|(z, r)| format!("{z} ({r})")).collect();
            rows.push(vec![
                (n + 1).to_string(),
                a.operation.clone(),
                a.table.clone(),
                zones.join(" / "),
                a.verdict.to_owned(),
                a.message.clone().unwrap_or_default(),
            ]);
        }
        for s in &st.specials {
            rows.push(vec![
                (n + 1).to_string(),
                st.command.clone(),
                String::new(),
                String::new(),
                st.verdict.to_owned(),
                s.clone(),
            ]);
        }
    }
    rows.push(vec![
        String::new(),
        "verdict".to_owned(),
        String::new(),
        format!("role {role}"),
        e.verdict.to_owned(),
        e.message.clone().unwrap_or_default(),
    ]);
    Ok(table(
        &[
            "statement",
            "operation",
            "table",
            "zones",
            "verdict",
            "message",
        ],
        &rows,
        "EXPLAIN",
    ))
}

#[cfg(test)]
mod reason_tests {
    use super::split_reason;

    #[test]
    fn reason_is_a_whole_word_and_a_sql_literal() {
        assert_eq!(
            split_reason("SET SWITCH s = off REASON 'it''s down'").unwrap(),
            ("SET SWITCH s = off ", Some("it's down".to_string()))
        );
        assert_eq!(
            split_reason("SET SWITCH reason_code = off").unwrap(),
            ("SET SWITCH reason_code = off", None)
        );
        assert_eq!(
            split_reason("set switch s = on reason'the reason'")
                .unwrap()
                .1,
            Some("the reason".to_string())
        );
        assert!(split_reason("SET SWITCH s = off REASON 'open").is_err());
        assert!(split_reason("SET SWITCH s = off REASON 'x' junk").is_err());
    }
}
