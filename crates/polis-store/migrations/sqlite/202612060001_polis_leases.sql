-- Leases (polis-core's `lease` module): one owner at a time of a piece of
-- work — a projection, the outbox relay, the scheduler. The projections'
-- leases become one kind among others, named `projection:<name>`.
ALTER TABLE polis_projection_leases RENAME TO polis_leases;
UPDATE polis_leases SET name = 'projection:' || name;
