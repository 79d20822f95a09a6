-- Global positions come from a sequence, which hands out values at insert
-- time, not commit time. Readers therefore never trust "position > checkpoint"
-- alone: see docs/adr/0001-global-ordering.md for the visibility horizon that
-- makes the global log safe to follow. Every appending transaction must have
-- its transaction id assigned (by writing polis_streams) BEFORE it draws from
-- this sequence; the append statement guarantees that.
CREATE SEQUENCE polis_event_position AS BIGINT START 1 CACHE 1;

CREATE TABLE polis_events (
    position        BIGINT      PRIMARY KEY,
    event_id        UUID        NOT NULL UNIQUE,
    stream_id       TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL,
    event_type      TEXT        NOT NULL,
    schema_version  INTEGER     NOT NULL,
    time            TIMESTAMPTZ NOT NULL,
    data            JSONB       NOT NULL,
    correlation_id  UUID,
    causation_id    UUID,
    traceparent     TEXT,
    CONSTRAINT polis_events_stream_version_key UNIQUE (stream_id, stream_version)
);

-- One row per stream: its current version. Appends lock and bump it, which
-- serializes writers of one stream and nothing else.
CREATE TABLE polis_streams (
    stream_id TEXT   PRIMARY KEY,
    version   BIGINT NOT NULL
);

CREATE TABLE polis_snapshots (
    stream_id      TEXT        PRIMARY KEY,
    version        BIGINT      NOT NULL,
    schema_version INTEGER     NOT NULL,
    state          JSONB       NOT NULL,
    taken_at       TIMESTAMPTZ NOT NULL
);
