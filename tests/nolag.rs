//! No lag: every statement is judged under what the session and the
//! database have just become (docs/catalog.md, "The invariant"): DDL
//! earlier in the same write, batch or transaction, another session's DDL,
//! DDL made directly, a database made again, a switch flipped after a
//! portal was bound. Legacy rows are checked over a direct connection.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;

/// Made directly before the guard starts: a new-zone view over a new-zone
/// table, an empty new-zone table, a partitioned new-zone table.
const FIXTURE: &str = "
CREATE SCHEMA app;
CREATE TABLE app.notes (id bigint, email text);
CREATE VIEW app.ent_notes AS SELECT id, email FROM app.notes;
CREATE TABLE app.empty_t (id bigint, email text);
CREATE TABLE ledger (id int, at date) PARTITION BY RANGE (at);
";

fn policy() -> String {
    SHIPPED_POLICY.replace(
        r#"tables = ["entitlements", "commission_rules", "product_sku_map"]"#,
        r#"tables = ["entitlements", "commission_rules", "product_sku_map", "notes", "ent_notes", "empty_t", "ledger", "x_*"]"#,
    ) + "\n[roles.app]\nother_ddl = true\n"
}

/// Multi-step attacks on the legacy rows: DDL the new zone allows, then a
/// write that the DDL turned into a write of `users`.
const ATTACKS: &[&[&str]] = &[
    // A rule _RETURN turns an empty new-zone table into a view over users.
    &[
        "CREATE RULE \"_RETURN\" AS ON SELECT TO app.empty_t DO INSTEAD SELECT id, email FROM users",
        "UPDATE app.empty_t SET email = 'pwn-' || email",
    ],
    // A view redefined over a view that is redefined over users.
    &[
        "CREATE RULE \"_RETURN\" AS ON SELECT TO app.notes DO INSTEAD SELECT id, email FROM users",
        "UPDATE app.ent_notes SET email = 'pwn-' || email",
    ],
    // A view in the new zone over another one, then that one redefined.
    &[
        "CREATE VIEW app.x_chain AS SELECT id, email FROM app.ent_notes",
        "CREATE RULE \"_RETURN\" AS ON SELECT TO app.notes DO INSTEAD SELECT id, email FROM users",
        "UPDATE app.x_chain SET email = 'pwn-' || email",
    ],
    // A copied default burns users_id_seq.
    &[
        "CREATE TABLE x_like (LIKE users INCLUDING DEFAULTS)",
        "INSERT INTO x_like (email) VALUES ('a')",
    ],
    // A rename moves a name onto the view.
    &[
        "CREATE RULE \"_RETURN\" AS ON SELECT TO app.notes DO INSTEAD SELECT id, email FROM users",
        "ALTER TABLE app.notes RENAME TO x_renamed",
        "DELETE FROM app.x_renamed",
    ],
    // Locks through the redefined view.
    &[
        "CREATE RULE \"_RETURN\" AS ON SELECT TO app.empty_t DO INSTEAD SELECT id, email FROM users",
        "SELECT * FROM app.empty_t FOR UPDATE",
    ],
];

/// Whether the server still turns a table into a view with a `_RETURN`
/// rule (PostgreSQL 15; 16 and later refuse it, and the attack with it).
async fn rules_make_views(d: &tokio_postgres::Client) -> bool {
    count(d, "SELECT current_setting('server_version_num')::int8").await < 160000
}

/// The attacks the server can run at all.
async fn attacks(d: &tokio_postgres::Client) -> Vec<&'static [&'static str]> {
    let rules = rules_make_views(d).await;
    ATTACKS
        .iter()
        .copied()
        .filter(|a| rules || !a.iter().any(|s| s.contains("_RETURN")))
        .collect()
}

async fn fresh() -> (String, TestGuard, tokio_postgres::Client) {
    let db = fresh_db();
    cluster().psql(&db, FIXTURE).unwrap();
    let g = TestGuard::start(&policy()).await;
    let d = direct(&db).await;
    (db, g, d)
}

async fn users_seq(d: &tokio_postgres::Client) -> String {
    let r = d
        .query_one(
            "SELECT last_value::text || is_called::text FROM users_id_seq",
            &[],
        )
        .await
        .unwrap();
    r.get(0)
}

/// Runs the steps in one transaction: as separate Queries, or as one
/// multi-statement Query (one TCP write).
async fn run_steps(
    c: &tokio_postgres::Client,
    steps: &[&str],
    one_query: bool,
) -> Result<(), String> {
    let err = |e: tokio_postgres::Error| {
        e.as_db_error().map_or(e.to_string(), |d| {
            format!("{} {}", d.code().code(), d.message())
        })
    };
    if one_query {
        return c
            .batch_execute(&format!("BEGIN; {}; COMMIT", steps.join("; ")))
            .await
            .map_err(err);
    }
    c.batch_execute("BEGIN").await.map_err(err)?;
    for s in steps {
        if let Err(e) = c.batch_execute(s).await {
            let _ = c.batch_execute("ROLLBACK").await;
            return Err(err(e));
        }
    }
    c.batch_execute("COMMIT").await.map_err(err)
}

/// The steps as one extended-protocol batch (Parse/Bind/Execute each, one
/// Sync, one TCP write), raw.
async fn run_pipelined(g: &TestGuard, db: &str, steps: &[&str]) -> Vec<u8> {
    let mut s = raw_session(g, db).await;
    let mut out = Vec::new();
    for sql in ["BEGIN"]
        .iter()
        .chain(steps.iter())
        .chain(["COMMIT"].iter())
    {
        out.extend(parse(sql));
        out.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        out.extend(msg(b'E', b"\0\0\0\0\0"));
    }
    out.extend(msg(b'S', b""));
    s.write_all(&out).await.unwrap();
    read_until_ready(&mut s).await
}

fn parse(sql: &str) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(sql.as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    msg(b'P', &body)
}

fn error_code(reply: &[u8]) -> Option<String> {
    let at = reply.windows(2).position(|w| w == [b'E', 0])?;
    let rest = &reply[at..];
    let c = rest.windows(1).position(|w| w == [b'C'])?;
    Some(String::from_utf8_lossy(&rest[c + 1..c + 6]).into_owned())
}

#[tokio::test]
async fn ddl_and_its_use_in_one_unit_are_judged_in_order() {
    let mut wrong = Vec::new();
    let all = attacks(&direct("postgres").await).await;
    for steps in all {
        for mode in ["queries", "one query", "pipelined"] {
            let (db, g, d) = fresh().await;
            let before = (legacy_snapshot(&d).await, users_seq(&d).await);
            let got = match mode {
                "pipelined" => match error_code(&run_pipelined(&g, &db, steps).await) {
                    Some(code) => Err(code),
                    None => Ok(()),
                },
                _ => run_steps(&g.connect("app", &db).await, steps, mode == "one query").await,
            };
            let after = (legacy_snapshot(&d).await, users_seq(&d).await);
            if got.is_ok() || before != after {
                wrong.push(format!(
                    "{mode} {steps:?}: {got:?}, legacy changed: {}",
                    before != after
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "attacks that went through:\n{}",
        wrong.join("\n")
    );
}

/// Once the DDL has committed, the catalog shows what it did: the same
/// writes in later transactions are refused as writes of `users`.
#[tokio::test]
async fn committed_ddl_is_in_force_for_the_next_statement() {
    for steps in attacks(&direct("postgres").await).await {
        let (db, g, d) = fresh().await;
        let before = (legacy_snapshot(&d).await, users_seq(&d).await);
        let app = g.connect("app", &db).await;
        let (ddl, write) = steps.split_at(steps.len() - 1);
        for s in ddl {
            app.batch_execute(s).await.unwrap();
        }
        let e = db_error(app.batch_execute(write[0]).await);
        assert_eq!(e.code().code(), "42501", "{steps:?}: {}", e.message());
        // Another session, right after the commit, too.
        let other = g.connect("app", &db).await;
        assert_eq!(
            sqlstate(other.batch_execute(write[0]).await),
            "42501",
            "{steps:?}"
        );
        assert_eq!(before, (legacy_snapshot(&d).await, users_seq(&d).await));
    }
}

/// Another session's DDL: while it is open, a write through the names it
/// changed is refused (it may run after the commit, queued behind the
/// DDL's lock); once it commits, every session judges on the new catalog.
#[tokio::test]
async fn another_sessions_ddl_is_in_force_at_once() {
    let (db, g, d) = fresh().await;
    let before = legacy_snapshot(&d).await;
    let a = g.connect("app", &db).await;
    let b = g.connect("app", &db).await;
    b.batch_execute("SELECT 1").await.unwrap();
    if !rules_make_views(&d).await {
        // PostgreSQL 16+: a view made in another session's open
        // transaction is in flux for this one until it commits.
        a.batch_execute("BEGIN; CREATE VIEW app.x_v AS SELECT id, email FROM app.notes")
            .await
            .unwrap();
        let e = db_error(b.batch_execute("UPDATE app.x_v SET email = 'x'").await);
        assert_eq!(e.code().code(), "55006", "{}", e.message());
        assert!(
            e.message().contains("another session's CREATE VIEW"),
            "{}",
            e.message()
        );
        a.batch_execute("COMMIT").await.unwrap();
        b.batch_execute("UPDATE app.x_v SET email = 'x'")
            .await
            .unwrap();
        assert_eq!(before, legacy_snapshot(&d).await);
        return;
    }
    a.batch_execute("BEGIN; CREATE RULE \"_RETURN\" AS ON SELECT TO app.empty_t DO INSTEAD SELECT id, email FROM users")
        .await
        .unwrap();
    let e = db_error(b.batch_execute("UPDATE app.empty_t SET email = 'x'").await);
    assert_eq!(e.code().code(), "55006", "{}", e.message());
    assert!(
        e.message().contains("another session's CREATE RULE"),
        "{}",
        e.message()
    );
    // Reads and writes of other names go on.
    b.batch_execute("SELECT count(*) FROM app.notes; INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'S', 'ACTIVE')")
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    let e = db_error(b.batch_execute("UPDATE app.empty_t SET email = 'x'").await);
    assert_eq!(e.code().code(), "42501", "{}", e.message());
    assert_eq!(before, legacy_snapshot(&d).await);
    // A race: autocommit DDL in one session, a lock in another at once;
    // whichever the guard judged first, the next one after the DDL's
    // answer is judged on the new catalog.
    for i in 0..5 {
        let t = format!("app.x_race_{i}");
        a.batch_execute(&format!("CREATE TABLE {t} (id bigint, email text)"))
            .await
            .unwrap();
        let rule = format!(
            "CREATE RULE \"_RETURN\" AS ON SELECT TO {t} DO INSTEAD SELECT id, email FROM users"
        );
        let lock = format!("SELECT * FROM {t} WHERE false FOR UPDATE");
        let (r1, _) = tokio::join!(a.batch_execute(&rule), b.batch_execute(&lock));
        r1.unwrap();
        assert_eq!(sqlstate(b.batch_execute(&lock).await), "42501");
    }
}

/// A partition of a new-zone parent is in the parent's zone from the moment
/// it is created (routine upkeep), and after the commit.
#[tokio::test]
async fn a_new_partition_is_in_its_parents_zone() {
    let (db, g, _d) = fresh().await;
    let app = g.connect("app", &db).await;
    app.batch_execute(
        "BEGIN; CREATE TABLE ledger_2027 PARTITION OF ledger FOR VALUES FROM ('2027-01-01') TO ('2028-01-01'); \
         INSERT INTO ledger_2027 VALUES (1, '2027-05-01'); COMMIT",
    )
    .await
    .unwrap();
    app.batch_execute("INSERT INTO ledger_2027 VALUES (2, '2027-06-01'); INSERT INTO ledger VALUES (3, '2027-07-01')")
        .await
        .unwrap();
    app.batch_execute("CREATE TABLE x_l2028 (id int, at date); ALTER TABLE ledger ATTACH PARTITION x_l2028 FOR VALUES FROM ('2028-01-01') TO ('2029-01-01')")
        .await
        .unwrap();
    app.batch_execute("INSERT INTO ledger VALUES (4, '2028-05-01')")
        .await
        .unwrap();
}

/// Migrations create a table and fill it in one transaction: a plain new
/// table is judged by its name at once (no false block).
#[tokio::test]
async fn a_plain_new_table_is_writable_in_its_own_transaction() {
    let (db, g, _d) = fresh().await;
    let app = g.connect("app", &db).await;
    app.batch_execute(
        "BEGIN; CREATE TABLE x_plain (id serial PRIMARY KEY, note text); \
         INSERT INTO x_plain (note) VALUES ('a'); ALTER TABLE x_plain ADD COLUMN more int; \
         UPDATE x_plain SET more = 1; CREATE INDEX x_plain_note ON x_plain (note); COMMIT",
    )
    .await
    .unwrap();
    // A name made in the legacy zone is still refused.
    assert_eq!(
        sqlstate(
            app.batch_execute(
                "BEGIN; CREATE TEMP TABLE users (id int); UPDATE users SET id = 1; COMMIT"
            )
            .await
        ),
        "42501"
    );
}

/// A prepared UPDATE that PostgreSQL plans again onto a table that DDL in
/// the same transaction turned into a view over users.
#[tokio::test]
async fn a_prepared_statement_is_judged_again_after_ddl() {
    let (db, g, d) = fresh().await;
    let before = legacy_snapshot(&d).await;
    // PostgreSQL 15: a rule makes the table a view over users; on 16+, the
    // table is renamed away and a view takes its name (over a new-zone
    // table: what matters is that the name is judged again).
    let redefine = if rules_make_views(&d).await {
        "CREATE RULE \"_RETURN\" AS ON SELECT TO app.empty_t DO INSTEAD SELECT id, email FROM users"
    } else {
        "ALTER TABLE app.empty_t RENAME TO x_gone; CREATE VIEW app.empty_t AS SELECT id, email FROM app.notes"
    };
    let app = g.connect("app", &db).await;
    app.batch_execute("BEGIN").await.unwrap();
    let st = app
        .prepare("UPDATE app.empty_t SET email = 'pwn-' || email")
        .await
        .unwrap();
    app.execute(&st, &[]).await.unwrap();
    app.batch_execute(redefine).await.unwrap();
    let e = db_error(app.execute(&st, &[]).await);
    assert_eq!(e.code().code(), "55006", "{}", e.message());
    let _ = app.batch_execute("ROLLBACK").await;
    // The SQL EXECUTE path too.
    app.batch_execute("PREPARE up AS UPDATE app.empty_t SET email = 'pwn'; BEGIN")
        .await
        .unwrap();
    app.batch_execute(redefine).await.unwrap();
    assert_eq!(sqlstate(app.batch_execute("EXECUTE up").await), "55006");
    let _ = app.batch_execute("ROLLBACK").await;
    assert_eq!(before, legacy_snapshot(&d).await);
}

/// With the change log installed: two-phase commit of DDL works (the
/// NOTIFY of the old trigger could not be prepared), COMMIT PREPARED makes
/// the guard re-read the catalog, and direct DDL is in force within the
/// poll interval (measured: printed).
#[tokio::test]
async fn the_change_log_bounds_direct_ddl_and_allows_two_phase_commit() {
    let (db, g, d) = fresh().await;
    cluster()
        .psql(&db, zoneguard::catalog::TRIGGER_SQL)
        .unwrap();
    let app = g.connect("app", &db).await;
    app.batch_execute("BEGIN; CREATE TABLE x_2pc (id int); PREPARE TRANSACTION 'zg_2pc'")
        .await
        .unwrap();
    app.batch_execute("COMMIT PREPARED 'zg_2pc'").await.unwrap();
    app.batch_execute("INSERT INTO x_2pc VALUES (1); DROP TABLE x_2pc")
        .await
        .unwrap();
    // Direct clients can prepare DDL too.
    d.batch_execute("BEGIN; CREATE TABLE x_2pc_direct (id int); PREPARE TRANSACTION 'zg_2pc_d'")
        .await
        .unwrap();
    d.batch_execute("COMMIT PREPARED 'zg_2pc_d'").await.unwrap();
    // Direct DDL: how long until a lock through the new view is refused.
    let before = legacy_snapshot(&d).await;
    let mut delays = Vec::new();
    for i in 0..5 {
        let t = format!("app.x_direct_{i}");
        d.batch_execute(&format!("CREATE TABLE {t} (id bigint, email text)"))
            .await
            .unwrap();
        app.batch_execute(&format!("SELECT * FROM {t} WHERE false FOR UPDATE"))
            .await
            .unwrap();
        d.batch_execute(&format!(
            "BEGIN; DROP TABLE {t}; CREATE VIEW {t} AS SELECT id, email FROM users; COMMIT"
        ))
        .await
        .unwrap();
        let t0 = Instant::now();
        loop {
            let r = app
                .batch_execute(&format!("SELECT * FROM {t} WHERE false FOR UPDATE"))
                .await;
            if r.is_err() {
                assert_eq!(sqlstate(r), "42501");
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "direct DDL not seen in 3 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        delays.push(t0.elapsed().as_millis());
    }
    println!("direct DDL in force after (ms): {delays:?}");
    assert_eq!(before, legacy_snapshot(&d).await);
}

/// A database dropped and made again under the same name is another
/// database: the guard judges it on its own catalog, not the old one's.
#[tokio::test]
async fn a_database_made_again_is_judged_on_its_own_catalog() {
    let (db, g, d) = fresh().await;
    let app = g.connect("app", &db).await;
    app.batch_execute("UPDATE app.empty_t SET email = 'x'")
        .await
        .unwrap();
    drop(app);
    drop(d);
    let c = cluster();
    c.psql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"))
        .unwrap();
    c.psql(
        "postgres",
        &format!("CREATE DATABASE {db} TEMPLATE fixture"),
    )
    .unwrap();
    c.psql(
        &db,
        "CREATE SCHEMA app; CREATE VIEW app.empty_t AS SELECT id, email FROM users;",
    )
    .unwrap();
    let d = direct(&db).await;
    let before = legacy_snapshot(&d).await;
    let app = g.connect("app", &db).await;
    assert_eq!(
        sqlstate(
            app.batch_execute("UPDATE app.empty_t SET email = 'pwn'")
                .await
        ),
        "42501"
    );
    assert_eq!(before, legacy_snapshot(&d).await);
}

/// A portal bound before a flip runs under the positions in force when it
/// is executed.
#[tokio::test]
async fn a_portal_bound_before_a_flip_is_judged_when_it_runs() {
    let (db, g, d) = fresh().await;
    let before = count(&d, "SELECT count(*) FROM entitlements").await;
    let mut s = raw_session(&g, &db).await;
    let mut out =
        parse("INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'FLIP', 'ACTIVE')");
    out.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    out.extend(msg(b'H', b""));
    s.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.contains(&b'2') {
        let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
            .await
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let console = admin(&g).await;
    let generation = g
        .guard
        .generation
        .load(std::sync::atomic::Ordering::Acquire);
    console
        .simple_query("SET SWITCH enable_new_commerce = off")
        .await
        .unwrap();
    assert_ne!(
        generation,
        g.guard
            .generation
            .load(std::sync::atomic::Ordering::Acquire)
    );
    let mut out = msg(b'E', b"\0\0\0\0\0");
    out.extend(msg(b'S', b""));
    s.write_all(&out).await.unwrap();
    let reply = read_until_ready(&mut s).await;
    assert_eq!(
        error_code(&reply).as_deref(),
        Some("42501"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert!(String::from_utf8_lossy(&reply).contains("switched off"));
    assert_eq!(before, count(&d, "SELECT count(*) FROM entitlements").await);
}

/// FETCH and MOVE of a `FOR UPDATE` cursor declared before a flip lock
/// rows after it: each is judged under the positions in force when it runs.
#[tokio::test]
async fn a_cursor_declared_before_a_flip_is_judged_when_fetched() {
    let (db, g, _d) = fresh().await;
    let app = g.connect("app", &db).await;
    app.batch_execute(
        "INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'C1', 'ACTIVE'), (1, 'C2', 'ACTIVE')",
    )
    .await
    .unwrap();
    let console = admin(&g).await;
    let flip = |on: bool| {
        let console = &console;
        async move {
            console
                .simple_query(&format!(
                    "SET SWITCH enable_new_commerce = {}",
                    if on { "on" } else { "off" }
                ))
                .await
                .unwrap();
        }
    };
    for fetch in ["FETCH 1 FROM c", "MOVE NEXT IN c", "FETCH NEXT FROM \"c\""] {
        app.batch_execute(
            "BEGIN; DECLARE c CURSOR FOR SELECT * FROM entitlements FOR UPDATE; FETCH 1 FROM c",
        )
        .await
        .unwrap();
        flip(false).await;
        let e = db_error(app.batch_execute(fetch).await);
        assert_eq!(e.code().code(), "42501", "{fetch}: {}", e.message());
        assert!(e.message().contains("switched off"), "{}", e.message());
        app.batch_execute("ROLLBACK").await.unwrap();
        flip(true).await;
    }
    // A read cursor reads on in panic mode.
    app.batch_execute("BEGIN; DECLARE r CURSOR FOR SELECT * FROM entitlements")
        .await
        .unwrap();
    flip(false).await;
    app.batch_execute("FETCH 1 FROM r; MOVE NEXT IN r")
        .await
        .unwrap();
    app.batch_execute("ROLLBACK").await.unwrap();
}
