-- Leader election for background tasks. SQLite serves one instance, which leads its own
-- background tasks; the row and the fencing check keep the code path the same as on
-- PostgreSQL. Every background-task write checks its token against this row inside its own
-- transaction.

CREATE TABLE leadership (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    instance_id   TEXT    NOT NULL,
    fencing_token INTEGER NOT NULL,
    acquired_at   TEXT    NOT NULL,
    expires_at    TEXT    NOT NULL
);

ALTER TABLE statistics ADD COLUMN fencing_token INTEGER NOT NULL DEFAULT 0;
