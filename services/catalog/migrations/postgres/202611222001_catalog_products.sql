-- The catalog service's own table: one row per product.
CREATE TABLE products (
    -- 1-64 of A-Z a-z 0-9 - _, case-sensitive. Byte order ("C"), as on
    -- SQLite, so `ORDER BY sku` lists the same way on both backends
    -- whatever the database's locale.
    sku        TEXT COLLATE "C" PRIMARY KEY,
    name       TEXT NOT NULL,
    price      BIGINT NOT NULL CHECK (price >= 0), -- minor units
    created_at BIGINT NOT NULL,                    -- microseconds since the epoch
    updated_at BIGINT NOT NULL
);
