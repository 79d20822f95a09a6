-- The shipping service's own tables (distributed deployment).

-- One shipment per order. A CANCELLED row with no address is a tombstone:
-- the cancellation came before any scheduling.
CREATE TABLE shipments (
    order_id    TEXT PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE, -- the shipment's own id (UUIDv7)
    customer_id TEXT,
    status      TEXT NOT NULL CHECK (status IN ('SCHEDULED', 'CANCELLED', 'FAILED')),
    line1       TEXT,
    city        TEXT,
    postal_code TEXT,
    country     TEXT,
    reason      TEXT,                 -- why a FAILED shipment failed
    created_at  BIGINT NOT NULL, -- microseconds since the epoch
    updated_at  BIGINT NOT NULL
);

-- The customer service's addresses, replicated from its events; updated_at
-- is the time of the event that wrote the row, so an older event replayed
-- late never overwrites a newer address.
CREATE TABLE customer_addresses (
    customer_id TEXT PRIMARY KEY,
    line1       TEXT NOT NULL,
    city        TEXT NOT NULL,
    postal_code TEXT NOT NULL,
    country     TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
