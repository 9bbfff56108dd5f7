-- views.sqlite, schema version 2: parked instances and the events waiting on them, events
-- skipped for good, checkpoint revisions, and rebuilds.
--
-- A projection's rebuild is stored beside its live slot under the key `<name>#rebuild`
-- (views, parked events and the checkpoint row alike); its tables are `<table>__rebuild`.

-- Set while an instance is parked: the first waiting event, why it failed, how often it was
-- tried and when (unix microseconds). A parked instance is never served as current.
ALTER TABLE views ADD COLUMN parked_position INTEGER;
ALTER TABLE views ADD COLUMN parked_error TEXT;
ALTER TABLE views ADD COLUMN parked_attempts INTEGER;
ALTER TABLE views ADD COLUMN parked_at INTEGER;
CREATE INDEX views_parked ON views (projection, parked_position) WHERE parked_position IS NOT NULL;

-- The revision moves with every commit, so that an operator's retry (which moves no
-- position) fences a runner's batch and the other way round. Rebuild rows also say when
-- the rebuild began (unix microseconds) and, once it failed, why.
ALTER TABLE checkpoints ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE checkpoints ADD COLUMN started_at INTEGER;
ALTER TABLE checkpoints ADD COLUMN error TEXT;

-- The version of the projection's definition that built the live views: views written
-- before versions existed were built by version 1. A projection whose code declares
-- another version rebuilds them.
ALTER TABLE checkpoints ADD COLUMN version INTEGER NOT NULL DEFAULT 1;

-- Events waiting on a parked instance, as the event store holds them (the same columns),
-- so that a fixed decoder or view applies them on retry.
CREATE TABLE parked_events (
    projection     TEXT    NOT NULL,
    view_id        TEXT    NOT NULL,
    position       INTEGER NOT NULL,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        BLOB    NOT NULL,
    event_id       BLOB    NOT NULL,
    correlation_id TEXT    NOT NULL,
    causation_id   TEXT,
    user_id        TEXT,
    recorded_at    INTEGER NOT NULL,
    PRIMARY KEY (projection, view_id, position)
) STRICT, WITHOUT ROWID;

-- Events an operator dropped from one instance, kept for good: rebuilds drop them too.
CREATE TABLE skipped_events (
    projection TEXT    NOT NULL,
    view_id    TEXT    NOT NULL,
    position   INTEGER NOT NULL,
    event_type TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    skipped_at INTEGER NOT NULL,
    PRIMARY KEY (projection, view_id, position)
) STRICT, WITHOUT ROWID;
