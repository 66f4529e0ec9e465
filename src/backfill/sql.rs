//! The SQL the backfill sends: the per-batch statements (set-based, the
//! mapping passed as array parameters), the preflight checks, and the
//! new-zone schema `--ensure-schema` applies. Nothing here names a legacy
//! table in a write position, so it all passes the shipped policy.

/// The seed's rule: answers present -> COMPLETED; "empty or not tested yet"
/// -> ACTIVE. An assessment has answers unless its `answers` is SQL NULL or,
/// read as text (so it holds for jsonb, json and text columns alike), is
/// empty or only whitespace, JSON `null`, an empty object `{}`, an empty
/// array `[]` or a string of only whitespace `"  "` (whitespace allowed
/// around and inside the brackets; `null` in any case). Anything else, e.g.
/// `{"q1": null}` or `[0]`, is answers.
pub const HAS_ANSWERS: &str =
    r#"a.answers IS NOT NULL AND a.answers::text !~* '^\s*(\{\s*\}|\[\s*\]|null|"\s*"|)\s*$'"#;

/// Parameters shared by the batch statements: $1 last transaction id done
/// (keyset), $2/$3 the half-open paid_at window (text, cast by PostgreSQL),
/// $4 batch size, $5/$6 the mapping as parallel `text[]` (product_id, sku),
/// $7 the run's bound: the highest transaction id when it started (rows
/// added during the run are left for the next one).
///
/// Result rows: (kind, key, status, n, last_id) where kind is
/// `batch` (n = transactions scanned, last_id = highest id in the batch),
/// `want` (entitlements the batch should have, per sku and status),
/// `made` (rows this statement inserted, per sku and status),
/// `unmapped` (transactions per product with no mapping).
fn batch_source() -> String {
    BATCH_SOURCE.replace("{HAS_ANSWERS}", HAS_ANSWERS)
}

const BATCH_SOURCE: &str = "
WITH b0 AS MATERIALIZED (
    SELECT t.id, t.user_id, t.product_id
    FROM transactions t
    WHERE t.id > $1
      AND t.status = 'PAID'
      AND t.paid_at >= $2::text::timestamptz
      AND t.paid_at < $3::text::timestamptz
    ORDER BY t.id
    LIMIT $4
), b AS MATERIALIZED (
    -- The bound is applied after the LIMIT: ids come in order, so a batch
    -- that reaches past it comes back short and ends the run; and the
    -- planner keeps its estimate of the batch (a range condition on the
    -- parameter would shrink it and change the join order).
    SELECT * FROM b0 WHERE id <= $7
), m AS MATERIALIZED (
    SELECT DISTINCT product_id, sku FROM unnest($5::text[], $6::text[]) AS m(product_id, sku)
), src AS MATERIALIZED (
    SELECT b.user_id, b.id AS source_trx_id, m.sku,
           CASE WHEN EXISTS (
                    SELECT 1 FROM user_assessments a
                    WHERE a.user_id = b.user_id
                      AND a.product_id = b.product_id
                      AND {HAS_ANSWERS})
                THEN 'COMPLETED' ELSE 'ACTIVE' END AS status
    FROM b JOIN m ON m.product_id = b.product_id
)";

const BATCH_SUMMARY: &str = "
SELECT 'batch'::text AS kind, NULL::text AS key, NULL::text AS status,
       count(*)::bigint AS n, max(id)::bigint AS last_id FROM b
UNION ALL
SELECT 'unmapped', product_id, NULL, count(*)::bigint, NULL
FROM b WHERE NOT EXISTS (SELECT 1 FROM m WHERE m.product_id = b.product_id)
GROUP BY product_id
UNION ALL
SELECT 'want', sku, status, count(*)::bigint, NULL FROM src GROUP BY sku, status";

/// One batch, writing: one INSERT ... SELECT, idempotent through the unique
/// index on (source_trx_id, sku).
pub fn batch_write() -> String {
    format!(
        "{}, ins AS (
    INSERT INTO entitlements (user_id, source_trx_id, sku, status)
    SELECT user_id, source_trx_id, sku, status FROM src
    ORDER BY source_trx_id, sku
    ON CONFLICT (source_trx_id, sku) DO NOTHING
    RETURNING sku, status
){BATCH_SUMMARY}
UNION ALL
SELECT 'made', sku, status, count(*)::bigint, NULL FROM ins GROUP BY sku, status",
        batch_source()
    )
}

/// One batch, reading only (`--dry-run`): `made` counts what would be
/// inserted, i.e. the wanted rows not already present.
pub fn batch_dry_run() -> String {
    format!(
        "{}{BATCH_SUMMARY}
UNION ALL
SELECT 'made', sku, status, count(*)::bigint, NULL FROM src
WHERE NOT EXISTS (SELECT 1 FROM entitlements e
                  WHERE e.source_trx_id = src.source_trx_id AND e.sku = src.sku)
GROUP BY sku, status",
        batch_source()
    )
}

/// Validates the window and sizes the work: (from, to, transactions in the
/// window, highest such id).
pub const PREFLIGHT_WINDOW: &str = "
SELECT $1::text::timestamptz::text, $2::text::timestamptz::text,
       $1::text::timestamptz < $2::text::timestamptz";

/// What the batches will read (PAID, in the window, up to the bound $3),
/// for the progress display.
pub const COUNT_TO_READ: &str = "
SELECT count(*)::bigint FROM transactions
WHERE id <= $3 AND status = 'PAID'
  AND paid_at >= $1::text::timestamptz AND paid_at < $2::text::timestamptz";

/// The run's bound: the highest transaction id when it starts. Taken before
/// anything else, so the report and the batches see the same rows.
pub const BOUND: &str = "SELECT coalesce(max(id), 0)::bigint FROM transactions";

/// Sizes the work and says what is left out, and why, for transactions up
/// to the bound ($3): rows (reason, key, n, first ids). Reasons, each
/// transaction counted once, in this order: `status` (not exactly 'PAID';
/// key: the status, NULL shown as such), `no_paid_at` (PAID with no
/// paid_at), `before_window` / `after_window`, `unmapped` (key: the
/// product), and `candidate` (what the batches will read; the first id is
/// its lowest). $1/$2 the window, $4 the mapping's product ids.
pub const EXCLUSIONS: &str = "
WITH t AS (
    SELECT id, CASE
        WHEN status IS DISTINCT FROM 'PAID' THEN 'status'
        WHEN paid_at IS NULL THEN 'no_paid_at'
        WHEN paid_at < $1::text::timestamptz THEN 'before_window'
        WHEN paid_at >= $2::text::timestamptz THEN 'after_window'
        WHEN product_id IS NULL OR product_id <> ALL ($4::text[]) THEN 'unmapped'
        ELSE 'candidate' END AS reason,
        CASE WHEN status IS DISTINCT FROM 'PAID' THEN status
             WHEN paid_at IS NOT NULL AND paid_at >= $1::text::timestamptz
                  AND paid_at < $2::text::timestamptz
                  AND (product_id IS NULL OR product_id <> ALL ($4::text[])) THEN product_id
        END AS key
    FROM transactions WHERE id <= $3
)
SELECT reason, key, count(*)::bigint,
       coalesce((array_agg(id ORDER BY id) FILTER (WHERE reason <> 'candidate'))[1:3], '{}')
FROM t GROUP BY reason, key ORDER BY reason, key";

/// The replicas' replay lag in seconds (0 with no replicas), how many
/// replicas there are, and whether this role may see their lag (others see
/// NULL): superusers and members of pg_read_all_stats (pg_monitor).
pub const REPLICA_LAG: &str = "
SELECT coalesce(max(extract(epoch FROM replay_lag)), 0)::float8, count(*)::bigint,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       OR pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')
FROM pg_stat_replication";

/// Whether `entitlements` exists and has a unique index on exactly
/// (source_trx_id, sku), which ON CONFLICT needs.
pub const SCHEMA_CHECK: &str = "
SELECT to_regclass('entitlements') IS NOT NULL,
       EXISTS (
           SELECT 1 FROM pg_index i
           WHERE i.indrelid = to_regclass('entitlements')
             AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
             AND i.indnatts = 2
             AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text)
                  FROM pg_attribute a
                  WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey))
                 = ARRAY['sku', 'source_trx_id'])";

/// The new-zone schema (re-runnable). Applied by `zoneguard backfill
/// --ensure-schema`; DDL on new-zone tables is allowed by the shipped policy.
pub const ENSURE_SCHEMA: &str = include_str!("../sql/new_zone.sql");
