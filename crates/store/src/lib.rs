//! Storage: one query layer over SQLite and PostgreSQL.
//!
//! Both backends go through `sqlx`'s `Any` driver with the same SQL (`$n`
//! placeholders, `BIGINT` times in microseconds, `TEXT` JSON), so the two
//! cannot drift apart except in the DDL, which is written once with a few
//! dialect words substituted (see [`migrate`]). The whole integration suite
//! runs on both in CI.
//!
//! Every method that reads or writes company data takes a [`CompanyId`] and
//! puts it in its `WHERE` clause; the only lookup without one is a session by
//! its token hash, which is how a request finds its company.

mod access;
mod appender;
mod audit;
mod batch;
mod detection;
mod directory;
mod dump;
mod keys;
mod migrate;
mod pg_batch;
mod reader;
mod records;
mod sessions;
mod signin;

pub use access::*;
pub use appender::AuditAppender;
pub use audit::*;
pub use detection::*;
pub use directory::*;
pub use dump::*;
pub use keys::*;
pub use migrate::{MigrationReport, SCHEMA_VERSION};
pub use records::*;
pub use sessions::*;
pub use signin::*;

use chrono::{DateTime, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::sync::Arc;
use std::time::Duration;
use strongroom_core::CompanyId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key is taken; the message says which.
    #[error("{0}")]
    Conflict(String),
    /// Optimistic concurrency: the row changed since it was read.
    #[error("the record changed since it was read (now at version {current}); read it again")]
    VersionConflict { current: i64 },
    /// A row that must exist does not.
    #[error("{0}")]
    NotFound(String),
    /// The database was written by a newer Strongroom.
    #[error("the database schema is at version {found}, newer than this binary's {supported}; run the newer Strongroom, or restore a backup made by this version")]
    SchemaTooNew { found: i64, supported: i64 },
    /// The database URL or file cannot be used.
    #[error("{0}")]
    Config(String),
    /// A stored value does not decode (corruption or a bug).
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    /// Another process holds the database (e.g. a server running on SQLite).
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// SQLite failed on a connection Strongroom opens itself, outside
    /// sqlx (the request-path lookups, the audit and record writers, the
    /// audit chain scan), or the task that ran it stopped.
    #[error("database error: {0}")]
    Sqlite(String),
}

impl StoreError {
    /// True when the error is a uniqueness or foreign-key conflict.
    fn constraint_kind(e: &sqlx::Error) -> Option<sqlx::error::ErrorKind> {
        match e {
            sqlx::Error::Database(d) => Some(d.kind()),
            _ => None,
        }
    }

    pub(crate) fn map_conflict(e: sqlx::Error, unique: &str, fk: &str) -> StoreError {
        match Self::constraint_kind(&e) {
            Some(sqlx::error::ErrorKind::UniqueViolation) => StoreError::Conflict(unique.into()),
            Some(sqlx::error::ErrorKind::ForeignKeyViolation) => StoreError::Conflict(fk.into()),
            _ => StoreError::Db(e),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Where write transactions run. For SQLite, one connection of its own:
    /// SQLite has one writer at a time anyway, and a writer (the audit log's
    /// group commit above all) must not queue for a connection behind
    /// dozens of reads. For PostgreSQL, the shared pool.
    write_pool: AnyPool,
    dialect: Dialect,
    /// SQLite allows one writer at a time; taking this before a write
    /// transaction turns "database is locked" errors into a short wait.
    write_lock: Option<Arc<tokio::sync::Mutex<()>>>,
    /// The SQLite file, for the reads that go around sqlx (a full audit
    /// chain scan); `None` for PostgreSQL and in-memory databases.
    sqlite_file: Option<Arc<std::path::Path>>,
    /// The per-request lookups' fast path on an SQLite file (see
    /// [`reader`]); `None` for PostgreSQL and in-memory databases.
    readers: Option<Arc<reader::Readers>>,
    /// Group commit of record writes on an SQLite file (see [`batch`]);
    /// `None` for PostgreSQL and in-memory databases.
    record_writer: Option<Arc<batch::RecordWriter>>,
    /// Group commit of record writes on PostgreSQL (see [`pg_batch`]);
    /// `None` for SQLite.
    pg_writer: Option<Arc<pg_batch::PgRecordWriter>>,
    /// How to open a PostgreSQL connection of its own, for the reads that
    /// go around the pool's `Any` rows (a full audit chain scan). Holds
    /// the URL's password: never printed (see `Debug` below).
    pg_options: Option<Arc<sqlx::postgres::PgConnectOptions>>,
    /// Where this node last saw each audit chain end (see
    /// `audit::HeadGuesses`).
    head_guesses: Arc<audit::HeadGuesses>,
    /// Audit batches stored with one statement (see
    /// [`Store::audit_appends_in_one_statement`]).
    fast_appends: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// Turns a configured `database_url` into what sqlx understands: a bare path
/// means an SQLite file (created when missing).
pub fn normalise_url(url: &str) -> StoreResult<(String, Dialect)> {
    let url = url.trim();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok((url.to_owned(), Dialect::Postgres))
    } else if let Some(rest) = url.strip_prefix("sqlite://") {
        Ok((sqlite_url(rest), Dialect::Sqlite))
    } else if let Some(rest) = url.strip_prefix("sqlite:") {
        Ok((sqlite_url(rest), Dialect::Sqlite))
    } else if url.contains("://") {
        Err(StoreError::Config(format!(
            "database_url must be a file path, sqlite://PATH or postgres://..., not a {} URL",
            url.split("://").next().unwrap_or("")
        )))
    } else if url.is_empty() {
        Err(StoreError::Config(
            "database_url is empty; give a file path or postgres://...".into(),
        ))
    } else {
        Ok((sqlite_url(url), Dialect::Sqlite))
    }
}

/// The file of an SQLite URL made by [`normalise_url`], unless the
/// database lives in memory.
fn sqlite_file(url: &str) -> Option<Arc<std::path::Path>> {
    let rest = url.strip_prefix("sqlite://")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return None;
    }
    Some(Arc::from(std::path::Path::new(path)))
}

fn sqlite_url(path: &str) -> String {
    if path.contains('?') {
        format!("sqlite://{path}")
    } else {
        format!("sqlite://{path}?mode=rwc")
    }
}

/// The column a credential lookup (session or API key, aliasing its
/// company id as `<alias>.company_id`) adds to hand back the company's
/// policy epoch with the credential, in the same query.
pub(crate) fn policy_epoch_column(alias: &str) -> String {
    format!(
        "COALESCE((SELECT e.epoch FROM policy_epochs e WHERE e.company_id = {alias}.company_id), 0) AS policy_epoch"
    )
}

/// The `n`th parameter of a statement with many: `$n` for PostgreSQL, a
/// positional `?` for SQLite. (SQLite looks numbered parameters up in a
/// list, and sqlx asks for every parameter's name when it binds: with
/// hundreds of `$n` in one statement that is quadratic, and it was half of
/// a restore's time.) Only for statements whose parameters are all of this
/// kind and bound in order.
pub(crate) fn mark(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Sqlite => "?".to_owned(),
        Dialect::Postgres => format!("${n}"),
    }
}

/// `($1, ..., $c), ($c+1, ...)` (or `?`s, see [`mark`]): the VALUES of a
/// multi-row INSERT of `rows` rows of `cols` parameters each.
pub(crate) fn values_placeholders(dialect: Dialect, rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            let row: Vec<String> = (1..=cols).map(|c| mark(dialect, r * cols + c)).collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every connection that writes checkpoints the WAL into the database
/// file once the WAL holds this many pages (16 MB) after one of its
/// commits; SQLite's default is 1,000. A checkpoint copies the newest copy
/// of each page, so fewer, larger ones copy the pages every write touches
/// (the tables' last leaves, the indexes' hot pages) fewer times: record
/// creates ran about 12 % faster (A/B, SQLite, 32 connections), with a
/// longer pause at each checkpoint (p99 of creates 10 -> 12 ms). Set on
/// every connection alike, since each decides alone after its own commit.
pub(crate) const WAL_AUTOCHECKPOINT: &str = "PRAGMA wal_autocheckpoint = 4000";

impl Store {
    pub async fn connect(database_url: &str, opts: StoreOptions) -> StoreResult<Store> {
        sqlx::any::install_default_drivers();
        let (url, dialect) = normalise_url(database_url)?;
        let mut pool_opts = AnyPoolOptions::new()
            .max_connections(opts.max_connections)
            .acquire_timeout(opts.acquire_timeout);
        if dialect == Dialect::Sqlite {
            pool_opts = pool_opts.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // FULL: a write that was acknowledged survives a power cut.
                    // The checkpoint interval: see `WAL_AUTOCHECKPOINT`.
                    for pragma in [
                        "PRAGMA foreign_keys = ON",
                        "PRAGMA busy_timeout = 10000",
                        "PRAGMA synchronous = FULL",
                        WAL_AUTOCHECKPOINT,
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            });
        }
        let pool = pool_opts
            .clone()
            .connect(&url)
            .await
            .map_err(|e| StoreError::Config(describe_connect_error(&e, dialect)))?;
        let write_pool = if dialect == Dialect::Sqlite {
            sqlx::raw_sql("PRAGMA journal_mode = WAL;")
                .execute(&pool)
                .await?;
            pool_opts
                .max_connections(1)
                .connect(&url)
                .await
                .map_err(|e| StoreError::Config(describe_connect_error(&e, dialect)))?
        } else {
            pool.clone()
        };
        let write_lock =
            (dialect == Dialect::Sqlite).then(|| Arc::new(tokio::sync::Mutex::new(())));
        let record_writer = match (sqlite_file(&url), &write_lock) {
            (Some(file), Some(lock)) => match batch::RecordWriter::start(&file, lock.clone()) {
                Ok(w) => Some(Arc::new(w)),
                Err(e) => {
                    tracing::warn!(error = %e, "record writes go one transaction each");
                    None
                }
            },
            _ => None,
        };
        let head_guesses = Arc::new(audit::HeadGuesses::default());
        let pg_writer = (dialect == Dialect::Postgres).then(|| {
            let writer = pg_batch::PgRecordWriter::start(
                write_pool.clone(),
                opts.max_connections,
                head_guesses.clone(),
            );
            Arc::new(writer)
        });
        Ok(Store {
            head_guesses,
            fast_appends: Arc::default(),
            pool,
            write_pool,
            record_writer,
            pg_writer,
            dialect,
            write_lock,
            sqlite_file: sqlite_file(&url),
            readers: sqlite_file(&url).map(|f| Arc::new(reader::Readers::new(f))),
            pg_options: match dialect {
                Dialect::Postgres => Some(Arc::new(
                    url.parse::<sqlx::postgres::PgConnectOptions>()
                        .map_err(|e| StoreError::Config(describe_connect_error(&e, dialect)))?,
                )),
                Dialect::Sqlite => None,
            },
        })
    }

    /// The connection pool, for tests that must reach under the API (e.g.
    /// to tamper with stored rows). Not for application code.
    #[doc(hidden)]
    pub fn raw_pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.write_pool.close().await;
        if let Some(r) = &self.readers {
            r.close_idle();
        }
    }

    /// Starts a write transaction (serialised on SQLite).
    pub(crate) async fn write_tx(&self) -> StoreResult<WriteTx<'_>> {
        let guard = match &self.write_lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        // On SQLite the write lock is taken at BEGIN, waiting for it as long
        // as the busy timeout allows. A deferred BEGIN reads first, and a
        // transaction whose snapshot another connection (a CLI command, a
        // second process) wrote past fails its first write at once with
        // "database is locked", whatever the timeout.
        let tx = match self.dialect {
            Dialect::Sqlite => match self.write_pool.begin_with("BEGIN IMMEDIATE").await {
                // A transaction SQLite rolled back by itself (on a full disk)
                // can leave the driver counting the connection as still in
                // one, which only a fresh connection forgets.
                Err(sqlx::Error::InvalidSavePointStatement) => {
                    tracing::warn!("the store's write connection is reopened: its driver still counted a transaction that SQLite had ended");
                    self.write_pool.acquire().await?.close().await?;
                    self.write_pool.begin_with("BEGIN IMMEDIATE").await?
                }
                begun => begun?,
            },
            Dialect::Postgres => self.write_pool.begin().await?,
        };
        Ok(WriteTx { tx, _guard: guard })
    }

    /// Runs one write statement on its own and hands back the rows it
    /// returns. PostgreSQL runs a lone statement as a transaction of its
    /// own, so it needs no BEGIN and COMMIT round trips; SQLite takes the
    /// write lock around it like every write transaction.
    pub(crate) async fn write_one<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> StoreResult<Vec<AnyRow>> {
        if self.dialect == Dialect::Postgres {
            return Ok(q.fetch_all(&self.pool).await?);
        }
        let mut w = self.write_tx().await?;
        let rows = q.fetch_all(&mut *w.tx).await?;
        w.commit().await?;
        Ok(rows)
    }

    /// Refreshes the query planner's statistics. Worth running after a bulk
    /// load (a restore, a benchmark data set): until PostgreSQL's autovacuum
    /// does it, fresh tables can get plans hundreds of times slower.
    ///
    /// On SQLite only the per-index row counts (`sqlite_stat1`) are kept,
    /// not the sampled key values (`sqlite_stat4`): with samples, every
    /// statement that binds a value to an indexed column is compiled
    /// anew each time it runs (the plan may depend on the value), which
    /// cost a record read an eighth of its time; Strongroom's queries are
    /// key lookups whose plans the row counts settle.
    pub async fn analyze(&self) -> StoreResult<()> {
        if self.dialect == Dialect::Postgres {
            sqlx::raw_sql("ANALYZE").execute(&self.pool).await?;
            return Ok(());
        }
        // In one transaction: another connection that reloads the
        // statistics sees the counts without the samples.
        let mut w = self.write_tx().await?;
        sqlx::raw_sql("ANALYZE").execute(&mut *w.tx).await?;
        let samples = sqlx::query(STAT4_TABLE).fetch_optional(&mut *w.tx).await?;
        if samples.is_some() {
            sqlx::raw_sql("DELETE FROM sqlite_stat4")
                .execute(&mut *w.tx)
                .await?;
        }
        w.commit().await?;
        // This connection loaded the samples while analysing; reload.
        sqlx::raw_sql("ANALYZE sqlite_schema")
            .execute(&self.write_pool)
            .await?;
        Ok(())
    }

    /// The sampled key values SQLite's statistics hold (0 on PostgreSQL);
    /// see [`Store::analyze`].
    pub async fn statistics_samples(&self) -> StoreResult<i64> {
        if self.dialect == Dialect::Postgres {
            return Ok(0);
        }
        let samples = sqlx::query(STAT4_TABLE).fetch_optional(&self.pool).await?;
        if samples.is_none() {
            return Ok(0);
        }
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM sqlite_stat4")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    /// True when no company exists yet (a fresh store).
    pub async fn is_empty(&self) -> StoreResult<bool> {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM companies")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(n == 0)
    }
}

/// Whether SQLite's table of sampled key values exists (it is made by the
/// first `ANALYZE`, when SQLite was built with it, as sqlx's bundled
/// SQLite is).
const STAT4_TABLE: &str =
    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat4'";

pub(crate) struct WriteTx<'a> {
    pub tx: sqlx::Transaction<'static, sqlx::Any>,
    _guard: Option<tokio::sync::MutexGuard<'a, ()>>,
}

impl WriteTx<'_> {
    pub async fn commit(self) -> StoreResult<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

fn describe_connect_error(e: &sqlx::Error, dialect: Dialect) -> String {
    // The URL is never repeated here: it may carry a password.
    match dialect {
        Dialect::Sqlite => format!(
            "cannot open the SQLite database ({e}); check that data_dir exists and is writable"
        ),
        Dialect::Postgres => format!(
            "cannot connect to PostgreSQL ({}); check database_url, that the server runs and accepts this user",
            redact_pg_error(e)
        ),
    }
}

fn redact_pg_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_owned(),
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Tls(t) => format!("TLS: {t}"),
        sqlx::Error::PoolTimedOut => "timed out".into(),
        sqlx::Error::Configuration(_) => "the URL is not valid".into(),
        other => other.to_string(),
    }
}

/// Times are stored as microseconds since the Unix epoch (UTC).
pub(crate) fn ts(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_ts(us: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {us} out of range")))
}

pub(crate) fn opt_ts(us: Option<i64>) -> StoreResult<Option<DateTime<Utc>>> {
    us.map(from_ts).transpose()
}

pub(crate) fn get<T>(row: &AnyRow, col: &str) -> StoreResult<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(col).map_err(StoreError::Db)
}

pub(crate) fn flag(row: &AnyRow, col: &str) -> StoreResult<bool> {
    Ok(get::<i64>(row, col)? != 0)
}

pub(crate) fn company(row: &AnyRow) -> StoreResult<CompanyId> {
    Ok(CompanyId(get(row, "company_id")?))
}

/// A bound argument for dynamically built statements.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Int(i64),
    Text(String),
}

pub(crate) fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    args: &'q [Arg],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for a in args {
        q = match a {
            Arg::Int(i) => q.bind(*i),
            Arg::Text(s) => q.bind(s.as_str()),
        };
    }
    q
}

#[cfg(test)]
mod tests {
    #[test]
    fn multi_row_placeholders_number_every_parameter_once() {
        use super::Dialect::{Postgres, Sqlite};
        assert_eq!(super::values_placeholders(Postgres, 1, 2), "($1, $2)");
        assert_eq!(
            super::values_placeholders(Postgres, 3, 2),
            "($1, $2), ($3, $4), ($5, $6)"
        );
        assert_eq!(super::values_placeholders(Postgres, 0, 5), "");
        assert_eq!(super::values_placeholders(Sqlite, 2, 2), "(?, ?), (?, ?)");
    }
}
