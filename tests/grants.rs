//! `zoneguard grants` (issue 13): the second wall. The generated SQL,
//! applied to a throwaway PostgreSQL, makes PostgreSQL itself refuse what
//! the policy forbids to a role that connects directly (no guard), and
//! `--verify` reports wider privileges before, none after.

mod common;

use std::path::Path;

use common::*;

fn zoneguard(args: &[&str]) -> (i32, String, String) {
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zoneguard"))
        .args(args)
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn generated_grants_make_postgres_enforce_the_policy() {
    let db = fresh_db();
    let c = cluster();
    // An application role that is not a superuser, with too much.
    c.psql(
        &db,
        "DO $$ BEGIN CREATE ROLE app_direct LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         GRANT ALL ON ALL TABLES IN SCHEMA public TO app_direct;
         GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app_direct;
         GRANT USAGE ON SCHEMA public TO app_direct;",
    )
    .unwrap();
    let url = c.url("postgres", &db);
    let verify = [
        "grants",
        "--verify",
        "--role",
        "app_direct",
        "--database-url",
        &url,
    ];
    let (code, out, err) = zoneguard(&verify);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("app_direct holds UPDATE on \"public\".\"users\""),
        "{out}"
    );

    let (code, sql, err) = zoneguard(&["grants", "--role", "app_direct", "--database-url", &url]);
    assert_eq!(code, 0, "{err}");
    assert!(
        sql.contains("GRANT SELECT, REFERENCES ON TABLE \"public\".\"users\" TO \"app_direct\";"),
        "{sql}"
    );
    assert!(
        sql.contains("USAGE") && sql.contains("\"public\".\"entitlements_id_seq\""),
        "{sql}"
    );
    // What each switch position needs, for the panic path.
    assert!(sql.contains("-- switch enable_new_commerce = off"), "{sql}");
    c.psql(&db, &sql).unwrap();

    let (code, out, err) = zoneguard(&verify);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ok:"), "{out}");

    // Directly, no guard: PostgreSQL's own 42501 for the legacy zone, and
    // the new zone (with its serial key) writable.
    let app = connect_url(&c.url("app_direct", &db)).await;
    assert_eq!(
        sqlstate(app.batch_execute("UPDATE users SET email = email").await),
        "42501"
    );
    assert_eq!(
        sqlstate(app.batch_execute("SELECT nextval('users_id_seq')").await),
        "42501"
    );
    app.batch_execute("INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'X', 'ACTIVE')")
        .await
        .unwrap();
    assert_eq!(count(&app, "SELECT count(*) FROM users").await, 5);
}

#[test]
fn without_a_database_the_listed_tables_are_covered() {
    let (code, sql, err) = zoneguard(&["grants", "--role", "app"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        sql.contains("GRANT SELECT, REFERENCES ON TABLE \"users\" TO \"app\";"),
        "{sql}"
    );
    assert!(sql.contains("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES ON TABLE \"entitlements\" TO \"app\";"), "{sql}");
    assert!(
        sql.contains("ddl on \"entitlements\" needs ownership"),
        "{sql}"
    );
    let (code, _, err) = zoneguard(&["grants", "--verify", "--role", "app"]);
    assert_ne!(code, 0);
    assert!(err.contains("--database-url"), "{err}");
}
