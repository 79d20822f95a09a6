-- Outgoing messages, written in the same transaction as the change that
-- caused them; the relay publishes them in position order (= commit order,
-- SQLite having one writer) and marks them published. Published rows are
-- deleted after the retention period.
CREATE TABLE polis_outbox (
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      BLOB    NOT NULL UNIQUE,
    kind            TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    target          TEXT    NOT NULL,
    message_type    TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    time_us         INTEGER NOT NULL,
    data            TEXT    NOT NULL,
    correlation_id  BLOB,
    causation_id    BLOB,
    traceparent     TEXT,
    created_at_us   INTEGER NOT NULL,
    published_at_us INTEGER
);
CREATE INDEX polis_outbox_unpublished ON polis_outbox (position) WHERE published_at_us IS NULL;
CREATE INDEX polis_outbox_published ON polis_outbox (published_at_us) WHERE published_at_us IS NOT NULL;

-- Message ids each consumer has processed, recorded with the effects.
CREATE TABLE polis_inbox (
    consumer        TEXT    NOT NULL,
    message_id      BLOB    NOT NULL,
    processed_at_us INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
) WITHOUT ROWID;
CREATE INDEX polis_inbox_processed ON polis_inbox (processed_at_us);

-- Messages a consumer could not handle, with the reason.
CREATE TABLE polis_dead_letters (
    id           BLOB    PRIMARY KEY,
    consumer     TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('dead', 'parked')),
    message      TEXT,
    message_id   BLOB,
    key          TEXT,
    raw          TEXT,
    error        TEXT    NOT NULL,
    attempts     INTEGER NOT NULL,
    failed_at_us INTEGER NOT NULL
);
CREATE INDEX polis_dead_letters_key ON polis_dead_letters (consumer, key);
