-- events.sqlite, schema version 2: idempotency records beside the events they vouch for.
--
-- A command sent with an idempotency key records the key in the transaction that appends its
-- events, with where they went (stream, version, position): after a crash both exist or
-- neither does. A request that appended nothing (a refusal) stores its answer instead.
-- `created_at` is unix time in nanoseconds; old keys are deleted a few at a time by age.
-- Until version 2 the records lived in views.sqlite, written after the append.
CREATE TABLE idempotency (
    key            TEXT    NOT NULL PRIMARY KEY,
    fingerprint    TEXT    NOT NULL,
    aggregate_type TEXT,
    aggregate_id   TEXT,
    version        INTEGER,
    position       INTEGER,
    answer         BLOB,
    created_at     INTEGER NOT NULL
) STRICT;

CREATE INDEX idempotency_by_age ON idempotency (created_at);
