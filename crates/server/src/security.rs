//! The company's security console over the API: the incident register,
//! detector rules, address blocks, account unlocks. Administrators only;
//! every change is audited.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Duration;
use strongroom_core::detect::{Detector, Response, Rule};
use strongroom_core::ident;
use strongroom_proto::{
    AddressBlockView, DetectorRuleView, ErrorBody, ErrorCode, IncidentView, UpdateIncident,
};
use strongroom_store::Incident;

use crate::audit;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ClientInfo};
use crate::state::AppState;

fn incident_view(i: Incident) -> IncidentView {
    IncidentView {
        id: i.id,
        opened_at: i.opened_at,
        detector: i.detector,
        subject: i.subject,
        summary: i.summary,
        response: i.response,
        status: i.status,
        notes: serde_json::from_str(&i.notes).unwrap_or(serde_json::Value::Null),
        updated_at: i.updated_at,
    }
}

fn rule_view(r: &Rule) -> DetectorRuleView {
    DetectorRuleView {
        detector: r.detector.as_str().into(),
        enabled: r.enabled,
        threshold: r.threshold,
        window_seconds: r.window.num_seconds(),
        response: r.response.as_str().into(),
        block_seconds: r.block_for.num_seconds(),
    }
}

/// The incident register, newest first.
#[utoipa::path(get, path = "/api/v1/security/incidents", tag = "security",
    responses((status = 200, body = [IncidentView]), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn incidents(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
) -> ApiResult<Json<Vec<IncidentView>>> {
    let auth = audit::require_admin(&state, &caller, &client, "incident.list", "incidents").await?;
    let list: Vec<IncidentView> = state
        .store
        .incidents(auth.company().0)
        .await?
        .into_iter()
        .map(incident_view)
        .collect();
    audit::record(
        &state,
        &caller,
        &client,
        "incident.list",
        "incidents",
        serde_json::json!({ "count": list.len() }),
    )
    .await?;
    Ok(Json(list))
}

/// Acknowledge or resolve an incident, with a note.
#[utoipa::path(patch, path = "/api/v1/security/incidents/{id}", tag = "security",
    params(("id" = i64, Path)),
    request_body = UpdateIncident,
    responses((status = 200, body = IncidentView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_incident(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateIncident>,
) -> ApiResult<Json<IncidentView>> {
    let what = format!("incident/{id}");
    let auth = audit::require_admin(&state, &caller, &client, "incident.update", &what).await?;
    let id: i64 = id.parse().map_err(|_| ApiError::not_found("incident"))?;
    if !matches!(req.status.as_str(), "open" | "acknowledged" | "resolved") {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            "status must be open, acknowledged or resolved",
        ));
    }
    let note = req
        .note
        .as_deref()
        .map(|n| ident::display_text("note", n, 2000))
        .transpose()?;
    let by = format!("user:{}", caller.principal.user_id);
    let inc = state
        .store
        .update_incident(
            auth.company().0,
            id,
            &req.status,
            note.as_deref().map(|n| (by.as_str(), n)),
            state.clock.now(),
        )
        .await?
        .ok_or_else(|| ApiError::not_found("incident"))?;
    audit::record(
        &state,
        &caller,
        &client,
        "incident.update",
        &what,
        serde_json::json!({ "status": req.status }),
    )
    .await?;
    Ok(Json(incident_view(inc)))
}

/// The company's detector rules (its own settings over the defaults).
#[utoipa::path(get, path = "/api/v1/security/detectors", tag = "security",
    responses((status = 200, body = [DetectorRuleView]), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn detectors(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
) -> ApiResult<Json<Vec<DetectorRuleView>>> {
    let auth = audit::require_admin(&state, &caller, &client, "detector.list", "detectors").await?;
    let rules = state.store.detector_rules(auth.company().0).await?;
    Ok(Json(rules.iter().map(rule_view).collect()))
}

/// Change one detector's rule.
#[utoipa::path(put, path = "/api/v1/security/detectors/{detector}", tag = "security",
    params(("detector" = String, Path)),
    request_body = DetectorRuleView,
    responses((status = 200, body = DetectorRuleView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_detector(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<DetectorRuleView>,
) -> ApiResult<Json<DetectorRuleView>> {
    let what = format!("detector/{name}");
    let auth = audit::require_admin(&state, &caller, &client, "detector.update", &what).await?;
    let detector = Detector::parse(&name).ok_or_else(|| ApiError::not_found("detector"))?;
    if req.detector != name {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            "detector in the body must match the path",
        ));
    }
    let response = Response::parse(&req.response).ok_or_else(|| {
        ApiError::new(
            ErrorCode::ValidationFailed,
            "response must be alert, block_address, lock_account or end_sessions",
        )
    })?;
    if req.threshold == 0
        || !(0..=30 * 86_400).contains(&req.window_seconds)
        || !(0..=30 * 86_400).contains(&req.block_seconds)
    {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            "threshold must be at least 1; window_seconds and block_seconds from 0 to 2592000 (30 days)",
        ));
    }
    let rule = Rule {
        detector,
        enabled: req.enabled,
        threshold: req.threshold,
        window: Duration::seconds(req.window_seconds),
        response,
        block_for: Duration::seconds(req.block_seconds),
    };
    state
        .store
        .set_detector_rule(auth.company().0, &rule)
        .await?;
    state.detection.rules_changed(auth.company().0);
    audit::record(
        &state,
        &caller,
        &client,
        "detector.update",
        &what,
        serde_json::to_value(&req).unwrap_or_default(),
    )
    .await?;
    Ok(Json(rule_view(&rule)))
}

/// Addresses blocked for this company now.
#[utoipa::path(get, path = "/api/v1/security/blocks", tag = "security",
    responses((status = 200, body = [AddressBlockView]), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn blocks(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
) -> ApiResult<Json<Vec<AddressBlockView>>> {
    let auth = audit::require_admin(&state, &caller, &client, "block.list", "blocks").await?;
    let list = state
        .store
        .active_blocks(state.clock.now())
        .await?
        .into_iter()
        .filter(|b| b.chain == auth.company().0)
        .map(|b| AddressBlockView {
            address: b.address,
            until: b.until,
            reason: b.reason,
        })
        .collect();
    Ok(Json(list))
}

/// Lift a block on an address.
#[utoipa::path(delete, path = "/api/v1/security/blocks/{address}", tag = "security",
    params(("address" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn unblock(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(address): Path<String>,
) -> ApiResult<StatusCode> {
    let what = format!("block/{}", address.chars().take(64).collect::<String>());
    let auth = audit::require_admin(&state, &caller, &client, "block.delete", &what).await?;
    if !state
        .store
        .unblock_address(auth.company().0, &address)
        .await?
    {
        return Err(ApiError::not_found("block"));
    }
    state.blocks.reload(&state.store, state.clock.now()).await?;
    audit::record(
        &state,
        &caller,
        &client,
        "block.delete",
        &what,
        serde_json::json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Unlock an account locked by a detector.
#[utoipa::path(post, path = "/api/v1/users/{user_id}/unlock", tag = "users",
    params(("user_id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn unlock(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
) -> ApiResult<StatusCode> {
    let what = format!("user/{}", user_id.chars().take(64).collect::<String>());
    let auth = audit::require_admin(&state, &caller, &client, "user.unlock", &what).await?;
    let user = crate::admin::target_user(&state, &auth, &user_id).await?;
    if !state.store.unlock_account(auth.company(), user.key).await? {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the account is not locked",
        ));
    }
    audit::record(
        &state,
        &caller,
        &client,
        "user.unlock",
        &what,
        serde_json::json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
