//! Two-step verification: who needs it, enrolling an authenticator app
//! (TOTP) with recovery codes, the second sign-in step, and an
//! administrator's reset. Secrets are sealed with the company's data key,
//! recovery codes kept as keyed hashes.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use chrono::Duration;
use strongroom_core::audit::Outcome;
use strongroom_core::session::Restriction;
use strongroom_core::signin::{second_factor_required, TwoFactorSubject};
use strongroom_core::{CompanyId, UserKey};
use strongroom_crypto::envelope::{self, FieldContext};
use strongroom_crypto::{token, totp};
use strongroom_proto::{
    ErrorBody, ErrorCode, RecoveryCodes, SecondFactorAnswer, SecondFactorChallenge,
    SecondFactorStatus, TotpCode, TotpEnrolment, UserStatus,
};
use strongroom_store::{KeyPurpose, LoginAccount, PasskeyRow};
use zeroize::Zeroizing;

use crate::audit;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ClientInfo};
use crate::state::AppState;

/// How long the step between password and second factor stays open.
pub const CHALLENGE_MINUTES: i64 = 5;
/// Wrong answers allowed on one challenge before it is void.
pub const CHALLENGE_ATTEMPTS: i64 = 5;

/// The second factors a user has set up.
#[derive(Debug, Default)]
pub struct Factors {
    pub totp: bool,
    pub passkeys: Vec<PasskeyRow>,
}

impl Factors {
    pub fn any(&self) -> bool {
        self.totp || !self.passkeys.is_empty()
    }
}

pub async fn factors(state: &AppState, company: CompanyId, user: UserKey) -> ApiResult<Factors> {
    Ok(Factors {
        totp: state
            .store
            .totp_factor(company, user)
            .await?
            .is_some_and(|f| f.confirmed),
        passkeys: state.store.passkeys(company, user).await?,
    })
}

/// Whether the company's policy requires a second factor of this user.
pub async fn required(state: &AppState, a: &LoginAccount) -> ApiResult<bool> {
    let policy = state
        .policy
        .sign_in_policy
        .get_or_load(
            a.company.0,
            Some(a.policy_epoch),
            state.store.sign_in_policy(a.company),
        )
        .await?;
    let others = if a.view.is_master {
        state
            .policy
            .other_users
            .get_or_load(
                a.company.0,
                Some(a.policy_epoch),
                state.store.company_has_other_users(a.company),
            )
            .await?
    } else {
        true
    };
    Ok(second_factor_required(
        policy.two_factor,
        TwoFactorSubject {
            is_master: a.view.is_master,
            is_admin: a.view.is_admin,
            marked: a.two_factor_marked,
            company_has_others: others,
        },
    ))
}

/// Where a user's sealed secret belongs (bound into its ciphertext).
pub fn ctx<'a>(company_code: &'a str, user_ref: &'a str, field: &'a str) -> FieldContext<'a> {
    FieldContext {
        company: company_code,
        record_type: "_user",
        record_id: user_ref,
        field,
    }
}

/// Seals a user's secret (TOTP secret, passkey) under the company's
/// current data key, bound to the user and purpose.
pub async fn seal(
    state: &AppState,
    company: CompanyId,
    company_code: &str,
    user: UserKey,
    field: &str,
    plain: &str,
) -> ApiResult<String> {
    let key = state.keys.current(company, KeyPurpose::Data).await?;
    let user_ref = user.0.to_string();
    Ok(envelope::encrypt_field(
        &key,
        ctx(company_code, &user_ref, field),
        plain,
    )?)
}

pub async fn open(
    state: &AppState,
    company: CompanyId,
    company_code: &str,
    user: UserKey,
    field: &str,
    stored: &str,
) -> ApiResult<Zeroizing<String>> {
    let damaged = || {
        ApiError::new(
            ErrorCode::IntegrityError,
            "a stored second-factor secret failed its integrity check; the operator has been told",
        )
    };
    let version = envelope::stored_version(stored).ok_or_else(damaged)?;
    let key = state.keys.key(company, KeyPurpose::Data, version).await?;
    let user_ref = user.0.to_string();
    envelope::decrypt_field(&key, ctx(company_code, &user_ref, field), stored).map_err(|e| {
        tracing::error!(company = company.0, user = user.0, field, error = %e, "sealed secret does not open");
        damaged()
    })
}

async fn totp_secret(
    state: &AppState,
    company: CompanyId,
    company_code: &str,
    user: UserKey,
    sealed: &str,
) -> ApiResult<Zeroizing<Vec<u8>>> {
    let b64 = open(state, company, company_code, user, "totp_secret", sealed).await?;
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map(Zeroizing::new)
        .map_err(|_| ApiError::internal("stored TOTP secret is not base64"))
}

async fn recovery_hash(
    state: &AppState,
    company: CompanyId,
    user: UserKey,
    code: &str,
) -> ApiResult<[u8; 32]> {
    let key = state.keys.current(company, KeyPurpose::Index).await?;
    Ok(totp::recovery_code_hash(&key, &user.0.to_string(), code))
}

/// New recovery codes: the codes to show once, and their stored hashes.
async fn new_codes(
    state: &AppState,
    company: CompanyId,
    user: UserKey,
) -> ApiResult<(Vec<Zeroizing<String>>, Vec<[u8; 32]>)> {
    let codes = totp::new_recovery_codes()?;
    let mut hashes = Vec::with_capacity(codes.len());
    for c in &codes {
        hashes.push(recovery_hash(state, company, user, c).await?);
    }
    Ok((codes, hashes))
}

fn show(codes: Vec<Zeroizing<String>>) -> RecoveryCodes {
    RecoveryCodes {
        codes: codes.iter().map(|c| c.to_string()).collect(),
    }
}

/// Opens the second sign-in step for an account whose password was right.
pub async fn begin(
    state: &AppState,
    account: &LoginAccount,
    client: &ClientInfo,
    factors: &Factors,
) -> ApiResult<SecondFactorChallenge> {
    let mut methods = Vec::new();
    if factors.totp {
        methods.push("totp".to_owned());
    }
    let (passkey_options, ceremony) = if factors.passkeys.is_empty() {
        (None, serde_json::Value::Null)
    } else {
        methods.push("passkey".to_owned());
        let (options, ceremony) = crate::passkeys::start_authentication(
            state,
            account.company,
            &account.company_code,
            account.key,
            &factors.passkeys,
        )
        .await?;
        (Some(options), ceremony)
    };
    methods.push("recovery_code".to_owned());
    let new = token::new_token()?;
    let expires_at = state.clock.now() + Duration::minutes(CHALLENGE_MINUTES);
    state
        .store
        .create_challenge(
            &new.hash,
            account.company,
            account.key,
            "second_factor",
            &ceremony.to_string(),
            Some(&client.ip.to_string()),
            expires_at,
        )
        .await?;
    Ok(SecondFactorChallenge {
        challenge: new.token.to_string(),
        methods,
        expires_at,
        passkey_options,
    })
}

fn step_expired() -> ApiError {
    ApiError::new(
        ErrorCode::SignInFailed,
        "this sign-in step has expired or was already used; sign in again with your password",
    )
}

/// Finish signing in with a second factor.
#[utoipa::path(post, path = "/api/v1/auth/login/second-factor", tag = "auth",
    request_body = SecondFactorAnswer,
    responses(
        (status = 200, description = "Signed in", body = strongroom_proto::LoginResponse),
        (status = 400, description = "Not exactly one of code, recovery_code, passkey", body = ErrorBody),
        (status = 401, description = "Wrong or reused code, or the step expired", body = ErrorBody),
        (status = 403, description = "Not allowed from this address or at this time", body = ErrorBody),
    ))]
pub async fn answer(
    State(state): State<AppState>,
    client: ClientInfo,
    ApiJson(req): ApiJson<SecondFactorAnswer>,
) -> ApiResult<Response> {
    let given = [
        req.code.is_some(),
        req.recovery_code.is_some(),
        req.passkey.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given != 1 {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            "give exactly one of code, recovery_code or passkey",
        ));
    }
    if !token::looks_like_token(&req.challenge) {
        return Err(step_expired());
    }
    let hash = token::hash_token(&req.challenge);
    let now = state.clock.now();
    let ch = state
        .store
        .challenge_attempt(&hash, now)
        .await?
        .filter(|c| c.purpose == "second_factor")
        .ok_or_else(step_expired)?;
    let account = state
        .store
        .login_account_by_key(ch.company, ch.user)
        .await?
        .ok_or_else(step_expired)?;
    let mut attempt = crate::auth::sign_in_event(
        &state,
        ch.company.0,
        &account.view.user_id,
        &account.company_code,
        &client,
    );
    attempt.action = "auth.second_factor".into();
    let deny = |mut e: strongroom_core::audit::AuditEvent, reason: &str| {
        e.outcome = Outcome::Denied;
        e.reason = Some(reason.into());
        e
    };
    if ch.attempts > CHALLENGE_ATTEMPTS {
        state.store.delete_challenge(&hash).await?;
        state
            .audit
            .write(vec![deny(attempt, "too_many_attempts")])
            .await?;
        return Err(step_expired());
    }
    // The account may have been disabled or locked, or the caller may be
    // somewhere or at a time it may not sign in from, since the password.
    let refusal = if account.view.status != UserStatus::Active {
        Some("account_disabled")
    } else if account.locked_at(now) {
        Some("account_locked")
    } else {
        crate::auth::admission(
            &state,
            ch.company,
            ch.user,
            client.ip,
            Some(account.policy_epoch),
        )
        .await?
    };
    if let Some(reason) = refusal {
        state.store.delete_challenge(&hash).await?;
        state.audit.write(vec![deny(attempt, reason)]).await?;
        return Err(match reason {
            "ip_not_allowed"
            | "account_not_yet_valid"
            | "account_expired"
            | "outside_access_hours" => crate::auth::admission_error(reason),
            _ => step_expired(),
        });
    }
    let (method, outcome) = if let Some(code) = &req.code {
        (
            "totp",
            check_totp(&state, &account, code, now.timestamp()).await?,
        )
    } else if let Some(code) = &req.recovery_code {
        let h = recovery_hash(&state, ch.company, ch.user, code).await?;
        match state
            .store
            .use_recovery_code(ch.company, ch.user, &h, now)
            .await?
        {
            Some(left) => ("recovery_code", Ok(Some(left))),
            None => ("recovery_code", Err("bad_recovery_code")),
        }
    } else {
        let credential = req.passkey.clone().unwrap_or_default();
        let ok = crate::passkeys::finish_authentication(
            &state,
            ch.company,
            &account.company_code,
            ch.user,
            &ch.state,
            credential,
        )
        .await?;
        ("passkey", if ok { Ok(None) } else { Err("bad_passkey") })
    };
    let left = match outcome {
        Ok(left) => left,
        Err(reason) => {
            state.audit.write(vec![deny(attempt, reason)]).await?;
            crate::lockout::failed(
                &state,
                ch.company.0,
                Some((ch.company, ch.user, &account.view.user_id)),
                client.ip,
            )
            .await?;
            return Err(ApiError::new(
                ErrorCode::SignInFailed,
                match reason {
                    "code_reused" => "that code was already used; wait for the next one",
                    "bad_passkey" => {
                        "the passkey was not accepted; try again or use another method"
                    }
                    _ => "that code was not accepted; check the time on your device and try again",
                },
            ));
        }
    };
    if !state.store.delete_challenge(&hash).await? {
        return Err(step_expired());
    }
    let mut events = Vec::new();
    if let Some(left) = left {
        let mut used = attempt.clone();
        used.action = "auth.recovery_code_used".into();
        used.detail = serde_json::json!({ "remaining": left }).to_string();
        events.push(used);
    }
    if !events.is_empty() {
        state.audit.write(events).await?;
    }
    crate::lockout::succeeded(&state, &account).await?;
    attempt.action = "auth.login".into();
    attempt.detail = serde_json::json!({ "second_factor": method }).to_string();
    crate::auth::finish_sign_in(&state, &account, &client, Restriction::None, attempt).await
}

/// Checks a TOTP code and accepts its time step once.
async fn check_totp(
    state: &AppState,
    account: &LoginAccount,
    code: &str,
    unix: i64,
) -> ApiResult<Result<Option<i64>, &'static str>> {
    let Some(f) = state
        .store
        .totp_factor(account.company, account.key)
        .await?
        .filter(|f| f.confirmed)
    else {
        return Ok(Err("no_totp"));
    };
    let secret = totp_secret(
        state,
        account.company,
        &account.company_code,
        account.key,
        &f.sealed_secret,
    )
    .await?;
    let Some(step) = totp::matching_step(&secret, code, unix) else {
        return Ok(Err("bad_code"));
    };
    if state
        .store
        .accept_totp_step(account.company, account.key, step, None)
        .await?
    {
        Ok(Ok(None))
    } else {
        Ok(Err("code_reused"))
    }
}

/// Your second factors.
#[utoipa::path(get, path = "/api/v1/auth/second-factor", tag = "auth",
    responses((status = 200, body = SecondFactorStatus)), security(("bearer" = [])))]
pub async fn status(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<SecondFactorStatus>> {
    let p = &caller.principal;
    let f = factors(&state, p.company, p.user).await?;
    let account = state
        .store
        .login_account_by_key(p.company, p.user)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(Json(SecondFactorStatus {
        totp: f.totp,
        passkeys: u32::try_from(f.passkeys.len()).unwrap_or(u32::MAX),
        recovery_codes_left: u32::try_from(
            state.store.recovery_codes_left(p.company, p.user).await?,
        )
        .unwrap_or(0),
        required: required(&state, &account).await?,
    }))
}

/// Start setting up an authenticator app: scan the QR code, then confirm
/// with a code. Starting again replaces an unconfirmed setup.
#[utoipa::path(post, path = "/api/v1/auth/second-factor/totp", tag = "auth",
    responses((status = 200, body = TotpEnrolment),
        (status = 409, description = "An authenticator app is already set up", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn totp_begin(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
) -> ApiResult<Json<TotpEnrolment>> {
    let p = &caller.principal;
    if state
        .store
        .totp_factor(p.company, p.user)
        .await?
        .is_some_and(|f| f.confirmed)
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "an authenticator app is already set up; ask an administrator to reset it to set up another",
        ));
    }
    let secret = totp::new_secret()?;
    use base64::Engine;
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&secret[..]));
    let sealed = seal(
        &state,
        p.company,
        &p.company_code,
        p.user,
        "totp_secret",
        &b64,
    )
    .await?;
    state
        .store
        .begin_totp(p.company, p.user, &sealed, state.clock.now())
        .await?;
    let issuer = format!("Strongroom {}", p.company_code);
    let uri = totp::otpauth_uri(&secret, &issuer, &p.user_id)?;
    let qr_svg = totp::qr_svg(&uri)?;
    audit::record(
        &state,
        &caller,
        &client,
        "second_factor.totp_begin",
        &format!("user/{}", p.user_id),
        serde_json::json!({}),
    )
    .await?;
    Ok(Json(TotpEnrolment {
        otpauth_uri: uri,
        secret: totp::secret_base32(&secret),
        qr_svg,
    }))
}

/// Lifts an enrolment restriction from the caller's session once a factor
/// is set up.
pub async fn enrolled(state: &AppState, caller: &Caller) -> ApiResult<()> {
    if let Some(s) = &caller.session {
        if s.restriction == Restriction::Enrol {
            state
                .store
                .set_session_restriction(&caller.token_hash, Restriction::None)
                .await?;
        }
    }
    Ok(())
}

/// Confirm the authenticator app with a first code. Answers with ten
/// single-use recovery codes, shown this once.
#[utoipa::path(post, path = "/api/v1/auth/second-factor/totp/confirm", tag = "auth",
    request_body = TotpCode,
    responses((status = 200, body = RecoveryCodes),
        (status = 400, description = "The code is not right", body = ErrorBody),
        (status = 409, description = "No setup in progress", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn totp_confirm(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    ApiJson(req): ApiJson<TotpCode>,
) -> ApiResult<Json<RecoveryCodes>> {
    let p = &caller.principal;
    let target = format!("user/{}", p.user_id);
    let Some(f) = state
        .store
        .totp_factor(p.company, p.user)
        .await?
        .filter(|f| !f.confirmed)
    else {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "no authenticator app setup is in progress; start one with POST /api/v1/auth/second-factor/totp",
        ));
    };
    let secret = totp_secret(&state, p.company, &p.company_code, p.user, &f.sealed_secret).await?;
    let now = state.clock.now();
    let (codes, hashes) = new_codes(&state, p.company, p.user).await?;
    let ok = match totp::matching_step(&secret, &req.code, now.timestamp()) {
        Some(step) => {
            state
                .store
                .accept_totp_step(p.company, p.user, step, Some(&hashes))
                .await?
        }
        None => false,
    };
    if !ok {
        return Err(audit::refused(
            &state,
            &caller,
            &client,
            "second_factor.enrol",
            &target,
            ApiError::new(
                ErrorCode::ValidationFailed,
                "that code is not right; check the time on your device and enter the current code",
            ),
        )
        .await);
    }
    enrolled(&state, &caller).await?;
    audit::record(
        &state,
        &caller,
        &client,
        "second_factor.enrol",
        &target,
        serde_json::json!({ "method": "totp", "recovery_codes": codes.len() }),
    )
    .await?;
    Ok(Json(show(codes)))
}

/// Replace your recovery codes (the old ones stop working). Needs a
/// current code from the authenticator app.
#[utoipa::path(post, path = "/api/v1/auth/second-factor/recovery-codes", tag = "auth",
    request_body = TotpCode,
    responses((status = 200, body = RecoveryCodes), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn renew_codes(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    ApiJson(req): ApiJson<TotpCode>,
) -> ApiResult<Json<RecoveryCodes>> {
    let p = &caller.principal;
    let target = format!("user/{}", p.user_id);
    let account = state
        .store
        .login_account_by_key(p.company, p.user)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    let checked = check_totp(&state, &account, &req.code, state.clock.now().timestamp()).await?;
    if checked.is_err() {
        return Err(audit::refused(
            &state,
            &caller,
            &client,
            "second_factor.recovery_codes_renew",
            &target,
            ApiError::new(
                ErrorCode::ValidationFailed,
                "a current, unused code from your authenticator app is needed",
            ),
        )
        .await);
    }
    let (codes, hashes) = new_codes(&state, p.company, p.user).await?;
    state
        .store
        .replace_recovery_codes(p.company, p.user, &hashes)
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "second_factor.recovery_codes_renew",
        &target,
        serde_json::json!({ "recovery_codes": codes.len() }),
    )
    .await?;
    Ok(Json(show(codes)))
}

/// Remove a user's second factors (administrators), e.g. after a lost
/// phone. Ends the user's sessions; if the policy requires a second factor
/// the user sets up a new one at next sign-in.
#[utoipa::path(delete, path = "/api/v1/users/{user_id}/second-factor", tag = "users",
    params(("user_id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn reset(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
) -> ApiResult<StatusCode> {
    let what = format!("user/{}", user_id.chars().take(64).collect::<String>());
    let (auth, mine) = crate::access::require_profiled(
        &state,
        &caller,
        &client,
        "user.second_factor_reset",
        &what,
    )
    .await?;
    let target = crate::admin::target_user(&state, &auth, &user_id).await?;
    crate::access::check_target(
        &state,
        &caller,
        &client,
        &mine,
        "user.second_factor_reset",
        &what,
        &target,
    )
    .await?;
    state
        .store
        .reset_second_factors(auth.company(), target.key)
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "user.second_factor_reset",
        &what,
        serde_json::json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user's sign-in settings (administrators): second factor required,
/// password change at next sign-in, idle timeout.
#[utoipa::path(put, path = "/api/v1/users/{user_id}/sign-in", tag = "users",
    params(("user_id" = String, Path)),
    request_body = strongroom_proto::UserSignInSettings,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn user_settings(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(user_id): Path<String>,
    ApiJson(req): ApiJson<strongroom_proto::UserSignInSettings>,
) -> ApiResult<StatusCode> {
    let what = format!("user/{}", user_id.chars().take(64).collect::<String>());
    let (auth, mine) =
        crate::access::require_profiled(&state, &caller, &client, "user.sign_in_settings", &what)
            .await?;
    let target = crate::admin::target_user(&state, &auth, &user_id).await?;
    crate::access::check_target(
        &state,
        &caller,
        &client,
        &mine,
        "user.sign_in_settings",
        &what,
        &target,
    )
    .await?;
    let idle = match req.idle_timeout_minutes {
        None => None,
        Some(0) => Some(None),
        Some(m) if strongroom_core::session::IDLE_MINUTES.contains(&m) => Some(Some(i64::from(m))),
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::ValidationFailed,
                "idle_timeout_minutes is 10 to 1440, or 0 for the company default",
            ))
        }
    };
    state
        .store
        .set_user_sign_in(
            auth.company(),
            target.key,
            req.two_factor_required,
            req.must_change_password,
            idle,
        )
        .await?;
    if req.must_change_password == Some(true) {
        // The change is due now, not at the next sign-in of a new session.
        state
            .store
            .end_sessions_of(auth.company(), target.key)
            .await?;
    }
    audit::record(
        &state,
        &caller,
        &client,
        "user.sign_in_settings",
        &what,
        serde_json::to_value(&req).unwrap_or_default(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
