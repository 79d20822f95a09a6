-- Publishing deletes a message from polis_outbox and records it in
-- polis_outbox_published (ADR 0003, "Marking published").
--
-- Marking published used to be an UPDATE of published_at, a column in both
-- partial indexes: never a HOT update, so each mark wrote a new copy of the
-- whole row plus three index entries (~770 B of WAL per message). A DELETE
-- touches only the heap tuple's header, and the narrow record below has no
-- B-tree to maintain: the mark costs a fraction, and polis_outbox, now holding
-- only unpublished rows, needs no partial index (one index entry less per send).
--
-- The record keeps, for the retention period, when each message was
-- published; purge deletes it by published_at, found through a BRIN index
-- (records are appended in publication order, so block ranges are tight).
DROP INDEX polis_outbox_unpublished;
DROP INDEX polis_outbox_published;

CREATE TABLE polis_outbox_published (
    message_id   UUID        NOT NULL,
    position     BIGINT      NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    published_at TIMESTAMPTZ NOT NULL
);

INSERT INTO polis_outbox_published (message_id, position, created_at, published_at)
SELECT message_id, position, created_at, published_at FROM polis_outbox
WHERE published_at IS NOT NULL ORDER BY published_at, position;
DELETE FROM polis_outbox WHERE published_at IS NOT NULL;
ALTER TABLE polis_outbox DROP COLUMN published_at;

CREATE INDEX polis_outbox_published_at ON polis_outbox_published USING brin (published_at)
    WITH (autosummarize = on);
