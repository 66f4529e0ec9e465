//! Shadow mode (issue 13): a denial only recorded lets the statement run
//! and writes a `would_reject` audit record; enforcing it again rejects the
//! same statement; a shadowed denial never hides an enforced one.

mod common;

use common::*;

fn events<'a>(audit: &'a [serde_json::Value], event: &str) -> Vec<&'a serde_json::Value> {
    audit.iter().filter(|r| r["event"] == event).collect()
}

/// `action = "log"` on one rule: its writes run and are recorded; the rest
/// of the policy is enforced, also inside the same statement.
#[tokio::test]
async fn a_rule_in_shadow_lets_writes_through_and_records_them() {
    let db = fresh_db();
    let policy = SHIPPED_POLICY.replace(
        "name = \"legacy-read-only\"\nzone = \"legacy\"",
        "name = \"legacy-read-only\"\nzone = \"legacy\"\naction = \"log\"",
    );
    assert_ne!(policy, SHIPPED_POLICY);
    let g = TestGuard::start(&policy).await;
    let app = g.connect("app", &db).await;
    let d = direct(&db).await;
    app.batch_execute("UPDATE users SET email = 'shadow@example.com' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        count(
            &d,
            "SELECT count(*) FROM users WHERE email = 'shadow@example.com'"
        )
        .await,
        1
    );
    let audit = g.audit();
    let would = events(&audit, "would_reject");
    assert_eq!(would.len(), 1, "{audit:?}");
    assert_eq!(would[0]["rule"], "legacy-read-only");
    assert_eq!(would[0]["sqlstate"], "42501");
    assert!(would[0]["statement"]
        .as_str()
        .unwrap()
        .contains("UPDATE users"));
    assert!(events(&audit, "rejected").is_empty());
    // An enforced rule in the same statement still rejects it (the
    // unlisted zone is read-only and enforced).
    let e = db_error(
        app.batch_execute(
            "WITH u AS (UPDATE users SET email = email WHERE id = 2 RETURNING id) \
             INSERT INTO no_zone_table SELECT id FROM u",
        )
        .await,
    );
    assert_eq!(e.code().code(), "42501");
    assert!(e.message().contains("no_zone_table"), "{}", e.message());
    // Counted apart in SHOW STATS.
    let console = admin(&g).await;
    let rows = console.simple_query("SHOW STATS").await.unwrap();
    let text = format!("{rows:?}");
    assert!(text.contains("would_reject[legacy-read-only]"), "{text}");
}

/// The policy-wide mode: shadow, then enforce from the console (audited,
/// written back), and the same statement is rejected.
#[tokio::test]
async fn shadow_then_enforce_from_the_console() {
    let db = fresh_db();
    let policy = SHIPPED_POLICY.replacen("mode = \"enforce\"", "mode = \"shadow\"", 1);
    assert_ne!(policy, SHIPPED_POLICY);
    let g = TestGuard::start(&policy).await;
    let app = g.connect("app", &db).await;
    let update = "UPDATE transactions SET amount = amount WHERE id = 1";
    app.batch_execute(update).await.unwrap();
    // Even what no parser can see runs, recorded.
    app.batch_execute("DO $$ BEGIN PERFORM 1; END $$")
        .await
        .unwrap();
    let audit = g.audit();
    assert_eq!(events(&audit, "would_reject").len(), 2, "{audit:?}");

    let console = admin(&g).await;
    let mode = console.simple_query("SHOW MODE").await.unwrap();
    assert!(format!("{mode:?}").contains("shadow"));
    console.simple_query("SET MODE enforce").await.unwrap();
    assert_eq!(sqlstate(app.batch_execute(update).await), "42501");
    let audit = g.audit();
    let changed = events(&audit, "mode_changed");
    assert_eq!(changed.len(), 1, "{audit:?}");
    assert_eq!(changed[0]["mode_from"], "shadow");
    assert_eq!(changed[0]["mode_to"], "enforce");
    let file = std::fs::read_to_string(&g.policy_path).unwrap();
    assert!(file.contains("mode = \"enforce\""), "{file}");
    // And back.
    console.simple_query("SET MODE shadow").await.unwrap();
    app.batch_execute(update).await.unwrap();
}

/// A multi-statement Query and a pipelined batch with a shadowed statement
/// behave exactly as without the guard: everything runs and commits.
#[tokio::test]
async fn shadowed_statements_in_batches_run_as_without_the_guard() {
    let db = fresh_db();
    let policy = SHIPPED_POLICY.replace(
        "[roles.legacy_app]\n",
        "[roles.app]\nmode = \"shadow\"\n\n[roles.legacy_app]\n",
    );
    assert_ne!(policy, SHIPPED_POLICY);
    let g = TestGuard::start(&policy).await;
    let app = g.connect("app", &db).await;
    let d = direct(&db).await;
    app.batch_execute(
        "INSERT INTO commission_rules (logic_json) VALUES ('{\"n\": 1}'); \
         UPDATE users SET email = 'multi@example.com' WHERE id = 3; \
         SELECT 1",
    )
    .await
    .unwrap();
    assert_eq!(count(&d, "SELECT count(*) FROM commission_rules").await, 2);
    assert_eq!(
        count(
            &d,
            "SELECT count(*) FROM users WHERE email = 'multi@example.com'"
        )
        .await,
        1
    );
    // Pipelined extended-protocol statements (tokio-postgres sends them
    // without waiting): all run.
    let (a, b, c) = tokio::join!(
        app.execute(
            "INSERT INTO commission_rules (logic_json) VALUES ($1::text::jsonb)",
            &[&"{}"]
        ),
        app.execute(
            "UPDATE users SET email = $1 WHERE id = 4",
            &[&"pipe@example.com"]
        ),
        app.execute("DELETE FROM user_assessments WHERE user_id = $1", &[&3i64]),
    );
    assert_eq!((a.unwrap(), b.unwrap(), c.unwrap()), (1, 1, 1));
    assert_eq!(count(&d, "SELECT count(*) FROM commission_rules").await, 3);
    assert_eq!(
        count(
            &d,
            "SELECT count(*) FROM user_assessments WHERE user_id = 3"
        )
        .await,
        0
    );
    let audit = g.audit();
    assert_eq!(events(&audit, "would_reject").len(), 3, "{audit:?}");
    assert!(events(&audit, "rejected").is_empty());
}
