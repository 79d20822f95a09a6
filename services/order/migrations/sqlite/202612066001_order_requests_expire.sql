-- Idempotency keys expire (`[order] idempotency_key_retention_s`, a day by
-- default, as payment APIs commonly keep them): a client retries a lost
-- answer within minutes, not months, and kept for as long as the orders
-- the table was one row per order for ever. The order service deletes
-- expired keys in the background, oldest first, through this index.
CREATE INDEX order_requests_created_at ON order_requests (created_at_us);
