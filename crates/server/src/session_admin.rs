//! Seeing and ending sessions: users their own, administrators anyone's in
//! their company; and the company's limit on sessions per user.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use strongroom_core::{CompanyId, UserKey};
use strongroom_proto::{ErrorBody, ErrorCode, SessionInfo, SessionPolicyView};

use crate::audit::{self, session_ref};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ClientInfo};
use crate::state::AppState;

async fn list(
    state: &AppState,
    company: CompanyId,
    user: UserKey,
    current: &[u8; 32],
) -> ApiResult<Vec<SessionInfo>> {
    Ok(state
        .store
        .user_sessions(company, user, state.clock.now())
        .await?
        .into_iter()
        .map(|s| {
            let hash: [u8; 32] = s.token_hash.as_slice().try_into().unwrap_or([0; 32]);
            SessionInfo {
                id: session_ref(&hash),
                created_at: s.created_at,
                last_seen_at: s.last_seen_at,
                expires_at: s.expires_at,
                client_ip: s.client_ip,
                user_agent: s.user_agent,
                current: &hash == current,
            }
        })
        .collect())
}

/// Ends the user's session whose reference is `id`; false if none.
async fn end_one(state: &AppState, company: CompanyId, user: UserKey, id: &str) -> ApiResult<bool> {
    for s in state
        .store
        .user_sessions(company, user, state.clock.now())
        .await?
    {
        let hash: [u8; 32] = s.token_hash.as_slice().try_into().unwrap_or([0; 32]);
        if session_ref(&hash) == id {
            return Ok(state.store.end_session(&hash).await?);
        }
    }
    Ok(false)
}

/// The caller's own sessions.
#[utoipa::path(get, path = "/api/v1/auth/sessions", tag = "auth",
    responses((status = 200, body = [SessionInfo])), security(("bearer" = [])))]
pub async fn own(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<SessionInfo>>> {
    let p = &caller.principal;
    Ok(Json(
        list(&state, p.company, p.user, &caller.token_hash).await?,
    ))
}

/// End one of the caller's own sessions.
#[utoipa::path(delete, path = "/api/v1/auth/sessions/{id}", tag = "auth",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn end_own(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let p = &caller.principal;
    if !end_one(&state, p.company, p.user, &id).await? {
        return Err(ApiError::not_found("session"));
    }
    audit::record(
        &state,
        &caller,
        &client,
        "session.end",
        &format!("session/{id}"),
        serde_json::json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user's sessions (administrators).
#[utoipa::path(get, path = "/api/v1/users/{user_id}/sessions", tag = "users",
    params(("user_id" = String, Path)),
    responses((status = 200, body = [SessionInfo]), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn of_user(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Vec<SessionInfo>>> {
    let what = format!(
        "user/{}/sessions",
        user_id.chars().take(64).collect::<String>()
    );
    let auth = audit::require_admin(&state, &caller, &client, "session.list", &what).await?;
    let key = crate::admin::target_user(&state, &auth, &user_id)
        .await?
        .key;
    let out = list(&state, auth.company(), key, &caller.token_hash).await?;
    audit::record(
        &state,
        &caller,
        &client,
        "session.list",
        &what,
        serde_json::json!({ "count": out.len() }),
    )
    .await?;
    Ok(Json(out))
}

/// End all of a user's sessions (administrators).
#[utoipa::path(delete, path = "/api/v1/users/{user_id}/sessions", tag = "users",
    params(("user_id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn end_of_user(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
) -> ApiResult<StatusCode> {
    let what = format!(
        "user/{}/sessions",
        user_id.chars().take(64).collect::<String>()
    );
    let auth = audit::require_admin(&state, &caller, &client, "session.end_all", &what).await?;
    let key = crate::admin::target_user(&state, &auth, &user_id)
        .await?
        .key;
    let n = state.store.end_sessions_of(auth.company(), key).await?;
    audit::record(
        &state,
        &caller,
        &client,
        "session.end_all",
        &what,
        serde_json::json!({ "ended": n }),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The company's session limit.
#[utoipa::path(get, path = "/api/v1/security/session-policy", tag = "security",
    responses((status = 200, body = SessionPolicyView), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn policy(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
) -> ApiResult<Json<SessionPolicyView>> {
    let auth = audit::require_admin(
        &state,
        &caller,
        &client,
        "session_policy.read",
        "session_policy",
    )
    .await?;
    let (max, when_full, idle) = state.store.session_policy(auth.company()).await?;
    Ok(Json(SessionPolicyView {
        max_sessions_per_user: u32::try_from(max).unwrap_or(0),
        when_full,
        idle_timeout_minutes: u32::try_from(idle).unwrap_or(30),
    }))
}

/// Set the company's session limit.
#[utoipa::path(put, path = "/api/v1/security/session-policy", tag = "security",
    request_body = SessionPolicyView,
    responses((status = 200, body = SessionPolicyView), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_policy(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    ApiJson(req): ApiJson<SessionPolicyView>,
) -> ApiResult<Json<SessionPolicyView>> {
    let auth = audit::require_admin(
        &state,
        &caller,
        &client,
        "session_policy.update",
        "session_policy",
    )
    .await?;
    if !matches!(req.when_full.as_str(), "refuse_new" | "end_oldest")
        || req.max_sessions_per_user > 1000
        || !strongroom_core::session::IDLE_MINUTES.contains(&req.idle_timeout_minutes)
    {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            "max_sessions_per_user is 0 (no limit) to 1000; when_full is refuse_new or end_oldest; idle_timeout_minutes is 10 to 1440",
        ));
    }
    state
        .store
        .set_session_policy(
            auth.company(),
            i64::from(req.max_sessions_per_user),
            &req.when_full,
            i64::from(req.idle_timeout_minutes),
        )
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "session_policy.update",
        "session_policy",
        serde_json::to_value(&req).unwrap_or_default(),
    )
    .await?;
    Ok(Json(req))
}

/// Applies the session limit before a new session is made: refuses, or
/// ends the oldest. Returns a refusal reason when refused.
/// `policy` is the company's, as `Store::session_policy` gives it.
pub async fn make_room(
    state: &AppState,
    company: CompanyId,
    user: UserKey,
    policy: &(i64, String, i64),
) -> ApiResult<Option<&'static str>> {
    let (max, when_full) = (policy.0, policy.1.as_str());
    if max <= 0 {
        return Ok(None);
    }
    let open = state
        .store
        .user_sessions(company, user, state.clock.now())
        .await?;
    if (open.len() as i64) < max {
        return Ok(None);
    }
    if when_full != "end_oldest" {
        return Ok(Some("session_limit"));
    }
    let excess = open.len() as i64 - max + 1;
    for s in open.iter().take(excess.max(0) as usize) {
        let hash: [u8; 32] = s.token_hash.as_slice().try_into().unwrap_or([0; 32]);
        state.store.end_session(&hash).await?;
    }
    Ok(None)
}
