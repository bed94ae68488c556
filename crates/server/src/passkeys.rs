//! Passkeys (WebAuthn, through `webauthn-rs`) as a second factor: register
//! one while signed in, then answer the sign-in challenge with it. The
//! stored credential is sealed with the company's data key; the ceremony
//! state waits in the challenge table, bound to the user, for a few
//! minutes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Duration;
use strongroom_core::{CompanyId, UserKey};
use strongroom_crypto::token;
use strongroom_proto::{
    ErrorBody, ErrorCode, PasskeyBegin, PasskeyRegistered, PasskeyRegistrationFinish,
    PasskeyRegistrationStart,
};
use strongroom_store::PasskeyRow;
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Uuid,
};
use webauthn_rs::{Webauthn, WebauthnBuilder};

use crate::audit;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ClientInfo};
use crate::second_factor::{open, seal};
use crate::state::AppState;

/// The relying party: the public origin's host name.
pub fn build(origin: &url::Url) -> anyhow::Result<Webauthn> {
    let rp_id = origin
        .domain()
        .ok_or_else(|| anyhow::anyhow!("public_origin needs a host name for passkeys"))?;
    WebauthnBuilder::new(rp_id, origin)
        .and_then(|b| b.rp_name("Strongroom").build())
        .map_err(|e| anyhow::anyhow!("public_origin {origin} cannot be used for passkeys: {e}"))
}

/// A stable WebAuthn user handle that reveals nothing about the user.
fn user_handle(company: CompanyId, user: UserKey) -> Uuid {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("strongroom/webauthn-user/{}/{}", company.0, user.0).as_bytes(),
    );
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    Uuid::from_bytes(b)
}

async fn unseal_all(
    state: &AppState,
    company: CompanyId,
    company_code: &str,
    user: UserKey,
    rows: &[PasskeyRow],
) -> ApiResult<Vec<(i64, Passkey)>> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let json = open(state, company, company_code, user, "passkey", &r.sealed).await?;
        let pk: Passkey = serde_json::from_str(&json)
            .map_err(|e| ApiError::internal(format!("stored passkey does not parse: {e}")))?;
        out.push((r.id, pk));
    }
    Ok(out)
}

/// The options for the browser and the ceremony state to keep.
pub async fn start_authentication(
    state: &AppState,
    company: CompanyId,
    company_code: &str,
    user: UserKey,
    rows: &[PasskeyRow],
) -> ApiResult<(serde_json::Value, serde_json::Value)> {
    let keys: Vec<Passkey> = unseal_all(state, company, company_code, user, rows)
        .await?
        .into_iter()
        .map(|(_, k)| k)
        .collect();
    let (options, ceremony) = state
        .webauthn
        .start_passkey_authentication(&keys)
        .map_err(|e| ApiError::internal(format!("passkey challenge failed: {e}")))?;
    Ok((
        serde_json::to_value(options).map_err(ApiError::internal)?,
        serde_json::to_value(ceremony).map_err(ApiError::internal)?,
    ))
}

/// Checks a passkey assertion against the ceremony; true when it signs
/// for one of the user's passkeys. The passkey's counter is updated.
pub async fn finish_authentication(
    state: &AppState,
    company: CompanyId,
    company_code: &str,
    user: UserKey,
    ceremony: &str,
    credential: serde_json::Value,
) -> ApiResult<bool> {
    let Ok(ceremony) = serde_json::from_str::<PasskeyAuthentication>(ceremony) else {
        // No passkey ceremony was started for this challenge.
        return Ok(false);
    };
    let Ok(credential) = serde_json::from_value::<PublicKeyCredential>(credential) else {
        return Ok(false);
    };
    let result = match state
        .webauthn
        .finish_passkey_authentication(&credential, &ceremony)
    {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, "passkey assertion refused");
            return Ok(false);
        }
    };
    let rows = state.store.passkeys(company, user).await?;
    for (id, mut pk) in unseal_all(state, company, company_code, user, &rows).await? {
        if pk.cred_id() == result.cred_id() {
            if pk.update_credential(&result) == Some(true) {
                let json = serde_json::to_string(&pk).map_err(ApiError::internal)?;
                let sealed = seal(state, company, company_code, user, "passkey", &json).await?;
                state
                    .store
                    .update_passkey(company, id, &sealed, state.clock.now())
                    .await?;
            }
            return Ok(true);
        }
    }
    Ok(false)
}

/// Start registering a passkey.
#[utoipa::path(post, path = "/api/v1/auth/second-factor/passkeys/begin", tag = "auth",
    request_body = PasskeyBegin,
    responses((status = 200, body = PasskeyRegistrationStart), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn register_begin(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<PasskeyBegin>,
) -> ApiResult<Json<PasskeyRegistrationStart>> {
    let p = &caller.principal;
    let label = req.label.trim();
    if label.is_empty() || label.chars().count() > 64 || label.chars().any(char::is_control) {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            "label is 1 to 64 characters, e.g. \"work laptop\"",
        ));
    }
    let existing = state.store.passkeys(p.company, p.user).await?;
    if existing.len() >= 10 {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "you have 10 passkeys, the most allowed; ask an administrator to reset your second factors",
        ));
    }
    let exclude = unseal_all(&state, p.company, &p.company_code, p.user, &existing)
        .await?
        .into_iter()
        .map(|(_, k)| k.cred_id().clone())
        .collect::<Vec<_>>();
    let (options, ceremony) = state
        .webauthn
        .start_passkey_registration(
            user_handle(p.company, p.user),
            &p.user_id,
            &p.user_id,
            Some(exclude),
        )
        .map_err(|e| ApiError::internal(format!("passkey registration failed to start: {e}")))?;
    let new = token::new_token()?;
    let kept = serde_json::json!({ "label": label, "ceremony": ceremony });
    state
        .store
        .create_challenge(
            &new.hash,
            p.company,
            p.user,
            "passkey_registration",
            &kept.to_string(),
            None,
            state.clock.now() + Duration::minutes(crate::second_factor::CHALLENGE_MINUTES),
        )
        .await?;
    Ok(Json(PasskeyRegistrationStart {
        challenge: new.token.to_string(),
        options: serde_json::to_value(options).map_err(ApiError::internal)?,
    }))
}

/// Finish registering a passkey. The first second factor also brings ten
/// recovery codes, shown this once.
#[utoipa::path(post, path = "/api/v1/auth/second-factor/passkeys/finish", tag = "auth",
    request_body = PasskeyRegistrationFinish,
    responses((status = 201, body = PasskeyRegistered), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn register_finish(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    ApiJson(req): ApiJson<PasskeyRegistrationFinish>,
) -> ApiResult<(StatusCode, Json<PasskeyRegistered>)> {
    let p = &caller.principal;
    let target = format!("user/{}", p.user_id);
    let gone = || {
        ApiError::new(
            ErrorCode::ValidationFailed,
            "this passkey registration has expired or is unknown; start again",
        )
    };
    if !token::looks_like_token(&req.challenge) {
        return Err(gone());
    }
    let hash = token::hash_token(&req.challenge);
    let ch = state
        .store
        .challenge_attempt(&hash, state.clock.now())
        .await?
        .filter(|c| {
            c.purpose == "passkey_registration" && c.company == p.company && c.user == p.user
        })
        .ok_or_else(gone)?;
    state.store.delete_challenge(&hash).await?;
    let kept: serde_json::Value = serde_json::from_str(&ch.state).map_err(ApiError::internal)?;
    let label = kept["label"].as_str().unwrap_or("passkey").to_owned();
    let ceremony: PasskeyRegistration =
        serde_json::from_value(kept["ceremony"].clone()).map_err(ApiError::internal)?;
    let refused = |why: String| ApiError::new(ErrorCode::ValidationFailed, why);
    let credential: RegisterPublicKeyCredential = serde_json::from_value(req.credential)
        .map_err(|_| refused("credential is not a WebAuthn registration response".into()))?;
    let passkey = match state
        .webauthn
        .finish_passkey_registration(&credential, &ceremony)
    {
        Ok(k) => k,
        Err(e) => {
            return Err(audit::refused(
                &state,
                &caller,
                &client,
                "second_factor.enrol",
                &target,
                refused(format!("the passkey was not accepted ({e}); start again")),
            )
            .await)
        }
    };
    let first = !crate::second_factor::factors(&state, p.company, p.user)
        .await?
        .any();
    let json = serde_json::to_string(&passkey).map_err(ApiError::internal)?;
    let sealed = seal(&state, p.company, &p.company_code, p.user, "passkey", &json).await?;
    use base64::Engine;
    let cred_id = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode::<&[u8]>(passkey.cred_id().as_ref());
    state
        .store
        .add_passkey(
            p.company,
            p.user,
            &cred_id,
            &label,
            &sealed,
            state.clock.now(),
        )
        .await?;
    let recovery_codes = if first {
        let codes = strongroom_crypto::totp::new_recovery_codes()?;
        let key = state
            .keys
            .current(p.company, strongroom_store::KeyPurpose::Index)
            .await?;
        let hashes: Vec<[u8; 32]> = codes
            .iter()
            .map(|c| strongroom_crypto::totp::recovery_code_hash(&key, &p.user.0.to_string(), c))
            .collect();
        state
            .store
            .replace_recovery_codes(p.company, p.user, &hashes)
            .await?;
        Some(codes.iter().map(|c| c.to_string()).collect())
    } else {
        None
    };
    crate::second_factor::enrolled(&state, &caller).await?;
    audit::record(
        &state,
        &caller,
        &client,
        "second_factor.enrol",
        &target,
        serde_json::json!({ "method": "passkey", "label": label }),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(PasskeyRegistered {
            label,
            recovery_codes,
        }),
    ))
}
