//! Table-driven tests of the SQL classifier: one line of SQL, one expectation.

use zoneguard::classify::*;

// ---------------------------------------------------------------- helpers

fn rel(t: &RelationName) -> String {
    match &t.schema {
        Some(s) => format!("{s}.{}", t.name),
        None => t.name.clone(),
    }
}

fn pairs(info: &StatementInfo) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = info
        .accesses
        .iter()
        .map(|a| (a.op.as_str().to_owned(), rel(&a.table)))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn want(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = expected
        .iter()
        .map(|(o, t)| (o.to_string(), t.to_string()))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Exactly one statement.
fn one(sql: &str) -> StatementInfo {
    let mut v = classify(sql);
    assert_eq!(v.len(), 1, "expected one statement for {sql:?}, got {v:#?}");
    v.remove(0)
}

/// One statement with exactly these (op, table) accesses and no specials.
fn expect(sql: &str, expected: &[(&str, &str)]) {
    let info = one(sql);
    assert_eq!(
        pairs(&info),
        want(expected),
        "accesses of {sql:?}: {info:#?}"
    );
    assert!(
        info.specials.is_empty(),
        "unexpected specials for {sql:?}: {info:#?}"
    );
}

/// Like `expect`, and the first access's operation string is `operation`.
fn expect_op(sql: &str, expected: &[(&str, &str)], operation: &str) {
    expect(sql, expected);
    let info = one(sql);
    assert!(
        info.accesses.iter().any(|a| a.operation == operation),
        "no access with operation {operation:?} in {sql:?}: {info:#?}"
    );
}

/// One statement, command tag `command`, nothing touched, no specials.
fn expect_nothing(sql: &str, command: &str) {
    let info = one(sql);
    assert_eq!(info.command, command, "command of {sql:?}");
    assert!(info.accesses.is_empty(), "accesses in {sql:?}: {info:#?}");
    assert!(info.specials.is_empty(), "specials in {sql:?}: {info:#?}");
}

/// DDL on an object that is not a relation.
fn expect_other(sql: &str, operation: &str) {
    expect_special(
        sql,
        Special::OtherDdl {
            operation: operation.into(),
        },
        &[],
    );
}

/// One statement with this special (and these accesses).
fn expect_special(sql: &str, special: Special, expected: &[(&str, &str)]) {
    let info = one(sql);
    assert!(
        info.specials.contains(&special),
        "{special:?} missing for {sql:?}: {info:#?}"
    );
    assert_eq!(pairs(&info), want(expected), "accesses of {sql:?}");
}

fn other_ddl(sql: &str, operation: &str) {
    expect_special(
        sql,
        Special::OtherDdl {
            operation: operation.to_owned(),
        },
        &[],
    );
}

/// One statement reported as unparsed with this `may_write`.
fn expect_unparsed(sql: &str, may_write: bool) {
    let info = one(sql);
    assert!(
        info.specials
            .iter()
            .any(|s| matches!(s, Special::Unparsed { may_write: m, .. } if *m == may_write)),
        "expected Unparsed(may_write={may_write}) for {sql:?}: {info:#?}"
    );
}

/// A text PostgreSQL's grammar rejects: passed on, the server reports it.
fn expect_syntax_error(sql: &str) {
    let v = classify(sql);
    assert!(
        v.len() == 1 && matches!(v[0].specials[..], [Special::SyntaxError { .. }]),
        "expected a syntax error for {sql:?}: {v:#?}"
    );
}

/// The (op, table) accesses of each statement of a multi-statement string.
fn expect_multi(sql: &str, expected: &[&[(&str, &str)]]) {
    let v = classify(sql);
    let got: Vec<_> = v.iter().map(pairs).collect();
    let exp: Vec<_> = expected.iter().map(|e| want(e)).collect();
    assert_eq!(got, exp, "statements of {sql:?}: {v:#?}");
}

// ---------------------------------------------------------------- SELECT

#[test]
fn select_reads() {
    expect("SELECT * FROM users", &[("read", "users")]);
    expect("select * from USERS", &[("read", "users")]);
    expect(r#"SELECT * FROM "Users""#, &[("read", "Users")]);
    expect(r#"SELECT * FROM "users""#, &[("read", "users")]);
    expect("SELECT * FROM public.users", &[("read", "public.users")]);
    expect(
        r#"SELECT * FROM "Public"."Users""#,
        &[("read", "Public.Users")],
    );
    expect(
        "SELECT * FROM mydb.public.users",
        &[("read", "public.users")],
    );
    expect("SELECT 1", &[]);
    expect("SELECT now(), $1::int, 'a'::text", &[]);
    expect("VALUES (1), (2)", &[]);
    expect(
        "SELECT * FROM users u JOIN orders o ON o.user_id = u.id",
        &[("read", "users"), ("read", "orders")],
    );
    expect(
        "SELECT * FROM users LEFT JOIN orders USING (id) CROSS JOIN items",
        &[("read", "users"), ("read", "orders"), ("read", "items")],
    );
    expect(
        "SELECT * FROM (users JOIN orders ON true) j",
        &[("read", "users"), ("read", "orders")],
    );
    expect(
        "SELECT a FROM users UNION SELECT a FROM archive",
        &[("read", "users"), ("read", "archive")],
    );
    expect(
        "SELECT a FROM users EXCEPT SELECT a FROM banned INTERSECT SELECT a FROM x",
        &[("read", "users"), ("read", "banned"), ("read", "x")],
    );
    expect(
        "(SELECT 1 FROM a) UNION ALL (SELECT 2 FROM b)",
        &[("read", "a"), ("read", "b")],
    );
    expect(
        "SELECT * FROM (SELECT * FROM users) s",
        &[("read", "users")],
    );
    expect(
        "SELECT * FROM users WHERE id IN (SELECT user_id FROM orders)",
        &[("read", "users"), ("read", "orders")],
    );
    expect(
        "SELECT * FROM users WHERE EXISTS (SELECT 1 FROM orders WHERE orders.u = users.id)",
        &[("read", "users"), ("read", "orders")],
    );
    expect(
        "SELECT (SELECT max(id) FROM orders) AS m FROM users",
        &[("read", "users"), ("read", "orders")],
    );
    expect(
        "SELECT * FROM users WHERE id = ANY(ARRAY(SELECT id FROM vip))",
        &[("read", "users"), ("read", "vip")],
    );
    expect(
        "SELECT * FROM users u, LATERAL (SELECT * FROM orders o WHERE o.u = u.id) x",
        &[("read", "users"), ("read", "orders")],
    );
    expect(
        "SELECT count(*) FROM users GROUP BY a HAVING count(*) > (SELECT 1 FROM limits)",
        &[("read", "users"), ("read", "limits")],
    );
    expect(
        "SELECT * FROM users ORDER BY (SELECT 1 FROM o) LIMIT 5 OFFSET 2",
        &[("read", "users"), ("read", "o")],
    );
    expect(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM a) THEN 1 END",
        &[("read", "a")],
    );
    expect("SELECT * FROM a WHERE x IN (SELECT x FROM b WHERE y IN (SELECT y FROM c WHERE z IN (SELECT z FROM d)))", &[("read", "a"), ("read", "b"), ("read", "c"), ("read", "d")]);
    expect("SELECT DISTINCT ON (a) a FROM users", &[("read", "users")]);
    expect(
        "SELECT sum(x) OVER (PARTITION BY y) FROM t",
        &[("read", "t")],
    );
}

#[test]
fn table_functions_are_not_relations() {
    expect("SELECT * FROM generate_series(1, 10) g", &[]);
    expect("SELECT * FROM unnest(ARRAY[1, 2]) u", &[]);
    expect(
        "SELECT * FROM generate_series(1, 3) g, LATERAL (SELECT * FROM users WHERE id = g) x",
        &[("read", "users")],
    );
    expect("SELECT * FROM json_to_record('{}') AS x(a int)", &[]);
    expect(
        "SELECT * FROM users u, jsonb_array_elements(u.tags) t",
        &[("read", "users")],
    );
}

#[test]
fn strings_comments_and_quotes_are_data() {
    expect("SELECT 'DELETE FROM users'", &[]);
    expect("SELECT $$UPDATE users SET a = 1$$", &[]);
    expect("SELECT $tag$DROP TABLE users$tag$", &[]);
    expect("SELECT 1 -- DROP TABLE users", &[]);
    expect("SELECT 1 /* TRUNCATE users */", &[]);
    expect(
        "SELECT 1 /* nested /* DELETE FROM users */ still comment */",
        &[],
    );
    expect(
        "SELECT E'it\\'s; DELETE FROM users' FROM t",
        &[("read", "t")],
    );
    expect("SELECT 'a\\' FROM t", &[("read", "t")]);
    expect(r#"SELECT "DELETE" FROM t"#, &[("read", "t")]);
}

#[test]
fn ctes() {
    expect(
        "WITH x AS (SELECT * FROM users) SELECT * FROM x",
        &[("read", "users")],
    );
    expect("WITH users AS (SELECT 1 AS id) SELECT * FROM users", &[]);
    expect(
        "WITH x AS (SELECT 1) SELECT * FROM public.x",
        &[("read", "public.x")],
    );
    expect(
        "WITH a AS (SELECT * FROM t), b AS (SELECT * FROM a) SELECT * FROM b",
        &[("read", "t")],
    );
    expect("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r", &[]);
    expect(
        "WITH x AS MATERIALIZED (SELECT * FROM users) SELECT * FROM x, orders",
        &[("read", "users"), ("read", "orders")],
    );
    expect(
        "SELECT * FROM (WITH x AS (SELECT * FROM a) SELECT * FROM x) s, x",
        &[("read", "a"), ("read", "x")],
    );
    expect(
        r#"WITH "X" AS (SELECT 1) SELECT * FROM x"#,
        &[("read", "x")],
    );
    // a plain WITH's own name is not visible in its body
    expect(
        "WITH users AS (SELECT * FROM users) SELECT * FROM users",
        &[("read", "users")],
    );
}

#[test]
fn data_modifying_ctes() {
    expect(
        "WITH x AS (UPDATE users SET a = 1 RETURNING *) SELECT * FROM x",
        &[("update", "users")],
    );
    expect(
        "WITH d AS (DELETE FROM users RETURNING *) INSERT INTO log SELECT * FROM d",
        &[("delete", "users"), ("insert", "log")],
    );
    expect(
        "WITH i AS (INSERT INTO users VALUES (1) RETURNING id) SELECT * FROM i",
        &[("insert", "users")],
    );
    expect(
        "SELECT * FROM t WHERE id IN (WITH d AS (DELETE FROM users RETURNING id) SELECT id FROM d)",
        &[("read", "t"), ("delete", "users")],
    );
    expect("WITH u AS (UPDATE a SET x = 1 RETURNING id) UPDATE b SET y = 2 WHERE id IN (SELECT id FROM u)", &[("update", "a"), ("update", "b")]);
    expect(
        "WITH d AS (DELETE FROM a RETURNING id) DELETE FROM b WHERE id IN (SELECT id FROM d)",
        &[("delete", "a"), ("delete", "b")],
    );
    expect(
        "SELECT * FROM (WITH x AS (UPDATE users SET a = 1 RETURNING a) SELECT * FROM x) s",
        &[("update", "users")],
    );
    expect(
        "WITH a AS (SELECT 1), b AS (INSERT INTO t SELECT * FROM a RETURNING *) SELECT * FROM b",
        &[("insert", "t")],
    );
}

#[test]
fn row_locks() {
    expect_op(
        "SELECT * FROM users FOR UPDATE",
        &[("read", "users"), ("lock", "users")],
        "SELECT FOR UPDATE",
    );
    expect_op(
        "SELECT * FROM users FOR NO KEY UPDATE",
        &[("read", "users"), ("lock", "users")],
        "SELECT FOR UPDATE",
    );
    expect_op(
        "SELECT * FROM users FOR SHARE",
        &[("read", "users"), ("lock", "users")],
        "SELECT FOR SHARE",
    );
    expect_op(
        "SELECT * FROM users FOR KEY SHARE",
        &[("read", "users"), ("lock", "users")],
        "SELECT FOR SHARE",
    );
    expect(
        "SELECT * FROM users FOR UPDATE NOWAIT",
        &[("read", "users"), ("lock", "users")],
    );
    expect(
        "SELECT * FROM users FOR UPDATE SKIP LOCKED",
        &[("read", "users"), ("lock", "users")],
    );
    expect(
        "SELECT * FROM users u JOIN orders o ON true FOR UPDATE OF o",
        &[("read", "users"), ("read", "orders"), ("lock", "orders")],
    );
    expect(
        "SELECT * FROM users JOIN orders ON true FOR SHARE OF users",
        &[("read", "users"), ("read", "orders"), ("lock", "users")],
    );
    expect(
        "SELECT * FROM users, orders FOR UPDATE",
        &[
            ("read", "users"),
            ("read", "orders"),
            ("lock", "users"),
            ("lock", "orders"),
        ],
    );
    expect(
        "SELECT * FROM (SELECT * FROM users) s FOR UPDATE",
        &[("read", "users"), ("lock", "users")],
    );
    expect(
        "SELECT * FROM a WHERE id IN (SELECT id FROM b FOR UPDATE)",
        &[("read", "a"), ("read", "b"), ("lock", "b")],
    );
    expect(
        "WITH x AS (SELECT * FROM users FOR UPDATE) SELECT * FROM x",
        &[("read", "users"), ("lock", "users")],
    );
    expect(
        "WITH x AS (SELECT * FROM users) SELECT * FROM x, orders FOR UPDATE",
        &[("read", "users"), ("read", "orders"), ("lock", "orders")],
    );
    expect(
        "SELECT * FROM users FOR UPDATE OF nosuch",
        &[("read", "users"), ("lock", "nosuch")],
    );
}

#[test]
fn select_into() {
    expect_op(
        "SELECT * INTO newt FROM users",
        &[("read", "users"), ("ddl", "newt")],
        "SELECT INTO",
    );
    expect(
        "SELECT * INTO TEMP public.newt FROM users",
        &[("read", "users"), ("ddl", "public.newt")],
    );
}

// ---------------------------------------------------------------- DML

#[test]
fn insert() {
    expect_op(
        "INSERT INTO users VALUES (1)",
        &[("insert", "users")],
        "INSERT",
    );
    expect(
        "INSERT INTO public.users (a, b) VALUES (1, 2), (3, 4)",
        &[("insert", "public.users")],
    );
    expect(
        "INSERT INTO users SELECT * FROM staging",
        &[("insert", "users"), ("read", "staging")],
    );
    expect(
        "INSERT INTO users (a) VALUES ((SELECT max(a) FROM other))",
        &[("insert", "users"), ("read", "other")],
    );
    expect(
        "INSERT INTO users AS u (a) VALUES (1) RETURNING *",
        &[("insert", "users")],
    );
    expect(
        "INSERT INTO users VALUES (1) RETURNING (SELECT 1 FROM audit)",
        &[("insert", "users"), ("read", "audit")],
    );
    expect("INSERT INTO users DEFAULT VALUES", &[("insert", "users")]);
    expect(r#"INSERT INTO "Users" VALUES (1)"#, &[("insert", "Users")]);
    expect(
        "INSERT INTO users VALUES ($1, $2::text)",
        &[("insert", "users")],
    );
}

#[test]
fn insert_on_conflict() {
    expect(
        "INSERT INTO users VALUES (1) ON CONFLICT DO NOTHING",
        &[("insert", "users")],
    );
    expect(
        "INSERT INTO users VALUES (1) ON CONFLICT (id) DO NOTHING",
        &[("insert", "users")],
    );
    expect_op(
        "INSERT INTO users VALUES (1) ON CONFLICT (id) DO UPDATE SET a = excluded.a",
        &[("insert", "users"), ("update", "users")],
        "INSERT ON CONFLICT DO UPDATE",
    );
    expect(
        "INSERT INTO users VALUES (1) ON CONFLICT ON CONSTRAINT pk DO UPDATE SET a = (SELECT 1 FROM x) WHERE users.a > 0",
        &[("insert", "users"), ("update", "users"), ("read", "x")],
    );
}

#[test]
fn update() {
    expect_op("UPDATE users SET a = 1", &[("update", "users")], "UPDATE");
    expect(
        "UPDATE public.users SET a = 1 WHERE id = $1",
        &[("update", "public.users")],
    );
    expect("UPDATE ONLY users SET a = 1", &[("update", "users")]);
    expect(
        "UPDATE users AS u SET a = 1 WHERE u.id = 2",
        &[("update", "users")],
    );
    expect(
        "UPDATE users SET a = o.a FROM orders o WHERE o.id = users.id",
        &[("update", "users"), ("read", "orders")],
    );
    expect(
        "UPDATE users SET a = 1 FROM orders JOIN items ON true",
        &[("update", "users"), ("read", "orders"), ("read", "items")],
    );
    expect(
        "UPDATE users SET a = (SELECT max(a) FROM other)",
        &[("update", "users"), ("read", "other")],
    );
    expect(
        "UPDATE users SET a = 1 WHERE id IN (SELECT id FROM banned)",
        &[("update", "users"), ("read", "banned")],
    );
    expect(
        "UPDATE users SET (a, b) = (SELECT a, b FROM src) RETURNING *",
        &[("update", "users"), ("read", "src")],
    );
    expect(
        "UPDATE users SET a = 1 WHERE CURRENT OF cur",
        &[("update", "users")],
    );
    expect(
        "WITH x AS (SELECT * FROM src) UPDATE users SET a = x.a FROM x",
        &[("update", "users"), ("read", "src")],
    );
}

#[test]
fn delete() {
    expect_op("DELETE FROM users", &[("delete", "users")], "DELETE");
    expect(
        "DELETE FROM ONLY public.users WHERE id = 1",
        &[("delete", "public.users")],
    );
    expect(
        "DELETE FROM users u USING orders o WHERE o.id = u.id",
        &[("delete", "users"), ("read", "orders")],
    );
    expect(
        "DELETE FROM users WHERE id IN (SELECT id FROM banned)",
        &[("delete", "users"), ("read", "banned")],
    );
    expect(
        "DELETE FROM users WHERE CURRENT OF cur",
        &[("delete", "users")],
    );
    expect("DELETE FROM users RETURNING *", &[("delete", "users")]);
    expect(r#"DELETE FROM "USERS""#, &[("delete", "USERS")]);
}

#[test]
fn merge() {
    expect_op(
        "MERGE INTO users u USING staging s ON u.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a WHEN NOT MATCHED THEN INSERT (id, a) VALUES (s.id, s.a)",
        &[("update", "users"), ("insert", "users"), ("read", "staging")],
        "MERGE",
    );
    expect(
        "MERGE INTO users u USING staging s ON u.id = s.id WHEN MATCHED THEN DELETE",
        &[("delete", "users"), ("read", "staging")],
    );
    expect(
        "MERGE INTO users USING staging ON true WHEN MATCHED THEN DO NOTHING",
        &[("read", "staging")],
    );
    expect(
        "MERGE INTO users u USING (SELECT * FROM a JOIN b ON true) s ON u.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (1)",
        &[("insert", "users"), ("read", "a"), ("read", "b")],
    );
}

#[test]
fn truncate() {
    expect_op("TRUNCATE users", &[("truncate", "users")], "TRUNCATE");
    expect(
        "TRUNCATE TABLE a, public.b",
        &[("truncate", "a"), ("truncate", "public.b")],
    );
    expect(
        "TRUNCATE ONLY users RESTART IDENTITY CASCADE",
        &[("truncate", "users")],
    );
}

#[test]
fn copy() {
    expect_op("COPY users FROM STDIN", &[("insert", "users")], "COPY FROM");
    expect(
        "COPY public.users (a, b) FROM STDIN WITH (FORMAT csv)",
        &[("insert", "public.users")],
    );
    expect_op("COPY users TO STDOUT", &[("read", "users")], "COPY TO");
    expect(
        "COPY (SELECT * FROM users JOIN orders ON true) TO STDOUT",
        &[("read", "users"), ("read", "orders")],
    );
    expect_special(
        "COPY users TO PROGRAM 'gzip > /tmp/x'",
        Special::OtherDdl {
            operation: "COPY PROGRAM".into(),
        },
        &[("read", "users")],
    );
    // PostgreSQL runs SQL that follows `COPY ... FROM STDIN;` in the same string
    expect_multi(
        "COPY users FROM STDIN;\nDELETE FROM accounts;\n",
        &[&[("insert", "users")], &[("delete", "accounts")]],
    );
}

// ---------------------------------------------------------------- EXPLAIN / PREPARE / cursors

#[test]
fn explain() {
    expect("EXPLAIN SELECT * FROM users", &[("read", "users")]);
    expect("EXPLAIN DELETE FROM users", &[("read", "users")]);
    expect(
        "EXPLAIN VERBOSE UPDATE users SET a = 1 FROM orders",
        &[("read", "users"), ("read", "orders")],
    );
    expect(
        "EXPLAIN (ANALYZE false) DELETE FROM users",
        &[("read", "users")],
    );
    expect(
        "EXPLAIN (ANALYZE off, COSTS) DELETE FROM users",
        &[("read", "users")],
    );
    expect("EXPLAIN ANALYZE DELETE FROM users", &[("delete", "users")]);
    expect(
        "EXPLAIN ANALYZE VERBOSE INSERT INTO users SELECT * FROM s",
        &[("insert", "users"), ("read", "s")],
    );
    expect(
        "EXPLAIN (ANALYZE) UPDATE users SET a = 1",
        &[("update", "users")],
    );
    expect(
        "EXPLAIN (ANALYZE true, BUFFERS) DELETE FROM users",
        &[("delete", "users")],
    );
    // not valid PostgreSQL, but judged as what it would do
    expect(
        "EXPLAIN (BUFFERS, ANALYZE) TRUNCATE users",
        &[("truncate", "users")],
    );
}

#[test]
fn prepare_execute_deallocate() {
    let info = one("PREPARE del(int) AS DELETE FROM users WHERE id = $1");
    assert_eq!(info.command, "PREPARE");
    assert_eq!(pairs(&info), want(&[("delete", "users")]));
    let p = info.prepares.expect("prepares");
    assert_eq!(p.name, "del");
    assert_eq!(pairs(&p.body), want(&[("delete", "users")]));

    let info = one(r#"PREPARE "Q" AS SELECT * FROM users"#);
    assert_eq!(info.prepares.as_ref().map(|p| p.name.as_str()), Some("Q"));
    assert_eq!(pairs(&info), want(&[("read", "users")]));

    let info = one("PREPARE q AS WITH x AS (UPDATE users SET a = 1 RETURNING *) SELECT * FROM x");
    assert_eq!(
        pairs(&info.prepares.unwrap().body),
        want(&[("update", "users")])
    );

    expect_special(
        "EXECUTE del(1)",
        Special::ExecutePrepared { name: "del".into() },
        &[],
    );
    expect_special(
        "EXECUTE Del",
        Special::ExecutePrepared { name: "del".into() },
        &[],
    );
    expect_special(
        "EXPLAIN ANALYZE EXECUTE q",
        Special::ExecutePrepared { name: "q".into() },
        &[],
    );

    assert_eq!(
        one("DEALLOCATE del").deallocates,
        Some(Deallocate::Name("del".into()))
    );
    assert_eq!(
        one("DEALLOCATE PREPARE del").deallocates,
        Some(Deallocate::Name("del".into()))
    );
    assert_eq!(one("DEALLOCATE ALL").deallocates, Some(Deallocate::All));
    assert_eq!(
        one("DEALLOCATE PREPARE ALL").deallocates,
        Some(Deallocate::All)
    );
    assert!(one("SELECT 1").deallocates.is_none());
}

#[test]
fn cursors() {
    expect(
        "DECLARE c CURSOR FOR SELECT * FROM users",
        &[("read", "users")],
    );
    expect(
        "DECLARE c SCROLL CURSOR WITH HOLD FOR SELECT * FROM users FOR UPDATE",
        &[("read", "users"), ("lock", "users")],
    );
    expect_nothing("FETCH NEXT FROM c", "FETCH");
    expect_nothing("FETCH 10 c", "FETCH");
    expect_nothing("MOVE NEXT FROM c", "MOVE");
    expect_nothing("CLOSE c", "CLOSE CURSOR");
    expect_nothing("CLOSE ALL", "CLOSE CURSOR");
}

// ---------------------------------------------------------------- DDL on relations

#[test]
fn create_table() {
    expect_op("CREATE TABLE t (a int)", &[("ddl", "t")], "CREATE TABLE");
    expect(
        "CREATE TABLE IF NOT EXISTS app.t (a int PRIMARY KEY)",
        &[("ddl", "app.t")],
    );
    expect(r#"CREATE TABLE "T" (a int)"#, &[("ddl", "T")]);
    expect(
        "CREATE TABLE t (a int REFERENCES users(id))",
        &[("ddl", "t"), ("reference", "users")],
    );
    expect(
        "CREATE TABLE t (a int, FOREIGN KEY (a) REFERENCES legacy.users(id))",
        &[("ddl", "t"), ("reference", "legacy.users")],
    );
    expect(
        r#"ALTER TABLE "entitlements" ADD CONSTRAINT "e_fk" FOREIGN KEY ("user_id") REFERENCES "users" ("id") DEFERRABLE INITIALLY DEFERRED"#,
        &[("ddl", "entitlements"), ("reference", "users")],
    );
    expect(
        "ALTER TABLE entitlements ADD COLUMN trx bigint REFERENCES transactions",
        &[("ddl", "entitlements"), ("reference", "transactions")],
    );
    expect(
        "CREATE SEQUENCE s OWNED BY users.id",
        &[("ddl", "s"), ("ddl", "users")],
    );
    expect(
        "ALTER SEQUENCE s OWNED BY public.users.id",
        &[("ddl", "s"), ("ddl", "public.users")],
    );
    expect("ALTER SEQUENCE s OWNED BY NONE", &[("ddl", "s")]);
    expect_op(
        "DROP INDEX CONCURRENTLY IF EXISTS ix_a",
        &[("ddl", "ix_a")],
        "DROP INDEX",
    );
    expect(
        "DROP STATISTICS s1, public.s2",
        &[("ddl", "s1"), ("ddl", "public.s2")],
    );
    expect(
        "CREATE STATISTICS IF NOT EXISTS s1 (ndistinct) ON a, b FROM users",
        &[("ddl", "users")],
    );
    expect("ALTER STATISTICS s1 RENAME TO s2", &[("ddl", "s1")]);
    expect_syntax_error("ALTER STATISTICS s1 DELETE users");
    expect("SELECT COLLATION FOR ('a')", &[]);
    expect("SELECT id FROM users FOR READ ONLY", &[("read", "users")]);
    expect(
        "CREATE TABLE t AS SELECT * FROM users",
        &[("ddl", "t"), ("read", "users")],
    );
    expect(
        "CREATE TEMP TABLE t AS SELECT * FROM users JOIN orders ON true",
        &[("ddl", "t"), ("read", "users"), ("read", "orders")],
    );
    expect(
        "CREATE TABLE t AS TABLE users",
        &[("ddl", "t"), ("read", "users")],
    );
    expect(
        "CREATE TABLE t (LIKE users)",
        &[("ddl", "t"), ("read", "users")],
    );
    expect(
        "CREATE TABLE t PARTITION OF users FOR VALUES IN (1)",
        &[("ddl", "t"), ("ddl", "users")],
    );
    expect(
        "CREATE TABLE t () INHERITS (users)",
        &[("ddl", "t"), ("ddl", "users")],
    );
}

#[test]
fn views() {
    expect_op(
        "CREATE VIEW v AS SELECT * FROM users",
        &[("ddl", "v"), ("ddl", "users")],
        "CREATE VIEW over",
    );
    expect(
        "CREATE OR REPLACE VIEW app.v AS SELECT * FROM users u JOIN orders o ON true",
        &[("ddl", "app.v"), ("ddl", "users"), ("ddl", "orders")],
    );
    expect("CREATE VIEW v AS SELECT 1", &[("ddl", "v")]);
    expect(
        "CREATE VIEW v AS WITH x AS (SELECT * FROM users) SELECT * FROM x",
        &[("ddl", "v"), ("ddl", "users")],
    );
    expect_op(
        "CREATE MATERIALIZED VIEW m AS SELECT * FROM users",
        &[("ddl", "m"), ("read", "users")],
        "CREATE MATERIALIZED VIEW",
    );
    expect_op(
        "REFRESH MATERIALIZED VIEW m",
        &[("ddl", "m")],
        "REFRESH MATERIALIZED VIEW",
    );
    expect(
        "REFRESH MATERIALIZED VIEW CONCURRENTLY app.m WITH DATA",
        &[("ddl", "app.m")],
    );
    expect("ALTER VIEW v RENAME TO w", &[("ddl", "v")]);
    expect("ALTER MATERIALIZED VIEW m RENAME TO n", &[("ddl", "m")]);
    expect_op("DROP VIEW v, w", &[("ddl", "v"), ("ddl", "w")], "DROP VIEW");
    expect_op(
        "DROP MATERIALIZED VIEW m",
        &[("ddl", "m")],
        "DROP MATERIALIZED VIEW",
    );
}

#[test]
fn indexes_triggers_rules_policies() {
    expect_op(
        "CREATE INDEX ON users (a)",
        &[("ddl", "users")],
        "CREATE INDEX",
    );
    expect(
        "CREATE UNIQUE INDEX CONCURRENTLY i ON public.users USING btree (a) WHERE a > 0",
        &[("ddl", "public.users")],
    );
    expect("ALTER INDEX i RENAME TO j", &[("ddl", "i")]);
    expect_op(
        "ALTER INDEX i SET TABLESPACE x",
        &[("ddl", "i")],
        "ALTER INDEX",
    );
    expect_op("DROP INDEX i", &[("ddl", "i")], "DROP INDEX");
    expect_op(
        "CREATE TRIGGER t BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION f()",
        &[("ddl", "users")],
        "CREATE TRIGGER",
    );
    expect_op(
        "DROP TRIGGER t ON users",
        &[("ddl", "users")],
        "DROP TRIGGER",
    );
    expect("ALTER TRIGGER t ON users RENAME TO u", &[("ddl", "users")]);
    expect_op(
        "CREATE RULE r AS ON INSERT TO users DO ALSO NOTHING",
        &[("ddl", "users")],
        "CREATE RULE",
    );
    expect(
        "CREATE RULE r AS ON INSERT TO v DO INSTEAD (INSERT INTO a VALUES (1); DELETE FROM b)",
        &[("ddl", "v"), ("insert", "a"), ("delete", "b")],
    );
    expect(
        "CREATE OR REPLACE RULE r AS ON UPDATE TO v DO INSTEAD UPDATE users SET a = 1",
        &[("ddl", "v"), ("update", "users")],
    );
    expect_op("DROP RULE r ON users", &[("ddl", "users")], "DROP RULE");
    expect_op(
        "CREATE POLICY p ON users USING (true)",
        &[("ddl", "users")],
        "CREATE POLICY",
    );
    expect("ALTER POLICY p ON users USING (false)", &[("ddl", "users")]);
    expect("DROP POLICY p ON users", &[("ddl", "users")]);
}

#[test]
fn alter_drop_sequence_foreign() {
    expect_op(
        "ALTER TABLE users ADD COLUMN x int",
        &[("ddl", "users")],
        "ALTER TABLE",
    );
    expect(
        "ALTER TABLE IF EXISTS ONLY public.users ENABLE TRIGGER ALL",
        &[("ddl", "public.users")],
    );
    expect(
        "ALTER TABLE users RENAME TO users_old",
        &[("ddl", "users"), ("ddl", "users_old")],
    );
    expect(
        "ALTER TABLE app.t RENAME TO t2",
        &[("ddl", "app.t"), ("ddl", "app.t2")],
    );
    expect(
        "ALTER TABLE t ATTACH PARTITION users FOR VALUES IN (1)",
        &[("ddl", "t"), ("ddl", "users")],
    );
    expect(
        "ALTER TABLE t INHERIT users",
        &[("ddl", "t"), ("ddl", "users")],
    );
    expect("RENAME TABLE a TO b", &[("ddl", "a"), ("ddl", "b")]);
    expect_op(
        "DROP TABLE a, public.b",
        &[("ddl", "a"), ("ddl", "public.b")],
        "DROP TABLE",
    );
    expect("DROP TABLE IF EXISTS users CASCADE", &[("ddl", "users")]);
    expect_op("CREATE SEQUENCE s", &[("ddl", "s")], "CREATE SEQUENCE");
    expect_op(
        "ALTER SEQUENCE s RESTART",
        &[("ddl", "s")],
        "ALTER SEQUENCE",
    );
    expect_op("DROP SEQUENCE s", &[("ddl", "s")], "DROP SEQUENCE");
    expect_op(
        "CREATE FOREIGN TABLE f (a int) SERVER s",
        &[("ddl", "f")],
        "CREATE FOREIGN TABLE",
    );
    expect_op(
        "DROP FOREIGN TABLE f",
        &[("ddl", "f")],
        "DROP FOREIGN TABLE",
    );
}

#[test]
fn comment_and_grant() {
    expect_op(
        "COMMENT ON TABLE users IS 'x'",
        &[("ddl", "users")],
        "COMMENT",
    );
    expect("COMMENT ON COLUMN users.a IS 'x'", &[("ddl", "users")]);
    expect(
        "COMMENT ON COLUMN public.users.a IS NULL",
        &[("ddl", "public.users")],
    );
    expect("COMMENT ON VIEW v IS 'x'", &[("ddl", "v")]);
    other_ddl("COMMENT ON SCHEMA s IS 'x'", "COMMENT");
    other_ddl("COMMENT ON EXTENSION e IS 'x'", "COMMENT");
    expect_op("GRANT SELECT ON users TO bob", &[("ddl", "users")], "GRANT");
    expect(
        "GRANT SELECT, INSERT ON TABLE users, public.orders TO bob",
        &[("ddl", "users"), ("ddl", "public.orders")],
    );
    expect_op(
        "REVOKE ALL ON users FROM bob",
        &[("ddl", "users")],
        "REVOKE",
    );
    other_ddl("GRANT ALL ON ALL TABLES IN SCHEMA public TO bob", "GRANT");
    other_ddl("GRANT USAGE ON SCHEMA app TO bob", "GRANT");
    other_ddl("GRANT EXECUTE ON FUNCTION f(int) TO bob", "GRANT");
    other_ddl("GRANT admin TO bob", "GRANT ROLE");
    other_ddl("REVOKE admin FROM bob", "REVOKE ROLE");
    other_ddl(
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO bob",
        "ALTER DEFAULT PRIVILEGES",
    );
}

#[test]
fn maintenance() {
    expect_op("VACUUM FULL users", &[("ddl", "users")], "VACUUM FULL");
    expect("VACUUM (FULL, ANALYZE) users", &[("ddl", "users")]);
    expect(
        "VACUUM (VERBOSE, FULL true) public.users, orders",
        &[("ddl", "public.users"), ("ddl", "orders")],
    );
    expect_unparsed("VACUUM FULL", true);
    expect_nothing("VACUUM users", "VACUUM");
    expect_nothing("VACUUM", "VACUUM");
    expect_nothing("VACUUM (ANALYZE) users", "VACUUM");
    expect_nothing("VACUUM (FULL false) users", "VACUUM");
    expect_nothing("ANALYZE users", "ANALYZE");
    expect_nothing("ANALYZE", "ANALYZE");
    expect_op("CLUSTER users", &[("ddl", "users")], "CLUSTER");
    expect(
        "CLUSTER VERBOSE users USING users_pkey",
        &[("ddl", "users"), ("ddl", "users_pkey")],
    );
    expect_unparsed("CLUSTER", true);
    expect_op("REINDEX TABLE users", &[("ddl", "users")], "REINDEX");
    expect(
        "REINDEX INDEX CONCURRENTLY public.users_pkey",
        &[("ddl", "public.users_pkey")],
    );
    expect_unparsed("REINDEX DATABASE app", true);
    expect_unparsed("REINDEX SCHEMA public", true);
    expect_nothing("CHECKPOINT", "CHECKPOINT");
}

#[test]
fn lock_table() {
    expect_op("LOCK TABLE users", &[("lock", "users")], "LOCK TABLE");
    expect("LOCK users", &[("lock", "users")]);
    expect(
        "LOCK TABLE users IN ACCESS SHARE MODE",
        &[("read", "users")],
    );
    expect("LOCK TABLE users IN ROW SHARE MODE", &[("lock", "users")]);
    expect(
        "LOCK TABLE users IN ROW EXCLUSIVE MODE",
        &[("lock", "users")],
    );
    expect(
        "LOCK TABLE users IN SHARE UPDATE EXCLUSIVE MODE",
        &[("lock", "users")],
    );
    expect(
        "LOCK TABLE users IN SHARE MODE NOWAIT",
        &[("lock", "users")],
    );
    expect(
        "LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE",
        &[("lock", "users")],
    );
    expect("LOCK TABLE users IN EXCLUSIVE MODE", &[("lock", "users")]);
    expect(
        "LOCK TABLE ONLY users, public.orders IN ACCESS EXCLUSIVE MODE",
        &[("lock", "users"), ("lock", "public.orders")],
    );
}

// ---------------------------------------------------------------- non-relation DDL and specials

#[test]
fn other_ddl_objects() {
    other_ddl(
        "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql",
        "CREATE FUNCTION",
    );
    other_ddl(
        "CREATE OR REPLACE FUNCTION f() RETURNS void AS $$ DELETE FROM users $$ LANGUAGE sql",
        "CREATE FUNCTION",
    );
    other_ddl("DROP FUNCTION f", "DROP FUNCTION");
    other_ddl("ALTER FUNCTION f() OWNER TO bob", "ALTER FUNCTION");
    other_ddl("CREATE TYPE mood AS ENUM ('a', 'b')", "CREATE TYPE");
    other_ddl("ALTER TYPE mood ADD VALUE 'c'", "ALTER TYPE");
    other_ddl("DROP TYPE mood", "DROP TYPE");
    other_ddl("CREATE DOMAIN d AS int", "CREATE DOMAIN");
    other_ddl("CREATE SCHEMA app", "CREATE SCHEMA");
    other_ddl("ALTER SCHEMA app RENAME TO app2", "ALTER SCHEMA");
    other_ddl("DROP SCHEMA app CASCADE", "DROP SCHEMA");
    other_ddl("CREATE EXTENSION pgcrypto", "CREATE EXTENSION");
    other_ddl("DROP EXTENSION pgcrypto", "DROP EXTENSION");
    other_ddl("CREATE ROLE r", "CREATE ROLE");
    other_ddl("CREATE USER u", "CREATE USER");
    other_ddl("ALTER ROLE r SUPERUSER", "ALTER ROLE");
    other_ddl("DROP ROLE r", "DROP ROLE");
    other_ddl("CREATE DATABASE d", "CREATE DATABASE");
    other_ddl("DROP DATABASE d", "DROP DATABASE");
    other_ddl("CREATE COLLATION c (locale = 'x')", "CREATE COLLATION");
    other_ddl("CREATE SERVER s FOREIGN DATA WRAPPER w", "CREATE SERVER");
    other_ddl(
        "CREATE USER MAPPING FOR bob SERVER s",
        "CREATE USER MAPPING",
    );
    other_ddl(
        "CREATE TEXT SEARCH CONFIGURATION c (PARSER = p)",
        "CREATE TEXT SEARCH",
    );
    other_ddl("LOAD 'auto_explain'", "LOAD");
}

#[test]
fn do_and_call() {
    let info = one("DO $$ BEGIN DELETE FROM users; END $$");
    assert_eq!(info.specials, vec![Special::DoBlock]);
    assert_eq!(info.command, "DO");
    expect_special(
        "do language plpgsql $x$ BEGIN NULL; END $x$",
        Special::DoBlock,
        &[],
    );
    expect_special(
        "CALL archive_users(1)",
        Special::Call {
            routine: "archive_users".into(),
        },
        &[],
    );
    expect_special(
        "CALL App.Proc()",
        Special::Call {
            routine: "app.proc".into(),
        },
        &[],
    );
    expect_special(
        "CALL p((SELECT max(id) FROM users))",
        Special::Call {
            routine: "p".into(),
        },
        &[("read", "users")],
    );
}

#[test]
fn harmless_statements() {
    expect_nothing("BEGIN", "BEGIN");
    expect_nothing("BEGIN ISOLATION LEVEL SERIALIZABLE", "BEGIN");
    expect_nothing("START TRANSACTION READ ONLY", "BEGIN");
    expect_nothing("COMMIT", "COMMIT");
    expect_nothing("END", "COMMIT");
    expect_nothing("ROLLBACK", "ROLLBACK");
    expect_nothing("ABORT", "ROLLBACK");
    expect_nothing("SAVEPOINT a", "SAVEPOINT");
    expect_nothing("RELEASE SAVEPOINT a", "RELEASE");
    expect_nothing("ROLLBACK TO SAVEPOINT a", "ROLLBACK");
    expect_nothing("SET search_path TO app, public", "SET");
    expect_nothing("SET LOCAL statement_timeout = 5000", "SET");
    expect_nothing("SET standard_conforming_strings = on", "SET");
    expect_nothing("RESET ALL", "RESET");
    expect_nothing("SHOW search_path", "SHOW");
    expect_nothing("DISCARD ALL", "DISCARD");
    expect_nothing("LISTEN chan", "LISTEN");
    expect_nothing("UNLISTEN *", "UNLISTEN");
    expect_nothing("NOTIFY chan, 'payload'", "NOTIFY");
}

fn unreadable(setting: &str, value: &str) -> Special {
    Special::UnreadableSetting {
        setting: setting.into(),
        value: value.into(),
    }
}

/// Settings the reading of SQL depends on, in every spelling and by every
/// statement that sets them with a literal (`classify::reading`, R3).
#[test]
fn settings_the_reading_depends_on_fail_closed() {
    let scs_off = unreadable("standard_conforming_strings", "off");
    expect_special(
        "SET standard_conforming_strings = off",
        scs_off.clone(),
        &[],
    );
    expect_special(
        "SET SESSION standard_conforming_strings TO false",
        unreadable("standard_conforming_strings", "false"),
        &[],
    );
    // Setting names are case-insensitive, quoted or not.
    expect_special(
        "SET \"Standard_Conforming_Strings\" = off",
        scs_off.clone(),
        &[],
    );
    expect_special(
        "SET LOCAL STANDARD_CONFORMING_STRINGS = 'off'",
        scs_off.clone(),
        &[],
    );
    expect_special(
        "SELECT set_config('Standard_Conforming_Strings', 'off', false)",
        scs_off.clone(),
        &[],
    );
    // A value the guard cannot see: allowed, the server reports what it set
    // before anything read under it is judged (R2, R3).
    expect(
        "SELECT set_config('standard_conforming_strings', v, false) FROM t",
        &[("read", "t")],
    );
    expect("SELECT set_config('client_encoding', $1, false)", &[]);
    let sjis = unreadable("client_encoding", "SJIS");
    expect_special("SET client_encoding = 'SJIS'", sjis.clone(), &[]);
    expect_special("SET \"CLIENT_ENCODING\" TO SJIS", sjis.clone(), &[]);
    expect_special("SET NAMES 'SJIS'", sjis.clone(), &[]);
    expect_special(
        "SELECT set_config('client_encoding', 'SJIS', false)",
        sjis,
        &[],
    );
    expect_special(
        "SET client_encoding = 'LATIN1'",
        unreadable("client_encoding", "LATIN1"),
        &[],
    );
    // Values the guard reads under, and DEFAULT (the session's start, which
    // the server reported then).
    expect("SET client_encoding = 'UTF8'", &[]);
    expect("SET client_encoding TO 'unicode'", &[]);
    expect("SET NAMES 'utf-8'", &[]);
    expect("SET client_encoding TO DEFAULT", &[]);
    expect("SET standard_conforming_strings = on", &[]);
    expect("SELECT set_config('client_encoding', 'UTF8', false)", &[]);
    // A computed setting name is allowed: a change it makes is reported by
    // the server before anything read under it is judged (R2).
    expect(
        "SELECT set_config(name, 'off', false) FROM t",
        &[("read", "t")],
    );
    expect("SELECT set_config('search_path', 'app', false)", &[]);
}

#[test]
fn functions_that_write_out_of_sight() {
    expect(
        "SELECT setval('users_id_seq', 42)",
        &[("update", "users_id_seq")],
    );
    expect(
        "SELECT id FROM users WHERE setval('public.\"Seq\"', 1) > 0",
        &[("read", "users"), ("update", "public.Seq")],
    );
    // A sequence named through its table is the table's.
    expect(
        "SELECT setval(pg_get_serial_sequence('users', 'id'), 1)",
        &[("update", "users")],
    );
    expect(
        r#"SELECT setval(pg_get_serial_sequence('"commission_rules"','id'), coalesce(max("id"), 1), max("id") IS NOT null) FROM "commission_rules""#,
        &[("update", "commission_rules"), ("read", "commission_rules")],
    );
    expect(
        "SELECT setval('commission_rules_id_seq'::regclass, 5)",
        &[("update", "commission_rules_id_seq")],
    );
    expect(
        "SELECT nextval(' Public . \"Seq\" ')",
        &[("insert", "public.Seq")],
    );
    expect(
        "INSERT INTO entitlements (id) VALUES (nextval('users_id_seq'))",
        &[("insert", "entitlements"), ("insert", "users_id_seq")],
    );
    expect(
        "SELECT * FROM entitlements WHERE id = (SELECT nextval(regclass 'users_id_seq'))",
        &[("read", "entitlements"), ("insert", "users_id_seq")],
    );
    expect("SELECT currval('users_id_seq')", &[]);
    expect_unparsed("SELECT nextval($1)", true);
    expect_unparsed("SELECT setval(16384::regclass, 1)", true);
    expect(
        "SELECT brin_summarize_new_values('users_brin')",
        &[("ddl", "users_brin")],
    );
    expect_special(
        "SELECT dblink_exec('dbname=x', 'DELETE FROM users')",
        Special::Call {
            routine: "dblink_exec".into(),
        },
        &[],
    );
}

// ---------------------------------------------------------------- unparseable / fallback

#[test]
fn fallback() {
    expect("TABLE users", &[("read", "users")]);
    expect(
        "TABLE public.users ORDER BY 1 LIMIT 5",
        &[("read", "public.users")],
    );
    // Junk PostgreSQL's grammar rejects: the server reports its own error.
    expect_syntax_error("SELEC * FRM users");
    expect_syntax_error("FOO BAR");
    expect_syntax_error("DELET FROM users WHERE");
    expect_syntax_error("DELETE FROM users WHERE id = = 1");
    expect_syntax_error("UPDATE users SET WHERE");
    // Read with PostgreSQL's grammar (the second reader).
    expect_other("ALTER SYSTEM SET work_mem = '1MB'", "ALTER SYSTEM");
    expect("SECURITY LABEL ON TABLE users IS 'x'", &[("ddl", "users")]);
    expect_unparsed("IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y", true);
    expect_unparsed("REASSIGN OWNED BY a TO b", true);
    expect_unparsed("DROP OWNED BY bob", true);
    expect_special(
        "CREATE SCHEMA s CREATE TABLE t (a int)",
        Special::OtherDdl {
            operation: "CREATE SCHEMA".into(),
        },
        &[("ddl", "s.t")],
    );
    expect_other(
        "CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()",
        "CREATE EVENT TRIGGER",
    );
    expect_other("COMMENT ON FUNCTION f() IS 'x'", "COMMENT");
    // write keywords inside strings or comments do not count
    expect_syntax_error("SELEC 'DELETE FROM users' -- UPDATE\n");
    // tokenizer failures fail closed
    // Text that ends inside a string, identifier, dollar quote or comment
    // cannot run at all: PostgreSQL's lexer fails (42601) and the server
    // reports its own error.
    expect_unparsed("SELECT 'unterminated", false);
    expect_unparsed("SELECT $$unterminated", false);
    expect_unparsed("DELETE FROM users; SELECT \"unterminated", false);
    expect_unparsed("DELETE FROM users /* unterminated", false);
    expect(r#"SELECT * FROM U&"\0075sers""#, &[("read", "users")]);
    let info = one("SELEC 1");
    assert_eq!(info.command, "SYNTAX ERROR");
    assert!(
        matches!(&info.specials[0], Special::SyntaxError { message } if message.contains("syntax error at or near"))
    );
}

#[test]
fn unknown_statement_types_fail_closed() {
    // parsed by sqlparser for other dialects, not understood by zoneguard
    expect_unparsed("CREATE VIRTUAL TABLE t USING fts5(a)", true);
    expect_unparsed("ATTACH DATABASE 'x.db' AS x", true);
    expect_unparsed("UNCACHE TABLE t", true);
}

// ---------------------------------------------------------------- multi-statement strings

#[test]
fn multi_statement() {
    expect_multi(
        "SELECT * FROM users; DELETE FROM orders",
        &[&[("read", "users")], &[("delete", "orders")]],
    );
    expect_multi(
        "SELECT 'a;b' FROM users; UPDATE t SET a = ';'",
        &[&[("read", "users")], &[("update", "t")]],
    );
    expect_multi("SELECT $$;$$; ; -- ;\n SELECT 1 /* ; */;", &[&[], &[]]);
    // one piece does not parse: the others are still classified
    expect_multi(
        "SELECT * FROM a; TABLE b; DELETE FROM c",
        &[&[("read", "a")], &[("read", "b")], &[("delete", "c")]],
    );
    // A syntax error anywhere: the server runs none of it (it parses the
    // whole Query first) and reports the error itself.
    expect_syntax_error("BEGIN; SELEC 1; DELETE FROM users; COMMIT");
    // the rewrite of FOR NO KEY UPDATE applies in multi-statement strings too
    expect_multi(
        "SELECT * FROM a FOR NO KEY UPDATE; SELECT * FROM b",
        &[&[("read", "a"), ("lock", "a")], &[("read", "b")]],
    );
}

#[test]
fn empty_input() {
    assert!(classify("").is_empty());
    assert!(classify("   ").is_empty());
    assert!(classify(";;;").is_empty());
    assert!(classify("-- just a comment").is_empty());
    assert!(classify("/* c */ ; -- x\n ;").is_empty());
}

// ---------------------------------------------------------------- limits

#[test]
fn a_text_over_the_parse_limit_is_not_parsed_and_under_it_is() {
    // Many tokens and no list to cut (a select list): over the limit,
    // not parsed.
    let chain = (0..30_000)
        .map(|i| format!("id + {i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT {chain} FROM users");
    assert!(sql.len() > 1 << 18);
    let v = zoneguard::classify::classify_limited(&sql, 1 << 18);
    assert_eq!(v.len(), 1);
    assert!(
        matches!(&v[0].specials[..], [Special::Unparsed { may_write: true, reason }] if reason.contains("too big") && reason.contains("max_statement_bytes")),
        "{:?}",
        v[0].specials
    );
    assert!(v[0].accesses.is_empty());
    // Without a limit (the command-line tools') it is read.
    assert_eq!(pairs(&one(&sql)), want(&[("read", "users")]));
    // A text over the limit is one statement that may write, whatever it
    // holds: fail closed.
    let sql = format!("SELECT {chain}; DELETE FROM users");
    let v = zoneguard::classify::classify_limited(&sql, 1 << 18);
    assert_eq!(v.len(), 1);
    assert!(matches!(
        &v[0].specials[..],
        [Special::Unparsed {
            may_write: true,
            ..
        }]
    ));
    let v = classify(&sql);
    assert_eq!(v.len(), 2);
    assert_eq!(pairs(&v[1]), want(&[("delete", "users")]));
    // A long literal is one token: a megabyte in one string is parsed
    // whole under a limit far below its length, and what follows it seen.
    let sql = format!(
        "SELECT '{}' FROM users; DELETE FROM users",
        "x".repeat(1 << 20)
    );
    let v = zoneguard::classify::classify_limited(&sql, 4096);
    assert_eq!(v.len(), 2);
    assert_eq!(pairs(&v[0]), want(&[("read", "users")]));
    assert_eq!(pairs(&v[1]), want(&[("delete", "users")]));
}

#[test]
fn deep_nesting_does_not_crash() {
    // Deeper than either reader goes (sqlparser's recursion limit, the
    // depth PostgreSQL's parse tree can be decoded to): the token reader.
    let mut sql = "SELECT * FROM users".to_owned();
    for _ in 0..100 {
        sql = format!("SELECT * FROM ({sql}) x");
    }
    expect_unparsed(&sql, false);

    let mut sql = "DELETE FROM users RETURNING id".to_owned();
    for _ in 0..100 {
        sql = format!("SELECT * FROM t WHERE id IN (WITH d AS ({sql}) SELECT id FROM d)");
    }
    expect_unparsed(&sql, true);

    // Too deep for sqlparser, not for PostgreSQL's grammar: read exactly.
    let sql = format!("SELECT {}1{} FROM users", "(".repeat(100), ")".repeat(100));
    expect(&sql, &[("read", "users")]);

    // within the limit: parsed and walked
    let mut sql = "SELECT * FROM users".to_owned();
    for _ in 0..10 {
        sql = format!("SELECT * FROM ({sql}) x");
    }
    expect(&sql, &[("read", "users")]);
}

#[test]
fn long_chains_do_not_crash() {
    // run on a small stack, as a proxy worker thread would
    let h = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let ors: Vec<String> = (0..5000).map(|i| format!("a = {i}")).collect();
            expect(
                &format!("SELECT * FROM users WHERE {}", ors.join(" OR ")),
                &[("read", "users")],
            );
            let unions: Vec<&str> = (0..3000).map(|_| "SELECT 1 FROM users").collect();
            expect(&unions.join(" UNION "), &[("read", "users")]);
            expect_unparsed(&format!("SELECT {}1", "1+".repeat(100_000)), true);
        })
        .unwrap();
    h.join()
        .expect("classification must not overflow the stack");
}

// ---------------------------------------------------------------- command tags and display

#[test]
fn command_tags_and_names() {
    assert_eq!(one("SELECT 1").command, "SELECT");
    assert_eq!(one("INSERT INTO t VALUES (1)").command, "INSERT");
    assert_eq!(
        one("WITH x AS (SELECT 1) UPDATE t SET a = 1").command,
        "UPDATE"
    );
    assert_eq!(one("CREATE TABLE t (a int)").command, "CREATE TABLE");
    assert_eq!(one("TRUNCATE t").command, "TRUNCATE TABLE");
    let info = one("SELECT * FROM Public.Users");
    assert_eq!(
        info.accesses[0].table,
        RelationName::new(Some("public"), "users")
    );
    assert_eq!(info.accesses[0].table.to_string(), r#""public"."users""#);
    // identifiers are truncated to 63 bytes, as PostgreSQL does
    let long = "a".repeat(70);
    let info = one(&format!("DELETE FROM {long}"));
    assert_eq!(info.accesses[0].table.name, "a".repeat(63));
}

#[test]
fn table_query_form() {
    expect("TABLE a UNION TABLE b", &[("read", "a"), ("read", "b")]);
    expect(
        "TABLE a EXCEPT SELECT * FROM b",
        &[("read", "a"), ("read", "b")],
    );
    expect("SELECT * FROM (TABLE a) x", &[("read", "a")]);
    expect("TABLE ONLY users ORDER BY 1", &[("read", "users")]);
    expect("WITH x AS (SELECT * FROM a) TABLE x", &[("read", "a")]);
    expect(
        "CREATE TABLE t AS TABLE users",
        &[("ddl", "t"), ("read", "users")],
    );
}
