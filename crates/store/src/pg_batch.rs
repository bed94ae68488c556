//! Group commit of record writes on PostgreSQL.
//!
//! A record write's audit event is stored in the same transaction as the
//! change, and chaining it locks the company's chain head until the
//! commit. Written one transaction each, the writes of one company queued
//! for that lock, and each held it across its commit's WAL flush: the
//! 32-connection create load ran at about 900 writes a second with most
//! connections waiting on the head's row lock.
//!
//! Here every write waiting at that moment runs in one transaction, each
//! inside a savepoint of its own, and the events of those that succeeded
//! are chained after all of them, so the head is locked once a batch and
//! only for its last statements and its commit:
//!
//! - a write that fails (a version conflict, a constraint) is rolled back
//!   to its savepoint and fails alone; the others commit;
//! - if chaining the events or the commit fails, every write of the batch
//!   is told so, and none of them is stored;
//! - a caller gets its answer only after the commit, so an acknowledged
//!   write is as durable as before, and an event is stored if and only if
//!   its change is.
//!
//! Two batches that change the same records in opposite orders can
//! deadlock; PostgreSQL then fails one write of one of them. A write that
//! failed so (deadlock or serialization failure) is run once more, alone,
//! in a transaction of its own, after its batch: a write of one record
//! cannot deadlock, since batches lock chain heads only after all their
//! writes.

use crate::audit::HeadGuesses;
use crate::records::{RecordJob, StoredRecord};
use crate::{Dialect, StoreError, StoreResult};
use futures_util::FutureExt;
use sqlx::AnyPool;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Writes one transaction holds, at most.
const MAX_BATCH: usize = 64;

/// Batches in flight at once at most, each on a connection of its own:
/// while one waits for its commit, the next runs its writes. A quarter of
/// the pool at most, so that reads still find connections.
const MAX_WRITERS: u32 = 4;

/// SQLSTATEs of a write that lost to another transaction and may succeed
/// when run again: deadlock_detected and serialization_failure.
const RUN_AGAIN: [&str; 2] = ["40P01", "40001"];

struct Job {
    write: RecordJob,
    reply: oneshot::Sender<StoreResult<StoredRecord>>,
}

/// The front door of the writer task.
pub(crate) struct PgRecordWriter {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for PgRecordWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgRecordWriter").finish_non_exhaustive()
    }
}

impl PgRecordWriter {
    /// Starts the writer tasks on the current runtime; they end when the
    /// last handle is dropped.
    pub(crate) fn start(
        pool: AnyPool,
        pool_size: u32,
        guesses: Arc<HeadGuesses>,
    ) -> PgRecordWriter {
        let (jobs, rx) = mpsc::channel(1024);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..(pool_size / 4).clamp(1, MAX_WRITERS) {
            tokio::spawn(run(pool.clone(), rx.clone(), guesses.clone()));
        }
        PgRecordWriter { jobs }
    }

    /// Runs `write` in the next batch; hands back the record as stored once
    /// that batch committed (or why this write, or the whole batch, failed).
    pub(crate) async fn write(&self, write: RecordJob) -> StoreResult<StoredRecord> {
        let (reply, wait) = oneshot::channel();
        let stopped = || StoreError::Sqlite("the record writer stopped".into());
        self.jobs
            .send(Job { write, reply })
            .await
            .map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }
}

/// One writer: takes every write waiting (the first one it finds
/// waiting at least), commits them as a batch and answers each.
async fn run(
    pool: AnyPool,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    guesses: Arc<HeadGuesses>,
) {
    loop {
        let jobs = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            jobs
        };
        let (writes, replies): (Vec<RecordJob>, Vec<_>) =
            jobs.into_iter().map(|j| (j.write, j.reply)).unzip();
        let mut results = commit_batch(&pool, &guesses, &writes).await;
        for (write, result) in writes.iter().zip(results.iter_mut()) {
            if matches!(result, Err(e) if lost_to_another(e)) {
                tracing::info!("a record write lost to another transaction; it runs again alone");
                *result = commit_batch(&pool, &guesses, std::slice::from_ref(write))
                    .await
                    .pop()
                    .unwrap_or_else(|| Err(StoreError::Sqlite("no result".into())));
            }
        }
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// True when PostgreSQL failed the write for another transaction's sake
/// (see [`RUN_AGAIN`]).
pub(crate) fn lost_to_another(e: &StoreError) -> bool {
    match e {
        StoreError::Db(sqlx::Error::Database(d)) => d
            .code()
            .is_some_and(|code| RUN_AGAIN.contains(&code.as_ref())),
        _ => false,
    }
}

/// Runs each write in a savepoint of one transaction, chains the audit
/// events of those that succeeded and commits; one result per write.
async fn commit_batch(
    pool: &AnyPool,
    guesses: &HeadGuesses,
    writes: &[RecordJob],
) -> Vec<StoreResult<StoredRecord>> {
    let n = writes.len();
    let fail_all = |e: StoreError| {
        let why = e.to_string();
        tracing::error!(error = %why, writes = n, "a batch of record writes failed; none is stored");
        (0..n)
            .map(|_| Err(StoreError::Sqlite(why.clone())))
            .collect::<Vec<_>>()
    };
    // Dropped without commit, the transaction rolls back.
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return fail_all(e.into()),
    };
    let mut results = Vec::with_capacity(n);
    let mut events = Vec::new();
    for write in writes {
        if let Err(e) = savepoint(&mut tx, "SAVEPOINT record_write").await {
            return fail_all(e);
        }
        // A write that panics fails alone (and the writer goes on).
        let result = std::panic::AssertUnwindSafe(write.run(&mut tx, Dialect::Postgres))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(StoreError::Sqlite("a record write panicked".into())));
        let ended = if result.is_ok() {
            events.extend_from_slice(write.audit());
            savepoint(&mut tx, "RELEASE SAVEPOINT record_write").await
        } else {
            match savepoint(&mut tx, "ROLLBACK TO SAVEPOINT record_write").await {
                Ok(()) => savepoint(&mut tx, "RELEASE SAVEPOINT record_write").await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = ended {
            return fail_all(e);
        }
        results.push(result);
    }
    if !events.is_empty() {
        if let Err(e) =
            crate::audit::chain_events(&mut tx, Dialect::Postgres, guesses, &events).await
        {
            return fail_all(e);
        }
    }
    match tx.commit().await {
        Ok(()) => results,
        Err(e) => fail_all(e.into()),
    }
}

/// Runs one savepoint statement.
async fn savepoint(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    statement: &'static str,
) -> StoreResult<()> {
    sqlx::query(statement).execute(&mut **tx).await?;
    Ok(())
}
