-- views.sqlite, schema version 1: view instances, projection checkpoints and idempotency
-- records. The file is separate from events.sqlite so that projection commits never wait
-- for the event writer's lock, nor it for theirs.

-- One row per view instance: its JSON and the position of the last event applied to it.
CREATE TABLE views (
    projection TEXT    NOT NULL,
    view_id    TEXT    NOT NULL,
    data       BLOB    NOT NULL,
    position   INTEGER NOT NULL,
    PRIMARY KEY (projection, view_id)
) STRICT, WITHOUT ROWID;

-- The position up to which each projection has applied events; moved only by a fenced
-- commit (see SqliteViewManager::commit).
CREATE TABLE checkpoints (
    projection TEXT    NOT NULL PRIMARY KEY,
    position   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- The first answer per idempotency key. `created_at` is unix microseconds, kept so that
-- old keys can be expired later.
CREATE TABLE idempotency (
    key         TEXT    NOT NULL PRIMARY KEY,
    fingerprint TEXT    NOT NULL,
    answer      BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
