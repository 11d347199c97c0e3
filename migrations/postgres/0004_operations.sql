-- The operator's kill switch (vigil pause, vigil resume): one row that every instance reads
-- at each heartbeat. `pause` is `none`, `all` (nothing is applied) or `exits_only`.
CREATE TABLE operator_switch (
    id         SMALLINT    PRIMARY KEY CHECK (id = 1),
    pause      TEXT        NOT NULL CHECK (pause IN ('none', 'all', 'exits_only')),
    reason     TEXT        NOT NULL DEFAULT '',
    changed_at TIMESTAMPTZ NOT NULL,
    changed_by TEXT        NOT NULL
);

-- Every start of `vigil run`, with how the previous run of that instance ended. The restart
-- budget counts the starts after an unclean end (`halted`, or `killed`: it never recorded
-- `stopped` or `crashed`) within the policy's [restarts] window, across every instance;
-- `vigil restarts reset` stops counting the ones before it.
CREATE TABLE instance_starts (
    id           BIGSERIAL   PRIMARY KEY,
    instance_id  TEXT        NOT NULL,
    hostname     TEXT        NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    previous_end TEXT        NOT NULL CHECK (previous_end IN ('first', 'stopped', 'halted', 'killed')),
    counted      BOOLEAN     NOT NULL
);
CREATE INDEX instance_starts_counted ON instance_starts (started_at) WHERE counted;
