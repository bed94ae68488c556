//! Password rules set by the company, applied wherever a password is set;
//! changing your own password.

use axum::extract::{Path, State};
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

/// The operator's list of passwords nobody may choose (breach corpora),
/// kept as SHA-1 digests so one format serves both plain and hashed lists.
#[derive(Default)]
pub struct DenyList {
    digests: std::collections::HashSet<[u8; 20]>,
}

impl std::fmt::Debug for DenyList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DenyList({} entries)", self.digests.len())
    }
}

/// The most entries a deny list may hold (about 200 MB in memory).
pub const DENY_LIST_MAX_ENTRIES: usize = 10_000_000;

fn sha1(text: &str) -> [u8; 20] {
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes());
    let mut out = [0u8; 20];
    out.copy_from_slice(d.as_ref());
    out
}

impl DenyList {
    /// Reads a list: one password, or one SHA-1 in hex (optionally
    /// followed by `:count`), per line; `#` starts a comment line.
    pub fn load(path: &std::path::Path) -> anyhow::Result<DenyList> {
        use std::io::BufRead;
        let file = std::fs::File::open(path).map_err(|e| {
            anyhow::anyhow!("password_deny_list: cannot read {}: {e}", path.display())
        })?;
        let mut digests = std::collections::HashSet::new();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| {
                anyhow::anyhow!(
                    "password_deny_list: {} line {}: {e} (the file must be UTF-8 text)",
                    path.display(),
                    n + 1
                )
            })?;
            let line = line.trim_end_matches('\r');
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let hex_part = line.split(':').next().unwrap_or(line);
            let digest = match hex::decode(hex_part) {
                Ok(b) if b.len() == 20 && hex_part.len() == 40 => {
                    let mut d = [0u8; 20];
                    d.copy_from_slice(&b);
                    d
                }
                _ => sha1(line),
            };
            digests.insert(digest);
            if digests.len() > DENY_LIST_MAX_ENTRIES {
                anyhow::bail!(
                    "password_deny_list: {} has more than {DENY_LIST_MAX_ENTRIES} entries; keep the most common ones",
                    path.display()
                );
            }
        }
        Ok(DenyList { digests })
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn contains(&self, password: &str) -> bool {
        !self.digests.is_empty()
            && (self.digests.contains(&sha1(password))
                || self.digests.contains(&sha1(&password.to_lowercase())))
    }
}

/// Checks a new password against the rules that apply to the user (their
/// own, else the company's), the deny lists and, when the rules say so,
/// the user's recent passwords.
pub async fn check_new(
    state: &AppState,
    company: CompanyId,
    user: Option<UserKey>,
    owner: Owner<'_>,
    password: &str,
) -> ApiResult<()> {
    let rules = state.store.effective_password_rules(company, user).await?;
    check(password, &rules, owner)?;
    if state.deny_list.contains(password) {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            "that password is on the list of breached passwords; choose another",
        ));
    }
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
    let account = state
        .store
        .login_account_by_key(p.company, p.user)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    // The minimum age stops cycling through the history at once; it never
    // stands in the way of a change that is due.
    let rules = state
        .store
        .effective_password_rules(p.company, Some(p.user))
        .await?;
    let now = state.clock.now();
    let due = account.must_change_password
        || rules.age(account.password_changed_at, now)
            == strongroom_core::password::PasswordAge::Expired;
    if let (false, Some(at)) = (due, rules.may_change_at(account.password_changed_at, now)) {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            format!(
                "the password was changed too recently; the rules allow the next change from {}",
                at.format("%Y-%m-%d %H:%M UTC")
            ),
        ));
    }
    let owner = Owner {
        user_id: &p.user_id,
        display_name: &me.view.display_name,
        company_code: &p.company_code,
    };
    check_new(&state, p.company, Some(p.user), owner, &req.new_password).await?;
    let hash = state.hashing.hash(Zeroizing::new(req.new_password)).await?;
    state
        .store
        .set_password(p.company, p.user, &hash, false, state.clock.now())
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

fn from_view(v: &PasswordRulesView) -> ApiResult<PasswordRules> {
    Ok(PasswordRules {
        min_length: v.min_length as usize,
        min_score: v.min_score,
        require_classes: v.require_classes,
        history: v.history,
        max_age_days: v.max_age_days,
        warn_days: v.warn_days,
        min_age_days: v.min_age_days,
    }
    .checked()?)
}

fn view(r: &PasswordRules) -> PasswordRulesView {
    PasswordRulesView {
        min_length: r.min_length as u32,
        min_score: r.min_score,
        require_classes: r.require_classes,
        history: r.history,
        max_age_days: r.max_age_days,
        warn_days: r.warn_days,
        min_age_days: r.min_age_days,
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
    let rules = from_view(&req)?;
    state
        .store
        .set_password_rules(auth.company(), None, Some(&rules))
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

/// A user's own password rules (administrators): 404 when the user follows
/// the company's.
#[utoipa::path(get, path = "/api/v1/users/{user_id}/password-rules", tag = "users",
    params(("user_id" = String, Path)),
    responses((status = 200, body = PasswordRulesView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn user_rules(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
) -> ApiResult<Json<PasswordRulesView>> {
    let what = format!(
        "user/{}/password-rules",
        user_id.chars().take(64).collect::<String>()
    );
    let auth = audit::require_admin(&state, &caller, &client, "password_rules.read", &what).await?;
    let target = crate::admin::target_user(&state, &auth, &user_id).await?;
    let rules = state
        .store
        .user_password_rules(auth.company(), target.key)
        .await?
        .ok_or_else(|| ApiError::not_found("user password rules (the company's apply)"))?;
    Ok(Json(view(&rules)))
}

/// Give a user their own password rules, replacing the company's for them
/// (administrators).
#[utoipa::path(put, path = "/api/v1/users/{user_id}/password-rules", tag = "users",
    params(("user_id" = String, Path)),
    request_body = PasswordRulesView,
    responses((status = 200, body = PasswordRulesView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_user_rules(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
    ApiJson(req): ApiJson<PasswordRulesView>,
) -> ApiResult<Json<PasswordRulesView>> {
    let what = format!(
        "user/{}/password-rules",
        user_id.chars().take(64).collect::<String>()
    );
    let auth =
        audit::require_admin(&state, &caller, &client, "password_rules.update", &what).await?;
    let target = crate::admin::target_user(&state, &auth, &user_id).await?;
    let rules = from_view(&req)?;
    state
        .store
        .set_password_rules(auth.company(), Some(target.key), Some(&rules))
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "password_rules.update",
        &what,
        serde_json::to_value(&req).unwrap_or_default(),
    )
    .await?;
    Ok(Json(view(&rules)))
}

/// Return a user to the company's password rules (administrators).
#[utoipa::path(delete, path = "/api/v1/users/{user_id}/password-rules", tag = "users",
    params(("user_id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn clear_user_rules(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
) -> ApiResult<StatusCode> {
    let what = format!(
        "user/{}/password-rules",
        user_id.chars().take(64).collect::<String>()
    );
    let auth =
        audit::require_admin(&state, &caller, &client, "password_rules.update", &what).await?;
    let target = crate::admin::target_user(&state, &auth, &user_id).await?;
    state
        .store
        .set_password_rules(auth.company(), Some(target.key), None)
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "password_rules.update",
        &what,
        serde_json::json!({ "rules": "company" }),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
