//! Protocol 3.2 (libpq 18, `max_protocol_version=latest`): the guard
//! answers a newer 3.x minor version as PostgreSQL does, with
//! NegotiateProtocolVersion (3.0, and the `_pq_.` options it does not know),
//! and the client goes on in 3.0; cancel works.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A StartupMessage for protocol 3.`minor` with these parameters.
fn startup(minor: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&((3 << 16) | minor).to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    m.extend(body);
    m
}

#[tokio::test]
async fn a_newer_minor_version_is_negotiated_down_to_3_0() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let mut s = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    s.write_all(&startup(
        2,
        &[
            ("user", "app"),
            ("database", &db),
            ("_pq_.test_option", "x"),
        ],
    ))
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I']) {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    // The first message: NegotiateProtocolVersion, 3.0, one unknown option.
    assert_eq!(got[0], b'v', "{got:?}");
    let len = i32::from_be_bytes(got[1..5].try_into().unwrap()) as usize;
    let body = &got[5..1 + len];
    assert_eq!(i32::from_be_bytes(body[0..4].try_into().unwrap()), 3 << 16);
    assert_eq!(i32::from_be_bytes(body[4..8].try_into().unwrap()), 1);
    assert_eq!(&body[8..], b"_pq_.test_option\0");
    // Then the login as usual, and the session works.
    s.write_all(&msg(b'Q', b"SELECT 41 + 1\0")).await.unwrap();
    let reply = read_until_ready(&mut s).await;
    assert!(reply.windows(2).any(|w| w == b"42"), "{reply:?}");
}

/// libpq 18 itself (psycopg's binary wheel), asking for the newest
/// protocol: it connects, runs, and cancels through the guard.
#[tokio::test]
async fn libpq_18_with_max_protocol_version_latest_connects_and_cancels() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let url = format!("{}?max_protocol_version=latest", g.url("app", &db));
    let script = r#"
import sys, threading, time, psycopg
if psycopg.pq.version() < 180000:
    print("libpq older than 18: max_protocol_version unknown; nothing to try")
    sys.exit(0)
conn = psycopg.connect(sys.argv[1], autocommit=True)
assert conn.execute("SELECT 41 + 1").fetchone()[0] == 42
t = threading.Timer(0.5, conn.cancel_safe)
t.start()
try:
    conn.execute("SELECT pg_sleep(10)")
    print("not cancelled")
    sys.exit(1)
except psycopg.errors.QueryCanceled:
    pass
assert conn.execute("SELECT 1").fetchone()[0] == 1
print("protocol", conn.pgconn.protocol_version, "ok")
"#;
    let stdout = run_python(vec!["-c".into(), script.into(), url]).await;
    assert!(
        stdout.contains("ok") || stdout.contains("older than 18"),
        "{stdout}"
    );
}
