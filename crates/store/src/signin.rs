//! Sign-in security state: the company's lockout and second-factor policy,
//! failure counters, TOTP factors, recovery codes, passkeys, the short-lived
//! challenges between a right password and a session, per-user flags, and
//! API keys.

use crate::{flag, from_ts, get, ts, Store, StoreError, StoreResult};
use chrono::{DateTime, Duration, Utc};
use strongroom_core::signin::{SignInPolicy, TwoFactorPolicy};
use strongroom_core::{CompanyId, UserKey};
use strongroom_proto::UserStatus;

/// Failure counts of one subject (an account or an address) after one more
/// failure was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureCount {
    pub failures: i64,
    pub lockouts: i64,
}

/// A user's TOTP factor: the sealed secret, whether enrolment was
/// confirmed, and the last accepted time step.
#[derive(Debug, Clone)]
pub struct TotpFactor {
    pub sealed_secret: String,
    pub confirmed: bool,
    pub last_step: i64,
}

/// A pending sign-in step.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub company: CompanyId,
    pub user: UserKey,
    pub purpose: String,
    pub state: String,
    pub client_ip: Option<String>,
    pub attempts: i64,
    pub expires_at: DateTime<Utc>,
}

/// A stored passkey.
#[derive(Debug, Clone)]
pub struct PasskeyRow {
    pub id: i64,
    pub credential_id: String,
    pub label: String,
    pub sealed: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// An API key as stored (never the key itself).
#[derive(Debug, Clone)]
pub struct ApiKeyRow {
    pub public_id: String,
    pub company: CompanyId,
    pub user: UserKey,
    pub user_id: String,
    pub label: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What a request made with an API key needs about the key and its user.
#[derive(Debug, Clone)]
pub struct ApiKeyAuth {
    pub key: ApiKeyRow,
    pub company_code: String,
    pub user_status: UserStatus,
    pub is_admin: bool,
    pub is_master: bool,
    pub department_id: Option<i64>,
    /// The company's policy epoch, read with the key (as for sessions).
    pub policy_epoch: i64,
}

/// A new API key (the hash of the secret, not the secret).
#[derive(Debug, Clone)]
pub struct NewApiKey<'a> {
    pub public_id: &'a str,
    pub key_hash: &'a [u8; 32],
    pub label: &'a str,
    pub scopes: &'a [String],
    pub created_by: &'a str,
    pub expires_at: DateTime<Utc>,
}

fn secs(d: Duration) -> i64 {
    d.num_seconds()
}

impl Store {
    pub async fn sign_in_policy(&self, company: CompanyId) -> StoreResult<SignInPolicy> {
        let row = sqlx::query(
            "SELECT lockout_threshold, lockout_window_secs, lockout_base_secs, lockout_max_secs, \
               lockout_until_unlocked, address_threshold, address_block_secs, two_factor \
             FROM sign_in_policy WHERE company_id = $1",
        )
        .bind(company.0)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(SignInPolicy::default());
        };
        let n = |c: &str| -> StoreResult<i64> { get(&r, c) };
        let two: String = get(&r, "two_factor")?;
        Ok(SignInPolicy {
            lockout_threshold: u32::try_from(n("lockout_threshold")?).unwrap_or(5),
            window: Duration::seconds(n("lockout_window_secs")?),
            lockout_base: Duration::seconds(n("lockout_base_secs")?),
            lockout_max: Duration::seconds(n("lockout_max_secs")?),
            until_unlocked: flag(&r, "lockout_until_unlocked")?,
            address_threshold: u32::try_from(n("address_threshold")?).unwrap_or(20),
            address_block: Duration::seconds(n("address_block_secs")?),
            two_factor: TwoFactorPolicy::parse(&two)
                .ok_or_else(|| StoreError::Corrupt(format!("two-factor policy '{two}'")))?,
        })
    }

    pub async fn set_sign_in_policy(
        &self,
        company: CompanyId,
        p: &SignInPolicy,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query("DELETE FROM sign_in_policy WHERE company_id = $1")
            .bind(company.0)
            .execute(&mut *w.tx)
            .await?;
        sqlx::query(
            "INSERT INTO sign_in_policy (company_id, lockout_threshold, lockout_window_secs, \
               lockout_base_secs, lockout_max_secs, lockout_until_unlocked, address_threshold, \
               address_block_secs, two_factor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(company.0)
        .bind(i64::from(p.lockout_threshold))
        .bind(secs(p.window))
        .bind(secs(p.lockout_base))
        .bind(secs(p.lockout_max))
        .bind(i64::from(p.until_unlocked))
        .bind(i64::from(p.address_threshold))
        .bind(secs(p.address_block))
        .bind(p.two_factor.as_str())
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    /// Counts one failed sign-in of `subject` (`user:<key>` or `ip:<addr>`)
    /// in one statement, so concurrent failures on several nodes all count.
    /// A count older than `window` starts again at one.
    pub async fn count_failure(
        &self,
        chain: i64,
        subject: &str,
        now: DateTime<Utc>,
        window: Duration,
    ) -> StoreResult<FailureCount> {
        let mut w = self.write_tx().await?;
        let row = sqlx::query(
            "INSERT INTO sign_in_failures (chain, subject, failures, window_start, lockouts) \
             VALUES ($1, $2, 1, $3, 0) \
             ON CONFLICT (chain, subject) DO UPDATE SET \
               failures = CASE WHEN sign_in_failures.window_start <= $4 THEN 1 \
                               ELSE sign_in_failures.failures + 1 END, \
               window_start = CASE WHEN sign_in_failures.window_start <= $4 THEN $3 \
                                   ELSE sign_in_failures.window_start END \
             RETURNING failures, lockouts",
        )
        .bind(chain)
        .bind(subject)
        .bind(ts(now))
        .bind(ts(now - window))
        .fetch_one(&mut *w.tx)
        .await?;
        let out = FailureCount {
            failures: get(&row, "failures")?,
            lockouts: get(&row, "lockouts")?,
        };
        w.commit().await?;
        Ok(out)
    }

    /// Records that `subject` was locked: its failures start again and its
    /// lockout count grows. Returns the new lockout count.
    pub async fn note_lockout(&self, chain: i64, subject: &str) -> StoreResult<i64> {
        let mut w = self.write_tx().await?;
        let row = sqlx::query(
            "UPDATE sign_in_failures SET failures = 0, lockouts = lockouts + 1 \
             WHERE chain = $1 AND subject = $2 RETURNING lockouts",
        )
        .bind(chain)
        .bind(subject)
        .fetch_optional(&mut *w.tx)
        .await?;
        w.commit().await?;
        row.map(|r| get(&r, "lockouts"))
            .transpose()
            .map(|n| n.unwrap_or(1))
    }

    /// Forgets a subject's failures and lockouts (a successful sign-in, or
    /// an administrator's unlock).
    pub async fn clear_failures(&self, chain: i64, subject: &str) -> StoreResult<()> {
        self.write_one(
            sqlx::query("DELETE FROM sign_in_failures WHERE chain = $1 AND subject = $2")
                .bind(chain)
                .bind(subject),
        )
        .await?;
        Ok(())
    }

    /// Whether the company has users besides its master account.
    pub async fn company_has_other_users(&self, company: CompanyId) -> StoreResult<bool> {
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM users WHERE company_id = $1 AND is_master = 0")
                .bind(company.0)
                .fetch_one(&self.pool)
                .await?;
        Ok(get::<i64>(&row, "n")? > 0)
    }

    /// Sets a user's sign-in flags; `None` leaves one as it is. `idle`:
    /// `Some(None)` returns the user to the company default.
    pub async fn set_user_sign_in(
        &self,
        company: CompanyId,
        user: UserKey,
        two_factor_marked: Option<bool>,
        must_change_password: Option<bool>,
        idle_minutes: Option<Option<i64>>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        if let Some(v) = two_factor_marked {
            sqlx::query(
                "UPDATE users SET two_factor_required = $3 WHERE company_id = $1 AND id = $2",
            )
            .bind(company.0)
            .bind(user.0)
            .bind(i64::from(v))
            .execute(&mut *w.tx)
            .await?;
        }
        if let Some(v) = must_change_password {
            sqlx::query(
                "UPDATE users SET must_change_password = $3 WHERE company_id = $1 AND id = $2",
            )
            .bind(company.0)
            .bind(user.0)
            .bind(i64::from(v))
            .execute(&mut *w.tx)
            .await?;
        }
        match idle_minutes {
            Some(Some(m)) => {
                sqlx::query("UPDATE users SET idle_minutes = $3 WHERE company_id = $1 AND id = $2")
                    .bind(company.0)
                    .bind(user.0)
                    .bind(m)
                    .execute(&mut *w.tx)
                    .await?;
            }
            Some(None) => {
                sqlx::query(
                    "UPDATE users SET idle_minutes = NULL WHERE company_id = $1 AND id = $2",
                )
                .bind(company.0)
                .bind(user.0)
                .execute(&mut *w.tx)
                .await?;
            }
            None => {}
        }
        w.commit().await
    }

    // ----- TOTP and recovery codes ---------------------------------------

    pub async fn totp_factor(
        &self,
        company: CompanyId,
        user: UserKey,
    ) -> StoreResult<Option<TotpFactor>> {
        let row = sqlx::query(
            "SELECT secret, confirmed, last_step FROM totp_factors WHERE company_id = $1 AND user_key = $2",
        )
        .bind(company.0)
        .bind(user.0)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(TotpFactor {
                sealed_secret: get(&r, "secret")?,
                confirmed: flag(&r, "confirmed")?,
                last_step: get(&r, "last_step")?,
            })
        })
        .transpose()
    }

    /// Starts (or restarts) a TOTP enrolment: an unconfirmed factor. A
    /// confirmed factor is not replaced (reset it first).
    pub async fn begin_totp(
        &self,
        company: CompanyId,
        user: UserKey,
        sealed_secret: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query(
            "DELETE FROM totp_factors WHERE company_id = $1 AND user_key = $2 AND confirmed = 0",
        )
        .bind(company.0)
        .bind(user.0)
        .execute(&mut *w.tx)
        .await?;
        sqlx::query(
            "INSERT INTO totp_factors (company_id, user_key, secret, confirmed, last_step, created_at) \
             VALUES ($1, $2, $3, 0, 0, $4)",
        )
        .bind(company.0)
        .bind(user.0)
        .bind(sealed_secret)
        .bind(ts(now))
        .execute(&mut *w.tx)
        .await
        .map_err(|e| {
            StoreError::map_conflict(e, "a second factor is already set up; reset it first", "no such user")
        })?;
        w.commit().await
    }

    /// Accepts a TOTP time step once: true only if `step` is later than the
    /// last accepted one (so a code cannot be replayed, even on another
    /// node). `confirm` also marks the enrolment confirmed and stores the
    /// recovery code hashes.
    pub async fn accept_totp_step(
        &self,
        company: CompanyId,
        user: UserKey,
        step: i64,
        confirm_with_codes: Option<&[[u8; 32]]>,
    ) -> StoreResult<bool> {
        let mut w = self.write_tx().await?;
        let sql = if confirm_with_codes.is_some() {
            "UPDATE totp_factors SET last_step = $3, confirmed = 1 \
             WHERE company_id = $1 AND user_key = $2 AND last_step < $3 AND confirmed = 0"
        } else {
            "UPDATE totp_factors SET last_step = $3 \
             WHERE company_id = $1 AND user_key = $2 AND last_step < $3 AND confirmed = 1"
        };
        let n = sqlx::query(sql)
            .bind(company.0)
            .bind(user.0)
            .bind(step)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if n != 1 {
            return Ok(false);
        }
        if let Some(codes) = confirm_with_codes {
            replace_codes(&mut w.tx, company, user, codes).await?;
        }
        w.commit().await?;
        Ok(true)
    }

    /// Replaces a user's recovery codes.
    pub async fn replace_recovery_codes(
        &self,
        company: CompanyId,
        user: UserKey,
        codes: &[[u8; 32]],
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        replace_codes(&mut w.tx, company, user, codes).await?;
        w.commit().await
    }

    /// Uses a recovery code once; returns how many unused codes remain, or
    /// `None` when the code is unknown or was used.
    pub async fn use_recovery_code(
        &self,
        company: CompanyId,
        user: UserKey,
        code_hash: &[u8; 32],
        now: DateTime<Utc>,
    ) -> StoreResult<Option<i64>> {
        let mut w = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE recovery_codes SET used_at = $4 \
             WHERE company_id = $1 AND user_key = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(company.0)
        .bind(user.0)
        .bind(code_hash.to_vec())
        .bind(ts(now))
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Ok(None);
        }
        let left = count_codes(&mut w.tx, company, user).await?;
        w.commit().await?;
        Ok(Some(left))
    }

    pub async fn recovery_codes_left(&self, company: CompanyId, user: UserKey) -> StoreResult<i64> {
        let mut w = self.write_tx().await?;
        let n = count_codes(&mut w.tx, company, user).await?;
        w.commit().await?;
        Ok(n)
    }

    /// Removes every second factor of a user (an administrator's reset, or
    /// the user's own with a fresh second factor) and ends their sessions.
    pub async fn reset_second_factors(&self, company: CompanyId, user: UserKey) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        for table in ["totp_factors", "recovery_codes", "passkeys"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE company_id = $1 AND user_key = $2"
            ))
            .bind(company.0)
            .bind(user.0)
            .execute(&mut *w.tx)
            .await?;
        }
        crate::sessions::end_user_sessions(&mut w.tx, company, user).await?;
        w.commit().await
    }

    // ----- passkeys --------------------------------------------------------

    pub async fn passkeys(
        &self,
        company: CompanyId,
        user: UserKey,
    ) -> StoreResult<Vec<PasskeyRow>> {
        let rows = sqlx::query(
            "SELECT id, credential_id, label, passkey, created_at, last_used_at FROM passkeys \
             WHERE company_id = $1 AND user_key = $2 ORDER BY id",
        )
        .bind(company.0)
        .bind(user.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PasskeyRow {
                    id: get(r, "id")?,
                    credential_id: get(r, "credential_id")?,
                    label: get(r, "label")?,
                    sealed: get(r, "passkey")?,
                    created_at: from_ts(get(r, "created_at")?)?,
                    last_used_at: get::<Option<i64>>(r, "last_used_at")?
                        .map(from_ts)
                        .transpose()?,
                })
            })
            .collect()
    }

    pub async fn add_passkey(
        &self,
        company: CompanyId,
        user: UserKey,
        credential_id: &str,
        label: &str,
        sealed: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO passkeys (company_id, user_key, credential_id, label, passkey, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(company.0)
        .bind(user.0)
        .bind(credential_id)
        .bind(label)
        .bind(sealed)
        .bind(ts(now))
        .execute(&mut *w.tx)
        .await
        .map_err(|e| StoreError::map_conflict(e, "this passkey is already registered", "no such user"))?;
        w.commit().await
    }

    /// Stores a passkey's updated state (its signature counter) after use.
    pub async fn update_passkey(
        &self,
        company: CompanyId,
        id: i64,
        sealed: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query(
            "UPDATE passkeys SET passkey = $3, last_used_at = $4 WHERE company_id = $1 AND id = $2",
        )
        .bind(company.0)
        .bind(id)
        .bind(sealed)
        .bind(ts(now))
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    /// Every sealed user secret of a company (for re-encryption after a
    /// data-key rotation): (kind `totp`|`passkey`, row id, user, sealed).
    pub async fn sealed_user_secrets(
        &self,
        company: CompanyId,
    ) -> StoreResult<Vec<(String, i64, UserKey, String)>> {
        let rows = sqlx::query(
            "SELECT 'totp' AS kind, user_key AS id, user_key, secret AS sealed FROM totp_factors \
               WHERE company_id = $1 \
             UNION ALL \
             SELECT 'passkey' AS kind, id, user_key, passkey AS sealed FROM passkeys \
               WHERE company_id = $1",
        )
        .bind(company.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    get(r, "kind")?,
                    get(r, "id")?,
                    UserKey(get(r, "user_key")?),
                    get(r, "sealed")?,
                ))
            })
            .collect()
    }

    /// Replaces a sealed user secret if it is still `old` (a change made
    /// meanwhile wins).
    pub async fn reseal_user_secret(
        &self,
        company: CompanyId,
        kind: &str,
        id: i64,
        old: &str,
        new: &str,
    ) -> StoreResult<bool> {
        let sql = match kind {
            "totp" => "UPDATE totp_factors SET secret = $4 WHERE company_id = $1 AND user_key = $2 AND secret = $3",
            _ => "UPDATE passkeys SET passkey = $4 WHERE company_id = $1 AND id = $2 AND passkey = $3",
        };
        let mut w = self.write_tx().await?;
        let n = sqlx::query(sql)
            .bind(company.0)
            .bind(id)
            .bind(old)
            .bind(new)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        w.commit().await?;
        Ok(n == 1)
    }

    // ----- challenges ------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    pub async fn create_challenge(
        &self,
        token_hash: &[u8; 32],
        company: CompanyId,
        user: UserKey,
        purpose: &str,
        state: &str,
        client_ip: Option<&str>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        // Expired challenges go whenever a new one is made.
        sqlx::query("DELETE FROM sign_in_challenges WHERE expires_at <= $1")
            .bind(ts(expires_at - Duration::hours(1)))
            .execute(&mut *w.tx)
            .await?;
        sqlx::query(
            "INSERT INTO sign_in_challenges (token_hash, company_id, user_key, purpose, state, \
               client_ip, attempts, expires_at) VALUES ($1, $2, $3, $4, $5, $6, 0, $7)",
        )
        .bind(token_hash.to_vec())
        .bind(company.0)
        .bind(user.0)
        .bind(purpose)
        .bind(state)
        .bind(client_ip)
        .bind(ts(expires_at))
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    /// A live challenge, counting this attempt at it.
    pub async fn challenge_attempt(
        &self,
        token_hash: &[u8; 32],
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Challenge>> {
        let mut w = self.write_tx().await?;
        let row = sqlx::query(
            "UPDATE sign_in_challenges SET attempts = attempts + 1 \
             WHERE token_hash = $1 AND expires_at > $2 \
             RETURNING company_id, user_key, purpose, state, client_ip, attempts, expires_at",
        )
        .bind(token_hash.to_vec())
        .bind(ts(now))
        .fetch_optional(&mut *w.tx)
        .await?;
        w.commit().await?;
        row.map(|r| {
            Ok(Challenge {
                company: CompanyId(get(&r, "company_id")?),
                user: UserKey(get(&r, "user_key")?),
                purpose: get(&r, "purpose")?,
                state: get(&r, "state")?,
                client_ip: get(&r, "client_ip")?,
                attempts: get(&r, "attempts")?,
                expires_at: from_ts(get(&r, "expires_at")?)?,
            })
        })
        .transpose()
    }

    /// Ends a challenge; true if it was still there (only one caller can
    /// finish a challenge).
    pub async fn delete_challenge(&self, token_hash: &[u8; 32]) -> StoreResult<bool> {
        let mut w = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM sign_in_challenges WHERE token_hash = $1")
            .bind(token_hash.to_vec())
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        w.commit().await?;
        Ok(n == 1)
    }

    // ----- API keys --------------------------------------------------------

    pub async fn create_api_key(
        &self,
        company: CompanyId,
        user: UserKey,
        k: &NewApiKey<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO api_keys (public_id, company_id, user_key, key_hash, label, scopes, \
               created_at, created_by, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(k.public_id)
        .bind(company.0)
        .bind(user.0)
        .bind(k.key_hash.to_vec())
        .bind(k.label)
        .bind(k.scopes.join(" "))
        .bind(ts(now))
        .bind(k.created_by)
        .bind(ts(k.expires_at))
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    /// The key behind a hash, with its user (not scoped by company: this is
    /// how a request made with a key finds its company).
    pub async fn api_key_by_hash(&self, key_hash: &[u8; 32]) -> StoreResult<Option<ApiKeyAuth>> {
        let row = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS}, c.code, u.status, u.is_admin, u.is_master, u.department_id, {} \
             FROM api_keys k JOIN users u ON u.id = k.user_key AND u.company_id = k.company_id \
             JOIN companies c ON c.id = k.company_id WHERE k.key_hash = $1",
            crate::policy_epoch_column("k")
        ))
        .bind(key_hash.to_vec())
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let status: String = get(&r, "status")?;
        Ok(Some(ApiKeyAuth {
            key: api_key_from_row(&r)?,
            company_code: get(&r, "code")?,
            user_status: UserStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("user status '{status}'")))?,
            is_admin: flag(&r, "is_admin")?,
            is_master: flag(&r, "is_master")?,
            department_id: get(&r, "department_id")?,
            policy_epoch: get(&r, "policy_epoch")?,
        }))
    }

    /// A company's API keys, or one user's.
    pub async fn api_keys(
        &self,
        company: CompanyId,
        user: Option<UserKey>,
    ) -> StoreResult<Vec<ApiKeyRow>> {
        let mut sql = format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys k JOIN users u ON u.id = k.user_key \
             WHERE k.company_id = $1"
        );
        if user.is_some() {
            sql.push_str(" AND k.user_key = $2");
        }
        sql.push_str(" ORDER BY k.id");
        let mut q = sqlx::query(&sql).bind(company.0);
        if let Some(u) = user {
            q = q.bind(u.0);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(api_key_from_row).collect()
    }

    /// Revokes a key; false when there is no such live key.
    pub async fn revoke_api_key(
        &self,
        company: CompanyId,
        public_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut w = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE api_keys SET revoked_at = $3 \
             WHERE company_id = $1 AND public_id = $2 AND revoked_at IS NULL",
        )
        .bind(company.0)
        .bind(public_id)
        .bind(ts(now))
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        w.commit().await?;
        Ok(n == 1)
    }

    /// Notes a key's use, at most once a minute: `last_used` (as the key's
    /// lookup read it) within the minute costs nothing, since a write per
    /// request would serialise every API call behind the store's writer;
    /// the condition in the UPDATE covers other nodes doing the same.
    pub async fn touch_api_key(
        &self,
        key_hash: &[u8; 32],
        last_used: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let every = Duration::minutes(1);
        if last_used.is_some_and(|t| now - t < every) {
            return Ok(());
        }
        let mut w = self.write_tx().await?;
        sqlx::query(
            "UPDATE api_keys SET last_used_at = $2 WHERE key_hash = $1 \
             AND (last_used_at IS NULL OR last_used_at <= $3)",
        )
        .bind(key_hash.to_vec())
        .bind(ts(now))
        .bind(ts(now - every))
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }
}

const API_KEY_COLUMNS: &str =
    "k.public_id, k.company_id, k.user_key, u.user_id, k.label, k.scopes, \
    k.created_at, k.created_by, k.expires_at, k.last_used_at, k.revoked_at";

fn api_key_from_row(r: &sqlx::any::AnyRow) -> StoreResult<ApiKeyRow> {
    let opt = |c: &str| -> StoreResult<Option<DateTime<Utc>>> {
        get::<Option<i64>>(r, c)?.map(from_ts).transpose()
    };
    let scopes: String = get(r, "scopes")?;
    Ok(ApiKeyRow {
        public_id: get(r, "public_id")?,
        company: CompanyId(get(r, "company_id")?),
        user: UserKey(get(r, "user_key")?),
        user_id: get(r, "user_id")?,
        label: get(r, "label")?,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        created_at: from_ts(get(r, "created_at")?)?,
        created_by: get(r, "created_by")?,
        expires_at: from_ts(get(r, "expires_at")?)?,
        last_used_at: opt("last_used_at")?,
        revoked_at: opt("revoked_at")?,
    })
}

async fn replace_codes(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    company: CompanyId,
    user: UserKey,
    codes: &[[u8; 32]],
) -> StoreResult<()> {
    sqlx::query("DELETE FROM recovery_codes WHERE company_id = $1 AND user_key = $2")
        .bind(company.0)
        .bind(user.0)
        .execute(&mut **tx)
        .await?;
    for c in codes {
        sqlx::query(
            "INSERT INTO recovery_codes (company_id, user_key, code_hash) VALUES ($1, $2, $3)",
        )
        .bind(company.0)
        .bind(user.0)
        .bind(c.to_vec())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn count_codes(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    company: CompanyId,
    user: UserKey,
) -> StoreResult<i64> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM recovery_codes WHERE company_id = $1 AND user_key = $2 AND used_at IS NULL",
    )
    .bind(company.0)
    .bind(user.0)
    .fetch_one(&mut **tx)
    .await?;
    get(&row, "n")
}
