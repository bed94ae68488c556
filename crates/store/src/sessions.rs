//! Sessions, stored by the hash of their token.

use crate::reader::{one, Cols, Fast};
use crate::{from_ts, get, ts, Store, StoreError, StoreResult};
use chrono::{DateTime, Utc};
use strongroom_core::session::{Restriction, SessionTimes};
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
    pub restriction: Restriction,
    /// The company's policy epoch, read with the session: a counter that
    /// triggers move (in the same transaction) with every change to users,
    /// departments, access hours, IP rules, roles, pledge, training, record
    /// types and company keys. Inputs of security checks cached under one
    /// epoch are current while it is unchanged.
    pub policy_epoch: i64,
}

/// The statement behind [`Store::session`], built once.
fn session_query() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "SELECT s.company_id, c.code, s.user_key, u.user_id, u.status, u.is_admin, u.is_master, \
               u.department_id, s.created_at, s.last_seen_at, s.expires_at, s.idle_secs, s.restriction, \
               {} \
             FROM sessions s \
             JOIN users u ON u.id = s.user_key AND u.company_id = s.company_id \
             JOIN companies c ON c.id = s.company_id \
             WHERE s.token_hash = $1",
            crate::policy_epoch_column("s")
        )
    })
}

fn session_from_row(r: &impl Cols) -> StoreResult<SessionRecord> {
    let status = r.text(4, "status")?;
    let restriction = r.text(12, "restriction")?;
    Ok(SessionRecord {
        company: CompanyId(r.int(0, "company_id")?),
        company_code: r.text(1, "code")?,
        user: UserKey(r.int(2, "user_key")?),
        user_id: r.text(3, "user_id")?,
        user_status: UserStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("user status '{status}'")))?,
        is_admin: r.int(5, "is_admin")? != 0,
        is_master: r.int(6, "is_master")? != 0,
        department_id: r.opt_int(7, "department_id")?,
        times: SessionTimes {
            created_at: from_ts(r.int(8, "created_at")?)?,
            last_seen_at: from_ts(r.int(9, "last_seen_at")?)?,
            expires_at: from_ts(r.int(10, "expires_at")?)?,
            idle: chrono::Duration::seconds(r.int(11, "idle_secs")?),
        },
        restriction: Restriction::parse(&restriction)
            .ok_or_else(|| StoreError::Corrupt(format!("session restriction '{restriction}'")))?,
        policy_epoch: r.int(13, "policy_epoch")?,
    })
}

const INSERT_SESSION: &str =
    "INSERT INTO sessions (token_hash, company_id, user_key, created_at, last_seen_at, \
       expires_at, client_ip, user_agent, idle_secs, restriction) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

impl Store {
    #[allow(clippy::too_many_arguments)]
    pub async fn create_session(
        &self,
        company: CompanyId,
        user: UserKey,
        token_hash: &[u8; 32],
        times: SessionTimes,
        restriction: Restriction,
        client_ip: Option<&str>,
        user_agent: Option<&str>,
    ) -> StoreResult<()> {
        if let Some(writer) = &self.record_writer {
            // On an SQLite file, with the other writes of the moment (one
            // commit, one wait for the disk).
            let (hash, company, user) = (token_hash.to_vec(), company.0, user.0);
            let (ip, agent) = (client_ip.map(str::to_owned), user_agent.map(str::to_owned));
            let restriction = restriction.as_str();
            return writer
                .write(move |c| {
                    c.prepare_cached(crate::reader::numbered(INSERT_SESSION))
                        .and_then(|mut st| {
                            st.execute(rusqlite::params![
                                hash,
                                company,
                                user,
                                ts(times.created_at),
                                ts(times.last_seen_at),
                                ts(times.expires_at),
                                ip,
                                agent,
                                times.idle.num_seconds(),
                                restriction,
                            ])
                        })
                        .map_err(crate::appender::failed)?;
                    Ok(())
                })
                .await;
        }
        let insert = sqlx::query(INSERT_SESSION)
            .bind(token_hash.to_vec())
            .bind(company.0)
            .bind(user.0)
            .bind(ts(times.created_at))
            .bind(ts(times.last_seen_at))
            .bind(ts(times.expires_at))
            .bind(client_ip)
            .bind(user_agent)
            .bind(times.idle.num_seconds())
            .bind(restriction.as_str());
        self.write_one(insert).await?;
        Ok(())
    }

    /// The session behind a token hash, with its user. This is the one
    /// lookup that is not scoped by company: it is how a request finds it.
    pub async fn session(&self, token_hash: &[u8; 32]) -> StoreResult<Option<SessionRecord>> {
        let sql = session_query();
        if let Some(readers) = &self.readers {
            let fast = readers.read(|c| one(c, sql, [&token_hash[..]], |r| session_from_row(r)));
            if let Fast::Done(r) = fast {
                return r;
            }
        }
        let row = sqlx::query(sql)
            .bind(token_hash.to_vec())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_from_row).transpose()
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

    /// Lifts or sets a session's restriction (after enrolment).
    pub async fn set_session_restriction(
        &self,
        token_hash: &[u8; 32],
        restriction: Restriction,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query("UPDATE sessions SET restriction = $2 WHERE token_hash = $1")
            .bind(token_hash.to_vec())
            .bind(restriction.as_str())
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
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

    /// (max sessions per user, when_full, idle minutes); (0, "refuse_new",
    /// 30) when unset.
    pub async fn session_policy(&self, company: CompanyId) -> StoreResult<(i64, String, i64)> {
        let row = sqlx::query(
            "SELECT max_sessions, when_full, idle_minutes FROM company_settings WHERE company_id = $1",
        )
        .bind(company.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => (
                get(&r, "max_sessions")?,
                get(&r, "when_full")?,
                get(&r, "idle_minutes")?,
            ),
            None => (0, "refuse_new".into(), 30),
        })
    }

    pub async fn set_session_policy(
        &self,
        company: CompanyId,
        max: i64,
        when_full: &str,
        idle_minutes: i64,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query("DELETE FROM company_settings WHERE company_id = $1")
            .bind(company.0)
            .execute(&mut *w.tx)
            .await?;
        sqlx::query("INSERT INTO company_settings (company_id, max_sessions, when_full, idle_minutes) VALUES ($1, $2, $3, $4)")
            .bind(company.0)
            .bind(max)
            .bind(when_full)
            .bind(idle_minutes)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
    }
}

const RULE_COLUMNS: &str =
    "min_length, min_score, require_classes, history, max_age_days, warn_days, min_age_days";

fn rules_from_row(r: &sqlx::any::AnyRow) -> StoreResult<strongroom_core::password::PasswordRules> {
    let n = |c: &str| -> StoreResult<i64> { get(r, c) };
    let d = strongroom_core::password::PasswordRules::default();
    Ok(strongroom_core::password::PasswordRules {
        min_length: usize::try_from(n("min_length")?).unwrap_or(d.min_length),
        min_score: u8::try_from(n("min_score")?).unwrap_or(d.min_score),
        require_classes: u8::try_from(n("require_classes")?).unwrap_or(0),
        history: u8::try_from(n("history")?).unwrap_or(0),
        max_age_days: u16::try_from(n("max_age_days")?).unwrap_or(0),
        warn_days: u16::try_from(n("warn_days")?).unwrap_or(d.warn_days),
        min_age_days: u16::try_from(n("min_age_days")?).unwrap_or(0),
    })
}

/// The rules in a row, or the defaults when there is none.
fn rules_or_default(
    row: Option<sqlx::any::AnyRow>,
) -> StoreResult<strongroom_core::password::PasswordRules> {
    row.as_ref()
        .map(rules_from_row)
        .transpose()
        .map(Option::unwrap_or_default)
}

impl Store {
    /// The company's password rules (defaults when it set none).
    pub async fn password_rules(
        &self,
        company: CompanyId,
    ) -> StoreResult<strongroom_core::password::PasswordRules> {
        let row = sqlx::query(&format!(
            "SELECT {RULE_COLUMNS} FROM password_rules WHERE company_id = $1"
        ))
        .bind(company.0)
        .fetch_optional(&self.pool)
        .await?;
        rules_or_default(row)
    }

    /// A user's own password rules, when an administrator set them.
    pub async fn user_password_rules(
        &self,
        company: CompanyId,
        user: UserKey,
    ) -> StoreResult<Option<strongroom_core::password::PasswordRules>> {
        let row = sqlx::query(&format!(
            "SELECT {RULE_COLUMNS} FROM user_password_rules WHERE company_id = $1 AND user_key = $2"
        ))
        .bind(company.0)
        .bind(user.0)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rules_from_row).transpose()
    }

    /// The rules that apply to a user: their own, else the company's.
    pub async fn effective_password_rules(
        &self,
        company: CompanyId,
        user: Option<UserKey>,
    ) -> StoreResult<strongroom_core::password::PasswordRules> {
        let Some(u) = user else {
            return self.password_rules(company).await;
        };
        // The user's own row first, else the company's: one statement.
        let row = sqlx::query(&format!(
            "SELECT {RULE_COLUMNS} FROM ( \
               SELECT 0 AS pick, {RULE_COLUMNS} FROM user_password_rules \
                 WHERE company_id = $1 AND user_key = $2 \
               UNION ALL \
               SELECT 1 AS pick, {RULE_COLUMNS} FROM password_rules WHERE company_id = $1 \
             ) AS r ORDER BY pick LIMIT 1"
        ))
        .bind(company.0)
        .bind(u.0)
        .fetch_optional(&self.pool)
        .await?;
        rules_or_default(row)
    }

    /// Sets the company's rules, or a user's own (`user`); `None` rules
    /// remove a user's own rules.
    pub async fn set_password_rules(
        &self,
        company: CompanyId,
        user: Option<UserKey>,
        r: Option<&strongroom_core::password::PasswordRules>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        let (table, key_col, key) = match user {
            Some(u) => ("user_password_rules", ", user_key", Some(u.0)),
            None => ("password_rules", "", None),
        };
        let mut del = format!("DELETE FROM {table} WHERE company_id = $1");
        if key.is_some() {
            del.push_str(" AND user_key = $2");
        }
        let mut q = sqlx::query(&del).bind(company.0);
        if let Some(k) = key {
            q = q.bind(k);
        }
        q.execute(&mut *w.tx).await?;
        if let Some(r) = r {
            let n = if key.is_some() { 9 } else { 8 };
            let marks: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
            let sql = format!(
                "INSERT INTO {table} (company_id{key_col}, {RULE_COLUMNS}) VALUES ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(company.0);
            if let Some(k) = key {
                q = q.bind(k);
            }
            q.bind(r.min_length as i64)
                .bind(i64::from(r.min_score))
                .bind(i64::from(r.require_classes))
                .bind(i64::from(r.history))
                .bind(i64::from(r.max_age_days))
                .bind(i64::from(r.warn_days))
                .bind(i64::from(r.min_age_days))
                .execute(&mut *w.tx)
                .await?;
        }
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
