-- Appends become one INSERT: each event row carries the stream version it
-- expects to take; the first trigger aborts the statement (only the
-- statement, not the surrounding group transaction) unless that is exactly
-- the stream's current version + 1, and the second records the new version.
-- One statement per append instead of two halves the writer's round trips.
CREATE TRIGGER polis_events_expect_version BEFORE INSERT ON polis_events
BEGIN
    SELECT RAISE(ABORT, 'polis: stream version conflict')
    WHERE NEW.stream_version
          <> COALESCE((SELECT version FROM polis_streams WHERE stream_id = NEW.stream_id), 0) + 1;
END;

CREATE TRIGGER polis_events_bump_stream AFTER INSERT ON polis_events
BEGIN
    INSERT INTO polis_streams (stream_id, version) VALUES (NEW.stream_id, NEW.stream_version)
    ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version;
END;
