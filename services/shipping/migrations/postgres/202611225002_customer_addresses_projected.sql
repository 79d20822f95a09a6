-- The address replica becomes a projection (crate::replica): the view
-- `customer_addresses` over the live generation's table, built from the
-- customer events ingested into the service's log and bootstrapped from the
-- customer service's snapshot, which brings back the rows dropped here.
DROP TABLE customer_addresses;
