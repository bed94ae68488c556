//! What every handler shares.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use strongroom_core::clock::SharedClock;
use strongroom_core::session::SessionPolicy;
use strongroom_crypto::password::PasswordHasher;
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
#[derive(Clone)]
pub struct HashPool {
    hasher: Arc<PasswordHasher>,
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    verifications: Arc<AtomicU64>,
    jobs: std::sync::mpsc::Sender<HashJob>,
}

type HashJob = Box<dyn FnOnce() + Send>;

impl HashPool {
    /// `concurrency` threads whose niceness is the server's plus `nice`
    /// (0 to 19; 0 keeps the server's priority).
    pub fn new(hasher: PasswordHasher, concurrency: usize, nice: i32) -> std::io::Result<Self> {
        let concurrency = concurrency.max(1);
        let (jobs, queue) = std::sync::mpsc::channel::<HashJob>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..concurrency {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("strongroom-hash-{i}"))
                .spawn(move || {
                    lower_priority(nice);
                    loop {
                        // The lock is held only while waiting for a job.
                        let job = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(_) => return,
                        };
                        match job {
                            // A panicking hash fails its own request (its
                            // reply is dropped), not the thread.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            // Every pool handle is gone.
                            Err(_) => return,
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
            jobs,
        })
    }

    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&PasswordHasher) -> R + Send + 'static,
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
        self.jobs
            .send(Box::new(move || {
                let _permit = permit;
                let _ = done.send(f(&hasher));
            }))
            .map_err(|_| ApiError::internal("hash pool stopped"))?;
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
        self.run(move |h| {
            counter.fetch_add(1, Ordering::Relaxed);
            h.verify(&password, stored.as_deref())
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
        self.run(move |h| h.hash(&password))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use strongroom_crypto::password::HashParams;

    fn niceness() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    #[tokio::test]
    async fn hashes_run_at_the_configured_niceness_and_requests_do_not() {
        let before = niceness();
        let pool =
            HashPool::new(PasswordHasher::new(HashParams::default()).unwrap(), 2, 7).unwrap();
        let seen = pool.run(|_| niceness()).await.unwrap();
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
}
