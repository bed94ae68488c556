-- Access hours: the company's time zone, weekly windows (company default,
-- or per user, which then replace the company's), and account validity.
ALTER TABLE companies ADD COLUMN timezone TEXT NOT NULL DEFAULT 'UTC';
ALTER TABLE users ADD COLUMN valid_from TEXT;
ALTER TABLE users ADD COLUMN valid_until TEXT;

CREATE TABLE access_windows (
  id {id},
  company_id BIGINT NOT NULL REFERENCES companies(id),
  user_key BIGINT REFERENCES users(id) ON DELETE CASCADE,
  weekday TEXT NOT NULL,              -- mon .. sun
  start_min BIGINT NOT NULL,
  end_min BIGINT NOT NULL             -- <= start_min: runs overnight
);
CREATE INDEX access_windows_by_company ON access_windows (company_id, user_key);
