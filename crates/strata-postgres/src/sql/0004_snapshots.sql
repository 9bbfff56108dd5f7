-- Schema version 4: the newest snapshot of each aggregate that takes them. A snapshot is a
-- cache of a fold of the stream's events up to `version`; `format` is the aggregate's
-- snapshot format when it was written, so a changed state shape is ignored.
CREATE TABLE strata_snapshots (
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    version        bigint NOT NULL,
    format         bigint NOT NULL,
    state          bytea  NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
