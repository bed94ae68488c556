//! Access hours set by the company: checked at sign-in and on every
//! request (see `auth`), so a session ends when its window closes.

use axum::extract::{Path, State};
use axum::Json;
use strongroom_core::hours::{
    decide, format_time, parse_day, parse_time, parse_tz, AccessWindow, HoursDecision,
};
use strongroom_core::{CompanyId, UserKey};
use strongroom_proto::{
    AccessWindowView, CompanyAccessHours, ErrorBody, ErrorCode, UserAccessHours,
};

use crate::audit;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ClientInfo};
use crate::state::AppState;

const MAX_WINDOWS: usize = 100;

/// The decision for a user now.
pub async fn check(
    state: &AppState,
    company: CompanyId,
    user: UserKey,
    epoch: Option<i64>,
) -> ApiResult<HoursDecision> {
    let s = state
        .policy
        .hours
        .get_or_load(
            (company.0, user.0),
            epoch,
            state.store.hours_settings(company, user),
        )
        .await?;
    let tz = parse_tz(&s.timezone)
        .map_err(|_| ApiError::internal(format!("stored time zone {} is unknown", s.timezone)))?;
    Ok(decide(
        state.clock.now(),
        tz,
        &s.windows,
        s.valid_from,
        s.valid_until,
    ))
}

pub fn reason(d: HoursDecision) -> &'static str {
    match d {
        HoursDecision::Allowed => "allowed",
        HoursDecision::NotYetValid => "account_not_yet_valid",
        HoursDecision::Expired => "account_expired",
        HoursDecision::OutsideHours => "outside_access_hours",
    }
}

fn views(w: &[AccessWindow]) -> Vec<AccessWindowView> {
    w.iter()
        .map(|w| AccessWindowView {
            day: w.day.to_string().to_ascii_lowercase(),
            start: format_time(w.start),
            end: format_time(w.end),
        })
        .collect()
}

fn parse(windows: &[AccessWindowView]) -> ApiResult<Vec<AccessWindow>> {
    if windows.len() > MAX_WINDOWS {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            format!("at most {MAX_WINDOWS} windows"),
        ));
    }
    windows
        .iter()
        .map(|w| {
            Ok(AccessWindow {
                day: parse_day(&w.day)?,
                start: parse_time(&w.start)?,
                end: parse_time(&w.end)?,
            })
        })
        .collect()
}

fn lockout() -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        "these hours would end your own access now; include the present time, or send \"force\": true",
    )
}

/// The company's time zone and default access windows.
#[utoipa::path(get, path = "/api/v1/security/access-hours", tag = "security",
    responses((status = 200, body = CompanyAccessHours), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn company_hours(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
) -> ApiResult<Json<CompanyAccessHours>> {
    let auth = audit::require_admin(
        &state,
        &caller,
        &client,
        "access_hours.read",
        "access_hours",
    )
    .await?;
    Ok(Json(CompanyAccessHours {
        timezone: state.store.company_timezone(auth.company()).await?,
        windows: views(&state.store.access_windows(auth.company(), None).await?),
        force: false,
    }))
}

/// Set the company's time zone and default access windows.
#[utoipa::path(put, path = "/api/v1/security/access-hours", tag = "security",
    request_body = CompanyAccessHours,
    responses((status = 200, body = CompanyAccessHours), (status = 400, body = ErrorBody),
        (status = 409, description = "Would end the caller's own access", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_company_hours(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    ApiJson(req): ApiJson<CompanyAccessHours>,
) -> ApiResult<Json<CompanyAccessHours>> {
    let auth = audit::require_admin(
        &state,
        &caller,
        &client,
        "access_hours.update",
        "access_hours",
    )
    .await?;
    let tz = parse_tz(&req.timezone)?;
    let windows = parse(&req.windows)?;
    if !req.force {
        let mine = state
            .store
            .hours_settings(auth.company(), caller.principal.user)
            .await?;
        let own = state
            .store
            .access_windows(auth.company(), Some(caller.principal.user))
            .await?;
        let effective = if own.is_empty() { &windows } else { &own };
        if decide(
            state.clock.now(),
            tz,
            effective,
            mine.valid_from,
            mine.valid_until,
        ) != HoursDecision::Allowed
        {
            return Err(lockout());
        }
    }
    state
        .store
        .set_access_hours(auth.company(), None, Some(tz.name()), &windows, None)
        .await?;
    audit::record(&state, &caller, &client, "access_hours.update", "access_hours",
        serde_json::json!({ "timezone": tz.name(), "windows": views(&windows), "force": req.force })).await?;
    Ok(Json(CompanyAccessHours {
        timezone: tz.name().into(),
        windows: views(&windows),
        force: false,
    }))
}

/// Set a user's own access windows and validity dates.
#[utoipa::path(put, path = "/api/v1/users/{user_id}/access-hours", tag = "users",
    params(("user_id" = String, Path)),
    request_body = UserAccessHours,
    responses((status = 200, body = UserAccessHours), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_user_hours(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
    ApiJson(req): ApiJson<UserAccessHours>,
) -> ApiResult<Json<UserAccessHours>> {
    let what = format!(
        "user/{}/access_hours",
        user_id.chars().take(64).collect::<String>()
    );
    let auth = audit::require_admin(&state, &caller, &client, "access_hours.update", &what).await?;
    let user = crate::admin::target_user(&state, &auth, &user_id).await?;
    let windows = parse(&req.windows)?;
    if let (Some(f), Some(u)) = (req.valid_from, req.valid_until) {
        if f > u {
            return Err(ApiError::new(
                ErrorCode::ValidationFailed,
                "valid_from is after valid_until",
            ));
        }
    }
    if user.key == caller.principal.user && !req.force {
        let tz = parse_tz(&state.store.company_timezone(auth.company()).await?)?;
        let company = state.store.access_windows(auth.company(), None).await?;
        let effective = if windows.is_empty() {
            &company
        } else {
            &windows
        };
        if decide(
            state.clock.now(),
            tz,
            effective,
            req.valid_from,
            req.valid_until,
        ) != HoursDecision::Allowed
        {
            return Err(lockout());
        }
    }
    state
        .store
        .set_access_hours(
            auth.company(),
            Some(user.key),
            None,
            &windows,
            Some((req.valid_from, req.valid_until)),
        )
        .await?;
    audit::record(&state, &caller, &client, "access_hours.update", &what,
        serde_json::json!({ "windows": views(&windows), "valid_from": req.valid_from, "valid_until": req.valid_until })).await?;
    Ok(Json(UserAccessHours {
        windows: views(&windows),
        valid_from: req.valid_from,
        valid_until: req.valid_until,
        force: false,
    }))
}
