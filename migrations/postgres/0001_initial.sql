-- vigil schema for PostgreSQL. Money and lot counts are NUMERIC with no precision limit, so
-- every value round-trips exactly.

CREATE TABLE positions (
    id               TEXT        PRIMARY KEY,
    instrument       TEXT        NOT NULL,
    label            TEXT        NOT NULL,
    status           TEXT        NOT NULL,          -- open | closed
    lots             NUMERIC     NOT NULL,
    entry_price      NUMERIC     NOT NULL,
    stop_price       NUMERIC     NOT NULL,
    risk_amount      NUMERIC     NOT NULL,
    margin           NUMERIC     NOT NULL,
    is_base_position BOOLEAN     NOT NULL,
    base_position_id TEXT        REFERENCES positions (id) ON DELETE SET NULL,
    entry_time       TIMESTAMPTZ NOT NULL,
    exit_time        TIMESTAMPTZ,
    exit_price       NUMERIC,
    realized_pnl     NUMERIC,
    rollover_status  TEXT        NOT NULL DEFAULT 'none',
    version          BIGINT      NOT NULL DEFAULT 1
);
CREATE INDEX positions_instrument_entry_time ON positions (instrument, entry_time);
CREATE INDEX positions_rollover_status ON positions (rollover_status);
CREATE INDEX positions_status ON positions (status);

-- One row: the portfolio totals that recovery checks against the open positions.
CREATE TABLE portfolio_state (
    id              INTEGER     PRIMARY KEY CHECK (id = 1),
    initial_capital NUMERIC     NOT NULL,
    closed_equity   NUMERIC     NOT NULL,
    total_risk      NUMERIC     NOT NULL,
    margin_used     NUMERIC     NOT NULL,
    version         BIGINT      NOT NULL DEFAULT 1,
    updated_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE pyramiding_state (
    instrument         TEXT    PRIMARY KEY,
    last_pyramid_price NUMERIC NOT NULL,
    base_position_id   TEXT    REFERENCES positions (id) ON DELETE SET NULL
);

CREATE TABLE instance_metadata (
    instance_id    TEXT        PRIMARY KEY,
    status         TEXT        NOT NULL,
    hostname       TEXT        NOT NULL,
    started_at     TIMESTAMPTZ NOT NULL,
    last_heartbeat TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);

CREATE TABLE signal_log (
    id           BIGSERIAL   PRIMARY KEY,
    fingerprint  TEXT        NOT NULL UNIQUE,
    signal_type  TEXT        NOT NULL,
    instrument   TEXT        NOT NULL,
    payload      TEXT        NOT NULL,
    status       TEXT        NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL,
    processed_at TIMESTAMPTZ,
    instance_id  TEXT        NOT NULL
);

CREATE TABLE statistics (
    id             BIGSERIAL   PRIMARY KEY,
    taken_at       TIMESTAMPTZ NOT NULL,
    instance_id    TEXT        NOT NULL,
    open_positions BIGINT      NOT NULL,
    closed_equity  NUMERIC     NOT NULL,
    total_risk     NUMERIC     NOT NULL,
    margin_used    NUMERIC     NOT NULL
);
