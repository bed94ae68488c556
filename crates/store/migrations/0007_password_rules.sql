-- A company's password rules (defaults apply where a company has none),
-- and earlier password hashes for the reuse rule.
CREATE TABLE password_rules (
  company_id BIGINT PRIMARY KEY REFERENCES companies(id),
  min_length BIGINT NOT NULL,
  min_score BIGINT NOT NULL,
  require_classes BIGINT NOT NULL,
  history BIGINT NOT NULL
);

CREATE TABLE password_history (
  company_id BIGINT NOT NULL REFERENCES companies(id),
  user_key BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  password_hash TEXT NOT NULL,
  changed_at BIGINT NOT NULL
);
CREATE INDEX password_history_by_user ON password_history (company_id, user_key, changed_at);
