-- A company's session policy: how many sessions one user may hold at once
-- (0: no limit) and what a new sign-in does when the limit is reached.
CREATE TABLE company_settings (
  company_id BIGINT PRIMARY KEY REFERENCES companies(id),
  max_sessions BIGINT NOT NULL,
  when_full TEXT NOT NULL            -- refuse_new | end_oldest
);
