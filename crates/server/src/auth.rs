//! Sign-in, sign-out and the session check every authenticated request
//! goes through.

use axum::extract::{FromRequestParts, State};
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use strongroom_core::access::Principal;
use strongroom_core::audit::{AuditEvent, Outcome, SERVER_CHAIN};
use strongroom_core::ident;
use strongroom_core::session::SessionState;
use strongroom_crypto::token;
use strongroom_proto::{ErrorCode, LoginRequest, LoginResponse, SessionView, UserStatus};
use zeroize::Zeroizing;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ClientInfo};
use crate::state::AppState;

pub const SESSION_COOKIE: &str = "__Host-strongroom_session";

/// An authenticated caller: a live session of an active user.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub token_hash: [u8; 32],
    pub session: strongroom_store::SessionRecord,
}

/// The session token and whether it came in the cookie (which a browser
/// attaches on its own, so cookie requests need the CSRF check).
fn token_from(headers: &HeaderMap) -> Option<(String, bool)> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, rest) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| (rest.trim().to_owned(), false));
    }
    for v in headers.get_all(COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=') {
                if name == SESSION_COOKIE {
                    return Some((value.to_owned(), true));
                }
            }
        }
    }
    None
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (token, by_cookie) = token_from(&parts.headers).ok_or_else(|| {
            ApiError::unauthenticated(
                "sign in first: POST /api/v1/auth/login, then send the token as 'Authorization: Bearer <token>'",
            )
        })?;
        if by_cookie && !same_origin(parts) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "a cross-site request with the session cookie was refused; send the token as 'Authorization: Bearer <token>' or make the request from the same origin",
            ));
        }
        let expired = || ApiError::unauthenticated("the session has ended; sign in again");
        if !token::looks_like_token(&token) {
            return Err(expired());
        }
        let hash = token::hash_token(&token);
        let session = state.store.session(&hash).await?.ok_or_else(expired)?;
        state.limits.check_company(session.company.0)?;
        let client = ClientInfo::from_request_parts(parts, state).await?;
        let now = state.clock.now();
        let live = session.user_status == UserStatus::Active
            && state.sessions.state(&session.times, now) == SessionState::Live;
        if !live {
            let reason = if session.user_status != UserStatus::Active {
                "account_disabled"
            } else if now >= session.times.expires_at {
                "lifetime_reached"
            } else {
                "idle_timeout"
            };
            end_session(state, &session, &hash, reason, Some(&client)).await?;
            return Err(expired());
        }
        // Access hours: a session ends when its window closes.
        let hours = crate::hours::check(state, session.company, session.user).await?;
        if hours != strongroom_core::hours::HoursDecision::Allowed {
            end_session(
                state,
                &session,
                &hash,
                crate::hours::reason(hours),
                Some(&client),
            )
            .await?;
            return Err(ApiError::unauthenticated(
                "your access hours have ended (or your account is not valid today); the session is closed",
            ));
        }
        let ip_refused =
            crate::ip_rules::check(state, session.company, Some(session.user), client.ip).await?
                != strongroom_core::ip_policy::IpDecision::Allowed;
        if ip_refused
            || state
                .blocks
                .is_blocked(session.company.0, client.ip, state.clock.now())
        {
            // The session is not at fault, but it may not be used from here.
            end_session(state, &session, &hash, "ip_not_allowed", Some(&client)).await?;
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "access from your address is blocked; contact your administrator",
            ));
        }
        let mut session = session;
        if state.sessions.should_touch(&session.times, now) {
            state.store.touch_session(&hash, now).await?;
            session.times.last_seen_at = now;
        }
        Ok(Caller {
            principal: Principal {
                company: session.company,
                company_code: session.company_code.clone(),
                user: session.user,
                user_id: session.user_id.clone(),
                department: session.department_id,
                is_admin: session.is_admin,
                is_master: session.is_master,
            },
            token_hash: hash,
            session,
        })
    }
}

/// Ends a session and records why, before the refusal is answered.
async fn end_session(
    state: &AppState,
    session: &strongroom_store::SessionRecord,
    hash: &[u8; 32],
    reason: &str,
    client: Option<&ClientInfo>,
) -> Result<(), ApiError> {
    state.store.end_session(hash).await?;
    state
        .audit
        .write(vec![AuditEvent {
            chain: session.company.0,
            at: state.clock.now(),
            actor: "system".into(),
            action: "session.end".into(),
            target: format!("user/{}", session.user_id),
            outcome: Outcome::Success,
            reason: Some(reason.into()),
            detail: "{}".into(),
            session: Some(crate::audit::session_ref(hash)),
            client_ip: client.map(|c| c.ip.to_string()),
            user_agent: None,
            request_id: Some(crate::error::current_request_id()),
        }])
        .await
}

/// Cross-site request forgery guard for cookie-authenticated requests that
/// change state: besides the SameSite=Strict cookie, the browser must say
/// the request is same-origin (`Sec-Fetch-Site`) or send a matching `Origin`.
fn same_origin(parts: &Parts) -> bool {
    let h = &parts.headers;
    if matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD
    ) {
        return true;
    }
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return site == "same-origin";
    }
    let host = h
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    match (
        h.get(axum::http::header::ORIGIN)
            .and_then(|v| v.to_str().ok()),
        host,
    ) {
        (Some(origin), Some(host)) => origin == format!("https://{host}"),
        _ => false,
    }
}

fn sign_in_failed() -> ApiError {
    // One message for unknown company, unknown user, wrong password and a
    // disabled account, so none of them can be told apart.
    ApiError::new(
        ErrorCode::SignInFailed,
        "sign-in failed: check the company code, user ID and password",
    )
}

/// Sign in with company code, user ID and password.
#[utoipa::path(
    post, path = "/api/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in; the token is also set as a cookie", body = LoginResponse),
        (status = 401, description = "Wrong company, user or password, or account disabled", body = strongroom_proto::ErrorBody),
        (status = 503, description = "Too many sign-ins at once", body = strongroom_proto::ErrorBody),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    client: ClientInfo,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Response> {
    let password = Zeroizing::new(req.password);
    let company = ident::company_code(&req.company).ok();
    let user = ident::user_id(&req.user).ok();
    let account = match (&company, &user) {
        (Some(c), Some(u)) => state.store.login_account(c, u).await?,
        _ => None,
    };
    // Which company's trail the attempt belongs to: the named company if it
    // exists, else the server's own chain.
    let chain = match (&account, &company) {
        (Some(a), _) => a.company.0,
        (None, Some(c)) => state
            .store
            .company_by_code(c)
            .await?
            .map(|(id, _)| id.0)
            .unwrap_or(SERVER_CHAIN),
        (None, None) => SERVER_CHAIN,
    };
    // A blocked address is refused before the password is looked at, so it
    // learns nothing about it.
    let detector_block = state.blocks.is_blocked(chain, client.ip, state.clock.now());
    // The company's own IP lists refuse before the password too; a user's
    // own list refuses like a wrong password (it must not tell whether the
    // user exists).
    let (company_ip_denied, user_ip_denied) = if chain == SERVER_CHAIN {
        (false, false)
    } else {
        use strongroom_core::ip_policy::IpDecision::Allowed;
        let (by_company, by_both) = crate::ip_rules::decisions(
            &state,
            strongroom_core::CompanyId(chain),
            account.as_ref().map(|a| a.key),
            client.ip,
        )
        .await?;
        (
            by_company != Allowed,
            by_company == Allowed && by_both != Allowed,
        )
    };
    let blocked = detector_block || company_ip_denied;
    // The hash is checked even when the account is unknown or disabled, so
    // all failures take the same time.
    let password_ok = if blocked {
        false
    } else {
        // A user-level refusal still costs one (dummy) hash, like any failure.
        let stored = account
            .as_ref()
            .filter(|_| !user_ip_denied)
            .map(|a| a.password_hash.clone());
        state.hashing.verify(password, stored).await?
    };
    let locked = match &account {
        Some(a) if password_ok => state
            .store
            .account_locked_until(a.company, a.key, state.clock.now())
            .await?
            .is_some(),
        _ => false,
    };
    let hours = match &account {
        Some(a) if password_ok => Some(crate::hours::check(&state, a.company, a.key).await?),
        _ => None,
    }
    .filter(|d| *d != strongroom_core::hours::HoursDecision::Allowed);
    let reason = match &account {
        _ if detector_block => Some("address_blocked"),
        _ if company_ip_denied => Some("ip_not_allowed"),
        Some(_) if user_ip_denied => Some("ip_not_allowed"),
        None if chain == SERVER_CHAIN => Some("unknown_company"),
        None => Some("unknown_user"),
        Some(_) if !password_ok => Some("bad_password"),
        Some(a) if a.status != UserStatus::Active => Some("account_disabled"),
        Some(_) if locked => Some("account_locked"),
        Some(_) if hours.is_some() => hours.map(crate::hours::reason),
        Some(_) => None,
    };
    let now = state.clock.now();
    let attempt = AuditEvent {
        chain,
        at: now,
        // What was typed, cut short: it is the claim, not a verified identity.
        actor: format!("user:{}", req.user.chars().take(64).collect::<String>()),
        action: "auth.login".into(),
        target: format!(
            "company/{}",
            req.company.chars().take(32).collect::<String>()
        ),
        outcome: if reason.is_some() {
            Outcome::Denied
        } else {
            Outcome::Success
        },
        reason: reason.map(str::to_owned),
        detail: "{}".into(),
        session: None,
        client_ip: Some(client.ip.to_string()),
        user_agent: client.user_agent.clone(),
        request_id: Some(crate::error::current_request_id()),
    };
    let account = match account {
        Some(a) if reason.is_none() => a,
        _ => {
            state.audit.write(vec![attempt]).await?;
            if blocked {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "sign-in from your address is blocked; contact your administrator",
                ));
            }
            return Err(sign_in_failed());
        }
    };
    let mut attempt = attempt;
    if let Some(reason) =
        crate::session_admin::make_room(&state, account.company, account.key).await?
    {
        attempt.outcome = Outcome::Denied;
        attempt.reason = Some(reason.into());
        state.audit.write(vec![attempt]).await?;
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "you already have as many sessions as your company allows; sign out elsewhere, or ask an administrator to end one",
        ));
    }
    let new = token::new_token()?;
    attempt.session = Some(crate::audit::session_ref(&new.hash));
    state.audit.write(vec![attempt]).await?;
    let times = state.sessions.start(now);
    let ip = client.ip.to_string();
    state
        .detection
        .after_sign_in(
            &state.store,
            account.company,
            account.key,
            &account.user_id,
            client.ip,
            now,
        )
        .await?;
    state
        .store
        .create_session(
            account.company,
            account.key,
            &new.hash,
            times,
            Some(&ip),
            client.user_agent.as_deref(),
        )
        .await?;
    let user = state
        .store
        .user_by_key(account.company, account.key)
        .await?
        .ok_or_else(|| ApiError::internal("user vanished during sign-in"))?;
    let lifetime = (times.expires_at - now).num_seconds();
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={lifetime}",
        new.token.as_str()
    );
    let body = LoginResponse {
        token: new.token.to_string(),
        expires_at: times.expires_at,
        idle_expires_at: state.sessions.idle_expires_at(&times),
        user: user.view,
    };
    let mut resp = Json(body).into_response();
    let cookie = HeaderValue::from_str(&cookie).map_err(ApiError::internal)?;
    resp.headers_mut().insert(SET_COOKIE, cookie);
    Ok(resp)
}

/// End the current session on the server.
#[utoipa::path(
    post, path = "/api/v1/auth/logout", tag = "auth",
    responses(
        (status = 204, description = "Signed out; the token no longer works"),
        (status = 401, description = "No valid session", body = strongroom_proto::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn logout(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
) -> ApiResult<Response> {
    state.store.end_session(&caller.token_hash).await?;
    crate::audit::record(
        &state,
        &caller,
        &client,
        "auth.logout",
        &format!("user/{}", caller.principal.user_id),
        serde_json::json!({}),
    )
    .await?;
    let mut resp = axum::http::StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static(
            "__Host-strongroom_session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(resp)
}

/// Who am I: the current session and its user.
#[utoipa::path(
    get, path = "/api/v1/auth/session", tag = "auth",
    responses(
        (status = 200, body = SessionView),
        (status = 401, description = "No valid session", body = strongroom_proto::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn current_session(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<SessionView>> {
    let p = &caller.principal;
    let user = state
        .store
        .user_by_key(p.company, p.user)
        .await?
        .ok_or_else(|| ApiError::unauthenticated("the session has ended; sign in again"))?;
    let times = caller.session.times;
    Ok(Json(SessionView {
        company: p.company_code.clone(),
        user: user.view,
        created_at: times.created_at,
        expires_at: times.expires_at,
        idle_expires_at: state.sessions.idle_expires_at(&times),
    }))
}
