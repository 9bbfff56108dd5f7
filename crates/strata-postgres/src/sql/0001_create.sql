-- Schema version 1 of Strata on PostgreSQL: the event log, views, checkpoints, idempotency
-- records and projection owners. Every table lives in the store's schema (the connection's
-- search_path); this file names none, so it runs unchanged in any schema.
--
-- A migration is never edited once released: a change is a new file.

-- The event log. `position` is assigned by the writer under a transaction-level advisory
-- lock, as head + 1, so positions are dense and commit in order (see writer.rs); it is
-- deliberately not a sequence. `recorded_at` is unix time in nanoseconds (timestamptz
-- keeps only microseconds, and a read event must equal the appended one exactly).
-- `schema_version` is bigint because the core's type is u32.
CREATE TABLE strata_events (
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
    -- Constraint names are what the writer matches on a unique violation (SQLSTATE 23505).
    CONSTRAINT strata_events_pkey PRIMARY KEY (position),
    CONSTRAINT strata_events_event_id_key UNIQUE (event_id),
    -- Also the index that reading a stream and finding its current version use.
    CONSTRAINT strata_events_stream_version_key UNIQUE (aggregate_type, aggregate_id, version)
);

-- One row per view instance: its JSON (as bytes: jsonb would refuse a \u0000 in a string
-- and reject a view the core accepts) and the position of the last event applied to it.
CREATE TABLE strata_views (
    projection text   NOT NULL,
    view_id    text   NOT NULL,
    data       bytea  NOT NULL,
    position   bigint NOT NULL,
    PRIMARY KEY (projection, view_id)
);

-- The position up to which each projection has applied events; moved only by a fenced
-- commit (see view_manager.rs).
CREATE TABLE strata_checkpoints (
    projection text   NOT NULL PRIMARY KEY,
    position   bigint NOT NULL
);

-- The first answer per idempotency key. `created_at` is kept so old keys can be expired.
CREATE TABLE strata_idempotency (
    key         text        NOT NULL PRIMARY KEY,
    fingerprint text        NOT NULL,
    answer      bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Who last acquired each lease (a projection or saga name). The lease itself is a session
-- advisory lock keyed by `lock_key`; this row only says who took it, so that any node can
-- show it, and `pg_locks` says whether it is still held.
CREATE TABLE strata_projection_owners (
    projection  text        NOT NULL PRIMARY KEY,
    owner       text        NOT NULL,
    lock_key    bigint      NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);
