-- The customer service's own table: one row per customer.
CREATE TABLE customers (
    id           TEXT PRIMARY KEY,             -- UUIDv7, as text
    name         TEXT NOT NULL,
    email        TEXT NOT NULL,                -- as the customer gave it
    email_key    TEXT NOT NULL UNIQUE,         -- lower-cased: emails are unique whatever their case
    line1        TEXT NOT NULL,
    city         TEXT NOT NULL,
    postal_code  TEXT NOT NULL,
    country      TEXT NOT NULL,                -- ISO 3166-1 alpha-2
    credit_limit BIGINT NOT NULL CHECK (credit_limit >= 0), -- minor units
    created_at   BIGINT NOT NULL,              -- microseconds since the epoch
    updated_at   BIGINT NOT NULL
);
