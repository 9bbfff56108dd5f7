-- Schema version 3: indexes for audits. Finding every event of one request (by
-- correlation id) or one user must not scan the log; a stream's events already have the
-- stream index.
CREATE INDEX strata_events_correlation ON strata_events (correlation_id, position);
CREATE INDEX strata_events_user ON strata_events (user_id, position) WHERE user_id IS NOT NULL;
