-- Intrusion detection: per-company detector rules (defaults apply where a
-- company has none), address blocks and account locks (in the store, so
-- they hold across restarts and nodes), the incident register, what each
-- user's sign-ins looked like (addresses, hours), and the alert outbox
-- (deliveries survive restarts and are retried with backoff).

CREATE TABLE detector_rules (
  chain BIGINT NOT NULL,
  detector TEXT NOT NULL,
  enabled BIGINT NOT NULL,
  threshold BIGINT NOT NULL,
  window_secs BIGINT NOT NULL,
  response TEXT NOT NULL,
  block_secs BIGINT NOT NULL,
  PRIMARY KEY (chain, detector)
);

CREATE TABLE address_blocks (
  chain BIGINT NOT NULL,              -- company id, or 0 for the whole server
  address TEXT NOT NULL,
  until BIGINT NOT NULL,
  reason TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (chain, address)
);

CREATE TABLE account_locks (
  company_id BIGINT NOT NULL,
  user_key BIGINT NOT NULL,
  until BIGINT NOT NULL,
  reason TEXT NOT NULL,
  PRIMARY KEY (company_id, user_key)
);

CREATE TABLE incidents (
  id {id},
  chain BIGINT NOT NULL,
  opened_at BIGINT NOT NULL,
  detector TEXT NOT NULL,
  subject TEXT NOT NULL,
  summary TEXT NOT NULL,
  response TEXT NOT NULL,
  status TEXT NOT NULL,               -- open | acknowledged | resolved
  notes TEXT NOT NULL,                -- JSON list of {at, by, text}
  updated_at BIGINT NOT NULL
);
CREATE INDEX incidents_by_chain ON incidents (chain, id);

CREATE TABLE sign_in_history (
  company_id BIGINT NOT NULL,
  user_key BIGINT NOT NULL,
  kind TEXT NOT NULL,                 -- address | hour
  value TEXT NOT NULL,
  seen BIGINT NOT NULL,
  PRIMARY KEY (company_id, user_key, kind, value)
);

CREATE TABLE alert_outbox (
  id {id},
  payload TEXT NOT NULL,
  attempts BIGINT NOT NULL,
  next_at BIGINT NOT NULL,
  delivered_at BIGINT,
  last_error TEXT
);

-- How far each chain has been forwarded to the syslog receiver.
CREATE TABLE forward_cursors (
  chain BIGINT PRIMARY KEY,
  seq BIGINT NOT NULL
);

-- Where each chain's live log begins after archiving: the last archived
-- event's sequence number and hash (verification continues from here).
CREATE TABLE audit_anchors (
  chain BIGINT PRIMARY KEY,
  seq BIGINT NOT NULL,
  hash {blob} NOT NULL,
  archived_at BIGINT NOT NULL
);
