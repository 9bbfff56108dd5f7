-- Schema version 2: parked instances and the events waiting on them, events skipped for
-- good, checkpoint revisions, and rebuilds.
--
-- A projection's rebuild is stored beside its live slot under the key `<name>#rebuild`
-- (views, parked events and the checkpoint row alike); its tables are `<table>__rebuild`.

-- Set while an instance is parked: the first waiting event, why it failed, how often it was
-- tried and when. A parked instance is never served as current.
ALTER TABLE strata_views
    ADD COLUMN parked_position bigint,
    ADD COLUMN parked_error    text,
    ADD COLUMN parked_attempts integer,
    ADD COLUMN parked_at       timestamptz;
CREATE INDEX strata_views_parked ON strata_views (projection, parked_position)
    WHERE parked_position IS NOT NULL;

-- The revision moves with every commit, so that an operator's retry (which moves no
-- position) fences a runner's batch and the other way round. Rebuild rows also say when
-- the rebuild began and, once it failed, why.
ALTER TABLE strata_checkpoints
    ADD COLUMN revision   bigint NOT NULL DEFAULT 0,
    ADD COLUMN started_at timestamptz,
    ADD COLUMN error      text;

-- The version of the projection's definition that built the live views: views written
-- before versions existed were built by version 1. A projection whose code declares
-- another version rebuilds them.
ALTER TABLE strata_checkpoints ADD COLUMN version integer NOT NULL DEFAULT 1;

-- Events waiting on a parked instance, as the event log holds them (the same columns), so
-- that a fixed decoder or view applies them on retry.
CREATE TABLE strata_parked_events (
    projection     text   NOT NULL,
    view_id        text   NOT NULL,
    position       bigint NOT NULL,
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    version        bigint NOT NULL,
    event_type     text   NOT NULL,
    schema_version bigint NOT NULL,
    payload        bytea  NOT NULL,
    event_id       uuid   NOT NULL,
    correlation_id text   NOT NULL,
    causation_id   text,
    user_id        text,
    recorded_at    bigint NOT NULL,
    PRIMARY KEY (projection, view_id, position)
);

-- Events an operator dropped from one instance, kept for good: rebuilds drop them too.
CREATE TABLE strata_skipped_events (
    projection text        NOT NULL,
    view_id    text        NOT NULL,
    position   bigint      NOT NULL,
    event_type text        NOT NULL,
    reason     text        NOT NULL,
    skipped_at timestamptz NOT NULL,
    PRIMARY KEY (projection, view_id, position)
);
