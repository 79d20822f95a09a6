-- A customer's exposure (the sum of its AUTHORIZED and CAPTURED payments)
-- is kept on its credit-lock row, changed in the transaction that changes
-- a payment, instead of summed over every payment the customer ever made
-- at each authorization: that sum grew with the customer's history (issue
-- 19). Filled here from the payments so far.
ALTER TABLE payment_credit_locks ADD COLUMN exposure BIGINT NOT NULL DEFAULT 0;
INSERT INTO payment_credit_locks (customer_id, exposure)
SELECT customer_id, CAST(SUM(amount) AS BIGINT) FROM payments
WHERE customer_id IS NOT NULL AND status IN ('AUTHORIZED', 'CAPTURED')
GROUP BY customer_id
ON CONFLICT (customer_id) DO UPDATE SET exposure = excluded.exposure;
