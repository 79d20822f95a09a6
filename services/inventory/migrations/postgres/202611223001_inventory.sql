-- The inventory service's own tables (distributed deployment).

-- Stock per sku. `available + reserved` is what the shop holds; the CHECKs
-- are the last line of defence against overselling (reservations use guarded
-- updates and never reach them).
CREATE TABLE stock (
    sku        TEXT PRIMARY KEY,
    available  BIGINT NOT NULL CHECK (available >= 0),
    reserved   BIGINT NOT NULL CHECK (reserved >= 0),
    updated_at BIGINT NOT NULL -- microseconds since the epoch
);

-- One reservation per order: what was reserved (or asked for, when it
-- failed), and the outcome, so a repeated request re-sends it. A RELEASED
-- row with no items is a tombstone: the release came first.
CREATE TABLE reservations (
    order_id    TEXT PRIMARY KEY,
    customer_id TEXT,
    total       BIGINT,
    status      TEXT NOT NULL CHECK (status IN ('RESERVED', 'RELEASED', 'FAILED')),
    items       TEXT NOT NULL, -- JSON array of {sku, quantity}, sorted by sku
    reason      TEXT,          -- why a FAILED reservation failed
    short_sku   TEXT,          -- the first sku that was short
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
