//! The policy in force and its switches: hot reload (file change or SIGHUP),
//! validated before it is swapped in, and switch flips from the admin
//! console. The policy file is the single source of truth: a console flip
//! writes the switch's new `default` back into it (comments and layout kept),
//! so a flip survives reloads and restarts, and an edit of the file is a flip.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::audit;
use crate::policy::{self, Policy};
use crate::server::{Guard, Runtime};

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
            generation,
        }
    }
}

/// Audits the change and every switch it flips, then swaps in `policy`.
async fn install(guard: &Guard, policy: Policy, how: &str, who: &str) {
    let old = guard.runtime.load_full();
    let switches = policy.default_switches();
    let generation = old.generation + 1;
    let flips: Vec<(String, Option<bool>, bool)> = switches
        .iter()
        .filter(|(k, v)| old.switches.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), old.switches.get(k).copied(), *v))
        .collect();
    // The records are on disk before the change takes effect.
    for (name, from, to) in &flips {
        tracing::warn!(switch = %name, ?from, to, how, who, "switch flipped");
        guard
            .audit
            .write(&ControlRecord {
                switch: Some(name),
                from: *from,
                to: Some(*to),
                ..ControlRecord::new("switch_flipped", how, who, generation)
            })
            .await;
    }
    if old.policy.mode != policy.mode {
        tracing::warn!(
            from = old.policy.mode.as_str(),
            to = policy.mode.as_str(),
            how,
            who,
            "policy mode changed"
        );
        guard
            .audit
            .write(&ControlRecord {
                mode_from: Some(old.policy.mode.as_str()),
                mode_to: Some(policy.mode.as_str()),
                ..ControlRecord::new("mode_changed", how, who, generation)
            })
            .await;
    }
    tracing::info!(how, who, generation, "policy loaded");
    guard
        .audit
        .write(&ControlRecord::new("policy_reloaded", how, who, generation))
        .await;
    guard.runtime.store(Arc::new(Runtime {
        policy,
        switches,
        generation,
    }));
    guard
        .generation
        .store(generation, std::sync::atomic::Ordering::Release);
}

/// Reloads the policy file. An invalid file is refused, logged and audited;
/// the running policy stays in force.
pub async fn reload(guard: &Guard, how: &str, who: &str) -> Result<(), ControlError> {
    let path = guard.policy_path.as_deref().ok_or(ControlError::NoFile)?;
    let _serial = guard.control_lock.lock().await;
    match policy::load(path) {
        Ok((policy, _settings)) => {
            install(guard, policy, how, who).await;
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, how, "policy reload refused; the running policy stays in force");
            guard
                .audit
                .write(&ControlRecord {
                    error: Some(e.to_string()),
                    ..ControlRecord::new(
                        "reload_refused",
                        how,
                        who,
                        guard.runtime.load().generation,
                    )
                })
                .await;
            Err(e.into())
        }
    }
}

/// Flips a switch: written into the policy file (when there is one), then
/// swapped in. Takes effect for every session's next statement.
pub async fn set_switch(
    guard: &Guard,
    name: &str,
    on: bool,
    who: &str,
) -> Result<(), ControlError> {
    let _serial = guard.control_lock.lock().await;
    let current = guard.runtime.load_full();
    if !current.policy.switches.contains_key(name) {
        return Err(ControlError::UnknownSwitch(name.to_string()));
    }
    let mut policy = current.policy.clone();
    if let Some(path) = guard.policy_path.as_deref() {
        let (from_file, _) = write_switch(path, name, on)?;
        policy = from_file;
    } else if let Some(sw) = policy.switches.get_mut(name) {
        sw.default = on;
    }
    install(guard, policy, "console", who).await;
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

/// Rewrites `[switches.<name>] default` in the file, keeping everything
/// else, via a temporary file and a rename; returns the validated result.
fn write_switch(
    path: &Path,
    name: &str,
    on: bool,
) -> Result<(Policy, policy::Settings), ControlError> {
    edit_file(path, |doc| {
        doc["switches"][name]["default"] = toml_edit::value(on);
    })
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
    let tmp = path.with_extension("toml.zoneguard-tmp");
    std::fs::write(&tmp, &new_text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(parsed)
}

fn mtime(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Watches the policy file (polling twice a second: no platform watcher to
/// miss an editor's rename) and reloads on change; and reloads on SIGHUP.
pub fn spawn_watchers(guard: Arc<Guard>) {
    let Some(path) = guard.policy_path.clone() else {
        return;
    };
    let g = guard.clone();
    tokio::spawn(async move {
        let mut last = mtime(&path);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let now = mtime(&path);
            if now.is_some() && now != last {
                last = now;
                let _ = reload(&g, "file", "policy file").await;
            }
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
