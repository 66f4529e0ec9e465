//! `--metrics-listen ADDR` ([metrics] listen): `GET /metrics` in
//! Prometheus' text format (prometheus-client), `GET /healthz` for load
//! balancers (200 when the policy is loaded and the upstream accepts
//! connections and the guard is not draining; 503 with the reason
//! otherwise).
//!
//! The metrics are read from the counters the sessions already keep
//! (`guard::Stats`, the cache's, the audit log's) when scraped: the hot
//! path pays nothing for them but the judging-time histogram.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::guard::{DenialKey, Guard};

type Labels = Vec<(&'static str, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

fn by_denial(
    registry: &mut Registry,
    name: &str,
    help: &str,
    map: &std::sync::Mutex<std::collections::BTreeMap<DenialKey, u64>>,
) {
    let family = Family::<Labels, Counter>::default();
    for (k, n) in map.lock().unwrap().iter() {
        family
            .get_or_create(&vec![
                ("rule", k.rule.clone()),
                ("zone", k.zone.clone()),
                ("operation", k.operation.clone()),
                ("role", k.role.clone()),
            ])
            .inc_by(*n);
    }
    registry.register(name, help, family);
}

/// The exposition of every metric, as of now.
pub fn render(guard: &Guard) -> String {
    let mut r = Registry::with_prefix("zoneguard");
    let s = &guard.stats;
    let counters = [
        (
            "statements_judged",
            "Statements judged (each statement of a multi-statement text counts).",
            s.statements.load(Ordering::Relaxed),
        ),
        (
            "statements_allowed",
            "Statements allowed.",
            s.allowed.load(Ordering::Relaxed),
        ),
        (
            "upstream_connect_failures",
            "Connections to the upstream server that failed.",
            s.upstream_connect_failures.load(Ordering::Relaxed),
        ),
        (
            "classify_cache_hits",
            "Statement texts whose classification came from the cache.",
            guard.cache.hits.load(Ordering::Relaxed),
        ),
        (
            "classify_cache_misses",
            "Statement texts classified anew.",
            guard.cache.misses.load(Ordering::Relaxed),
        ),
        (
            "reloads_refused",
            "Policy files or certificates refused at reload (the running ones stayed).",
            s.reloads_refused.load(Ordering::Relaxed),
        ),
        (
            "audit_write_failures",
            "Audit records that could not be written (each is in the error log instead).",
            guard.audit.failures.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        counter(&mut r, name, help, value);
    }
    by_denial(
        &mut r,
        "statements_rejected",
        "Statements rejected, by rule, zone, operation and role.",
        &s.rejected_by,
    );
    by_denial(&mut r, "statements_would_reject", "Statements shadowed (run, but the policy would reject them), by rule, zone, operation and role.", &s.shadowed_by);
    gauge(
        &mut r,
        "clients_connected",
        "Client sessions relayed now (console logins not counted).",
        guard.clients_registry.lock().unwrap().len() as i64,
    );
    gauge(
        &mut r,
        "classify_cache_bytes",
        "Bytes held by the classification cache (estimated).",
        guard.cache.bytes() as i64,
    );
    let rt = guard.runtime.load();
    gauge(
        &mut r,
        "policy_generation",
        "Generation of the policy in force (bumped by every reload and flip).",
        rt.generation as i64,
    );
    let info = Family::<Labels, Gauge>::default();
    info.get_or_create(&vec![
        ("checksum", rt.policy.checksum()),
        ("mode", rt.policy.mode.as_str().to_string()),
    ])
    .set(1);
    r.register(
        "policy_info",
        "The policy in force: its checksum (as SHOW INSTANCES compares them) and mode.",
        info,
    );
    let switches = Family::<Labels, Gauge>::default();
    for (name, on) in &rt.switches {
        switches
            .get_or_create(&vec![("switch", name.clone())])
            .set(i64::from(*on));
    }
    r.register(
        "switch_on",
        "Each switch's position in force (1 on, 0 off).",
        switches,
    );
    r.register(
        "judge_seconds",
        "The guard's own time per judged SQL text: reading, classifying, judging.",
        guard.judge_seconds.clone(),
    );
    if guard.state.enabled() {
        gauge(
            &mut r,
            "switch_state_connected",
            "1 while the switch state database is connected.",
            i64::from(guard.state.status() == crate::state::Status::Connected),
        );
        if let Some(age) = guard.state.staleness() {
            gauge(
                &mut r,
                "switch_state_staleness_milliseconds",
                "How long ago the switch positions were last confirmed with the state database.",
                age.as_millis() as i64,
            );
        }
        gauge(
            &mut r,
            "switch_generation",
            "The newest state-database flip applied here.",
            rt.switch_generation(),
        );
    }
    gauge(
        &mut r,
        "draining",
        "1 while shutting down (no new clients; health check failing).",
        i64::from(guard.draining()),
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).expect("writing to a String");
    out
}

/// 200 "ok", or 503 and why not.
pub async fn health(guard: &Guard) -> (StatusCode, String) {
    if guard.draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: shutting down\n".into(),
        );
    }
    // A TCP connection that sends nothing: PostgreSQL does not log it.
    let timeout = Duration::from_secs(guard.settings.proxy.connect_timeout_secs.clamp(1, 5));
    match guard.upstream.endpoint.connect(timeout).await {
        Ok(_) => (
            StatusCode::OK,
            format!(
                "ok: policy generation {}, upstream {} accepts connections\n",
                guard.runtime.load().generation,
                guard.upstream
            ),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("upstream {} unreachable: {e}\n", guard.upstream),
        ),
    }
}

async fn handle(
    guard: Arc<Guard>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(&guard),
        ),
        (&hyper::Method::GET, "/healthz") => {
            let (status, text) = health(&guard).await;
            (status, "text/plain; charset=utf-8", text)
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "GET /metrics or /healthz\n".to_string(),
        ),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response"))
}

/// Serves /metrics and /healthz until the process ends (at most 64
/// connections at once, each for at most 30 s).
pub async fn serve(listener: TcpListener, guard: Arc<Guard>) {
    // Scrapers and health checks are few: more connections at once than
    // this are closed at once, so a flood cannot take the guard's memory.
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let guard = guard.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| handle(guard.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service);
            // A scraper that stalls is dropped after a while.
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}
