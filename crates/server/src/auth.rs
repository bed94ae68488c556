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
use strongroom_core::password::PasswordAge;
use strongroom_core::session::{Restriction, SessionState};
use strongroom_core::{CompanyId, UserKey};
use strongroom_crypto::token;
use strongroom_proto::{ErrorCode, LoginRequest, LoginResponse, SessionView, UserStatus};
use zeroize::Zeroizing;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ClientInfo};
use crate::state::AppState;

pub const SESSION_COOKIE: &str = "__Host-strongroom_session";

/// An authenticated caller: a live session (or an API key) of an active
/// user.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// The hash of the session token or API key that authenticated.
    pub token_hash: [u8; 32],
    /// The session, when the caller signed in (not for API keys).
    pub session: Option<strongroom_store::SessionRecord>,
    /// The API key's id, when the caller used one.
    pub api_key: Option<String>,
    /// The company's policy epoch, read with the session or key: what the
    /// request's checks may take from [`crate::policy_cache`].
    pub epoch: Option<i64>,
}

/// API keys start with this, so a request says which kind of secret it
/// carries.
pub const API_KEY_PREFIX: &str = "srk_";

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

/// The checks every request and every sign-in step makes for a known user,
/// whatever proved who they are (session, API key, second factor): access
/// hours and account validity, the company's and user's IP rules, and
/// address blocks. Returns the refusal reason, if any.
pub async fn admission(
    state: &AppState,
    company: CompanyId,
    user: UserKey,
    ip: std::net::IpAddr,
    epoch: Option<i64>,
) -> ApiResult<Option<&'static str>> {
    let hours = crate::hours::check(state, company, user, epoch).await?;
    if hours != strongroom_core::hours::HoursDecision::Allowed {
        return Ok(Some(crate::hours::reason(hours)));
    }
    let ip_refused = crate::ip_rules::check(state, company, Some(user), ip, epoch).await?
        != strongroom_core::ip_policy::IpDecision::Allowed;
    if ip_refused || state.blocks.is_blocked(company.0, ip, state.clock.now()) {
        return Ok(Some("ip_not_allowed"));
    }
    Ok(None)
}

/// The error a refusal by [`admission`] is answered with.
pub fn admission_error(reason: &str) -> ApiError {
    if reason == "ip_not_allowed" {
        ApiError::new(
            ErrorCode::Forbidden,
            "access from your address is blocked; contact your administrator",
        )
    } else {
        ApiError::unauthenticated(
            "your access hours have ended (or your account is not valid today); the session is closed",
        )
    }
}

/// What a restricted session may still reach: its own session, sign-out,
/// and the one thing it must do.
fn allowed_while_restricted(r: Restriction, path: &str) -> bool {
    if matches!(path, "/api/v1/auth/session" | "/api/v1/auth/logout") {
        return true;
    }
    match r {
        Restriction::None => true,
        Restriction::Enrol => path.starts_with("/api/v1/auth/second-factor"),
        Restriction::Password => path == "/api/v1/auth/password",
    }
}

fn restricted_error(r: Restriction) -> ApiError {
    match r {
        Restriction::Password => ApiError::new(
            ErrorCode::PasswordChangeRequired,
            "your password must be changed first: POST /api/v1/auth/password, then sign in again",
        ),
        _ => ApiError::new(
            ErrorCode::SecondFactorEnrolmentRequired,
            "your company requires a second factor: set one up at POST /api/v1/auth/second-factor/totp (or register a passkey) first",
        ),
    }
}

/// The name a restriction has in responses.
pub fn restriction_name(r: Restriction) -> Option<String> {
    match r {
        Restriction::None => None,
        Restriction::Enrol => Some("enrol_second_factor".into()),
        Restriction::Password => Some("change_password".into()),
    }
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
        if !by_cookie && token.starts_with(API_KEY_PREFIX) {
            return crate::api_keys::caller(parts, state, &token).await;
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
        // Access hours, IP rules and blocks: a session ends when its window
        // closes or its address is no longer allowed.
        if let Some(reason) = admission(
            state,
            session.company,
            session.user,
            client.ip,
            Some(session.policy_epoch),
        )
        .await?
        {
            end_session(state, &session, &hash, reason, Some(&client)).await?;
            return Err(admission_error(reason));
        }
        if !allowed_while_restricted(session.restriction, parts.uri.path()) {
            return Err(restricted_error(session.restriction));
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
            epoch: Some(session.policy_epoch),
            session: Some(session),
            api_key: None,
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
///
/// When the user has a second factor (or must have one), the answer is
/// `202` with a challenge to finish at `/api/v1/auth/login/second-factor`;
/// the password alone never yields a usable session. A user who must still
/// set up a second factor, or change the password, gets a session limited
/// to that (`restriction`).
#[utoipa::path(
    post, path = "/api/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in; the token is also set as a cookie", body = LoginResponse),
        (status = 202, description = "Password right; answer the second-factor challenge", body = strongroom_proto::SecondFactorChallenge),
        (status = 401, description = "Wrong company, user or password, or account disabled or locked", body = strongroom_proto::ErrorBody),
        (status = 403, description = "Sign-in from this address is blocked", body = strongroom_proto::ErrorBody),
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
    let detector_block = state
        .blocks
        .is_blocked_fresh(&state.store, chain, client.ip, state.clock.now())
        .await?;
    // The company's own IP lists refuse before the password too; a user's
    // own list refuses like a wrong password (it must not tell whether the
    // user exists).
    let (company_ip_denied, user_ip_denied) = if chain == SERVER_CHAIN {
        (false, false)
    } else {
        use strongroom_core::ip_policy::IpDecision::Allowed;
        let (by_company, by_both) = crate::ip_rules::decisions(
            &state,
            CompanyId(chain),
            account.as_ref().map(|a| a.key),
            client.ip,
            account.as_ref().map(|a| a.policy_epoch),
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
    let now = state.clock.now();
    // The lock as read with the account, at the start of this attempt.
    let locked = match &account {
        Some(a) if !blocked => a.locked_at(now),
        _ => false,
    };
    let hours = match &account {
        Some(a) if password_ok => {
            Some(crate::hours::check(&state, a.company, a.key, Some(a.policy_epoch)).await?)
        }
        _ => None,
    }
    .filter(|d| *d != strongroom_core::hours::HoursDecision::Allowed);
    let reason = match &account {
        _ if detector_block => Some("address_blocked"),
        _ if company_ip_denied => Some("ip_not_allowed"),
        Some(_) if user_ip_denied => Some("ip_not_allowed"),
        None if chain == SERVER_CHAIN => Some("unknown_company"),
        None => Some("unknown_user"),
        // A locked account is refused whatever the password, and the
        // attempt does not count again.
        Some(_) if locked => Some("account_locked"),
        Some(_) if !password_ok => Some("bad_password"),
        Some(a) if a.view.status != UserStatus::Active => Some("account_disabled"),
        Some(_) if hours.is_some() => hours.map(crate::hours::reason),
        Some(_) => None,
    };
    let mut attempt = sign_in_event(&state, chain, &req.user, &req.company, &client);
    let account = match account {
        Some(a) if reason.is_none() => a,
        account => {
            attempt.outcome = Outcome::Denied;
            attempt.reason = reason.map(str::to_owned);
            state.audit.write(vec![attempt]).await?;
            if matches!(
                reason,
                Some("bad_password" | "unknown_user" | "unknown_company")
            ) {
                let who = account
                    .as_ref()
                    .filter(|_| reason == Some("bad_password"))
                    .map(|a| (a.company, a.key, a.view.user_id.as_str()));
                crate::lockout::failed(&state, chain, who, client.ip).await?;
            }
            if blocked {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "sign-in from your address is blocked; contact your administrator",
                ));
            }
            return Err(sign_in_failed());
        }
    };
    crate::lockout::succeeded(&state, &account).await?;
    // Whether there is a factor was read with the account; which ones,
    // only when there is one.
    let factors = if account.has_second_factor {
        crate::second_factor::factors(&state, account.company, account.key).await?
    } else {
        crate::second_factor::Factors::default()
    };
    if factors.any() {
        // The password step is done; a session comes only with the second.
        let challenge = crate::second_factor::begin(&state, &account, &client, &factors).await?;
        attempt.action = "auth.password".into();
        attempt.detail = serde_json::json!({ "next": "second_factor" }).to_string();
        state.audit.write(vec![attempt]).await?;
        return Ok((axum::http::StatusCode::ACCEPTED, Json(challenge)).into_response());
    }
    let restriction = if crate::second_factor::required(&state, &account).await? {
        Restriction::Enrol
    } else {
        Restriction::None
    };
    finish_sign_in(&state, &account, &client, restriction, attempt).await
}

/// The audit event of a sign-in attempt, before its outcome is known.
pub fn sign_in_event(
    state: &AppState,
    chain: i64,
    user: &str,
    company: &str,
    client: &ClientInfo,
) -> AuditEvent {
    AuditEvent {
        chain,
        at: state.clock.now(),
        // What was typed, cut short: it is the claim, not a verified identity.
        actor: format!("user:{}", user.chars().take(64).collect::<String>()),
        action: "auth.login".into(),
        target: format!("company/{}", company.chars().take(32).collect::<String>()),
        outcome: Outcome::Success,
        reason: None,
        detail: "{}".into(),
        session: None,
        client_ip: Some(client.ip.to_string()),
        user_agent: client.user_agent.clone(),
        request_id: Some(crate::error::current_request_id()),
    }
}

/// Makes the session once every sign-in step has passed: applies the
/// password-age rules and the session limit, records the sign-in, and
/// answers with the token (also as a cookie).
pub async fn finish_sign_in(
    state: &AppState,
    account: &strongroom_store::LoginAccount,
    client: &ClientInfo,
    mut restriction: Restriction,
    mut attempt: AuditEvent,
) -> ApiResult<Response> {
    let now = state.clock.now();
    let rules = state
        .policy
        .password_rules
        .get_or_load(
            (account.company.0, account.key.0),
            Some(account.policy_epoch),
            state
                .store
                .effective_password_rules(account.company, Some(account.key)),
        )
        .await?;
    let age = rules.age(account.password_changed_at, now);
    if account.must_change_password || age == PasswordAge::Expired {
        restriction = Restriction::Password;
    }
    let session_policy = state
        .policy
        .session_policy
        .get_or_load(
            account.company.0,
            Some(account.policy_epoch),
            state.store.session_policy(account.company),
        )
        .await?;
    if let Some(reason) =
        crate::session_admin::make_room(state, account.company, account.key, &session_policy)
            .await?
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
    if restriction != Restriction::None {
        let mut detail: serde_json::Value =
            serde_json::from_str(&attempt.detail).unwrap_or_else(|_| serde_json::json!({}));
        detail["restriction"] = serde_json::json!(restriction_name(restriction));
        attempt.detail = detail.to_string();
    }
    state.audit.write(vec![attempt]).await?;
    let idle_minutes = account.idle_minutes.unwrap_or(session_policy.2);
    let times = state
        .sessions
        .start(now, Some(chrono::Duration::minutes(idle_minutes)));
    let ip = client.ip.to_string();
    let findings = state
        .detection
        .after_sign_in(
            &state.store,
            account.company,
            account.key,
            &account.view.user_id,
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
            restriction,
            Some(&ip),
            client.user_agent.as_deref(),
        )
        .await?;
    // Reported only now: a response that ends the user's sessions or locks
    // the account must find this sign-in's session to end.
    state.detection.report_findings(findings).await;
    let lifetime = (times.expires_at - now).num_seconds();
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={lifetime}",
        new.token.as_str()
    );
    let body = LoginResponse {
        token: new.token.to_string(),
        expires_at: times.expires_at,
        idle_expires_at: state.sessions.idle_expires_at(&times),
        // As read with the account at the start of the sign-in.
        user: account.view.clone(),
        restriction: restriction_name(restriction),
        password_expires_at: match age {
            PasswordAge::ExpiresSoon { expires_at } => Some(expires_at),
            _ => None,
        },
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
    let session = caller
        .session
        .as_ref()
        .ok_or_else(|| ApiError::unauthenticated("an API key has no session"))?;
    let times = session.times;
    Ok(Json(SessionView {
        company: p.company_code.clone(),
        user: user.view,
        created_at: times.created_at,
        expires_at: times.expires_at,
        idle_expires_at: state.sessions.idle_expires_at(&times),
        restriction: restriction_name(session.restriction),
    }))
}
