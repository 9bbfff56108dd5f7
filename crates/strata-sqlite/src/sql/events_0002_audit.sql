-- events.sqlite, schema version 2: indexes for audits. Finding every event of one request
-- (by correlation id) or one user must not scan the log; a stream's events already have
-- the stream index.
CREATE INDEX events_correlation ON events (correlation_id, position);
CREATE INDEX events_user ON events (user_id, position) WHERE user_id IS NOT NULL;
