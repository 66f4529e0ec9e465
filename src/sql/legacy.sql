-- The seed's schema (DMS section 1), legacy zone: the old system's tables,
-- which the new application may only read. The new zone is new_zone.sql.

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
