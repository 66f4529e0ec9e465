//! Catalog-aware judging against a real PostgreSQL: names are judged as the
//! objects they denote (indexes, sequences, statistics, partitions,
//! inheritance children, views, rules), each case one line.

mod common;

use common::*;

/// The shipped policy, plus a partitioned legacy table, a new-zone table
/// with a partition the legacy zone lists by name, a zone by schema and one
/// by pattern.
fn policy() -> String {
    SHIPPED_POLICY
        .replace(
            r#"tables = ["users", "transactions", "user_assessments"]"#,
            r#"tables = ["users", "transactions", "user_assessments", "audit_events", "ledger_old"]"#,
        )
        .replace(
            r#"tables = ["entitlements", "commission_rules", "product_sku_map"]"#,
            r#"tables = ["entitlements", "commission_rules", "product_sku_map", "ledger", "scratch_*"]
schemas = ["sandbox"]"#,
        )
}

/// Objects made directly (not through the guard), before the guard starts.
const FIXTURE: &str = "
CREATE TABLE audit_events (id bigserial, at date NOT NULL, what text) PARTITION BY RANGE (at);
CREATE TABLE audit_events_2024 PARTITION OF audit_events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE ledger (id int, amount int);
CREATE TABLE ledger_old () INHERITS (ledger);
CREATE TABLE ledger_new () INHERITS (ledger);
CREATE VIEW active_users AS SELECT id, email FROM users;
CREATE VIEW ent_v AS SELECT id, status FROM entitlements;
CREATE STATISTICS users_stats ON id, email FROM users;
CREATE TABLE scratch_notes (id serial PRIMARY KEY, note text);
CREATE INDEX scratch_notes_note ON scratch_notes (note);
CREATE SCHEMA sandbox;
CREATE TABLE sandbox.t (id int);
CREATE INDEX transactions_user_id ON sandbox.t (id);
CREATE TABLE rule_src (id int);
CREATE RULE rule_src_copy AS ON INSERT TO rule_src DO ALSO INSERT INTO users (email) VALUES ('rule-' || new.id);
CREATE SEQUENCE free_seq;
";

const CASES: &[(&str, &str)] = &[
    // Indexes are judged by their table's zone.
    ("DROP INDEX transactions_user_id", "deny"),
    ("DROP INDEX public.transactions_user_id", "deny"),
    ("DROP INDEX sandbox.transactions_user_id", "allow"),
    ("ALTER INDEX users_pkey RENAME TO users_pk", "deny"),
    ("REINDEX INDEX users_email_key", "deny"),
    ("CREATE INDEX ix_ent_sku ON entitlements (sku)", "allow"),
    ("ALTER INDEX ix_ent_sku RENAME TO ix_ent_sku2", "allow"),
    ("DROP INDEX CONCURRENTLY IF EXISTS ix_ent_sku2", "allow"),
    ("DROP INDEX IF EXISTS no_such_index", "deny"),
    // Sequences belong to the table whose column owns them.
    ("SELECT nextval('users_id_seq')", "deny"),
    ("SELECT nextval('\"users_id_seq\"'::regclass)", "deny"),
    ("SELECT setval(pg_get_serial_sequence('users', 'id'), 5)", "deny"),
    ("ALTER SEQUENCE users_id_seq RESTART WITH 100", "deny"),
    ("SELECT nextval('entitlements_id_seq')", "allow"),
    ("SELECT setval(pg_get_serial_sequence('\"commission_rules\"','id'), 5)", "allow"),
    ("SELECT setval('commission_rules_id_seq'::regclass, 5)", "allow"),
    ("SELECT currval('users_id_seq') IS NULL FROM users WHERE false", "allow"),
    ("SELECT nextval('free_seq')", "deny"),
    ("SELECT nextval(pg_get_serial_sequence('scratch_notes', 'id'))", "allow"),
    // Statistics objects belong to their table.
    ("DROP STATISTICS users_stats", "deny"),
    ("CREATE STATISTICS ent_st ON id, user_id FROM entitlements", "allow"),
    ("DROP STATISTICS ent_st", "allow"),
    // Partitions: a child listed nowhere is in its parent's zone.
    ("DELETE FROM audit_events_2024", "deny"),
    ("INSERT INTO audit_events_2024 (at, what) VALUES ('2024-05-01', 'x')", "deny"),
    ("SELECT count(*) FROM audit_events_2024", "allow"),
    // A write to a parent reaches its children: ledger_old is legacy.
    ("DELETE FROM ledger_new", "allow"),
    ("DELETE FROM ledger", "deny"),
    ("UPDATE ledger SET amount = 1", "deny"),
    ("SELECT * FROM ledger", "allow"),
    // Views: a write through a view is a write to what it reads.
    ("UPDATE active_users SET email = email", "deny"),
    ("SELECT * FROM active_users", "allow"),
    ("SELECT * FROM active_users FOR UPDATE", "deny"),
    ("UPDATE ent_v SET status = status", "allow"),
    // Rules: a write to a table with rules runs their actions too.
    ("INSERT INTO rule_src VALUES (1)", "deny"),
    // Zones by pattern and by schema.
    ("INSERT INTO scratch_notes (note) VALUES ('x')", "allow"),
    ("DROP INDEX scratch_notes_note", "allow"),
    ("INSERT INTO sandbox.t VALUES (1)", "allow"),
    // Foreign keys to the legacy zone are references, allowed.
    ("ALTER TABLE entitlements ADD CONSTRAINT ent_user_fk2 FOREIGN KEY (user_id) REFERENCES users (id)", "allow"),
    ("CREATE TABLE scratch_refs (id int REFERENCES transactions (id))", "allow"),
    // Parser gaps that are valid PostgreSQL.
    ("SELECT COLLATION FOR ('a')", "allow"),
    ("SELECT id FROM users FOR READ ONLY", "allow"),
    ("PREPARE zp AS SELECT 1; EXECUTE zp; DEALLOCATE zp", "allow"),
];

#[tokio::test]
async fn names_are_judged_as_the_objects_they_denote() {
    let db = fresh_db();
    cluster().psql(&db, FIXTURE).unwrap();
    let g = TestGuard::start(&policy()).await;
    let app = g.connect("app", &db).await;
    let mut wrong = Vec::new();
    for (sql, want) in CASES {
        let got = match app.batch_execute(sql).await {
            Ok(()) => "allow".to_string(),
            Err(e) => match e.as_db_error() {
                Some(d) if d.code().code() == "42501" => "deny".to_string(),
                Some(d) => format!("error {}: {}", d.code().code(), d.message()),
                None => format!("error {e}"),
            },
        };
        if got != *want {
            wrong.push(format!("{sql}\n    want {want}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn denial_names_the_owner() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    let e = db_error(app.batch_execute("DROP INDEX transactions_user_id").await);
    assert_eq!(e.code().code(), "42501");
    assert!(
        e.message()
            .contains("index of table \"public\".\"transactions\"")
            && e.message().contains("legacy zone is read-only"),
        "{}",
        e.message()
    );
    let e = db_error(app.batch_execute("SELECT nextval('users_id_seq')").await);
    assert!(
        e.message()
            .contains("NEXTVAL on \"users_id_seq\" (sequence of table \"public\".\"users\")"),
        "{}",
        e.message()
    );
}

/// DDL through the guard reloads the catalog before the session's next
/// statement is judged: an index just created can be dropped at once.
#[tokio::test]
async fn own_ddl_is_seen_by_the_next_statement() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    for i in 0..5 {
        app.batch_execute(&format!("CREATE INDEX ix_quick_{i} ON entitlements (sku)"))
            .await
            .unwrap();
        app.batch_execute(&format!("DROP INDEX ix_quick_{i}"))
            .await
            .unwrap();
    }
    // Inside a transaction block the reload waits for the commit.
    app.batch_execute("BEGIN; CREATE INDEX ix_tx ON entitlements (sku); COMMIT")
        .await
        .unwrap();
    app.batch_execute("DROP INDEX ix_tx").await.unwrap();
}

/// Without a readable catalog (a role that cannot log in), names are judged
/// as written: an index name is an unlisted relation, refused.
#[tokio::test]
async fn unreadable_catalog_judges_names_as_written() {
    let db = fresh_db();
    let text = SHIPPED_POLICY.replace(
        "user = \"zoneguard_catalog\"",
        "user = \"no_such_catalog_role\"",
    );
    let g = TestGuard::start(&text).await;
    let app = g.connect("app", &db).await;
    app.batch_execute("CREATE INDEX ix_nocat ON entitlements (sku)")
        .await
        .unwrap();
    let e = db_error(app.batch_execute("DROP INDEX ix_nocat").await);
    assert_eq!(e.code().code(), "42501");
    assert!(
        e.message()
            .contains("\"ix_nocat\" is not allowed: the table is not in any zone"),
        "{}",
        e.message()
    );
    // A legacy sequence is refused by name too.
    assert_eq!(
        sqlstate(app.batch_execute("SELECT nextval('users_id_seq')").await),
        "42501"
    );
}
