//! Companies, departments and users.

use crate::{flag, from_ts, get, opt_ts, ts, Store, StoreError, StoreResult};
use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;
use strongroom_core::catalogue::RecordTypeDef;
use strongroom_core::{CompanyId, UserKey};
use strongroom_proto::{CompanyView, DepartmentView, UserStatus, UserView};

/// A user to be created. The password is already hashed.
#[derive(Clone)]
pub struct NewUser {
    pub user_id: String,
    pub display_name: String,
    pub email: Option<String>,
    pub department: Option<String>,
    pub password_hash: String,
    pub is_admin: bool,
    pub is_master: bool,
    /// Security level: `public`, `internal`, `confidential`, `restricted`.
    pub clearance: String,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// What sign-in needs to know about an account.
#[derive(Clone)]
pub struct LoginAccount {
    pub company: CompanyId,
    pub company_code: String,
    pub key: UserKey,
    pub password_hash: String,
    /// Marked by an administrator as needing a second factor.
    pub two_factor_marked: bool,
    pub must_change_password: bool,
    pub password_changed_at: DateTime<Utc>,
    /// The user's own idle timeout, if set.
    pub idle_minutes: Option<i64>,
    /// The company's policy epoch, read with the account: what the sign-in
    /// checks may take from the node's caches (see `policy_epoch_column`).
    pub policy_epoch: i64,
    /// Until when the account is locked, as of the read (it may be past).
    pub locked_until: Option<DateTime<Utc>>,
    /// Whether failed sign-ins of the account are on record (for a
    /// successful one to clear).
    pub has_failures: bool,
    /// Whether the user has a confirmed authenticator app or a passkey.
    pub has_second_factor: bool,
    /// The user as shown to them (a sign-in's answer): their user id,
    /// status, whether master or administrator, and the rest.
    pub view: UserView,
}

impl LoginAccount {
    /// Whether the account is locked at `now` (as read with it).
    pub fn locked_at(&self, now: DateTime<Utc>) -> bool {
        self.locked_until.is_some_and(|until| until > now)
    }
}

impl std::fmt::Debug for LoginAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginAccount")
            .field("company", &self.company_code)
            .field("user_id", &self.view.user_id)
            .finish_non_exhaustive()
    }
}

/// A user as stored, with the internal key.
#[derive(Debug, Clone)]
pub struct StoredUser {
    pub key: UserKey,
    pub department_id: Option<i64>,
    pub view: UserView,
}

/// A resolved change to a user (department already looked up).
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub display_name: Option<String>,
    pub email: Option<Option<String>>,
    pub department_id: Option<Option<i64>>,
    pub status: Option<UserStatus>,
    pub is_admin: Option<bool>,
}

const LOGIN_SELECT: &str =
    "SELECT c.id AS company_id, c.code, u.id AS user_key, u.user_id, u.status, \
    u.password_hash, u.is_admin, u.is_master, u.two_factor_required, u.must_change_password, \
    u.password_changed_at, u.idle_minutes, \
    COALESCE((SELECT e.epoch FROM policy_epochs e WHERE e.company_id = u.company_id), 0) \
      AS policy_epoch, \
    (SELECT l.until FROM account_locks l WHERE l.company_id = u.company_id AND l.user_key = u.id) \
      AS locked_until, \
    CAST(CASE WHEN EXISTS (SELECT 1 FROM sign_in_failures f \
      WHERE f.chain = u.company_id AND f.subject = 'user:' || u.id) THEN 1 ELSE 0 END AS BIGINT) \
      AS has_failures, \
    CAST(CASE WHEN EXISTS (SELECT 1 FROM totp_factors t \
      WHERE t.company_id = u.company_id AND t.user_key = u.id AND t.confirmed <> 0) \
      OR EXISTS (SELECT 1 FROM passkeys p WHERE p.company_id = u.company_id AND p.user_key = u.id) \
      THEN 1 ELSE 0 END AS BIGINT) AS has_second_factor, \
    u.display_name, u.email, d.code AS department_code, u.clearance, u.created_at \
    FROM companies c JOIN users u ON u.company_id = c.id \
    LEFT JOIN departments d ON d.id = u.department_id";

fn login_account_from_row(r: &AnyRow) -> StoreResult<LoginAccount> {
    Ok(LoginAccount {
        company: CompanyId(get(r, "company_id")?),
        company_code: get(r, "code")?,
        key: UserKey(get(r, "user_key")?),
        password_hash: get(r, "password_hash")?,
        two_factor_marked: flag(r, "two_factor_required")?,
        must_change_password: flag(r, "must_change_password")?,
        password_changed_at: from_ts(get(r, "password_changed_at")?)?,
        idle_minutes: get(r, "idle_minutes")?,
        policy_epoch: get(r, "policy_epoch")?,
        locked_until: opt_ts(get(r, "locked_until")?)?,
        has_failures: flag(r, "has_failures")?,
        has_second_factor: flag(r, "has_second_factor")?,
        view: user_view_from_row(r)?,
    })
}

const USER_COLUMNS: &str = "u.id, u.user_id, u.display_name, u.email, u.department_id, \
    d.code AS department_code, u.status, u.is_master, u.is_admin, u.clearance, u.created_at";

fn try_user_from_row(row: &AnyRow) -> StoreResult<StoredUser> {
    Ok(StoredUser {
        key: UserKey(get(row, "id")?),
        department_id: get(row, "department_id")?,
        view: user_view_from_row(row)?,
    })
}

/// A user's view from the columns [`USER_COLUMNS`] and [`LOGIN_SELECT`]
/// both select.
fn user_view_from_row(row: &AnyRow) -> StoreResult<UserView> {
    let status: String = get(row, "status")?;
    Ok(UserView {
        user_id: get(row, "user_id")?,
        display_name: get(row, "display_name")?,
        email: get(row, "email")?,
        department: get(row, "department_code")?,
        status: UserStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("user status '{status}'")))?,
        is_master: flag(row, "is_master")?,
        is_admin: flag(row, "is_admin")?,
        clearance: {
            let c: String = get(row, "clearance")?;
            strongroom_proto::Classification::parse(&c)
                .ok_or_else(|| StoreError::Corrupt(format!("clearance '{c}'")))?
        },
        created_at: from_ts(get(row, "created_at")?)?,
    })
}

fn department_from_row(row: &AnyRow) -> StoreResult<(i64, DepartmentView)> {
    Ok((
        get(row, "id")?,
        DepartmentView {
            code: get(row, "code")?,
            name: get(row, "name")?,
            created_at: from_ts(get(row, "created_at")?)?,
        },
    ))
}

impl Store {
    /// Creates a company, its master account and its default record types in
    /// one transaction.
    pub async fn create_company(
        &self,
        code: &str,
        name: &str,
        master: NewUser,
        catalogue: &[RecordTypeDef],
        keys: &[crate::NewKey],
        now: DateTime<Utc>,
    ) -> StoreResult<CompanyId> {
        let mut w = self.write_tx().await?;
        let row = sqlx::query(
            "INSERT INTO companies (code, name, created_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(code)
        .bind(name)
        .bind(ts(now))
        .fetch_one(&mut *w.tx)
        .await
        .map_err(|e| {
            StoreError::map_conflict(
                e,
                &format!("a company with code {code} already exists"),
                "company conflict",
            )
        })?;
        let company = CompanyId(get(&row, "id")?);
        insert_user(&mut w.tx, company, &master, None, now).await?;
        for key in keys {
            crate::keys::insert_key(&mut w.tx, company, key, now).await?;
        }
        for def in catalogue {
            crate::records::insert_record_type(&mut w.tx, company, def, true, now).await?;
        }
        w.commit().await?;
        Ok(company)
    }

    pub async fn company_by_code(
        &self,
        code: &str,
    ) -> StoreResult<Option<(CompanyId, CompanyView)>> {
        let row = sqlx::query("SELECT id, code, name, created_at FROM companies WHERE code = $1")
            .bind(code)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok((
                CompanyId(get(&r, "id")?),
                CompanyView {
                    code: get(&r, "code")?,
                    name: get(&r, "name")?,
                    created_at: from_ts(get(&r, "created_at")?)?,
                },
            ))
        })
        .transpose()
    }

    pub async fn list_companies(&self) -> StoreResult<Vec<CompanyView>> {
        let rows = sqlx::query("SELECT code, name, created_at FROM companies ORDER BY code")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(CompanyView {
                    code: get(r, "code")?,
                    name: get(r, "name")?,
                    created_at: from_ts(get(r, "created_at")?)?,
                })
            })
            .collect()
    }

    /// The account behind a sign-in attempt, if the company and user exist.
    pub async fn login_account(
        &self,
        company_code: &str,
        user_id: &str,
    ) -> StoreResult<Option<LoginAccount>> {
        let row = sqlx::query(&format!(
            "{LOGIN_SELECT} WHERE c.code = $1 AND u.user_id = $2"
        ))
        .bind(company_code)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(login_account_from_row).transpose()
    }

    /// The same facts by internal keys (the second sign-in step).
    pub async fn login_account_by_key(
        &self,
        company: CompanyId,
        key: UserKey,
    ) -> StoreResult<Option<LoginAccount>> {
        let row = sqlx::query(&format!("{LOGIN_SELECT} WHERE c.id = $1 AND u.id = $2"))
            .bind(company.0)
            .bind(key.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(login_account_from_row).transpose()
    }

    // ----- departments -------------------------------------------------

    pub async fn create_department(
        &self,
        company: CompanyId,
        code: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<DepartmentView> {
        let mut w = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO departments (company_id, code, name, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(company.0)
        .bind(code)
        .bind(name)
        .bind(ts(now))
        .execute(&mut *w.tx)
        .await
        .map_err(|e| {
            StoreError::map_conflict(
                e,
                &format!("department {code} already exists"),
                "department conflict",
            )
        })?;
        w.commit().await?;
        Ok(DepartmentView {
            code: code.into(),
            name: name.into(),
            created_at: now,
        })
    }

    pub async fn list_departments(&self, company: CompanyId) -> StoreResult<Vec<DepartmentView>> {
        let rows = sqlx::query(
            "SELECT id, code, name, created_at FROM departments WHERE company_id = $1 ORDER BY code",
        )
        .bind(company.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| department_from_row(r).map(|(_, d)| d))
            .collect()
    }

    pub async fn department(
        &self,
        company: CompanyId,
        code: &str,
    ) -> StoreResult<Option<(i64, DepartmentView)>> {
        let row = sqlx::query(
            "SELECT id, code, name, created_at FROM departments WHERE company_id = $1 AND code = $2",
        )
        .bind(company.0)
        .bind(code)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(department_from_row).transpose()
    }

    pub async fn rename_department(
        &self,
        company: CompanyId,
        code: &str,
        name: &str,
    ) -> StoreResult<bool> {
        let mut w = self.write_tx().await?;
        let n = sqlx::query("UPDATE departments SET name = $3 WHERE company_id = $1 AND code = $2")
            .bind(company.0)
            .bind(code)
            .bind(name)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        w.commit().await?;
        Ok(n == 1)
    }

    /// Deletes a department that nothing refers to any more.
    pub async fn delete_department(&self, company: CompanyId, code: &str) -> StoreResult<bool> {
        let mut w = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM departments WHERE company_id = $1 AND code = $2")
            .bind(company.0)
            .bind(code)
            .execute(&mut *w.tx)
            .await
            .map_err(|e| {
                StoreError::map_conflict(
                    e,
                    "department conflict",
                    &format!(
                        "department {code} still has users or records; move them to another department first"
                    ),
                )
            })?
            .rows_affected();
        w.commit().await?;
        Ok(n == 1)
    }

    // ----- users -------------------------------------------------------

    pub async fn create_user(
        &self,
        company: CompanyId,
        user: &NewUser,
        department_id: Option<i64>,
        now: DateTime<Utc>,
    ) -> StoreResult<UserKey> {
        let mut w = self.write_tx().await?;
        let key = insert_user(&mut w.tx, company, user, department_id, now).await?;
        w.commit().await?;
        Ok(key)
    }

    pub async fn list_users(&self, company: CompanyId) -> StoreResult<Vec<UserView>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users u LEFT JOIN departments d ON d.id = u.department_id \
             WHERE u.company_id = $1 ORDER BY u.user_id"
        ))
        .bind(company.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| try_user_from_row(r).map(|u| u.view))
            .collect()
    }

    pub async fn user(&self, company: CompanyId, user_id: &str) -> StoreResult<Option<StoredUser>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users u LEFT JOIN departments d ON d.id = u.department_id \
             WHERE u.company_id = $1 AND u.user_id = $2"
        ))
        .bind(company.0)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(try_user_from_row).transpose()
    }

    pub async fn user_by_key(
        &self,
        company: CompanyId,
        key: UserKey,
    ) -> StoreResult<Option<StoredUser>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users u LEFT JOIN departments d ON d.id = u.department_id \
             WHERE u.company_id = $1 AND u.id = $2"
        ))
        .bind(company.0)
        .bind(key.0)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(try_user_from_row).transpose()
    }

    /// Applies a change to a user. Disabling a user ends their sessions in
    /// the same transaction.
    pub async fn update_user(
        &self,
        company: CompanyId,
        key: UserKey,
        change: &UserChange,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        let mut sets = vec!["updated_at = $3".to_owned()];
        let mut args = vec![crate::Arg::Int(ts(now))];
        let mut push = |col: &str, a: crate::Arg| {
            args.push(a);
            let n = args.len() + 2;
            sets.push(format!("{col} = ${n}"));
        };
        if let Some(v) = &change.display_name {
            push("display_name", crate::Arg::Text(v.clone()));
        }
        if let Some(v) = &change.status {
            push("status", crate::Arg::Text(v.as_str().into()));
        }
        if let Some(v) = change.is_admin {
            push("is_admin", crate::Arg::Int(v as i64));
        }
        // Clearing a nullable column is written as NULL in the SQL rather than
        // bound, so no untyped NULL parameter reaches PostgreSQL.
        let mut null_sets = Vec::new();
        if let Some(v) = &change.email {
            null_sets.push(("email", v.clone().map(crate::Arg::Text)));
        }
        if let Some(v) = change.department_id {
            null_sets.push(("department_id", v.map(crate::Arg::Int)));
        }
        let mut sql_nulls = String::new();
        for (col, v) in null_sets {
            match v {
                Some(a) => push(col, a),
                None => sql_nulls.push_str(&format!(", {col} = NULL")),
            }
        }
        let sql = format!(
            "UPDATE users SET {}{sql_nulls} WHERE company_id = $1 AND id = $2",
            sets.join(", ")
        );
        let q = sqlx::query(&sql).bind(company.0).bind(key.0);
        let n = crate::bind_all(q, &args)
            .execute(&mut *w.tx)
            .await
            .map_err(|e| StoreError::map_conflict(e, "user conflict", "no such department"))?
            .rows_affected();
        if n != 1 {
            return Err(StoreError::NotFound("no such user".into()));
        }
        if change.status == Some(UserStatus::Disabled) || change.department_id.is_some() {
            crate::sessions::end_user_sessions(&mut w.tx, company, key).await?;
        }
        w.commit().await?;
        Ok(())
    }

    /// Sets a new password hash and ends the user's sessions.
    /// `must_change` makes the user choose another at next sign-in (an
    /// administrator's reset).
    pub async fn set_password(
        &self,
        company: CompanyId,
        key: UserKey,
        password_hash: &str,
        must_change: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        // The password being replaced joins the history (for the reuse rule).
        sqlx::query(
            "INSERT INTO password_history (company_id, user_key, password_hash, changed_at) \
             SELECT company_id, id, password_hash, $3 FROM users WHERE company_id = $1 AND id = $2",
        )
        .bind(company.0)
        .bind(key.0)
        .bind(ts(now))
        .execute(&mut *w.tx)
        .await?;
        let n = sqlx::query(
            "UPDATE users SET password_hash = $3, password_changed_at = $4, updated_at = $4, \
               must_change_password = $5 WHERE company_id = $1 AND id = $2",
        )
        .bind(company.0)
        .bind(key.0)
        .bind(password_hash)
        .bind(ts(now))
        .bind(i64::from(must_change))
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Err(StoreError::NotFound("no such user".into()));
        }
        crate::sessions::end_user_sessions(&mut w.tx, company, key).await?;
        w.commit().await?;
        Ok(())
    }

    /// Deletes a user who has never written a record; others must be
    /// disabled instead, so that history keeps naming its authors.
    pub async fn delete_user(&self, company: CompanyId, key: UserKey) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        crate::sessions::end_user_sessions(&mut w.tx, company, key).await?;
        let n = sqlx::query("DELETE FROM users WHERE company_id = $1 AND id = $2")
            .bind(company.0)
            .bind(key.0)
            .execute(&mut *w.tx)
            .await
            .map_err(|e| {
                StoreError::map_conflict(
                    e,
                    "user conflict",
                    "this user appears in record history and cannot be deleted; disable the account instead",
                )
            })?
            .rows_affected();
        if n != 1 {
            return Err(StoreError::NotFound("no such user".into()));
        }
        w.commit().await?;
        Ok(())
    }
}

async fn insert_user(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    company: CompanyId,
    user: &NewUser,
    department_id: Option<i64>,
    now: DateTime<Utc>,
) -> StoreResult<UserKey> {
    let row = sqlx::query(
        "INSERT INTO users (company_id, user_id, display_name, email, department_id, status, \
           is_master, is_admin, password_hash, password_changed_at, created_at, updated_at, clearance) \
         VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9, $9, $9, $10) RETURNING id",
    )
    .bind(company.0)
    .bind(&user.user_id)
    .bind(&user.display_name)
    .bind(user.email.as_deref())
    .bind(department_id)
    .bind(user.is_master as i64)
    .bind((user.is_admin || user.is_master) as i64)
    .bind(&user.password_hash)
    .bind(ts(now))
    .bind(&user.clearance)
    .fetch_one(&mut **tx)
    .await
    .map_err(|e| {
        StoreError::map_conflict(
            e,
            &format!("user ID {} is already taken in this company", user.user_id),
            "no such department",
        )
    })?;
    Ok(UserKey(row.try_get("id")?))
}
