//! No lag: every statement is judged under what the session and the
//! database have just become (docs/catalog.md, "The invariant").

mod common;

use common::*;

/// Direct set-up for the attacks: a writable-zone view over users.
const FIXTURE: &str = "
CREATE SCHEMA app;
CREATE VIEW app.ent_users AS SELECT id, email FROM users;
CREATE TABLE app.empty_t (id bigint, email text);
CREATE TABLE ledger (id int, at date) PARTITION BY RANGE (at);
";

fn policy() -> String {
    SHIPPED_POLICY.replace(
        r#"tables = ["entitlements", "commission_rules", "product_sku_map"]"#,
        r#"tables = ["entitlements", "commission_rules", "product_sku_map", "ent_users", "empty_t", "ledger", "x_*"]"#,
    ) + "\n[roles.app]\nother_ddl = true\n"
}

/// Multi-step attacks: each list of statements, run in one transaction,
/// must leave the legacy rows as they were.
const ATTACKS: &[&[&str]] = &[
    &[
        "CREATE VIEW app.product_sku_map AS SELECT * FROM users",
        "UPDATE app.product_sku_map SET email = 'pwn-' || email",
    ],
    &[
        "CREATE VIEW app.x_chain AS SELECT id, email FROM app.ent_users",
        "UPDATE app.x_chain SET email = 'pwn-' || email",
    ],
    &[
        "CREATE RULE \"_RETURN\" AS ON SELECT TO app.empty_t DO INSTEAD SELECT id, email FROM users",
        "UPDATE app.empty_t SET email = 'pwn-' || email",
    ],
    &[
        "CREATE TABLE x_like (LIKE users INCLUDING DEFAULTS)",
        "INSERT INTO x_like (email) VALUES ('a')",
    ],
];

async fn run_steps(c: &tokio_postgres::Client, steps: &[&str], one_query: bool) -> String {
    let r = if one_query {
        c.batch_execute(&format!("BEGIN; {}; COMMIT", steps.join("; ")))
            .await
    } else {
        let mut r = c.batch_execute("BEGIN").await;
        for s in steps {
            if r.is_ok() {
                r = c.batch_execute(s).await;
            }
        }
        let _ = c
            .batch_execute(if r.is_ok() { "COMMIT" } else { "ROLLBACK" })
            .await;
        r
    };
    match r {
        Ok(()) => "ok".into(),
        Err(e) => e.as_db_error().map_or(e.to_string(), |d| {
            format!("{} {}", d.code().code(), d.message())
        }),
    }
}

#[tokio::test]
async fn explore() {
    let mut out = Vec::new();
    for one in [false, true] {
        for steps in ATTACKS {
            let db = fresh_db();
            cluster().psql(&db, FIXTURE).unwrap();
            let g = TestGuard::start(&policy()).await;
            let d = direct(&db).await;
            let before = legacy_snapshot(&d).await;
            let seq_before = count(&d, "SELECT last_value FROM users_id_seq").await;
            let app = g.connect("app", &db).await;
            let got = run_steps(&app, steps, one).await;
            let after = legacy_snapshot(&d).await;
            let seq_after = count(&d, "SELECT last_value FROM users_id_seq").await;
            out.push(format!(
                "one={one} {steps:?}: {got} changed={} seq={}",
                before != after,
                seq_before != seq_after
            ));
        }
    }
    panic!("{}", out.join("\n"));
}
