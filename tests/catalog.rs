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
            r#"tables = ["users", "transactions", "user_assessments", "audit_events", "ledger_old", "legacy_child", "legacy_report"]"#,
        )
        .replace(
            r#"tables = ["entitlements", "commission_rules", "product_sku_map"]"#,
            r#"tables = ["entitlements", "commission_rules", "product_sku_map", "ledger", "scratch_*"]
schemas = ["sandbox"]
sequences = ["listed_seq"]"#,
        )
        + "\n[roles.app]\nother_ddl = true\n"
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
CREATE TABLE scratch_parent (id int PRIMARY KEY);
CREATE TABLE legacy_child (id int REFERENCES scratch_parent (id));
CREATE VIEW no_base_v AS SELECT 1 AS x;
CREATE TABLE scratch_src (id int PRIMARY KEY, note text);
CREATE VIEW legacy_report AS SELECT id FROM scratch_src;
CREATE TABLE scratch_free (id int PRIMARY KEY, note text);
CREATE SCHEMA sandbox2;
CREATE TABLE sandbox2.t2 (id int REFERENCES users (id));
CREATE RULE no_base_v_ins AS ON INSERT TO no_base_v DO INSTEAD NOTHING;
CREATE INDEX product_sku_map ON users (email);
CREATE SCHEMA legacyseq;
CREATE TABLE legacyseq.ledger_old (id int);
CREATE SEQUENCE legacyseq.entitlements OWNED BY legacyseq.ledger_old.id;
CREATE INDEX users ON sandbox.t (id);
CREATE SEQUENCE listed_seq;
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
    // Zones list relations of their own kind: a `tables` entry names no
    // index or sequence; those are in their table's zone, unless listed
    // under `sequences` / `indexes`. A name is resolved only to objects of
    // the kinds the statement can mean (an index is made on a table, not on
    // the sequence legacyseq.entitlements).
    ("DROP INDEX product_sku_map", "deny"),
    ("SELECT setval('legacyseq.entitlements', 999)", "deny"),
    ("DROP INDEX sandbox.users", "allow"),
    ("SELECT nextval('listed_seq')", "allow"),
    ("INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'K', 'ACTIVE')", "allow"),
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
    // ONLY: the parent alone (both readers).
    ("DELETE FROM ONLY ledger", "allow"),
    ("UPDATE ONLY ledger SET amount = 1", "allow"),
    ("TRUNCATE ONLY ledger", "allow"),
    ("BEGIN; LOCK TABLE ONLY ledger; COMMIT", "allow"),
    ("BEGIN; LOCK TABLE ledger; COMMIT", "deny"),
    ("UPDATE ONLY ledger SET amount = 1 WHERE id ISNULL", "allow"),
    ("UPDATE ledger SET amount = 1 WHERE id ISNULL", "deny"),
    ("DELETE FROM ONLY ledger_old", "deny"),
    // An INSERT into an inheritance parent writes the parent alone.
    ("INSERT INTO ledger VALUES (1, 1)", "allow"),
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
    // TRUNCATE reaches the tables that reference the table (CASCADE).
    ("TRUNCATE scratch_parent CASCADE", "deny"),
    ("TRUNCATE scratch_notes", "allow"),
    // DROP ... CASCADE reaches the views over the table and the tables
    // whose foreign keys point at it.
    ("DROP TABLE scratch_src CASCADE", "deny"),
    ("ALTER TABLE scratch_src DROP COLUMN id CASCADE", "deny"),
    ("ALTER TABLE scratch_parent DROP CONSTRAINT scratch_parent_pkey CASCADE", "deny"),
    ("ALTER TABLE scratch_free DROP COLUMN note CASCADE", "allow"),
    ("DROP TABLE scratch_free CASCADE", "allow"),
    // DROP SCHEMA ... CASCADE drops every relation in it.
    ("DROP SCHEMA sandbox2 CASCADE", "deny"),
    ("DROP SCHEMA sandbox CASCADE", "allow"),
    // A view that reads no relation is judged as itself (unlisted).
    ("INSERT INTO no_base_v VALUES (1)", "deny"),
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
    // The session's first Query follows the guard's own (swallowed) one that
    // sets the switch variables: the reload must wait for the DDL's own
    // ReadyForQuery, not that earlier one's (regression: it did not, and the
    // sleep made the DDL commit after the reload had read the catalog).
    app.batch_execute("SELECT pg_sleep(0.3); CREATE INDEX ix_slow ON entitlements (sku)")
        .await
        .unwrap();
    app.batch_execute("DROP INDEX ix_slow").await.unwrap();
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

/// With the event trigger installed, DDL made outside the guard reaches the
/// catalog at once (without it, only at the next periodic reload).
#[tokio::test]
async fn the_event_trigger_pushes_outside_ddl() {
    let db = fresh_db();
    cluster()
        .psql(&db, zoneguard::catalog::TRIGGER_SQL)
        .unwrap();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    app.batch_execute("SELECT 1").await.unwrap();
    let catalog = g.guard.catalogs.database(&db).unwrap();
    let before = catalog.current().unwrap().version;
    // Made directly, not through the guard.
    let direct = direct(&db).await;
    direct
        .batch_execute("CREATE INDEX ix_pushed ON entitlements (sku)")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while catalog.current().unwrap().version == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload after outside DDL"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    app.batch_execute("DROP INDEX ix_pushed").await.unwrap();
}

/// Under a search_path the server reported, an unqualified name is the
/// first match on the path (pure judging, with an in-memory catalog: the
/// PostgreSQL the suite runs does not report search_path).
#[test]
fn a_reported_search_path_picks_the_schema() {
    use std::collections::BTreeMap;
    use zoneguard::catalog::{Catalog, Kind, Object};
    use zoneguard::classify::{classify, RelationName};
    use zoneguard::policy::{Facts, Verdict};

    let text = r#"
[zones.legacy]
schemas = ["legacy"]
[zones.app]
schemas = ["app"]
[[rules]]
name = "legacy-read-only"
zone = "legacy"
allow = ["read"]
[[rules]]
name = "app-read-write"
zone = "app"
allow = ["all"]
"#;
    let (policy, _) = zoneguard::policy::parse(text, std::path::Path::new("p.toml")).unwrap();
    let obj =
        |schema: &str, name: &str| Object::new(RelationName::new(Some(schema), name), Kind::Table);
    let catalog = Catalog::new(vec![obj("legacy", "users"), obj("app", "users")]);
    let switches = BTreeMap::new();
    let verdict = |sql: &str, path: Option<&[&str]>| {
        let path: Option<Vec<String>> = path.map(|p| p.iter().map(|s| s.to_string()).collect());
        let facts = Facts {
            role: "app",
            switches: &switches,
            catalog: Some(&catalog),
            search_path: path.as_deref(),
            flux: &[],
        };
        let st = classify(sql).remove(0);
        match policy.judge(&st, facts, &|_| Vec::new()) {
            Verdict::Allow => "allow",
            Verdict::Deny(_) => "deny",
        }
    };
    let update = "UPDATE users SET email = email";
    assert_eq!(verdict(update, Some(&["app"])), "allow");
    assert_eq!(verdict(update, Some(&["app", "legacy"])), "allow");
    assert_eq!(verdict(update, Some(&["legacy", "app"])), "deny");
    // $user may be the legacy schema (SET ROLE changes it): both count.
    assert_eq!(verdict(update, Some(&["$user", "app"])), "deny");
    // Not reported: every schema that has the name.
    assert_eq!(verdict(update, None), "deny");
    // Qualified names ignore the path.
    assert_eq!(
        verdict("UPDATE legacy.users SET email = email", Some(&["app"])),
        "deny"
    );
}

/// Only authenticated sessions make the guard keep a database's catalog:
/// startup packets naming databases that do not exist (the server refuses
/// them) leave no catalog, connection or task behind.
#[tokio::test]
async fn unauthenticated_sessions_leave_no_catalog() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let g = TestGuard::start(SHIPPED_POLICY).await;
    for i in 0..80 {
        let mut s = tokio::net::TcpStream::connect(g.addr).await.unwrap();
        let pkt = zoneguard::protocol::startup_message(&[
            ("user", "app"),
            ("database", &format!("no_such_db_{i}")),
        ]);
        s.write_all(&pkt).await.unwrap();
        // Then a Query, as a client that does not wait would send.
        s.write_all(&msg(b'Q', b"SELECT 1\0")).await.unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        assert!(
            buf.windows(5).any(|w| w == b"3D000"),
            "the server refuses the database"
        );
    }
    assert!(
        g.guard.catalogs.all().is_empty(),
        "catalogs kept for unauthenticated sessions: {:?}",
        g.guard.catalogs.all()
    );
    // An authenticated session gets its database's catalog.
    let db = fresh_db();
    let app = g.connect("app", &db).await;
    app.batch_execute("SELECT 1").await.unwrap();
    assert_eq!(g.guard.catalogs.all().len(), 1);
}
