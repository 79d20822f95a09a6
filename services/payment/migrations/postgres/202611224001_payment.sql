-- The payment service's own tables.
--
-- A replica of the customers' credit data, fed by the customer service's
-- CustomerRegistered / CustomerUpdated events (full state each time). An
-- authorization takes its customer's row lock first, so two authorizations
-- of one customer cannot both pass the credit check.
CREATE TABLE payment_customers (
    id            TEXT   PRIMARY KEY,
    email         TEXT   NOT NULL,
    credit_limit  BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL
);

-- One payment per order. A void that arrives before any authorization
-- leaves a tombstone: status VOIDED, no customer, amount 0; a later
-- authorization of that order then fails with TIMEOUT.
CREATE TABLE payments (
    order_id      TEXT   PRIMARY KEY,
    customer_id   TEXT,
    amount        BIGINT NOT NULL,
    status        TEXT   NOT NULL
        CHECK (status IN ('AUTHORIZED', 'CAPTURED', 'VOIDED', 'REFUNDED', 'FAILED')),
    reason        TEXT,
    created_at_us BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL
);

-- The credit check sums a customer's AUTHORIZED and CAPTURED payments.
CREATE INDEX payments_customer_status ON payments (customer_id, status);
