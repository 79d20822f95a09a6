-- Orchestrated sagas' durable state (polis-saga). One row per saga
-- instance; `version` guards against two writers updating one instance;
-- `deadline_id` is the scheduled message (polis_scheduled) that fires the
-- instance's current deadline, if any. Portable types: the saga runner
-- writes it through polis-store's portable SQL on both backends.
CREATE TABLE polis_sagas (
    saga_type     TEXT   NOT NULL,
    saga_id       TEXT   NOT NULL,
    state         TEXT   NOT NULL,
    finished      BOOLEAN NOT NULL DEFAULT FALSE,
    deadline_id   TEXT,
    deadline_at_us BIGINT,
    version       BIGINT NOT NULL,
    created_at_us BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL,
    PRIMARY KEY (saga_type, saga_id)
);
