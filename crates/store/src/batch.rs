//! Group commit of record writes on an SQLite file.
//!
//! A record write commits with an `fsync` of SQLite's log, and SQLite takes
//! one writer at a time: written one transaction each, creates and updates
//! queue for the disk one by one. Here they go to a writer thread that runs
//! every write waiting at that moment in one transaction, each inside a
//! savepoint of its own, and commits them with one `fsync`:
//!
//! - a write that fails (a version conflict, a constraint) is rolled back
//!   to its savepoint and fails alone; the others commit;
//! - if the commit itself fails, every write of the batch is told so, and
//!   none of them is stored;
//! - a caller gets its answer only after the commit, so an acknowledged
//!   write survives a power cut as before.
//!
//! Each write's audit events are chained inside its savepoint, in the same
//! transaction as the change (an event is stored if and only if its change
//! is). The writer takes the store's write lock for each batch, like every
//! other write transaction.

use crate::appender::{failed, open_writer};
use crate::{StoreError, StoreResult};
use rusqlite::{Connection, TransactionBehavior};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Writes one transaction holds, at most.
const MAX_BATCH: usize = 64;

/// What a write hands back to its caller (after the commit).
type Output = Box<dyn std::any::Any + Send>;

/// One write: statements run inside the batch's transaction.
type Work = Box<dyn FnOnce(&Connection) -> StoreResult<Output> + Send>;

struct Job {
    work: Work,
    reply: oneshot::Sender<StoreResult<Output>>,
}

/// The front door of the writer thread.
pub(crate) struct RecordWriter {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for RecordWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordWriter").finish_non_exhaustive()
    }
}

impl RecordWriter {
    /// Opens the writer's connection and starts its thread; the thread
    /// ends when the last handle is dropped.
    pub(crate) fn start(
        file: &std::path::Path,
        lock: Arc<tokio::sync::Mutex<()>>,
    ) -> StoreResult<RecordWriter> {
        let conn = open_writer(file)?;
        let (jobs, rx) = mpsc::channel(1024);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Sqlite(format!("the record writer cannot start: {e}")))?;
        std::thread::Builder::new()
            .name("strongroom-write".into())
            .spawn(move || rt.block_on(run(conn, lock, rx)))
            .map_err(|e| StoreError::Sqlite(format!("the record writer cannot start: {e}")))?;
        Ok(RecordWriter { jobs })
    }

    /// Runs `work` in the next batch; returns what it gave once that batch
    /// committed (or why this write, or the whole batch, failed).
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (reply, wait) = oneshot::channel();
        let stopped = || StoreError::Sqlite("the record writer stopped".into());
        let work: Work = Box::new(move |c| work(c).map(|v| Box::new(v) as Output));
        self.jobs
            .send(Job { work, reply })
            .await
            .map_err(|_| stopped())?;
        let out = wait.await.map_err(|_| stopped())??;
        out.downcast::<T>()
            .map(|v| *v)
            .map_err(|_| StoreError::Sqlite("the record writer answered another write".into()))
    }
}

async fn run(mut conn: Connection, lock: Arc<tokio::sync::Mutex<()>>, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let (works, replies): (Vec<Work>, Vec<_>) =
            jobs.into_iter().map(|j| (j.work, j.reply)).unzip();
        let results = {
            let _guard = lock.lock().await;
            commit_batch(&mut conn, works)
        };
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// Runs each write in a savepoint of one transaction and commits; one
/// result per write.
fn commit_batch(conn: &mut Connection, works: Vec<Work>) -> Vec<StoreResult<Output>> {
    let n = works.len();
    let fail_all = |why: String| {
        tracing::error!(error = %why, writes = n, "a batch of record writes failed; none is stored");
        (0..n)
            .map(|_| Err(StoreError::Sqlite(why.clone())))
            .collect()
    };
    let all_failed = |e: rusqlite::Error| fail_all(failed(e).to_string());
    // Dropped without commit, the transaction rolls back.
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return all_failed(e),
    };
    let mut results = Vec::with_capacity(n);
    for work in works {
        let result = match tx.savepoint() {
            Ok(mut sp) => {
                // A write that panics fails alone (and the writer goes on).
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&sp)))
                    .unwrap_or_else(|_| Err(StoreError::Sqlite("a record write panicked".into())));
                if r.is_ok() {
                    sp.commit().map_err(failed).and(r)
                } else {
                    // Dropped: rolled back to the savepoint, then released.
                    sp.set_drop_behavior(rusqlite::DropBehavior::Rollback);
                    r
                }
            }
            Err(e) => Err(failed(e)),
        };
        // Some errors (a full disk, an I/O error) make SQLite roll back the
        // whole transaction. What ran before is gone, and what would run
        // after would commit on its own: the batch stops, and fails.
        if tx.is_autocommit() {
            return fail_all(match &result {
                Err(e) => e.to_string(),
                Ok(_) => "SQLite ended the transaction".to_owned(),
            });
        }
        results.push(result);
    }
    match tx.commit() {
        Ok(()) => results,
        Err(e) => all_failed(e),
    }
}
