//! One switch, many guards: the switch's position in the state database,
//! followed by every instance (each with its own copy of the policy file),
//! flipped from any console or the CLI, under load and concurrently.
//!
//! `cargo test --test fleet -- --nocapture` prints the convergence figures.

mod common;

use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;
use zoneguard::checkout::{checkout, new_commerce_enabled};

const SWITCH: &str = "enable_new_commerce";

/// The position `g` answers to SHOW zoneguard.<switch> on a connection.
async fn position(c: &Client) -> bool {
    new_commerce_enabled(c).await.unwrap()
}

/// Starts `n` instances g1..gn, each with its own policy file, on `state`.
async fn fleet(n: usize, state: &str) -> Vec<TestGuard> {
    let mut out = Vec::new();
    for i in 1..=n {
        let g = TestGuard::start_with_state(SHIPPED_POLICY, state, &format!("g{i}")).await;
        assert_eq!(g.guard.state.status().to_string(), "connected");
        out.push(g);
    }
    out
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Writers that try the zone the switch closes, on one instance: each
/// attempt's start time and whether it wrote.
fn blind_writer(
    c: Client,
    sql: &'static str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<(Instant, bool)>> {
    tokio::spawn(async move {
        let mut log = Vec::new();
        while !*stop.borrow() {
            let t = Instant::now();
            match c.batch_execute(sql).await {
                Ok(()) => log.push((t, true)),
                Err(e) => {
                    assert_eq!(
                        e.code().map(|c| c.code()),
                        Some("42501"),
                        "only rejections, never a dropped connection: {e}"
                    );
                    log.push((t, false));
                }
            }
        }
        log
    })
}

const NEW_ZONE_WRITE: &str =
    "INSERT INTO entitlements (user_id, sku, status) VALUES (2, 'BLIND', 'ACTIVE')";
const LEGACY_WRITE: &str = "INSERT INTO transactions (user_id, product_id, status, amount, paid_at) VALUES (2, 'BLIND', 'PAID', 1, now())";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_follow_a_flip_within_a_second_under_load() {
    let state = state_db();
    let db = fresh_db();
    let gs = fleet(3, &state).await;
    let consoles: Vec<Client> = one_after_another(gs.iter().map(admin)).await;
    let probes: Vec<Client> = one_after_another(gs.iter().map(|g| g.connect("app", &db))).await;

    // Checkout-like load on every instance: the seed's checkout, which
    // reads the switch and takes the matching path, and writers that try
    // the zone the switch closes.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut checkouts = Vec::new();
    let mut new_writers = Vec::new();
    let mut legacy_writers = Vec::new();
    for g in &gs {
        for w in 0..2i64 {
            let c = g.connect("app", &db).await;
            let stop = stop_rx.clone();
            checkouts.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !*stop.borrow() {
                    checkout(&c, 1 + w, "TALENT-BUNDLE")
                        .await
                        .unwrap_or_else(|e| panic!("a checkout failed: {e}"));
                    n += 1;
                }
                n
            }));
        }
        new_writers.push(blind_writer(
            g.connect("app", &db).await,
            NEW_ZONE_WRITE,
            stop_rx.clone(),
        ));
        legacy_writers.push(blind_writer(
            g.connect("app", &db).await,
            LEGACY_WRITE,
            stop_rx.clone(),
        ));
    }

    // Repeated flips, each from a different console; for each, the time
    // from the command returning to the slowest instance answering the new
    // position (the runtime that answers SHOW is the one that judges).
    let mut slowest = Vec::new();
    // Per instance: (position, from when it was enforced there).
    let mut enforced: Vec<Vec<(bool, Instant)>> = vec![Vec::new(); gs.len()];
    // When each flip's command was sent.
    let mut sent = Vec::new();
    let rounds = 10;
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let to = round % 2 == 1;
        let cmd = format!(
            "SET SWITCH {SWITCH} = {} REASON 'drill {round}'",
            if to { "on" } else { "off" }
        );
        sent.push(Instant::now());
        consoles[round % gs.len()].simple_query(&cmd).await.unwrap();
        let returned = Instant::now();
        let mut worst = Duration::ZERO;
        for (i, p) in probes.iter().enumerate() {
            while position(p).await != to {
                assert!(
                    returned.elapsed() < Duration::from_secs(5),
                    "instance g{} did not follow",
                    i + 1
                );
            }
            enforced[i].push((to, Instant::now()));
            worst = worst.max(returned.elapsed());
        }
        slowest.push(worst);
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    sent.push(Instant::now());
    stop_tx.send(true).unwrap();

    let mut done = 0;
    for c in checkouts {
        done += c.await.unwrap();
    }
    // 0 writes in the wrong zone once enforced: a write started on an
    // instance after it enforced "off" must not reach the new zone, one
    // started after it enforced "on" must not reach the legacy table.
    for (i, (nw, lw)) in new_writers.into_iter().zip(legacy_writers).enumerate() {
        let new_log = nw.await.unwrap();
        let legacy_log = lw.await.unwrap();
        let windows = &enforced[i];
        for (k, (on, from)) in windows.iter().enumerate() {
            // From enforcement here until the next flip's command.
            let until = sent[k + 1];
            let in_window = |t: &Instant| *t >= *from && *t < until;
            let wrong: Vec<_> = if *on {
                legacy_log
                    .iter()
                    .filter(|(t, wrote)| in_window(t) && *wrote)
                    .collect()
            } else {
                new_log
                    .iter()
                    .filter(|(t, wrote)| in_window(t) && *wrote)
                    .collect()
            };
            assert!(
                wrong.is_empty(),
                "g{}: {} writes in the wrong zone",
                i + 1,
                wrong.len()
            );
        }
        assert!(new_log.iter().any(|(_, w)| *w) && new_log.iter().any(|(_, w)| !*w));
    }

    let mut sorted = slowest.clone();
    sorted.sort();
    eprintln!(
        "flip -> enforced on the slowest of 3 instances, over {rounds} flips under load ({done} checkouts): p50 {:?}, max {:?}",
        pct(&sorted, 0.5),
        sorted[sorted.len() - 1]
    );
    assert!(sorted[sorted.len() - 1] < Duration::from_secs(1));

    // Every flip is in the log, with its reason; every instance audited it.
    let d = direct(&state).await;
    assert_eq!(
        count(&d, "SELECT count(*) FROM zoneguard.flips").await,
        rounds as i64
    );
    assert_eq!(
        count(
            &d,
            "SELECT count(*) FROM zoneguard.flips WHERE reason LIKE 'drill %'"
        )
        .await,
        rounds as i64
    );
    for g in &gs {
        let flips = g
            .audit()
            .into_iter()
            .filter(|r| r["event"] == "switch_flipped")
            .count();
        assert_eq!(flips, rounds, "every instance audits every flip");
    }
    // The policy files were never touched.
    for g in &gs {
        assert_eq!(
            std::fs::read_to_string(&g.policy_path).unwrap(),
            SHIPPED_POLICY
        );
    }

    // SHOW INSTANCES on any console: all three, in agreement.
    within(Duration::from_secs(3), || async {
        let list = rows(&consoles[1].simple_query("SHOW INSTANCES").await.unwrap());
        list.len() == 3 && list.iter().all(|r| r[1] == "ok")
    })
    .await;

    // The notification connection of g3 killed: it still converges, by
    // reconnecting and by the periodic re-read.
    // Other tests in this binary run instances named g3 too, each on a
    // state database of its own: only this test's.
    let killed = count(
        &d,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'zoneguard state g3' AND datname = current_database()",
    )
    .await;
    assert_eq!(killed, 1);
    let before = position(&probes[2]).await;
    consoles[0]
        .simple_query(&format!(
            "SET SWITCH {SWITCH} = {}",
            if before { "off" } else { "on" }
        ))
        .await
        .unwrap();
    let t = within(Duration::from_secs(5), || async {
        position(&probes[2]).await != before
    })
    .await;
    eprintln!("with its notification connection killed, g3 followed in {t:?}");

    // A change no notification announces (a DBA's UPDATE): the periodic
    // re-read brings every instance to it.
    let now = position(&probes[0]).await;
    d.batch_execute(&format!(
        "UPDATE zoneguard.switches SET is_on = {}, generation = nextval('zoneguard.generation') WHERE name = '{SWITCH}'",
        !now
    ))
    .await
    .unwrap();
    let t = within(Duration::from_secs(3), || async {
        let mut all = true;
        for p in &probes {
            all &= position(p).await != now;
        }
        all
    })
    .await;
    eprintln!("an un-notified change reached all 3 instances in {t:?} (refresh_ms = 1000)");
}

async fn one_after_another<F: std::future::Future<Output = Client>>(
    fs: impl Iterator<Item = F>,
) -> Vec<Client> {
    let mut out = Vec::new();
    for f in fs {
        out.push(f.await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_admins_flipping_at_the_same_instant_never_fail_and_all_agree() {
    let state = state_db();
    let db = fresh_db();
    let gs = fleet(3, &state).await;
    let a = Arc::new(admin(&gs[0]).await);
    let b = Arc::new(admin(&gs[1]).await);
    let probes: Vec<Client> = one_after_another(gs.iter().map(|g| g.connect("app", &db))).await;
    let d = direct(&state).await;
    let rounds = 20;
    for round in 0..rounds {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let flip = |c: Arc<Client>, pos: &'static str, who: &'static str| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                c.simple_query(&format!(
                    "SET SWITCH {SWITCH} = {pos} REASON '{who} round {round}'"
                ))
                .await
            })
        };
        let (x, y) = (
            flip(a.clone(), "off", "alice"),
            flip(b.clone(), "on", "bob"),
        );
        x.await.unwrap().expect("alice's flip failed");
        y.await.unwrap().expect("bob's flip failed");
        // The database's final position, and every instance on it.
        let row = d
            .query_one(
                "SELECT is_on FROM zoneguard.switches WHERE name = $1",
                &[&SWITCH],
            )
            .await
            .unwrap();
        let last: bool = row.get(0);
        within(Duration::from_secs(1), || async {
            let mut all = true;
            for p in &probes {
                all &= position(p).await == last;
            }
            all
        })
        .await;
    }
    assert_eq!(
        count(&d, "SELECT count(*) FROM zoneguard.flips").await,
        2 * rounds
    );
    // The log's generations are distinct and the newest is the position.
    assert_eq!(
        count(&d, "SELECT count(DISTINCT generation) FROM zoneguard.flips").await,
        2 * rounds
    );
    let newest: bool = d
        .query_one(
            "SELECT to_on FROM zoneguard.flips ORDER BY generation DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for (g, p) in gs.iter().zip(&probes) {
        assert_eq!(position(p).await, newest);
        let rt = g.guard.runtime.load();
        assert_eq!(
            rt.switch_generation(),
            count(&d, "SELECT max(generation) FROM zoneguard.flips").await
        );
    }
}

#[tokio::test]
async fn a_flip_works_with_an_invalid_policy_file_on_disk_and_changes_nothing_else() {
    let state = state_db();
    let db = fresh_db();
    for with_state in [true, false] {
        let g = if with_state {
            TestGuard::start_with_state(SHIPPED_POLICY, &state, "broken-file").await
        } else {
            TestGuard::start(SHIPPED_POLICY).await
        };
        let app = g.connect("app", &db).await;
        let console = admin(&g).await;
        let checksum = g.guard.runtime.load().policy.checksum();
        // Someone's unfinished edit: invalid, and it would also open the
        // legacy zone if it were ever applied.
        let broken = SHIPPED_POLICY.replace(
            "allow = [\"read\", \"reference\"]",
            "allow = [\"all\"]\nthis is not toml",
        );
        std::fs::write(&g.policy_path, &broken).unwrap();
        within(Duration::from_secs(3), || async {
            g.audit().iter().any(|r| r["event"] == "reload_refused")
        })
        .await;
        console
            .simple_query(&format!("SET SWITCH {SWITCH} = off REASON 'incident'"))
            .await
            .expect("the flip works whatever is on disk");
        assert!(!position(&app).await);
        assert_eq!(g.guard.runtime.load().policy.checksum(), checksum);
        assert_eq!(std::fs::read_to_string(&g.policy_path).unwrap(), broken);
        assert_eq!(
            sqlstate(app.batch_execute("UPDATE users SET email = email").await),
            "42501"
        );
        let flip = g
            .audit()
            .into_iter()
            .find(|r| r["event"] == "switch_flipped")
            .expect("audited");
        assert_eq!(flip["reason"], "incident");
        assert_eq!(flip["to"], false);
    }
}

#[tokio::test]
async fn an_unreachable_state_database_leaves_the_file_default_and_says_so() {
    // A database that does not exist yet.
    let state = format!("nostate{}", std::process::id());
    let db = fresh_db();
    let g = TestGuard::start_with_state(SHIPPED_POLICY, &state, "lonely").await;
    let status = g.guard.state.status().to_string();
    assert!(status.starts_with("unreachable"), "{status}");
    let app = g.connect("app", &db).await;
    assert!(position(&app).await, "the file's default");
    let console = admin(&g).await;
    let shown = rows(&console.simple_query("SHOW STATE").await.unwrap());
    assert!(shown
        .iter()
        .any(|r| r[0] == "confirmed_ms_ago" && r[1] == "never"));
    // A flip that cannot be recorded changes nothing, and says what to do.
    let err = console
        .simple_query(&format!("SET SWITCH {SWITCH} = off"))
        .await
        .unwrap_err();
    let msg = err.as_db_error().unwrap().message().to_string();
    assert!(msg.contains("nothing changed"), "{msg}");
    assert!(position(&app).await);

    // Installed later: the instance connects, registers and follows.
    let c = cluster();
    c.psql("postgres", &format!("CREATE DATABASE {state}"))
        .unwrap();
    c.psql(
        &state,
        &zoneguard::state::install_sql("zoneguard_state", None),
    )
    .unwrap();
    // RELOAD (as SIGHUP) tries the state database again at once.
    console.simple_query("RELOAD").await.unwrap();
    within(Duration::from_secs(3), || async {
        g.guard.state.status().to_string() == "connected"
    })
    .await;
    console
        .simple_query(&format!("SET SWITCH {SWITCH} = off"))
        .await
        .unwrap();
    assert!(!position(&app).await);
    let d = direct(&state).await;
    assert_eq!(
        count(
            &d,
            "SELECT count(*) FROM zoneguard.instances WHERE instance = 'lonely'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn show_instances_flags_a_different_policy_and_a_silent_instance() {
    let state = state_db();
    let mut gs = fleet(2, &state).await;
    let other = SHIPPED_POLICY.replace("name = \"legacy-read-only\"", "name = \"legacy-ro\"");
    gs.push(TestGuard::start_with_state(&other, &state, "g3").await);
    let d = direct(&state).await;
    d.batch_execute(
        "INSERT INTO zoneguard.instances VALUES ('gone', '0.0.1', 'x', 0, '', 0, now() - interval '2 hours', now() - interval '1 hour')",
    )
    .await
    .unwrap();
    let console = admin(&gs[0]).await;
    let list = rows(&console.simple_query("SHOW INSTANCES").await.unwrap());
    let status = |name: &str| {
        list.iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("{name} listed: {list:?}"))[1]
            .clone()
    };
    assert_eq!(status("g1"), "ok");
    assert_eq!(status("g2"), "ok");
    assert!(status("g3").contains("policy differs"), "{list:?}");
    assert!(status("gone").starts_with("silent for"), "{list:?}");
}

#[tokio::test]
async fn the_cli_flips_every_instance_and_refuses_an_unknown_switch() {
    let state = state_db();
    let db = fresh_db();
    let gs = fleet(2, &state).await;
    let url = cluster().url("zoneguard_state", &state);
    let bin = env!("CARGO_BIN_EXE_zoneguard");
    let out = std::process::Command::new(bin)
        .args([
            "switch",
            "set",
            SWITCH,
            "off",
            "--reason",
            "runbook step 3",
            "--database-url",
            &url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let returned = Instant::now();
    for g in &gs {
        let app = g.connect("app", &db).await;
        within(Duration::from_secs(1), || async { !position(&app).await }).await;
    }
    eprintln!("CLI flip -> both instances in {:?}", returned.elapsed());
    let audit = gs[1].audit();
    let flip = audit
        .iter()
        .find(|r| r["event"] == "switch_flipped")
        .expect("audited");
    assert_eq!(flip["how"], "state");
    assert_eq!(flip["reason"], "runbook step 3");
    assert!(flip["who"].as_str().unwrap().starts_with("cli:"));

    let out = std::process::Command::new(bin)
        .args(["switch", "show", "--database-url", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("runbook step 3") && text.contains("g1") && text.contains("g2"),
        "{text}"
    );

    let out = std::process::Command::new(bin)
        .args([
            "switch",
            "set",
            "enable_new_comerce",
            "on",
            "--database-url",
            &url,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no switch named"));

    // A statement prepared before a flip is judged again at Bind.
    let app = gs[0].connect("app", &db).await;
    let out = std::process::Command::new(bin)
        .args(["switch", "set", SWITCH, "on", "--database-url", &url])
        .output()
        .unwrap();
    assert!(out.status.success());
    within(Duration::from_secs(1), || async { position(&app).await }).await;
    let stmt = app.prepare(NEW_ZONE_WRITE).await.unwrap();
    app.execute(&stmt, &[]).await.unwrap();
    std::process::Command::new(bin)
        .args(["switch", "set", SWITCH, "off", "--database-url", &url])
        .output()
        .unwrap();
    within(Duration::from_secs(1), || async { !position(&app).await }).await;
    assert_eq!(sqlstate(app.execute(&stmt, &[]).await), "42501");
}

#[tokio::test]
async fn install_state_grants_the_least_the_guard_needs() {
    let c = cluster();
    let name = format!("install{}", std::process::id());
    c.psql("postgres", &format!("CREATE DATABASE {name}"))
        .unwrap();
    let bin = env!("CARGO_BIN_EXE_zoneguard");
    for _ in 0..2 {
        let out = std::process::Command::new(bin)
            .args(["install-state", "--database-url", &c.url("postgres", &name)])
            .env_remove("ZONEGUARD__STATE__PASSWORD")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "idempotent: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let d = direct(&name).await;
    let r = d
        .query_one(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = 'zoneguard_state'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            r.get::<_, bool>(0),
            r.get::<_, bool>(1),
            r.get::<_, bool>(2),
            r.get::<_, bool>(3)
        ),
        (false, false, false, true)
    );
    for (table, privilege, held) in [
        ("zoneguard.flips", "INSERT", true),
        ("zoneguard.flips", "UPDATE", false),
        ("zoneguard.flips", "DELETE", false),
        ("zoneguard.flips", "TRUNCATE", false),
        ("zoneguard.switches", "UPDATE", true),
        ("zoneguard.switches", "DELETE", false),
        ("zoneguard.instances", "DELETE", true),
    ] {
        let r = d
            .query_one(
                "SELECT has_table_privilege('zoneguard_state', $1, $2)",
                &[&table, &privilege],
            )
            .await
            .unwrap();
        assert_eq!(r.get::<_, bool>(0), held, "{privilege} on {table}");
    }
    let r = d
        .query_one(
            "SELECT has_schema_privilege('zoneguard_state', 'zoneguard', 'CREATE')",
            &[],
        )
        .await
        .unwrap();
    assert!(!r.get::<_, bool>(0));
}
