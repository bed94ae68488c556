//! Password rules set by the company, applied wherever a password is set;
//! changing your own password.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use strongroom_core::password::{check, Owner, PasswordRules};
use strongroom_core::{CompanyId, UserKey};
use strongroom_proto::{ChangePassword, ErrorBody, ErrorCode, PasswordRulesView};
use zeroize::Zeroizing;

use crate::audit;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ClientInfo};
use crate::state::AppState;

/// Checks a new password against the company's rules and, when the rules
/// say so, against the user's recent passwords.
pub async fn check_new(
    state: &AppState,
    company: CompanyId,
    user: Option<UserKey>,
    owner: Owner<'_>,
    password: &str,
) -> ApiResult<()> {
    let rules = state.store.password_rules(company).await?;
    check(password, &rules, owner)?;
    if let (Some(u), true) = (user, rules.history > 0) {
        for old in state
            .store
            .recent_password_hashes(company, u, i64::from(rules.history))
            .await?
        {
            if state
                .hashing
                .verify(Zeroizing::new(password.to_owned()), Some(old))
                .await?
            {
                return Err(ApiError::new(
                    ErrorCode::ValidationFailed,
                    format!(
                        "that password was used recently; the company rules forbid reusing the last {}",
                        rules.history
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Change your own password (the current one is required). Ends all your
/// sessions, this one included: sign in again with the new password.
#[utoipa::path(post, path = "/api/v1/auth/password", tag = "auth",
    request_body = ChangePassword,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn change_own(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    ApiJson(req): ApiJson<ChangePassword>,
) -> ApiResult<StatusCode> {
    let p = &caller.principal;
    let current = state
        .store
        .recent_password_hashes(p.company, p.user, 0)
        .await?
        .into_iter()
        .next();
    let ok = state
        .hashing
        .verify(Zeroizing::new(req.current_password.clone()), current)
        .await?;
    if !ok {
        return Err(audit::refused(
            &state,
            &caller,
            &client,
            "user.change_password",
            &format!("user/{}", p.user_id),
            ApiError::new(ErrorCode::Forbidden, "the current password is not right"),
        )
        .await);
    }
    let me = state
        .store
        .user_by_key(p.company, p.user)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    let owner = Owner {
        user_id: &p.user_id,
        display_name: &me.view.display_name,
        company_code: &p.company_code,
    };
    check_new(&state, p.company, Some(p.user), owner, &req.new_password).await?;
    let hash = state.hashing.hash(Zeroizing::new(req.new_password)).await?;
    state
        .store
        .set_password(p.company, p.user, &hash, state.clock.now())
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "user.change_password",
        &format!("user/{}", p.user_id),
        serde_json::json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn view(r: &PasswordRules) -> PasswordRulesView {
    PasswordRulesView {
        min_length: r.min_length as u32,
        min_score: r.min_score,
        require_classes: r.require_classes,
        history: r.history,
    }
}

/// The company's password rules.
#[utoipa::path(get, path = "/api/v1/security/password-rules", tag = "security",
    responses((status = 200, body = PasswordRulesView), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rules(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
) -> ApiResult<Json<PasswordRulesView>> {
    let auth = audit::require_admin(
        &state,
        &caller,
        &client,
        "password_rules.read",
        "password_rules",
    )
    .await?;
    Ok(Json(view(
        &state.store.password_rules(auth.company()).await?,
    )))
}

/// Set the company's password rules (new passwords only; existing ones stay).
#[utoipa::path(put, path = "/api/v1/security/password-rules", tag = "security",
    request_body = PasswordRulesView,
    responses((status = 200, body = PasswordRulesView), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_rules(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    ApiJson(req): ApiJson<PasswordRulesView>,
) -> ApiResult<Json<PasswordRulesView>> {
    let auth = audit::require_admin(
        &state,
        &caller,
        &client,
        "password_rules.update",
        "password_rules",
    )
    .await?;
    let rules = PasswordRules {
        min_length: req.min_length as usize,
        min_score: req.min_score,
        require_classes: req.require_classes,
        history: req.history,
    }
    .checked()?;
    state
        .store
        .set_password_rules(auth.company(), &rules)
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "password_rules.update",
        "password_rules",
        serde_json::to_value(&req).unwrap_or_default(),
    )
    .await?;
    Ok(Json(view(&rules)))
}
