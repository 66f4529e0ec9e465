//! End to end through a real zoneguard to a real PostgreSQL, driven by
//! tokio-postgres (extended protocol, pipelining) and raw sockets.

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn reads_pass_and_legacy_writes_are_rejected_with_42501_and_audit() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    let before = legacy_snapshot(&direct(&db).await).await;

    assert_eq!(count(&app, "SELECT count(*) FROM users").await, 5);
    let rows = app
        .simple_query("SELECT 'DELETE FROM users'")
        .await
        .unwrap();
    let data: Vec<_> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(data, ["DELETE FROM users"]);

    let err = db_error(
        app.batch_execute("UPDATE users SET email = 'x' WHERE id = 1")
            .await,
    );
    assert_eq!(err.code().code(), "42501");
    assert_eq!(
        err.message(),
        "UPDATE on \"users\" is not allowed: legacy zone is read-only"
    );
    assert!(err.hint().unwrap().contains("new zone"), "{:?}", err.hint());

    let err = db_error(
        app.execute("DELETE FROM transactions WHERE id = $1", &[&1i64])
            .await,
    );
    assert_eq!(err.code().code(), "42501");
    assert!(err.message().starts_with("DELETE on \"transactions\""));

    // The connection stays usable after rejections, in both protocols.
    assert_eq!(count(&app, "SELECT count(*) FROM transactions").await, 7);
    assert_eq!(legacy_snapshot(&direct(&db).await).await, before);

    let audit = g.audit();
    assert_eq!(audit.len(), 2, "{audit:?}");
    let first = &audit[0];
    assert_eq!(first["operation"], "UPDATE");
    assert_eq!(first["table"], "\"users\"");
    assert_eq!(first["zone"], "legacy");
    assert_eq!(first["rule"], "legacy-read-only");
    assert_eq!(first["sqlstate"], "42501");
    assert_eq!(first["user"], "app");
    assert_eq!(first["database"], db.as_str());
    assert_eq!(first["protocol"], "simple");
    assert_eq!(
        first["statement"],
        "UPDATE users SET email = 'x' WHERE id = 1"
    );
    assert!(first["time"].as_str().unwrap().starts_with("20"));
    assert!(first["client_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(audit[1]["protocol"], "extended");
}

#[tokio::test]
async fn new_zone_writes_pass_and_legacy_role_keeps_writing() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    let n = app
        .execute(
            "INSERT INTO entitlements (user_id, source_trx_id, sku, status) VALUES ($1, $2, $3, 'ACTIVE')",
            &[&1i64, &1i64, &"SKU-A"],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    app.batch_execute(
        "UPDATE commission_rules SET logic_json = '{}'; CREATE INDEX ON entitlements (status)",
    )
    .await
    .unwrap();
    let d = direct(&db).await;
    assert_eq!(count(&d, "SELECT count(*) FROM entitlements").await, 1);

    let legacy = g.connect("legacy_app", &db).await;
    legacy
        .batch_execute("UPDATE users SET email = 'ani@new.example' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        d.query_one("SELECT email FROM users WHERE id = 1", &[])
            .await
            .unwrap()
            .get::<_, String>(0),
        "ani@new.example"
    );
    assert!(g.audit().is_empty());
}

#[tokio::test]
async fn a_rejection_fails_the_transaction_like_postgres() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    app.batch_execute("BEGIN").await.unwrap();
    app.execute(
        "INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'X', 'ACTIVE')",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        sqlstate(app.batch_execute("DELETE FROM users").await),
        "42501"
    );
    assert_eq!(sqlstate(app.query("SELECT 1", &[]).await), "25P02");
    // COMMIT of a failed block rolls back and says so.
    let msgs = app.simple_query("COMMIT").await.unwrap();
    match &msgs[0] {
        tokio_postgres::SimpleQueryMessage::CommandComplete(_) => {}
        other => panic!("{other:?}"),
    }
    let d = direct(&db).await;
    assert_eq!(count(&d, "SELECT count(*) FROM entitlements").await, 0);

    // ROLLBACK TO SAVEPOINT recovers, as in PostgreSQL.
    app.batch_execute("BEGIN; SAVEPOINT s1").await.unwrap();
    assert_eq!(
        sqlstate(app.batch_execute("TRUNCATE transactions").await),
        "42501"
    );
    app.batch_execute("ROLLBACK TO SAVEPOINT s1").await.unwrap();
    app.batch_execute(
        "INSERT INTO entitlements (user_id, sku, status) VALUES (2, 'Y', 'ACTIVE'); COMMIT",
    )
    .await
    .unwrap();
    assert_eq!(count(&d, "SELECT count(*) FROM entitlements").await, 1);
    assert_eq!(count(&d, "SELECT count(*) FROM transactions").await, 7);
}

#[tokio::test]
async fn a_multi_statement_query_runs_none_of_its_statements() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    let r = app
        .batch_execute(
            "INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'A', 'ACTIVE'); \
             DELETE FROM user_assessments; \
             INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'B', 'ACTIVE')",
        )
        .await;
    let err = db_error(r);
    assert_eq!(err.code().code(), "42501");
    assert!(err.message().contains("\"user_assessments\""));
    let d = direct(&db).await;
    assert_eq!(count(&d, "SELECT count(*) FROM entitlements").await, 0);
    assert_eq!(count(&d, "SELECT count(*) FROM user_assessments").await, 2);
}

#[tokio::test]
async fn pipelined_requests_keep_their_order() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    // tokio-postgres pipelines concurrent requests on one connection.
    let (a, b, c, d, e) = tokio::join!(
        app.query_one("SELECT 1::int4", &[]),
        app.execute("UPDATE users SET email = $1", &[&"x"]),
        app.query_one("SELECT 3::int4", &[]),
        app.execute("SELECT * FROM users FOR UPDATE", &[]),
        app.query_one("SELECT count(*) FROM users", &[]),
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(sqlstate(b), "42501");
    assert_eq!(c.unwrap().get::<_, i32>(0), 3);
    let d = db_error(d);
    assert_eq!(d.code().code(), "42501");
    assert!(d.message().contains("SELECT FOR UPDATE"), "{}", d.message());
    assert_eq!(e.unwrap().get::<_, i64>(0), 5);
    assert_eq!(g.audit().len(), 2);
}

#[tokio::test]
async fn nested_and_disguised_writes_are_rejected() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    let before = legacy_snapshot(&direct(&db).await).await;
    for sql in [
        "WITH x AS (UPDATE users SET email = 'y' RETURNING id) SELECT count(*) FROM x",
        "EXPLAIN ANALYZE DELETE FROM transactions",
        "SELECT * FROM transactions FOR NO KEY UPDATE",
        "update \"users\" set email = 'q'",
        "UPDATE public.users SET email = 'q'",
        "INSERT INTO entitlements (user_id, sku, status) SELECT id, 'S', 'ACTIVE' FROM users; DELETE FROM users",
        "DO $$ BEGIN UPDATE users SET email = 'z'; END $$",
        "COPY users FROM STDIN",
        "LOCK TABLE users IN EXCLUSIVE MODE",
        "ALTER TABLE users ADD COLUMN x int",
        "DROP TABLE user_assessments",
        "CREATE TRIGGER t BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION f()",
        "CREATE VIEW v AS SELECT * FROM users",
        "PREPARE p AS DELETE FROM users",
        "GRANT ALL ON users TO PUBLIC",
        "CREATE TABLE users_copy AS SELECT * FROM users; DROP TABLE users",
    ] {
        let err = db_error(app.batch_execute(sql).await);
        assert_eq!(err.code().code(), "42501", "{sql}: {}", err.message());
    }
    assert_eq!(legacy_snapshot(&direct(&db).await).await, before);
    assert_eq!(g.audit().len(), 16);
    // What cannot write still works, parseable or not.
    assert_eq!(count(&app, "SELECT count(*) FROM (TABLE users) t").await, 5);
    app.simple_query("TABLE users").await.unwrap();
    app.batch_execute("EXPLAIN DELETE FROM users; BEGIN; ROLLBACK")
        .await
        .unwrap();
    app.batch_execute("VACUUM users").await.unwrap();
}

#[tokio::test]
async fn prepare_and_execute_are_judged_by_the_body() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    app.batch_execute("PREPARE ok(int) AS SELECT * FROM users WHERE id = $1")
        .await
        .unwrap();
    app.batch_execute("EXECUTE ok(1)").await.unwrap();
    // An EXECUTE of a statement the guard never saw prepared is refused.
    assert_eq!(sqlstate(app.batch_execute("EXECUTE nope").await), "42501");
    app.batch_execute("DEALLOCATE ok").await.unwrap();
    assert_eq!(sqlstate(app.batch_execute("EXECUTE ok(1)").await), "42501");
}

#[tokio::test]
async fn copy_in_both_directions() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    use futures_util::SinkExt;
    let sink = app
        .copy_in("COPY commission_rules (logic_json) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"{\"a\":1}\n{\"b\":2}\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    use futures_util::TryStreamExt;
    let out: Vec<bytes::Bytes> = app
        .copy_out("COPY users TO STDOUT")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let text: Vec<u8> = out.concat();
    assert_eq!(text.iter().filter(|b| **b == b'\n').count(), 5);
    let r = app
        .copy_in::<_, bytes::Bytes>("COPY users FROM STDIN")
        .await;
    assert_eq!(sqlstate(r.map(|_| ())), "42501");
    assert_eq!(
        count(&app, "SELECT count(*) FROM commission_rules").await,
        3
    );
}

#[tokio::test]
async fn cancel_requests_reach_the_server() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    let token = app.cancel_token();
    let canceller = tokio::spawn(async move {
        // Cancel once the query is running (retry until it has started).
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        }
    });
    let started = std::time::Instant::now();
    let r = app.batch_execute("SELECT pg_sleep(30)").await;
    canceller.abort();
    assert_eq!(sqlstate(r), "57014");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(count(&app, "SELECT 1::int8").await, 1);
}

#[tokio::test]
async fn listen_notify_pass_through() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let (listener, mut conn) = tokio_postgres::connect(&g.url("app", &db), tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        use futures_util::StreamExt;
        while let Some(Ok(msg)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    listener.batch_execute("LISTEN checkout").await.unwrap();
    let other = g.connect("app", &db).await;
    other
        .batch_execute("NOTIFY checkout, 'paid'")
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("paid"));
}

#[tokio::test]
async fn password_authentication_is_relayed() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let port = g.addr.port();
    for user in ["scram_user", "md5_user"] {
        let c = connect_url(&format!("postgresql://{user}:secret@127.0.0.1:{port}/{db}")).await;
        assert_eq!(count(&c, "SELECT 1::int8").await, 1);
        let bad = tokio_postgres::connect(
            &format!("postgresql://{user}:wrong@127.0.0.1:{port}/{db}"),
            tokio_postgres::NoTls,
        )
        .await;
        let err = bad.err().expect("wrong password must fail");
        assert_eq!(err.as_db_error().unwrap().code().code(), "28P01");
    }
}

#[tokio::test]
async fn unreachable_upstream_gets_08006() {
    let port = zoneguard::cluster::free_port().unwrap();
    let g = TestGuard::start_with_upstream(SHIPPED_POLICY, &format!("127.0.0.1:{port}")).await;
    let r = tokio_postgres::connect(&g.url("app", "x"), tokio_postgres::NoTls).await;
    let err = r.err().expect("must fail");
    let db = err.as_db_error().expect("a database error, not a hang");
    assert_eq!(db.code().code(), "08006");
    assert!(db.message().contains("could not connect"));
}

#[tokio::test]
async fn a_unix_socket_upstream_relays_enforces_and_cancels() {
    let db = fresh_db();
    let socket = cluster().socket_path();
    let g = TestGuard::start_with_upstream(SHIPPED_POLICY, &socket.display().to_string()).await;
    let app = g.connect("app", &db).await;
    // The server sees a local connection: the guard did reach it over the
    // socket, not over TCP.
    let local: bool = app
        .query_one("SELECT inet_client_addr() IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(local, "the server saw a TCP client");
    assert_eq!(count(&app, "SELECT count(*) FROM users").await, 5);
    app.execute(
        "INSERT INTO entitlements (user_id, sku, status) VALUES ($1, 'U', 'ACTIVE')",
        &[&1i64],
    )
    .await
    .unwrap();
    let err = db_error(app.batch_execute("DELETE FROM users").await);
    assert_eq!(err.code().code(), "42501");
    assert_eq!(g.audit().len(), 1);
    assert_eq!(
        count(&direct(&db).await, "SELECT count(*) FROM users").await,
        5
    );

    // A CancelRequest is forwarded over the socket too.
    let token = app.cancel_token();
    let canceller = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        }
    });
    let r = app.batch_execute("SELECT pg_sleep(30)").await;
    canceller.abort();
    assert_eq!(sqlstate(r), "57014");

    // A socket that is not there: 08006 naming the path.
    let missing = socket.with_file_name(".s.PGSQL.1");
    let g = TestGuard::start_with_upstream(SHIPPED_POLICY, &missing.display().to_string()).await;
    let r = tokio_postgres::connect(&g.url("app", &db), tokio_postgres::NoTls).await;
    let err = r.err().expect("must fail");
    let e = err.as_db_error().expect("a database error, not a hang");
    assert_eq!(e.code().code(), "08006");
    assert!(e.message().contains(".s.PGSQL.1"), "{}", e.message());
}

#[tokio::test]
async fn clients_can_connect_over_a_unix_socket() {
    let db = fresh_db();
    let g = TestGuard::start_with_unix_socket(SHIPPED_POLICY).await;
    let socket = g.socket_dir.join(format!(".s.PGSQL.{}", g.addr.port()));
    assert!(socket.exists(), "no {}", socket.display());
    // As libpq and psql spell it: host = the directory, port = the guard's.
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(&g.socket_dir)
        .port(g.addr.port())
        .user("app")
        .dbname(&db);
    let (app, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    assert_eq!(count(&app, "SELECT count(*) FROM users").await, 5);
    let err = db_error(app.batch_execute("UPDATE users SET email = 'x'").await);
    assert_eq!(err.code().code(), "42501");
    let audit = g.audit();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["client_addr"], "[local]");
    // The admin console answers there too.
    let (console, conn) = config
        .user("zgadmin")
        .password("zgadmin")
        .dbname("zoneguard")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let switches = console.simple_query("SHOW SWITCHES").await.unwrap();
    assert!(switches
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
    // TCP still works beside it.
    let tcp = g.connect("app", &db).await;
    assert_eq!(count(&tcp, "SELECT count(*) FROM users").await, 5);
    // A second guard cannot take a socket that answers.
    let taken = zoneguard::net::bind_client_socket(&g.socket_dir, g.addr.port());
    assert_eq!(
        taken.err().map(|e| e.kind()),
        Some(std::io::ErrorKind::AddrInUse)
    );
}

#[tokio::test]
async fn a_vanished_client_commits_nothing() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    {
        let app = g.connect("app", &db).await;
        app.batch_execute(
            "BEGIN; INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'V', 'ACTIVE')",
        )
        .await
        .unwrap();
    } // dropped without COMMIT
    let d = direct(&db).await;
    // The server ends the backend once the guard closes its side; wait for it.
    for _ in 0..100 {
        let n = count(
            &d,
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND usename = 'app'"
            ),
        )
        .await;
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&d, "SELECT count(*) FROM entitlements").await, 0);
}

async fn read_to_end(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn malformed_frames_get_08p01_and_others_keep_working() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;

    let mut bad = raw_session(&g, &db).await;
    bad.write_all(&[b'Q', 0, 0, 0, 2]).await.unwrap();
    let reply = read_to_end(&mut bad).await;
    assert!(reply.windows(6).any(|w| w == b"C08P01"), "{reply:?}");

    let mut huge = raw_session(&g, &db).await;
    huge.write_all(&[b'Q', 0x10, 0, 0, 0]).await.unwrap();
    let reply = read_to_end(&mut huge).await;
    assert!(reply.windows(6).any(|w| w == b"C54000"), "{reply:?}");

    // Junk before startup (closed without a word, as PostgreSQL does with
    // an invalid startup packet length), and a client that vanishes
    // mid-message.
    let mut junk = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let reply = read_to_end(&mut junk).await;
    assert!(reply.is_empty(), "{reply:?}");
    let mut half = raw_session(&g, &db).await;
    half.write_all(&[b'Q', 0, 0, 0, 100, b'S']).await.unwrap();
    drop(half);

    assert_eq!(count(&app, "SELECT count(*) FROM users").await, 5);
}

#[tokio::test]
async fn fast_path_function_calls_are_rejected_and_the_session_goes_on() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let mut s = raw_session(&g, &db).await;
    // FunctionCall: oid of lo_unlink(oid) (964), no format codes, one text
    // argument, text result.
    let mut body = Vec::new();
    body.extend_from_slice(&964i32.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.push(b'1');
    body.extend_from_slice(&0i16.to_be_bytes());
    s.write_all(&msg(b'F', &body)).await.unwrap();
    let seen = read_until_ready(&mut s).await;
    assert_eq!(seen[0], b'E');
    assert!(seen.windows(6).any(|w| w == b"C42501"));
    assert!(seen.ends_with(&[b'Z', 0, 0, 0, 5, b'I']));
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("fast-path function calls are not allowed"),
        "{text}"
    );
    assert_eq!(g.audit()[0]["protocol"], "function_call");
    // Still usable: a simple query answers.
    s.write_all(&msg(b'Q', b"SELECT 1\0")).await.unwrap();
    let seen = read_until_ready(&mut s).await;
    assert_eq!(seen[0], b'T', "a RowDescription first");
}

#[tokio::test]
async fn a_server_that_goes_away_gives_an_error_not_a_hang() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    let pid: i32 = app
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let d = direct(&db).await;
    d.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), app.simple_query("SELECT 1"))
        .await
        .expect("an answer, not a hang");
    assert!(r.is_err());
    // Other sessions are unaffected.
    let other = g.connect("app", &db).await;
    assert_eq!(count(&other, "SELECT count(*) FROM users").await, 5);
}

#[tokio::test]
async fn turning_standard_conforming_strings_off_ends_the_session_before_more_is_run() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let before = legacy_snapshot(&direct(&db).await).await;
    let mut s = raw_session(&g, &db).await;
    // The first query turns the setting off through a name the guard cannot
    // read; the second, pipelined right behind it, is harmless with the
    // setting on (a string and a dollar-quoted string) but would run a
    // DELETE if the server read it with the setting off.
    let mut out = msg(
        b'Q',
        b"SELECT set_config(name, 'off', false) FROM pg_settings WHERE name = 'standard_conforming_strings'\0",
    );
    out.extend(msg(
        b'Q',
        b"SELECT 'a\\' , $$x' ; DELETE FROM user_assessments; --$$\0",
    ));
    s.write_all(&out).await.unwrap();
    let reply = read_to_end(&mut s).await;
    assert!(reply.windows(6).any(|w| w == b"C0A000"), "{reply:?}");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("standard_conforming_strings"), "{text}");
    assert_eq!(legacy_snapshot(&direct(&db).await).await, before);
    // SET of it directly is refused outright.
    let app = g.connect("app", &db).await;
    assert_eq!(
        sqlstate(
            app.batch_execute("SET standard_conforming_strings = off")
                .await
        ),
        "42501"
    );
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_startup_timeout() {
    let policy = SHIPPED_POLICY.replace("startup_timeout_secs = 10", "startup_timeout_secs = 1");
    assert_ne!(policy, SHIPPED_POLICY);
    let g = TestGuard::start(&policy).await;
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let reply = read_to_end(&mut silent).await;
    assert!(reply.is_empty(), "{reply:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // The guard still serves others.
    let db = fresh_db();
    let app = g.connect("app", &db).await;
    assert_eq!(count(&app, "SELECT count(*) FROM users").await, 5);
}
