-- Replica bootstraps (polis-projection's `replica`). One row per source a
-- replica was (or is being) bootstrapped from: the snapshot's cursor (the
-- last key copied, '' before the first page), written in the same
-- transaction as the page of records appended to the log, so a bootstrap
-- cut short resumes where it stopped; `finished_at_us` once the last page
-- is in. No row: the replica has never been bootstrapped (a new service,
-- or its database was wiped), and the next start bootstraps it.
CREATE TABLE polis_replica_bootstraps (
    source         TEXT   PRIMARY KEY,
    cursor         TEXT   NOT NULL,
    records        BIGINT NOT NULL,
    started_at_us  BIGINT NOT NULL,
    finished_at_us BIGINT
);
