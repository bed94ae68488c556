-- IP allow and block lists, per company (user_key NULL) and per user.
-- Networks are stored in CIDR form and compared as networks, never as
-- string prefixes.
CREATE TABLE ip_rules (
  id {id},
  company_id BIGINT NOT NULL REFERENCES companies(id),
  user_key BIGINT REFERENCES users(id) ON DELETE CASCADE,
  kind TEXT NOT NULL,                 -- allow | block
  network TEXT NOT NULL,
  label TEXT NOT NULL,
  created_at BIGINT NOT NULL
);
CREATE INDEX ip_rules_by_company ON ip_rules (company_id, user_key);
