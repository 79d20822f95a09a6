-- The event log. `position` is the rowid: SQLite has one writer at a time, so
-- positions are handed out in commit order and readers can never skip one.
-- AUTOINCREMENT: a position is never handed out twice, even if the newest
-- events were ever deleted, so a reader's checkpoint stays meaningful.
CREATE TABLE polis_events (
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        BLOB    NOT NULL UNIQUE,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    time_us         INTEGER NOT NULL,
    data            TEXT    NOT NULL,
    correlation_id  BLOB,
    causation_id    BLOB,
    traceparent     TEXT,
    UNIQUE (stream_id, stream_version)
);

-- One row per stream: its current version, checked and bumped by every append.
CREATE TABLE polis_streams (
    stream_id TEXT    PRIMARY KEY,
    version   INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE polis_snapshots (
    stream_id      TEXT    PRIMARY KEY,
    version        INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    state          TEXT    NOT NULL,
    taken_at_us    INTEGER NOT NULL
) WITHOUT ROWID;
