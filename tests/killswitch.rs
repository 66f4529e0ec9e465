//! The kill switch and live policy: reading the switch through the guard,
//! the admin console, flips by console and by file edit, refused reloads,
//! and the seed's checkout flow across a flip.

mod common;

use common::*;
use std::time::{Duration, Instant};
use zoneguard::checkout::{checkout, new_commerce_enabled, CheckoutPath};

#[tokio::test]
async fn the_switch_is_readable_in_both_protocols_and_in_a_transaction() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    assert!(new_commerce_enabled(&app).await.unwrap());
    let v: String = app
        .query_one("SHOW zoneguard.enable_new_commerce", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "on");
    app.batch_execute("BEGIN").await.unwrap();
    assert!(new_commerce_enabled(&app).await.unwrap());
    app.batch_execute("COMMIT").await.unwrap();
    // A named prepared statement reads the live value after a flip.
    let stmt = app
        .prepare("SHOW zoneguard.enable_new_commerce")
        .await
        .unwrap();
    let console = admin(&g).await;
    console
        .simple_query("SET SWITCH enable_new_commerce = off")
        .await
        .unwrap();
    let v: String = app.query_one(&stmt, &[]).await.unwrap().get(0);
    assert_eq!(v, "off");
}

#[tokio::test]
async fn the_console_needs_an_admin_password() {
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let port = g.addr.port();
    for url in [
        format!("postgresql://zgadmin:wrong@127.0.0.1:{port}/zoneguard"),
        format!("postgresql://app:zgadmin@127.0.0.1:{port}/zoneguard"),
    ] {
        let err = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .err()
            .expect("must be refused");
        assert_eq!(err.as_db_error().unwrap().code().code(), "28P01");
    }
    let c = admin(&g).await;
    let sw = rows(&c.simple_query("SHOW SWITCHES").await.unwrap());
    assert_eq!(sw[0][0], "enable_new_commerce");
    assert_eq!(sw[0][1], "on");
    let policy = rows(&c.simple_query("SHOW POLICY").await.unwrap());
    assert!(policy
        .iter()
        .any(|r| r[0] == "legacy-read-only" && r[4] == "read,reference"));
    let clients = rows(&c.simple_query("SHOW CLIENTS").await.unwrap());
    assert!(clients.is_empty(), "the console is not a relayed client");
    let err = c.simple_query("DROP TABLE users").await.err().unwrap();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42601");
    let err = c
        .simple_query("SET SWITCH no_such = off")
        .await
        .err()
        .unwrap();
    assert!(err.as_db_error().unwrap().message().contains("no switch"));
}

#[tokio::test]
async fn a_console_flip_changes_what_is_allowed_holds_across_reloads_and_is_audited() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    let console = admin(&g).await;
    app.batch_execute("INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'ON', 'ACTIVE')")
        .await
        .unwrap();
    assert_eq!(
        sqlstate(app.batch_execute("INSERT INTO transactions (user_id, product_id, status, amount) VALUES (1, 'P', 'PAID', 1)").await),
        "42501"
    );
    console
        .simple_query("SET SWITCH enable_new_commerce = off")
        .await
        .unwrap();
    // Panic mode: the new zone takes no writes, the legacy checkout may insert
    // into transactions, and nothing else opens. (The INSERT below has the
    // same shape as the one allowed above, so it shares its cached
    // classification: the session's remembered verdict must not outlive the
    // flip.)
    let err = db_error(
        app.batch_execute(
            "INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'OFF', 'ACTIVE')",
        )
        .await,
    );
    assert_eq!(err.code().code(), "42501");
    assert!(err.message().contains("switched off"), "{}", err.message());
    app.batch_execute(
        "INSERT INTO transactions (user_id, product_id, status, amount) VALUES (1, 'P', 'PAID', 1)",
    )
    .await
    .unwrap();
    for sql in [
        "UPDATE transactions SET status = 'X'",
        "DELETE FROM transactions",
        "INSERT INTO users (email) VALUES ('x@y')",
        "UPDATE users SET email = 'z'",
    ] {
        assert_eq!(sqlstate(app.batch_execute(sql).await), "42501", "{sql}");
    }
    let sw = rows(&console.simple_query("SHOW SWITCHES").await.unwrap());
    assert_eq!(sw[0][1], "off");
    // A flip never touches the policy file (it keeps the default), and a
    // reload of an unchanged default keeps the flipped position.
    let text = std::fs::read_to_string(&g.policy_path).unwrap();
    assert_eq!(text, SHIPPED_POLICY);
    console.simple_query("RELOAD").await.unwrap();
    assert!(!new_commerce_enabled(&app).await.unwrap());
    let stats = rows(&console.simple_query("SHOW STATS").await.unwrap());
    assert!(stats
        .iter()
        .any(|r| r[0] == "rejected[panic-new-zone-frozen]" && r[1] == "1"));

    let audit = g.audit();
    let flip = audit
        .iter()
        .find(|r| r["event"] == "switch_flipped")
        .expect("flip audited");
    assert_eq!(flip["switch"], "enable_new_commerce");
    assert_eq!(flip["from"], true);
    assert_eq!(flip["to"], false);
    assert_eq!(flip["how"], "console");
    assert_eq!(flip["who"], "console:zgadmin");
    assert!(audit.iter().any(|r| r["event"] == "policy_reloaded"));
}

#[tokio::test]
async fn editing_the_file_flips_and_an_invalid_file_is_refused() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    let text = std::fs::read_to_string(&g.policy_path).unwrap();
    let off = text.replace(
        "[switches.enable_new_commerce]\ndefault = true",
        "[switches.enable_new_commerce]\ndefault = false",
    );
    assert_ne!(off, text);
    let start = Instant::now();
    std::fs::write(&g.policy_path, &off).unwrap();
    let took = within(Duration::from_secs(3), || async {
        sqlstate_or_ok(
            app.batch_execute(
                "INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'F', 'ACTIVE')",
            )
            .await,
        ) == "42501"
    })
    .await;
    eprintln!(
        "file edit -> enforced in {took:?} (since write: {:?})",
        start.elapsed()
    );
    assert!(start.elapsed() < Duration::from_secs(1) + Duration::from_millis(500));
    assert!(!new_commerce_enabled(&app).await.unwrap());

    // A broken file: refused, audited, and the running policy stays.
    std::fs::write(
        &g.policy_path,
        off.replace("zone = \"legacy\"", "zone = \"legcy\""),
    )
    .unwrap();
    let refused = audit_event(&g, "reload_refused").await;
    assert!(refused["error"].as_str().unwrap().contains("legcy"));
    assert_eq!(
        sqlstate(app.batch_execute("DELETE FROM users").await),
        "42501"
    );
    assert!(!new_commerce_enabled(&app).await.unwrap());
}

fn sqlstate_or_ok(r: Result<(), tokio_postgres::Error>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => e.code().map(|c| c.code().to_string()).unwrap_or_default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_run_through_a_flip_off_and_on_without_failing() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let console = admin(&g).await;
    let d = direct(&db).await;
    let trx_before = count(&d, "SELECT count(*) FROM transactions").await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for w in 0..3i64 {
        let app = g.connect("app", &db).await;
        let stop = stop_rx.clone();
        workers.push(tokio::spawn(async move {
            let mut log = Vec::new();
            while !*stop.borrow() {
                let started = Instant::now();
                let r = checkout(&app, 1 + w, "TALENT-BUNDLE").await;
                log.push((started, Instant::now(), r.map_err(|e| e.to_string())));
            }
            log
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let off_at = Instant::now();
    console
        .simple_query("SET SWITCH enable_new_commerce = off")
        .await
        .unwrap();
    let off_done = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let on_at = Instant::now();
    console
        .simple_query("SET SWITCH enable_new_commerce = on")
        .await
        .unwrap();
    let on_done = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_tx.send(true).unwrap();

    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all.sort_by_key(|(t, _, _)| *t);
    let mut new_count = 0i64;
    let mut legacy_count = 0i64;
    let mut first_legacy = None;
    let mut first_new_after_on = None;
    for (started, finished, r) in &all {
        let receipt = r
            .as_ref()
            .unwrap_or_else(|e| panic!("a checkout failed: {e}"));
        match receipt.path {
            CheckoutPath::NewCommerce => new_count += 1,
            CheckoutPath::Legacy => legacy_count += 1,
        }
        assert_eq!(
            receipt.payment_ref,
            format!("PAY-{}-{}", receipt.order_id, receipt.price)
        );
        // Started at least a second after the flip off, and done before the
        // flip back on was sent: must have taken the legacy path.
        if *started > off_done + Duration::from_secs(1) && *finished < on_at {
            assert_eq!(
                receipt.path,
                CheckoutPath::Legacy,
                "started {:?} after the flip off",
                *started - off_done
            );
        }
        if *started > on_done + Duration::from_secs(1) {
            assert_eq!(receipt.path, CheckoutPath::NewCommerce);
        }
        // Finished before the flip was even sent: it cannot have seen it.
        if *finished < off_at {
            assert_eq!(receipt.path, CheckoutPath::NewCommerce);
        }
        if *started > on_done
            && receipt.path == CheckoutPath::NewCommerce
            && first_new_after_on.is_none()
        {
            first_new_after_on = Some(*started - on_at);
        }
        if receipt.path == CheckoutPath::Legacy && first_legacy.is_none() {
            first_legacy = Some(*started - off_at);
            assert_eq!(
                receipt.price, 700_000,
                "legacy path charges the normal price"
            );
        }
        if receipt.path == CheckoutPath::NewCommerce {
            assert_eq!(receipt.price, 560_000, "new path charges the bundle price");
        }
    }
    assert!(legacy_count > 0 && new_count > 0);
    eprintln!(
        "checkouts: {} new, {} legacy; flip off -> first legacy checkout started {:?} after the command; flip on -> first new {:?}",
        new_count, legacy_count, first_legacy.unwrap(), first_new_after_on.unwrap()
    );
    // Each checkout wrote exactly where its path says: the new zone got no
    // writes while off, the legacy table none while on.
    assert_eq!(
        count(&d, "SELECT count(*) FROM entitlements").await,
        new_count
    );
    assert_eq!(
        count(&d, "SELECT count(*) FROM transactions").await - trx_before,
        legacy_count
    );
    assert!(
        g.audit()
            .iter()
            .filter(|r| r["event"] == "switch_flipped")
            .count()
            == 2
    );
}

#[tokio::test]
async fn a_statement_prepared_before_a_flip_is_judged_again() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    let insert = app
        .prepare("INSERT INTO entitlements (user_id, sku, status) VALUES ($1, $2, 'ACTIVE')")
        .await
        .unwrap();
    app.execute(&insert, &[&1i64, &"BEFORE"]).await.unwrap();
    admin(&g)
        .await
        .simple_query("SET SWITCH enable_new_commerce = off")
        .await
        .unwrap();
    let err = db_error(app.execute(&insert, &[&1i64, &"AFTER"]).await);
    assert_eq!(err.code().code(), "42501");
    assert!(err.message().contains("switched off"));
    // The session is fine afterwards, and the statement works again once on.
    assert!(!new_commerce_enabled(&app).await.unwrap());
    admin(&g)
        .await
        .simple_query("SET SWITCH enable_new_commerce = on")
        .await
        .unwrap();
    app.execute(&insert, &[&1i64, &"AGAIN"]).await.unwrap();
    let d = direct(&db).await;
    assert_eq!(
        count(
            &d,
            "SELECT count(*) FROM entitlements WHERE sku IN ('BEFORE', 'AGAIN')"
        )
        .await,
        2
    );
    assert_eq!(
        count(&d, "SELECT count(*) FROM entitlements WHERE sku = 'AFTER'").await,
        0
    );
    let audit = g.audit();
    assert!(audit
        .iter()
        .any(|r| r["event"] == "rejected" && r["rule"] == "panic-new-zone-frozen"));
}

#[tokio::test]
async fn a_flip_during_an_unsynced_batch_does_not_disturb_it() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let mut s = raw_session(&g, &db).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Parse + Flush: the server answers ParseComplete and waits for more.
    let mut out = msg(b'P', b"\0SELECT 41 + 1\0\0\0");
    out.extend(msg(b'H', b""));
    s.write_all(&out).await.unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], &[b'1', 0, 0, 0, 4], "ParseComplete");
    admin(&g)
        .await
        .simple_query("SET SWITCH enable_new_commerce = off")
        .await
        .unwrap();
    // Bind + Execute + Sync of the unnamed statement still work.
    let mut out = msg(b'B', b"\0\0\0\0\0\0\0\0");
    out.extend(msg(b'E', b"\0\0\0\0\0"));
    out.extend(msg(b'S', b""));
    s.write_all(&out).await.unwrap();
    let seen = read_until_ready(&mut s).await;
    assert_eq!(seen[0], b'2', "BindComplete first: {seen:?}");
    assert!(seen.windows(2).any(|w| w == b"42"), "{seen:?}");
    // The next idle moment refreshes the session variable.
    s.write_all(&msg(b'Q', b"SHOW zoneguard.enable_new_commerce\0"))
        .await
        .unwrap();
    let seen = read_until_ready(&mut s).await;
    assert!(seen.windows(3).any(|w| w == b"off"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy() {
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let console = admin(&g).await;
    // Change the file where the watcher (on the file's directory) cannot
    // see it: in place, through a hard link in another directory, so that
    // only SIGHUP can notice.
    let text = std::fs::read_to_string(&g.policy_path).unwrap();
    let edited = text.replace(
        "[switches.enable_new_commerce]\ndefault = true",
        "[switches.enable_new_commerce]\ndefault = false",
    );
    assert_eq!(edited.len(), text.len() + 1);
    let elsewhere = tempfile::tempdir().unwrap();
    let alias = elsewhere.path().join("alias.toml");
    std::fs::hard_link(&g.policy_path, &alias).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&alias)
            .unwrap();
        f.write_all(edited.as_bytes()).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let sw = rows(&console.simple_query("SHOW SWITCHES").await.unwrap());
    assert_eq!(sw[0][1], "on", "the watcher must not have seen the edit");
    let st = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    within(Duration::from_secs(5), || async {
        rows(&console.simple_query("SHOW SWITCHES").await.unwrap())[0][1] == "off"
    })
    .await;
    let audit = g.audit();
    assert!(audit
        .iter()
        .any(|r| r["event"] == "switch_flipped" && r["how"] == "sighup"));
}

#[tokio::test]
async fn the_guard_keeps_count_of_replies_across_copy() {
    // In the extended protocol a driver may send Sync right behind the
    // Execute of a COPY ... FROM STDIN; the server ignores a Sync received
    // in copy-in mode. The guard must not wait for a reply that never comes.
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let mut s = raw_session(&g, &db).await;
    use tokio::io::AsyncWriteExt;
    let mut out = msg(
        b'P',
        b"\0COPY commission_rules (logic_json) FROM STDIN\0\0\0",
    );
    out.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    out.extend(msg(b'E', b"\0\0\0\0\0"));
    out.extend(msg(b'S', b""));
    s.write_all(&out).await.unwrap();
    let mut out = msg(b'd', b"{\"copied\": 1}\n");
    out.extend(msg(b'c', b""));
    out.extend(msg(b'S', b""));
    s.write_all(&out).await.unwrap();
    let seen = read_until_ready(&mut s).await;
    assert!(seen.windows(6).any(|w| w == b"COPY 1"), "{seen:?}");
    // The session is idle again: a flip reaches it, and pipelined
    // statements do not hang.
    admin(&g)
        .await
        .simple_query("SET SWITCH enable_new_commerce = off")
        .await
        .unwrap();
    s.write_all(&msg(b'Q', b"SHOW zoneguard.enable_new_commerce\0"))
        .await
        .unwrap();
    let seen = read_until_ready(&mut s).await;
    assert!(seen.windows(3).any(|w| w == b"off"), "{seen:?}");
    let mut out = msg(
        b'Q',
        b"SELECT set_config(name, setting, false) FROM pg_settings WHERE name = 'application_name'\0",
    );
    out.extend(msg(b'Q', b"SELECT 42\0"));
    s.write_all(&out).await.unwrap();
    let mut seen = read_until_ready(&mut s).await;
    if !seen.windows(2).any(|w| w == b"42") {
        seen = read_until_ready(&mut s).await;
    }
    assert!(seen.windows(2).any(|w| w == b"42"), "{seen:?}");
}

#[tokio::test]
async fn the_console_checks_scram_and_md5_hashes() {
    // The shipped policy stores a SCRAM-SHA-256 verifier; an md5 hash works
    // too. psql and tokio-postgres answer whichever the guard asks for.
    let policy = SHIPPED_POLICY.replace(
        "[admin]\nusers = { zgadmin = ",
        &format!(
            "[admin]\nusers = {{ md5admin = \"{}\", zgadmin = ",
            zoneguard::admin::md5_hash("md5admin", "pw")
        ),
    );
    assert_ne!(policy, SHIPPED_POLICY);
    let g = TestGuard::start(&policy).await;
    let port = g.addr.port();
    let md5 = connect_url(&format!(
        "postgresql://md5admin:pw@127.0.0.1:{port}/zoneguard"
    ))
    .await;
    assert_eq!(
        rows(&md5.simple_query("SHOW SWITCHES").await.unwrap()).len(),
        1
    );
    let bad = tokio_postgres::connect(
        &format!("postgresql://md5admin:wrong@127.0.0.1:{port}/zoneguard"),
        tokio_postgres::NoTls,
    )
    .await;
    assert_eq!(
        bad.err().unwrap().as_db_error().unwrap().code().code(),
        "28P01"
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(psql_bin())
            .args(["-X", "-At", "-c", "SHOW SWITCHES"])
            .arg(format!("postgresql://zgadmin@127.0.0.1:{port}/zoneguard"))
            .env("PGPASSWORD", "zgadmin")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("enable_new_commerce|on|"));
}
