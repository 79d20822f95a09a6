-- Projections (polis-projection). One row per generation of a projection's
-- read model: its code version, its state (`building` beside the live one,
-- `live`, `retired` until its tables are dropped, or `requested` by a
-- rebuild), and its checkpoint (`position`, the last global position
-- applied), written in the same transaction as the rows it reflects.
CREATE TABLE polis_projections (
    name             TEXT   NOT NULL,
    generation       BIGINT NOT NULL,
    version          BIGINT NOT NULL,
    state            TEXT   NOT NULL,
    position         BIGINT NOT NULL,
    last_event_at_us BIGINT,
    applied_at_us    BIGINT,
    created_at_us    BIGINT NOT NULL,
    PRIMARY KEY (name, generation)
);

-- One owner per projection: the instance holding an unexpired lease. Every
-- transaction that applies events renews it and fails if it was lost, so
-- two instances never both apply a projection; `token` counts handovers.
CREATE TABLE polis_projection_leases (
    name          TEXT   PRIMARY KEY,
    owner         TEXT   NOT NULL,
    expires_at_us BIGINT NOT NULL,
    token         BIGINT NOT NULL
);
