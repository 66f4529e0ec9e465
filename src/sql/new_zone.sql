-- New zone (read-write for the new application). Re-runnable: also applied
-- through the guard by `zoneguard backfill --ensure-schema`.
CREATE TABLE IF NOT EXISTS entitlements (
    id             bigserial PRIMARY KEY,
    user_id        bigint NOT NULL REFERENCES users (id),
    source_trx_id  bigint REFERENCES transactions (id),
    sku            text NOT NULL,
    status         text NOT NULL CHECK (status IN ('ACTIVE', 'COMPLETED', 'REVOKED')),
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- One entitlement per (transaction, SKU): a second backfill run is harmless.
CREATE UNIQUE INDEX IF NOT EXISTS entitlements_source_sku ON entitlements (source_trx_id, sku);

CREATE TABLE IF NOT EXISTS commission_rules (
    id          bigserial PRIMARY KEY,
    logic_json  jsonb NOT NULL
);
