-- The customer replica becomes a projection (crate::replica): the view
-- `payment_customers` over the live generation's table, built from the
-- customer events ingested into the service's log and bootstrapped from the
-- customer service's snapshot, which brings back the rows dropped here.
DROP TABLE payment_customers;

-- What an authorization locks to serialize the credit checks of one
-- customer: a row per customer, written by nothing else.
CREATE TABLE payment_credit_locks (
    customer_id TEXT PRIMARY KEY
);
