-- The order service's read model of its Order aggregates, written in the
-- same transaction as each append (so it is never behind the event store):
-- it serves GET /orders/{id} and the per-customer list without replaying
-- streams. `deadline_id` is the choreography's per-order deadline (a
-- scheduled message), cancelled when the order reaches a decision.
CREATE TABLE orders (
    order_id      TEXT   PRIMARY KEY,
    customer_id   TEXT   NOT NULL,
    status        TEXT   NOT NULL,
    reason        TEXT,
    lines         TEXT   NOT NULL,
    total         BIGINT NOT NULL,
    version       BIGINT NOT NULL,
    deadline_id   TEXT,
    created_at_us BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL
);
CREATE INDEX orders_by_customer ON orders (customer_id, created_at_us);
