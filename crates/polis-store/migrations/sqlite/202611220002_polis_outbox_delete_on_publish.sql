-- Publishing deletes a message from polis_outbox and records it in
-- polis_outbox_published (ADR 0003, "Marking published"), as on PostgreSQL:
-- polis_outbox holds only unpublished rows and needs no partial index, and a
-- mark rewrites no message row. `position` stays AUTOINCREMENT, so deleting
-- the newest rows never lets a position be handed out twice.
DROP INDEX polis_outbox_unpublished;
DROP INDEX polis_outbox_published;

CREATE TABLE polis_outbox_published (
    message_id      BLOB    NOT NULL,
    position        INTEGER NOT NULL,
    created_at_us   INTEGER NOT NULL,
    published_at_us INTEGER NOT NULL
);

INSERT INTO polis_outbox_published (message_id, position, created_at_us, published_at_us)
SELECT message_id, position, created_at_us, published_at_us FROM polis_outbox
WHERE published_at_us IS NOT NULL ORDER BY published_at_us, position;
DELETE FROM polis_outbox WHERE published_at_us IS NOT NULL;
ALTER TABLE polis_outbox DROP COLUMN published_at_us;

-- For purge: records are appended in publication order, so this index only
-- ever grows at its right edge.
CREATE INDEX polis_outbox_published_at ON polis_outbox_published (published_at_us);
