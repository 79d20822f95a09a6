-- Finished saga instances go with the purge of old inbox records
-- (`TransactionalStore::purge`, run by the relay with its retention, seven
-- days by default): long enough for a participant's late reply to still
-- find its instance and be compensated, and the table holds the sagas in
-- flight and those finished within that period, not the whole history.
-- The purge finds them by age through this index.
CREATE INDEX polis_sagas_finished_at ON polis_sagas (updated_at_us) WHERE finished;
