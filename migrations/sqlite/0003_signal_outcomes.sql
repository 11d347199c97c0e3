-- Every alert recorded ends with an outcome in the signal log: applied, rejected (with the
-- reason), expired (older than the policy allows) or superseded (a later alert was applied on
-- its instrument first: the latest alert recorded there, applied or not, is the line). Until then it may wait there as `queued`, with its payload. Times are
-- RFC 3339 text in UTC, one fixed width, so text order is time order. `alert_at` is the
-- alert's own timestamp: the order the signals of one instrument are applied in.
ALTER TABLE signal_log ADD COLUMN reason TEXT;
ALTER TABLE signal_log ADD COLUMN alert_at TEXT;
CREATE INDEX signal_log_settled_alert_at ON signal_log (instrument, alert_at) WHERE status <> 'queued';
CREATE INDEX signal_log_queued_alert_at ON signal_log (instrument, alert_at, fingerprint) WHERE status = 'queued';

-- Alerts an instance holds in its local intake journal and has not yet moved into the
-- signal log.
ALTER TABLE instance_metadata ADD COLUMN journal_pending INTEGER NOT NULL DEFAULT 0;
