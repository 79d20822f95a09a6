-- Outgoing messages, written in the same transaction as the change that
-- caused them. Writers take a transaction-scoped advisory lock on the
-- message key before inserting, so for one key, position order is commit
-- order, and the relay (which publishes in position order) keeps it.
CREATE TABLE polis_outbox (
    position       BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id     UUID        NOT NULL UNIQUE,
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
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at   TIMESTAMPTZ
);
CREATE INDEX polis_outbox_unpublished ON polis_outbox (position) WHERE published_at IS NULL;
CREATE INDEX polis_outbox_published ON polis_outbox (published_at) WHERE published_at IS NOT NULL;

-- Message ids each consumer has processed, recorded with the effects.
CREATE TABLE polis_inbox (
    consumer     TEXT        NOT NULL,
    message_id   UUID        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX polis_inbox_processed ON polis_inbox (processed_at);

-- Messages a consumer could not handle, with the reason.
CREATE TABLE polis_dead_letters (
    id         UUID        PRIMARY KEY,
    consumer   TEXT        NOT NULL,
    status     TEXT        NOT NULL CHECK (status IN ('dead', 'parked')),
    message    JSONB,
    message_id UUID,
    key        TEXT,
    raw        TEXT,
    error      TEXT        NOT NULL,
    attempts   INTEGER     NOT NULL,
    failed_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX polis_dead_letters_key ON polis_dead_letters (consumer, key);
