//! Lockout: failed sign-ins are counted per account and per address in the
//! store (so every node and a restart see the same counts). Enough failures
//! on an account lock it for a time that doubles with each lockout, or
//! until an administrator unlocks it; enough from one address block the
//! address for the company. Also the company's sign-in policy endpoints.

use std::net::IpAddr;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use strongroom_core::audit::{AuditEvent, Outcome, SERVER_CHAIN};
use strongroom_core::signin::{SignInPolicy, TwoFactorPolicy};
use strongroom_core::{CompanyId, UserKey};
use strongroom_proto::{ErrorBody, ErrorCode, SignInPolicyView};

use crate::audit;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ClientInfo};
use crate::state::AppState;
use strongroom_store::LoginAccount;

/// "Until an administrator unlocks it": the last second of year 9999.
pub fn until_unlocked() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

pub async fn policy_for(state: &AppState, chain: i64) -> ApiResult<SignInPolicy> {
    if chain == SERVER_CHAIN {
        return Ok(SignInPolicy::default());
    }
    Ok(state.store.sign_in_policy(CompanyId(chain)).await?)
}

fn system_event(
    state: &AppState,
    chain: i64,
    action: &str,
    target: String,
    reason: &str,
    detail: serde_json::Value,
    ip: IpAddr,
) -> AuditEvent {
    AuditEvent {
        chain,
        at: state.clock.now(),
        actor: "system".into(),
        action: action.into(),
        target,
        outcome: Outcome::Success,
        reason: Some(reason.into()),
        detail: detail.to_string(),
        session: None,
        client_ip: Some(ip.to_string()),
        user_agent: None,
        request_id: Some(crate::error::current_request_id()),
    }
}

/// Counts a failed sign-in (a wrong password or second factor, or an
/// unknown account) and applies the lock or block it earns.
pub async fn failed(
    state: &AppState,
    chain: i64,
    account: Option<(CompanyId, UserKey, &str)>,
    ip: IpAddr,
) -> ApiResult<()> {
    let policy = policy_for(state, chain).await?;
    let now = state.clock.now();
    let mut events = Vec::new();
    if let Some((company, key, user_id)) = account {
        let subject = format!("user:{}", key.0);
        let c = state
            .store
            .count_failure(chain, &subject, now, policy.window)
            .await?;
        if c.failures >= i64::from(policy.lockout_threshold) {
            let n = state.store.note_lockout(chain, &subject).await?;
            let until = policy
                .lock_length(u32::try_from(n).unwrap_or(u32::MAX))
                .map(|d| now + d)
                .unwrap_or_else(until_unlocked);
            state
                .store
                .lock_account(company, key, until, "too_many_failures")
                .await?;
            events.push(system_event(
                state,
                chain,
                "account.lock",
                format!("user/{user_id}"),
                "too_many_failures",
                serde_json::json!({
                    "failures": c.failures,
                    "lockout": n,
                    "until": if policy.until_unlocked { None } else { Some(until) },
                }),
                ip,
            ));
        }
    }
    let subject = format!("ip:{ip}");
    let c = state
        .store
        .count_failure(chain, &subject, now, policy.window)
        .await?;
    if c.failures >= i64::from(policy.address_threshold) {
        state.store.note_lockout(chain, &subject).await?;
        let until = now + policy.address_block;
        state
            .store
            .block_address(
                &strongroom_store::AddressBlock {
                    chain,
                    address: ip.to_string(),
                    until,
                    reason: "too_many_failed_sign_ins".into(),
                },
                now,
            )
            .await?;
        state.blocks.add(chain, ip, until);
        events.push(system_event(
            state,
            chain,
            "address.block",
            format!("ip/{ip}"),
            "too_many_failed_sign_ins",
            serde_json::json!({ "failures": c.failures, "until": until }),
            ip,
        ));
    }
    if !events.is_empty() {
        state.audit.write(events).await?;
    }
    Ok(())
}

/// A successful sign-in forgets the account's failures and lockouts. Most
/// sign-ins follow no failure (as read with the account) and need no write,
/// nor a wait for the write lock and the disk. A failure recorded after the
/// account was read stays, as it would had it come just after.
pub async fn succeeded(state: &AppState, account: &LoginAccount) -> ApiResult<()> {
    if !account.has_failures {
        return Ok(());
    }
    Ok(state
        .store
        .clear_failures(account.company.0, &format!("user:{}", account.key.0))
        .await?)
}

fn view(p: &SignInPolicy) -> SignInPolicyView {
    let m = |d: Duration| u32::try_from(d.num_minutes()).unwrap_or(0);
    SignInPolicyView {
        lockout_threshold: p.lockout_threshold,
        window_minutes: m(p.window),
        lockout_minutes: m(p.lockout_base),
        lockout_max_minutes: m(p.lockout_max),
        lockout_until_unlocked: p.until_unlocked,
        address_threshold: p.address_threshold,
        address_block_minutes: m(p.address_block),
        two_factor: p.two_factor.as_str().into(),
    }
}

/// The company's lockout, throttling and second-factor policy.
#[utoipa::path(get, path = "/api/v1/security/sign-in-policy", tag = "security",
    responses((status = 200, body = SignInPolicyView), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_policy(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
) -> ApiResult<Json<SignInPolicyView>> {
    let auth = audit::require_admin(
        &state,
        &caller,
        &client,
        "sign_in_policy.read",
        "sign_in_policy",
    )
    .await?;
    Ok(Json(view(
        &state.store.sign_in_policy(auth.company()).await?,
    )))
}

/// Set the company's lockout, throttling and second-factor policy.
#[utoipa::path(put, path = "/api/v1/security/sign-in-policy", tag = "security",
    request_body = SignInPolicyView,
    responses((status = 200, body = SignInPolicyView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_policy(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    ApiJson(req): ApiJson<SignInPolicyView>,
) -> ApiResult<Json<SignInPolicyView>> {
    let auth = audit::require_admin(
        &state,
        &caller,
        &client,
        "sign_in_policy.update",
        "sign_in_policy",
    )
    .await?;
    let two_factor = TwoFactorPolicy::parse(&req.two_factor).ok_or_else(|| {
        ApiError::new(
            ErrorCode::ValidationFailed,
            "two_factor is off, admins, all or selected",
        )
    })?;
    let m = |v: u32| Duration::minutes(i64::from(v));
    let policy = SignInPolicy {
        lockout_threshold: req.lockout_threshold,
        window: m(req.window_minutes),
        lockout_base: m(req.lockout_minutes),
        lockout_max: m(req.lockout_max_minutes),
        until_unlocked: req.lockout_until_unlocked,
        address_threshold: req.address_threshold,
        address_block: m(req.address_block_minutes),
        two_factor,
    }
    .checked()?;
    state
        .store
        .set_sign_in_policy(auth.company(), &policy)
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "sign_in_policy.update",
        "sign_in_policy",
        serde_json::to_value(&req).unwrap_or_default(),
    )
    .await?;
    Ok(Json(view(&policy)))
}
