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

#[derive(Clone)]
pub struct AppState {
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
#[derive(Clone)]
pub struct HashPool {
    hasher: Arc<PasswordHasher>,
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    verifications: Arc<AtomicU64>,
}

impl HashPool {
    pub fn new(hasher: PasswordHasher, concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        HashPool {
            hasher: Arc::new(hasher),
            permits: Arc::new(Semaphore::new(concurrency)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: concurrency * 32,
            verifications: Arc::new(AtomicU64::new(0)),
        }
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
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&hasher)
        })
        .await
        .map_err(|e| ApiError::internal(format!("hashing task failed: {e}")))?;
        Ok(out)
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
