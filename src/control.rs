//! The policy in force and its switches: hot reload (file change or SIGHUP),
//! validated before it is swapped in, and switch flips.
//!
//! The policy file keeps the rules and each switch's default; a flip changes
//! the running position only and never reads or writes the file (so a flip
//! works while someone's unfinished edit sits there, and applies nothing
//! else). With the state database (`crate::state`) a flip is recorded there
//! and every instance follows it; without one, a console flip holds on this
//! instance until the file's default for that switch changes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::audit;
use crate::guard::{Guard, Runtime};
use crate::policy::{self, Policy};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no switch named {0:?} (see SHOW SWITCHES)")]
    UnknownSwitch(String),
    #[error("the policy was not loaded from a file, so it cannot be reloaded")]
    NoFile,
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error("cannot write the policy file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("the switch state database did not record the flip, so nothing changed: {0}")]
    State(String),
}

#[derive(Serialize)]
struct ControlRecord<'a> {
    time: String,
    event: &'a str,
    how: &'a str,
    who: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    switch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode_from: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode_to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    /// The state database's generation of a flip.
    #[serde(skip_serializing_if = "Option::is_none")]
    switch_generation: Option<i64>,
    generation: u64,
}

impl<'a> ControlRecord<'a> {
    /// A record of `event` with no switch, mode or error fields (set those
    /// that apply).
    fn new(event: &'a str, how: &'a str, who: &'a str, generation: u64) -> Self {
        ControlRecord {
            time: audit::now_rfc3339(),
            event,
            how,
            who,
            switch: None,
            from: None,
            to: None,
            error: None,
            mode_from: None,
            mode_to: None,
            reason: None,
            switch_generation: None,
            generation,
        }
    }
}

/// Audits the change and every switch it moves, then swaps in `policy`
/// with the flipped positions kept (invariant 1 of `crate::state`). Without
/// a state database, a switch whose default the new file changes follows
/// the file: an edit of the default is a flip.
async fn install(guard: &Guard, policy: Policy, how: &str, who: &str) {
    let old = guard.runtime.load_full();
    let mut flipped = old.flipped.clone();
    flipped.retain(|name, _| policy.switches.contains_key(name));
    if !guard.state.enabled() {
        flipped.retain(|name, _| {
            old.policy.switches.get(name).map(|s| s.default)
                == policy.switches.get(name).map(|s| s.default)
        });
    }
    let generation = old.generation + 1;
    let new = Runtime::new(policy, flipped, generation);
    audit_moves(guard, &old, &new, how, who, None).await;
    if old.policy.mode != new.policy.mode {
        tracing::warn!(
            from = old.policy.mode.as_str(),
            to = new.policy.mode.as_str(),
            how,
            who,
            "policy mode changed"
        );
        guard
            .audit
            .write(&ControlRecord {
                mode_from: Some(old.policy.mode.as_str()),
                mode_to: Some(new.policy.mode.as_str()),
                ..ControlRecord::new("mode_changed", how, who, generation)
            })
            .await;
    }
    tracing::info!(how, who, generation, "policy loaded");
    guard
        .audit
        .write(&ControlRecord::new("policy_reloaded", how, who, generation))
        .await;
    swap(guard, new);
}

/// Audits every switch whose position differs between `old` and `new`;
/// the records are on disk before the change takes effect.
async fn audit_moves(
    guard: &Guard,
    old: &Runtime,
    new: &Runtime,
    how: &str,
    who: &str,
    reason: Option<&str>,
) {
    for (name, to) in &new.switches {
        let from = old.switches.get(name).copied();
        if from == Some(*to) {
            continue;
        }
        let switch_generation = new
            .flipped
            .get(name)
            .map(|f| f.generation)
            .filter(|g| *g > 0);
        let moved = Move {
            name,
            from,
            to: *to,
            switch_generation,
        };
        record_move(guard, &moved, how, who, reason, new.generation).await;
    }
}

/// A switch that moved.
struct Move<'a> {
    name: &'a str,
    from: Option<bool>,
    to: bool,
    switch_generation: Option<i64>,
}

async fn record_move(
    guard: &Guard,
    m: &Move<'_>,
    how: &str,
    who: &str,
    reason: Option<&str>,
    generation: u64,
) {
    let Move {
        name,
        from,
        to,
        switch_generation,
    } = *m;
    tracing::warn!(switch = %name, ?from, to, how, who, ?reason, ?switch_generation, "switch flipped");
    guard
        .audit
        .write(&ControlRecord {
            switch: Some(name),
            from,
            to: Some(to),
            reason,
            switch_generation,
            ..ControlRecord::new("switch_flipped", how, who, generation)
        })
        .await;
}

fn swap(guard: &Guard, new: Runtime) {
    let generation = new.generation;
    guard.runtime.store(Arc::new(new));
    guard
        .generation
        .store(generation, std::sync::atomic::Ordering::Release);
}

/// Applies the state database's positions that are newer than those in
/// force (`crate::state::newer`).
pub async fn apply_positions(guard: &Guard, rows: &[crate::state::Position], how: &str) {
    let _serial = guard.control_lock.lock().await;
    let old = guard.runtime.load_full();
    let newer = crate::state::newer(&old.flipped, &old.policy, rows);
    if newer.is_empty() {
        return;
    }
    let mut flipped = old.flipped.clone();
    flipped.extend(newer.iter().cloned());
    let new = Runtime::new(old.policy.clone(), flipped, old.generation + 1);
    // One record per switch that moved, naming who flipped it and why.
    for (name, f) in &newer {
        let (from, to) = (old.switches.get(name).copied(), new.switches[name]);
        if from == Some(to) {
            continue;
        }
        let row = rows.iter().find(|r| &r.name == name);
        let who = row.and_then(|r| r.changed_by.as_deref()).unwrap_or("");
        let reason = row.and_then(|r| r.reason.as_deref());
        let moved = Move {
            name,
            from,
            to,
            switch_generation: Some(f.generation),
        };
        record_move(guard, &moved, how, who, reason, new.generation).await;
    }
    swap(guard, new);
}
/// Reloads the policy file (and reopens the audit log, and reads the TLS
/// certificates again). An invalid file is refused, logged and audited;
/// the running policy stays in force.
pub async fn reload(guard: &Guard, how: &str, who: &str) -> Result<(), ControlError> {
    guard.audit.reopen().await;
    guard.state.wake();
    reload_certificates(guard, how, who).await;
    let path = guard.policy_path.as_deref().ok_or(ControlError::NoFile)?;
    let text = std::fs::read_to_string(path).map_err(|source| policy::PolicyError::Io {
        path: path.display().to_string(),
        source,
    });
    reload_text(guard, text, how, who).await
}

/// Reads the TLS certificate and key again (SIGHUP, RELOAD): new sessions
/// get them, running ones keep theirs; on error the ones in force stay.
async fn reload_certificates(guard: &Guard, how: &str, who: &str) {
    if guard.tls.mode == crate::tls::ClientMode::Disable {
        return;
    }
    let generation = guard.runtime.load().generation;
    match guard.tls.reload() {
        Ok(()) => tracing::info!(how, "TLS certificate reloaded"),
        Err(e) => {
            tracing::error!(error = %e, how, "TLS certificate reload refused; the one in force stays");
            refused(
                guard,
                "tls_reload_refused",
                how,
                who,
                generation,
                e.to_string(),
            )
            .await;
        }
    }
}

/// Counts and audits a reload that was refused (what was in force stays).
async fn refused(guard: &Guard, event: &str, how: &str, who: &str, generation: u64, error: String) {
    guard
        .stats
        .reloads_refused
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    guard
        .audit
        .write(&ControlRecord {
            error: Some(error),
            ..ControlRecord::new(event, how, who, generation)
        })
        .await;
}

/// Installs `text` (read from the policy file) if it is valid.
async fn reload_text(
    guard: &Guard,
    text: Result<String, policy::PolicyError>,
    how: &str,
    who: &str,
) -> Result<(), ControlError> {
    let path = guard.policy_path.as_deref().ok_or(ControlError::NoFile)?;
    let _serial = guard.control_lock.lock().await;
    match text.and_then(|t| policy::parse(&t, path)) {
        Ok((policy, _settings)) => {
            install(guard, policy, how, who).await;
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, how, "policy reload refused; the running policy stays in force");
            let generation = guard.runtime.load().generation;
            refused(guard, "reload_refused", how, who, generation, e.to_string()).await;
            Err(e.into())
        }
    }
}

/// Flips a switch (`on` None: back to the policy file's default). With a
/// state database the flip is recorded there first (and every instance
/// follows it); without one it holds on this instance. Takes effect for
/// every session's next statement; prepared statements are judged again.
pub async fn set_switch(
    guard: &Guard,
    name: &str,
    on: Option<bool>,
    who: &str,
    reason: Option<&str>,
) -> Result<(), ControlError> {
    if !guard.runtime.load().policy.switches.contains_key(name) {
        return Err(ControlError::UnknownSwitch(name.to_string()));
    }
    if guard.state.enabled() {
        let state = &guard.state;
        let recorded = async {
            let client = crate::state::client(guard).await?;
            crate::state::flip(&client, name, on, who, reason, Some(&state.instance)).await
        }
        .await
        .map_err(|e| ControlError::State(e.explain()))?;
        let row = crate::state::Position {
            name: name.to_string(),
            on,
            generation: recorded.generation,
            changed_by: Some(who.to_string()),
            reason: reason.map(str::to_string),
        };
        apply_positions(guard, &[row], "console").await;
        return Ok(());
    }
    let _serial = guard.control_lock.lock().await;
    let old = guard.runtime.load_full();
    let mut flipped = old.flipped.clone();
    match on {
        Some(_) => flipped.insert(
            name.to_string(),
            crate::guard::Flipped { on, generation: 0 },
        ),
        None => flipped.remove(name),
    };
    let new = Runtime::new(old.policy.clone(), flipped, old.generation + 1);
    audit_moves(guard, &old, &new, "console", who, reason).await;
    swap(guard, new);
    Ok(())
}

/// Sets the policy-wide mode (enforce or shadow): written into the policy
/// file's `[defaults] mode` (when there is one), then swapped in, audited.
pub async fn set_mode(guard: &Guard, mode: policy::Mode, who: &str) -> Result<(), ControlError> {
    let _serial = guard.control_lock.lock().await;
    let mut policy = guard.runtime.load_full().policy.clone();
    if let Some(path) = guard.policy_path.as_deref() {
        policy = edit_file(path, |doc| {
            doc["defaults"]["mode"] = toml_edit::value(mode.as_str());
        })?
        .0;
    } else {
        policy.mode = mode;
    }
    install(guard, policy, "console", who).await;
    Ok(())
}

/// Edits the policy file, keeping everything else (comments, layout), via
/// a temporary file and a rename; returns the validated result. Nothing is
/// written if the result is invalid.
fn edit_file(
    path: &Path,
    edit: impl FnOnce(&mut toml_edit::DocumentMut),
) -> Result<(Policy, policy::Settings), ControlError> {
    let err = |source| ControlError::Write {
        path: path.display().to_string(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(err)?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e.to_string(),
        ))
    })?;
    edit(&mut doc);
    let new_text = doc.to_string();
    let parsed = policy::parse(&new_text, path)?;
    // A name of its own per write: instances sharing a directory never
    // rename each other's half-written file.
    let tmp = path.with_extension(format!(
        "toml.zoneguard-tmp.{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::write(&tmp, &new_text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })?;
    Ok(parsed)
}

/// What identifies a version of the file without reading it.
fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// How long the file must stay the same before it is read as complete.
const SETTLE: Duration = Duration::from_millis(100);

/// The file's content once it has stayed the same (bytes, size, mtime,
/// inode) for [`SETTLE`]; None while it is missing.
async fn settled(path: &Path) -> Option<Vec<u8>> {
    loop {
        let before = stamp(path)?;
        let text = std::fs::read(path).ok()?;
        tokio::time::sleep(SETTLE).await;
        if stamp(path) == Some(before) && std::fs::read(path).ok().as_ref() == Some(&text) {
            return Some(text);
        }
    }
}

/// Watches the policy file and reloads it when a write is complete; and
/// reloads on SIGHUP.
///
/// Invariant: a file caught in the middle of a write is never installed.
/// The watcher (inotify through the notify crate, on the directory, so an
/// atomic rename is seen too) reacts only to completed writes: the file
/// closed after writing, or a file created or renamed into place (also a
/// Kubernetes ConfigMap's symlink swap); never to a write in progress. The
/// content must then stay the same for [`SETTLE`], and must differ from the
/// last content handled; an empty file is refused by validation. Where no
/// watcher can be set up, the file is polled every 250 ms with the same
/// settling (a writer that pauses longer than that mid-write can be caught:
/// deploy by atomic rename, as the README says).
pub fn spawn_watchers(guard: Arc<Guard>) {
    let Some(path) = guard.policy_path.clone() else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let watcher = watch(&path, tx.clone());
    if watcher.is_none() {
        let path = path.clone();
        tokio::spawn(async move {
            let mut last = stamp(&path);
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let now = stamp(&path);
                if now.is_some() && now != last {
                    last = now;
                    if tx.send(()).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    // What is in force now (read before returning, so that an edit made
    // right after start is not taken for the file already handled).
    let mut handled = std::fs::read(&path).ok();
    let g = guard.clone();
    tokio::spawn(async move {
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            let Some(bytes) = settled(&path).await else {
                continue;
            };
            if handled.as_ref() == Some(&bytes) {
                continue;
            }
            let text = String::from_utf8(bytes.clone()).map_err(|e| policy::PolicyError::Syntax {
                path: path.display().to_string(),
                message: format!("not UTF-8: {e}"),
            });
            let _ = reload_text(&g, text, "file", "policy file").await;
            handled = Some(bytes);
        }
    });
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let _ = reload(&guard, "sighup", "SIGHUP").await;
        }
    });
}

/// A watcher on the file's directory that sends on `tx` when a write to
/// the file completes or anything is created or renamed there.
fn watch(path: &Path, tx: tokio::sync::mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    use notify::{EventKind, RecursiveMode, Watcher};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name()?.to_owned();
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let ours = event.paths.iter().any(|p| p.file_name() == Some(&name));
        let complete = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => ours,
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_)) => true,
            _ => false,
        };
        if complete {
            // A full channel already has a wake-up pending.
            let _ = tx.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the policy file; polling it instead");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the policy file's directory; polling it instead");
        return None;
    }
    Some(watcher)
}
