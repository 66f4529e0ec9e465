//! The guard reads every statement under the session's real state (issue 9):
//! client encodings, string syntax in any spelling, barriers a prepared
//! statement hides, prepared statements as the server holds them, and the
//! edge (replication, unauthenticated input, one FATAL, bad startup).
//! Each attack is sent as an attacker would (raw frames, pipelined in one
//! TCP write) and checked over a direct connection: nothing in the legacy
//! zone changed.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A Parse of `sql` as statement `name`, declaring no parameter types.
fn parse(name: &str, sql: &[u8]) -> Vec<u8> {
    let mut b = name.as_bytes().to_vec();
    b.push(0);
    b.extend_from_slice(sql);
    b.extend_from_slice(&[0, 0, 0]);
    msg(b'P', &b)
}

/// A Bind of statement `name` to the unnamed portal with text parameters.
fn bind(name: &str, params: &[&str]) -> Vec<u8> {
    let mut b = vec![0];
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&[0, 0, 0]);
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&[0, 0]);
    msg(b'B', &b)
}

fn execute() -> Vec<u8> {
    msg(b'E', &[0, 0, 0, 0, 0])
}

fn sync() -> Vec<u8> {
    msg(b'S', b"")
}

fn query(sql: &[u8]) -> Vec<u8> {
    let mut b = sql.to_vec();
    b.push(0);
    msg(b'Q', &b)
}

/// Two simple Queries in one TCP write.
fn pipelined(first: &[u8], then: &[u8]) -> Vec<u8> {
    let mut out = query(first);
    out.extend(query(then));
    out
}

/// One extended batch: `first` (with text parameters), then `then`, each
/// parsed, bound and executed, and one Sync.
fn one_batch(first: &[u8], params: &[&str], then: &[u8]) -> Vec<u8> {
    let mut out = parse("", first);
    out.extend(bind("", params));
    out.extend(execute());
    out.extend(parse("", then));
    out.extend(bind("", &[]));
    out.extend(execute());
    out.extend(sync());
    out
}

/// The server's messages in `bytes`, as (tag, body).
fn frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut b = bytes;
    while b.len() >= 5 {
        let len = i32::from_be_bytes(b[1..5].try_into().unwrap()) as usize;
        if b.len() < 1 + len {
            break;
        }
        out.push((b[0], b[5..1 + len].to_vec()));
        b = &b[1 + len..];
    }
    out
}

/// (severity, SQLSTATE, message) of every ErrorResponse in `bytes`.
fn errors(bytes: &[u8]) -> Vec<(String, String, String)> {
    frames(bytes)
        .into_iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, body)| {
            let (mut sev, mut code, mut text) = (String::new(), String::new(), String::new());
            for field in body.split(|b| *b == 0) {
                if field.is_empty() {
                    continue;
                }
                let v = String::from_utf8_lossy(&field[1..]).into_owned();
                match field[0] {
                    b'V' => sev = v,
                    b'C' => code = v,
                    b'M' => text = v,
                    _ => {}
                }
            }
            (sev, code, text)
        })
        .collect()
}

async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    out
}

/// Reads until `n` ReadyForQuery messages have arrived (or EOF / 10 s).
async fn read_ready(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    while frames(&seen).iter().filter(|(t, _)| *t == b'Z').count() < n {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(k)) => seen.extend_from_slice(&buf[..k]),
        }
    }
    seen
}

/// Opens a connection with these startup parameters and sends `then` in the
/// same TCP write as the startup packet.
async fn startup_and(g: &TestGuard, params: &[(&str, &str)], then: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    let mut out = zoneguard::protocol::startup_message(params).to_vec();
    out.extend_from_slice(then);
    s.write_all(&out).await.unwrap();
    s
}

/// In SJIS `0x81 0x5c` is one character; read as UTF-8 it is `Ё` (d0 81)
/// followed by a backslash, which escapes the quote in an E'' string. The
/// server runs the DELETE; a guard reading UTF-8 sees one string.
const SJIS_EXPLOIT: &[u8] = b"SELECT E'\xd0\x81\\'; DELETE FROM user_assessments; --'";

/// Read with standard_conforming_strings on, one string; read with it off,
/// the string ends at `\''` and a DELETE follows.
const SCS_EXPLOIT: &[u8] = b"SELECT 'x\\''; DELETE FROM user_assessments; --'";

#[tokio::test]
async fn encodings_whose_characters_hide_a_backslash_are_refused_at_startup() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let before = legacy_snapshot(&direct(&db).await).await;
    // Every client encoding PostgreSQL knows, but the two the guard reads.
    let refused = [
        "BIG5",
        "EUC_CN",
        "EUC_JP",
        "EUC_JIS_2004",
        "EUC_KR",
        "EUC_TW",
        "GB18030",
        "GBK",
        "ISO_8859_5",
        "ISO_8859_6",
        "ISO_8859_7",
        "ISO_8859_8",
        "JOHAB",
        "KOI8R",
        "KOI8U",
        "LATIN1",
        "LATIN2",
        "LATIN3",
        "LATIN4",
        "LATIN5",
        "LATIN6",
        "LATIN7",
        "LATIN8",
        "LATIN9",
        "LATIN10",
        "MULE_INTERNAL",
        "SJIS",
        "SHIFT_JIS_2004",
        "UHC",
        "WIN866",
        "WIN874",
        "WIN1250",
        "WIN1251",
        "WIN1252",
        "WIN1253",
        "WIN1254",
        "WIN1255",
        "WIN1256",
        "WIN1257",
        "WIN1258",
    ];
    let mut tried: Vec<(&str, String)> = refused
        .iter()
        .map(|e| ("client_encoding", e.to_string()))
        .collect();
    tried.push(("options", "-c client_encoding=SJIS".into()));
    for (key, value) in &tried {
        let mut s = startup_and(
            &g,
            &[("user", "app"), ("database", &db), (key, value)],
            &query(SJIS_EXPLOIT),
        )
        .await;
        let reply = read_to_end(&mut s).await;
        let errs = errors(&reply);
        // A clear refusal: the guard's, naming the encoding, or the server's
        // own where it cannot convert at all.
        assert_eq!(errs.len(), 1, "{key}={value}: {errs:?}");
        let (sev, code, text) = &errs[0];
        assert_eq!(sev, "FATAL", "{key}={value}: {errs:?}");
        let name = value.trim_start_matches("-c client_encoding=");
        assert!(
            (code == "0A000" && text.contains(name)) || text.contains("conversion"),
            "{key}={value}: {errs:?}"
        );
    }
    assert_eq!(legacy_snapshot(&direct(&db).await).await, before);
    // UTF8 and SQL_ASCII (what psql picks in a C locale) are served.
    for enc in ["UTF8", "SQL_ASCII"] {
        let mut s = startup_and(
            &g,
            &[("user", "app"), ("database", &db), ("client_encoding", enc)],
            &query(b"SELECT count(*) FROM users"),
        )
        .await;
        let reply = read_ready(&mut s, 2).await;
        assert!(errors(&reply).is_empty(), "{enc}: {:?}", errors(&reply));
    }
}

#[tokio::test]
async fn client_encoding_changes_are_refused_or_end_the_session() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let before = legacy_snapshot(&direct(&db).await).await;
    // A literal value the guard cannot read under: the statement is
    // rejected, in every form, and the exploit behind it is read as UTF-8
    // by both (a harmless string).
    for set in [
        &b"SET client_encoding = 'SJIS'"[..],
        b"SET \"Client_Encoding\" TO 'BIG5'",
        b"SET NAMES 'GBK'",
        b"SELECT set_config('client_encoding', 'SJIS', false)",
        b"SELECT pg_catalog.set_config('CLIENT_ENCODING', 'sjis', true)",
    ] {
        let mut s = raw_session(&g, &db).await;
        s.write_all(&pipelined(set, SJIS_EXPLOIT)).await.unwrap();
        let reply = read_ready(&mut s, 2).await;
        let errs = errors(&reply);
        assert_eq!(
            errs.len(),
            1,
            "{:?}: {errs:?}",
            String::from_utf8_lossy(set)
        );
        assert_eq!(errs[0].1, "42501");
        assert!(errs[0].2.contains("client_encoding"), "{errs:?}");
    }
    // A computed setting name: the statement runs; the exploit pipelined
    // behind it waits for the server's answer, which reports SJIS and ends
    // the session before the exploit is judged or sent.
    let mut s = raw_session(&g, &db).await;
    let first = b"SELECT set_config(lower('CLIENT_ENCODING'), 'SJIS', false)";
    s.write_all(&pipelined(first, SJIS_EXPLOIT)).await.unwrap();
    let errs = errors(&read_to_end(&mut s).await);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!((errs[0].0.as_str(), errs[0].1.as_str()), ("FATAL", "0A000"));
    // The same in one extended batch: the exploit follows the Execute in
    // the batch (the guard cannot wait there), so it is rejected; the
    // batch fails, which rolls the set_config back, and the session goes on.
    let mut s = raw_session(&g, &db).await;
    let first = b"SELECT set_config(lower($1), 'SJIS', false)";
    let mut out = one_batch(first, &["CLIENT_ENCODING"], SJIS_EXPLOIT);
    out.extend(query(b"SHOW client_encoding"));
    s.write_all(&out).await.unwrap();
    let reply = read_ready(&mut s, 2).await;
    let errs = errors(&reply);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].1, "42501");
    assert!(errs[0].2.contains("follows an Execute"), "{errs:?}");
    assert!(reply.windows(4).any(|w| w == b"UTF8"), "{reply:?}");
    // Non-ASCII text without a backslash reads alike in every encoding as
    // far as the guard cares (the policy names ASCII tables): pipelined
    // after an Execute in one batch, it passes.
    let then = "SELECT 'Zürich' AS kota, count(*) FROM users".as_bytes();
    s.write_all(&one_batch(b"SELECT 1", &[], then))
        .await
        .unwrap();
    let reply = read_ready(&mut s, 1).await;
    assert!(errors(&reply).is_empty(), "{:?}", errors(&reply));
    assert_eq!(legacy_snapshot(&direct(&db).await).await, before);
}

#[tokio::test]
async fn string_syntax_in_any_spelling_and_any_protocol() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let before = legacy_snapshot(&direct(&db).await).await;
    for set in [
        &b"SET \"Standard_Conforming_Strings\" = off"[..],
        b"SET SESSION STANDARD_CONFORMING_STRINGS TO 'off'",
        b"SET LOCAL standard_conforming_strings = false",
        b"SELECT set_config('Standard_Conforming_Strings', 'off', false)",
    ] {
        // Simple protocol, pipelined in one write.
        let mut s = raw_session(&g, &db).await;
        s.write_all(&pipelined(set, SCS_EXPLOIT)).await.unwrap();
        let errs = errors(&read_ready(&mut s, 2).await);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].1, "42501", "{errs:?}");
        // One extended batch with one Sync.
        let mut s = raw_session(&g, &db).await;
        s.write_all(&one_batch(set, &[], SCS_EXPLOIT))
            .await
            .unwrap();
        let errs = errors(&read_ready(&mut s, 1).await);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].1, "42501", "{errs:?}");
    }
    assert_eq!(legacy_snapshot(&direct(&db).await).await, before);
}

#[tokio::test]
async fn barriers_that_a_prepared_statement_hides() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let before = legacy_snapshot(&direct(&db).await).await;
    let expect_closed = |reply: Vec<u8>| {
        let errs = errors(&reply);
        assert!(
            errs.iter().any(|e| e.0 == "FATAL" && e.1 == "0A000"),
            "{errs:?}"
        );
    };
    // PREPARE, then EXECUTE with the exploit pipelined behind it.
    let mut s = raw_session(&g, &db).await;
    s.write_all(&query(
        b"PREPARE p(text) AS SELECT set_config($1, 'off', false)",
    ))
    .await
    .unwrap();
    read_ready(&mut s, 1).await;
    let first = b"EXECUTE p('standard_conforming_strings')";
    s.write_all(&pipelined(first, SCS_EXPLOIT)).await.unwrap();
    expect_closed(read_to_end(&mut s).await);
    // PREPARE and EXECUTE in one Query.
    let mut s = raw_session(&g, &db).await;
    let first = b"PREPARE q(text) AS SELECT set_config($1, 'off', false); EXECUTE q('standard_conforming_strings')";
    s.write_all(&pipelined(first, SCS_EXPLOIT)).await.unwrap();
    expect_closed(read_to_end(&mut s).await);
    // Extended protocol: a statement parsed once, bound again later with the
    // name as a parameter; the exploit in the next batch.
    let mut s = raw_session(&g, &db).await;
    let mut out = parse("sc", b"SELECT set_config($1, $2, false)");
    out.extend(sync());
    s.write_all(&out).await.unwrap();
    read_ready(&mut s, 1).await;
    let mut out = bind("sc", &["standard_conforming_strings", "off"]);
    out.extend(execute());
    out.extend(sync());
    out.extend(parse("", SCS_EXPLOIT));
    out.extend(bind("", &[]));
    out.extend(execute());
    out.extend(sync());
    s.write_all(&out).await.unwrap();
    expect_closed(read_to_end(&mut s).await);
    // A SET LOCAL undone by ROLLBACK is reported too: the session goes on.
    let app = g.connect("app", &db).await;
    app.batch_execute("BEGIN; SELECT set_config('application_name', 'x', true); ROLLBACK")
        .await
        .unwrap();
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM users WHERE email LIKE E'%\\\\%'"
        )
        .await,
        0
    );
    assert_eq!(legacy_snapshot(&direct(&db).await).await, before);
}

#[tokio::test]
async fn prepared_statements_are_what_the_server_holds() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let d = direct(&db).await;
    let insert = b"INSERT INTO entitlements (user_id, source_trx_id, sku, status) VALUES (1, 1, 'TB', 'ACTIVE')";
    let mut s = raw_session(&g, &db).await;
    // Prepared while the switch is on: the protocol's s1 and SQL's p.
    let mut out = parse("s1", insert);
    out.extend(sync());
    out.extend(query(&[&b"PREPARE p AS "[..], insert].concat()));
    out.extend(query(b"PREPARE q AS SELECT 1"));
    // Refused by the server (q exists): it must not redefine q.
    out.extend(query(&[&b"PREPARE q AS "[..], insert].concat()));
    s.write_all(&out).await.unwrap();
    let errs = errors(&read_ready(&mut s, 4).await);
    let codes: Vec<&str> = errs.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(codes, ["42P05"], "{errs:?}");
    let rows = count(&d, "SELECT count(*) FROM entitlements").await;
    admin(&g)
        .await
        .simple_query("SET SWITCH enable_new_commerce = off")
        .await
        .unwrap();
    // Parse s1 again as a harmless SELECT: the server refuses it (42P05,
    // the name exists) and keeps the INSERT, which the Bind must not run.
    let mut out = parse("s1", b"SELECT 1");
    out.extend(bind("s1", &[]));
    out.extend(execute());
    out.extend(sync());
    // SQL PREPARE and protocol Bind share one namespace.
    out.extend(bind("p", &[]));
    out.extend(execute());
    out.extend(sync());
    // A name nobody prepared.
    out.extend(bind("nobody", &[]));
    out.extend(execute());
    out.extend(sync());
    // q is still SELECT 1: it runs after the flip.
    out.extend(query(b"EXECUTE q"));
    s.write_all(&out).await.unwrap();
    let errs = errors(&read_ready(&mut s, 4).await);
    let codes: Vec<&str> = errs.iter().map(|e| e.1.as_str()).collect();
    // The duplicate Parse fails first (the server then skips the Bind the
    // guard rejected), p's INSERT is rejected, nobody is unknown.
    assert_eq!(codes, ["42P05", "42501", "26000"], "{errs:?}");
    assert!(errs[2].2.contains("zoneguard"), "{errs:?}");
    // s1 is still the INSERT: binding it alone is rejected after the flip.
    let mut out = bind("s1", &[]);
    out.extend(execute());
    out.extend(sync());
    s.write_all(&out).await.unwrap();
    let errs = errors(&read_ready(&mut s, 1).await);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].1, "42501");
    assert_eq!(count(&d, "SELECT count(*) FROM entitlements").await, rows);
    // Closed and deallocated statements are forgotten once the server says so.
    let app = g.connect("app", &db).await;
    app.batch_execute("PREPARE r AS SELECT 2; DEALLOCATE r")
        .await
        .unwrap();
    assert_eq!(sqlstate(app.batch_execute("EXECUTE r").await), "42501");
}

#[tokio::test]
async fn replication_connections_are_refused_unless_the_policy_allows_them() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    for mode in ["database", "true", "on", "1"] {
        let mut s = startup_and(
            &g,
            &[
                ("user", "postgres"),
                ("database", &db),
                ("replication", mode),
            ],
            &query(b"DROP_REPLICATION_SLOT some_slot"),
        )
        .await;
        let errs = errors(&read_to_end(&mut s).await);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!((errs[0].0.as_str(), errs[0].1.as_str()), ("FATAL", "42501"));
        assert!(errs[0].2.contains("replication"), "{errs:?}");
    }
    let audit = g.audit();
    assert!(
        audit
            .iter()
            .any(|r| r["rule"] == "replication" && r["user"] == "postgres"),
        "{audit:?}"
    );
    // replication=false is an ordinary session.
    let mut s = startup_and(
        &g,
        &[("user", "app"), ("database", &db), ("replication", "false")],
        &query(b"SELECT 1"),
    )
    .await;
    assert!(errors(&read_ready(&mut s, 2).await).is_empty());
    // Allowed for a role: the walsender answers.
    let policy = format!("{SHIPPED_POLICY}\n[roles.postgres]\nreplication = true\n");
    let g = TestGuard::start(&policy).await;
    let mut s = startup_and(
        &g,
        &[
            ("user", "postgres"),
            ("database", &db),
            ("replication", "database"),
        ],
        &query(b"IDENTIFY_SYSTEM"),
    )
    .await;
    let reply = read_ready(&mut s, 2).await;
    assert!(errors(&reply).is_empty(), "{:?}", errors(&reply));
    assert!(frames(&reply).iter().any(|(t, _)| *t == b'D'), "no row");
}

#[tokio::test]
async fn unauthenticated_clients_cannot_make_the_guard_hold_much() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    // A 100 KB message before the server has authenticated the client (sent
    // with the startup packet): refused at its header, nothing buffered.
    let mut big = vec![b'p'];
    big.extend_from_slice(&(100_004i32).to_be_bytes());
    big.extend(std::iter::repeat_n(b'x', 1000));
    let mut s = startup_and(&g, &[("user", "app"), ("database", &db)], &big).await;
    let errs = errors(&read_to_end(&mut s).await);
    assert!(
        errs.iter().any(|e| e.0 == "FATAL" && e.2.contains("65535")),
        "{errs:?}"
    );
    // After authentication the configured limit applies.
    let app = g.connect("app", &db).await;
    let long = format!("SELECT length('{}')", "y".repeat(200_000));
    let rows = app.simple_query(&long).await.unwrap();
    let value = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("200000"));
}

#[tokio::test]
async fn one_fatal_when_the_server_ends_the_session() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let mut s = raw_session(&g, &db).await;
    s.write_all(&query(b"SELECT pg_terminate_backend(pg_backend_pid())"))
        .await
        .unwrap();
    let errs = errors(&read_to_end(&mut s).await);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!((errs[0].0.as_str(), errs[0].1.as_str()), ("FATAL", "57P01"));
}

#[tokio::test]
async fn a_regular_message_instead_of_a_startup_packet_is_closed_quietly() {
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(&msg(b'X', b"")).await.unwrap();
    assert!(read_to_end(&mut s).await.is_empty());
}

#[tokio::test]
async fn valid_postgres_that_psycopg_sends_passes() {
    let db = fresh_db();
    let policy = SHIPPED_POLICY.replace(
        "[roles.legacy_app]",
        "[roles.app]\nother_ddl = true\n\n[roles.legacy_app]",
    );
    assert_ne!(policy, SHIPPED_POLICY);
    let g = TestGuard::start(&policy).await;
    let app = g.connect("app", &db).await;
    // Two-phase commit.
    app.batch_execute(
        "BEGIN; INSERT INTO entitlements (user_id, source_trx_id, sku, status) VALUES (2, 2, 'TPC', 'ACTIVE'); PREPARE TRANSACTION 'zg-tpc-1'",
    )
    .await
    .unwrap();
    app.batch_execute("COMMIT PREPARED 'zg-tpc-1'")
        .await
        .unwrap();
    let d = direct(&db).await;
    assert_eq!(
        count(&d, "SELECT count(*) FROM entitlements WHERE sku = 'TPC'").await,
        1
    );
    app.batch_execute("BEGIN; PREPARE TRANSACTION 'zg-tpc-2'")
        .await
        .unwrap();
    app.batch_execute("ROLLBACK PREPARED 'zg-tpc-2'")
        .await
        .unwrap();
    // CREATE USER with options sqlparser does not know.
    let name = format!("zg_u_{db}");
    app.batch_execute(&format!("CREATE USER {name} WITH LOGIN PASSWORD 'p'"))
        .await
        .unwrap();
    app.batch_execute(&format!("DROP USER {name}"))
        .await
        .unwrap();
    // Text that cannot even be lexed: PostgreSQL's own syntax error.
    assert_eq!(
        sqlstate(app.batch_execute("SELECT 'unterminated").await),
        "42601"
    );
    assert_eq!(
        sqlstate(app.batch_execute("DELETE FROM users; SELECT $$x").await),
        "42601"
    );
    assert_eq!(count(&d, "SELECT count(*) FROM users").await, 5);
}

#[tokio::test]
async fn the_console_stays_reachable_under_a_flood_of_silent_connections() {
    let db = fresh_db();
    let policy = SHIPPED_POLICY
        .replace("max_clients = 1000", "max_clients = 20")
        .replace(
            "max_unauthenticated_per_address = 256",
            "max_unauthenticated_per_address = 50",
        );
    assert_ne!(policy, SHIPPED_POLICY);
    let g = TestGuard::start(&policy).await;
    // 300 connections that never send a startup packet.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(g.addr).await.unwrap());
    }
    let (waiting, evicted) = g.guard.admission.unauthenticated();
    assert!(waiting <= 50, "{waiting}");
    assert!(evicted >= 250, "{evicted}");
    // The admin flips the switch; applications still connect.
    let console = admin(&g).await;
    console
        .simple_query("SET SWITCH enable_new_commerce = off")
        .await
        .unwrap();
    let app = match tokio_postgres::connect(&g.url("app", &db), tokio_postgres::NoTls).await {
        Ok((c, conn)) => {
            tokio::spawn(conn);
            c
        }
        Err(e) => panic!("{e:?}"),
    };
    assert_eq!(count(&app, "SELECT count(*) FROM users").await, 5);
    // With every session slot taken (the console and app above hold two),
    // the console still has its reserve.
    let mut held = Vec::new();
    for _ in 0..18 {
        held.push(g.connect("app", &db).await);
    }
    let url = g.url("app", &db);
    let refused = tokio_postgres::connect(&url, tokio_postgres::NoTls).await;
    assert_eq!(sqlstate(refused.map(|(c, _)| c)), "53300");
    let console = admin(&g).await;
    console.simple_query("SHOW SWITCHES").await.unwrap();
    drop(silent);
}

#[tokio::test]
async fn console_logins_are_throttled_and_do_not_tell_which_names_exist() {
    let g = TestGuard::start(SHIPPED_POLICY).await;
    // Known and unknown names are both asked for SCRAM-SHA-256.
    for user in ["zgadmin", "nobody"] {
        let mut s = startup_and(&g, &[("user", user), ("database", "zoneguard")], b"").await;
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], b'R', "{user}");
        assert_eq!(
            i32::from_be_bytes(head[5..9].try_into().unwrap()),
            10,
            "{user}: SASL"
        );
    }
    let port = g.addr.port();
    let url = |user: &str, pw: &str| format!("postgresql://{user}:{pw}@127.0.0.1:{port}/zoneguard");
    let started = std::time::Instant::now();
    for i in 0..zoneguard::admin::throttle::MAX_FAILURES {
        let user = if i % 2 == 0 { "zgadmin" } else { "nobody" };
        let r = tokio_postgres::connect(&url(user, "wrong"), tokio_postgres::NoTls).await;
        assert_eq!(sqlstate(r.map(|(c, _)| c)), "28P01");
    }
    // Each failure is answered after a delay.
    assert!(started.elapsed() >= zoneguard::admin::throttle::FAILURE_DELAY * 10);
    // Locked out now, even with the right password.
    let r = tokio_postgres::connect(&url("zgadmin", "zgadmin"), tokio_postgres::NoTls).await;
    let e = db_error(r.map(|(c, _)| c));
    assert_eq!(e.code().code(), "28000");
    assert!(e.message().contains("too many failed"), "{}", e.message());
}

#[tokio::test]
async fn untrusted_values_are_escaped_in_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, SHIPPED_POLICY).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_zoneguard"))
        .arg("--policy")
        .arg(&policy)
        .args(["--listen", &listen, "--upstream", &cluster().addr()])
        .args(["--log-level", "debug"])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut up = None;
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(&listen).await {
            up = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    drop(up.expect("the guard listens"));
    // A user name that would forge a log line, with a terminal escape.
    let forged = "x\n2026-12-02T00:00:00.000000Z  WARN zoneguard::control: switch flipped who=\"zgadmin\"\u{1b}[2K";
    let mut s = TcpStream::connect(&listen).await.unwrap();
    let mut out =
        zoneguard::protocol::startup_message(&[("user", forged), ("database", "zoneguard")])
            .to_vec();
    out.extend(msg(b'p', b"WRONG\0\0\0\0\0"));
    s.write_all(&out).await.unwrap();
    let _ = read_to_end(&mut s).await;
    let pid = child.id().unwrap() as i32;
    // End the guard we started, by its PID.
    terminate(pid);
    let mut stderr = Vec::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .await
        .unwrap();
    let _ = child.wait().await;
    let text = String::from_utf8_lossy(&stderr);
    assert!(text.contains("authentication failed"), "{text}");
    assert!(!stderr.contains(&0x1b), "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("2026-12-02T00:00:00.000000Z")),
        "{text}"
    );
}

fn terminate(pid: i32) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

#[tokio::test]
async fn a_copy_through_the_extended_protocol_keeps_its_batch_open() {
    // The Sync right behind the COPY's Execute is ignored by the server in
    // copy-in mode: after CopyDone the batch goes on, and what the COPY ran
    // (triggers included) may have changed a setting not yet reported.
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let mut s = raw_session(&g, &db).await;
    let mut out = parse("", b"COPY commission_rules (logic_json) FROM STDIN");
    out.extend(bind("", &[]));
    out.extend(execute());
    out.extend(sync());
    s.write_all(&out).await.unwrap();
    let mut out = msg(b'd', b"{\"copied\": 1}\n");
    out.extend(msg(b'c', b""));
    out.extend(query(b"SELECT 'a\\'"));
    out.extend(sync());
    s.write_all(&out).await.unwrap();
    let errs = errors(&read_ready(&mut s, 2).await);
    assert!(
        errs.iter()
            .any(|e| e.1 == "42501" && e.2.contains("follows an Execute")),
        "{errs:?}"
    );
}

/// Found by psycopg's own suite through the guard (client-side binding in
/// pipeline mode, the encoding setter): valid statements that must pass.
#[tokio::test]
async fn what_psycopg_pipelines_passes() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let mut s = raw_session(&g, &db).await;
    // A bytea literal (a backslash in a '...' string that no reading of
    // standard_conforming_strings ends elsewhere), after an Execute.
    let then = b"SELECT '\\x8e12'::bytea, E'a\\'b', 'C:\\\\dir\\\\'";
    s.write_all(&one_batch(b"SELECT 1", &[], then))
        .await
        .unwrap();
    let reply = read_ready(&mut s, 1).await;
    assert!(errors(&reply).is_empty(), "{:?}", errors(&reply));
    // set_config of client_encoding with a parameter: allowed; a value the
    // guard reads under keeps the session, another ends it (R3).
    let mut out = parse("", b"SELECT set_config('client_encoding', $1, false)");
    out.extend(bind("", &["utf8"]));
    out.extend(execute());
    out.extend(sync());
    s.write_all(&out).await.unwrap();
    let reply = read_ready(&mut s, 1).await;
    assert!(errors(&reply).is_empty(), "{:?}", errors(&reply));
    // A rejected Parse fails its batch: the Bind behind it is not judged
    // again (one error, one audit record).
    let before = g.audit().len();
    let mut out = parse("", b"DELETE FROM users");
    out.extend(bind("", &[]));
    out.extend(execute());
    out.extend(sync());
    s.write_all(&out).await.unwrap();
    let errs = errors(&read_ready(&mut s, 1).await);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(g.audit().len(), before + 1);
    let mut out = parse("", b"SELECT set_config('client_encoding', $1, false)");
    out.extend(bind("", &["latin1"]));
    out.extend(execute());
    out.extend(sync());
    s.write_all(&out).await.unwrap();
    let errs = errors(&read_to_end(&mut s).await);
    assert!(
        errs.iter().any(|e| e.0 == "FATAL" && e.1 == "0A000"),
        "{errs:?}"
    );
}
