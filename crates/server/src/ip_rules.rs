//! IP rules set by the company: checked before the password at sign-in
//! and again on every authenticated request (see `auth`), and managed here.

use std::net::IpAddr;

use axum::extract::{Path, State};
use axum::Json;
use strongroom_core::ip_policy::{decide, parse_network, IpDecision, IpRule, RuleKind};
use strongroom_core::{ident, CompanyId, UserKey};
use strongroom_proto::{ErrorBody, ErrorCode, IpRuleView, SetIpRules};

use crate::audit;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ClientInfo};
use crate::state::AppState;

const MAX_RULES: usize = 500;

/// The decisions for an address: by the company's lists alone, and by the
/// company's and the user's together (one query for both).
pub async fn decisions(
    state: &AppState,
    company: CompanyId,
    user: Option<UserKey>,
    ip: IpAddr,
    epoch: Option<i64>,
) -> ApiResult<(IpDecision, IpDecision)> {
    let (company_rules, user_rules) = state
        .policy
        .ip_rules
        .get_or_load(
            (company.0, user.map(|u| u.0)),
            epoch,
            state.store.ip_rules_for(company, user),
        )
        .await?;
    Ok((
        decide(ip, &company_rules, &[]),
        decide(ip, &company_rules, &user_rules),
    ))
}

/// The decision for an address, for a company and (if known) a user.
pub async fn check(
    state: &AppState,
    company: CompanyId,
    user: Option<UserKey>,
    ip: IpAddr,
    epoch: Option<i64>,
) -> ApiResult<IpDecision> {
    Ok(decisions(state, company, user, ip, epoch).await?.1)
}

fn views(rules: &[IpRule]) -> Vec<IpRuleView> {
    rules
        .iter()
        .map(|r| IpRuleView {
            kind: r.kind.as_str().into(),
            network: r.network.to_string(),
            label: r.label.clone(),
        })
        .collect()
}

fn parse(req: &SetIpRules) -> ApiResult<Vec<IpRule>> {
    if req.rules.len() > MAX_RULES {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            format!("at most {MAX_RULES} rules per list"),
        ));
    }
    req.rules
        .iter()
        .map(|r| {
            let kind = RuleKind::parse(&r.kind).ok_or_else(|| {
                ApiError::new(ErrorCode::ValidationFailed, "kind must be allow or block")
            })?;
            let network = parse_network(&r.network).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::ValidationFailed,
                    format!(
                        "'{}' is not an IP address or CIDR range such as 10.0.0.0/8 or 2001:db8::/32",
                        r.network.chars().take(60).collect::<String>()
                    ),
                )
            })?;
            let label = if r.label.trim().is_empty() {
                String::new()
            } else {
                ident::display_text("label", &r.label, 100)?
            };
            Ok(IpRule { kind, network, label })
        })
        .collect()
}

fn lockout(ip: IpAddr) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!("these rules would shut you out (your address is {ip}); add it, or send \"force\": true"),
    )
}

/// The company's IP allow and block lists.
#[utoipa::path(get, path = "/api/v1/security/ip-rules", tag = "security",
    responses((status = 200, body = [IpRuleView]), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn company_rules(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
) -> ApiResult<Json<Vec<IpRuleView>>> {
    let auth = audit::require_admin(&state, &caller, &client, "ip_rules.read", "ip_rules").await?;
    Ok(Json(views(
        &state.store.ip_rules(auth.company(), None).await?,
    )))
}

/// Replace the company's IP lists (checked at sign-in and on every request).
#[utoipa::path(put, path = "/api/v1/security/ip-rules", tag = "security",
    request_body = SetIpRules,
    responses((status = 200, body = [IpRuleView]), (status = 400, body = ErrorBody),
        (status = 409, description = "Would shut out the caller", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_company_rules(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    ApiJson(req): ApiJson<SetIpRules>,
) -> ApiResult<Json<Vec<IpRuleView>>> {
    let auth =
        audit::require_admin(&state, &caller, &client, "ip_rules.update", "ip_rules").await?;
    let rules = parse(&req)?;
    let mine = state
        .store
        .ip_rules(auth.company(), Some(caller.principal.user))
        .await?;
    if !req.force && decide(client.ip, &rules, &mine) != IpDecision::Allowed {
        return Err(lockout(client.ip));
    }
    state
        .store
        .set_ip_rules(auth.company(), None, &rules, state.clock.now())
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "ip_rules.update",
        "ip_rules",
        serde_json::json!({ "rules": views(&rules), "force": req.force }),
    )
    .await?;
    Ok(Json(views(&rules)))
}

/// One user's IP lists.
#[utoipa::path(get, path = "/api/v1/users/{user_id}/ip-rules", tag = "users",
    params(("user_id" = String, Path)),
    responses((status = 200, body = [IpRuleView]), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn user_rules(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Vec<IpRuleView>>> {
    let what = format!(
        "user/{}/ip_rules",
        user_id.chars().take(64).collect::<String>()
    );
    let auth = audit::require_admin(&state, &caller, &client, "ip_rules.read", &what).await?;
    let user = crate::admin::target_user(&state, &auth, &user_id).await?;
    Ok(Json(views(
        &state.store.ip_rules(auth.company(), Some(user.key)).await?,
    )))
}

/// Replace one user's IP lists. A user allow list replaces the company's
/// allow list for that user; block entries of both always apply.
#[utoipa::path(put, path = "/api/v1/users/{user_id}/ip-rules", tag = "users",
    params(("user_id" = String, Path)),
    request_body = SetIpRules,
    responses((status = 200, body = [IpRuleView]), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_user_rules(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
    ApiJson(req): ApiJson<SetIpRules>,
) -> ApiResult<Json<Vec<IpRuleView>>> {
    let what = format!(
        "user/{}/ip_rules",
        user_id.chars().take(64).collect::<String>()
    );
    let auth = audit::require_admin(&state, &caller, &client, "ip_rules.update", &what).await?;
    let user = crate::admin::target_user(&state, &auth, &user_id).await?;
    let rules = parse(&req)?;
    if user.key == caller.principal.user && !req.force {
        let company = state.store.ip_rules(auth.company(), None).await?;
        if decide(client.ip, &company, &rules) != IpDecision::Allowed {
            return Err(lockout(client.ip));
        }
    }
    state
        .store
        .set_ip_rules(auth.company(), Some(user.key), &rules, state.clock.now())
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "ip_rules.update",
        &what,
        serde_json::json!({ "rules": views(&rules), "force": req.force }),
    )
    .await?;
    Ok(Json(views(&rules)))
}
