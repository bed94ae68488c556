//! Sign-in security from the outside: two-step verification (TOTP,
//! recovery codes, passkeys) and its policy, lockout and its growth,
//! per-address throttling, password age and forced change, per-user
//! password rules, deny lists, per-user idle timeouts, and API keys that
//! obey the same rules as sessions. Runs over SQLite and PostgreSQL, with
//! an injected clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::Duration;
use reqwest::Method;
use serde_json::json;
use strongroom_core::clock::Clock;
use strongroom_crypto::totp;
use strongroom_proto::*;
use strongroom_testkit::client::{Client, LoginStep};
use strongroom_testkit::{add_record, new_user, send_json as send, Options, TestServer, PASSWORD};

async fn challenge(srv: &TestServer, company: &str, user: &str) -> SecondFactorChallenge {
    match srv
        .client()
        .begin_login(company, user, PASSWORD)
        .await
        .unwrap()
    {
        LoginStep::SecondFactor(c) => c,
        LoginStep::SignedIn(..) => panic!("{user} signed in without a second factor"),
    }
}

fn answer(challenge: &str) -> SecondFactorAnswer {
    SecondFactorAnswer {
        challenge: challenge.into(),
        code: None,
        recovery_code: None,
        passkey: None,
    }
}

fn now(srv: &TestServer) -> i64 {
    srv.clock.now().timestamp()
}

/// PUTs `body` at `path` as `c`, which must succeed.
async fn put_ok(c: &Client, path: &str, body: serde_json::Value) {
    let r = send(c, Method::PUT, path, body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

async fn with_user(srv: &TestServer, admin: &Client, id: &str, is_admin: bool) {
    admin.create_user(&new_user(id, is_admin)).await.unwrap();
    let _ = srv;
}

// ----- TOTP ------------------------------------------------------------------

#[tokio::test]
async fn totp_enrolment_and_two_step_sign_in() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    with_user(&srv, &admin, "ann", false).await;
    let ann = srv.sign_in("ACME", "ann").await;

    // Enrolment: an otpauth URI and a QR code; nothing is on until confirmed.
    let e = ann.totp_begin().await.unwrap();
    assert!(
        e.otpauth_uri.starts_with("otpauth://totp/"),
        "{}",
        e.otpauth_uri
    );
    assert!(e.otpauth_uri.contains("issuer=Strongroom"));
    assert!(e.qr_svg.starts_with("<svg"));
    let secret = totp::base32_decode(&e.secret).unwrap();
    assert!(!ann.second_factor_status().await.unwrap().totp);
    let wrong = ann.totp_confirm("000000").await.unwrap_err();
    assert_eq!(wrong.status(), Some(400));
    let code = totp::code_at(&secret, now(&srv)).unwrap();
    let codes = ann.totp_confirm(&code).await.unwrap().codes;
    assert_eq!(codes.len(), 10);
    let st = ann.second_factor_status().await.unwrap();
    assert!(st.totp);
    assert_eq!(st.recovery_codes_left, 10);
    // The secret is not stored readably, nor the recovery codes.
    let raw = srv.raw_storage().await;
    let hay = String::from_utf8_lossy(&raw);
    assert!(
        !hay.contains(&e.secret),
        "TOTP secret in clear in the store"
    );
    assert!(
        !hay.contains(&codes[0]),
        "recovery code in clear in the store"
    );

    // The password alone gives a challenge, not a session. (Enrolment used
    // this step's code; the clock moves on three steps.)
    srv.clock.advance(Duration::seconds(90));
    let ch = challenge(&srv, "ACME", "ann").await;
    assert_eq!(ch.methods, vec!["totp", "recovery_code"]);
    let as_token = srv.client().with_token(&ch.challenge);
    assert_eq!(as_token.session().await.unwrap_err().status(), Some(401));
    assert_eq!(
        srv.last_event("ACME", "auth.password").await.outcome,
        strongroom_core::audit::Outcome::Success
    );

    // A wrong code is refused and recorded.
    let mut a = answer(&ch.challenge);
    a.code = Some("123456".into());
    let e1 = srv.client().second_factor(&a).await.unwrap_err();
    assert_eq!(e1.code(), Some(ErrorCode::SignInFailed));
    let ev = srv.last_event("ACME", "auth.second_factor").await;
    assert_eq!(ev.reason.as_deref(), Some("bad_code"));

    // One step of clock drift is tolerated: the previous step's code works.
    a.code = Some(totp::code_at(&secret, now(&srv) - 30).unwrap());
    let (ann2, resp) = srv.client().second_factor(&a).await.unwrap();
    assert_eq!(resp.restriction, None);
    ann2.session().await.unwrap();
    let ok = srv.last_event("ACME", "auth.login").await;
    assert!(ok.detail.contains("totp"), "{}", ok.detail);
    // The challenge is spent.
    assert!(srv.client().second_factor(&a).await.is_err());

    // Replay: the same code (same step) on a fresh challenge is refused.
    let ch = challenge(&srv, "ACME", "ann").await;
    let mut a = answer(&ch.challenge);
    a.code = Some(totp::code_at(&secret, now(&srv) - 30).unwrap());
    let e2 = srv.client().second_factor(&a).await.unwrap_err();
    assert!(e2.to_string().contains("already used"), "{e2}");
    assert_eq!(
        srv.last_event("ACME", "auth.second_factor")
            .await
            .reason
            .as_deref(),
        Some("code_reused")
    );
    // Two steps away is too far.
    a.code = Some(totp::code_at(&secret, now(&srv) + 60).unwrap());
    assert!(srv.client().second_factor(&a).await.is_err());
    // The current step's code is accepted.
    a.code = Some(totp::code_at(&secret, now(&srv)).unwrap());
    srv.client().second_factor(&a).await.unwrap();

    // Recovery codes: single use, audited, counting down.
    let ch = challenge(&srv, "ACME", "ann").await;
    let mut a = answer(&ch.challenge);
    a.recovery_code = Some(codes[3].to_lowercase());
    let (ann3, _) = srv.client().second_factor(&a).await.unwrap();
    let used = srv.last_event("ACME", "auth.recovery_code_used").await;
    assert!(used.detail.contains("\"remaining\":9"), "{}", used.detail);
    assert_eq!(
        ann3.second_factor_status()
            .await
            .unwrap()
            .recovery_codes_left,
        9
    );
    let ch = challenge(&srv, "ACME", "ann").await;
    let mut a = answer(&ch.challenge);
    a.recovery_code = Some(codes[3].clone());
    assert!(srv.client().second_factor(&a).await.is_err());
    assert_eq!(
        srv.last_event("ACME", "auth.second_factor")
            .await
            .reason
            .as_deref(),
        Some("bad_recovery_code")
    );

    // Exactly one answer is required.
    let mut a = answer(&ch.challenge);
    a.code = Some("1".into());
    a.recovery_code = Some("2".into());
    assert_eq!(
        srv.client().second_factor(&a).await.unwrap_err().status(),
        Some(400)
    );
}

#[tokio::test]
async fn too_many_wrong_codes_void_the_challenge_and_count_towards_lockout() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    with_user(&srv, &admin, "ann", false).await;
    let ann = srv.sign_in("ACME", "ann").await;
    srv.enrol_totp("ACME", "ann", &ann).await;
    let ch = challenge(&srv, "ACME", "ann").await;
    let mut a = answer(&ch.challenge);
    a.code = Some("000001".into());
    for _ in 0..5 {
        let _ = srv.client().second_factor(&a).await;
    }
    // Five wrong codes reached the lockout threshold: the account is locked,
    // so even the right answer on a new challenge fails at the password step.
    let e = srv
        .client()
        .begin_login("ACME", "ann", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::SignInFailed));
    assert_eq!(
        srv.last_event("ACME", "auth.login").await.reason.as_deref(),
        Some("account_locked")
    );
    let lock = srv.last_event("ACME", "account.lock").await;
    assert_eq!(lock.reason.as_deref(), Some("too_many_failures"));
}

// ----- policy ------------------------------------------------------------------

#[tokio::test]
async fn policy_limits_unenrolled_users_to_enrolment() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    with_user(&srv, &admin, "boss", true).await;
    with_user(&srv, &admin, "clerk", false).await;
    // The master alone in its company signed in with a password; now that
    // there are other users, the master needs a second factor too.
    let (master, r) = srv
        .client()
        .login("ACME", "master", PASSWORD)
        .await
        .unwrap();
    assert_eq!(r.restriction.as_deref(), Some("enrol_second_factor"));
    let e = master.users().await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::SecondFactorEnrolmentRequired));
    let master = {
        srv.enrol_totp("ACME", "master", &master).await;
        master
    };
    master.users().await.expect("enrolled: restriction lifted");

    let mut policy = master.sign_in_policy().await.unwrap();
    assert_eq!(policy.two_factor, "off");
    policy.two_factor = "admins".into();
    master.set_sign_in_policy(&policy).await.unwrap();
    assert_eq!(
        srv.last_event("ACME", "sign_in_policy.update")
            .await
            .outcome,
        strongroom_core::audit::Outcome::Success
    );

    // A clerk is not affected; an administrator must enrol first.
    let (_, r) = srv.client().login("ACME", "clerk", PASSWORD).await.unwrap();
    assert_eq!(r.restriction, None);
    let (boss, r) = srv.client().login("ACME", "boss", PASSWORD).await.unwrap();
    assert_eq!(r.restriction.as_deref(), Some("enrol_second_factor"));
    let e = boss.list_records("customer", &[]).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert_eq!(e.code(), Some(ErrorCode::SecondFactorEnrolmentRequired));
    boss.session()
        .await
        .expect("a restricted session may see itself");
    assert!(boss.second_factor_status().await.unwrap().required);

    // "selected": only marked users.
    policy.two_factor = "selected".into();
    master.set_sign_in_policy(&policy).await.unwrap();
    master
        .set_user_sign_in(
            "clerk",
            &UserSignInSettings {
                two_factor_required: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (_, r) = srv.client().login("ACME", "clerk", PASSWORD).await.unwrap();
    assert_eq!(r.restriction.as_deref(), Some("enrol_second_factor"));
    let (_, r) = srv.client().login("ACME", "boss", PASSWORD).await.unwrap();
    assert_eq!(r.restriction, None);

    // A bad policy value is refused with what to do.
    policy.two_factor = "sometimes".into();
    let e = master.set_sign_in_policy(&policy).await.unwrap_err();
    assert!(
        e.to_string().contains("off, admins, all or selected"),
        "{e}"
    );
}

#[tokio::test]
async fn an_admin_reset_removes_the_factors_and_ends_sessions() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    with_user(&srv, &admin, "ann", false).await;
    let ann = srv.sign_in("ACME", "ann").await;
    srv.enrol_totp("ACME", "ann", &ann).await;
    let r = send(
        &admin,
        Method::DELETE,
        "/api/v1/users/ann/second-factor",
        json!({}),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(ann.session().await.unwrap_err().status(), Some(401));
    let (ann, r) = srv.client().login("ACME", "ann", PASSWORD).await.unwrap();
    assert_eq!(
        r.restriction, None,
        "no factor and not required: password only"
    );
    assert!(!ann.second_factor_status().await.unwrap().totp);
    srv.last_event("ACME", "user.second_factor_reset").await;
    // A clerk may not reset anyone.
    let r = send(
        &ann,
        Method::DELETE,
        "/api/v1/users/master/second-factor",
        json!({}),
    )
    .await;
    assert_eq!(r.status, 403);
}

// ----- passkeys ----------------------------------------------------------------

#[tokio::test]
async fn passkey_registration_and_sign_in_with_a_software_authenticator() {
    use webauthn_authenticator_rs::softpasskey::SoftPasskey;
    use webauthn_authenticator_rs::WebauthnAuthenticator;
    let origin = "https://records.example.test";
    let srv = TestServer::start_with(Options::with(&[("PUBLIC_ORIGIN", origin)])).await;
    let admin = srv.company_master("ACME").await;
    with_user(&srv, &admin, "ann", false).await;
    let ann = srv.sign_in("ACME", "ann").await;
    let url = url::Url::parse(origin).unwrap();
    let mut authenticator = SoftPasskey::new(true);

    let r = send(
        &ann,
        Method::POST,
        "/api/v1/auth/second-factor/passkeys/begin",
        json!({"label": "laptop"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let start: PasskeyRegistrationStart = serde_json::from_slice(&r.body).unwrap();
    let cred = authenticator
        .do_registration(
            url.clone(),
            serde_json::from_value(start.options.clone()).unwrap(),
        )
        .unwrap();
    let r = send(
        &ann,
        Method::POST,
        "/api/v1/auth/second-factor/passkeys/finish",
        json!({"challenge": start.challenge, "credential": cred}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let reg: PasskeyRegistered = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(reg.recovery_codes.as_ref().map(Vec::len), Some(10));
    assert_eq!(ann.second_factor_status().await.unwrap().passkeys, 1);

    // Sign-in now asks for the passkey.
    let ch = challenge(&srv, "ACME", "ann").await;
    assert!(ch.methods.contains(&"passkey".to_owned()));
    let options = ch.passkey_options.clone().unwrap();
    let assertion = authenticator
        .do_authentication(url.clone(), serde_json::from_value(options).unwrap())
        .unwrap();
    let mut a = answer(&ch.challenge);
    a.passkey = Some(serde_json::to_value(&assertion).unwrap());
    let (ann2, _) = srv.client().second_factor(&a).await.unwrap();
    ann2.session().await.unwrap();
    assert!(srv
        .last_event("ACME", "auth.login")
        .await
        .detail
        .contains("passkey"));

    // The same assertion does not open another challenge.
    let ch2 = challenge(&srv, "ACME", "ann").await;
    let mut a2 = answer(&ch2.challenge);
    a2.passkey = Some(serde_json::to_value(&assertion).unwrap());
    assert!(srv.client().second_factor(&a2).await.is_err());
    assert_eq!(
        srv.last_event("ACME", "auth.second_factor")
            .await
            .reason
            .as_deref(),
        Some("bad_passkey")
    );
    // An assertion made for another origin is refused.
    let mut other = SoftPasskey::new(true);
    let bad = other.do_authentication(
        url::Url::parse("https://evil.example.test").unwrap(),
        serde_json::from_value(ch2.passkey_options.clone().unwrap()).unwrap(),
    );
    if let Ok(bad) = bad {
        let ch3 = challenge(&srv, "ACME", "ann").await;
        let mut a3 = answer(&ch3.challenge);
        a3.passkey = Some(serde_json::to_value(&bad).unwrap());
        assert!(srv.client().second_factor(&a3).await.is_err());
    }
}

// ----- lockout ---------------------------------------------------------------------

/// A server with ACME's user "ann", where one address may try many
/// sign-ins a minute (the per-address sign-in rate lifted).
async fn ann_signing_in_often() -> TestServer {
    let srv =
        TestServer::start_with(Options::with(&[("LOGIN_RATE_PER_IP_PER_MINUTE", "1000")])).await;
    let admin = srv.company_master("ACME").await;
    with_user(&srv, &admin, "ann", false).await;
    srv
}

#[tokio::test]
async fn lockout_grows_with_each_lockout_and_can_wait_for_an_admin() {
    let srv = ann_signing_in_often().await;
    let fail = |n: usize| {
        let c = srv.client();
        async move {
            for _ in 0..n {
                assert!(c.login("ACME", "ann", "not her password").await.is_err());
            }
        }
    };
    // Four failures: not yet.
    fail(4).await;
    srv.client().login("ACME", "ann", PASSWORD).await.unwrap();
    // The success cleared the count; five in a row lock for 15 minutes.
    fail(5).await;
    let lock = srv.last_event("ACME", "account.lock").await;
    assert!(lock.detail.contains("\"lockout\":1"), "{}", lock.detail);
    assert!(srv.client().login("ACME", "ann", PASSWORD).await.is_err());
    srv.clock.advance(Duration::minutes(14));
    assert!(srv.client().login("ACME", "ann", PASSWORD).await.is_err());
    srv.clock.advance(Duration::minutes(2));
    // After the lock, five more failures lock for twice as long: 30 minutes.
    fail(5).await;
    let lock = srv.last_event("ACME", "account.lock").await;
    assert!(lock.detail.contains("\"lockout\":2"), "{}", lock.detail);
    srv.clock.advance(Duration::minutes(29));
    assert!(srv.client().login("ACME", "ann", PASSWORD).await.is_err());
    srv.clock.advance(Duration::minutes(2));
    srv.client().login("ACME", "ann", PASSWORD).await.unwrap();

    // "Until unlocked": time does not help, an administrator does.
    let admin = srv.sign_in("ACME", "master").await;
    let mut p = admin.sign_in_policy().await.unwrap();
    p.lockout_until_unlocked = true;
    p.lockout_threshold = 3;
    admin.set_sign_in_policy(&p).await.unwrap();
    fail(3).await;
    srv.clock.advance(Duration::days(30));
    // Refreshed after the clock jump (the admin's session idled out).
    let admin = srv.sign_in("ACME", "master").await;
    assert!(srv.client().login("ACME", "ann", PASSWORD).await.is_err());
    let r = send(&admin, Method::POST, "/api/v1/users/ann/unlock", json!({})).await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    srv.client().login("ACME", "ann", PASSWORD).await.unwrap();
}

#[tokio::test]
async fn lock_state_lives_in_the_store_for_every_node() {
    // A second server on the same store sees the counts and the lock.
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    with_user(&srv, &admin, "ann", false).await;
    for _ in 0..5 {
        let _ = srv.client().login("ACME", "ann", "wrong wrong wrong").await;
    }
    let company = srv.company_id("ACME").await;
    let ann = srv.store().user(company, "ann").await.unwrap().unwrap();
    assert!(srv
        .store()
        .account_locked_until(company, ann.key, srv.clock.now())
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn one_address_cannot_spray_many_accounts() {
    let srv = TestServer::start_with(Options::with(&[("TRUSTED_PROXIES", "127.0.0.1")])).await;
    let admin = srv.company_master("ACME").await.forwarded_for("192.0.2.10");
    let mut p = admin.sign_in_policy().await.unwrap();
    p.address_threshold = 6;
    admin.set_sign_in_policy(&p).await.unwrap();
    for u in ["u1", "u2", "u3"] {
        admin.create_user(&new_user(u, false)).await.unwrap();
    }
    let sprayer = srv.client().forwarded_for("198.51.100.7");
    for u in ["u1", "u2", "u3", "u1", "u2", "u3"] {
        let _ = sprayer.login("ACME", u, "Winter2026!winter").await;
    }
    // The sixth failure blocked the address: the right password of another
    // account is refused before any hash is computed.
    let before = srv.state.hashing.verifications();
    let e = sprayer.login("ACME", "master", PASSWORD).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert_eq!(srv.state.hashing.verifications(), before);
    let ev = srv.last_event("ACME", "address.block").await;
    assert_eq!(ev.client_ip.as_deref(), Some("198.51.100.7"));
    // No account was locked by it (two failures each), other addresses pass.
    srv.client()
        .forwarded_for("192.0.2.11")
        .login("ACME", "u1", PASSWORD)
        .await
        .unwrap();
    // The block ends on time.
    srv.clock.advance(Duration::minutes(16));
    sprayer.login("ACME", "u2", PASSWORD).await.unwrap();
}

// ----- passwords ---------------------------------------------------------------------

#[tokio::test]
async fn password_expiry_forced_change_and_minimum_age() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    with_user(&srv, &admin, "ann", false).await;
    // The master keeps rules of its own without expiry (per-user rules).
    put_ok(
        &admin,
        "/api/v1/users/master/password-rules",
        json!({"min_length": 12, "min_score": 3, "require_classes": 0, "history": 0}),
    )
    .await;
    put_ok(
        &admin,
        "/api/v1/security/password-rules",
        json!({"min_length": 12, "min_score": 3, "require_classes": 0, "history": 3,
               "max_age_days": 90, "warn_days": 14, "min_age_days": 1}),
    )
    .await;

    // Within the warning period sign-in says when the password expires.
    srv.clock.advance(Duration::days(80));
    let (_, r) = srv.client().login("ACME", "ann", PASSWORD).await.unwrap();
    assert!(r.password_expires_at.is_some());
    assert_eq!(r.restriction, None);
    // Expired: the session may only change the password.
    srv.clock.advance(Duration::days(11));
    let (ann, r) = srv.client().login("ACME", "ann", PASSWORD).await.unwrap();
    assert_eq!(r.restriction.as_deref(), Some("change_password"));
    let e = ann.list_records("customer", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PasswordChangeRequired));
    let change = |c: &Client, cur: &str, new: &str| {
        let c = c.clone();
        let body = json!({"current_password": cur, "new_password": new});
        async move { send(&c, Method::POST, "/api/v1/auth/password", body).await }
    };
    let r = change(&ann, PASSWORD, "lantern quartz meadow ferry").await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let (ann, r) = srv
        .client()
        .login("ACME", "ann", "lantern quartz meadow ferry")
        .await
        .unwrap();
    assert_eq!(r.restriction, None);
    ann.list_records("customer", &[]).await.unwrap();
    // Minimum age: not again on the same day.
    let r = change(
        &ann,
        "lantern quartz meadow ferry",
        "copper willow harbour drum",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("too recently"));

    // An administrator's reset must be changed at next sign-in, and the
    // minimum age does not stand in the way of that.
    let admin = srv.sign_in("ACME", "master").await;
    admin
        .set_password("ann", "temporary gate ticket 7")
        .await
        .unwrap();
    let (ann, r) = srv
        .client()
        .login("ACME", "ann", "temporary gate ticket 7")
        .await
        .unwrap();
    assert_eq!(r.restriction.as_deref(), Some("change_password"));
    // History: the last passwords may not come back.
    let r = change(
        &ann,
        "temporary gate ticket 7",
        "lantern quartz meadow ferry",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("used recently"));
    let r = change(
        &ann,
        "temporary gate ticket 7",
        "copper willow harbour drum",
    )
    .await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let (_, r) = srv
        .client()
        .login("ACME", "ann", "copper willow harbour drum")
        .await
        .unwrap();
    assert_eq!(r.restriction, None);

    // An admin can also demand a change of the current password.
    admin
        .set_user_sign_in(
            "ann",
            &UserSignInSettings {
                must_change_password: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (_, r) = srv
        .client()
        .login("ACME", "ann", "copper willow harbour drum")
        .await
        .unwrap();
    assert_eq!(r.restriction.as_deref(), Some("change_password"));
}

#[tokio::test]
async fn a_user_can_have_rules_of_their_own() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    with_user(&srv, &admin, "ann", false).await;
    with_user(&srv, &admin, "bob", false).await;
    put_ok(
        &admin,
        "/api/v1/users/ann/password-rules",
        json!({"min_length": 24, "min_score": 3, "require_classes": 0, "history": 0}),
    )
    .await;
    let e = admin
        .set_password_with("ann", "lantern quartz meadow", false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("at least 24"), "{e}");
    admin
        .set_password_with("bob", "lantern quartz meadow", false)
        .await
        .unwrap();
    // Back to the company's rules.
    let r = send(
        &admin,
        Method::DELETE,
        "/api/v1/users/ann/password-rules",
        json!({}),
    )
    .await;
    assert_eq!(r.status, 204);
    admin
        .set_password_with("ann", "lantern quartz meadow", false)
        .await
        .unwrap();
    let r = admin
        .raw_get("/api/v1/users/ann/password-rules")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn the_operators_deny_list_applies_to_every_new_password() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("pwned.txt");
    // One plain entry and one SHA-1 in the Pwned Passwords format.
    let sha1 = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        b"velvet otter sings loudly",
    );
    std::fs::write(
        &list,
        format!(
            "# test list\nmarble canyon echo drift\n{}:42\n",
            hex::encode_upper(sha1.as_ref())
        ),
    )
    .unwrap();
    let srv = TestServer::start_with(Options::with(&[(
        "PASSWORD_DENY_LIST",
        list.to_str().unwrap(),
    )]))
    .await;
    let admin = srv.company_master("ACME").await;
    for bad in ["Marble Canyon Echo Drift", "velvet otter sings loudly"] {
        let mut u = new_user("ann", false);
        u.password = bad.into();
        let e = admin.create_user(&u).await.unwrap_err();
        assert!(e.to_string().contains("breached"), "{bad}: {e}");
    }
    let mut u = new_user("ann", false);
    u.password = "velvet otter sings softly".into();
    admin.create_user(&u).await.unwrap();
}

// ----- sessions ------------------------------------------------------------------------

#[tokio::test]
async fn idle_timeout_per_user_and_per_company() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    with_user(&srv, &admin, "ann", false).await;
    with_user(&srv, &admin, "bob", false).await;
    put_ok(
        &admin,
        "/api/v1/security/session-policy",
        json!({"max_sessions_per_user": 0, "when_full": "refuse_new", "idle_timeout_minutes": 60}),
    )
    .await;
    admin
        .set_user_sign_in(
            "ann",
            &UserSignInSettings {
                idle_timeout_minutes: Some(10),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let bad = admin
        .set_user_sign_in(
            "bob",
            &UserSignInSettings {
                idle_timeout_minutes: Some(5),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("10 to 1440"), "{bad}");
    let ann = srv.sign_in("ACME", "ann").await;
    let bob = srv.sign_in("ACME", "bob").await;
    srv.clock.advance(Duration::minutes(11));
    assert_eq!(ann.session().await.unwrap_err().status(), Some(401));
    let ended = srv.last_event("ACME", "session.end").await;
    assert_eq!(ended.reason.as_deref(), Some("idle_timeout"));
    // Bob follows the company's 60 minutes.
    srv.clock.advance(Duration::minutes(40));
    bob.session().await.unwrap();
    srv.clock.advance(Duration::minutes(61));
    assert_eq!(bob.session().await.unwrap_err().status(), Some(401));
}

// ----- API keys ------------------------------------------------------------------------

#[tokio::test]
async fn api_keys_obey_scopes_ip_rules_hours_and_revocation() {
    let srv = TestServer::start_with(Options::with(&[("TRUSTED_PROXIES", "127.0.0.1")])).await;
    let admin = srv.company_master("ACME").await.forwarded_for("192.0.2.10");
    admin.create_user(&new_user("erp", false)).await.unwrap();
    let erp = srv.sign_in("ACME", "erp").await;
    let rec = add_record(&erp, "customer", json!({"name": "Acme Ltd"})).await;

    let created = admin
        .create_api_key(
            "erp",
            &NewApiKeyRequest {
                label: "nightly sync".into(),
                scopes: vec!["records:read".into()],
                expires_in_days: 30,
            },
        )
        .await
        .unwrap();
    assert!(created.key.starts_with("srk_"));
    srv.last_event("ACME", "api_key.create").await;
    let raw = srv.raw_storage().await;
    assert!(
        !String::from_utf8_lossy(&raw).contains(&created.key[4..]),
        "an API key is stored in the clear"
    );
    let key = srv
        .client()
        .with_token(&created.key)
        .forwarded_for("192.0.2.50");

    // Reads work and are audited under the key.
    let got = key.record("customer", &rec.id).await.unwrap();
    assert_eq!(got.id, rec.id);
    let ev = srv.last_event("ACME", "record.read").await;
    assert_eq!(
        ev.session.as_deref(),
        Some(format!("key:{}", created.view.id).as_str())
    );
    // Its last use is shown, noted at most once a minute.
    let last_used = || async {
        let r = send(&admin, Method::GET, "/api/v1/security/api-keys", json!({})).await;
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v[0]["last_used_at"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    };
    let first = srv.clock.now();
    assert_eq!(last_used().await, first);
    srv.clock.advance(Duration::seconds(40));
    key.record("customer", &rec.id).await.unwrap();
    assert_eq!(last_used().await, first, "noted again within the minute");
    srv.clock.advance(Duration::seconds(30));
    key.record("customer", &rec.id).await.unwrap();
    assert_eq!(last_used().await, srv.clock.now());
    // Writes need records:write; nothing but records is open to keys.
    let e = key
        .create_record(
            "customer",
            &CreateRecord {
                data: json!({"name": "X"}).as_object().cloned().unwrap(),
                department: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert!(e.to_string().contains("records:write"), "{e}");
    assert_eq!(key.users().await.unwrap_err().status(), Some(403));
    let r = key
        .raw_get(&format!("/api/v1/records/customer/{}?reveal=all", rec.id))
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert!(String::from_utf8_lossy(&r.body).contains("records:reveal"));
    assert_eq!(key.session().await.unwrap_err().status(), Some(403));

    // The user's IP rules bind the key: a blocked address is refused and
    // the refusal is recorded.
    put_ok(
        &admin,
        "/api/v1/users/erp/ip-rules",
        json!({"rules": [{"kind": "block", "network": "192.0.2.50"}], "force": false}),
    )
    .await;
    let e = key.record("customer", &rec.id).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    let ev = srv.last_event("ACME", "auth.api_key").await;
    assert_eq!(ev.reason.as_deref(), Some("ip_not_allowed"));
    assert_eq!(ev.client_ip.as_deref(), Some("192.0.2.50"));
    let key = key.forwarded_for("192.0.2.51");
    key.record("customer", &rec.id).await.unwrap();

    // Access hours bind it too.
    put_ok(
        &admin,
        "/api/v1/users/erp/access-hours",
        json!({"windows": [], "valid_until": "2020-01-01"}),
    )
    .await;
    let e = key.record("customer", &rec.id).await.unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert_eq!(
        srv.last_event("ACME", "auth.api_key")
            .await
            .reason
            .as_deref(),
        Some("account_expired")
    );
    put_ok(
        &admin,
        "/api/v1/users/erp/access-hours",
        json!({"windows": []}),
    )
    .await;
    key.record("customer", &rec.id).await.unwrap();

    // Disabling the user stops the key at once; so does revocation.
    admin
        .update_user(
            "erp",
            &UpdateUser {
                status: Some(UserStatus::Disabled),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        key.record("customer", &rec.id).await.unwrap_err().status(),
        Some(401)
    );
    admin
        .update_user(
            "erp",
            &UpdateUser {
                status: Some(UserStatus::Active),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    key.record("customer", &rec.id).await.unwrap();
    let r = send(
        &admin,
        Method::DELETE,
        &format!("/api/v1/security/api-keys/{}", created.view.id),
        json!({}),
    )
    .await;
    assert_eq!(r.status, 204);
    let e = key.record("customer", &rec.id).await.unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert_eq!(
        srv.last_event("ACME", "auth.api_key")
            .await
            .reason
            .as_deref(),
        Some("key_revoked")
    );

    // Keys expire.
    let short = admin
        .create_api_key(
            "erp",
            &NewApiKeyRequest {
                label: "short".into(),
                scopes: vec!["records:read".into(), "records:write".into()],
                expires_in_days: 1,
            },
        )
        .await
        .unwrap();
    let short_key = srv
        .client()
        .with_token(&short.key)
        .forwarded_for("192.0.2.51");
    add_record(&short_key, "customer", json!({"name": "By key"})).await;
    srv.clock.advance(Duration::days(1));
    assert_eq!(
        short_key
            .record("customer", &rec.id)
            .await
            .unwrap_err()
            .status(),
        Some(401)
    );
    // Bad requests for keys are refused with what to do.
    let admin = srv.sign_in("ACME", "master").await;
    let e = admin
        .create_api_key(
            "erp",
            &NewApiKeyRequest {
                label: "x".into(),
                scopes: vec!["admin".into()],
                expires_in_days: 1,
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("records:read"), "{e}");
}

#[tokio::test]
async fn a_data_key_rotation_moves_totp_secrets_to_the_new_key() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    with_user(&srv, &admin, "ann", false).await;
    let ann = srv.sign_in("ACME", "ann").await;
    srv.enrol_totp("ACME", "ann", &ann).await;
    let company = srv.company_id("ACME").await;
    let ann_key = srv.store().user(company, "ann").await.unwrap().unwrap().key;
    let sealed = |s: &TestServer| {
        let store = s.store().clone();
        async move {
            store
                .totp_factor(company, ann_key)
                .await
                .unwrap()
                .unwrap()
                .sealed_secret
        }
    };
    let before = sealed(&srv).await;
    assert_eq!(
        strongroom_crypto::envelope::stored_version(&before),
        Some(1)
    );
    let keys = srv.state.keys.clone();
    keys.rotate_data_key(company, "ACME", srv.clock.now())
        .await
        .unwrap();
    let clock = srv.clock.clone();
    strongroom_server::reencrypt::run_pending(srv.store(), &keys, || clock.now(), |_| {})
        .await
        .unwrap();
    let after = sealed(&srv).await;
    assert_eq!(strongroom_crypto::envelope::stored_version(&after), Some(2));
    // And the authenticator app still signs her in.
    srv.clock.advance(Duration::seconds(60));
    srv.sign_in("ACME", "ann").await.session().await.unwrap();
}

#[tokio::test]
async fn a_block_made_by_another_node_applies_at_sign_in_at_once() {
    let srv = TestServer::start_with(Options::with(&[("TRUSTED_PROXIES", "127.0.0.1")])).await;
    srv.company("ACME").await;
    let company = srv.company_id("ACME").await;
    // Another node blocked the address in the shared store; this node has
    // not reloaded its in-memory view.
    srv.store()
        .block_address(
            &strongroom_store::AddressBlock {
                chain: company.0,
                address: "198.51.100.23".into(),
                until: srv.clock.now() + Duration::minutes(15),
                reason: "too_many_failed_sign_ins".into(),
            },
            srv.clock.now(),
        )
        .await
        .unwrap();
    let before = srv.state.hashing.verifications();
    let e = srv
        .client()
        .forwarded_for("198.51.100.23")
        .login("ACME", "master", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert_eq!(
        srv.state.hashing.verifications(),
        before,
        "no hash computed"
    );
    srv.client()
        .forwarded_for("198.51.100.24")
        .login("ACME", "master", PASSWORD)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_successful_sign_in_clears_the_failures_before_it() {
    let srv = ann_signing_in_often().await;
    let c = srv.client();
    // Four failures a round stay under the threshold of five only if each
    // success forgets the failures before it.
    for round in 0..3 {
        for _ in 0..4 {
            assert!(c.login("ACME", "ann", "not her password").await.is_err());
        }
        if let Err(e) = c.login("ACME", "ann", PASSWORD).await {
            panic!("round {round}: the right password was refused: {e:?}");
        }
    }
}

/// Sign-in takes the sign-in policy and the password rules from the
/// node's cache under the company's policy epoch. A change made beneath
/// this server (by another node, a tool, plain SQL) must apply at the next
/// sign-in all the same.
#[tokio::test]
async fn sign_in_rules_changed_beneath_the_server_apply_at_the_next_sign_in() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    with_user(&srv, &admin, "ann", false).await;
    let policy = admin.sign_in_policy().await.unwrap();
    admin.set_sign_in_policy(&policy).await.unwrap();
    put_ok(
        &admin,
        "/api/v1/security/password-rules",
        json!({"min_length": 12, "min_score": 3, "require_classes": 0, "history": 0,
               "max_age_days": 90, "warn_days": 14, "min_age_days": 0}),
    )
    .await;
    let sign_in = || async { srv.client().login("ACME", "ann", PASSWORD).await.unwrap().1 };
    for _ in 0..2 {
        assert_eq!(sign_in().await.restriction, None);
    }

    // Every user must have a second factor now.
    let company = srv.company_id("ACME").await.0;
    let changed = srv
        .raw_sql(&format!(
            "UPDATE sign_in_policy SET two_factor = 'all' WHERE company_id = {company}"
        ))
        .await;
    assert_eq!(changed, 1);
    assert_eq!(
        sign_in().await.restriction.as_deref(),
        Some("enrol_second_factor")
    );
    srv.raw_sql(&format!(
        "UPDATE sign_in_policy SET two_factor = 'off' WHERE company_id = {company}"
    ))
    .await;
    assert_eq!(sign_in().await.restriction, None);

    // Passwords now expire after a day: hers, set today, is fine...
    srv.raw_sql(&format!(
        "UPDATE password_rules SET max_age_days = 1, warn_days = 0 WHERE company_id = {company}"
    ))
    .await;
    assert_eq!(sign_in().await.restriction, None);
    // ...until two days later.
    srv.clock.advance(Duration::days(2));
    assert_eq!(
        sign_in().await.restriction.as_deref(),
        Some("change_password")
    );
    // A rule of her own, without expiry, wins over the company's.
    srv.raw_sql(&format!(
        "INSERT INTO user_password_rules (company_id, user_key, min_length, min_score, \
         require_classes, history, max_age_days, warn_days, min_age_days) \
         SELECT company_id, id, 12, 3, 0, 0, 0, 0, 0 FROM users \
         WHERE company_id = {company} AND user_id = 'ann'"
    ))
    .await;
    assert_eq!(sign_in().await.restriction, None);
}
