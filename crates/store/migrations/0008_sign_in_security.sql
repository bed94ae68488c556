-- Sign-in security, second part: lockout with growing durations and the
-- per-address failure throttle (counters in the store, so they hold across
-- restarts and nodes), two-step verification (TOTP, recovery codes,
-- passkeys) with its sign-in challenges, password age rules and per-user
-- password rules, per-user idle timeouts, sessions limited to enrolment or a
-- password change, and API keys.

CREATE TABLE sign_in_policy (
  company_id BIGINT PRIMARY KEY REFERENCES companies(id),
  lockout_threshold BIGINT NOT NULL,
  lockout_window_secs BIGINT NOT NULL,
  lockout_base_secs BIGINT NOT NULL,
  lockout_max_secs BIGINT NOT NULL,
  lockout_until_unlocked BIGINT NOT NULL,
  address_threshold BIGINT NOT NULL,
  address_block_secs BIGINT NOT NULL,
  two_factor TEXT NOT NULL            -- off | admins | all | selected
);

CREATE TABLE sign_in_failures (
  chain BIGINT NOT NULL,
  subject TEXT NOT NULL,              -- user:<key> or ip:<address>
  failures BIGINT NOT NULL,
  window_start BIGINT NOT NULL,
  lockouts BIGINT NOT NULL,
  PRIMARY KEY (chain, subject)
);

ALTER TABLE company_settings ADD COLUMN idle_minutes BIGINT NOT NULL DEFAULT 30;
ALTER TABLE users ADD COLUMN idle_minutes BIGINT;
ALTER TABLE users ADD COLUMN two_factor_required BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN must_change_password BIGINT NOT NULL DEFAULT 0;

-- What a session may do: '' everything, 'enrol' only set up a second
-- factor, 'password' only change the password.
ALTER TABLE sessions ADD COLUMN idle_secs BIGINT NOT NULL DEFAULT 1800;
ALTER TABLE sessions ADD COLUMN restriction TEXT NOT NULL DEFAULT '';

ALTER TABLE password_rules ADD COLUMN max_age_days BIGINT NOT NULL DEFAULT 0;
ALTER TABLE password_rules ADD COLUMN warn_days BIGINT NOT NULL DEFAULT 14;
ALTER TABLE password_rules ADD COLUMN min_age_days BIGINT NOT NULL DEFAULT 0;

CREATE TABLE user_password_rules (
  company_id BIGINT NOT NULL REFERENCES companies(id),
  user_key BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  min_length BIGINT NOT NULL,
  min_score BIGINT NOT NULL,
  require_classes BIGINT NOT NULL,
  history BIGINT NOT NULL,
  max_age_days BIGINT NOT NULL,
  warn_days BIGINT NOT NULL,
  min_age_days BIGINT NOT NULL,
  PRIMARY KEY (company_id, user_key)
);

-- The TOTP secret is sealed with the company's key (like a record field);
-- last_step is the last accepted time step, so a code is accepted once.
CREATE TABLE totp_factors (
  company_id BIGINT NOT NULL REFERENCES companies(id),
  user_key BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  secret TEXT NOT NULL,
  confirmed BIGINT NOT NULL,
  last_step BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (company_id, user_key)
);

-- Recovery codes, kept as keyed hashes (HMAC with the company's index key).
CREATE TABLE recovery_codes (
  company_id BIGINT NOT NULL REFERENCES companies(id),
  user_key BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  code_hash {blob} NOT NULL,
  used_at BIGINT,
  PRIMARY KEY (company_id, user_key, code_hash)
);

CREATE TABLE passkeys (
  id {id},
  company_id BIGINT NOT NULL REFERENCES companies(id),
  user_key BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  credential_id TEXT NOT NULL,
  label TEXT NOT NULL,
  passkey TEXT NOT NULL,              -- sealed JSON of the public key credential
  created_at BIGINT NOT NULL,
  last_used_at BIGINT,
  UNIQUE (company_id, credential_id)
);

-- The step between a right password and a session (and passkey
-- registrations in progress): short-lived, few attempts, by token hash.
CREATE TABLE sign_in_challenges (
  token_hash {blob} PRIMARY KEY,
  company_id BIGINT NOT NULL REFERENCES companies(id),
  user_key BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  purpose TEXT NOT NULL,              -- second_factor | passkey_registration
  state TEXT NOT NULL,                -- JSON, e.g. a WebAuthn ceremony state
  client_ip TEXT,
  attempts BIGINT NOT NULL,
  expires_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
  id {id},
  public_id TEXT NOT NULL UNIQUE,
  company_id BIGINT NOT NULL REFERENCES companies(id),
  user_key BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  key_hash {blob} NOT NULL UNIQUE,
  label TEXT NOT NULL,
  scopes TEXT NOT NULL,               -- space-separated
  created_at BIGINT NOT NULL,
  created_by TEXT NOT NULL,
  expires_at BIGINT NOT NULL,
  last_used_at BIGINT,
  revoked_at BIGINT
);
CREATE INDEX api_keys_by_user ON api_keys (company_id, user_key);
