-- vigil schema for SQLite. Money and lot counts are TEXT holding exact decimals: SQLite has
-- no exact decimal type, so vigil reads and sums them in Rust. Timestamps are RFC 3339 text.

CREATE TABLE positions (
    id               TEXT    PRIMARY KEY NOT NULL,
    instrument       TEXT    NOT NULL,
    label            TEXT    NOT NULL,
    status           TEXT    NOT NULL,              -- open | closed
    lots             TEXT    NOT NULL,
    entry_price      TEXT    NOT NULL,
    stop_price       TEXT    NOT NULL,
    risk_amount      TEXT    NOT NULL,
    margin           TEXT    NOT NULL,
    is_base_position INTEGER NOT NULL,
    base_position_id TEXT    REFERENCES positions (id) ON DELETE SET NULL,
    entry_time       TEXT    NOT NULL,
    exit_time        TEXT,
    exit_price       TEXT,
    realized_pnl     TEXT,
    rollover_status  TEXT    NOT NULL DEFAULT 'none',
    version          INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX positions_instrument_entry_time ON positions (instrument, entry_time);
CREATE INDEX positions_rollover_status ON positions (rollover_status);
CREATE INDEX positions_status ON positions (status);

-- One row: the portfolio totals that recovery checks against the open positions.
CREATE TABLE portfolio_state (
    id              INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    initial_capital TEXT    NOT NULL,
    closed_equity   TEXT    NOT NULL,
    total_risk      TEXT    NOT NULL,
    margin_used     TEXT    NOT NULL,
    version         INTEGER NOT NULL DEFAULT 1,
    updated_at      TEXT    NOT NULL
);

CREATE TABLE pyramiding_state (
    instrument         TEXT PRIMARY KEY NOT NULL,
    last_pyramid_price TEXT NOT NULL,
    base_position_id   TEXT REFERENCES positions (id) ON DELETE SET NULL
);

CREATE TABLE instance_metadata (
    instance_id    TEXT PRIMARY KEY NOT NULL,
    status         TEXT NOT NULL,
    hostname       TEXT NOT NULL,
    started_at     TEXT NOT NULL,
    last_heartbeat TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);

CREATE TABLE signal_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint  TEXT NOT NULL UNIQUE,
    signal_type  TEXT NOT NULL,
    instrument   TEXT NOT NULL,
    payload      TEXT NOT NULL,
    status       TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    processed_at TEXT,
    instance_id  TEXT NOT NULL
);

CREATE TABLE statistics (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    taken_at       TEXT    NOT NULL,
    instance_id    TEXT    NOT NULL,
    open_positions INTEGER NOT NULL,
    closed_equity  TEXT    NOT NULL,
    total_risk     TEXT    NOT NULL,
    margin_used    TEXT    NOT NULL
);
