-- The notes service's own table: one row per note. (The stats service has no
-- migrations: its only tables are its projection's, created per generation.)
CREATE TABLE notes (
    id         TEXT PRIMARY KEY, -- UUIDv7
    author     TEXT NOT NULL,
    text       TEXT NOT NULL,
    written_at BIGINT NOT NULL   -- microseconds since the epoch, the NoteWritten event's time
);
