//! The key ring: company keys unwrapped on first use by the key provider
//! and kept in zeroizing memory; new companies' keys; master-key rotation.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use strongroom_core::CompanyId;
use strongroom_crypto::envelope::SecretKey;
use strongroom_crypto::provider::KeyProvider;
use strongroom_crypto::CryptoError;
use strongroom_store::{wrap_context, KeyPurpose, NewKey, Store, StoreError, WrappedKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("company key {purpose} v{version} does not exist")]
    Missing { purpose: &'static str, version: i64 },
}

type CacheKey = (CompanyId, KeyPurpose, i64);

pub struct KeyRing {
    provider: Arc<dyn KeyProvider>,
    store: Store,
    cache: RwLock<HashMap<CacheKey, Arc<SecretKey>>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("provider", &self.provider.describe())
            .finish_non_exhaustive()
    }
}

/// Generates and wraps the first keys of a new company.
pub fn new_company_keys(
    provider: &dyn KeyProvider,
    company_code: &str,
) -> Result<Vec<NewKey>, CryptoError> {
    KeyPurpose::ALL
        .iter()
        .map(|p| new_key(provider, company_code, *p, 1))
        .collect()
}

/// Generates one key version and wraps it under the current master key.
pub fn new_key(
    provider: &dyn KeyProvider,
    company_code: &str,
    purpose: KeyPurpose,
    version: i64,
) -> Result<NewKey, CryptoError> {
    let key = SecretKey::generate(version)?;
    let wrapped = provider.wrap(key.expose(), &wrap_context(company_code, purpose, version))?;
    Ok(NewKey {
        purpose,
        version,
        wrapped,
        wrap_key_id: provider.current_key_id(),
    })
}

impl KeyRing {
    pub fn new(provider: Arc<dyn KeyProvider>, store: Store) -> Self {
        KeyRing {
            provider,
            store,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// The provider, shared (for work that outlives a request).
    pub fn shared_provider(&self) -> Arc<dyn KeyProvider> {
        self.provider.clone()
    }

    pub fn provider(&self) -> &dyn KeyProvider {
        self.provider.as_ref()
    }

    /// A company key of a given version.
    pub async fn key(
        &self,
        company: CompanyId,
        purpose: KeyPurpose,
        version: i64,
    ) -> Result<Arc<SecretKey>, KeyError> {
        let ck = (company, purpose, version);
        if let Some(k) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ck)
        {
            return Ok(k.clone());
        }
        let stored = self
            .store
            .company_key(company, purpose, version)
            .await?
            .ok_or(KeyError::Missing {
                purpose: purpose.as_str(),
                version,
            })?;
        let key = Arc::new(self.unwrap(&stored)?);
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ck, key.clone());
        Ok(key)
    }

    /// The version new writes use. Read from the store every time, so a
    /// rotation made by another node or the CLI applies at once.
    pub async fn current(
        &self,
        company: CompanyId,
        purpose: KeyPurpose,
    ) -> Result<Arc<SecretKey>, KeyError> {
        let v = self.store.current_key_version(company, purpose).await?;
        self.key(company, purpose, v).await
    }

    /// The current data and index keys, looked up together.
    pub async fn current_data_and_index(
        &self,
        company: CompanyId,
    ) -> Result<(Arc<SecretKey>, Arc<SecretKey>), KeyError> {
        let (d, i) = self.store.current_data_and_index_versions(company).await?;
        Ok((
            self.key(company, KeyPurpose::Data, d).await?,
            self.key(company, KeyPurpose::Index, i).await?,
        ))
    }

    fn unwrap(&self, stored: &WrappedKey) -> Result<SecretKey, KeyError> {
        let ctx = wrap_context(&stored.company_code, stored.purpose, stored.version);
        let raw = self
            .provider
            .unwrap(&stored.wrap_key_id, &stored.wrapped, &ctx)?;
        Ok(SecretKey::from_bytes(stored.version, &raw)?)
    }

    /// Makes sure every company has its keys (companies created before keys
    /// existed get them now, with a re-encryption that seals any value stored
    /// in the clear). Returns how many companies were given keys.
    pub async fn ensure_company_keys(&self, now: DateTime<Utc>) -> Result<usize, KeyError> {
        let have: std::collections::HashSet<String> = self
            .store
            .all_keys()
            .await?
            .into_iter()
            .map(|k| k.company_code)
            .collect();
        let mut added = 0;
        for c in self.store.list_companies().await? {
            if have.contains(&c.code) {
                continue;
            }
            let Some((id, _)) = self.store.company_by_code(&c.code).await? else {
                continue;
            };
            for purpose in [
                KeyPurpose::Index,
                KeyPurpose::AuditSigning,
                KeyPurpose::Data,
            ] {
                let k = new_key(self.provider.as_ref(), &c.code, purpose, 1)?;
                self.store.add_key_version(id, &k, now).await?;
            }
            added += 1;
        }
        Ok(added)
    }

    /// Starts a new data-key version for a company: new writes use it at
    /// once; a re-encryption moves existing values to it.
    pub async fn rotate_data_key(
        &self,
        company: CompanyId,
        company_code: &str,
        now: DateTime<Utc>,
    ) -> Result<i64, KeyError> {
        let next = self
            .store
            .current_key_version(company, KeyPurpose::Data)
            .await?
            + 1;
        let k = new_key(self.provider.as_ref(), company_code, KeyPurpose::Data, next)?;
        self.store.add_key_version(company, &k, now).await?;
        Ok(next)
    }
}

/// Re-wraps every stored company key, and the installation's own keys,
/// under the provider's current master key (after a new master key was
/// added). Records are not touched.
pub async fn rewrap_all(provider: &dyn KeyProvider, store: &Store) -> Result<usize, KeyError> {
    let current = provider.current_key_id();
    // The secret under `ctx`, wrapped by the current master key; None when
    // it already is.
    let rewrapped = |key_id: &str, wrapped: &[u8], ctx: &str| -> Result<_, KeyError> {
        if key_id == current {
            return Ok(None);
        }
        let raw = provider.unwrap(key_id, wrapped, ctx)?;
        Ok(Some(provider.wrap(&raw, ctx)?))
    };
    let mut n = 0;
    for k in store.all_keys().await? {
        let ctx = wrap_context(&k.company_code, k.purpose, k.version);
        if let Some(w) = rewrapped(&k.wrap_key_id, &k.wrapped, &ctx)? {
            store.rewrap_key(&k, w, &current).await?;
            n += 1;
        }
    }
    for k in store.all_server_keys().await? {
        let ctx = server_key_context(&k.purpose, k.version);
        if let Some(w) = rewrapped(&k.wrap_key_id, &k.wrapped, &ctx)? {
            store.rewrap_server_key(&k, w, &current).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// The context an installation key (not a company's) is wrapped under.
pub fn server_key_context(purpose: &str, version: i64) -> String {
    format!("strongroom/server-key/v1/{purpose}/{version}")
}
