//! SQL -> verdict under the shipped policy: one line of SQL, one expected
//! verdict (the rule that decides, or allowed), for the new application's
//! role, the legacy role, and panic mode.

use std::collections::BTreeMap;
use std::path::Path;

use zoneguard::classify::classify;
use zoneguard::policy::{self, Facts, Policy, Verdict};

fn shipped() -> Policy {
    let text = include_str!("../policy.toml");
    policy::parse(text, Path::new("policy.toml")).unwrap().0
}

/// The rule that rejects `sql`, or "allow".
fn verdict(p: &Policy, role: &str, switches: &BTreeMap<String, bool>, sql: &str) -> String {
    let facts = Facts {
        role,
        switches,
        catalog: None,
        search_path: None,
        flux: &[],
    };
    for st in classify(sql) {
        if let Verdict::Deny(d) = p.judge(&st, facts, &|_| Vec::new()) {
            return d.rule;
        }
    }
    "allow".into()
}

fn check(role: &str, new_commerce: bool, cases: &[(&str, &str)]) {
    let p = shipped();
    let mut switches = p.default_switches();
    switches.insert("enable_new_commerce".into(), new_commerce);
    let mut failures = Vec::new();
    for (sql, want) in cases {
        let got = verdict(&p, role, &switches, sql);
        if got != *want {
            failures.push(format!("{sql}\n    want {want}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const RO: &str = "legacy-read-only";
const UNL: &str = "unlisted-read-only";

#[test]
fn new_application_role() {
    check(
        "app",
        true,
        &[
            // reads
            ("SELECT * FROM users", "allow"),
            ("SELECT u.email, t.amount FROM users u JOIN transactions t ON t.user_id = u.id", "allow"),
            ("SELECT 'DELETE FROM users'", "allow"),
            ("SELECT $$UPDATE users SET email = 1$$", "allow"),
            ("SELECT 1 -- DELETE FROM users", "allow"),
            ("/* DROP TABLE users */ SELECT 1", "allow"),
            ("TABLE users", "allow"),
            ("SELECT * FROM (TABLE transactions) t", "allow"),
            ("WITH x AS (SELECT * FROM users) SELECT * FROM x", "allow"),
            ("SELECT count(*) FROM user_assessments WHERE answers IS NOT NULL", "allow"),
            ("COPY users TO STDOUT", "allow"),
            ("COPY (SELECT * FROM transactions) TO STDOUT", "allow"),
            ("EXPLAIN DELETE FROM users", "allow"),
            ("EXPLAIN SELECT * FROM users", "allow"),
            ("LOCK TABLE users IN ACCESS SHARE MODE", "allow"),
            ("SELECT * FROM pg_catalog.pg_class", "allow"),
            ("SELECT * FROM information_schema.tables", "allow"),
            ("SHOW zoneguard.enable_new_commerce", "allow"),
            ("SET search_path = public", "allow"),
            ("BEGIN; SELECT 1; COMMIT", "allow"),
            ("SAVEPOINT a; ROLLBACK TO SAVEPOINT a; RELEASE a", "allow"),
            ("LISTEN checkout; NOTIFY checkout, 'x'; UNLISTEN *", "allow"),
            ("VACUUM users", "allow"),
            ("ANALYZE users", "allow"),
            ("DISCARD ALL", "allow"),
            ("SELEC * FRM users", "allow"), // junk with no write keyword: the server says what is wrong
            // new zone
            ("INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'A', 'ACTIVE')", "allow"),
            ("INSERT INTO entitlements (user_id, source_trx_id, sku, status) SELECT user_id, id, 'A', 'ACTIVE' FROM transactions WHERE status = 'PAID'", "allow"),
            ("INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'A', 'ACTIVE') ON CONFLICT DO NOTHING", "allow"),
            ("UPDATE entitlements SET status = 'COMPLETED' FROM user_assessments a WHERE a.user_id = entitlements.user_id", "allow"),
            ("DELETE FROM entitlements USING users WHERE users.id = entitlements.user_id", "allow"),
            ("TRUNCATE commission_rules", "allow"),
            ("MERGE INTO entitlements e USING transactions t ON e.source_trx_id = t.id WHEN NOT MATCHED THEN INSERT (user_id, sku, status) VALUES (t.user_id, 'X', 'ACTIVE')", "allow"),
            ("COPY commission_rules (logic_json) FROM STDIN", "allow"),
            ("SELECT * FROM entitlements FOR UPDATE", "allow"),
            ("CREATE INDEX ON entitlements (status)", "allow"),
            ("ALTER TABLE commission_rules ADD COLUMN note text", "allow"),
            ("CREATE TABLE entitlements (id int)", "allow"),
            ("DROP TABLE commission_rules", "allow"),
            ("CREATE TABLE product_sku_map (product_id text, sku text, FOREIGN KEY (product_id) REFERENCES users (email))", "allow"),
            ("WITH moved AS (DELETE FROM entitlements RETURNING *) INSERT INTO commission_rules (logic_json) SELECT '{}' FROM moved", "allow"),
            ("PREPARE p AS INSERT INTO entitlements (user_id, sku, status) VALUES ($1, 'A', 'ACTIVE')", "allow"),
            // legacy writes
            ("UPDATE users SET email = 'x'", RO),
            ("update USERS set email = 'x'", RO),
            ("UPDATE public.users SET email = 'x'", RO),
            ("UPDATE \"users\" SET email = 'x'", RO),
            ("DELETE FROM transactions WHERE id = 1", RO),
            ("DELETE FROM entitlements USING transactions t; DELETE FROM transactions", RO),
            ("INSERT INTO users (email) VALUES ('x')", RO),
            ("INSERT INTO transactions (user_id, product_id, status, amount) VALUES (1, 'P', 'PAID', 1)", RO),
            ("TRUNCATE user_assessments", RO),
            ("TRUNCATE entitlements, users", RO),
            ("COPY users FROM STDIN", RO),
            ("MERGE INTO users u USING entitlements e ON u.id = e.user_id WHEN MATCHED THEN UPDATE SET email = 'x'", RO),
            ("INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'A', 'ACTIVE') RETURNING (SELECT 1 FROM users FOR UPDATE)", RO),
            ("WITH x AS (UPDATE users SET email = 'y' RETURNING id) SELECT * FROM x", RO),
            ("SELECT * FROM (WITH d AS (DELETE FROM transactions RETURNING 1) SELECT * FROM d) s", RO),
            ("WITH users AS (SELECT 1) DELETE FROM users", RO),
            ("EXPLAIN ANALYZE DELETE FROM users", RO),
            ("EXPLAIN (ANALYZE, BUFFERS) UPDATE users SET email = 'x'", RO),
            ("SELECT * FROM users FOR UPDATE", RO),
            ("SELECT * FROM users FOR NO KEY UPDATE", RO),
            ("SELECT * FROM transactions FOR SHARE", RO),
            ("SELECT * FROM transactions FOR KEY SHARE", RO),
            ("SELECT * FROM entitlements e JOIN users u ON u.id = e.user_id FOR UPDATE OF u", RO),
            ("LOCK TABLE users", RO),
            ("LOCK TABLE transactions IN ROW EXCLUSIVE MODE", RO),
            ("DECLARE c CURSOR FOR SELECT * FROM users FOR UPDATE", RO),
            ("UPDATE users SET email = 'x' WHERE CURRENT OF c", RO),
            ("PREPARE p AS DELETE FROM users", RO),
            ("INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'A', 'ACTIVE'); UPDATE users SET email = 'x'", RO),
            // legacy structure
            ("ALTER TABLE users ADD COLUMN x int", RO),
            ("DROP TABLE transactions", RO),
            ("DROP TABLE entitlements, users", RO),
            ("CREATE INDEX ON users (email)", RO),
            ("CREATE TRIGGER t AFTER INSERT ON transactions FOR EACH ROW EXECUTE FUNCTION f()", RO),
            ("CREATE RULE r AS ON INSERT TO users DO INSTEAD NOTHING", RO),
            ("CREATE RULE r AS ON INSERT TO entitlements DO ALSO DELETE FROM users", RO),
            ("CREATE POLICY p ON users USING (true)", RO),
            ("COMMENT ON TABLE users IS 'x'", RO),
            ("GRANT UPDATE ON users TO app", RO),
            ("REVOKE SELECT ON transactions FROM PUBLIC", RO),
            ("VACUUM FULL users", RO),
            ("CLUSTER users USING users_pkey", RO),
            ("REINDEX TABLE transactions", RO),
            ("CREATE VIEW v AS SELECT * FROM users", UNL),
            ("CREATE VIEW commission_rules AS SELECT * FROM users", RO), // a write path into users
            ("CREATE VIEW commission_rules AS SELECT * FROM entitlements", "allow"),
            ("SELECT * INTO users FROM entitlements", RO),
            // unlisted tables: read-only too
            ("SELECT * FROM audit_archive", "allow"),
            ("INSERT INTO audit_archive VALUES (1)", UNL),
            ("CREATE TABLE scratch (id int)", UNL),
            ("CREATE TEMP TABLE scratch (id int)", UNL),
            ("CREATE TABLE copy AS SELECT * FROM users", UNL),
            ("SELECT * INTO scratch FROM users", UNL),
            ("UPDATE archive.users SET email = 'x'", RO), // an unqualified policy entry matches every schema
            ("ALTER INDEX users_pkey RENAME TO x", UNL),
            ("DROP SEQUENCE users_id_seq", UNL),
            ("CREATE MATERIALIZED VIEW mv AS SELECT * FROM users", UNL),
            // what no parser can see into
            ("DO $$ BEGIN UPDATE users SET email = 'x'; END $$", "do_blocks"),
            ("DO $$ BEGIN PERFORM 1; END $$", "do_blocks"),
            ("CALL refresh_everything()", "call"),
            ("SELECT setval('users_id_seq', 1)", UNL),
            ("SELECT pg_catalog.setval('public.transactions_id_seq', 1, false)", UNL),
            ("SELECT setval(pg_get_serial_sequence('users', 'id'), 1)", "legacy-read-only"),
            ("SELECT setval('entitlements', 1)", "allow"), // a new-zone name: judged by its zone
            // Without a catalog a sequence is judged by its own name (tests/catalog.rs
            // has the same with one: judged by the owning table's zone).
            ("SELECT nextval('entitlements_id_seq')", UNL),
            ("SELECT nextval(pg_get_serial_sequence('entitlements', 'id'))", "allow"),
            ("SELECT dblink_exec('dbname=shop', 'DELETE FROM users')", "call"),
            ("SELECT lo_unlink(12345)", "call"),
            ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "other_ddl"),
            ("CREATE EXTENSION dblink", "other_ddl"),
            ("CREATE SCHEMA s", "other_ddl"),
            ("CREATE ROLE x", "other_ddl"),
            ("EXECUTE never_prepared", "prepared_statements"),
            // Read with PostgreSQL's grammar (the second reader).
            ("ALTER SYSTEM SET fsync = off", "other_ddl"),
            ("SECURITY LABEL ON TABLE users IS 'x'", "legacy-read-only"),
            ("IMPORT FOREIGN SCHEMA s FROM SERVER x INTO public", "unparsed"),
            // A syntax error: the server reports its own (nothing runs).
            ("UPDATE users SET email = 'x' WHERE id = (((((1)))))) junk", "allow"),
            ("SELECT U&\"d\\0061t\\+000061\" FROM users", "allow"),
        ],
    );
}

#[test]
fn legacy_application_role_keeps_its_tables() {
    check(
        "legacy_app",
        true,
        &[
            ("UPDATE users SET email = 'x'", "allow"),
            ("DELETE FROM transactions", "allow"),
            ("TRUNCATE user_assessments", "allow"),
            ("ALTER TABLE users ADD COLUMN x int", "allow"),
            ("DO $$ BEGIN END $$", "allow"),
            (
                "INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'A', 'ACTIVE')",
                "allow",
            ),
            ("INSERT INTO scratch VALUES (1)", UNL),
        ],
    );
}

#[test]
fn panic_mode_opens_the_legacy_checkout_and_freezes_the_new_zone() {
    check(
        "app",
        false,
        &[
            ("INSERT INTO transactions (user_id, product_id, status, amount) VALUES (1, 'P', 'PAID', 1)", "allow"),
            ("SELECT * FROM transactions", "allow"),
            ("SELECT * FROM entitlements", "allow"),
            ("UPDATE transactions SET status = 'REFUNDED'", "panic-legacy-checkout"),
            ("DELETE FROM transactions", "panic-legacy-checkout"),
            ("SELECT * FROM transactions FOR UPDATE", "panic-legacy-checkout"),
            ("INSERT INTO users (email) VALUES ('x')", RO),
            ("UPDATE users SET email = 'x'", RO),
            ("INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'A', 'ACTIVE')", "panic-new-zone-frozen"),
            ("UPDATE commission_rules SET logic_json = '{}'", "panic-new-zone-frozen"),
            ("CREATE INDEX ON entitlements (sku)", "panic-new-zone-frozen"),
            ("INSERT INTO scratch VALUES (1)", UNL),
        ],
    );
}
