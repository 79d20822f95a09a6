-- Repairs sent by a reconciliation auditor (polis-audit). One row per
-- drift (its kind and subject) a repair was sent for, written in the same
-- transaction as the repair command's outbox entry: a drift is repaired
-- once, however many passes see it, and a restarted auditor remembers.
-- `confirmed_at_us` once the command's reply came back.
CREATE TABLE polis_audit_repairs (
    kind            TEXT   NOT NULL,
    subject         TEXT   NOT NULL,
    message_id      TEXT   NOT NULL,
    message_type    TEXT   NOT NULL,
    sent_at_us      BIGINT NOT NULL,
    confirmed_at_us BIGINT,
    PRIMARY KEY (kind, subject)
);
