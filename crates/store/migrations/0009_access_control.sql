-- Access control: each user's security level (clearance) and training
-- date; roles (grants of actions on record types over a scope, and
-- administrative powers) held by users and by departments; the company's
-- security pledge with its versions and who accepted which; training rules.

ALTER TABLE users ADD COLUMN clearance TEXT NOT NULL DEFAULT 'internal';
ALTER TABLE users ADD COLUMN training_completed_at BIGINT;

CREATE TABLE roles (
  id {id},
  company_id BIGINT NOT NULL REFERENCES companies(id),
  name TEXT NOT NULL,
  description TEXT NOT NULL,
  grants TEXT NOT NULL,               -- JSON [{record_type, actions, scope}]
  powers TEXT NOT NULL,               -- space-separated
  built_in BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  UNIQUE (company_id, name)
);

CREATE TABLE user_roles (
  company_id BIGINT NOT NULL REFERENCES companies(id),
  user_key BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  role_id BIGINT NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
  PRIMARY KEY (user_key, role_id)
);

CREATE TABLE department_roles (
  company_id BIGINT NOT NULL REFERENCES companies(id),
  department_id BIGINT NOT NULL REFERENCES departments(id) ON DELETE CASCADE,
  role_id BIGINT NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
  PRIMARY KEY (department_id, role_id)
);

CREATE TABLE pledge_versions (
  company_id BIGINT NOT NULL REFERENCES companies(id),
  version BIGINT NOT NULL,
  text TEXT NOT NULL,
  published_at BIGINT NOT NULL,
  published_by TEXT NOT NULL,
  PRIMARY KEY (company_id, version)
);

CREATE TABLE pledge_acceptances (
  company_id BIGINT NOT NULL REFERENCES companies(id),
  user_key BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  version BIGINT NOT NULL,
  accepted_at BIGINT NOT NULL,
  PRIMARY KEY (company_id, user_key, version)
);

CREATE TABLE training_policy (
  company_id BIGINT PRIMARY KEY REFERENCES companies(id),
  required BIGINT NOT NULL,
  interval_days BIGINT NOT NULL
);

-- Existing companies get the built-in roles (their grants are filled in at
-- start-up from the binary's definitions), and accounts that existed before
-- access control keep what they could do: every record of the company,
-- protected fields masked; administrators also reveal.
INSERT INTO roles (company_id, name, description, grants, powers, built_in, created_at)
  SELECT id, 'records_full', '', '[]', '', 1, created_at FROM companies;
INSERT INTO roles (company_id, name, description, grants, powers, built_in, created_at)
  SELECT id, 'reveal', '', '[]', '', 1, created_at FROM companies;
UPDATE users SET clearance = 'restricted';
INSERT INTO user_roles (company_id, user_key, role_id)
  SELECT u.company_id, u.id, r.id FROM users u
  JOIN roles r ON r.company_id = u.company_id AND r.name = 'records_full'
  WHERE u.is_master = 0;
INSERT INTO user_roles (company_id, user_key, role_id)
  SELECT u.company_id, u.id, r.id FROM users u
  JOIN roles r ON r.company_id = u.company_id AND r.name = 'reveal'
  WHERE u.is_master = 0 AND u.is_admin = 1;
