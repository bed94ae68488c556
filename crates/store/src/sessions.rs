//! Sessions, stored by the hash of their token.

use crate::{flag, from_ts, get, ts, Store, StoreError, StoreResult};
use chrono::{DateTime, Utc};
use strongroom_core::session::SessionTimes;
use strongroom_core::{CompanyId, UserKey};
use strongroom_proto::UserStatus;

/// A session with the facts about its user that every request needs.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub company: CompanyId,
    pub company_code: String,
    pub user: UserKey,
    pub user_id: String,
    pub user_status: UserStatus,
    pub is_admin: bool,
    pub is_master: bool,
    pub department_id: Option<i64>,
    pub times: SessionTimes,
}

impl Store {
    #[allow(clippy::too_many_arguments)]
    pub async fn create_session(
        &self,
        company: CompanyId,
        user: UserKey,
        token_hash: &[u8; 32],
        times: SessionTimes,
        client_ip: Option<&str>,
        user_agent: Option<&str>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO sessions (token_hash, company_id, user_key, created_at, last_seen_at, \
               expires_at, client_ip, user_agent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(token_hash.to_vec())
        .bind(company.0)
        .bind(user.0)
        .bind(ts(times.created_at))
        .bind(ts(times.last_seen_at))
        .bind(ts(times.expires_at))
        .bind(client_ip)
        .bind(user_agent)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(())
    }

    /// The session behind a token hash, with its user. This is the one
    /// lookup that is not scoped by company: it is how a request finds it.
    pub async fn session(&self, token_hash: &[u8; 32]) -> StoreResult<Option<SessionRecord>> {
        let row = sqlx::query(
            "SELECT s.company_id, c.code, s.user_key, u.user_id, u.status, u.is_admin, u.is_master, \
               u.department_id, s.created_at, s.last_seen_at, s.expires_at \
             FROM sessions s \
             JOIN users u ON u.id = s.user_key AND u.company_id = s.company_id \
             JOIN companies c ON c.id = s.company_id \
             WHERE s.token_hash = $1",
        )
        .bind(token_hash.to_vec())
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let status: String = get(&r, "status")?;
        Ok(Some(SessionRecord {
            company: crate::company(&r)?,
            company_code: get(&r, "code")?,
            user: UserKey(get(&r, "user_key")?),
            user_id: get(&r, "user_id")?,
            user_status: UserStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("user status '{status}'")))?,
            is_admin: flag(&r, "is_admin")?,
            is_master: flag(&r, "is_master")?,
            department_id: get(&r, "department_id")?,
            times: SessionTimes {
                created_at: from_ts(get(&r, "created_at")?)?,
                last_seen_at: from_ts(get(&r, "last_seen_at")?)?,
                expires_at: from_ts(get(&r, "expires_at")?)?,
            },
        }))
    }

    pub async fn touch_session(
        &self,
        token_hash: &[u8; 32],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query(
            "UPDATE sessions SET last_seen_at = $2 WHERE token_hash = $1 AND last_seen_at < $2",
        )
        .bind(token_hash.to_vec())
        .bind(ts(now))
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(())
    }

    /// Ends one session. Returns whether it existed.
    pub async fn end_session(&self, token_hash: &[u8; 32]) -> StoreResult<bool> {
        let mut w = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(token_hash.to_vec())
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        w.commit().await?;
        Ok(n > 0)
    }

    /// Removes sessions past their absolute lifetime. Idle ones are removed
    /// when next presented.
    pub async fn purge_expired_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let mut w = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(ts(now))
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        w.commit().await?;
        Ok(n)
    }

    /// The stored token hashes of a company's sessions (for checks that no
    /// token is kept in the clear).
    pub async fn session_token_hashes(&self, company: CompanyId) -> StoreResult<Vec<Vec<u8>>> {
        let rows = sqlx::query("SELECT token_hash FROM sessions WHERE company_id = $1")
            .bind(company.0)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| get(r, "token_hash")).collect()
    }

    pub async fn count_user_sessions(&self, company: CompanyId, user: UserKey) -> StoreResult<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM sessions WHERE company_id = $1 AND user_key = $2",
        )
        .bind(company.0)
        .bind(user.0)
        .fetch_one(&self.pool)
        .await?;
        get(&row, "n")
    }
}

pub(crate) async fn end_user_sessions(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    company: CompanyId,
    user: UserKey,
) -> StoreResult<u64> {
    Ok(
        sqlx::query("DELETE FROM sessions WHERE company_id = $1 AND user_key = $2")
            .bind(company.0)
            .bind(user.0)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
    )
}

/// One of a user's sessions, as listed to the user or an administrator.
#[derive(Debug, Clone)]
pub struct SessionEntry {
    pub token_hash: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Store {
    /// A user's sessions still within their lifetime, oldest first.
    pub async fn user_sessions(
        &self,
        company: CompanyId,
        user: UserKey,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<SessionEntry>> {
        let rows = sqlx::query(
            "SELECT token_hash, created_at, last_seen_at, expires_at, client_ip, user_agent FROM sessions \
             WHERE company_id = $1 AND user_key = $2 AND expires_at > $3 ORDER BY created_at, token_hash",
        )
        .bind(company.0)
        .bind(user.0)
        .bind(ts(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SessionEntry {
                    token_hash: get(r, "token_hash")?,
                    created_at: from_ts(get(r, "created_at")?)?,
                    last_seen_at: from_ts(get(r, "last_seen_at")?)?,
                    expires_at: from_ts(get(r, "expires_at")?)?,
                    client_ip: get(r, "client_ip")?,
                    user_agent: get(r, "user_agent")?,
                })
            })
            .collect()
    }

    /// (max sessions per user, when_full); (0, "refuse_new") when unset.
    pub async fn session_policy(&self, company: CompanyId) -> StoreResult<(i64, String)> {
        let row = sqlx::query(
            "SELECT max_sessions, when_full FROM company_settings WHERE company_id = $1",
        )
        .bind(company.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => (get(&r, "max_sessions")?, get(&r, "when_full")?),
            None => (0, "refuse_new".into()),
        })
    }

    pub async fn set_session_policy(
        &self,
        company: CompanyId,
        max: i64,
        when_full: &str,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query("DELETE FROM company_settings WHERE company_id = $1")
            .bind(company.0)
            .execute(&mut *w.tx)
            .await?;
        sqlx::query("INSERT INTO company_settings (company_id, max_sessions, when_full) VALUES ($1, $2, $3)")
            .bind(company.0)
            .bind(max)
            .bind(when_full)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
    }
}

impl Store {
    pub async fn password_rules(
        &self,
        company: CompanyId,
    ) -> StoreResult<strongroom_core::password::PasswordRules> {
        let row = sqlx::query(
            "SELECT min_length, min_score, require_classes, history FROM password_rules WHERE company_id = $1",
        )
        .bind(company.0)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(Default::default());
        };
        let n = |c: &str| -> StoreResult<i64> { get(&r, c) };
        Ok(strongroom_core::password::PasswordRules {
            min_length: usize::try_from(n("min_length")?).unwrap_or(12),
            min_score: u8::try_from(n("min_score")?).unwrap_or(3),
            require_classes: u8::try_from(n("require_classes")?).unwrap_or(0),
            history: u8::try_from(n("history")?).unwrap_or(0),
        })
    }

    pub async fn set_password_rules(
        &self,
        company: CompanyId,
        r: &strongroom_core::password::PasswordRules,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query("DELETE FROM password_rules WHERE company_id = $1")
            .bind(company.0)
            .execute(&mut *w.tx)
            .await?;
        sqlx::query(
            "INSERT INTO password_rules (company_id, min_length, min_score, require_classes, history) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(company.0)
        .bind(r.min_length as i64)
        .bind(i64::from(r.min_score))
        .bind(i64::from(r.require_classes))
        .bind(i64::from(r.history))
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    /// The user's current password hash and up to `n` earlier ones, newest first.
    pub async fn recent_password_hashes(
        &self,
        company: CompanyId,
        user: UserKey,
        n: i64,
    ) -> StoreResult<Vec<String>> {
        let mut out = Vec::new();
        let cur = sqlx::query("SELECT password_hash FROM users WHERE company_id = $1 AND id = $2")
            .bind(company.0)
            .bind(user.0)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(r) = cur {
            out.push(get(&r, "password_hash")?);
        }
        if n > 0 {
            let rows = sqlx::query(
                "SELECT password_hash FROM password_history WHERE company_id = $1 AND user_key = $2 \
                 ORDER BY changed_at DESC LIMIT $3",
            )
            .bind(company.0)
            .bind(user.0)
            .bind(n)
            .fetch_all(&self.pool)
            .await?;
            for r in &rows {
                out.push(get(r, "password_hash")?);
            }
        }
        Ok(out)
    }
}
