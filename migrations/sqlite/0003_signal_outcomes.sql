-- Every alert recorded ends with an outcome in the signal log: applied, rejected (with the
-- reason), expired (older than the policy allows) or superseded (a later alert was applied on
-- its instrument first). `alert_at` is the alert's own timestamp (RFC 3339 text, UTC): the
-- order signals of one instrument are applied in, and what "later" means.
ALTER TABLE signal_log ADD COLUMN reason TEXT;
ALTER TABLE signal_log ADD COLUMN alert_at TEXT;
CREATE INDEX signal_log_applied_alert_at ON signal_log (instrument, alert_at) WHERE status = 'applied';
