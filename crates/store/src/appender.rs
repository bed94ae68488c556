//! The audit log's writer on an SQLite file: batches of events appended
//! through a connection of its own, on the writer's own thread.
//!
//! Every audited request waits for its batch to commit, so the time a
//! batch takes bounds how many requests a second can be audited. Through
//! sqlx, a batch is five statements, each handed to the connection's
//! thread and back (two thread wake-ups a statement); here it is the same
//! statements run where the writer already is, and only SQLite's own work
//! and the `fsync` of the commit remain.
//!
//! It takes the store's write lock like every other write transaction, so
//! SQLite never sees two writers at once.

use crate::audit::{link, CHECKPOINT_INSERT, HEAD_UPDATE};
use crate::reader::numbered;
use crate::{ts, ChainHead, Checkpoint, Store, StoreError, StoreResult};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::sync::Arc;
use strongroom_core::audit::{genesis, AuditEvent};

/// Appends audit events to an SQLite store; see the module notes.
pub struct AuditAppender {
    conn: Connection,
    write_lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for AuditAppender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditAppender").finish_non_exhaustive()
    }
}

pub(crate) fn failed(e: rusqlite::Error) -> StoreError {
    StoreError::Sqlite(format!("writing: {e}"))
}

impl Store {
    /// An appender for the audit log's writer, when the store is an SQLite
    /// file (`None` for PostgreSQL and in-memory databases, whose writer
    /// uses [`Store::append_audit`]).
    pub fn audit_appender(&self) -> StoreResult<Option<AuditAppender>> {
        let (Some(file), Some(lock)) = (&self.sqlite_file, &self.write_lock) else {
            return Ok(None);
        };
        Ok(Some(AuditAppender {
            conn: open_writer(file)?,
            write_lock: lock.clone(),
        }))
    }
}

/// A read-write connection to the store's file, set up as the pool's are
/// (see `Store::connect`): foreign keys enforced, and a commit that was
/// acknowledged survives a power cut.
pub(crate) fn open_writer(file: &std::path::Path) -> StoreResult<Connection> {
    let conn = Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(failed)?;
    // temp_store: a savepoint's copies of the pages it changes stay in
    // memory (a few pages a write) instead of spilling to a temporary
    // file, which was a fifth of the record writer's time.
    conn.execute_batch(&format!(
        "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY; {};",
        crate::WAL_AUTOCHECKPOINT
    ))
    .map_err(failed)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(failed)?;
    Ok(conn)
}

/// One event's INSERT, built once.
fn insert_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let marks: Vec<String> = (1..=15).map(|n| format!("?{n}")).collect();
        format!(
            "INSERT INTO audit_events ({}) VALUES ({})",
            crate::audit::EVENT_COLUMNS,
            marks.join(", ")
        )
    })
}

impl AuditAppender {
    /// Stores the events durably, with `checkpoints` (of events committed
    /// before), in one transaction; returns once they are committed, with
    /// where each chain written to now ends. Blocks the calling thread for
    /// the commit: call it from a thread of its own.
    pub async fn append(
        &mut self,
        events: &[AuditEvent],
        checkpoints: &[Checkpoint],
    ) -> StoreResult<Vec<ChainHead>> {
        if events.is_empty() && checkpoints.is_empty() {
            return Ok(Vec::new());
        }
        let _guard = self.write_lock.lock().await;
        append(&mut self.conn, events, checkpoints)
    }
}

fn append(
    conn: &mut Connection,
    events: &[AuditEvent],
    checkpoints: &[Checkpoint],
) -> StoreResult<Vec<ChainHead>> {
    // Dropped without commit, the transaction rolls back.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(failed)?;
    let heads = append_events(&tx, events)?;
    for c in checkpoints {
        tx.prepare_cached(numbered(CHECKPOINT_INSERT))
            .and_then(|mut s| {
                s.execute(rusqlite::params![
                    c.chain,
                    c.seq,
                    c.hash,
                    ts(c.at),
                    c.key_version,
                    c.public_key,
                    c.signature,
                ])
            })
            .map_err(failed)?;
    }
    tx.commit().map_err(failed)?;
    Ok(heads)
}

/// Links `events` onto their chains and stores them, inside a transaction
/// the caller holds (and commits).
pub(crate) fn append_events(tx: &Connection, events: &[AuditEvent]) -> StoreResult<Vec<ChainHead>> {
    let mut chains: Vec<i64> = events.iter().map(|e| e.chain).collect();
    chains.sort_unstable();
    chains.dedup();
    let mut heads = Vec::with_capacity(chains.len());
    for chain in chains {
        let head = tx
            .prepare_cached("SELECT seq, hash FROM audit_heads WHERE chain = ?1")
            .and_then(|mut s| {
                s.query_row([chain], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .optional()
            })
            .map_err(failed)?;
        let (seq, hash) = match head {
            Some(h) => h,
            None => {
                tx.prepare_cached("INSERT INTO audit_heads (chain, seq, hash) VALUES (?1, 0, ?2)")
                    .and_then(|mut s| s.execute((chain, genesis(chain).as_slice())))
                    .map_err(failed)?;
                (0, genesis(chain).to_vec())
            }
        };
        let (links, head) = link(chain, seq, hash, events.iter().filter(|e| e.chain == chain));
        let mut insert = tx.prepare_cached(insert_sql()).map_err(failed)?;
        for l in &links {
            let e = l.event;
            insert
                .execute(rusqlite::params![
                    chain,
                    l.seq,
                    ts(e.at),
                    e.actor,
                    e.action,
                    e.target,
                    e.outcome.as_str(),
                    e.reason,
                    e.detail,
                    e.session,
                    e.client_ip,
                    e.user_agent,
                    e.request_id,
                    l.prev,
                    l.hash,
                ])
                .map_err(failed)?;
        }
        drop(insert);
        tx.prepare_cached(numbered(HEAD_UPDATE))
            .and_then(|mut s| s.execute((chain, head.seq, head.hash.as_slice())))
            .map_err(failed)?;
        heads.push(head);
    }
    Ok(heads)
}
