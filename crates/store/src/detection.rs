//! Detector rules, address blocks, account locks, incidents, sign-in
//! history and the alert outbox.

use crate::{from_ts, get, opt_ts, ts, Store, StoreError, StoreResult};
use chrono::{DateTime, Duration, Utc};
use sqlx::any::AnyRow;
use strongroom_core::detect::{default_rules, Detector, Response, Rule};
use strongroom_core::{CompanyId, UserKey};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressBlock {
    pub chain: i64,
    pub address: String,
    pub until: DateTime<Utc>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    pub id: i64,
    pub chain: i64,
    pub opened_at: DateTime<Utc>,
    pub detector: String,
    pub subject: String,
    pub summary: String,
    pub response: String,
    pub status: String,
    /// JSON list of {at, by, text}.
    pub notes: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: i64,
    pub payload: String,
    pub attempts: i64,
}

fn incident_from_row(r: &AnyRow) -> StoreResult<Incident> {
    Ok(Incident {
        id: get(r, "id")?,
        chain: get(r, "chain")?,
        opened_at: from_ts(get(r, "opened_at")?)?,
        detector: get(r, "detector")?,
        subject: get(r, "subject")?,
        summary: get(r, "summary")?,
        response: get(r, "response")?,
        status: get(r, "status")?,
        notes: get(r, "notes")?,
        updated_at: from_ts(get(r, "updated_at")?)?,
    })
}

impl Store {
    /// A company's detector rules: its own settings over the defaults.
    pub async fn detector_rules(&self, chain: i64) -> StoreResult<Vec<Rule>> {
        let rows = sqlx::query(
            "SELECT detector, enabled, threshold, window_secs, response, block_secs \
             FROM detector_rules WHERE chain = $1",
        )
        .bind(chain)
        .fetch_all(&self.pool)
        .await?;
        let mut rules = default_rules();
        for r in &rows {
            let d: String = get(r, "detector")?;
            let resp: String = get(r, "response")?;
            let (Some(detector), Some(response)) = (Detector::parse(&d), Response::parse(&resp))
            else {
                return Err(StoreError::Corrupt(format!("detector rule {d}/{resp}")));
            };
            let rule = Rule {
                detector,
                enabled: get::<i64>(r, "enabled")? != 0,
                threshold: u32::try_from(get::<i64>(r, "threshold")?).unwrap_or(u32::MAX),
                window: Duration::seconds(get(r, "window_secs")?),
                response,
                block_for: Duration::seconds(get(r, "block_secs")?),
            };
            if let Some(slot) = rules.iter_mut().find(|x| x.detector == detector) {
                *slot = rule;
            }
        }
        Ok(rules)
    }

    pub async fn set_detector_rule(&self, chain: i64, rule: &Rule) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query("DELETE FROM detector_rules WHERE chain = $1 AND detector = $2")
            .bind(chain)
            .bind(rule.detector.as_str())
            .execute(&mut *w.tx)
            .await?;
        sqlx::query(
            "INSERT INTO detector_rules (chain, detector, enabled, threshold, window_secs, response, block_secs) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(chain)
        .bind(rule.detector.as_str())
        .bind(rule.enabled as i64)
        .bind(i64::from(rule.threshold))
        .bind(rule.window.num_seconds())
        .bind(rule.response.as_str())
        .bind(rule.block_for.num_seconds())
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    /// Blocks an address for a company (or, with chain 0, the whole server).
    pub async fn block_address(&self, b: &AddressBlock, now: DateTime<Utc>) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query("DELETE FROM address_blocks WHERE chain = $1 AND address = $2")
            .bind(b.chain)
            .bind(&b.address)
            .execute(&mut *w.tx)
            .await?;
        sqlx::query(
            "INSERT INTO address_blocks (chain, address, until, reason, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(b.chain)
        .bind(&b.address)
        .bind(ts(b.until))
        .bind(&b.reason)
        .bind(ts(now))
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    pub async fn unblock_address(&self, chain: i64, address: &str) -> StoreResult<bool> {
        let mut w = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM address_blocks WHERE chain = $1 AND address = $2")
            .bind(chain)
            .bind(address)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        w.commit().await?;
        Ok(n > 0)
    }

    /// Until when an address is blocked for either of two chains (a
    /// company's and the server's), if it is: the block of `chains.0` when
    /// both have one, with its chain.
    pub async fn address_blocked_until(
        &self,
        chains: (i64, i64),
        address: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(i64, DateTime<Utc>)>> {
        let row = sqlx::query(
            "SELECT chain, until FROM address_blocks \
             WHERE chain IN ($1, $2) AND address = $3 AND until > $4 \
             ORDER BY CASE WHEN chain = $1 THEN 0 ELSE 1 END LIMIT 1",
        )
        .bind(chains.0)
        .bind(chains.1)
        .bind(address)
        .bind(ts(now))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((get(&r, "chain")?, from_ts(get(&r, "until")?)?)))
            .transpose()
    }

    pub async fn active_blocks(&self, now: DateTime<Utc>) -> StoreResult<Vec<AddressBlock>> {
        let rows = sqlx::query(
            "SELECT chain, address, until, reason FROM address_blocks WHERE until > $1",
        )
        .bind(ts(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AddressBlock {
                    chain: get(r, "chain")?,
                    address: get(r, "address")?,
                    until: from_ts(get(r, "until")?)?,
                    reason: get(r, "reason")?,
                })
            })
            .collect()
    }

    /// Locks an account and ends its sessions, in one transaction. A lock
    /// that already runs longer is kept (a detector's lock never shortens
    /// a grown lockout).
    pub async fn lock_account(
        &self,
        company: CompanyId,
        user: UserKey,
        until: DateTime<Utc>,
        reason: &str,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        let existing =
            sqlx::query("SELECT until FROM account_locks WHERE company_id = $1 AND user_key = $2")
                .bind(company.0)
                .bind(user.0)
                .fetch_optional(&mut *w.tx)
                .await?;
        let until = match existing {
            Some(r) => until.max(from_ts(get(&r, "until")?)?),
            None => until,
        };
        sqlx::query("DELETE FROM account_locks WHERE company_id = $1 AND user_key = $2")
            .bind(company.0)
            .bind(user.0)
            .execute(&mut *w.tx)
            .await?;
        sqlx::query("INSERT INTO account_locks (company_id, user_key, until, reason) VALUES ($1, $2, $3, $4)")
            .bind(company.0)
            .bind(user.0)
            .bind(ts(until))
            .bind(reason)
            .execute(&mut *w.tx)
            .await?;
        crate::sessions::end_user_sessions(&mut w.tx, company, user).await?;
        w.commit().await
    }

    /// Until when an account is locked, if it is.
    pub async fn account_locked_until(
        &self,
        company: CompanyId,
        user: UserKey,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<DateTime<Utc>>> {
        let row = sqlx::query(
            "SELECT until FROM account_locks WHERE company_id = $1 AND user_key = $2 AND until > $3",
        )
        .bind(company.0)
        .bind(user.0)
        .bind(ts(now))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| from_ts(get(&r, "until")?)).transpose()
    }

    pub async fn unlock_account(&self, company: CompanyId, user: UserKey) -> StoreResult<bool> {
        let mut w = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM account_locks WHERE company_id = $1 AND user_key = $2")
            .bind(company.0)
            .bind(user.0)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        w.commit().await?;
        Ok(n > 0)
    }

    /// Ends every session of a user (a detector's response).
    pub async fn end_sessions_of(&self, company: CompanyId, user: UserKey) -> StoreResult<u64> {
        let mut w = self.write_tx().await?;
        let n = crate::sessions::end_user_sessions(&mut w.tx, company, user).await?;
        w.commit().await?;
        Ok(n)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn open_incident(
        &self,
        chain: i64,
        detector: &str,
        subject: &str,
        summary: &str,
        response: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<i64> {
        let mut w = self.write_tx().await?;
        let row = sqlx::query(
            "INSERT INTO incidents (chain, opened_at, detector, subject, summary, response, status, notes, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'open', '[]', $2) RETURNING id",
        )
        .bind(chain)
        .bind(ts(now))
        .bind(detector)
        .bind(subject)
        .bind(summary)
        .bind(response)
        .fetch_one(&mut *w.tx)
        .await?;
        let id = get(&row, "id")?;
        w.commit().await?;
        Ok(id)
    }

    /// Whether an incident of `detector` about `subject` was opened in the
    /// company at or after `since`.
    pub async fn incident_opened_since(
        &self,
        chain: i64,
        detector: &str,
        subject: &str,
        since: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM incidents \
             WHERE chain = $1 AND detector = $2 AND subject = $3 AND opened_at >= $4",
        )
        .bind(chain)
        .bind(detector)
        .bind(subject)
        .bind(ts(since))
        .fetch_one(&self.pool)
        .await?;
        Ok(get::<i64>(&row, "n")? > 0)
    }

    pub async fn incidents(&self, chain: i64) -> StoreResult<Vec<Incident>> {
        let rows = sqlx::query(
            "SELECT id, chain, opened_at, detector, subject, summary, response, status, notes, updated_at \
             FROM incidents WHERE chain = $1 ORDER BY id DESC LIMIT 1000",
        )
        .bind(chain)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(incident_from_row).collect()
    }

    /// Changes an incident's status and appends a note. Returns the incident.
    pub async fn update_incident(
        &self,
        chain: i64,
        id: i64,
        status: &str,
        note: Option<(&str, &str)>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Incident>> {
        let mut w = self.write_tx().await?;
        let Some(row) = sqlx::query(
            "SELECT id, chain, opened_at, detector, subject, summary, response, status, notes, updated_at \
             FROM incidents WHERE chain = $1 AND id = $2",
        )
        .bind(chain)
        .bind(id)
        .fetch_optional(&mut *w.tx)
        .await?
        else {
            return Ok(None);
        };
        let mut inc = incident_from_row(&row)?;
        let mut notes: Vec<serde_json::Value> =
            serde_json::from_str(&inc.notes).unwrap_or_default();
        if let Some((by, text)) = note {
            notes.push(serde_json::json!({ "at": now, "by": by, "text": text }));
        }
        inc.notes = serde_json::Value::Array(notes).to_string();
        inc.status = status.to_owned();
        inc.updated_at = now;
        sqlx::query("UPDATE incidents SET status = $3, notes = $4, updated_at = $5 WHERE chain = $1 AND id = $2")
            .bind(chain)
            .bind(id)
            .bind(&inc.status)
            .bind(&inc.notes)
            .bind(ts(now))
            .execute(&mut *w.tx)
            .await?;
        w.commit().await?;
        Ok(Some(inc))
    }
}

/// Counts a sign-in's address, hour and total in `sign_in_history`.
const NOTE_SIGN_IN: &str = "INSERT INTO sign_in_history (company_id, user_key, kind, value, seen) \
     VALUES ($1, $2, 'address', $3, 1), ($1, $2, 'hour', $4, 1), ($1, $2, 'total', '', 1) \
     ON CONFLICT (company_id, user_key, kind, value) \
     DO UPDATE SET seen = sign_in_history.seen + 1 \
     RETURNING kind, seen";

impl Store {
    /// Records a successful sign-in's address and hour; returns how often
    /// each was seen before, and how many sign-ins the user had before.
    pub async fn note_sign_in(
        &self,
        company: CompanyId,
        user: UserKey,
        address: &str,
        hour: u32,
    ) -> StoreResult<(i64, i64, i64)> {
        // One statement counts all three (each row new at 1, or one more).
        let seen: Vec<(String, i64)> = if let Some(writer) = &self.record_writer {
            // On an SQLite file, with the other writes of the moment.
            let (company, user, address, hour) =
                (company.0, user.0, address.to_owned(), hour.to_string());
            writer
                .write(move |c| {
                    let mut st = c
                        .prepare_cached(crate::reader::numbered(NOTE_SIGN_IN))
                        .map_err(crate::appender::failed)?;
                    let rows = st
                        .query_map(rusqlite::params![company, user, address, hour], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })
                        .map_err(crate::appender::failed)?;
                    rows.collect::<Result<Vec<_>, _>>()
                        .map_err(crate::appender::failed)
                })
                .await?
        } else {
            let note = sqlx::query(NOTE_SIGN_IN)
                .bind(company.0)
                .bind(user.0)
                .bind(address)
                .bind(hour.to_string());
            let rows = self.write_one(note).await?;
            rows.iter()
                .map(|r| Ok((get(r, "kind")?, get(r, "seen")?)))
                .collect::<StoreResult<_>>()?
        };
        let before = |kind: &str| -> StoreResult<i64> {
            match seen.iter().find(|(k, _)| k == kind) {
                Some((_, n)) => Ok(n - 1),
                None => Err(StoreError::Corrupt(format!(
                    "sign-in history without '{kind}'"
                ))),
            }
        };
        Ok((before("address")?, before("hour")?, before("total")?))
    }

    pub async fn enqueue_alert(&self, payload: &str, now: DateTime<Utc>) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query("INSERT INTO alert_outbox (payload, attempts, next_at) VALUES ($1, 0, $2)")
            .bind(payload)
            .bind(ts(now))
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
    }

    pub async fn due_alerts(&self, now: DateTime<Utc>) -> StoreResult<Vec<OutboxItem>> {
        let rows = sqlx::query(
            "SELECT id, payload, attempts FROM alert_outbox WHERE delivered_at IS NULL AND next_at <= $1 \
             ORDER BY id LIMIT 50",
        )
        .bind(ts(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxItem {
                    id: get(r, "id")?,
                    payload: get(r, "payload")?,
                    attempts: get(r, "attempts")?,
                })
            })
            .collect()
    }

    pub async fn alert_delivered(&self, id: i64, now: DateTime<Utc>) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query(
            "UPDATE alert_outbox SET delivered_at = $2, attempts = attempts + 1 WHERE id = $1",
        )
        .bind(id)
        .bind(ts(now))
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    pub async fn alert_failed(
        &self,
        id: i64,
        next_at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query(
            "UPDATE alert_outbox SET attempts = attempts + 1, next_at = $2, last_error = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(ts(next_at))
        .bind(error)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    /// (attempts, delivered) of every alert, oldest first (for tests and status).
    pub async fn alert_states(&self) -> StoreResult<Vec<(i64, bool)>> {
        let rows = sqlx::query("SELECT attempts, delivered_at FROM alert_outbox ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    get(r, "attempts")?,
                    opt_ts(get(r, "delivered_at")?)?.is_some(),
                ))
            })
            .collect()
    }
}

impl Store {
    /// IP rules of a company (`user` None) or of one user.
    pub async fn ip_rules(
        &self,
        company: CompanyId,
        user: Option<UserKey>,
    ) -> StoreResult<Vec<strongroom_core::ip_policy::IpRule>> {
        let sql = format!(
            "SELECT kind, network, label, user_key FROM ip_rules WHERE company_id = $1 AND {} ORDER BY id",
            scope(user)
        );
        let rows = scoped(sqlx::query(&sql), company, user)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(ip_rule_from_row).collect()
    }

    /// The company's IP rules and a user's own, in one query (every
    /// authenticated request needs both).
    pub async fn ip_rules_for(
        &self,
        company: CompanyId,
        user: Option<UserKey>,
    ) -> StoreResult<(
        Vec<strongroom_core::ip_policy::IpRule>,
        Vec<strongroom_core::ip_policy::IpRule>,
    )> {
        let rows = sqlx::query(
            "SELECT kind, network, label, user_key FROM ip_rules \
             WHERE company_id = $1 AND (user_key IS NULL OR user_key = $2) ORDER BY id",
        )
        .bind(company.0)
        .bind(user.map(|u| u.0).unwrap_or(-1))
        .fetch_all(&self.pool)
        .await?;
        let (mut company_rules, mut user_rules) = (Vec::new(), Vec::new());
        for r in &rows {
            let rule = ip_rule_from_row(r)?;
            if get::<Option<i64>>(r, "user_key")?.is_some() {
                user_rules.push(rule);
            } else {
                company_rules.push(rule);
            }
        }
        Ok((company_rules, user_rules))
    }

    /// Replaces a company's (or a user's) IP rules.
    pub async fn set_ip_rules(
        &self,
        company: CompanyId,
        user: Option<UserKey>,
        rules: &[strongroom_core::ip_policy::IpRule],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        let sql = format!(
            "DELETE FROM ip_rules WHERE company_id = $1 AND {}",
            scope(user)
        );
        scoped(sqlx::query(&sql), company, user)
            .execute(&mut *w.tx)
            .await?;
        for r in rules {
            sqlx::query(
                "INSERT INTO ip_rules (company_id, user_key, kind, network, label, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(company.0)
            .bind(user.map(|u| u.0))
            .bind(r.kind.as_str())
            .bind(r.network.to_string())
            .bind(&r.label)
            .bind(ts(now))
            .execute(&mut *w.tx)
            .await?;
        }
        w.commit().await
    }
}

/// The rows of a company-wide setting (`user` None) or of one user's:
/// `$2` is the user when there is one.
fn scope(user: Option<UserKey>) -> &'static str {
    match user {
        None => "user_key IS NULL",
        Some(_) => "user_key = $2",
    }
}

fn scoped<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    company: CompanyId,
    user: Option<UserKey>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let q = q.bind(company.0);
    match user {
        Some(u) => q.bind(u.0),
        None => q,
    }
}

fn ip_rule_from_row(r: &AnyRow) -> StoreResult<strongroom_core::ip_policy::IpRule> {
    let kind: String = get(r, "kind")?;
    let net: String = get(r, "network")?;
    Ok(strongroom_core::ip_policy::IpRule {
        kind: strongroom_core::ip_policy::RuleKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("ip rule kind {kind}")))?,
        network: strongroom_core::ip_policy::parse_network(&net)
            .ok_or_else(|| StoreError::Corrupt(format!("ip rule network {net}")))?,
        label: get(r, "label")?,
    })
}

/// What the access-hours rule needs for one user.
#[derive(Debug, Clone)]
pub struct HoursSettings {
    pub timezone: String,
    /// The user's own windows if any, else the company's.
    pub windows: Vec<strongroom_core::hours::AccessWindow>,
    pub valid_from: Option<chrono::NaiveDate>,
    pub valid_until: Option<chrono::NaiveDate>,
}

fn windows_from(rows: &[AnyRow]) -> StoreResult<Vec<strongroom_core::hours::AccessWindow>> {
    rows.iter()
        .map(|r| {
            let d: String = get(r, "weekday")?;
            Ok(strongroom_core::hours::AccessWindow {
                day: d
                    .parse::<chrono::Weekday>()
                    .map_err(|_| StoreError::Corrupt(format!("weekday {d}")))?,
                start: u16::try_from(get::<i64>(r, "start_min")?).unwrap_or(0),
                end: u16::try_from(get::<i64>(r, "end_min")?).unwrap_or(0),
            })
        })
        .collect()
}

fn date_col(v: Option<String>) -> StoreResult<Option<chrono::NaiveDate>> {
    v.map(|s| {
        chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d")
            .map_err(|_| StoreError::Corrupt(format!("date {s}")))
    })
    .transpose()
}

impl Store {
    /// The company's windows (`user` None) or a user's own.
    pub async fn access_windows(
        &self,
        company: CompanyId,
        user: Option<UserKey>,
    ) -> StoreResult<Vec<strongroom_core::hours::AccessWindow>> {
        let sql = format!(
            "SELECT weekday, start_min, end_min, user_key FROM access_windows \
             WHERE company_id = $1 AND {} ORDER BY id",
            scope(user)
        );
        let rows = scoped(sqlx::query(&sql), company, user)
            .fetch_all(&self.pool)
            .await?;
        windows_from(&rows)
    }

    /// Everything the access-hours check needs for a user, in two queries
    /// (every authenticated request needs it).
    pub async fn hours_settings(
        &self,
        company: CompanyId,
        user: UserKey,
    ) -> StoreResult<HoursSettings> {
        let row = sqlx::query(
            "SELECT c.timezone, u.valid_from, u.valid_until FROM companies c JOIN users u ON u.company_id = c.id \
             WHERE c.id = $1 AND u.id = $2",
        )
        .bind(company.0)
        .bind(user.0)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound("no such user".into()))?;
        let rows = sqlx::query(
            "SELECT weekday, start_min, end_min, user_key FROM access_windows \
             WHERE company_id = $1 AND (user_key IS NULL OR user_key = $2) ORDER BY id",
        )
        .bind(company.0)
        .bind(user.0)
        .fetch_all(&self.pool)
        .await?;
        // The user's own windows replace the company's.
        let (own, shared): (Vec<&AnyRow>, Vec<&AnyRow>) = rows
            .iter()
            .partition(|r| get::<Option<i64>>(r, "user_key").ok().flatten().is_some());
        let chosen: Vec<AnyRow> = if own.is_empty() { shared } else { own }
            .into_iter()
            .cloned()
            .collect();
        Ok(HoursSettings {
            timezone: get(&row, "timezone")?,
            windows: windows_from(&chosen)?,
            valid_from: date_col(get(&row, "valid_from")?)?,
            valid_until: date_col(get(&row, "valid_until")?)?,
        })
    }

    pub async fn company_timezone(&self, company: CompanyId) -> StoreResult<String> {
        let row = sqlx::query("SELECT timezone FROM companies WHERE id = $1")
            .bind(company.0)
            .fetch_one(&self.pool)
            .await?;
        get(&row, "timezone")
    }

    /// Replaces windows (company's or a user's); for the company, also its
    /// time zone; for a user, also the validity dates.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_access_hours(
        &self,
        company: CompanyId,
        user: Option<UserKey>,
        timezone: Option<&str>,
        windows: &[strongroom_core::hours::AccessWindow],
        valid: Option<(Option<chrono::NaiveDate>, Option<chrono::NaiveDate>)>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        let sql = format!(
            "DELETE FROM access_windows WHERE company_id = $1 AND {}",
            scope(user)
        );
        scoped(sqlx::query(&sql), company, user)
            .execute(&mut *w.tx)
            .await?;
        for win in windows {
            sqlx::query(
                "INSERT INTO access_windows (company_id, user_key, weekday, start_min, end_min) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(company.0)
            .bind(user.map(|u| u.0))
            .bind(win.day.to_string().to_ascii_lowercase())
            .bind(i64::from(win.start))
            .bind(i64::from(win.end))
            .execute(&mut *w.tx)
            .await?;
        }
        if let Some(tz) = timezone {
            sqlx::query("UPDATE companies SET timezone = $2 WHERE id = $1")
                .bind(company.0)
                .bind(tz)
                .execute(&mut *w.tx)
                .await?;
        }
        if let (Some(u), Some((from, until))) = (user, valid) {
            let fmt = |d: Option<chrono::NaiveDate>| d.map(|d| d.format("%Y-%m-%d").to_string());
            sqlx::query("UPDATE users SET valid_from = $3, valid_until = $4 WHERE company_id = $1 AND id = $2")
                .bind(company.0)
                .bind(u.0)
                .bind(fmt(from))
                .bind(fmt(until))
                .execute(&mut *w.tx)
                .await?;
        }
        w.commit().await
    }
}
