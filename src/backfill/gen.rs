//! `zoneguard gen-legacy`: fills the legacy tables with generated users,
//! transactions and assessment answers, set-based (generate_series), for
//! the backfill's tests and benchmark. It writes legacy tables, so it must
//! connect to PostgreSQL directly, not through the guard.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::run::{connect, pg_error};

/// How much to generate. The data is deterministic for given sizes.
#[derive(Debug, Clone)]
pub struct GenOptions {
    pub database_url: String,
    pub transactions: i64,
    pub users: i64,
}

/// What was generated.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub users: i64,
    pub transactions: i64,
    pub assessments: i64,
    pub elapsed: Duration,
}

/// Transactions are made in chunks of this many rows, one statement each.
const CHUNK: i64 = 500_000;

/// New users get emails `gen-<run>-<n>@example.com`, so runs can repeat.
const USERS: &str = "
WITH ins AS (
    INSERT INTO users (email)
    SELECT 'gen-' || $1::text || '-' || g || '@example.com'
    FROM generate_series(1, $2::bigint) g
    RETURNING id
) SELECT min(id), max(id), count(*)::bigint FROM ins";

/// Products: 40% TALENT-BASIC, 30% TALENT-PRO, 20% TALENT-BUNDLE, 10%
/// LEGACY-WEBINAR. Status: 85% PAID, 10% PENDING (no paid_at), 5% REFUNDED.
/// paid_at spread over 2022-01-01 .. 2025-12-31 (UTC).
const TRANSACTIONS: &str = "
INSERT INTO transactions (user_id, product_id, status, amount, paid_at)
SELECT $1::bigint + (g * 7919) % $2::bigint,
       (ARRAY['TALENT-BASIC','TALENT-BASIC','TALENT-BASIC','TALENT-BASIC',
              'TALENT-PRO','TALENT-PRO','TALENT-PRO',
              'TALENT-BUNDLE','TALENT-BUNDLE','LEGACY-WEBINAR'])[1 + (g * 31) % 10],
       CASE WHEN (g * 13) % 20 < 17 THEN 'PAID'
            WHEN (g * 13) % 20 < 19 THEN 'PENDING' ELSE 'REFUNDED' END,
       (ARRAY[150000, 150000, 150000, 150000, 450000, 450000, 450000,
              700000, 700000, 50000])[1 + (g * 31) % 10],
       CASE WHEN (g * 13) % 20 BETWEEN 17 AND 18 THEN NULL
            ELSE timestamptz '2022-01-01 00:00+00'
                 + ((g * 104729) % (4 * 365 * 86400)) * interval '1 second' END
FROM generate_series($3::bigint, $4::bigint) g";

/// A third of the new users took a test for one product; some of those
/// left no answers: NULL (one in five), or empty (`{}`, `[]`, JSON null),
/// which the backfill counts as not tested.
const ASSESSMENTS: &str = "
INSERT INTO user_assessments (user_id, product_id, answers, completed_at)
SELECT u,
       (ARRAY['TALENT-BASIC','TALENT-PRO','TALENT-BUNDLE'])[1 + u % 3],
       CASE WHEN u % 5 = 0 THEN NULL
            WHEN u % 7 = 0 THEN '{}'::jsonb
            WHEN u % 11 = 0 THEN '[]'::jsonb
            WHEN u % 13 = 0 THEN 'null'::jsonb
            ELSE '{\"q1\": \"a\"}'::jsonb END,
       timestamptz '2024-01-01 00:00+00'
FROM generate_series($1::bigint, $2::bigint) u
WHERE u % 3 = 0";

async fn exec(
    c: &Client,
    what: &str,
    sql: &str,
    p: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> anyhow::Result<u64> {
    c.execute(sql, p)
        .await
        .map_err(|e| anyhow::anyhow!("gen-legacy: cannot {what}: {}", pg_error(&e)))
}

/// Generates the rows; `progress` is told after each chunk.
pub async fn generate(
    opts: &GenOptions,
    mut progress: impl FnMut(&Generated),
) -> anyhow::Result<Generated> {
    if opts.users < 1 || opts.transactions < 0 {
        anyhow::bail!("gen-legacy: --users must be at least 1 and --transactions not negative");
    }
    let started = Instant::now();
    let c = connect(
        &opts.database_url,
        Duration::from_secs(10),
        "zoneguard-gen-legacy",
    )
    .await?;
    let tag = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let row = c
        .query_one(USERS, &[&tag, &opts.users])
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "gen-legacy: cannot insert users (connect directly, not through the guard): {}",
                pg_error(&e)
            )
        })?;
    let (lo, hi): (i64, i64) = (row.get(0), row.get(1));
    let mut out = Generated {
        users: row.get(2),
        ..Generated::default()
    };
    let mut start = 1i64;
    while start <= opts.transactions {
        let end = (start + CHUNK - 1).min(opts.transactions);
        out.transactions += exec(
            &c,
            "insert transactions",
            TRANSACTIONS,
            &[&lo, &opts.users, &start, &end],
        )
        .await? as i64;
        start = end + 1;
        out.elapsed = started.elapsed();
        progress(&out);
    }
    out.assessments = exec(&c, "insert user_assessments", ASSESSMENTS, &[&lo, &hi]).await? as i64;
    c.batch_execute("ANALYZE users; ANALYZE transactions; ANALYZE user_assessments")
        .await
        .map_err(|e| anyhow::anyhow!("gen-legacy: ANALYZE failed: {}", pg_error(&e)))?;
    out.elapsed = started.elapsed();
    Ok(out)
}
