//! This instance's handle on the switch state: settings, its connection,
//! how fresh its view is. Part of the shared `Guard`; it knows nothing of
//! the guard (the follower in `state` works on both).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tokio_postgres::Client;

use super::StateError;
use crate::policy::{Settings, StateSettings};
use crate::upstream::Upstream;

/// How this instance's view of the shared positions stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// `[state] enabled = false`: positions are the file's and this
    /// instance's console flips.
    Disabled,
    Connecting,
    Connected,
    Unreachable(String),
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Disabled => f.write_str("disabled"),
            Status::Connecting => f.write_str("connecting"),
            Status::Connected => f.write_str("connected"),
            Status::Unreachable(e) => write!(f, "unreachable: {e}"),
        }
    }
}

/// The guard's handle on the shared state (part of [`Guard`]).
pub struct StateHandle {
    pub settings: StateSettings,
    /// This instance's name in the instances table.
    pub instance: String,
    /// `zoneguard state <instance>`, so a DBA can tell the connections apart.
    pub(super) application_name: String,
    pub(super) started: SystemTime,
    pub(super) client: Mutex<Option<Arc<Client>>>,
    view: Mutex<View>,
    /// Woken by a notification on [`CHANNEL`].
    pub(super) wake: Arc<Notify>,
}

struct View {
    status: Status,
    /// When positions were last read from the database.
    confirmed: Option<Instant>,
}

impl StateHandle {
    pub fn new(settings: &Settings) -> StateHandle {
        let s = settings.state.clone();
        let instance = if s.instance.is_empty() {
            format!("{}:{}", host_name(), listen_port(&settings.proxy.listen))
        } else {
            s.instance.clone()
        };
        StateHandle {
            view: Mutex::new(View {
                status: if s.enabled {
                    Status::Connecting
                } else {
                    Status::Disabled
                },
                confirmed: None,
            }),
            settings: s,
            application_name: truncate(&format!("zoneguard state {instance}"), 63),
            instance,
            started: SystemTime::now(),
            client: Mutex::new(None),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Re-read the positions now (or, while unreachable, try to connect
    /// now): RELOAD and SIGHUP.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    pub fn status(&self) -> Status {
        self.view.lock().unwrap().status.clone()
    }

    /// How long since the positions were last confirmed with the database
    /// (None: never, this instance runs on the file's defaults).
    pub fn staleness(&self) -> Option<Duration> {
        self.view.lock().unwrap().confirmed.map(|t| t.elapsed())
    }

    pub(super) fn set_status(&self, status: Status) {
        let mut v = self.view.lock().unwrap();
        if v.status == status {
            return;
        }
        match &status {
            Status::Connected => {
                tracing::info!(database = %self.settings.database, "switch state database connected")
            }
            Status::Unreachable(e) if v.confirmed.is_none() => tracing::error!(
                database = %self.settings.database,
                error = %e,
                "switch state database unreachable: running on the policy file's switch defaults; flips cannot be made or heard until it is reachable"
            ),
            Status::Unreachable(e) => tracing::error!(
                database = %self.settings.database,
                error = %e,
                "switch state database unreachable: keeping the last confirmed positions"
            ),
            _ => {}
        }
        v.status = status;
    }

    pub(super) fn confirmed(&self) {
        self.view.lock().unwrap().confirmed = Some(Instant::now());
    }

    pub(super) fn login(&self) -> crate::upstream::Login<'_> {
        crate::upstream::Login {
            user: &self.settings.user,
            password: &self.settings.password,
            database: &self.settings.database,
            application_name: &self.application_name,
        }
    }

    /// The live connection, or a new one for this call.
    pub async fn client(
        &self,
        upstream: &Upstream,
        timeout: Duration,
    ) -> Result<Arc<Client>, StateError> {
        if !self.enabled() {
            return Err(StateError::Disabled);
        }
        if let Some(c) = self.client.lock().unwrap().clone() {
            if !c.is_closed() {
                return Ok(c);
            }
        }
        let c = upstream
            .own_connection(&self.login(), timeout, |_, _| {})
            .await?;
        Ok(Arc::new(c))
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

pub(super) fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn listen_port(listen: &str) -> &str {
    listen.rsplit_once(':').map_or(listen, |(_, p)| p)
}
