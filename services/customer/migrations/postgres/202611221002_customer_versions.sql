-- Each customer's version: 1 at registration, one more at every change, and
-- carried by its events and its snapshot records, so a replica can tell a
-- newer state from an older one whatever order they reach it in.
ALTER TABLE customers ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
