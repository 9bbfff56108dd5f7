-- events.sqlite, schema version 3: the newest snapshot of each aggregate that takes them.
-- A snapshot is a cache of a fold of the stream's events up to `version`; `format` is the
-- aggregate's snapshot format when it was written, so a changed state shape is ignored.
CREATE TABLE snapshots (
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    format         INTEGER NOT NULL,
    state          BLOB    NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
) STRICT, WITHOUT ROWID;
