-- events.sqlite, schema version 1: the event log.
--
-- `position` is the rowid alias. The single writer thread assigns it densely (head + 1) in
-- commit order, so readers never find a hole that fills in later.
-- `event_id` holds the 16 bytes of the UUID; `recorded_at` is unix time in nanoseconds, so
-- that a read event equals the appended one exactly.
-- STRICT makes SQLite refuse values of the wrong type instead of storing them silently.
CREATE TABLE events (
    position       INTEGER PRIMARY KEY,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        BLOB    NOT NULL,
    event_id       BLOB    NOT NULL UNIQUE,
    correlation_id TEXT    NOT NULL,
    causation_id   TEXT,
    user_id        TEXT,
    recorded_at    INTEGER NOT NULL,
    -- Also the index that reading a stream and finding its current version use.
    UNIQUE (aggregate_type, aggregate_id, version)
) STRICT;
