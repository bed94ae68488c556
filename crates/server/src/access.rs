//! Access control around the one decision point (`strongroom_core::policy`):
//! building a caller's profile from the store, the administrative-power
//! check, and the endpoints for roles, security levels, department roles,
//! the security pledge, training, and record classification.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Duration, NaiveTime, Utc};
use strongroom_core::access::{power_for, AdminAuthority};
use strongroom_core::audit::{AuditEvent, Outcome};
use strongroom_core::policy::{built_in_roles, Action, Denial, Grant, Power, Profile, Scope};
use strongroom_core::{ident, CompanyId, UserKey};
use strongroom_proto::{
    AcceptPledge, Classification, DepartmentRoles, EffectiveAccess, ErrorBody, ErrorCode,
    GrantView, PledgeView, PublishPledge, PutRole, RoleView, SetClassification, TrainingDue,
    TrainingPolicyView, TrainingRecord, UserAccess,
};
use strongroom_store::{AccessFacts, RoleRow, Store};

use crate::audit;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ClientInfo};
use crate::state::AppState;

// ----- grants as stored ------------------------------------------------------

pub fn grant_view(g: &Grant) -> GrantView {
    GrantView {
        record_type: g.record_type.clone(),
        actions: g.actions.iter().map(|a| a.as_str().to_owned()).collect(),
        scope: g.scope.as_str().into(),
    }
}

/// Checks and converts grants from a request; the message says what is
/// wrong.
pub fn grants_from_views(views: &[GrantView]) -> Result<Vec<Grant>, String> {
    if views.len() > 100 {
        return Err("a role has at most 100 grants".into());
    }
    views
        .iter()
        .map(|v| {
            let record_type = if v.record_type == "*" {
                "*".to_owned()
            } else {
                ident::key("record type", &v.record_type)
                    .map_err(|e| format!("grant record_type: {e}"))?
            };
            let actions = v
                .actions
                .iter()
                .map(|a| {
                    Action::parse(a).ok_or_else(|| {
                        format!(
                            "unknown action '{a}': use view, create, edit, delete, export or reveal"
                        )
                    })
                })
                .collect::<Result<BTreeSet<_>, _>>()?;
            if actions.is_empty() {
                return Err("a grant needs at least one action".into());
            }
            let scope = Scope::parse(&v.scope).ok_or_else(|| {
                format!(
                    "unknown scope '{}': use own, department or company",
                    v.scope
                )
            })?;
            Ok(Grant {
                record_type,
                actions,
                scope,
            })
        })
        .collect()
}

fn grants_json(grants: &[Grant]) -> String {
    serde_json::to_string(&grants.iter().map(grant_view).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".into())
}

fn stored_grants(r: &RoleRow) -> Vec<Grant> {
    let views: Vec<GrantView> = serde_json::from_str(&r.grants_json).unwrap_or_default();
    // Stored grants were checked when saved; one that no longer parses
    // grants nothing (deny by default).
    views
        .iter()
        .filter_map(|v| grants_from_views(std::slice::from_ref(v)).ok())
        .flatten()
        .collect()
}

fn stored_powers(r: &RoleRow) -> impl Iterator<Item = Power> + '_ {
    r.powers.iter().filter_map(|p| Power::parse(p))
}

fn role_view(r: &RoleRow) -> RoleView {
    RoleView {
        name: r.name.clone(),
        description: r.description.clone(),
        grants: stored_grants(r).iter().map(grant_view).collect(),
        powers: r.powers.clone(),
        built_in: r.built_in,
    }
}

/// Brings every company's built-in roles in line with this binary.
pub async fn ensure_built_in_roles(store: &Store, now: DateTime<Utc>) -> ApiResult<usize> {
    let mut changed = 0;
    for c in store.list_companies().await? {
        let Some((company, _)) = store.company_by_code(&c.code).await? else {
            continue;
        };
        for r in built_in_roles() {
            let powers: Vec<String> = r.powers.iter().map(|p| p.as_str().to_owned()).collect();
            if store
                .sync_built_in_role(
                    company,
                    r.name,
                    r.description,
                    &grants_json(&r.grants),
                    &powers,
                    now,
                )
                .await?
            {
                changed += 1;
            }
        }
    }
    Ok(changed)
}

// ----- the caller's profile -------------------------------------------------------

fn training_ok(f: &AccessFacts, now: DateTime<Utc>) -> bool {
    !f.training_required
        || f.training_completed_at
            .is_some_and(|t| now - t < Duration::days(f.training_interval_days))
}

pub fn profile_from(user: UserKey, f: &AccessFacts, now: DateTime<Utc>) -> Profile {
    let mut grants = Vec::new();
    let mut powers = BTreeSet::new();
    for r in f.own_roles.iter().chain(&f.department_roles) {
        grants.extend(stored_grants(r));
        powers.extend(stored_powers(r));
    }
    if f.is_admin || f.is_master {
        // The administrator flag holds every administrative power (not
        // record access: that comes with roles).
        powers.extend(Power::ALL);
    }
    Profile {
        user,
        department: f.department,
        is_master: f.is_master,
        clearance: Classification::parse(&f.clearance).unwrap_or(Classification::Public),
        pledge_ok: f.pledge_accepted,
        training_ok: training_ok(f, now),
        grants,
        powers,
    }
}

/// The caller's access profile, read from the store for this request (so a
/// change of role, level or department applies at once, on every node).
pub async fn profile(state: &AppState, caller: &Caller) -> ApiResult<Profile> {
    let p = &caller.principal;
    let facts = state
        .policy
        .access
        .get_or_load(
            (p.company.0, p.user.0),
            caller.epoch,
            state.store.access_facts(p.company, p.user),
        )
        .await?
        .ok_or_else(|| ApiError::unauthenticated("the session has ended; sign in again"))?;
    Ok(profile_from(p.user, &facts, state.clock.now()))
}

/// Administrative authority for an action, or a recorded denial. The power
/// it needs comes from [`power_for`].
pub async fn require(
    state: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    action: &str,
    target: &str,
) -> ApiResult<AdminAuthority> {
    Ok(require_profiled(state, caller, client, action, target)
        .await?
        .0)
}

/// [`require`], also handing back the caller's profile it read, for
/// handlers that check more against it (one read per request).
pub async fn require_profiled(
    state: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    action: &str,
    target: &str,
) -> ApiResult<(AdminAuthority, Profile)> {
    let profile = profile(state, caller).await?;
    match caller.principal.authority(&profile, power_for(action)) {
        Ok(a) => Ok((a, profile)),
        Err(e) => Err(audit::refused(state, caller, client, action, target, e.into()).await),
    }
}

/// Records a policy denial with its reason code and returns the error.
pub async fn denied(
    state: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    action: &str,
    target: &str,
    why: Denial,
) -> ApiError {
    let mut e = audit::event(state, caller, client, action, target, serde_json::json!({}));
    e.outcome = Outcome::Denied;
    e.reason = Some(why.code().into());
    let err = ApiError::new(ErrorCode::Forbidden, why.message());
    match state.audit.write(vec![e]).await {
        Ok(()) => err,
        Err(audit_err) => audit_err,
    }
}

// ----- roles ------------------------------------------------------------------------

/// The company's roles.
#[utoipa::path(get, path = "/api/v1/roles", tag = "access",
    responses((status = 200, body = [RoleView]), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_roles(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
) -> ApiResult<Json<Vec<RoleView>>> {
    let auth = require(&state, &caller, &client, "role.list", "roles").await?;
    Ok(Json(
        state
            .store
            .roles(auth.company())
            .await?
            .iter()
            .map(role_view)
            .collect(),
    ))
}

/// Create or change a role (security administrators). Nobody can put into
/// a role a power they do not hold.
#[utoipa::path(put, path = "/api/v1/roles/{name}", tag = "access",
    params(("name" = String, Path)), request_body = PutRole,
    responses((status = 200, body = RoleView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_role(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<PutRole>,
) -> ApiResult<Json<RoleView>> {
    let what = format!("role/{}", name.chars().take(64).collect::<String>());
    let (auth, mine) = require_profiled(&state, &caller, &client, "role.update", &what).await?;
    let name = ident::key("role name", &name)?;
    let description = ident::display_text("role description", &req.description, 500)
        .or_else(|e| req.description.is_empty().then(String::new).ok_or(e))?;
    let grants = grants_from_views(&req.grants)
        .map_err(|m| ApiError::new(ErrorCode::ValidationFailed, m))?;
    let powers = req
        .powers
        .iter()
        .map(|p| {
            Power::parse(p).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::ValidationFailed,
                    format!("unknown power '{p}': use users, security, audit or keys"),
                )
            })
        })
        .collect::<ApiResult<BTreeSet<_>>>()?;
    if let Some(p) = powers.iter().find(|p| mine.has_power(**p).is_err()) {
        return Err(audit::refused(
            &state,
            &caller,
            &client,
            "role.update",
            &what,
            ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "you cannot put the '{}' power, which you do not hold, into a role",
                    p.as_str()
                ),
            ),
        )
        .await);
    }
    let power_words: Vec<String> = powers.iter().map(|p| p.as_str().to_owned()).collect();
    state
        .store
        .put_role(
            auth.company(),
            &name,
            &description,
            &grants_json(&grants),
            &power_words,
            state.clock.now(),
        )
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "role.update",
        &what,
        serde_json::json!({ "grants": grants.iter().map(grant_view).collect::<Vec<_>>(),
            "powers": power_words }),
    )
    .await?;
    let role = state
        .store
        .roles(auth.company())
        .await?
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| ApiError::internal("role vanished"))?;
    Ok(Json(role_view(&role)))
}

/// Delete a role of the company's own (its holders lose it at once).
#[utoipa::path(delete, path = "/api/v1/roles/{name}", tag = "access",
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_role(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let what = format!("role/{}", name.chars().take(64).collect::<String>());
    let auth = require(&state, &caller, &client, "role.delete", &what).await?;
    if !state.store.delete_role(auth.company(), &name).await? {
        return Err(ApiError::not_found("role"));
    }
    audit::record(
        &state,
        &caller,
        &client,
        "role.delete",
        &what,
        serde_json::json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Role ids for names, or a clear error naming the unknown one.
pub async fn role_ids(
    state: &AppState,
    company: CompanyId,
    names: &[String],
) -> ApiResult<(Vec<i64>, Vec<RoleRow>)> {
    let all = state.store.roles(company).await?;
    let mut ids = Vec::new();
    let mut rows = Vec::new();
    for n in names {
        let r = all.iter().find(|r| &r.name == n).ok_or_else(|| {
            ApiError::new(
                ErrorCode::ValidationFailed,
                format!("there is no role '{n}'; GET /api/v1/roles lists them"),
            )
        })?;
        if !ids.contains(&r.id) {
            ids.push(r.id);
            rows.push(r.clone());
        }
    }
    Ok((ids, rows))
}

/// Nobody hands out more than they hold: powers they lack, or record
/// access above their own level.
pub fn check_grantable(mine: &Profile, roles: &[RoleRow]) -> Result<(), String> {
    for r in roles {
        if let Some(p) = stored_powers(r).find(|p| mine.has_power(*p).is_err()) {
            return Err(format!(
                "role '{}' carries the '{}' power, which you do not hold",
                r.name,
                p.as_str()
            ));
        }
    }
    Ok(())
}

/// A user administrator may act on another account (reset its password or
/// second factor, make it an API key, change its settings) only when that
/// cannot lend them more than they hold: never the master account (unless
/// they are it), never a user of a higher level, never an administrator
/// unless they are one. Refusals are recorded.
pub async fn check_target(
    state: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    mine: &Profile,
    action: &str,
    what: &str,
    target: &strongroom_store::StoredUser,
) -> ApiResult<()> {
    let p = &caller.principal;
    let refusal = if mine.is_master {
        None
    } else if target.view.is_master {
        Some("only the master account may do this to the master account")
    } else if target.view.clearance > mine.clearance {
        Some("this user has a higher security level than yours")
    } else if target.view.is_admin && !p.is_admin {
        Some("only an administrator may do this to an administrator")
    } else {
        None
    };
    match refusal {
        None => Ok(()),
        Some(m) => Err(audit::refused(
            state,
            caller,
            client,
            action,
            what,
            ApiError::new(ErrorCode::Forbidden, m),
        )
        .await),
    }
}

/// Set a user's security level and personal roles (user administrators).
/// Nobody changes their own, raises anyone above their own level, touches
/// the master account (unless they are it) or a user of a higher level.
#[utoipa::path(put, path = "/api/v1/users/{user_id}/access", tag = "access",
    params(("user_id" = String, Path)), request_body = UserAccess,
    responses((status = 200, body = UserAccess), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_user_access(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
    ApiJson(req): ApiJson<UserAccess>,
) -> ApiResult<Json<UserAccess>> {
    let what = format!("user/{}", user_id.chars().take(64).collect::<String>());
    let (auth, mine) = require_profiled(&state, &caller, &client, "user.access", &what).await?;
    let target = crate::admin::target_user(&state, &auth, &user_id).await?;
    let (ids, rows) = role_ids(&state, auth.company(), &req.roles).await?;
    let refusal = if target.key == caller.principal.user {
        Some(
            "nobody changes their own security level or roles; ask another administrator"
                .to_owned(),
        )
    } else if target.view.is_master && !caller.principal.is_master {
        Some("only the master account changes the master account".to_owned())
    } else if !mine.is_master && target.view.clearance > mine.clearance {
        Some("this user has a higher security level than yours".to_owned())
    } else if !mine.is_master && req.clearance > mine.clearance {
        Some("you cannot give a security level above your own".to_owned())
    } else {
        check_grantable(&mine, &rows).err()
    };
    if let Some(m) = refusal {
        return Err(audit::refused(
            &state,
            &caller,
            &client,
            "user.access",
            &what,
            ApiError::new(ErrorCode::Forbidden, m),
        )
        .await);
    }
    let before = state
        .store
        .access_facts(auth.company(), target.key)
        .await?
        .map(|f| {
            f.own_roles
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    state
        .store
        .set_user_access(auth.company(), target.key, req.clearance.as_str(), &ids)
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "user.access",
        &what,
        serde_json::json!({ "clearance": req.clearance.as_str(), "roles": req.roles,
            "roles_before": before, "clearance_before": target.view.clearance.as_str() }),
    )
    .await?;
    Ok(Json(req))
}

/// A user's security level and personal roles (user administrators).
#[utoipa::path(get, path = "/api/v1/users/{user_id}/access", tag = "access",
    params(("user_id" = String, Path)),
    responses((status = 200, body = UserAccess), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn user_access(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
) -> ApiResult<Json<UserAccess>> {
    let what = format!("user/{}", user_id.chars().take(64).collect::<String>());
    let auth = require(&state, &caller, &client, "user.read", &what).await?;
    let target = crate::admin::target_user(&state, &auth, &user_id).await?;
    let facts = state
        .store
        .access_facts(auth.company(), target.key)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(Json(UserAccess {
        clearance: target.view.clearance,
        roles: facts.own_roles.iter().map(|r| r.name.clone()).collect(),
    }))
}

/// Set the roles a department gives its members (user administrators).
#[utoipa::path(put, path = "/api/v1/departments/{code}/roles", tag = "access",
    params(("code" = String, Path)), request_body = DepartmentRoles,
    responses((status = 200, body = DepartmentRoles), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_department_roles(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(code): Path<String>,
    ApiJson(req): ApiJson<DepartmentRoles>,
) -> ApiResult<Json<DepartmentRoles>> {
    let what = format!("department/{}", code.chars().take(64).collect::<String>());
    let (auth, mine) =
        require_profiled(&state, &caller, &client, "department.roles", &what).await?;
    let dept = crate::admin::department_id(&state, auth.company(), &code).await?;
    let (ids, rows) = role_ids(&state, auth.company(), &req.roles).await?;
    if let Err(m) = check_grantable(&mine, &rows) {
        return Err(audit::refused(
            &state,
            &caller,
            &client,
            "department.roles",
            &what,
            ApiError::new(ErrorCode::Forbidden, m),
        )
        .await);
    }
    state
        .store
        .set_department_roles(auth.company(), dept, &ids)
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "department.roles",
        &what,
        serde_json::json!({ "roles": req.roles }),
    )
    .await?;
    Ok(Json(req))
}

/// What the caller may do now: level, roles, grants, powers, pledge and
/// training state.
#[utoipa::path(get, path = "/api/v1/auth/access", tag = "access",
    responses((status = 200, body = EffectiveAccess)), security(("bearer" = [])))]
pub async fn my_access(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<EffectiveAccess>> {
    let p = &caller.principal;
    let f = state
        .store
        .access_facts(p.company, p.user)
        .await?
        .ok_or_else(|| ApiError::unauthenticated("the session has ended; sign in again"))?;
    let prof = profile_from(p.user, &f, state.clock.now());
    Ok(Json(EffectiveAccess {
        clearance: prof.clearance,
        effective_clearance: prof.effective_clearance(),
        own_roles: f.own_roles.iter().map(|r| r.name.clone()).collect(),
        department_roles: f.department_roles.iter().map(|r| r.name.clone()).collect(),
        grants: prof.grants.iter().map(grant_view).collect(),
        powers: prof.powers.iter().map(|p| p.as_str().to_owned()).collect(),
        pledge_version: f.pledge_version,
        pledge_accepted: f.pledge_accepted,
        training_completed_at: f.training_completed_at,
        training_due: !prof.training_ok,
    }))
}

/// What a department's members lose when someone leaves it: for the audit
/// event of a department change.
pub async fn department_role_names(
    state: &AppState,
    company: CompanyId,
    department: Option<i64>,
) -> ApiResult<Vec<String>> {
    Ok(match department {
        Some(d) => state
            .store
            .department_roles(company, d)
            .await?
            .into_iter()
            .map(|r| r.name)
            .collect(),
        None => Vec::new(),
    })
}

// ----- pledge -------------------------------------------------------------------------

/// The company's current security pledge, and whether the caller accepted
/// it (404 when none is published).
#[utoipa::path(get, path = "/api/v1/pledge", tag = "access",
    responses((status = 200, body = PledgeView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_pledge(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<PledgeView>> {
    let p = &caller.principal;
    let pledge = state
        .store
        .current_pledge(p.company)
        .await?
        .ok_or_else(|| ApiError::not_found("security pledge"))?;
    let facts = state.store.access_facts(p.company, p.user).await?;
    Ok(Json(PledgeView {
        accepted: facts.is_some_and(|f| f.pledge_accepted),
        version: pledge.version,
        text: pledge.text,
        published_at: pledge.published_at,
        published_by: pledge.published_by,
    }))
}

/// Publish a new version of the pledge (security administrators): everyone
/// must accept it before they reach records again.
#[utoipa::path(post, path = "/api/v1/pledge", tag = "access",
    request_body = PublishPledge,
    responses((status = 201, body = PledgeView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn publish_pledge(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    ApiJson(req): ApiJson<PublishPledge>,
) -> ApiResult<(StatusCode, Json<PledgeView>)> {
    let auth = require(&state, &caller, &client, "pledge.publish", "pledge").await?;
    let text = req.text.trim();
    if text.is_empty() || text.chars().count() > 20_000 {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            "text is 1 to 20000 characters",
        ));
    }
    let now = state.clock.now();
    let version = state
        .store
        .publish_pledge(auth.company(), text, &caller.principal.user_id, now)
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "pledge.publish",
        "pledge",
        serde_json::json!({ "version": version }),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(PledgeView {
            version,
            text: text.to_owned(),
            published_at: now,
            published_by: caller.principal.user_id.clone(),
            accepted: false,
        }),
    ))
}

/// Accept the current pledge (time-stamped and audited).
#[utoipa::path(post, path = "/api/v1/pledge/accept", tag = "access",
    request_body = AcceptPledge,
    responses((status = 204), (status = 409, description = "Not the current version", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn accept_pledge(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    ApiJson(req): ApiJson<AcceptPledge>,
) -> ApiResult<StatusCode> {
    let p = &caller.principal;
    let current = state.store.current_pledge(p.company).await?;
    if current.as_ref().map(|c| c.version) != Some(req.version) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "that is not the current pledge version; read it again with GET /api/v1/pledge",
        ));
    }
    state
        .store
        .accept_pledge(p.company, p.user, req.version, state.clock.now())
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "pledge.accept",
        "pledge",
        serde_json::json!({ "version": req.version }),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- training ---------------------------------------------------------------------------

/// Whether lapsed training limits access, and how long training lasts.
#[utoipa::path(get, path = "/api/v1/security/training-policy", tag = "access",
    responses((status = 200, body = TrainingPolicyView), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn training_policy(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
) -> ApiResult<Json<TrainingPolicyView>> {
    let auth = require(
        &state,
        &caller,
        &client,
        "training_policy.read",
        "training_policy",
    )
    .await?;
    let (required, days) = state.store.training_policy(auth.company()).await?;
    Ok(Json(TrainingPolicyView {
        required,
        interval_days: u32::try_from(days).unwrap_or(365),
    }))
}

/// Set the training rule (security administrators). When required, a user
/// whose training is older than the interval (or missing) sees nothing
/// above internal until it is renewed.
#[utoipa::path(put, path = "/api/v1/security/training-policy", tag = "access",
    request_body = TrainingPolicyView,
    responses((status = 200, body = TrainingPolicyView), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_training_policy(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    ApiJson(req): ApiJson<TrainingPolicyView>,
) -> ApiResult<Json<TrainingPolicyView>> {
    let auth = require(
        &state,
        &caller,
        &client,
        "training_policy.update",
        "training_policy",
    )
    .await?;
    if !(1..=3650).contains(&req.interval_days) {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            "interval_days is 1 to 3650",
        ));
    }
    state
        .store
        .set_training_policy(auth.company(), req.required, i64::from(req.interval_days))
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "training_policy.update",
        "training_policy",
        serde_json::to_value(&req).unwrap_or_default(),
    )
    .await?;
    Ok(Json(req))
}

/// Record that a user completed security training (user administrators).
#[utoipa::path(put, path = "/api/v1/users/{user_id}/training", tag = "access",
    params(("user_id" = String, Path)), request_body = TrainingRecord,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_training(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
    ApiJson(req): ApiJson<TrainingRecord>,
) -> ApiResult<StatusCode> {
    let what = format!("user/{}", user_id.chars().take(64).collect::<String>());
    let auth = require(&state, &caller, &client, "training.record", &what).await?;
    let target = crate::admin::target_user(&state, &auth, &user_id).await?;
    let at = req.completed_on.and_time(NaiveTime::MIN).and_utc();
    if at > state.clock.now() {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            "completed_on cannot be in the future",
        ));
    }
    state
        .store
        .set_training_completed(auth.company(), target.key, at)
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "training.record",
        &what,
        serde_json::json!({ "completed_on": req.completed_on }),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Users whose training is due (user administrators).
#[utoipa::path(get, path = "/api/v1/security/training-due", tag = "access",
    responses((status = 200, body = [TrainingDue]), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn training_due(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
) -> ApiResult<Json<Vec<TrainingDue>>> {
    let auth = require(&state, &caller, &client, "training.list", "training").await?;
    let (_, days) = state.store.training_policy(auth.company()).await?;
    let cutoff = state.clock.now() - Duration::days(days);
    Ok(Json(
        state
            .store
            .training_due(auth.company(), cutoff)
            .await?
            .into_iter()
            .map(|(user_id, completed_at)| TrainingDue {
                user_id,
                completed_at,
            })
            .collect(),
    ))
}

// ----- classification ------------------------------------------------------------------------

/// Change the classification of a record type or of its fields (security
/// administrators). Applies to every read from now on.
#[utoipa::path(put, path = "/api/v1/record-types/{type}/classification", tag = "record types",
    params(("type" = String, Path)), request_body = SetClassification,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_classification(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(type_key): Path<String>,
    ApiJson(req): ApiJson<SetClassification>,
) -> ApiResult<StatusCode> {
    let what = format!(
        "record_type/{}",
        type_key.chars().take(64).collect::<String>()
    );
    let auth = require(&state, &caller, &client, "record_type.classify", &what).await?;
    let key =
        ident::key("record type", &type_key).map_err(|_| ApiError::not_found("record type"))?;
    let rt = state
        .store
        .record_type(auth.company(), &key)
        .await?
        .ok_or_else(|| ApiError::not_found("record type"))?;
    for (f, level) in &req.fields {
        let Some(def) = rt.view.fields.iter().find(|d| &d.key == f) else {
            return Err(ApiError::new(
                ErrorCode::ValidationFailed,
                format!("record type {key} has no field '{f}'"),
            ));
        };
        // Restricted fields are encrypted; moving a field across that line
        // would leave its stored values in the wrong form.
        let after = strongroom_proto::FieldDef {
            classification: *level,
            ..def.clone()
        };
        if strongroom_core::pii::is_protected(def) != strongroom_core::pii::is_protected(&after) {
            return Err(ApiError::new(
                ErrorCode::ValidationFailed,
                format!(
                    "field '{f}': moving a field into or out of 'restricted' changes whether it is encrypted; add a new field with the level you need instead"
                ),
            ));
        }
    }
    state
        .store
        .set_classification(auth.company(), &rt, req.classification, &req.fields)
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "record_type.classify",
        &what,
        serde_json::to_value(&req).unwrap_or_default(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The audit event of a department change: what the move took away.
pub fn mover_event(
    base: AuditEvent,
    old_department: Option<String>,
    removed_roles: Vec<String>,
) -> AuditEvent {
    AuditEvent {
        action: "user.department_change".into(),
        detail: serde_json::json!({
            "from": old_department,
            "removed_roles": removed_roles,
            "sessions": "ended",
        })
        .to_string(),
        ..base
    }
}
