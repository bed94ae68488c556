-- Per-company keys, stored only wrapped by the master key (which never
-- enters the database), and the first form of the audit trail.

CREATE TABLE company_keys (
  company_id BIGINT NOT NULL REFERENCES companies(id),
  purpose TEXT NOT NULL,              -- data | index | audit_signing
  version BIGINT NOT NULL,
  wrapped {blob} NOT NULL,            -- nonce ‖ AES-256-GCM(master key, key)
  wrap_key_id TEXT NOT NULL,          -- which master key wrapped it
  status TEXT NOT NULL,               -- active | retiring | retired
  created_at BIGINT NOT NULL,
  retired_at BIGINT,
  PRIMARY KEY (company_id, purpose, version)
);

-- Re-encryption after a data-key rotation; resumable after a restart.
CREATE TABLE key_rotations (
  company_id BIGINT NOT NULL REFERENCES companies(id),
  to_version BIGINT NOT NULL,
  started_at BIGINT NOT NULL,
  finished_at BIGINT,
  after_record BIGINT NOT NULL,       -- records with a larger id are still to do
  records_done BIGINT NOT NULL,
  PRIMARY KEY (company_id, to_version)
);

-- The audit log: one hash chain per company (chain = company id; 0 for
-- events of no company). Each event's hash covers the previous hash and a
-- canonical encoding of the event; the head records where each chain ends;
-- checkpoints sign a chain position with the company's Ed25519 key. No
-- foreign key to companies: a deleted company's trail stays as evidence.
CREATE TABLE audit_events (
  chain BIGINT NOT NULL,
  seq BIGINT NOT NULL,
  at BIGINT NOT NULL,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  target TEXT NOT NULL,
  outcome TEXT NOT NULL,
  reason TEXT,
  detail TEXT NOT NULL,               -- JSON; never a sensitive value
  session_ref TEXT,
  client_ip TEXT,
  user_agent TEXT,
  request_id TEXT,
  prev_hash {blob} NOT NULL,
  hash {blob} NOT NULL,
  PRIMARY KEY (chain, seq)
);
CREATE INDEX audit_events_by_time ON audit_events (chain, at);

CREATE TABLE audit_heads (
  chain BIGINT PRIMARY KEY,
  seq BIGINT NOT NULL,
  hash {blob} NOT NULL
);

CREATE TABLE audit_checkpoints (
  chain BIGINT NOT NULL,
  seq BIGINT NOT NULL,
  hash {blob} NOT NULL,
  at BIGINT NOT NULL,
  key_version BIGINT NOT NULL,
  public_key {blob} NOT NULL,
  signature {blob} NOT NULL,
  PRIMARY KEY (chain, seq)
);
