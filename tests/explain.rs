//! `zoneguard explain` and the console's `EXPLAIN VERDICT` (issue 13): the
//! same classification and judgement as a session, printed.

mod common;

use std::path::Path;

use common::*;

fn explain(args: &[&str]) -> (i32, String) {
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zoneguard"))
        .arg("explain")
        .arg("--policy")
        .arg(&policy)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn explain_prints_the_verdict_and_exits_by_it() {
    let (code, out) = explain(&["UPDATE users SET email = 'x' WHERE id = 1"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("zone legacy (rule legacy-read-only) -> rejected"),
        "{out}"
    );
    assert!(
        out.contains("ERROR:  UPDATE on \"users\" is not allowed"),
        "{out}"
    );

    let (code, out) = explain(&["SELECT * FROM users; INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'A', 'ACTIVE')"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verdict: allowed"), "{out}");

    // Under a switch position.
    let (code, out) = explain(&[
        "--switch",
        "enable_new_commerce=off",
        "INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'A', 'ACTIVE')",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("panic-new-zone-frozen"), "{out}");
    // As another role.
    let (code, _) = explain(&["--role", "legacy_app", "UPDATE users SET email = email"]);
    assert_eq!(code, 0);
    // Bad switch names are errors, not silent.
    let (code, out) = explain(&["--switch", "no_such=on", "SELECT 1"]);
    assert_ne!(code, 0);
    assert!(out.contains("no_such"), "{out}");
}

#[test]
fn explain_json_is_a_stable_document() {
    let (code, out) = explain(&[
        "--json",
        "WITH d AS (DELETE FROM transactions RETURNING id) SELECT * FROM d",
    ]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "rejected");
    assert_eq!(v["rule"], "legacy-read-only");
    assert_eq!(v["sqlstate"], "42501");
    let a = &v["statements"][0]["accesses"][0];
    assert_eq!(a["op"], "delete");
    assert_eq!(a["table"], "\"transactions\"");
    assert_eq!(a["verdict"], "rejected");
    assert_eq!(a["origin"], "WITH");
    // Other nested origins are marked too.
    let (_, out) = explain(&[
        "EXPLAIN ANALYZE DELETE FROM users; PREPARE p AS UPDATE users SET email = email",
    ]);
    assert!(out.contains("DELETE (in EXPLAIN ANALYZE)"), "{out}");
    assert!(out.contains("UPDATE (in PREPARE)"), "{out}");
    let (_, out) =
        explain(&["CREATE RULE r AS ON INSERT TO entitlements DO ALSO DELETE FROM users"]);
    assert!(out.contains("DELETE (in rule action)"), "{out}");
}

/// With --database-url, names are resolved through the catalog, as the
/// running guard does.
#[test]
fn explain_resolves_names_through_the_catalog() {
    let db = fresh_db();
    let url = cluster().url("zoneguard_catalog", &db);
    let (code, out) = explain(&["--database-url", &url, "DROP INDEX transactions_user_id"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("index of table \"public\".\"transactions\""),
        "{out}"
    );
    assert!(
        out.contains("resolved through the database's catalog"),
        "{out}"
    );
    let (code, out) = explain(&["--database-url", &url, "DROP INDEX entitlements_source_sku"]);
    assert_eq!(code, 0, "{out}");
    // Without it, the same index name is an unlisted relation.
    let (code, _) = explain(&["DROP INDEX entitlements_source_sku"]);
    assert_eq!(code, 1);
}

#[tokio::test]
async fn the_console_explains_a_verdict() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    app.batch_execute("SELECT 1").await.unwrap();
    let console = connect_url(&format!(
        "postgresql://zgadmin:zgadmin@127.0.0.1:{}/zoneguard",
        g.addr.port()
    ))
    .await;
    let r = rows(
        &console
            .simple_query("EXPLAIN VERDICT 'UPDATE users SET email = ''x'''")
            .await
            .unwrap(),
    );
    let last = r.last().unwrap();
    assert_eq!(last[4], "rejected", "{r:?}");
    assert!(last[5].contains("legacy zone is read-only"), "{r:?}");
    let r = rows(
        &console
            .simple_query("EXPLAIN VERDICT 'UPDATE users SET email = email' AS ROLE legacy_app")
            .await
            .unwrap(),
    );
    assert_eq!(r.last().unwrap()[4], "allowed", "{r:?}");
    // Through the catalog of a database the guard keeps.
    let r = rows(
        &console
            .simple_query(&format!(
                "EXPLAIN VERDICT 'DROP INDEX entitlements_source_sku' IN DATABASE {db}"
            ))
            .await
            .unwrap(),
    );
    assert_eq!(r.last().unwrap()[4], "allowed", "{r:?}");
    let e = console
        .simple_query("EXPLAIN VERDICT UPDATE users")
        .await
        .unwrap_err();
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(msg.contains("usage"), "{msg}");
}
