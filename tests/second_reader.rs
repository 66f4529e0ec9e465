//! The second reader: what sqlparser cannot parse is read with PostgreSQL's
//! own grammar (docs/judging.md, "Two readers"), through the guard against
//! a real PostgreSQL: valid SQL is judged (no false block), writes of the
//! legacy zone are still refused, and a syntax error is the server's own.

mod common;

use common::*;

/// (SQL, what the client gets: "ok", or a SQLSTATE).
const CASES: &[(&str, &str)] = &[
    // Forms sqlparser cannot parse, valid PostgreSQL: judged, not refused.
    ("SELECT id FROM users WHERE id ISNULL", "ok"),
    ("UPDATE entitlements SET sku = sku WHERE id ISNULL", "ok"),
    ("SELECT U&'d\\0061t\\+000061' AS x", "ok"),
    ("SELECT U&\"id\" FROM users LIMIT 1", "ok"),
    (
        "UPDATE commission_rules SET logic_json['k'] = '1' WHERE id ISNULL",
        "ok",
    ),
    (
        "EXPLAIN UPDATE users SET email = email WHERE id ISNULL",
        "ok",
    ),
    (
        "SELECT * FROM (SELECT id FROM entitlements WHERE id ISNULL) s FOR NO KEY UPDATE",
        "ok",
    ),
    // ... and the legacy zone stays read-only through them.
    ("UPDATE users SET email = email WHERE id ISNULL", "42501"),
    (
        "EXPLAIN (ANALYZE) UPDATE users SET email = email WHERE id ISNULL",
        "42501",
    ),
    (
        "SELECT * FROM (SELECT id FROM users WHERE id ISNULL) s FOR NO KEY UPDATE",
        "42501",
    ),
    ("DELETE FROM U&\"users\" WHERE id ISNULL", "42501"),
    ("SELECT nextval('users_id_seq') WHERE 1 ISNULL", "42501"),
    (
        "WITH d AS (DELETE FROM users WHERE id ISNULL RETURNING 1) SELECT * FROM d",
        "42501",
    ),
    // Syntax errors: the server's own error, nothing run.
    ("UPDATE users SET WHERE id = 1", "42601"),
    ("SELEC 1", "42601"),
    ("DELETE FROM users WHERE (", "42601"),
];

#[tokio::test]
async fn what_sqlparser_cannot_parse_is_judged_with_postgresqls_grammar() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let d = direct(&db).await;
    let before = legacy_snapshot(&d).await;
    let app = g.connect("app", &db).await;
    let mut wrong = Vec::new();
    for (sql, want) in CASES {
        let got = match app.batch_execute(sql).await {
            Ok(()) => "ok".to_string(),
            Err(e) => e
                .as_db_error()
                .map_or(e.to_string(), |d| d.code().code().to_string()),
        };
        if got != *want {
            wrong.push(format!("{sql}\n    want {want}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    assert_eq!(before, legacy_snapshot(&d).await);
    // The server's answer to the syntax error is its own, with its position.
    let e = db_error(app.batch_execute("UPDATE users SET WHERE id = 1").await);
    assert!(
        e.message().contains("syntax error at or near \"WHERE\""),
        "{}",
        e.message()
    );
    assert!(g.audit().is_empty() || g.audit().iter().all(|r| r["sqlstate"] != "42601"));
}
