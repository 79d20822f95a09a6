-- The catalog service's own table: one row per product.
CREATE TABLE products (
    sku        TEXT PRIMARY KEY,                   -- 1-64 of A-Z a-z 0-9 - _, case-sensitive
    name       TEXT NOT NULL,
    price      BIGINT NOT NULL CHECK (price >= 0), -- minor units
    created_at BIGINT NOT NULL,                    -- microseconds since the epoch
    updated_at BIGINT NOT NULL
);
