-- Evidence of backups and restore drills: when, which backup, how long,
-- which checks passed or failed.
CREATE TABLE backup_runs (
  id {id},
  kind TEXT NOT NULL,                 -- backup | drill
  backup_id TEXT NOT NULL,
  started_at BIGINT NOT NULL,
  finished_at BIGINT NOT NULL,
  ok BIGINT NOT NULL,
  detail TEXT NOT NULL                -- JSON
);
