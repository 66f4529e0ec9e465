//! Audit records: one JSON line per rejected statement (and, later, per
//! policy change). A record is on disk before the client hears of the
//! rejection; a failed write is logged as an error with the record itself,
//! never dropped in silence.

use std::time::SystemTime;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub time: String,
    pub event: &'static str,
    pub session_id: u64,
    pub client_addr: String,
    pub user: String,
    pub database: String,
    pub application_name: String,
    /// "simple", "extended", "function_call" or "startup".
    pub protocol: &'static str,
    pub operation: String,
    pub table: Option<String>,
    pub zone: Option<String>,
    pub rule: String,
    pub sqlstate: String,
    pub message: String,
    pub statement: String,
    pub statement_truncated: bool,
}

/// Who a session is, for its audit records.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: u64,
    /// `ip:port`, or `[local]` for a Unix-domain socket (as PostgreSQL logs it).
    pub client_addr: String,
    pub user: String,
    pub database: String,
    pub application_name: String,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// Cuts `s` to at most `max` characters.
pub fn cap(s: &str, max: usize) -> (String, bool) {
    match s.char_indices().nth(max) {
        Some((at, _)) => (s[..at].to_string(), true),
        None => (s.to_string(), false),
    }
}

type SyslogLogger = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

enum Sink {
    Stdout,
    /// The local syslog daemon (a Unix datagram socket: /dev/log, or the
    /// path given as `syslog:PATH`), facility local0; reconnected when a
    /// send fails (the daemon restarted).
    Syslog(
        std::sync::Arc<std::sync::Mutex<SyslogLogger>>,
        Option<String>,
    ),
    /// The open file and its (device, inode), to notice log rotation, and
    /// whether a failed write may have left part of a record at its end.
    File(tokio::fs::File, (u64, u64), bool),
}

/// Opens the audit file for appending (creating it and its directory).
async fn open_file(target: &str) -> std::io::Result<(tokio::fs::File, (u64, u64))> {
    use std::os::unix::fs::MetadataExt;
    if let Some(dir) = std::path::Path::new(target).parent() {
        if !dir.as_os_str().is_empty() {
            tokio::fs::create_dir_all(dir).await?;
        }
    }
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(target)
        .await?;
    let m = file.metadata().await?;
    Ok((file, (m.dev(), m.ino())))
}

/// `syslog` (Some(None): the system's socket) or `syslog:PATH`.
fn syslog_target(target: &str) -> Option<Option<String>> {
    match target.strip_prefix("syslog") {
        Some("") => Some(None),
        Some(rest) => rest.strip_prefix(':').map(|p| Some(p.to_string())),
        None => None,
    }
}

fn syslog_connect(path: Option<&str>) -> std::io::Result<SyslogLogger> {
    let formatter = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_LOCAL0,
        hostname: None,
        process: "zoneguard".into(),
        pid: std::process::id(),
    };
    match path {
        Some(p) => syslog::unix_custom(formatter, p),
        None => syslog::unix(formatter),
    }
    .map_err(|e| std::io::Error::other(format!("cannot reach syslog: {e}")))
}

/// The audit log. Writes are serialised; each record is one `write_all` of
/// a whole line to a file opened for append, then flushed. It survives log
/// rotation: before each record the path is checked, and a file renamed or
/// removed from under it is replaced by a new one at the path.
pub struct AuditLog {
    sink: Mutex<Sink>,
    /// Records that could not be written (metrics).
    pub failures: std::sync::atomic::AtomicU64,
    pub max_statement_chars: usize,
    pub target: String,
}

impl AuditLog {
    pub async fn open(target: &str, max_statement_chars: usize) -> std::io::Result<AuditLog> {
        let sink = if target == "-" {
            Sink::Stdout
        } else if let Some(path) = syslog_target(target) {
            let logger = syslog_connect(path.as_deref())?;
            Sink::Syslog(std::sync::Arc::new(std::sync::Mutex::new(logger)), path)
        } else {
            let (file, id) = open_file(target).await?;
            Sink::File(file, id, false)
        };
        Ok(AuditLog {
            sink: Mutex::new(sink),
            failures: Default::default(),
            max_statement_chars,
            target: target.to_string(),
        })
    }

    /// Opens the file at the path again (SIGHUP, RELOAD): after a rotation
    /// by rename, records go to the new file at once.
    pub async fn reopen(&self) {
        let mut sink = self.sink.lock().await;
        if let Sink::File(f, id, torn) = &mut *sink {
            match open_file(&self.target).await {
                Ok((file, new_id)) => {
                    *f = file;
                    *id = new_id;
                    *torn = false;
                }
                Err(e) => {
                    tracing::error!(error = %e, target = %self.target, "cannot reopen the audit log; writing to the old file")
                }
            }
        }
    }

    /// Writes one record and waits until it is written.
    pub async fn write<T: Serialize>(&self, record: &T) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "audit record could not be encoded");
                return;
            }
        };
        line.push(b'\n');
        let mut sink = self.sink.lock().await;
        let result = match &mut *sink {
            Sink::Syslog(logger, path) => {
                // One datagram per record (without the newline), sent off
                // the async threads: a stalled daemon blocks the sender.
                let message = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                let (logger, path) = (logger.clone(), path.clone());
                tokio::task::spawn_blocking(move || {
                    let mut l = logger.lock().unwrap();
                    if l.notice(&message).is_ok() {
                        return Ok(());
                    }
                    *l = syslog_connect(path.as_deref())?;
                    l.notice(&message).map_err(std::io::Error::other)
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            }
            Sink::Stdout => {
                let mut out = tokio::io::stdout();
                match out.write_all(&line).await {
                    Ok(()) => out.flush().await,
                    Err(e) => Err(e),
                }
            }
            Sink::File(f, id, torn) => {
                // Log rotation: if the path no longer names the open file
                // (renamed away, or removed, by logrotate or an operator),
                // reopen it, so the trail goes on at the configured path. A
                // truncated file (copytruncate) is appended to as it is.
                use std::os::unix::fs::MetadataExt;
                let moved = match tokio::fs::metadata(&self.target).await {
                    Ok(m) => (m.dev(), m.ino()) != *id,
                    Err(_) => true,
                };
                if moved {
                    match open_file(&self.target).await {
                        Ok((file, new_id)) => {
                            tracing::info!(target = %self.target, "audit log reopened (rotated)");
                            *f = file;
                            *id = new_id;
                            *torn = false;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, target = %self.target, "cannot reopen the audit log; writing to the old file")
                        }
                    }
                }
                // A record is written whole or not at all: a write that
                // fails part-way (a full disk, a file size limit) is cut
                // back off; if even that fails, the next record starts on a
                // line of its own rather than glued onto the fragment.
                let before = f.metadata().await.map(|m| m.len()).ok();
                if *torn {
                    line.insert(0, b'\n');
                }
                let written = match f.write_all(&line).await {
                    Ok(()) => f.flush().await,
                    Err(e) => Err(e),
                };
                match &written {
                    Ok(()) => *torn = false,
                    Err(_) => {
                        let cut = match before {
                            Some(len) => f.set_len(len).await.is_ok(),
                            None => false,
                        };
                        *torn |= !cut;
                    }
                }
                written
            }
        };
        if let Err(e) = result {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(
                error = %e,
                target = %self.target,
                record = %String::from_utf8_lossy(&line).trim_end(),
                "AUDIT WRITE FAILED; the record follows in this log line"
            );
        }
    }
}
