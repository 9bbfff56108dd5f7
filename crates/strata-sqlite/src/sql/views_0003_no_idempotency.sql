-- views.sqlite, schema version 3: idempotency records moved to events.sqlite (its schema
-- version 2), where they commit with the events. Records written here before were written
-- after their append and are not carried over: they expire within a day anyway.
DROP TABLE idempotency;
