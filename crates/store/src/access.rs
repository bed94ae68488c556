//! Access-control state: clearances, roles and who holds them (users and
//! departments), the security pledge and acceptances, training records and
//! the company's training rule.

use crate::{flag, from_ts, get, ts, Store, StoreError, StoreResult};
use chrono::{DateTime, Utc};
use strongroom_core::{CompanyId, UserKey};

/// A role as stored: grants as JSON, powers as words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRow {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub grants_json: String,
    pub powers: Vec<String>,
    pub built_in: bool,
}

/// What the access decisions need about one user, read together.
#[derive(Debug, Clone)]
pub struct AccessFacts {
    pub clearance: String,
    pub department: Option<i64>,
    pub is_master: bool,
    pub is_admin: bool,
    pub training_completed_at: Option<DateTime<Utc>>,
    /// Roles held personally.
    pub own_roles: Vec<RoleRow>,
    /// Roles held through the user's current department.
    pub department_roles: Vec<RoleRow>,
    /// The current pledge version, if the company published one.
    pub pledge_version: Option<i64>,
    pub pledge_accepted: bool,
    pub training_required: bool,
    pub training_interval_days: i64,
}

/// A published pledge version.
#[derive(Debug, Clone)]
pub struct Pledge {
    pub version: i64,
    pub text: String,
    pub published_at: DateTime<Utc>,
    pub published_by: String,
}

fn role_from_row(r: &sqlx::any::AnyRow) -> StoreResult<RoleRow> {
    let powers: String = get(r, "powers")?;
    Ok(RoleRow {
        id: get(r, "id")?,
        name: get(r, "name")?,
        description: get(r, "description")?,
        grants_json: get(r, "grants")?,
        powers: powers.split_whitespace().map(str::to_owned).collect(),
        built_in: flag(r, "built_in")?,
    })
}

const ROLE_COLUMNS: &str = "r.id, r.name, r.description, r.grants, r.powers, r.built_in";

impl Store {
    /// Everything the decision function needs about a user, in a few
    /// indexed reads.
    pub async fn access_facts(
        &self,
        company: CompanyId,
        user: UserKey,
    ) -> StoreResult<Option<AccessFacts>> {
        // Two indexed reads: the user with the pledge and training state,
        // then every role they hold, personally or through their department.
        let Some(u) = sqlx::query(
            "SELECT u.clearance, u.department_id, u.is_master, u.is_admin, u.training_completed_at, \
               (SELECT MAX(version) FROM pledge_versions p WHERE p.company_id = u.company_id) AS pledge, \
               (SELECT COUNT(*) FROM pledge_acceptances a WHERE a.company_id = u.company_id \
                  AND a.user_key = u.id AND a.version = \
                  (SELECT MAX(version) FROM pledge_versions p2 WHERE p2.company_id = u.company_id)) AS accepted, \
               t.required AS training_required, t.interval_days \
             FROM users u LEFT JOIN training_policy t ON t.company_id = u.company_id \
             WHERE u.company_id = $1 AND u.id = $2",
        )
        .bind(company.0)
        .bind(user.0)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let department: Option<i64> = get(&u, "department_id")?;
        let pledge_version: Option<i64> = get(&u, "pledge")?;
        let pledge_accepted = pledge_version.is_none() || get::<i64>(&u, "accepted")? > 0;
        let mut own_roles = Vec::new();
        let mut department_roles = Vec::new();
        for r in sqlx::query(&format!(
            "SELECT {ROLE_COLUMNS}, 0 AS via FROM roles r JOIN user_roles ur ON ur.role_id = r.id \
               WHERE ur.company_id = $1 AND ur.user_key = $2 \
             UNION ALL \
             SELECT {ROLE_COLUMNS}, 1 AS via FROM roles r \
               JOIN department_roles dr ON dr.role_id = r.id \
               JOIN users u ON u.department_id = dr.department_id AND u.company_id = dr.company_id \
               WHERE dr.company_id = $1 AND u.id = $2 \
             ORDER BY 2"
        ))
        .bind(company.0)
        .bind(user.0)
        .fetch_all(&self.pool)
        .await?
        .iter()
        {
            if get::<i64>(r, "via")? == 0 {
                own_roles.push(role_from_row(r)?);
            } else {
                department_roles.push(role_from_row(r)?);
            }
        }
        Ok(Some(AccessFacts {
            clearance: get(&u, "clearance")?,
            department,
            is_master: flag(&u, "is_master")?,
            is_admin: flag(&u, "is_admin")?,
            training_completed_at: get::<Option<i64>>(&u, "training_completed_at")?
                .map(from_ts)
                .transpose()?,
            own_roles,
            department_roles,
            pledge_version,
            pledge_accepted,
            training_required: get::<Option<i64>>(&u, "training_required")?.unwrap_or(0) != 0,
            training_interval_days: get::<Option<i64>>(&u, "interval_days")?.unwrap_or(365),
        }))
    }

    pub async fn department_roles(
        &self,
        company: CompanyId,
        department: i64,
    ) -> StoreResult<Vec<RoleRow>> {
        sqlx::query(&format!(
            "SELECT {ROLE_COLUMNS} FROM roles r JOIN department_roles dr ON dr.role_id = r.id \
             WHERE dr.company_id = $1 AND dr.department_id = $2 ORDER BY r.name"
        ))
        .bind(company.0)
        .bind(department)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(role_from_row)
        .collect()
    }

    pub async fn roles(&self, company: CompanyId) -> StoreResult<Vec<RoleRow>> {
        sqlx::query(&format!(
            "SELECT {ROLE_COLUMNS} FROM roles r WHERE r.company_id = $1 ORDER BY r.name"
        ))
        .bind(company.0)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(role_from_row)
        .collect()
    }

    /// Creates a role, or replaces the grants and powers of one of that
    /// name (built-in roles cannot be replaced).
    pub async fn put_role(
        &self,
        company: CompanyId,
        name: &str,
        description: &str,
        grants_json: &str,
        powers: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        let existing =
            sqlx::query("SELECT built_in FROM roles WHERE company_id = $1 AND name = $2")
                .bind(company.0)
                .bind(name)
                .fetch_optional(&mut *w.tx)
                .await?;
        match existing {
            Some(r) if flag(&r, "built_in")? => {
                return Err(StoreError::Conflict(format!(
                    "'{name}' is a built-in role and cannot be changed; make a role of your own"
                )))
            }
            Some(_) => {
                sqlx::query(
                    "UPDATE roles SET description = $3, grants = $4, powers = $5 \
                     WHERE company_id = $1 AND name = $2",
                )
                .bind(company.0)
                .bind(name)
                .bind(description)
                .bind(grants_json)
                .bind(powers.join(" "))
                .execute(&mut *w.tx)
                .await?;
            }
            None => {
                insert_role(
                    &mut w.tx,
                    company,
                    name,
                    description,
                    grants_json,
                    powers,
                    false,
                    now,
                )
                .await?;
            }
        }
        w.commit().await
    }

    /// Makes a company's built-in role match the binary's definition
    /// (creating it when missing). Returns whether anything changed.
    pub async fn sync_built_in_role(
        &self,
        company: CompanyId,
        name: &str,
        description: &str,
        grants_json: &str,
        powers: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut w = self.write_tx().await?;
        let existing = sqlx::query(&format!(
            "SELECT {ROLE_COLUMNS} FROM roles r WHERE r.company_id = $1 AND r.name = $2"
        ))
        .bind(company.0)
        .bind(name)
        .fetch_optional(&mut *w.tx)
        .await?;
        let changed = match existing {
            Some(r) => {
                let r = role_from_row(&r)?;
                if r.description == description
                    && r.grants_json == grants_json
                    && r.powers == powers
                    && r.built_in
                {
                    false
                } else {
                    sqlx::query(
                        "UPDATE roles SET description = $3, grants = $4, powers = $5, built_in = 1 \
                         WHERE company_id = $1 AND name = $2",
                    )
                    .bind(company.0)
                    .bind(name)
                    .bind(description)
                    .bind(grants_json)
                    .bind(powers.join(" "))
                    .execute(&mut *w.tx)
                    .await?;
                    true
                }
            }
            None => {
                insert_role(
                    &mut w.tx,
                    company,
                    name,
                    description,
                    grants_json,
                    powers,
                    true,
                    now,
                )
                .await?;
                true
            }
        };
        w.commit().await?;
        Ok(changed)
    }

    /// Deletes a role (and every holding of it); false when there is none.
    pub async fn delete_role(&self, company: CompanyId, name: &str) -> StoreResult<bool> {
        let mut w = self.write_tx().await?;
        let Some(r) =
            sqlx::query("SELECT id, built_in FROM roles WHERE company_id = $1 AND name = $2")
                .bind(company.0)
                .bind(name)
                .fetch_optional(&mut *w.tx)
                .await?
        else {
            return Ok(false);
        };
        if flag(&r, "built_in")? {
            return Err(StoreError::Conflict(format!(
                "'{name}' is a built-in role and cannot be deleted"
            )));
        }
        let id: i64 = get(&r, "id")?;
        for table in ["user_roles", "department_roles"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE company_id = $1 AND role_id = $2"
            ))
            .bind(company.0)
            .bind(id)
            .execute(&mut *w.tx)
            .await?;
        }
        sqlx::query("DELETE FROM roles WHERE company_id = $1 AND id = $2")
            .bind(company.0)
            .bind(id)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await?;
        Ok(true)
    }

    /// Sets a user's clearance and personal roles (by id) in one step.
    pub async fn set_user_access(
        &self,
        company: CompanyId,
        user: UserKey,
        clearance: &str,
        role_ids: &[i64],
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        let n = sqlx::query("UPDATE users SET clearance = $3 WHERE company_id = $1 AND id = $2")
            .bind(company.0)
            .bind(user.0)
            .bind(clearance)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if n != 1 {
            return Err(StoreError::NotFound("no such user".into()));
        }
        sqlx::query("DELETE FROM user_roles WHERE company_id = $1 AND user_key = $2")
            .bind(company.0)
            .bind(user.0)
            .execute(&mut *w.tx)
            .await?;
        for id in role_ids {
            sqlx::query(
                "INSERT INTO user_roles (company_id, user_key, role_id) VALUES ($1, $2, $3)",
            )
            .bind(company.0)
            .bind(user.0)
            .bind(id)
            .execute(&mut *w.tx)
            .await?;
        }
        w.commit().await
    }

    /// Sets the roles a department gives its members.
    pub async fn set_department_roles(
        &self,
        company: CompanyId,
        department: i64,
        role_ids: &[i64],
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query("DELETE FROM department_roles WHERE company_id = $1 AND department_id = $2")
            .bind(company.0)
            .bind(department)
            .execute(&mut *w.tx)
            .await?;
        for id in role_ids {
            sqlx::query(
                "INSERT INTO department_roles (company_id, department_id, role_id) VALUES ($1, $2, $3)",
            )
            .bind(company.0)
            .bind(department)
            .bind(id)
            .execute(&mut *w.tx)
            .await?;
        }
        w.commit().await
    }

    // ----- pledge ------------------------------------------------------------

    pub async fn current_pledge(&self, company: CompanyId) -> StoreResult<Option<Pledge>> {
        let row = sqlx::query(
            "SELECT version, text, published_at, published_by FROM pledge_versions \
             WHERE company_id = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(company.0)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Pledge {
                version: get(&r, "version")?,
                text: get(&r, "text")?,
                published_at: from_ts(get(&r, "published_at")?)?,
                published_by: get(&r, "published_by")?,
            })
        })
        .transpose()
    }

    /// Publishes the next pledge version; everyone must accept it again.
    pub async fn publish_pledge(
        &self,
        company: CompanyId,
        text: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<i64> {
        let mut w = self.write_tx().await?;
        let row = sqlx::query(
            "SELECT COALESCE(MAX(version), 0) AS v FROM pledge_versions WHERE company_id = $1",
        )
        .bind(company.0)
        .fetch_one(&mut *w.tx)
        .await?;
        let next = get::<i64>(&row, "v")? + 1;
        sqlx::query(
            "INSERT INTO pledge_versions (company_id, version, text, published_at, published_by) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(company.0)
        .bind(next)
        .bind(text)
        .bind(ts(now))
        .bind(by)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(next)
    }

    /// Records that a user accepted a pledge version (once).
    pub async fn accept_pledge(
        &self,
        company: CompanyId,
        user: UserKey,
        version: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO pledge_acceptances (company_id, user_key, version, accepted_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (company_id, user_key, version) DO NOTHING",
        )
        .bind(company.0)
        .bind(user.0)
        .bind(version)
        .bind(ts(now))
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    // ----- training ------------------------------------------------------------

    pub async fn set_training_completed(
        &self,
        company: CompanyId,
        user: UserKey,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE users SET training_completed_at = $3 WHERE company_id = $1 AND id = $2",
        )
        .bind(company.0)
        .bind(user.0)
        .bind(ts(at))
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Err(StoreError::NotFound("no such user".into()));
        }
        w.commit().await
    }

    /// (required, interval days); (false, 365) when unset.
    pub async fn training_policy(&self, company: CompanyId) -> StoreResult<(bool, i64)> {
        let row = sqlx::query(
            "SELECT required, interval_days FROM training_policy WHERE company_id = $1",
        )
        .bind(company.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => (flag(&r, "required")?, get(&r, "interval_days")?),
            None => (false, 365),
        })
    }

    pub async fn set_training_policy(
        &self,
        company: CompanyId,
        required: bool,
        interval_days: i64,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query("DELETE FROM training_policy WHERE company_id = $1")
            .bind(company.0)
            .execute(&mut *w.tx)
            .await?;
        sqlx::query(
            "INSERT INTO training_policy (company_id, required, interval_days) VALUES ($1, $2, $3)",
        )
        .bind(company.0)
        .bind(i64::from(required))
        .bind(interval_days)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    /// Active users whose training is older than `cutoff` (or missing),
    /// with the date of their last training.
    pub async fn training_due(
        &self,
        company: CompanyId,
        cutoff: DateTime<Utc>,
    ) -> StoreResult<Vec<(String, Option<DateTime<Utc>>)>> {
        let rows = sqlx::query(
            "SELECT user_id, training_completed_at FROM users WHERE company_id = $1 \
               AND status = 'active' AND (training_completed_at IS NULL OR training_completed_at < $2) \
             ORDER BY user_id",
        )
        .bind(company.0)
        .bind(ts(cutoff))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    get(r, "user_id")?,
                    get::<Option<i64>>(r, "training_completed_at")?
                        .map(from_ts)
                        .transpose()?,
                ))
            })
            .collect()
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_role(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    company: CompanyId,
    name: &str,
    description: &str,
    grants_json: &str,
    powers: &[String],
    built_in: bool,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO roles (company_id, name, description, grants, powers, built_in, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(company.0)
    .bind(name)
    .bind(description)
    .bind(grants_json)
    .bind(powers.join(" "))
    .bind(i64::from(built_in))
    .bind(ts(now))
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        StoreError::map_conflict(
            e,
            &format!("a role named '{name}' exists"),
            "no such company",
        )
    })?;
    Ok(())
}
