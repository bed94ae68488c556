//! The company's own administration: departments and users.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use strongroom_core::access::{self, AdminAuthority, TargetUser};
use strongroom_core::{ident, password, CompanyId};
use strongroom_proto::{
    CompanyView, CreateDepartment, CreateUser, DepartmentView, ErrorBody, SetPassword,
    UpdateDepartment, UpdateUser, UserView,
};
use strongroom_store::{NewUser, StoredUser, UserChange};
use zeroize::Zeroizing;

use crate::audit;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ClientInfo};
use crate::state::AppState;

/// The caller's company.
#[utoipa::path(get, path = "/api/v1/company", tag = "company",
    responses((status = 200, body = CompanyView), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn company(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<CompanyView>> {
    let (_, view) = state
        .store
        .company_by_code(&caller.principal.company_code)
        .await?
        .ok_or_else(|| ApiError::not_found("company"))?;
    Ok(Json(view))
}

/// Looks up a department code within the company; unknown codes are a
/// validation error that names the code.
pub async fn department_id(state: &AppState, company: CompanyId, code: &str) -> ApiResult<i64> {
    let code = ident::department_code(code)?;
    state
        .store
        .department(company, &code)
        .await?
        .map(|(id, _)| id)
        .ok_or_else(|| {
            ApiError::new(
                strongroom_proto::ErrorCode::ValidationFailed,
                format!(
                    "there is no department {code}; create it first (POST /api/v1/departments)"
                ),
            )
        })
}

// ----- departments -----------------------------------------------------

/// All departments of the company.
#[utoipa::path(get, path = "/api/v1/departments", tag = "departments",
    responses((status = 200, body = [DepartmentView]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_departments(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<DepartmentView>>> {
    Ok(Json(
        state
            .store
            .list_departments(caller.principal.company)
            .await?,
    ))
}

/// Create a department (administrators).
#[utoipa::path(post, path = "/api/v1/departments", tag = "departments",
    request_body = CreateDepartment,
    responses((status = 201, body = DepartmentView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_department(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    ApiJson(req): ApiJson<CreateDepartment>,
) -> ApiResult<(StatusCode, Json<DepartmentView>)> {
    let what = format!("department/{}", req.code.trim().to_ascii_uppercase());
    let auth = audit::require_admin(&state, &caller, &client, "department.create", &what).await?;
    let detail = serde_json::json!({});
    let code = ident::department_code(&req.code)?;
    let name = ident::display_text("department name", &req.name, 200)?;
    let view = state
        .store
        .create_department(auth.company(), &code, &name, state.clock.now())
        .await?;
    audit::record(&state, &caller, &client, "department.create", &what, detail).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Rename a department (administrators).
#[utoipa::path(patch, path = "/api/v1/departments/{code}", tag = "departments",
    params(("code" = String, Path, description = "Department code")),
    request_body = UpdateDepartment,
    responses((status = 200, body = DepartmentView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_department(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(code): Path<String>,
    ApiJson(req): ApiJson<UpdateDepartment>,
) -> ApiResult<Json<DepartmentView>> {
    let what = format!("department/{code}");
    let auth = audit::require_admin(&state, &caller, &client, "department.update", &what).await?;
    let detail = serde_json::json!({ "fields": ["name"] });
    let code = ident::department_code(&code).map_err(|_| ApiError::not_found("department"))?;
    let name = ident::display_text("department name", &req.name, 200)?;
    if !state
        .store
        .rename_department(auth.company(), &code, &name)
        .await?
    {
        return Err(ApiError::not_found("department"));
    }
    let (_, view) = state
        .store
        .department(auth.company(), &code)
        .await?
        .ok_or_else(|| ApiError::not_found("department"))?;
    audit::record(&state, &caller, &client, "department.update", &what, detail).await?;
    Ok(Json(view))
}

/// Delete an empty department (administrators).
#[utoipa::path(delete, path = "/api/v1/departments/{code}", tag = "departments",
    params(("code" = String, Path, description = "Department code")),
    responses((status = 204), (status = 404, body = ErrorBody),
        (status = 409, description = "Still has users or records", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_department(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(code): Path<String>,
) -> ApiResult<StatusCode> {
    let what = format!("department/{code}");
    let auth = audit::require_admin(&state, &caller, &client, "department.delete", &what).await?;
    let detail = serde_json::json!({});
    let code = ident::department_code(&code).map_err(|_| ApiError::not_found("department"))?;
    if state.store.delete_department(auth.company(), &code).await? {
        audit::record(&state, &caller, &client, "department.delete", &what, detail).await?;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("department"))
    }
}

// ----- users -------------------------------------------------------------

/// All users of the company (administrators).
#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, body = [UserView]), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
) -> ApiResult<Json<Vec<UserView>>> {
    let what = "users".to_string();
    let auth = audit::require_admin(&state, &caller, &client, "user.list", &what).await?;
    let detail = serde_json::json!({});
    audit::record(&state, &caller, &client, "user.list", &what, detail).await?;
    Ok(Json(state.store.list_users(auth.company()).await?))
}

/// Create a user (administrators).
#[utoipa::path(post, path = "/api/v1/users", tag = "users",
    request_body = CreateUser,
    responses((status = 201, body = UserView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    ApiJson(req): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let what = format!("user/{}", req.user_id.trim().to_ascii_lowercase());
    let (auth, mine) =
        crate::access::require_profiled(&state, &caller, &client, "user.create", &what).await?;
    let detail = serde_json::json!({ "is_admin": req.is_admin, "department": req.department,
        "clearance": req.clearance.as_str(), "roles": req.roles });
    let (role_ids, role_rows) = crate::access::role_ids(&state, auth.company(), &req.roles).await?;
    let refusal = if req.is_admin && !mine.is_master && !caller.principal.is_admin {
        Some(
            "only the master account or an administrator holding every power makes administrators"
                .to_owned(),
        )
    } else if !mine.is_master && req.clearance > mine.clearance {
        Some("you cannot give a security level above your own".to_owned())
    } else {
        crate::access::check_grantable(&mine, &role_rows).err()
    };
    if let Some(m) = refusal {
        return Err(audit::refused(
            &state,
            &caller,
            &client,
            "user.create",
            &what,
            ApiError::new(strongroom_proto::ErrorCode::Forbidden, m),
        )
        .await);
    }
    let clearance = req.clearance;
    let new = new_user(&state, auth.company(), req).await?;
    let key = state
        .store
        .create_user(auth.company(), &new.0, new.1, state.clock.now())
        .await?;
    state
        .store
        .set_user_access(auth.company(), key, clearance.as_str(), &role_ids)
        .await?;
    let user = state
        .store
        .user_by_key(auth.company(), key)
        .await?
        .ok_or_else(|| ApiError::internal("new user not found"))?;
    audit::record(&state, &caller, &client, "user.create", &what, detail).await?;
    Ok((StatusCode::CREATED, Json(user.view)))
}

async fn new_user(
    state: &AppState,
    company: CompanyId,
    req: CreateUser,
) -> ApiResult<(NewUser, Option<i64>)> {
    let password = Zeroizing::new(req.password);
    let user_id = ident::user_id(&req.user_id)?;
    let display_name = ident::display_text("display name", &req.display_name, 200)?;
    let email = req
        .email
        .as_deref()
        .map(|e| ident::email("email", e))
        .transpose()?;
    let company_code = state.store.company_code(company).await?.unwrap_or_default();
    crate::passwords::check_new(
        state,
        company,
        None,
        password::Owner {
            user_id: &user_id,
            display_name: &display_name,
            company_code: &company_code,
        },
        &password,
    )
    .await?;
    let department = match &req.department {
        Some(code) => Some(department_id(state, company, code).await?),
        None => None,
    };
    let password_hash = state.hashing.hash(password).await?;
    Ok((
        NewUser {
            user_id,
            display_name,
            email,
            department: req.department,
            password_hash,
            is_admin: req.is_admin,
            is_master: false,
            clearance: req.clearance.as_str().to_owned(),
        },
        department,
    ))
}

/// The user `user_id` of the administrator's company, or 404.
pub(crate) async fn target_user(
    state: &AppState,
    auth: &AdminAuthority,
    user_id: &str,
) -> ApiResult<StoredUser> {
    let id = ident::user_id(user_id).map_err(|_| ApiError::not_found("user"))?;
    state
        .store
        .user(auth.company(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))
}

/// One user (administrators).
#[utoipa::path(get, path = "/api/v1/users/{user_id}", tag = "users",
    params(("user_id" = String, Path)),
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
) -> ApiResult<Json<UserView>> {
    let what = format!("user/{user_id}");
    let auth = audit::require_admin(&state, &caller, &client, "user.read", &what).await?;
    let detail = serde_json::json!({});
    audit::record(&state, &caller, &client, "user.read", &what, detail).await?;
    Ok(Json(target_user(&state, &auth, &user_id).await?.view))
}

/// Change a user (administrators). Disabling a user or moving them to
/// another department ends their sessions at once.
#[utoipa::path(patch, path = "/api/v1/users/{user_id}", tag = "users",
    params(("user_id" = String, Path)),
    request_body = UpdateUser,
    responses((status = 200, body = UserView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_user(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> ApiResult<Json<UserView>> {
    let what = format!("user/{user_id}");
    let (auth, mine) =
        crate::access::require_profiled(&state, &caller, &client, "user.update", &what).await?;
    let detail = serde_json::to_value(&req).unwrap_or_default();
    let target = target_user(&state, &auth, &user_id).await?;
    access::check_user_update(
        &auth,
        TargetUser {
            key: target.key,
            is_master: target.view.is_master,
        },
        &req,
    )?;
    let department_id = match &req.department {
        None => None,
        Some(None) => Some(None),
        Some(Some(code)) => Some(Some(department_id(&state, auth.company(), code).await?)),
    };
    // A department "change" to the same department is no change, and must
    // not end the user's sessions.
    let department_id = department_id.filter(|d| *d != target.department_id);
    let refusal = if req.is_admin.is_some() && !mine.is_master && !caller.principal.is_admin {
        Some("only the master account or an administrator holding every power changes who is an administrator")
    } else if !mine.is_master && target.view.clearance > mine.clearance {
        Some("this user has a higher security level than yours")
    } else {
        None
    };
    if let Some(m) = refusal {
        return Err(audit::refused(
            &state,
            &caller,
            &client,
            "user.update",
            &what,
            ApiError::new(strongroom_proto::ErrorCode::Forbidden, m),
        )
        .await);
    }
    if target.key != caller.principal.user {
        crate::access::check_target(
            &state,
            &caller,
            &client,
            &mine,
            "user.update",
            &what,
            &target,
        )
        .await?;
    }
    // A move takes away at once what came with the old department.
    let removed_roles = match department_id {
        Some(_) => {
            crate::access::department_role_names(&state, auth.company(), target.department_id)
                .await?
        }
        None => Vec::new(),
    };
    let change = UserChange {
        display_name: req
            .display_name
            .as_deref()
            .map(|n| ident::display_text("display name", n, 200))
            .transpose()?,
        email: req
            .email
            .as_ref()
            .map(|e| e.as_deref().map(|e| ident::email("email", e)).transpose())
            .transpose()?,
        department_id,
        status: req.status,
        is_admin: req.is_admin,
    };
    state
        .store
        .update_user(auth.company(), target.key, &change, state.clock.now())
        .await?;
    let user = state
        .store
        .user_by_key(auth.company(), target.key)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    let mut events = vec![audit::event(
        &state,
        &caller,
        &client,
        "user.update",
        &what,
        detail,
    )];
    if department_id.is_some() {
        events.push(crate::access::mover_event(
            audit::event(
                &state,
                &caller,
                &client,
                "user.update",
                &what,
                serde_json::json!({}),
            ),
            target.view.department.clone(),
            removed_roles,
        ));
    }
    state.audit.write(events).await?;
    Ok(Json(user.view))
}

/// Set a user's password (administrators). Ends the user's sessions.
#[utoipa::path(post, path = "/api/v1/users/{user_id}/password", tag = "users",
    params(("user_id" = String, Path)),
    request_body = SetPassword,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_password(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
    ApiJson(req): ApiJson<SetPassword>,
) -> ApiResult<StatusCode> {
    let what = format!("user/{user_id}");
    let (auth, mine) =
        crate::access::require_profiled(&state, &caller, &client, "user.set_password", &what)
            .await?;
    let detail = serde_json::json!({ "must_change": req.must_change });
    let target = target_user(&state, &auth, &user_id).await?;
    crate::access::check_target(
        &state,
        &caller,
        &client,
        &mine,
        "user.set_password",
        &what,
        &target,
    )
    .await?;
    let password = Zeroizing::new(req.password);
    crate::passwords::check_new(
        &state,
        auth.company(),
        Some(target.key),
        password::Owner {
            user_id: &target.view.user_id,
            display_name: &target.view.display_name,
            company_code: &caller.principal.company_code,
        },
        &password,
    )
    .await?;
    let hash = state.hashing.hash(password).await?;
    state
        .store
        .set_password(
            auth.company(),
            target.key,
            &hash,
            req.must_change,
            state.clock.now(),
        )
        .await?;
    audit::record(&state, &caller, &client, "user.set_password", &what, detail).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete a user who has no record history (administrators); others are
/// disabled instead. The master account cannot be deleted.
#[utoipa::path(delete, path = "/api/v1/users/{user_id}", tag = "users",
    params(("user_id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The user has record history; disable instead", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_user(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
) -> ApiResult<StatusCode> {
    let what = format!("user/{user_id}");
    let (auth, mine) =
        crate::access::require_profiled(&state, &caller, &client, "user.delete", &what).await?;
    let detail = serde_json::json!({});
    let target = target_user(&state, &auth, &user_id).await?;
    access::check_user_delete(
        &auth,
        TargetUser {
            key: target.key,
            is_master: target.view.is_master,
        },
    )?;
    crate::access::check_target(
        &state,
        &caller,
        &client,
        &mine,
        "user.delete",
        &what,
        &target,
    )
    .await?;
    state.store.delete_user(auth.company(), target.key).await?;
    audit::record(&state, &caller, &client, "user.delete", &what, detail).await?;
    Ok(StatusCode::NO_CONTENT)
}
