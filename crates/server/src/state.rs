//! What every handler shares.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use strongroom_core::clock::SharedClock;
use strongroom_core::session::SessionPolicy;
use strongroom_crypto::password::{PasswordHasher, WorkMemory};
use strongroom_store::Store;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// What every handler shares, behind one reference count: handlers,
/// extractors and middleware each take a copy of the state for every
/// request, and a copy is then one counter, not one per part.
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

impl AppState {
    pub fn new(shared: SharedState) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = SharedState;
    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct SharedState {
    pub store: Store,
    pub clock: SharedClock,
    pub sessions: SessionPolicy,
    pub hashing: HashPool,
    pub metrics: Arc<Metrics>,
    pub metrics_allow: Arc<Vec<ipnet::IpNet>>,
    pub keys: Arc<crate::keys::KeyRing>,
    pub audit: crate::audit::AuditLog,
    pub limits: Arc<crate::limits::Limits>,
    pub detection: crate::detection::Detection,
    pub blocks: Arc<crate::detection::Blocks>,
    /// The operator's breached-password list.
    pub deny_list: Arc<crate::passwords::DenyList>,
    /// Passkey ceremonies, bound to the public origin's host name.
    pub webauthn: Arc<webauthn_rs::Webauthn>,
    /// Security checks' inputs, cached under each company's policy epoch.
    pub policy: Arc<crate::policy_cache::PolicyCache>,
}

/// Password hashing off the async executor, a bounded number at a time, so
/// a flood of sign-ins cannot starve other requests. Callers beyond the
/// queue limit are told to retry rather than piling up.
///
/// The hashes run on threads of their own at a lower CPU priority (a
/// higher niceness): a sign-in takes the CPU that other requests leave, so
/// a flood of sign-ins (an attack, or a whole office at nine) slows reads
/// little, while sign-ins alone still use every core.
///
/// With two threads or more, the last one is an overflow thread in Linux's
/// idle scheduling class (`SCHED_IDLE`): it hashes only while every other
/// thread is busy, and only on CPU time nothing else wants. A lowered
/// niceness alone is not enough: the scheduler lets a running hash finish
/// its time slice (milliseconds) before a woken request thread gets the
/// core, which doubled reads' p99 in a sign-in flood; an idle-class thread
/// gives the core up at once. The other threads keep a share of the CPU
/// however busy the server is, so sign-ins never starve.
#[derive(Clone)]
pub struct HashPool {
    hasher: Arc<PasswordHasher>,
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    verifications: Arc<AtomicU64>,
    queue: Arc<Closer>,
}

/// A hash to compute; what it returns hands the result over (and frees
/// the job's place in the pool). The two are apart so that a regular
/// thread is counted free again before its caller can send the next job
/// (see `Hasher::Overflow`).
type HashJob = Box<dyn FnOnce(&mut WorkMemory) -> Handover + Send>;
type Handover = Box<dyn FnOnce() + Send>;

/// How long a hashing thread keeps Argon2's working memory (19 MiB) once
/// no hash is waiting: long enough to carry it across the gaps of a burst
/// of sign-ins, short enough that a quiet server holds none.
const KEEP_WORK_MEMORY: std::time::Duration = std::time::Duration::from_millis(500);

/// The jobs waiting for a hashing thread.
struct Queue {
    state: std::sync::Mutex<QueueState>,
    ready: std::sync::Condvar,
}

struct QueueState {
    jobs: std::collections::VecDeque<HashJob>,
    open: bool,
    /// Threads that are not the overflow thread, and how many of them are
    /// running a job.
    regular: usize,
    regular_busy: usize,
    /// Times a thread has given its working memory back.
    releases: u64,
}

/// Closes the queue (and so ends the threads) when the last pool handle
/// is dropped.
struct Closer(Arc<Queue>);

impl Drop for Closer {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.state.lock() {
            s.open = false;
        }
        self.0.ready.notify_all();
    }
}

/// Which thread of the pool asks for a job.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hasher {
    Regular,
    /// Takes a job only while every regular thread is busy.
    Overflow,
}

enum Next {
    Job(HashJob),
    /// Nothing came while the thread held working memory.
    Idle,
    Closed,
}

impl Queue {
    /// The next job for `who`; waits at most `keep` for one when
    /// `holding` memory.
    fn next(&self, who: Hasher, holding: bool, keep: std::time::Duration) -> Next {
        let Ok(mut s) = self.state.lock() else {
            return Next::Closed;
        };
        let mut timed_out = false;
        loop {
            if who == Hasher::Regular || s.regular_busy >= s.regular {
                if let Some(job) = s.jobs.pop_front() {
                    if who == Hasher::Regular {
                        s.regular_busy += 1;
                    }
                    return Next::Job(job);
                }
            }
            if !s.open {
                return Next::Closed;
            }
            if timed_out {
                return Next::Idle;
            }
            s = if holding {
                match self.ready.wait_timeout(s, keep) {
                    Ok((s, t)) => {
                        timed_out = t.timed_out();
                        s
                    }
                    Err(_) => return Next::Closed,
                }
            } else {
                match self.ready.wait(s) {
                    Ok(s) => s,
                    Err(_) => return Next::Closed,
                }
            };
        }
    }

    /// A regular thread has finished its job.
    fn finished(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.regular_busy = s.regular_busy.saturating_sub(1);
        }
    }
}

impl HashPool {
    /// `concurrency` threads whose niceness is the server's plus `nice`
    /// (0 to 19; 0 keeps the server's priority, and makes no overflow
    /// thread).
    pub fn new(hasher: PasswordHasher, concurrency: usize, nice: i32) -> std::io::Result<Self> {
        Self::with_keep(hasher, concurrency, nice, KEEP_WORK_MEMORY)
    }

    fn with_keep(
        hasher: PasswordHasher,
        concurrency: usize,
        nice: i32,
        keep: std::time::Duration,
    ) -> std::io::Result<Self> {
        let concurrency = concurrency.max(1);
        let overflow = concurrency >= 2 && nice > 0;
        let queue = Arc::new(Queue {
            state: std::sync::Mutex::new(QueueState {
                jobs: std::collections::VecDeque::new(),
                open: true,
                regular: concurrency - usize::from(overflow),
                regular_busy: 0,
                releases: 0,
            }),
            ready: std::sync::Condvar::new(),
        });
        for i in 0..concurrency {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("strongroom-hash-{i}"))
                .spawn(move || {
                    let who = if overflow && i == concurrency - 1 {
                        Hasher::Overflow
                    } else {
                        Hasher::Regular
                    };
                    if who == Hasher::Overflow {
                        idle_class(nice);
                    } else {
                        lower_priority(nice);
                    }
                    // Kept from one hash to the next while hashes keep
                    // coming (see `WorkMemory`).
                    let mut work = WorkMemory::default();
                    loop {
                        match queue.next(who, work.held() > 0, keep) {
                            // A panicking hash fails its own request (its
                            // reply is dropped), not the thread.
                            Next::Job(job) => {
                                let handover =
                                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                        job(&mut work)
                                    }));
                                if who == Hasher::Regular {
                                    queue.finished();
                                }
                                if let Ok(handover) = handover {
                                    handover();
                                }
                            }
                            Next::Idle => {
                                work.release();
                                if let Ok(mut s) = queue.state.lock() {
                                    s.releases += 1;
                                }
                                queue.ready.notify_all();
                            }
                            Next::Closed => return,
                        }
                    }
                })?;
        }
        Ok(HashPool {
            hasher: Arc::new(hasher),
            permits: Arc::new(Semaphore::new(concurrency)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: concurrency * 32,
            verifications: Arc::new(AtomicU64::new(0)),
            queue: Arc::new(Closer(queue)),
        })
    }

    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&PasswordHasher, &mut WorkMemory) -> R + Send + 'static,
    ) -> Result<R, ApiError> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::busy(
                "too many sign-ins at once; retry in a second",
                1,
            ));
        }
        let permit = self.permits.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let permit = permit.map_err(|_| ApiError::internal("hash pool closed"))?;
        let hasher = self.hasher.clone();
        let (done, result) = tokio::sync::oneshot::channel();
        let job: HashJob = Box::new(move |work| {
            let out = f(&hasher, work);
            Box::new(move || {
                drop(permit);
                let _ = done.send(out);
            })
        });
        {
            let queue = &self.queue.0;
            let mut s = queue
                .state
                .lock()
                .map_err(|_| ApiError::internal("hash pool stopped"))?;
            s.jobs.push_back(job);
        }
        // Every thread: the one woken must be one the job is for (see
        // `Hasher::Overflow`).
        self.queue.0.ready.notify_all();
        result
            .await
            .map_err(|_| ApiError::internal("hashing task failed"))
    }

    pub async fn verify(
        &self,
        password: Zeroizing<String>,
        stored: Option<String>,
    ) -> Result<bool, ApiError> {
        let counter = self.verifications.clone();
        self.run(move |h, work| {
            counter.fetch_add(1, Ordering::Relaxed);
            h.verify_in(work, &password, stored.as_deref())
        })
        .await
    }

    /// Password verifications run so far. Every sign-in attempt runs exactly
    /// one, whether or not the account exists; tests check this instead of
    /// timing sign-ins.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    pub async fn hash(&self, password: Zeroizing<String>) -> Result<String, ApiError> {
        self.run(move |h, work| h.hash_in(work, &password))
            .await?
            .map_err(ApiError::from)
    }
}

/// Adds `nice` to the calling thread's niceness (Linux keeps it per
/// thread; 19 at most). Where that fails, hashing runs at the server's
/// priority, with a warning.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    let tid = Some(rustix::thread::gettid());
    let lowered = rustix::process::getpriority_process(tid)
        .and_then(|now| rustix::process::setpriority_process(tid, (now + nice).min(19)));
    if let Err(e) = lowered {
        tracing::warn!(nice, error = %e, "could not lower the priority of password hashing");
    }
}

/// Puts the calling thread in the idle scheduling class (see
/// [`HashPool`]). Where that fails, it gets `nice` like the others, with a
/// warning, and still hashes only while they are all busy.
fn idle_class(nice: i32) {
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, thread_schedule_policy,
        NormalThreadSchedulePolicy, ThreadSchedulePolicy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    let set = set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        idle,
    );
    // The call also sets a niceness, which may be refused once the class
    // is set; the class is what counts (niceness means nothing in it).
    if thread_schedule_policy().ok() != Some(idle) {
        tracing::warn!(error = ?set.err(), "could not put the overflow thread of password hashing in the idle scheduling class");
        lower_priority(nice);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;
    use strongroom_crypto::password::HashParams;

    fn niceness() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    #[tokio::test]
    async fn hashes_run_at_the_configured_niceness_and_requests_do_not() {
        let before = niceness();
        let pool =
            HashPool::new(PasswordHasher::new(HashParams::default()).unwrap(), 2, 7).unwrap();
        let seen = pool.run(|_, _| niceness()).await.unwrap();
        assert_eq!(seen, (before + 7).min(19));
        assert_eq!(niceness(), before, "the caller's thread keeps its priority");
        let stored = pool
            .hash(Zeroizing::new("a long passphrase".into()))
            .await
            .unwrap();
        assert!(pool
            .verify(Zeroizing::new("a long passphrase".into()), Some(stored))
            .await
            .unwrap());
        assert_eq!(pool.verifications(), 1);
    }

    #[tokio::test]
    async fn the_overflow_thread_hashes_only_beside_busy_regular_ones_and_in_the_idle_class() {
        use thread_priority::unix::ThreadSchedulePolicy::Normal;
        use thread_priority::unix::{thread_schedule_policy, NormalThreadSchedulePolicy};
        let idle = Normal(NormalThreadSchedulePolicy::Idle);
        let pool =
            HashPool::new(PasswordHasher::new(HashParams::default()).unwrap(), 2, 7).unwrap();
        let policy = || thread_schedule_policy().unwrap();
        // One at a time, jobs go to the regular thread, never the overflow.
        for _ in 0..20 {
            assert_ne!(pool.run(move |_, _| policy()).await.unwrap(), idle);
        }
        // While the regular thread is busy, the next job runs on the
        // overflow thread, in the idle class.
        let (started, is_running) = tokio::sync::oneshot::channel();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(move |_, _| {
                    started.send(()).unwrap();
                    held.recv().unwrap();
                    policy()
                })
                .await
                .unwrap()
            }
        });
        is_running.await.unwrap();
        assert_eq!(pool.run(move |_, _| policy()).await.unwrap(), idle);
        release.send(()).unwrap();
        assert_ne!(busy.await.unwrap(), idle);
        // With no lowered priority asked for, there is no overflow thread.
        let flat =
            HashPool::new(PasswordHasher::new(HashParams::default()).unwrap(), 2, 0).unwrap();
        assert_ne!(flat.run(move |_, _| policy()).await.unwrap(), idle);
    }

    #[tokio::test]
    async fn working_memory_is_kept_between_hashes_and_released_when_idle() {
        let hasher = || PasswordHasher::new(HashParams::default()).unwrap();
        let held = 19_456 * 1024;
        let hash = |pool: &HashPool| {
            let pool = pool.clone();
            async move { pool.hash(Zeroizing::new("a long passphrase".into())).await }
        };
        // One thread, which keeps the memory for as long as a test runs.
        let keeping = HashPool::with_keep(hasher(), 1, 0, Duration::from_secs(3600)).unwrap();
        assert_eq!(keeping.run(|_, w| w.held()).await.unwrap(), 0);
        hash(&keeping).await.unwrap();
        assert_eq!(keeping.run(|_, w| w.held()).await.unwrap(), held);
        // One that gives it back as soon as no job is waiting.
        let quick = HashPool::with_keep(hasher(), 1, 0, Duration::ZERO).unwrap();
        hash(&quick).await.unwrap();
        let queue = quick.queue.0.clone();
        tokio::task::spawn_blocking(move || {
            let s = queue.state.lock().unwrap();
            drop(queue.ready.wait_while(s, |s| s.releases == 0).unwrap());
        })
        .await
        .unwrap();
        assert_eq!(quick.run(|_, w| w.held()).await.unwrap(), 0);
    }
}
