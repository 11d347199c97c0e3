-- Leader election for background tasks. One row names the instance that leads and the fencing
-- token it leads with. Every background-task write checks its token against this row inside
-- its own transaction, so a former leader that has not noticed it lost the lease writes
-- nothing.

-- Fencing tokens only increase, whichever coordinator (Redis or the database) granted the
-- lease, and survive a Redis FLUSHALL.
CREATE SEQUENCE leader_fencing_token;

CREATE TABLE leadership (
    id            INTEGER     PRIMARY KEY CHECK (id = 1),
    instance_id   TEXT        NOT NULL,
    fencing_token BIGINT      NOT NULL,
    acquired_at   TIMESTAMPTZ NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL
);

ALTER TABLE statistics ADD COLUMN fencing_token BIGINT NOT NULL DEFAULT 0;
