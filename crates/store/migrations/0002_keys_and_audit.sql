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

CREATE TABLE audit_events (
  id {id},
  company_id BIGINT REFERENCES companies(id),
  at BIGINT NOT NULL,
  actor TEXT NOT NULL,                -- user ID, or 'system'
  action TEXT NOT NULL,
  target TEXT NOT NULL,
  outcome TEXT NOT NULL,
  detail TEXT NOT NULL,               -- JSON; never a sensitive value
  request_id TEXT,
  client_ip TEXT
);
CREATE INDEX audit_events_by_company ON audit_events (company_id, id);
