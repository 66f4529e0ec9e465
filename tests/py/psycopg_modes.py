"""Drives zoneguard with psycopg 3 in simple, extended, prepared and pipeline
modes. Prints one line per check; exits non-zero on the first failure.

usage: psycopg_modes.py GUARD_URL DIRECT_URL
"""
import sys

import psycopg
from psycopg import errors

guard_url, direct_url = sys.argv[1], sys.argv[2]


def check(cond, what):
    if not cond:
        print("FAIL", what)
        sys.exit(1)
    print("ok", what)


def direct_count(sql):
    with psycopg.connect(direct_url) as d:
        return d.execute(sql).fetchone()[0]


def snapshot():
    with psycopg.connect(direct_url) as d:
        return d.execute(
            "SELECT string_agg(id || email, ',' ORDER BY id) FROM users"
        ).fetchone()[0]


before = snapshot()

# Simple protocol: a ClientCursor sends the statement as one Query message.
with psycopg.connect(guard_url, autocommit=True, cursor_factory=psycopg.ClientCursor) as c:
    check(c.execute("SELECT count(*) FROM users").fetchone()[0] == 5, "simple: read")
    try:
        c.execute("UPDATE users SET email = %s WHERE id = %s", ["x", 1])
        check(False, "simple: update rejected")
    except errors.InsufficientPrivilege as e:
        check(e.sqlstate == "42501", "simple: update rejected with 42501")
        check('UPDATE on "users"' in str(e), "simple: message names the table")
        check(e.diag.message_hint is not None, "simple: hint present")
    c.execute("INSERT INTO entitlements (user_id, sku, status) VALUES (%s, %s, 'ACTIVE')", [1, "PY-SIMPLE"])
    check(c.execute("SELECT 1").fetchone()[0] == 1, "simple: usable after rejection")
    # executemany pipelines several statements in one batch: a literal with
    # a backslash after a non-ASCII character (not before a quote) reads the
    # same in every state, so it passes (regression: it was refused).
    c.cursor().executemany(
        "INSERT INTO entitlements (user_id, sku, status) VALUES (%s, %s, 'ACTIVE')",
        [(1, "PY-MANY-1"), (1, "PY-é\\x")],
    )
    check(direct_count("SELECT count(*) FROM entitlements WHERE sku LIKE 'PY-%'") == 3, "simple: executemany with non-ASCII and backslashes")

# Extended protocol (server-side parameters).
with psycopg.connect(guard_url, autocommit=True) as c:
    check(c.execute("SELECT count(*) FROM users WHERE id > %s", [0]).fetchone()[0] == 5, "extended: read")
    try:
        c.execute("DELETE FROM transactions WHERE id = %s", [1])
        check(False, "extended: delete rejected")
    except errors.InsufficientPrivilege:
        check(True, "extended: delete rejected")
    c.execute("INSERT INTO entitlements (user_id, sku, status) VALUES (%s, %s, 'ACTIVE')", [1, "PY-EXT"])

    # Prepared statements (named, reused).
    for i in range(3):
        c.execute("SELECT email FROM users WHERE id = %s", [i + 1], prepare=True)
    try:
        c.execute("UPDATE users SET email = %s WHERE id = %s", ["p", 1], prepare=True)
        check(False, "prepared: update rejected")
    except errors.InsufficientPrivilege:
        check(True, "prepared: update rejected")
    check(c.execute("SELECT email FROM users WHERE id = %s", [1], prepare=True).fetchone()[0] == "ani@example.com",
          "prepared: reuse after rejection")

    # Transaction: rejection fails the block, commit rolls back.
    c.execute("BEGIN")
    c.execute("INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'PY-TX', 'ACTIVE')")
    try:
        c.execute("UPDATE users SET email = 'tx'")
    except errors.InsufficientPrivilege:
        pass
    try:
        c.execute("SELECT 1")
        check(False, "tx: 25P02 after rejection")
    except errors.InFailedSqlTransaction:
        check(True, "tx: 25P02 after rejection")
    c.execute("COMMIT")
    check(direct_count("SELECT count(*) FROM entitlements WHERE sku = 'PY-TX'") == 0, "tx: nothing committed")

# Pipeline mode: several statements before one Sync share one implicit
# transaction; a rejection must undo the INSERT that already reported success.
with psycopg.connect(guard_url, autocommit=True) as c:
    cur = c.cursor()
    try:
        with c.pipeline() as p:
            cur.execute("INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'PIPE-1', 'ACTIVE')")
            cur.execute("UPDATE users SET email = 'pipe'")
            cur.execute("INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'PIPE-2', 'ACTIVE')")
            p.sync()
        check(False, "pipeline: rejection raised")
    except errors.InsufficientPrivilege:
        check(True, "pipeline: rejection raised")
    check(direct_count("SELECT count(*) FROM entitlements WHERE sku LIKE 'PIPE-%'") == 0,
          "pipeline: earlier insert of the batch rolled back")
    # Separate syncs: the first batch commits, the second fails, the third runs.
    results = []
    with c.pipeline() as p:
        cur.execute("INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'PIPE-3', 'ACTIVE')")
        p.sync()
        try:
            cur.execute("DELETE FROM users WHERE id = 5")
            p.sync()
        except errors.InsufficientPrivilege:
            results.append("rejected")
        cur.execute("SELECT count(*) FROM users")
        p.sync()
        results.append(cur.fetchone()[0])
    check(results == ["rejected", 5], f"pipeline: per-sync results in order {results}")
    check(direct_count("SELECT count(*) FROM entitlements WHERE sku = 'PIPE-3'") == 1, "pipeline: first batch committed")

check(snapshot() == before, "legacy tables unchanged")
check(direct_count("SELECT count(*) FROM entitlements WHERE sku IN ('PY-SIMPLE', 'PY-EXT')") == 2,
      "new-zone writes landed")
print("psycopg: all checks passed")
