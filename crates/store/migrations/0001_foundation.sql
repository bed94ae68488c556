-- Written once for SQLite and PostgreSQL: {id} and {blob} are filled in per
-- dialect. Times are BIGINT microseconds since the Unix epoch (UTC); flags
-- are BIGINT 0/1; record data is JSON text.

CREATE TABLE companies (
  id {id},
  code TEXT NOT NULL UNIQUE,
  name TEXT NOT NULL,
  created_at BIGINT NOT NULL
);

CREATE TABLE departments (
  id {id},
  company_id BIGINT NOT NULL REFERENCES companies(id),
  code TEXT NOT NULL,
  name TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  UNIQUE (company_id, code)
);

CREATE TABLE users (
  id {id},
  company_id BIGINT NOT NULL REFERENCES companies(id),
  user_id TEXT NOT NULL,
  display_name TEXT NOT NULL,
  email TEXT,
  department_id BIGINT REFERENCES departments(id),
  status TEXT NOT NULL,
  is_master BIGINT NOT NULL DEFAULT 0,
  is_admin BIGINT NOT NULL DEFAULT 0,
  password_hash TEXT NOT NULL,
  password_changed_at BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  UNIQUE (company_id, user_id)
);

CREATE TABLE sessions (
  token_hash {blob} PRIMARY KEY,
  company_id BIGINT NOT NULL REFERENCES companies(id),
  user_key BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  created_at BIGINT NOT NULL,
  last_seen_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  client_ip TEXT,
  user_agent TEXT
);
CREATE INDEX sessions_by_user ON sessions (company_id, user_key);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

CREATE TABLE record_types (
  id {id},
  company_id BIGINT NOT NULL REFERENCES companies(id),
  type_key TEXT NOT NULL,
  name TEXT NOT NULL,
  classification TEXT NOT NULL,
  built_in BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  UNIQUE (company_id, type_key)
);

CREATE TABLE record_fields (
  id {id},
  company_id BIGINT NOT NULL REFERENCES companies(id),
  record_type_id BIGINT NOT NULL REFERENCES record_types(id),
  field_key TEXT NOT NULL,
  label TEXT NOT NULL,
  field_type TEXT NOT NULL,
  classification TEXT NOT NULL,
  pii_kind TEXT NOT NULL,
  required BIGINT NOT NULL,
  position BIGINT NOT NULL,
  UNIQUE (record_type_id, field_key)
);

CREATE TABLE records (
  id {id},
  public_id TEXT NOT NULL UNIQUE,
  company_id BIGINT NOT NULL REFERENCES companies(id),
  record_type_id BIGINT NOT NULL REFERENCES record_types(id),
  version BIGINT NOT NULL,
  data TEXT NOT NULL,
  department_id BIGINT REFERENCES departments(id),
  owner_key BIGINT NOT NULL REFERENCES users(id),
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  deleted_at BIGINT
);
CREATE INDEX records_by_type ON records (company_id, record_type_id, id);

CREATE TABLE record_versions (
  record_id BIGINT NOT NULL REFERENCES records(id),
  company_id BIGINT NOT NULL REFERENCES companies(id),
  version BIGINT NOT NULL,
  change_kind TEXT NOT NULL,
  data TEXT NOT NULL,
  deleted BIGINT NOT NULL,
  changed_at BIGINT NOT NULL,
  changed_by BIGINT NOT NULL REFERENCES users(id),
  PRIMARY KEY (record_id, version)
);

-- Exact-match lookup of field values (equality filters on lists).
CREATE TABLE record_index (
  record_id BIGINT NOT NULL REFERENCES records(id),
  field_key TEXT NOT NULL,
  company_id BIGINT NOT NULL REFERENCES companies(id),
  record_type_id BIGINT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (record_id, field_key)
);
CREATE INDEX record_index_lookup ON record_index (company_id, record_type_id, field_key, value, record_id);
