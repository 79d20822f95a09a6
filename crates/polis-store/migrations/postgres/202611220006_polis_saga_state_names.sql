-- Each saga instance's state name (`Saga::state_name`: a phase such as
-- `reserving`, or `running` / `finished` by default), written with its
-- state, so operators and metrics can ask "how many sagas are in flight,
-- of which type, in which state" without decoding any state.
--
-- Rows written before this migration get `finished` (an instant ALTER on
-- both backends: no rewrite of the possibly millions of finished rows),
-- then the unfinished ones, few by nature, are set to `running`. Every
-- save writes the name, so the default only ever names rows of old writers.
ALTER TABLE polis_sagas ADD COLUMN state_name TEXT NOT NULL DEFAULT 'finished';
UPDATE polis_sagas SET state_name = 'running' WHERE NOT finished;

-- Sagas in flight by type and state: counting them, or listing those of a
-- state, reads only the unfinished rows, however many have finished.
CREATE INDEX polis_sagas_in_flight ON polis_sagas (saga_type, state_name, saga_id, updated_at_us) WHERE NOT finished;
