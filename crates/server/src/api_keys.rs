//! API keys for integrations: made by an administrator for a user, shown
//! once, stored as a hash, limited to record scopes, expiring. A request
//! with a key passes the same checks as the user's session would (account
//! active, access hours, IP rules, blocks, company rate limit), so a key is
//! no way around the company's rules.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::Json;
use chrono::Duration;
use strongroom_core::access::Principal;
use strongroom_core::audit::{AuditEvent, Outcome};
use strongroom_crypto::token;
use strongroom_proto::{
    ApiKeyCreated, ApiKeyView, ErrorBody, ErrorCode, NewApiKeyRequest, UserStatus,
};
use strongroom_store::{ApiKeyAuth, ApiKeyRow, NewApiKey};

use crate::audit;
use crate::auth::{Caller, API_KEY_PREFIX};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ClientInfo};
use crate::state::AppState;

pub const SCOPE_READ: &str = "records:read";
pub const SCOPE_WRITE: &str = "records:write";
/// Showing protected fields in full (`?reveal=`) is a scope of its own, on
/// top of the user's own right to reveal.
pub const SCOPE_REVEAL: &str = "records:reveal";

/// The scope a request needs, or `None` when keys may not make it at all
/// (everything but records: administration, security, sessions, audit).
fn needed_scope(method: &Method, path: &str, query: Option<&str>) -> Option<&'static str> {
    let records = path.starts_with("/api/v1/records/");
    let types = path == "/api/v1/record-types" || path.starts_with("/api/v1/record-types/");
    let read = matches!(*method, Method::GET | Method::HEAD);
    let reveal =
        url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).any(|(k, _)| k == "reveal");
    if records && reveal {
        return Some(SCOPE_REVEAL);
    }
    match (records || types, read) {
        (true, true) => Some(SCOPE_READ),
        (true, false) if records => Some(SCOPE_WRITE),
        _ => None,
    }
}

fn looks_like_key(s: &str) -> bool {
    s.strip_prefix(API_KEY_PREFIX)
        .is_some_and(token::looks_like_token)
}

fn refused_event(
    state: &AppState,
    k: &ApiKeyAuth,
    client: &ClientInfo,
    reason: &str,
    path: &str,
) -> AuditEvent {
    AuditEvent {
        chain: k.key.company.0,
        at: state.clock.now(),
        actor: format!("user:{}", k.key.user_id),
        action: "auth.api_key".into(),
        target: path.chars().take(200).collect(),
        outcome: Outcome::Denied,
        reason: Some(reason.into()),
        detail: "{}".into(),
        session: Some(format!("key:{}", k.key.public_id)),
        client_ip: Some(client.ip.to_string()),
        user_agent: client.user_agent.clone(),
        request_id: Some(crate::error::current_request_id()),
    }
}

/// Authenticates a request made with an API key.
pub async fn caller(parts: &mut Parts, state: &AppState, key: &str) -> ApiResult<Caller> {
    let invalid = || {
        ApiError::unauthenticated(
            "the API key is not valid, has expired or was revoked; ask an administrator for a new one",
        )
    };
    if !looks_like_key(key) {
        return Err(invalid());
    }
    let hash = token::hash_token(key);
    let k = state
        .store
        .api_key_by_hash(&hash)
        .await?
        .ok_or_else(invalid)?;
    state.limits.check_company(k.key.company.0)?;
    let client = ClientInfo::from_request_parts(parts, state).await?;
    let path = parts.uri.path().to_owned();
    let now = state.clock.now();
    let dead = if k.key.revoked_at.is_some() {
        Some("key_revoked")
    } else if now >= k.key.expires_at {
        Some("key_expired")
    } else if k.user_status != UserStatus::Active {
        Some("account_disabled")
    } else {
        None
    };
    if let Some(reason) = dead {
        state
            .audit
            .write(vec![refused_event(state, &k, &client, reason, &path)])
            .await?;
        return Err(invalid());
    }
    if let Some(reason) = crate::auth::admission(
        state,
        k.key.company,
        k.key.user,
        client.ip,
        Some(k.policy_epoch),
    )
    .await?
    {
        state
            .audit
            .write(vec![refused_event(state, &k, &client, reason, &path)])
            .await?;
        return Err(crate::auth::admission_error(reason));
    }
    match needed_scope(&parts.method, &path, parts.uri.query()) {
        Some(scope) if k.key.scopes.iter().any(|s| s == scope) => {}
        needed => {
            state
                .audit
                .write(vec![refused_event(state, &k, &client, "key_scope", &path)])
                .await?;
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                match needed {
                    Some(SCOPE_WRITE) => {
                        "this API key may only read; its scopes lack records:write"
                    }
                    Some(SCOPE_REVEAL) => {
                        "this API key may not reveal protected fields; its scopes lack records:reveal"
                    }
                    Some(_) => "this API key's scopes lack records:read",
                    None => "API keys may only be used for records; sign in for other work",
                },
            ));
        }
    }
    state
        .store
        .touch_api_key(&hash, k.key.last_used_at, now)
        .await?;
    Ok(Caller {
        principal: Principal {
            company: k.key.company,
            company_code: k.company_code.clone(),
            user: k.key.user,
            user_id: k.key.user_id.clone(),
            department: k.department_id,
            is_admin: k.is_admin,
            is_master: k.is_master,
        },
        token_hash: hash,
        session: None,
        api_key: Some(k.key.public_id.clone()),
        epoch: Some(k.policy_epoch),
    })
}

fn view(k: &ApiKeyRow) -> ApiKeyView {
    ApiKeyView {
        id: k.public_id.clone(),
        user: k.user_id.clone(),
        label: k.label.clone(),
        scopes: k.scopes.clone(),
        created_at: k.created_at,
        created_by: k.created_by.clone(),
        expires_at: k.expires_at,
        last_used_at: k.last_used_at,
        revoked_at: k.revoked_at,
    }
}

/// Make an API key for a user (administrators). The key is in the answer
/// this once.
#[utoipa::path(post, path = "/api/v1/users/{user_id}/api-keys", tag = "users",
    params(("user_id" = String, Path)),
    request_body = NewApiKeyRequest,
    responses((status = 201, body = ApiKeyCreated), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
    ApiJson(req): ApiJson<NewApiKeyRequest>,
) -> ApiResult<(StatusCode, Json<ApiKeyCreated>)> {
    let what = format!(
        "user/{}/api-keys",
        user_id.chars().take(64).collect::<String>()
    );
    let (auth, mine) =
        crate::access::require_profiled(&state, &caller, &client, "api_key.create", &what).await?;
    let target = crate::admin::target_user(&state, &auth, &user_id).await?;
    // A key acts as its user: making one must not lend more than one holds.
    crate::access::check_target(
        &state,
        &caller,
        &client,
        &mine,
        "api_key.create",
        &what,
        &target,
    )
    .await?;
    let label = req.label.trim();
    let mut scopes: Vec<String> = req.scopes.iter().map(|s| s.trim().to_owned()).collect();
    scopes.sort();
    scopes.dedup();
    if label.is_empty()
        || label.chars().count() > 64
        || label.chars().any(char::is_control)
        || scopes.is_empty()
        || scopes
            .iter()
            .any(|s| ![SCOPE_READ, SCOPE_WRITE, SCOPE_REVEAL].contains(&s.as_str()))
        || !(1..=365).contains(&req.expires_in_days)
    {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            "label is 1 to 64 characters; scopes are records:read, records:write and records:reveal; expires_in_days is 1 to 365",
        ));
    }
    if target.view.status != UserStatus::Active {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the user is disabled; enable the user before making a key",
        ));
    }
    let secret = token::new_token()?;
    let key = zeroize::Zeroizing::new(format!("{API_KEY_PREFIX}{}", secret.token.as_str()));
    let hash = token::hash_token(&key);
    let public_id = format!("key_{}", hex::encode(token::random_bytes::<8>()?));
    let now = state.clock.now();
    state
        .store
        .create_api_key(
            auth.company(),
            target.key,
            &NewApiKey {
                public_id: &public_id,
                key_hash: &hash,
                label,
                scopes: &scopes,
                created_by: &caller.principal.user_id,
                expires_at: now + Duration::days(i64::from(req.expires_in_days)),
            },
            now,
        )
        .await?;
    let row = state
        .store
        .api_keys(auth.company(), Some(target.key))
        .await?
        .into_iter()
        .find(|k| k.public_id == public_id)
        .ok_or_else(|| ApiError::internal("new API key vanished"))?;
    audit::record(
        &state,
        &caller,
        &client,
        "api_key.create",
        &what,
        serde_json::json!({ "id": public_id, "label": label, "scopes": scopes,
            "expires_at": row.expires_at }),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(ApiKeyCreated {
            key: key.to_string(),
            view: view(&row),
        }),
    ))
}

/// The company's API keys (administrators).
#[utoipa::path(get, path = "/api/v1/security/api-keys", tag = "security",
    responses((status = 200, body = [ApiKeyView]), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
) -> ApiResult<Json<Vec<ApiKeyView>>> {
    let auth = audit::require_admin(&state, &caller, &client, "api_key.list", "api_keys").await?;
    Ok(Json(
        state
            .store
            .api_keys(auth.company(), None)
            .await?
            .iter()
            .map(view)
            .collect(),
    ))
}

/// Revoke an API key (administrators); it stops working at once.
#[utoipa::path(delete, path = "/api/v1/security/api-keys/{id}", tag = "security",
    params(("id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let what = format!("api_key/{}", id.chars().take(40).collect::<String>());
    let auth = audit::require_admin(&state, &caller, &client, "api_key.revoke", &what).await?;
    if !state
        .store
        .revoke_api_key(auth.company(), &id, state.clock.now())
        .await?
    {
        return Err(ApiError::not_found("live API key"));
    }
    audit::record(
        &state,
        &caller,
        &client,
        "api_key.revoke",
        &what,
        serde_json::json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
