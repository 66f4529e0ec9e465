-- The seed's schema (DMS section 1): a legacy zone the new application may
-- only read, and a new zone it owns.

-- Legacy zone (read-only for the new application).
CREATE TABLE users (
    id          bigserial PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE transactions (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id),
    product_id  text NOT NULL,
    status      text NOT NULL,            -- PAID, PENDING, REFUNDED, ...
    amount      numeric(12, 2) NOT NULL,
    paid_at     timestamptz
);
CREATE INDEX transactions_user_id ON transactions (user_id);

CREATE TABLE user_assessments (
    id            bigserial PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users (id),
    product_id    text NOT NULL,
    answers       jsonb,
    completed_at  timestamptz
);
CREATE INDEX user_assessments_user_product ON user_assessments (user_id, product_id);

-- New zone (read-write for the new application).
CREATE TABLE entitlements (
    id             bigserial PRIMARY KEY,
    user_id        bigint NOT NULL REFERENCES users (id),
    source_trx_id  bigint REFERENCES transactions (id),
    sku            text NOT NULL,
    status         text NOT NULL CHECK (status IN ('ACTIVE', 'COMPLETED', 'REVOKED')),
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- One entitlement per (transaction, SKU): a second backfill run is harmless.
CREATE UNIQUE INDEX entitlements_source_sku ON entitlements (source_trx_id, sku);

CREATE TABLE commission_rules (
    id          bigserial PRIMARY KEY,
    logic_json  jsonb NOT NULL
);
