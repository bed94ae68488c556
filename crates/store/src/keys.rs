//! Wrapped company keys, re-encryption progress and audit events.

use crate::{company, from_ts, get, opt_ts, ts, Store, StoreError, StoreResult};
use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use strongroom_core::CompanyId;

/// What a company key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyPurpose {
    /// Encrypts field values.
    Data,
    /// Keys the blind indexes.
    Index,
    /// Signs audit-log checkpoints (Ed25519 seed).
    AuditSigning,
}

impl KeyPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPurpose::Data => "data",
            KeyPurpose::Index => "index",
            KeyPurpose::AuditSigning => "audit_signing",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "data" => Some(KeyPurpose::Data),
            "index" => Some(KeyPurpose::Index),
            "audit_signing" => Some(KeyPurpose::AuditSigning),
            _ => None,
        }
    }

    pub const ALL: [KeyPurpose; 3] = [
        KeyPurpose::Data,
        KeyPurpose::Index,
        KeyPurpose::AuditSigning,
    ];
}

/// A key as stored: wrapped, never usable without the master key.
#[derive(Clone)]
pub struct WrappedKey {
    pub company: CompanyId,
    pub company_code: String,
    pub purpose: KeyPurpose,
    pub version: i64,
    pub wrapped: Vec<u8>,
    pub wrap_key_id: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappedKey")
            .field("company", &self.company_code)
            .field("purpose", &self.purpose)
            .field("version", &self.version)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// A new wrapped key to store.
#[derive(Clone)]
pub struct NewKey {
    pub purpose: KeyPurpose,
    pub version: i64,
    pub wrapped: Vec<u8>,
    pub wrap_key_id: String,
}

/// The context string a key is wrapped under: binds the wrapped bytes to
/// their company, purpose and version.
pub fn wrap_context(company_code: &str, purpose: KeyPurpose, version: i64) -> String {
    format!("company:{company_code}/{}/v{version}", purpose.as_str())
}

const KEY_COLUMNS: &str = "k.company_id, c.code, k.purpose, k.version, k.wrapped, k.wrap_key_id, \
    k.status, k.created_at, k.retired_at";

fn key_from_row(r: &AnyRow) -> StoreResult<WrappedKey> {
    let purpose: String = get(r, "purpose")?;
    Ok(WrappedKey {
        company: company(r)?,
        company_code: get(r, "code")?,
        purpose: KeyPurpose::parse(&purpose)
            .ok_or_else(|| StoreError::Corrupt(format!("key purpose '{purpose}'")))?,
        version: get(r, "version")?,
        wrapped: get(r, "wrapped")?,
        wrap_key_id: get(r, "wrap_key_id")?,
        status: get(r, "status")?,
        created_at: from_ts(get(r, "created_at")?)?,
        retired_at: opt_ts(get(r, "retired_at")?)?,
    })
}

/// Progress of a re-encryption to a new data-key version.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub company: CompanyId,
    pub to_version: i64,
    pub after_record: i64,
    pub records_done: i64,
    pub finished_at: Option<DateTime<Utc>>,
}

pub(crate) async fn insert_key(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    company: CompanyId,
    key: &NewKey,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO company_keys (company_id, purpose, version, wrapped, wrap_key_id, status, created_at) \
         VALUES ($1, $2, $3, $4, $5, 'active', $6)",
    )
    .bind(company.0)
    .bind(key.purpose.as_str())
    .bind(key.version)
    .bind(key.wrapped.clone())
    .bind(&key.wrap_key_id)
    .bind(ts(now))
    .execute(&mut **tx)
    .await
    .map_err(|e| StoreError::map_conflict(e, "that key version exists already", "no such company"))?;
    Ok(())
}

impl Store {
    /// Whether any wrapped key is stored (then the master key must exist).
    pub async fn has_wrapped_keys(&self) -> StoreResult<bool> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM company_keys")
            .fetch_one(&self.pool)
            .await?;
        Ok(get::<i64>(&row, "n")? > 0)
    }

    /// Every stored key of every company (for status and master-key rotation).
    pub async fn all_keys(&self) -> StoreResult<Vec<WrappedKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM company_keys k JOIN companies c ON c.id = k.company_id \
             ORDER BY c.code, k.purpose, k.version"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    pub async fn company_key(
        &self,
        company: CompanyId,
        purpose: KeyPurpose,
        version: i64,
    ) -> StoreResult<Option<WrappedKey>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM company_keys k JOIN companies c ON c.id = k.company_id \
             WHERE k.company_id = $1 AND k.purpose = $2 AND k.version = $3"
        ))
        .bind(company.0)
        .bind(purpose.as_str())
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// The newest version of a company's key for `purpose`: the one new
    /// writes use.
    pub async fn current_key_version(
        &self,
        company: CompanyId,
        purpose: KeyPurpose,
    ) -> StoreResult<i64> {
        let row = sqlx::query(
            "SELECT MAX(version) AS v FROM company_keys WHERE company_id = $1 AND purpose = $2",
        )
        .bind(company.0)
        .bind(purpose.as_str())
        .fetch_one(&self.pool)
        .await?;
        get::<Option<i64>>(&row, "v")?
            .ok_or_else(|| StoreError::Corrupt(format!("company has no {} key", purpose.as_str())))
    }

    /// The current data and index key versions of a company, in one query
    /// (every record request needs both).
    pub async fn current_data_and_index_versions(
        &self,
        company: CompanyId,
    ) -> StoreResult<(i64, i64)> {
        let rows = sqlx::query(
            "SELECT purpose, MAX(version) AS v FROM company_keys \
             WHERE company_id = $1 AND purpose IN ('data', 'index') GROUP BY purpose",
        )
        .bind(company.0)
        .fetch_all(&self.pool)
        .await?;
        let (mut data, mut index) = (None, None);
        for r in &rows {
            let p: String = get(r, "purpose")?;
            let v: i64 = get(r, "v")?;
            match p.as_str() {
                "data" => data = Some(v),
                _ => index = Some(v),
            }
        }
        match (data, index) {
            (Some(d), Some(i)) => Ok((d, i)),
            _ => Err(StoreError::Corrupt(
                "company lacks a data or index key".into(),
            )),
        }
    }

    /// Adds a new key version; for data keys, also records a re-encryption
    /// to it. Older versions of the purpose become `retiring`.
    pub async fn add_key_version(
        &self,
        company: CompanyId,
        key: &NewKey,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query(
            "UPDATE company_keys SET status = 'retiring' \
             WHERE company_id = $1 AND purpose = $2 AND status = 'active'",
        )
        .bind(company.0)
        .bind(key.purpose.as_str())
        .execute(&mut *w.tx)
        .await?;
        insert_key(&mut w.tx, company, key, now).await?;
        if key.purpose == KeyPurpose::Data {
            sqlx::query(
                "INSERT INTO key_rotations (company_id, to_version, started_at, after_record, records_done) \
                 VALUES ($1, $2, $3, 0, 0)",
            )
            .bind(company.0)
            .bind(key.version)
            .bind(ts(now))
            .execute(&mut *w.tx)
            .await?;
        }
        w.commit().await
    }

    /// Replaces the wrapping of one key (master-key rotation).
    pub async fn rewrap_key(
        &self,
        key: &WrappedKey,
        wrapped: Vec<u8>,
        wrap_key_id: &str,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE company_keys SET wrapped = $4, wrap_key_id = $5 \
             WHERE company_id = $1 AND purpose = $2 AND version = $3",
        )
        .bind(key.company.0)
        .bind(key.purpose.as_str())
        .bind(key.version)
        .bind(wrapped)
        .bind(wrap_key_id)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Err(StoreError::NotFound("key vanished during rewrap".into()));
        }
        w.commit().await
    }

    /// Unfinished re-encryptions.
    pub async fn open_rotations(&self) -> StoreResult<Vec<Rotation>> {
        let rows = sqlx::query(
            "SELECT company_id, to_version, after_record, records_done, finished_at FROM key_rotations \
             WHERE finished_at IS NULL ORDER BY company_id, to_version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Rotation {
                    company: company(r)?,
                    to_version: get(r, "to_version")?,
                    after_record: get(r, "after_record")?,
                    records_done: get(r, "records_done")?,
                    finished_at: opt_ts(get(r, "finished_at")?)?,
                })
            })
            .collect()
    }

    pub async fn rotations(&self, company: CompanyId) -> StoreResult<Vec<Rotation>> {
        let rows = sqlx::query(
            "SELECT company_id, to_version, after_record, records_done, finished_at FROM key_rotations \
             WHERE company_id = $1 ORDER BY to_version",
        )
        .bind(company.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Rotation {
                    company: crate::company(r)?,
                    to_version: get(r, "to_version")?,
                    after_record: get(r, "after_record")?,
                    records_done: get(r, "records_done")?,
                    finished_at: opt_ts(get(r, "finished_at")?)?,
                })
            })
            .collect()
    }

    pub async fn record_rotation_progress(
        &self,
        company: CompanyId,
        to_version: i64,
        after_record: i64,
        done: i64,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query(
            "UPDATE key_rotations SET after_record = $3, records_done = records_done + $4 \
             WHERE company_id = $1 AND to_version = $2",
        )
        .bind(company.0)
        .bind(to_version)
        .bind(after_record)
        .bind(done)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    /// Marks a re-encryption finished and retires every older data-key
    /// version, once nothing stored refers to them any more.
    pub async fn finish_rotation(
        &self,
        company: CompanyId,
        to_version: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query(
            "UPDATE key_rotations SET finished_at = $3 WHERE company_id = $1 AND to_version = $2",
        )
        .bind(company.0)
        .bind(to_version)
        .bind(ts(now))
        .execute(&mut *w.tx)
        .await?;
        sqlx::query(
            "UPDATE company_keys SET status = 'retired', retired_at = $3 \
             WHERE company_id = $1 AND purpose = 'data' AND version < $2 AND status <> 'retired'",
        )
        .bind(company.0)
        .bind(to_version)
        .bind(ts(now))
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    /// Records of a company after `after`, in id order, with their stored
    /// data, for re-encryption: (id, record type key, public id, data text).
    pub async fn records_for_reencryption(
        &self,
        company: CompanyId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, String, String, String)>> {
        let rows = sqlx::query(
            "SELECT r.id, t.type_key, r.public_id, r.data FROM records r \
             JOIN record_types t ON t.id = r.record_type_id AND t.company_id = r.company_id \
             WHERE r.company_id = $1 AND r.id > $2 ORDER BY r.id LIMIT $3",
        )
        .bind(company.0)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    get(r, "id")?,
                    get(r, "type_key")?,
                    get(r, "public_id")?,
                    get(r, "data")?,
                ))
            })
            .collect()
    }

    /// Versions of one record with their stored data: (version, data text).
    pub async fn versions_for_reencryption(
        &self,
        company: CompanyId,
        record_id: i64,
    ) -> StoreResult<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT version, data FROM record_versions WHERE company_id = $1 AND record_id = $2 ORDER BY version",
        )
        .bind(company.0)
        .bind(record_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((get(r, "version")?, get(r, "data")?)))
            .collect()
    }

    /// Replaces stored data with a re-encrypted form of the same values,
    /// only if it has not changed meanwhile (a concurrent write wins; the
    /// caller retries). Does not make a new version: the content is the same.
    /// `versions` re-encrypts history rows in the same transaction.
    pub async fn replace_sealed_data(
        &self,
        company: CompanyId,
        record_id: i64,
        old: &str,
        new: &str,
        index: &crate::IndexEntries,
        versions: &[(i64, String, String)],
    ) -> StoreResult<bool> {
        let mut w = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE records SET data = $4 WHERE company_id = $1 AND id = $2 AND data = $3",
        )
        .bind(company.0)
        .bind(record_id)
        .bind(old)
        .bind(new)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Ok(false);
        }
        let type_id: i64 = get(
            &sqlx::query("SELECT record_type_id FROM records WHERE company_id = $1 AND id = $2")
                .bind(company.0)
                .bind(record_id)
                .fetch_one(&mut *w.tx)
                .await?,
            "record_type_id",
        )?;
        sqlx::query("DELETE FROM record_index WHERE company_id = $1 AND record_id = $2")
            .bind(company.0)
            .bind(record_id)
            .execute(&mut *w.tx)
            .await?;
        crate::records::write_index(&mut w.tx, self.dialect, company, type_id, record_id, index)
            .await?;
        for (version, old_v, new_v) in versions {
            sqlx::query(
                "UPDATE record_versions SET data = $5 \
                 WHERE company_id = $1 AND record_id = $2 AND version = $3 AND data = $4",
            )
            .bind(company.0)
            .bind(record_id)
            .bind(*version)
            .bind(old_v)
            .bind(new_v)
            .execute(&mut *w.tx)
            .await?;
        }
        w.commit().await?;
        Ok(true)
    }

    pub async fn company_code(&self, company: CompanyId) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT code FROM companies WHERE id = $1")
            .bind(company.0)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| get(&r, "code")).transpose()
    }

    pub async fn count_records(&self, company: CompanyId) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM records WHERE company_id = $1")
            .bind(company.0)
            .fetch_one(&self.pool)
            .await?;
        get(&row, "n")
    }
}

impl Store {
    /// Deletes a company and everything it owns, its keys first. Without
    /// its data keys, any copy of its ciphertexts (in an old backup, say)
    /// stays unreadable unless that copy also holds the wrapped keys and the
    /// master key that wrapped them.
    pub async fn delete_company(&self, company: CompanyId) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        for table in [
            "company_keys",
            "key_rotations",
            "record_index",
            "record_versions",
            "records",
            "record_fields",
            "record_types",
            "sessions",
            "ip_rules",
            "access_windows",
            "company_settings",
            "password_history",
            "password_rules",
            "user_password_rules",
            "sign_in_policy",
            "sign_in_challenges",
            "totp_factors",
            "recovery_codes",
            "passkeys",
            "api_keys",
            "user_roles",
            "department_roles",
            "roles",
            "pledge_acceptances",
            "pledge_versions",
            "training_policy",
            "users",
            "departments",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE company_id = $1"))
                .bind(company.0)
                .execute(&mut *w.tx)
                .await?;
        }
        sqlx::query("DELETE FROM sign_in_failures WHERE chain = $1")
            .bind(company.0)
            .execute(&mut *w.tx)
            .await?;
        let n = sqlx::query("DELETE FROM companies WHERE id = $1")
            .bind(company.0)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if n != 1 {
            return Err(StoreError::NotFound("no such company".into()));
        }
        // Last: the deletions above moved it once more.
        sqlx::query("DELETE FROM policy_epochs WHERE company_id = $1")
            .bind(company.0)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
    }
}

/// A key of the installation itself (not of a company), as stored: the
/// secret half only wrapped by the master key, the public half in clear.
#[derive(Clone)]
pub struct ServerKey {
    pub purpose: String,
    pub version: i64,
    pub wrapped: Vec<u8>,
    pub wrap_key_id: String,
    pub public_key: Vec<u8>,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKey")
            .field("purpose", &self.purpose)
            .field("version", &self.version)
            .field("wrap_key_id", &self.wrap_key_id)
            .finish_non_exhaustive()
    }
}

const SERVER_KEY_COLUMNS: &str = "purpose, version, wrapped, wrap_key_id, public_key, created_at";

fn server_key_from_row(row: &AnyRow) -> StoreResult<ServerKey> {
    Ok(ServerKey {
        purpose: get(row, "purpose")?,
        version: get(row, "version")?,
        wrapped: get(row, "wrapped")?,
        wrap_key_id: get(row, "wrap_key_id")?,
        public_key: get(row, "public_key")?,
        created_at: from_ts(get(row, "created_at")?)?,
    })
}

impl Store {
    /// The newest version of the installation's key for `purpose`.
    pub async fn server_key(&self, purpose: &str) -> StoreResult<Option<ServerKey>> {
        let row = sqlx::query(&format!(
            "SELECT {SERVER_KEY_COLUMNS} FROM server_keys WHERE purpose = $1 \
             ORDER BY version DESC LIMIT 1"
        ))
        .bind(purpose)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(server_key_from_row).transpose()
    }

    /// Stores a new installation key unless that purpose and version exist
    /// already (another node made it first).
    pub async fn add_server_key(&self, k: &ServerKey) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query(&format!(
            "INSERT INTO server_keys ({SERVER_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (purpose, version) DO NOTHING"
        ))
        .bind(k.purpose.clone())
        .bind(k.version)
        .bind(k.wrapped.clone())
        .bind(k.wrap_key_id.clone())
        .bind(k.public_key.clone())
        .bind(ts(k.created_at))
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    /// Every installation key (for re-wrapping under a new master key).
    pub async fn all_server_keys(&self) -> StoreResult<Vec<ServerKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {SERVER_KEY_COLUMNS} FROM server_keys ORDER BY purpose, version"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(server_key_from_row).collect()
    }

    pub async fn rewrap_server_key(
        &self,
        key: &ServerKey,
        wrapped: Vec<u8>,
        wrap_key_id: &str,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE server_keys SET wrapped = $3, wrap_key_id = $4 WHERE purpose = $1 AND version = $2",
        )
        .bind(key.purpose.clone())
        .bind(key.version)
        .bind(wrapped)
        .bind(wrap_key_id)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Err(StoreError::NotFound("key vanished during rewrap".into()));
        }
        w.commit().await
    }
}
