-- Messages scheduled for later (durable deadlines). Each row is a message as
-- the outbox stores it plus the time it is due; releasing it moves it into
-- polis_outbox in one transaction (earliest due first, rowid = scheduling
-- order among equal due times) and deletes it here. Unscheduling deletes it.
CREATE TABLE polis_scheduled (
    message_id     BLOB    PRIMARY KEY,
    due_at_us      INTEGER NOT NULL,
    kind           TEXT    NOT NULL,
    source         TEXT    NOT NULL,
    target         TEXT    NOT NULL,
    message_type   TEXT    NOT NULL,
    key            TEXT    NOT NULL,
    time_us        INTEGER NOT NULL,
    data           TEXT    NOT NULL,
    correlation_id BLOB,
    causation_id   BLOB,
    traceparent    TEXT,
    created_at_us  INTEGER NOT NULL
);
CREATE INDEX polis_scheduled_due ON polis_scheduled (due_at_us);
