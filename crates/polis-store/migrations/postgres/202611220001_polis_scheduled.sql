-- Messages scheduled for later (durable deadlines). Each row is a message as
-- the outbox stores it plus the time it is due; releasing it moves it into
-- polis_outbox in one transaction (earliest due first, `seq` = scheduling
-- order among equal due times) and deletes it here. Unscheduling deletes it.
CREATE TABLE polis_scheduled (
    message_id     UUID        PRIMARY KEY,
    seq            BIGINT      GENERATED ALWAYS AS IDENTITY,
    due_at         TIMESTAMPTZ NOT NULL,
    kind           TEXT        NOT NULL,
    source         TEXT        NOT NULL,
    target         TEXT        NOT NULL,
    message_type   TEXT        NOT NULL,
    key            TEXT        NOT NULL,
    time           TIMESTAMPTZ NOT NULL,
    data           JSONB       NOT NULL,
    correlation_id UUID,
    causation_id   UUID,
    traceparent    TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX polis_scheduled_due ON polis_scheduled (due_at, seq);
