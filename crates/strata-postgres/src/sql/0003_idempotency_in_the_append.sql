-- Schema version 3: an idempotency key is recorded in the transaction that appends its
-- command's events, with where they went (stream, version, position), so that after a crash
-- both exist or neither does. A request that appended nothing stores its answer instead,
-- so `answer` may now be empty. Old keys are deleted a few at a time by age.
ALTER TABLE strata_idempotency
    ALTER COLUMN answer DROP NOT NULL,
    ADD COLUMN aggregate_type text,
    ADD COLUMN aggregate_id text,
    ADD COLUMN version bigint,
    ADD COLUMN position bigint;

CREATE INDEX strata_idempotency_by_age ON strata_idempotency (created_at);
