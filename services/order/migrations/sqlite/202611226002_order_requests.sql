-- Idempotency keys of POST /orders (the `Idempotency-Key` header): a client
-- that lost the answer sends the same request again with the same key and
-- gets the order it placed the first time instead of a second one. Keys
-- are the customer's own: another customer's key neither collides nor
-- shows. `request` is the canonical request (customer and sku/quantity
-- lines) the key was first used with; the key is refused for any other
-- request. Kept as long as the order: one small row per order placed with
-- a key.
CREATE TABLE order_requests (
    customer_id     TEXT   NOT NULL,
    idempotency_key TEXT   NOT NULL,
    order_id        TEXT   NOT NULL,
    request         TEXT   NOT NULL,
    created_at_us   BIGINT NOT NULL,
    PRIMARY KEY (customer_id, idempotency_key)
);
