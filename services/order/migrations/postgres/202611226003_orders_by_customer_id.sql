-- A customer's orders are listed a page at a time in order id order
-- (`WHERE customer_id = $1 AND order_id > $2 ORDER BY order_id LIMIT $3`);
-- this index serves every page without a sort. Order ids are UUIDv7, so id
-- order is the order they were placed in; the index by creation time it
-- replaces served the unpaged list.
DROP INDEX orders_by_customer;
CREATE INDEX orders_by_customer_id ON orders (customer_id, order_id);
