-- The stock list is paged by sku (`WHERE sku > $1 ORDER BY sku`): byte
-- order ("C"), as on SQLite and in the catalog, so a page ends where a
-- client comparing skus as bytes expects, whatever the database's locale.
-- (SQLite compares text byte for byte already: it needs no migration.)
ALTER TABLE stock ALTER COLUMN sku TYPE TEXT COLLATE "C";
