//! The SQLite read fast path: the two lookups every request makes (its
//! session, and the record it names) read through connections of our own,
//! on the calling thread.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands every
//! statement and every row across a channel: on two cores, a read of one
//! record spent more time in those hand-overs (thread wake-ups, context
//! switches) than in SQLite. A point lookup by a unique key from SQLite's
//! page cache takes microseconds, well within what may run between two
//! awaits, so these run where the request already is.
//!
//! The connections are read-only (`SQLITE_OPEN_READ_ONLY`) and never wait
//! for a lock: when SQLite answers busy (in WAL mode only while a
//! connection recovers the log), the caller falls back to the sqlx pool,
//! which waits as long as its `busy_timeout` allows. Each statement is its
//! own read transaction, so it sees every commit made before it began.

use crate::{StoreError, StoreResult};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Idle connections kept for reuse; more are opened when the callers at one
/// moment outnumber them, and closed after use.
const KEEP_IDLE: usize = 8;

/// Prepared statements each connection keeps.
const STATEMENTS: usize = 32;

/// A small pool of read-only SQLite connections to one file.
pub(crate) struct Readers {
    file: Arc<Path>,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers").finish_non_exhaustive()
    }
}

/// What one fast read gave: a value, or "ask sqlx" (busy, or the file
/// cannot be opened read-only here).
pub(crate) enum Fast<T> {
    Done(StoreResult<T>),
    Fallback,
}

impl Readers {
    pub(crate) fn new(file: Arc<Path>) -> Readers {
        Readers {
            file,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Closes the idle connections (more open as reads need them).
    pub(crate) fn close_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = open_read_only(&self.file)?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        Ok(conn)
    }

    /// Runs `f` on a pooled connection. A busy database or a connection
    /// that cannot be opened means [`Fast::Fallback`]; other errors are
    /// answers (a damaged row is damaged whichever way it is read).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> ReadResult<T>) -> Fast<T> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let conn = match pooled {
            Some(c) => c,
            None => match self.open() {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "SQLite fast read unavailable; using the pool");
                    return Fast::Fallback;
                }
            },
        };
        let out = f(&conn);
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < KEEP_IDLE {
                idle.push(conn);
            }
        }
        match out {
            Ok(v) => Fast::Done(Ok(v)),
            Err(ReadError::Sqlite(e)) if is_busy(&e) => Fast::Fallback,
            Err(ReadError::Sqlite(e)) => Fast::Done(Err(StoreError::Sqlite(e.to_string()))),
            Err(ReadError::Store(e)) => Fast::Done(Err(e)),
        }
    }
}

/// A read-only connection to the store's file, outside sqlx (the fast
/// lookups here, the audit chain scan).
pub(crate) fn open_read_only(file: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// An error inside a fast read: SQLite's own, or a row that does not
/// decode.
#[derive(Debug)]
pub(crate) enum ReadError {
    Sqlite(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for ReadError {
    fn from(e: rusqlite::Error) -> Self {
        ReadError::Sqlite(e)
    }
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        ReadError::Store(e)
    }
}

pub(crate) type ReadResult<T> = Result<T, ReadError>;

impl From<ReadError> for StoreError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Sqlite(e) => StoreError::Sqlite(e.to_string()),
            ReadError::Store(e) => e,
        }
    }
}

/// Reading a result row, from sqlx's rows (both backends) or from the
/// fast path's, so that one function turns a row into a value for both.
/// Columns are read by position (a lookup by name asks SQLite for every
/// column's name, a few percent of a read); debug builds, which the tests
/// run, check that the position has the name the caller expects.
pub(crate) trait Cols {
    fn int(&self, i: usize, name: &str) -> StoreResult<i64>;
    fn opt_int(&self, i: usize, name: &str) -> StoreResult<Option<i64>>;
    fn text(&self, i: usize, name: &str) -> StoreResult<String>;
    fn opt_text(&self, i: usize, name: &str) -> StoreResult<Option<String>>;
}

fn check_name(found: Option<&str>, i: usize, name: &str) {
    debug_assert_eq!(found, Some(name), "column {i} of the statement");
}

/// Column `i` of an sqlx row, which must be named `name`.
fn any_col<T>(row: &sqlx::any::AnyRow, i: usize, name: &str) -> StoreResult<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    use sqlx::{Column, Row};
    check_name(row.columns().get(i).map(|c| c.name()), i, name);
    row.try_get(i).map_err(StoreError::Db)
}

fn required<T>(v: Option<T>, name: &str) -> StoreResult<T> {
    v.ok_or_else(|| StoreError::Corrupt(format!("column {name} is empty")))
}

impl Cols for sqlx::any::AnyRow {
    fn int(&self, i: usize, name: &str) -> StoreResult<i64> {
        required(any_col(self, i, name)?, name)
    }
    fn opt_int(&self, i: usize, name: &str) -> StoreResult<Option<i64>> {
        any_col(self, i, name)
    }
    fn text(&self, i: usize, name: &str) -> StoreResult<String> {
        required(any_col(self, i, name)?, name)
    }
    fn opt_text(&self, i: usize, name: &str) -> StoreResult<Option<String>> {
        any_col(self, i, name)
    }
}

/// Column `i` of a rusqlite row, which must be named `name`.
fn sqlite_col<T: rusqlite::types::FromSql>(
    row: &rusqlite::Row<'_>,
    i: usize,
    name: &str,
) -> StoreResult<T> {
    check_name(row.as_ref().column_name(i).ok(), i, name);
    row.get(i)
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

impl Cols for rusqlite::Row<'_> {
    fn int(&self, i: usize, name: &str) -> StoreResult<i64> {
        sqlite_col(self, i, name)
    }
    fn opt_int(&self, i: usize, name: &str) -> StoreResult<Option<i64>> {
        sqlite_col(self, i, name)
    }
    fn text(&self, i: usize, name: &str) -> StoreResult<String> {
        sqlite_col(self, i, name)
    }
    fn opt_text(&self, i: usize, name: &str) -> StoreResult<Option<String>> {
        sqlite_col(self, i, name)
    }
}

/// The statements shared with sqlx number their parameters `$1`, `$2`...;
/// to SQLite itself those are names, numbered in the order they first
/// appear (`$2 ... $1` would bind backwards). `?1`, `?2`... are numbers.
///
/// Statements are `'static` (constants, or built once), a fixed set: each
/// one's `?n` spelling is made once and kept, so the lookups on the request
/// path do not rewrite their SQL each time.
pub(crate) fn numbered(sql: &'static str) -> &'static str {
    use std::collections::BTreeMap;
    use std::sync::RwLock;
    static MADE: RwLock<BTreeMap<(usize, usize), &'static str>> = RwLock::new(BTreeMap::new());
    let key = (sql.as_ptr() as usize, sql.len());
    if let Some(made) = MADE.read().ok().and_then(|m| m.get(&key).copied()) {
        return made;
    }
    let made: &'static str = if sql.contains('$') {
        Box::leak(sql.replace('$', "?").into_boxed_str())
    } else {
        sql
    };
    match MADE.write() {
        Ok(mut m) => m.entry(key).or_insert(made),
        Err(_) => made,
    }
}

/// Runs a query of at most one row through a cached statement and maps it.
pub(crate) fn one<T>(
    conn: &Connection,
    sql: &'static str,
    params: impl rusqlite::Params,
    map: impl FnOnce(&rusqlite::Row<'_>) -> StoreResult<T>,
) -> ReadResult<Option<T>> {
    let mut stmt = conn.prepare_cached(numbered(sql))?;
    let mut rows = stmt.query(params)?;
    match rows.next()? {
        Some(r) => Ok(Some(map(r)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_bind_by_their_number_not_their_place() {
        let conn = Connection::open_in_memory().unwrap();
        // `$2` comes first: bound by place, 1 - 10 would be asked.
        let got = one(&conn, "SELECT $2 - $1 AS d", (1i64, 10i64), |r| {
            r.int(0, "d")
        })
        .unwrap();
        assert!(matches!(got, Some(9)), "expected 10 - 1");
    }
}
