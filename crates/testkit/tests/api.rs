#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The integration suite: the real server over HTTPS on a fresh database,
//! driven through the typed client. Runs over SQLite and PostgreSQL
//! (STRONGROOM_TEST_DATABASE=postgres).

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use strongroom_proto::*;
use strongroom_testkit::client::{Client, ClientError};
use strongroom_testkit::{Options, TestServer, PASSWORD};

fn data(v: Value) -> RecordData {
    v.as_object().expect("object").clone()
}

fn code(e: &ClientError) -> ErrorCode {
    e.code().unwrap_or_else(|| panic!("no error code in {e:?}"))
}

async fn new_record(c: &Client, t: &str, v: Value) -> RecordView {
    strongroom_testkit::add_record(c, t, v).await
}

fn user(id: &str) -> CreateUser {
    CreateUser {
        email: Some(format!("{id}@example.com")),
        ..strongroom_testkit::new_user(id, false)
    }
}

// ----- operations ----------------------------------------------------------

#[tokio::test]
async fn health_metrics_and_openapi_need_no_session() {
    let srv = TestServer::start().await;
    let c = srv.client();
    assert_eq!(c.health().await.unwrap().status, "ok");

    let doc = c.openapi().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/api/v1/auth/login",
        "/api/v1/records/{type}",
        "/api/v1/records/{type}/{id}",
        "/api/v1/records/{type}/{id}/history",
        "/api/v1/records/{type}/{id}/restore",
        "/api/v1/users",
        "/api/v1/departments",
        "/healthz",
    ] {
        assert!(doc["paths"][path].is_object(), "OpenAPI lacks {path}");
    }

    // Metrics count requests by route template, never by raw path.
    let m = c.raw_get("/metrics").await.unwrap();
    assert_eq!(m.status, 200);
    let text = String::from_utf8(m.body).unwrap();
    assert!(text.contains(r#"route="/healthz",status="200""#), "{text}");
    assert!(text.contains("strongroom_http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn metrics_are_refused_to_addresses_outside_metrics_allow() {
    let srv = TestServer::start_with(Options {
        env: vec![("METRICS_ALLOW".into(), "10.0.0.0/8".into())],
    })
    .await;
    let m = srv.client().raw_get("/metrics").await.unwrap();
    assert_eq!(m.status, 403);
    assert_eq!(m.json()["code"], "forbidden");
}

// ----- sign-in -------------------------------------------------------------

#[tokio::test]
async fn sign_in_session_and_sign_out() {
    let srv = TestServer::start().await;
    srv.company("ACME").await;
    let anon = srv.client();

    // Company codes and user IDs are case-insensitive.
    let resp = anon
        .raw(
            Method::POST,
            "/api/v1/auth/login",
            Some("application/json"),
            serde_json::to_vec(&json!({"company": "acme", "user": "MASTER", "password": PASSWORD}))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let cookie = resp.headers["set-cookie"].to_str().unwrap().to_owned();
    for attr in [
        "__Host-strongroom_session=",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(cookie.contains(attr), "cookie lacks {attr}: {cookie}");
    }
    let token = resp.json()["token"].as_str().unwrap().to_owned();
    assert!(cookie.contains(&token));
    let c = anon.with_token(&token);
    let s = c.session().await.unwrap();
    assert_eq!(s.company, "ACME");
    assert_eq!(s.user.user_id, "master");
    assert!(s.user.is_master);

    // The cookie alone also authenticates.
    let by_cookie = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&srv.cert_pem).unwrap())
        .build()
        .unwrap()
        .get(format!("{}/api/v1/auth/session", srv.base_url))
        .header("cookie", format!("__Host-strongroom_session={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), 200);

    // The token is stored only as a hash: no row holds the token itself.
    let hashes = stored_hashes(&srv).await;
    assert!(hashes.contains(&strongroom_crypto::token::hash_token(&token).to_vec()));
    assert!(
        !hashes.iter().any(|h| h.as_slice() == token.as_bytes()),
        "the session token is stored in the clear"
    );

    c.logout().await.unwrap();
    let e = c.session().await.unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert_eq!(code(&e), ErrorCode::Unauthenticated);
}

async fn stored_hashes(srv: &TestServer) -> Vec<Vec<u8>> {
    let company = srv.company_id("ACME").await;
    srv.store().session_token_hashes(company).await.unwrap()
}

#[tokio::test]
async fn failed_sign_ins_cannot_be_told_apart() {
    let srv = TestServer::start().await;
    srv.company("ACME").await;
    let admin = srv.sign_in("ACME", "master").await;
    admin.create_user(&user("gone")).await.unwrap();
    admin
        .update_user(
            "gone",
            &UpdateUser {
                status: Some(UserStatus::Disabled),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let anon = srv.client();
    let hashing = &srv.state.hashing;
    let mut messages = Vec::new();
    for (company, user, password) in [
        ("ACME", "master", "wrong password here"),
        ("ACME", "nobody", PASSWORD),
        ("NOPE", "master", PASSWORD),
        ("ACME", "gone", PASSWORD),
        ("A", "bad id with spaces", PASSWORD),
    ] {
        let before = hashing.verifications();
        let e = anon.login(company, user, password).await.unwrap_err();
        // Every attempt costs exactly one password verification, so the
        // time taken does not reveal which part was wrong.
        assert_eq!(hashing.verifications(), before + 1, "{company}/{user}");
        assert_eq!(e.status(), Some(401));
        assert_eq!(code(&e), ErrorCode::SignInFailed);
        if let ClientError::Api { body, .. } = e {
            messages.push(body.message);
        }
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "failure messages differ: {messages:?}");
}

/// A sign-in answers with the user as the directory shows them (read with
/// the account at the start of the sign-in): department, e-mail,
/// clearance and all.
#[tokio::test]
async fn a_sign_in_answers_with_the_user_as_stored() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    admin.create_department("hr", "People").await.unwrap();
    let mut bob = user("bob");
    bob.department = Some("hr".into());
    bob.display_name = "Bob Builder".into();
    bob.clearance = Classification::Confidential;
    admin.create_user(&bob).await.unwrap();
    let (_, signed_in) = srv.client().login("ACME", "bob", PASSWORD).await.unwrap();
    assert_eq!(signed_in.user, admin.user("bob").await.unwrap());
    assert_eq!(signed_in.user.department.as_deref(), Some("HR"));
    assert_eq!(signed_in.user.email.as_deref(), Some("bob@example.com"));
    assert_eq!(signed_in.user.display_name, "Bob Builder");
    assert_eq!(signed_in.user.clearance, Classification::Confidential);
    assert!(!signed_in.user.is_admin);
}

#[tokio::test]
async fn disabling_a_user_ends_their_sessions() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    admin.create_user(&user("alice")).await.unwrap();
    let alice = srv.sign_in("ACME", "alice").await;
    alice.session().await.unwrap();
    admin
        .update_user(
            "alice",
            &UpdateUser {
                status: Some(UserStatus::Disabled),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(alice.session().await.unwrap_err().status(), Some(401));
    let e = srv
        .client()
        .login("ACME", "alice", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::SignInFailed);
}

#[tokio::test]
async fn sessions_end_after_idle_time_and_lifetime() {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    srv.clock.advance(chrono::Duration::minutes(29));
    c.session().await.expect("still live after 29 idle minutes");
    srv.clock.advance(chrono::Duration::minutes(29));
    c.session().await.expect("activity renewed the idle timer");
    srv.clock.advance(chrono::Duration::minutes(31));
    let e = c.session().await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::Unauthenticated);

    // Absolute lifetime (12 h), however active.
    let c = srv.sign_in("ACME", "master").await;
    for _ in 0..24 {
        srv.clock.advance(chrono::Duration::minutes(29));
        c.session().await.unwrap();
    }
    srv.clock.advance(chrono::Duration::minutes(29));
    assert_eq!(
        code(&c.session().await.unwrap_err()),
        ErrorCode::Unauthenticated
    );
}

#[tokio::test]
async fn garbage_tokens_are_refused() {
    let srv = TestServer::start().await;
    srv.company("ACME").await;
    for t in ["", "x", &"A".repeat(43), &"é".repeat(20)] {
        let e = srv.client().with_token(t).session().await.unwrap_err();
        assert_eq!(e.status(), Some(401), "token {t:?}");
    }
}

// ----- administration ------------------------------------------------------

#[tokio::test]
async fn master_account_is_protected_and_admin_rights_are_checked() {
    let srv = TestServer::start().await;
    let master = srv.company_master("ACME").await;
    let mut admin_user = user("ops");
    admin_user.is_admin = true;
    master.create_user(&admin_user).await.unwrap();
    master.create_user(&user("clerk")).await.unwrap();
    let ops = srv.sign_in("ACME", "ops").await;
    let clerk = srv.sign_in("ACME", "clerk").await;

    // Nobody can delete, disable or demote the master account.
    for who in [&master, &ops] {
        let e = who.delete_user("master").await.unwrap_err();
        assert_eq!(code(&e), ErrorCode::Forbidden);
        for change in [
            UpdateUser {
                is_admin: Some(false),
                ..Default::default()
            },
            UpdateUser {
                status: Some(UserStatus::Disabled),
                ..Default::default()
            },
        ] {
            let e = who.update_user("master", &change).await.unwrap_err();
            assert_eq!(code(&e), ErrorCode::Forbidden);
        }
    }
    let e = ops
        .set_password("master", "another long password")
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::Forbidden);
    assert!(master.user("master").await.unwrap().is_admin);

    // Nobody raises their own rights.
    let e = ops
        .update_user(
            "ops",
            &UpdateUser {
                is_admin: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::Forbidden);

    // A clerk may not administer.
    assert_eq!(
        code(&clerk.users().await.unwrap_err()),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(&clerk.create_user(&user("x")).await.unwrap_err()),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(&clerk.create_department("HR", "People").await.unwrap_err()),
        ErrorCode::Forbidden
    );
    let e = clerk
        .update_user(
            "clerk",
            &UpdateUser {
                is_admin: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::Forbidden);

    // A user without history can be deleted; the list shows who is left.
    ops.delete_user("clerk").await.unwrap();
    let ids: Vec<String> = master
        .users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.user_id)
        .collect();
    assert_eq!(ids, vec!["master", "ops"]);
}

#[tokio::test]
async fn departments_and_users() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    let d = admin.create_department("sales", "Sales").await.unwrap();
    assert_eq!(d.code, "SALES");
    assert_eq!(
        code(&admin.create_department("SALES", "Again").await.unwrap_err()),
        ErrorCode::Conflict
    );
    admin.create_department("HR", "People").await.unwrap();
    admin
        .rename_department("HR", "Human resources")
        .await
        .unwrap();

    let mut u = user("bob");
    u.department = Some("SALES".into());
    let bob = admin.create_user(&u).await.unwrap();
    assert_eq!(bob.department.as_deref(), Some("SALES"));
    assert_eq!(bob.email.as_deref(), Some("bob@example.com"));
    assert_eq!(
        code(&admin.create_user(&user("BOB")).await.unwrap_err()),
        ErrorCode::Conflict,
        "user IDs are unique regardless of case"
    );
    let mut bad = user("eve");
    bad.department = Some("NOPE".into());
    assert_eq!(
        code(&admin.create_user(&bad).await.unwrap_err()),
        ErrorCode::ValidationFailed
    );
    let mut weak = user("weak");
    weak.password = "short".into();
    assert_eq!(
        code(&admin.create_user(&weak).await.unwrap_err()),
        ErrorCode::ValidationFailed
    );

    // A department with members cannot be deleted.
    assert_eq!(
        code(&admin.delete_department("SALES").await.unwrap_err()),
        ErrorCode::Conflict
    );

    // Moving a user to another department ends their sessions.
    let bob_session = srv.sign_in("ACME", "bob").await;
    let moved = admin
        .update_user(
            "bob",
            &UpdateUser {
                department: Some(Some("HR".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(moved.department.as_deref(), Some("HR"));
    assert_eq!(bob_session.session().await.unwrap_err().status(), Some(401));

    admin.delete_department("SALES").await.unwrap();
    let codes: Vec<String> = admin
        .departments()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.code)
        .collect();
    assert_eq!(codes, vec!["HR"]);

    // An admin-set password works, and ends the old sessions.
    let bob_session = srv.sign_in("ACME", "bob").await;
    admin
        .set_password("bob", "a brand new passphrase")
        .await
        .unwrap();
    assert_eq!(bob_session.session().await.unwrap_err().status(), Some(401));
    srv.client()
        .login("ACME", "bob", "a brand new passphrase")
        .await
        .unwrap();
}

// ----- records -------------------------------------------------------------

#[tokio::test]
async fn default_catalogue_is_created_with_the_company() {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    let types = c.record_types().await.unwrap();
    let keys: Vec<&str> = types.iter().map(|t| t.key.as_str()).collect();
    assert_eq!(keys, vec!["customer", "employee", "vendor"]);
    let employee = c.record_type("employee").await.unwrap();
    let field = |k: &str| employee.fields.iter().find(|f| f.key == k).unwrap().clone();
    for k in [
        "name",
        "email",
        "phone",
        "address",
        "national_id",
        "bank_account",
        "card_number",
        "department",
        "hired_on",
        "salary",
    ] {
        field(k);
    }
    assert_eq!(field("national_id").pii_kind, PiiKind::NationalId);
    assert_eq!(
        field("national_id").classification,
        Classification::Restricted
    );
    assert_eq!(field("card_number").pii_kind, PiiKind::CardNumber);
    assert_eq!(field("bank_account").pii_kind, PiiKind::BankAccount);
    assert_eq!(field("name").classification, Classification::Internal);
    assert_eq!(field("hired_on").field_type, FieldType::Date);
}

#[tokio::test]
async fn record_create_read_update_delete_restore_and_history() {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    let r = new_record(
        &c,
        "customer",
        json!({"name": "  Hanoi Trading  ", "email": "buy@hanoi.vn"}),
    )
    .await;
    assert_eq!(r.version, 1);
    assert_eq!(r.data["name"], "Hanoi Trading", "values are normalised");
    assert_eq!(r.owner, "master");
    assert_eq!(c.record("customer", &r.id).await.unwrap(), r);

    srv.clock.advance(chrono::Duration::minutes(1));
    let u = c
        .update_record(
            "customer",
            &r.id,
            &UpdateRecord {
                data: data(json!({"phone": "+84 24 1234 5678", "email": null})),
                expected_version: Some(1),
            },
        )
        .await
        .unwrap();
    assert_eq!(u.version, 2);
    assert_eq!(u.data["phone"], "+84 24 1234 5678");
    assert!(!u.data.contains_key("email"));
    assert!(u.updated_at > r.updated_at);

    // A stale version is refused and changes nothing.
    let e = c
        .update_record(
            "customer",
            &r.id,
            &UpdateRecord {
                data: data(json!({"name": "Lost update"})),
                expected_version: Some(1),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::VersionConflict);
    assert_eq!(
        c.record("customer", &r.id).await.unwrap().data["name"],
        "Hanoi Trading"
    );

    // Soft delete: gone from reads and lists, still in history.
    let d = c.delete_record("customer", &r.id).await.unwrap();
    assert!(d.deleted_at.is_some());
    assert_eq!(
        code(&c.record("customer", &r.id).await.unwrap_err()),
        ErrorCode::NotFound
    );
    assert!(c
        .list_records("customer", &[])
        .await
        .unwrap()
        .items
        .is_empty());
    let only = c
        .list_records("customer", &[("deleted", "only")])
        .await
        .unwrap();
    assert_eq!(only.items.len(), 1);
    assert_eq!(
        code(
            &c.update_record(
                "customer",
                &r.id,
                &UpdateRecord {
                    data: data(json!({"name": "x"})),
                    expected_version: None
                }
            )
            .await
            .unwrap_err()
        ),
        ErrorCode::Conflict
    );

    // Restore brings it back as it was.
    let back = c.restore_record("customer", &r.id, None).await.unwrap();
    assert!(back.deleted_at.is_none());
    assert_eq!(back.data, u.data);
    assert_eq!(back.version, 4);

    // Undo a user error: go back to version 1.
    let reverted = c.restore_record("customer", &r.id, Some(1)).await.unwrap();
    assert_eq!(reverted.data, r.data);
    assert_eq!(reverted.version, 5);

    let h = c.record_history("customer", &r.id).await.unwrap();
    let kinds: Vec<ChangeKind> = h.iter().map(|v| v.change).collect();
    assert_eq!(
        kinds,
        vec![
            ChangeKind::Create,
            ChangeKind::Update,
            ChangeKind::Delete,
            ChangeKind::Restore,
            ChangeKind::Revert
        ]
    );
    assert_eq!(h[0].data, r.data);
    assert_eq!(h[1].data, u.data);
    assert!(h[2].deleted);
    assert!(h.iter().all(|v| v.changed_by == "master"));

    assert_eq!(
        code(
            &c.restore_record("customer", &r.id, Some(99))
                .await
                .unwrap_err()
        ),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(&c.restore_record("customer", &r.id, None).await.unwrap_err()),
        ErrorCode::Conflict,
        "restoring a record that is not deleted"
    );
}

#[tokio::test]
async fn record_values_are_validated() {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    for (bad, want) in [
        (json!({"email": "a@b.co"}), ErrorCode::ValidationFailed), // name is required
        (
            json!({"name": "x", "email": "not an email"}),
            ErrorCode::ValidationFailed,
        ),
        (
            json!({"name": "x", "shoe_size": 42}),
            ErrorCode::UnknownField,
        ),
        (json!({"name": 7}), ErrorCode::ValidationFailed),
        (
            json!({"name": "x", "phone": "call me"}),
            ErrorCode::ValidationFailed,
        ),
        (
            json!({"name": "x".repeat(5000)}),
            ErrorCode::ValidationFailed,
        ),
    ] {
        let e = c
            .create_record(
                "customer",
                &CreateRecord {
                    data: data(bad.clone()),
                    department: None,
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(&e), want, "{bad}");
        assert_eq!(e.status(), Some(400));
    }
    let e = c
        .create_record(
            "employee",
            &CreateRecord {
                data: data(json!({"name": "x", "hired_on": "2025-02-30"})),
                department: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::ValidationFailed);
    assert!(c
        .list_records("customer", &[])
        .await
        .unwrap()
        .items
        .is_empty());
    assert_eq!(
        code(&c.list_records("nope", &[]).await.unwrap_err()),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn lists_page_through_everything_once_and_filter_exactly() {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    let mut made = Vec::new();
    for i in 0..7 {
        let email = if i % 2 == 0 {
            "even@example.com"
        } else {
            "odd@example.com"
        };
        made.push(
            new_record(
                &c,
                "vendor",
                json!({"name": format!("V{i}"), "email": email}),
            )
            .await
            .id,
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q = vec![("limit", "3")];
        if let Some(cur) = &cursor {
            q.push(("cursor", cur.as_str()));
        }
        let page = c.list_records("vendor", &q).await.unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.into_iter().map(|r| r.id));
        pages += 1;
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, made, "every record once, in creation order");

    let even = c
        .list_records("vendor", &[("f.email", "even@example.com")])
        .await
        .unwrap();
    assert_eq!(even.items.len(), 4);
    assert!(even
        .items
        .iter()
        .all(|r| r.data["email"] == "even@example.com"));
    let both = c
        .list_records(
            "vendor",
            &[("f.email", "odd@example.com"), ("f.name", "V3")],
        )
        .await
        .unwrap();
    assert_eq!(both.items.len(), 1);
    assert_eq!(both.items[0].data["name"], "V3");

    // An update moves the record between filter results.
    c.update_record(
        "vendor",
        &both.items[0].id,
        &UpdateRecord {
            data: data(json!({"email": "even@example.com"})),
            expected_version: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        c.list_records("vendor", &[("f.email", "even@example.com")])
            .await
            .unwrap()
            .items
            .len(),
        5
    );

    for (q, want) in [
        (vec![("limit", "0")], ErrorCode::BadRequest),
        (vec![("limit", "501")], ErrorCode::BadRequest),
        (vec![("cursor", "garbage!")], ErrorCode::BadRequest),
        (vec![("f.shoe", "x")], ErrorCode::UnknownField),
        (vec![("sort", "name")], ErrorCode::BadRequest),
        (vec![("deleted", "maybe")], ErrorCode::BadRequest),
    ] {
        let e = c.list_records("vendor", &q).await.unwrap_err();
        assert_eq!(code(&e), want, "{q:?}");
    }
}

#[tokio::test]
async fn companies_never_see_each_others_records() {
    let srv = TestServer::start().await;
    let a = srv.company_master("ALPHA").await;
    let b = srv.company_master("BETA").await;
    let secret = new_record(
        &a,
        "customer",
        json!({"name": "Alpha's client", "email": "vip@alpha.com"}),
    )
    .await;
    new_record(&b, "customer", json!({"name": "Beta's client"})).await;

    // Every path with A's id answers 404 to B, exactly as for an id that
    // does not exist.
    let missing = uuid::Uuid::new_v4().to_string();
    for id in [&secret.id, &missing] {
        assert_eq!(
            code(&b.record("customer", id).await.unwrap_err()),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(&b.record_history("customer", id).await.unwrap_err()),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(&b.delete_record("customer", id).await.unwrap_err()),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(&b.restore_record("customer", id, Some(1)).await.unwrap_err()),
            ErrorCode::NotFound
        );
        let e = b
            .update_record(
                "customer",
                id,
                &UpdateRecord {
                    data: data(json!({"name": "hijacked"})),
                    expected_version: None,
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(&e), ErrorCode::NotFound);
    }
    // Lists and filters show only B's own.
    let listed = b
        .list_records("customer", &[("deleted", "include")])
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].data["name"], "Beta's client");
    assert!(b
        .list_records("customer", &[("f.email", "vip@alpha.com")])
        .await
        .unwrap()
        .items
        .is_empty());
    // A's record is untouched.
    let still = a.record("customer", &secret.id).await.unwrap();
    assert_eq!(still, secret);
    // B's users and departments are B's.
    assert_eq!(b.users().await.unwrap().len(), 1);
    a.create_department("SECRET", "Secret unit").await.unwrap();
    assert!(b.departments().await.unwrap().is_empty());
    let mut u = user("spy");
    u.department = Some("SECRET".into());
    assert_eq!(
        code(&b.create_user(&u).await.unwrap_err()),
        ErrorCode::ValidationFailed
    );
}

#[tokio::test]
async fn companies_define_their_own_record_types() {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    let contract = c
        .create_record_type(&CreateRecordType {
            key: "contract".into(),
            name: "Contract".into(),
            classification: Classification::Confidential,
            fields: vec![
                FieldDef {
                    key: "title".into(),
                    label: "Title".into(),
                    field_type: FieldType::Text,
                    classification: Classification::Internal,
                    pii_kind: PiiKind::None,
                    required: true,
                },
                FieldDef {
                    key: "value".into(),
                    label: "Value".into(),
                    field_type: FieldType::Decimal,
                    classification: Classification::Confidential,
                    pii_kind: PiiKind::None,
                    required: false,
                },
            ],
        })
        .await
        .unwrap();
    assert!(!contract.built_in);
    let r = new_record(
        &c,
        "contract",
        json!({"title": "Supply 2026", "value": "125000.50"}),
    )
    .await;
    assert_eq!(r.data["value"], "125000.50");

    let added = c
        .add_fields(
            "contract",
            &AddFields {
                fields: vec![FieldDef {
                    key: "signed".into(),
                    label: "Signed".into(),
                    field_type: FieldType::Boolean,
                    classification: Classification::Internal,
                    pii_kind: PiiKind::None,
                    required: false,
                }],
            },
        )
        .await
        .unwrap();
    assert_eq!(added.fields.len(), 3);
    c.update_record(
        "contract",
        &r.id,
        &UpdateRecord {
            data: data(json!({"signed": true})),
            expected_version: None,
        },
    )
    .await
    .unwrap();
    let signed = c
        .list_records("contract", &[("f.signed", "true")])
        .await
        .unwrap();
    assert_eq!(signed.items.len(), 1);

    // Bad definitions are refused with clear codes.
    let dup = CreateRecordType {
        key: "contract".into(),
        name: "Again".into(),
        classification: Classification::Internal,
        fields: vec![],
    };
    assert_eq!(
        code(&c.create_record_type(&dup).await.unwrap_err()),
        ErrorCode::Conflict
    );
    let bad_key = CreateRecordType {
        key: "Bad Key".into(),
        ..dup.clone()
    };
    assert_eq!(
        code(&c.create_record_type(&bad_key).await.unwrap_err()),
        ErrorCode::ValidationFailed
    );
    let required_later = AddFields {
        fields: vec![FieldDef {
            key: "owner_name".into(),
            label: "Owner".into(),
            field_type: FieldType::Text,
            classification: Classification::Internal,
            pii_kind: PiiKind::Name,
            required: true,
        }],
    };
    assert_eq!(
        code(&c.add_fields("contract", &required_later).await.unwrap_err()),
        ErrorCode::ValidationFailed
    );
}

// ----- hostile input -------------------------------------------------------

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_never_a_5xx() {
    let srv = TestServer::start_with(Options {
        env: vec![("MAX_BODY_BYTES".into(), "4096".into())],
    })
    .await;
    let c = srv.company_master("ACME").await;
    let json_ct = Some("application/json");
    type Case<'a> = (Method, &'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/api/v1/records/customer",
            json_ct,
            b"{not json".to_vec(),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/api/v1/records/customer",
            json_ct,
            b"[1,2]".to_vec(),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/api/v1/records/customer",
            Some("text/plain"),
            br#"{"data":{}}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            "/api/v1/records/customer",
            None,
            br#"{"data":{}}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            "/api/v1/records/customer",
            json_ct,
            br#"{"data":{"name":"x"},"extra":1}"#.to_vec(),
            400,
            "unknown_field",
        ),
        (
            Method::POST,
            "/api/v1/records/customer",
            json_ct,
            format!(r#"{{"data":{{"name":"{}"}}}}"#, "x".repeat(5000)).into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            Method::POST,
            "/api/v1/auth/login",
            json_ct,
            br#"{"company":"ACME"}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            Method::GET,
            "/api/v1/no-such-thing",
            None,
            vec![],
            404,
            "not_found",
        ),
        (
            Method::PUT,
            "/api/v1/records/customer",
            json_ct,
            b"{}".to_vec(),
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/api/v1/records/customer/not-a-uuid",
            None,
            vec![],
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/api/v1/records/..%2F..%2Fetc/x",
            None,
            vec![],
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/api/v1/records/customer?limit=abc",
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            Method::PATCH,
            "/api/v1/users/master",
            json_ct,
            br#"{"status":"sleeping"}"#.to_vec(),
            400,
            "invalid_json",
        ),
    ];
    for (method, path, ct, body, status, want) in cases {
        let r = c.raw(method.clone(), path, ct, body).await.unwrap();
        let j = r.json();
        assert_eq!(r.status, status, "{method} {path}: {j}");
        assert_eq!(j["code"], want, "{method} {path}: {j}");
        assert!(!j["message"].as_str().unwrap_or("").is_empty());
        // The request id in the body is the one in the header.
        assert_eq!(
            j["request_id"].as_str().unwrap(),
            r.headers["x-request-id"].to_str().unwrap(),
            "{method} {path}"
        );
    }
    // Without a session, the same paths answer 401, not 404 or 500.
    let r = srv
        .client()
        .raw_get("/api/v1/records/customer")
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "unauthenticated");
}

#[tokio::test]
async fn a_database_newer_than_the_binary_is_refused() {
    let srv = TestServer::start().await;
    let now = strongroom_testkit::start_time();
    srv.store().force_schema_version(9999, now).await.unwrap();
    let e = srv.store().migrate(now).await.unwrap_err().to_string();
    assert!(e.contains("9999") && e.contains("newer"), "{e}");
}

#[tokio::test]
async fn every_documented_endpoint_but_the_public_ones_needs_a_session() {
    let srv = TestServer::start().await;
    srv.company("ACME").await;
    let doc = srv.client().openapi().await.unwrap();
    let public = [
        "/healthz",
        "/livez",
        "/api/v1/openapi.json",
        "/api/v1/auth/login",
        "/api/v1/auth/login/second-factor",
    ];
    let anon = srv.client();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{type}", "customer")
                .replace("{id}", &uuid::Uuid::new_v4().to_string())
                .replace("{user_id}", "master")
                .replace("{code}", "SALES");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = anon
                .raw(
                    m.clone(),
                    &concrete,
                    Some("application/json"),
                    b"{}".to_vec(),
                )
                .await
                .unwrap();
            if public.contains(&path.as_str()) {
                assert_ne!(r.status, 401, "{method} {path} should be public");
                continue;
            }
            assert_eq!(r.status, 401, "{method} {path} answered without a session");
            assert_eq!(r.json()["code"], "unauthenticated", "{method} {path}");
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} endpoints checked");
}

// ----- flood protection ------------------------------------------------------

fn opts(pairs: &[(&str, &str)]) -> Options {
    Options::with(pairs)
}

#[tokio::test]
async fn request_rates_are_limited_per_address_and_spoofing_does_not_help() {
    let srv = TestServer::start_with(opts(&[("RATE_LIMIT_IP_PER_SECOND", "2")])).await;
    let c = srv.client();
    let mut limited = None;
    for i in 0..12 {
        // A forged X-Forwarded-For from an untrusted peer changes nothing.
        let r = c.raw_get("/healthz").await.unwrap();
        let _ = i;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("a burst of 12 requests at 2/s must be limited");
    assert_eq!(r.json()["code"], "rate_limited");
    // Refusals carry the security headers too.
    for h in [
        "strict-transport-security",
        "x-content-type-options",
        "content-security-policy",
        "x-request-id",
    ] {
        assert!(r.headers.contains_key(h), "429 lacks {h}");
    }
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    let spoofed = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&srv.cert_pem).unwrap())
        .build()
        .unwrap()
        .get(format!("{}/healthz", srv.base_url))
        .header("x-forwarded-for", "198.51.100.77")
        .send()
        .await
        .unwrap();
    assert_eq!(
        spoofed.status(),
        429,
        "a forged X-Forwarded-For escaped the limit"
    );
}

#[tokio::test]
async fn sign_in_has_its_own_stricter_limit_checked_before_any_hashing() {
    let srv = TestServer::start_with(opts(&[("LOGIN_RATE_PER_IP_PER_MINUTE", "3")])).await;
    srv.company("ACME").await;
    for _ in 0..3 {
        let _ = srv
            .client()
            .login("ACME", "master", "wrong password 1")
            .await;
    }
    let before = srv.state.hashing.verifications();
    let e = srv
        .client()
        .login("ACME", "master", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(429));
    assert_eq!(code(&e), ErrorCode::RateLimited);
    assert_eq!(
        srv.state.hashing.verifications(),
        before,
        "a limited sign-in must cost no hash"
    );
}

#[tokio::test]
async fn one_company_cannot_use_up_the_server_for_another() {
    let srv = TestServer::start_with(opts(&[
        ("RATE_LIMIT_COMPANY_PER_SECOND", "2"),
        ("RATE_LIMIT_IP_PER_SECOND", "1000"),
    ]))
    .await;
    let a = srv.company_master("ALPHA").await;
    let b = srv.company_master("BETA").await;
    let mut a_limited = false;
    for _ in 0..12 {
        if let Err(e) = a.session().await {
            assert_eq!(code(&e), ErrorCode::RateLimited);
            a_limited = true;
            break;
        }
    }
    assert!(a_limited, "company ALPHA was never limited");
    b.session().await.expect("BETA is still served");
}

#[tokio::test]
async fn a_slow_sender_is_cut_off_at_the_request_time_limit() {
    let srv = TestServer::start_with(opts(&[("REQUEST_TIMEOUT_SECONDS", "1")])).await;
    let c = srv.company_master("ACME").await;
    // One chunk, then nothing: the body never ends.
    let body = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
        bytes::Bytes::from_static(b"{\"data\":"),
    )])
    .chain(futures_util::stream::pending());
    let r = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&srv.cert_pem).unwrap())
        .build()
        .unwrap()
        .post(format!("{}/api/v1/records/customer", srv.base_url))
        .bearer_auth(c.token().unwrap())
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "busy");
}

// ----- IP rules ----------------------------------------------------------------

async fn set_rules(
    c: &Client,
    path: &str,
    rules: Value,
    force: bool,
) -> strongroom_testkit::client::RawResponse {
    c.raw(
        Method::PUT,
        path,
        Some("application/json"),
        serde_json::to_vec(&json!({"rules": rules, "force": force})).unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn company_ip_lists_apply_before_the_password_and_on_every_request() {
    let srv = TestServer::start_with(opts(&[("TRUSTED_PROXIES", "127.0.0.1")])).await;
    srv.company("ACME").await;
    let office = srv.client().forwarded_for("192.0.2.10");
    let admin = office.login("ACME", "master", PASSWORD).await.unwrap().0;
    let roaming = srv
        .client()
        .forwarded_for("198.51.100.7")
        .login("ACME", "master", PASSWORD)
        .await
        .unwrap()
        .0;

    // A list that would shut out the admin saving it is refused...
    let r = set_rules(
        &roaming,
        "/api/v1/security/ip-rules",
        json!([{"kind": "allow", "network": "192.0.2.0/24", "label": "office"}]),
        false,
    )
    .await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("198.51.100.7"));
    // ...unless saved from inside, or forced.
    let r = set_rules(
        &admin,
        "/api/v1/security/ip-rules",
        json!([
            {"kind": "allow", "network": "192.0.2.0/24", "label": "office"},
            {"kind": "block", "network": "192.0.2.66", "label": "kiosk"},
            {"kind": "allow", "network": "2001:db8:abcd::/48", "label": "office v6"}
        ]),
        false,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // The roaming session ends on its next request.
    assert_eq!(roaming.session().await.unwrap_err().status(), Some(403));
    assert_eq!(
        roaming
            .forwarded_for("192.0.2.10")
            .session()
            .await
            .unwrap_err()
            .status(),
        Some(401),
        "the session was ended"
    );

    // Sign-in: refused outside the list before any password check, range edges exact.
    let hashing = &srv.state.hashing;
    for (ip, ok) in [
        ("192.0.2.0", true),
        ("192.0.2.255", true),
        ("192.0.3.0", false),
        ("192.0.1.255", false),
        ("192.0.2.66", false),
        ("2001:db8:abcd:ffff::1", true),
        ("2001:db8:abce::1", false),
    ] {
        let before = hashing.verifications();
        let r = srv
            .client()
            .forwarded_for(ip)
            .login("ACME", "master", PASSWORD)
            .await;
        assert_eq!(r.is_ok(), ok, "{ip}");
        if !ok {
            assert_eq!(r.unwrap_err().status(), Some(403), "{ip}");
            assert_eq!(
                hashing.verifications(),
                before,
                "{ip}: a refused address must not reach the password"
            );
        }
    }
    let e = srv.last_event("ACME", "auth.login").await;
    assert_eq!(e.reason.as_deref(), Some("ip_not_allowed"));
}

#[tokio::test]
async fn user_ip_lists_refuse_like_a_wrong_password() {
    let srv = TestServer::start_with(opts(&[("TRUSTED_PROXIES", "127.0.0.1")])).await;
    srv.company("ACME").await;
    let admin = srv
        .client()
        .forwarded_for("192.0.2.10")
        .login("ACME", "master", PASSWORD)
        .await
        .unwrap()
        .0;
    admin.create_user(&user("night")).await.unwrap();
    let r = set_rules(
        &admin,
        "/api/v1/users/night/ip-rules",
        json!([{"kind": "allow", "network": "203.0.113.0/24"}]),
        false,
    )
    .await;
    assert_eq!(r.status, 200);
    let before = srv.state.hashing.verifications();
    let e = srv
        .client()
        .forwarded_for("192.0.2.10")
        .login("ACME", "night", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(
        code(&e),
        ErrorCode::SignInFailed,
        "must not reveal that the user exists"
    );
    assert_eq!(
        srv.state.hashing.verifications(),
        before + 1,
        "same cost as any failure"
    );
    srv.client()
        .forwarded_for("203.0.113.9")
        .login("ACME", "night", PASSWORD)
        .await
        .unwrap();
    let rules = admin
        .raw_get("/api/v1/users/night/ip-rules")
        .await
        .unwrap()
        .json();
    assert_eq!(rules[0]["network"], "203.0.113.0/24");
    let bad = set_rules(
        &admin,
        "/api/v1/users/night/ip-rules",
        json!([{"kind": "allow", "network": "10.1"}]),
        false,
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["code"], "validation_failed");
}

#[tokio::test]
async fn a_forwarded_header_from_an_untrusted_peer_cannot_get_past_ip_rules() {
    let srv = TestServer::start().await; // no trusted proxies
    let admin = srv.company_master("ACME").await;
    let r = set_rules(
        &admin,
        "/api/v1/security/ip-rules",
        json!([{"kind": "block", "network": "127.0.0.0/8"}]),
        true,
    )
    .await;
    assert_eq!(r.status, 200);
    let e = srv
        .client()
        .forwarded_for("192.0.2.10")
        .login("ACME", "master", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
}

// ----- access hours ----------------------------------------------------------------

async fn put_json(c: &Client, path: &str, body: Value) -> strongroom_testkit::client::RawResponse {
    c.raw(
        Method::PUT,
        path,
        Some("application/json"),
        serde_json::to_vec(&body).unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn access_hours_apply_at_sign_in_and_end_sessions_when_the_window_closes() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    admin.create_user(&user("clerk")).await.unwrap();
    // The test clock starts at 2026-01-01 10:00 UTC: Thursday 17:00 in Ho Chi Minh City.
    let r = put_json(
        &admin,
        "/api/v1/security/access-hours",
        json!({"timezone": "Asia/Ho_Chi_Minh",
        "windows": [{"day": "fri", "start": "08:00", "end": "09:00"}]}),
    )
    .await;
    assert_eq!(
        r.status, 409,
        "hours that shut out the admin saving them are refused"
    );
    let r = put_json(&admin, "/api/v1/security/access-hours", json!({"timezone": "Asia/Ho_Chi_Minh",
        "windows": [{"day": "thu", "start": "08:00", "end": "17:30"}, {"day": "fri", "start": "22:00", "end": "06:00"}]})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let bad = put_json(
        &admin,
        "/api/v1/security/access-hours",
        json!({"timezone": "Mars/Olympus", "windows": []}),
    )
    .await;
    assert_eq!(bad.status, 400);
    let bad = put_json(
        &admin,
        "/api/v1/security/access-hours",
        json!({"timezone": "UTC", "windows": [{"day": "thu", "start": "25:00", "end": "26:00"}]}),
    )
    .await;
    assert_eq!(bad.status, 400);

    let clerk = srv.sign_in("ACME", "clerk").await;
    srv.clock.advance(chrono::Duration::minutes(29)); // 17:29
    clerk.session().await.expect("inside the window");
    srv.clock.advance(chrono::Duration::minutes(2)); // 17:31
    let e = clerk.session().await.unwrap_err();
    assert_eq!(
        e.status(),
        Some(401),
        "the session ends when the window closes"
    );
    let ended = srv.last_event("ACME", "session.end").await;
    assert_eq!(ended.reason.as_deref(), Some("outside_access_hours"));
    let e = srv
        .client()
        .login("ACME", "clerk", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::SignInFailed);
    let attempt = srv.last_event("ACME", "auth.login").await;
    assert_eq!(attempt.reason.as_deref(), Some("outside_access_hours"));

    // Friday 22:00 local (15:00 UTC) starts an overnight window.
    srv.clock.set("2026-01-02T15:00:00Z".parse().unwrap());
    srv.client()
        .login("ACME", "clerk", PASSWORD)
        .await
        .expect("overnight window open");
    srv.clock.set("2026-01-02T22:59:00Z".parse().unwrap()); // Sat 05:59
    srv.client()
        .login("ACME", "clerk", PASSWORD)
        .await
        .expect("still open before 06:00");

    // An account past its valid-until date.
    let r = put_json(
        &admin.clone(),
        "/api/v1/users/clerk/access-hours",
        json!({"windows": [], "valid_until": "2026-01-01"}),
    )
    .await;
    // The admin itself is outside hours now (Saturday morning): its session ended.
    assert_eq!(r.status, 401);
    srv.clock.set("2026-01-08T01:00:00Z".parse().unwrap()); // Thursday 08:00 local
    let admin = srv.sign_in("ACME", "master").await;
    let r = put_json(
        &admin,
        "/api/v1/users/clerk/access-hours",
        json!({"windows": [], "valid_until": "2026-01-01"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let e = srv
        .client()
        .login("ACME", "clerk", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::SignInFailed);
    let attempt = srv.last_event("ACME", "auth.login").await;
    assert_eq!(attempt.reason.as_deref(), Some("account_expired"));
}

// ----- sessions ----------------------------------------------------------------

#[tokio::test]
async fn users_and_admins_see_and_end_sessions_and_the_company_limits_them() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    admin.create_user(&user("ann")).await.unwrap();
    let a1 = srv.sign_in("ACME", "ann").await;
    let a2 = srv.sign_in("ACME", "ann").await;

    let mine = a1.raw_get("/api/v1/auth/sessions").await.unwrap().json();
    let list = mine.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list.iter().filter(|s| s["current"] == true).count(), 1);
    assert!(
        !mine.to_string().contains(a1.token().unwrap()),
        "tokens are never listed"
    );
    let other = list.iter().find(|s| s["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = a1
        .raw(
            Method::DELETE,
            &format!("/api/v1/auth/sessions/{other}"),
            None,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(a2.session().await.unwrap_err().status(), Some(401));
    a1.session().await.unwrap();

    // Administrators see anyone's and end them all.
    let seen = admin
        .raw_get("/api/v1/users/ann/sessions")
        .await
        .unwrap()
        .json();
    assert_eq!(seen.as_array().unwrap().len(), 1);
    let r = admin
        .raw(Method::DELETE, "/api/v1/users/ann/sessions", None, vec![])
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(a1.session().await.unwrap_err().status(), Some(401));

    // At most two sessions: refuse the third, or end the oldest.
    let put = |body: Value| {
        let admin = admin.clone();
        async move {
            admin
                .raw(
                    Method::PUT,
                    "/api/v1/security/session-policy",
                    Some("application/json"),
                    serde_json::to_vec(&body).unwrap(),
                )
                .await
                .unwrap()
        }
    };
    assert_eq!(
        put(json!({"max_sessions_per_user": 2, "when_full": "refuse_new"}))
            .await
            .status,
        200
    );
    let first = srv.sign_in("ACME", "ann").await;
    srv.clock.advance(chrono::Duration::seconds(1));
    let second = srv.sign_in("ACME", "ann").await;
    let e = srv
        .client()
        .login("ACME", "ann", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::Conflict);
    assert_eq!(
        put(json!({"max_sessions_per_user": 2, "when_full": "end_oldest"}))
            .await
            .status,
        200
    );
    srv.clock.advance(chrono::Duration::seconds(1));
    let third = srv.sign_in("ACME", "ann").await;
    assert_eq!(
        first.session().await.unwrap_err().status(),
        Some(401),
        "the oldest was ended"
    );
    second.session().await.unwrap();
    third.session().await.unwrap();
    assert_eq!(
        put(json!({"max_sessions_per_user": 2, "when_full": "sometimes"}))
            .await
            .status,
        400
    );
}

// ----- password rules ----------------------------------------------------------------

#[tokio::test]
async fn password_rules_apply_wherever_a_password_is_set() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    let mut weak = user("bob");
    weak.password = "password4321x".into();
    let e = admin.create_user(&weak).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::ValidationFailed);
    assert!(e.to_string().contains("too easy"), "{e}");
    // The bundled list of common passwords applies whatever the strength.
    weak.password = "Password1234".into();
    let e = admin.create_user(&weak).await.unwrap_err();
    assert!(e.to_string().contains("common and breached"), "{e}");
    weak.password = "bob-acme-and-the-sea".into();
    assert!(admin
        .create_user(&weak)
        .await
        .unwrap_err()
        .to_string()
        .contains("user ID, name or company code"));

    let r = put_json(
        &admin,
        "/api/v1/security/password-rules",
        json!({"min_length": 16, "min_score": 3, "require_classes": 3, "history": 2}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let bad = put_json(
        &admin,
        "/api/v1/security/password-rules",
        json!({"min_length": 8, "min_score": 3, "require_classes": 0, "history": 0}),
    )
    .await;
    assert_eq!(bad.status, 400, "below the 12-character floor");
    let mut u = user("carol");
    let e = admin.create_user(&u).await.unwrap_err();
    assert!(e.to_string().contains("mix at least 3"), "{e}");
    u.password = "Correct horse battery staple 9".into();
    admin.create_user(&u).await.unwrap();

    // Changing one's own password: the current one is required, reuse is refused.
    let carol = srv
        .client()
        .login("ACME", "carol", "Correct horse battery staple 9")
        .await
        .unwrap()
        .0;
    let change = |current: &str, new: &str| {
        let carol = carol.clone();
        let body =
            serde_json::to_vec(&json!({"current_password": current, "new_password": new})).unwrap();
        async move {
            carol
                .raw(
                    Method::POST,
                    "/api/v1/auth/password",
                    Some("application/json"),
                    body,
                )
                .await
                .unwrap()
        }
    };
    assert_eq!(
        change("not my password at all", "Another Strong Phrase 77")
            .await
            .status,
        403
    );
    let r = change(
        "Correct horse battery staple 9",
        "Correct horse battery staple 9",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("used recently"));
    assert_eq!(
        change("Correct horse battery staple 9", "Another Strong Phrase 77")
            .await
            .status,
        204
    );
    assert_eq!(
        carol.session().await.unwrap_err().status(),
        Some(401),
        "sessions end after a change"
    );
    let carol = srv
        .client()
        .login("ACME", "carol", "Another Strong Phrase 77")
        .await
        .unwrap()
        .0;
    let r = carol
        .raw(Method::POST, "/api/v1/auth/password", Some("application/json"),
            serde_json::to_vec(&json!({"current_password": "Another Strong Phrase 77", "new_password": "Correct horse battery staple 9"})).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 400, "the previous password is in the history");
    let events = srv.audit_events("ACME").await;
    assert!(events.iter().any(|e| e.action == "user.change_password"
        && e.outcome == strongroom_core::audit::Outcome::Success));
    assert!(events.iter().any(|e| e.action == "password_rules.update"));
}

#[tokio::test]
async fn cookie_sessions_refuse_cross_site_writes() {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    let r = new_record(&c, "customer", json!({"name": "Target"})).await;
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&srv.cert_pem).unwrap())
        .build()
        .unwrap();
    let cookie = format!("__Host-strongroom_session={}", c.token().unwrap());
    let url = format!("{}/api/v1/records/customer/{}", srv.base_url, r.id);
    let delete = |extra: Option<(&'static str, String)>| {
        let mut rb = http.delete(&url).header("cookie", &cookie);
        if let Some((k, v)) = extra {
            rb = rb.header(k, v);
        }
        rb.send()
    };
    // A browser on another site: no Origin we trust, or says so.
    assert_eq!(delete(None).await.unwrap().status(), 403);
    assert_eq!(
        delete(Some(("sec-fetch-site", "cross-site".into())))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        delete(Some(("origin", "https://evil.example".into())))
            .await
            .unwrap()
            .status(),
        403
    );
    assert!(
        c.record("customer", &r.id).await.is_ok(),
        "nothing was deleted"
    );
    // Reads with the cookie, and Bearer tokens, are unaffected.
    assert_eq!(
        http.get(&url)
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The same origin may write.
    let origin = srv.base_url.clone();
    assert_eq!(
        delete(Some(("origin", origin))).await.unwrap().status(),
        200
    );
}

/// After a bulk load the store refreshes its planner statistics; on SQLite
/// it keeps the row counts but not the sampled key values, with which every
/// lookup would be compiled anew each time it runs. Reads still find what
/// they should afterwards.
#[tokio::test]
async fn statistics_after_a_bulk_load_keep_no_sampled_values() {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let name = format!("Bulk {i}");
        let email = format!("bulk{i}@example.com");
        let r =
            strongroom_testkit::add_record(&c, "customer", json!({"name": name, "email": email}))
                .await;
        ids.push(r.id);
    }
    srv.store().analyze().await.unwrap();
    assert_eq!(srv.store().statistics_samples().await.unwrap(), 0);
    let r = c.record("customer", &ids[17]).await.unwrap();
    assert_eq!(r.data["name"], "Bulk 17");
    let page = c
        .list_records("customer", &[("f.email", "bulk23@example.com")])
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].id, ids[23]);
}

/// Writes that arrive together are committed together (one transaction, a
/// savepoint each): a write that loses a race fails alone, the others are
/// stored with their audit events, and the audit chain stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_fail_or_succeed_each_on_their_own() {
    concurrent_writes(TestServer::start().await).await;
}

/// The same with a pool of 16, where PostgreSQL runs four batches at once
/// (with the harness's pool of 4, one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_in_batches_running_at_once() {
    let opts = Options::with(&[("DB_MAX_CONNECTIONS", "16")]);
    concurrent_writes(TestServer::start_with(opts).await).await;
}

async fn concurrent_writes(srv: TestServer) {
    let c = srv.company_master("ACME").await;
    let target = strongroom_testkit::add_record(&c, "customer", json!({"name": "Contested"})).await;
    let mut updates = Vec::new();
    let mut creates = Vec::new();
    for i in 0..8 {
        let (c1, c2, id) = (c.clone(), c.clone(), target.id.clone());
        updates.push(tokio::spawn(async move {
            let req = UpdateRecord {
                data: data(json!({ "name": format!("Racer {i}") })),
                expected_version: Some(1),
            };
            c1.update_record("customer", &id, &req).await
        }));
        creates.push(tokio::spawn(async move {
            let name = format!("Newcomer {i}");
            strongroom_testkit::add_record(&c2, "customer", json!({ "name": name })).await
        }));
    }
    let mut winners = Vec::new();
    for u in updates {
        match u.await.unwrap() {
            Ok(v) => winners.push(v),
            Err(e) => assert_eq!(code(&e), ErrorCode::VersionConflict, "{e}"),
        }
    }
    assert_eq!(winners.len(), 1, "one update of version 1 wins");
    let mut created = Vec::new();
    for t in creates {
        created.push(t.await.unwrap());
    }
    let now = c.record("customer", &target.id).await.unwrap();
    assert_eq!(now.version, 2);
    assert_eq!(now.data["name"], winners[0].data["name"]);
    assert_eq!(
        c.record_history("customer", &target.id)
            .await
            .unwrap()
            .len(),
        2
    );
    for r in &created {
        assert_eq!(
            c.record("customer", &r.id).await.unwrap().data["name"],
            r.data["name"]
        );
    }
    let events = srv.audit_events("ACME").await;
    let of = |action: &str, target: &str| {
        events
            .iter()
            .filter(|e| e.action == action && e.target == target)
            .filter(|e| e.outcome == strongroom_core::audit::Outcome::Success)
            .count()
    };
    assert_eq!(of("record.update", &format!("customer/{}", target.id)), 1);
    for r in &created {
        assert_eq!(of("record.create", &format!("customer/{}", r.id)), 1);
    }
    let chain = events[0].chain;
    let v = strongroom_server::audit::verify(srv.store(), &srv.state.keys, chain, true, None)
        .await
        .unwrap();
    assert_eq!(v.problem, None);
}

/// A write that fails half-way (its record stored, its version refused)
/// leaves nothing behind, while the writes committed beside it stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_failing_half_way_takes_none_of_its_neighbours_with_it() {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    match srv.backend {
        strongroom_testkit::Backend::Sqlite => {
            srv.raw_sql(
                "CREATE TRIGGER poison BEFORE INSERT ON record_versions \
                 WHEN NEW.data LIKE '%Poison%' BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
            )
            .await;
        }
        strongroom_testkit::Backend::Postgres => {
            pg_trigger_on_versions(
                &srv,
                "poison",
                "IF NEW.data LIKE '%Poison%' THEN RAISE EXCEPTION 'poisoned'; END IF;",
            )
            .await;
        }
    }
    let names: Vec<String> = (0..12)
        .map(|i| match i % 2 {
            0 => format!("Fine {i}"),
            _ => format!("Poison {i}"),
        })
        .collect();
    for (name, status) in create_at_once(&c, &names).await {
        let expected = if name.starts_with("Fine") { 201 } else { 500 };
        assert_eq!(status, expected, "{name}");
    }
    let fine: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with("Fine"))
        .collect();
    assert_stored_with_one_event_each(&srv, &c, fine).await;
}

/// Runs `body` (PL/pgSQL statements) before every insert of a record
/// version, as the trigger `name` (PostgreSQL).
async fn pg_trigger_on_versions(srv: &TestServer, name: &str, body: &str) {
    srv.raw_sql(&format!(
        "CREATE FUNCTION {name}() RETURNS trigger AS $$ BEGIN {body} RETURN NEW; END $$ \
         LANGUAGE plpgsql"
    ))
    .await;
    srv.raw_sql(&format!(
        "CREATE TRIGGER {name} BEFORE INSERT ON record_versions \
         FOR EACH ROW EXECUTE FUNCTION {name}()"
    ))
    .await;
}

/// Creates a customer of each name, all at once; each name with the
/// answer's status.
async fn create_at_once(c: &strongroom_client::Client, names: &[String]) -> Vec<(String, u16)> {
    let mut tasks = Vec::new();
    for name in names {
        let (c, name) = (c.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({ "data": { "name": name } });
            let r =
                strongroom_testkit::send_json(&c, Method::POST, "/api/v1/records/customer", body)
                    .await;
            (name, r.status)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The customers stored are exactly `names`, each with one successful
/// create event, and the chain verifies.
async fn assert_stored_with_one_event_each(
    srv: &TestServer,
    c: &strongroom_client::Client,
    mut names: Vec<String>,
) {
    let page = c
        .list_records("customer", &[("limit", "100")])
        .await
        .unwrap();
    let mut stored: Vec<String> = page
        .items
        .iter()
        .map(|r| r.data["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    stored.sort();
    names.sort();
    assert_eq!(stored, names, "only the writes that succeeded are stored");
    let events = srv.audit_events("ACME").await;
    let creates = events
        .iter()
        .filter(|e| e.action == "record.create")
        .filter(|e| e.outcome == strongroom_core::audit::Outcome::Success)
        .count();
    assert_eq!(
        creates,
        names.len(),
        "an event for each stored create, none for the others"
    );
    let v =
        strongroom_server::audit::verify(srv.store(), &srv.state.keys, events[0].chain, true, None)
            .await
            .unwrap();
    assert_eq!(v.problem, None);
}

/// On PostgreSQL, a write that PostgreSQL fails as the loser of a deadlock
/// is run again alone (the trigger fails each "Loser" write's first try
/// with SQLSTATE 40P01 and lets the second through): every create is
/// acknowledged and stored once, with one event each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_loses_a_deadlock_is_run_again_alone() {
    if strongroom_testkit::backend() != strongroom_testkit::Backend::Postgres {
        return;
    }
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    // A sequence counts each loser's tries: its values are not rolled back
    // with the failed try, as a row would be.
    for i in (0..10).step_by(3) {
        srv.raw_sql(&format!("CREATE SEQUENCE tries_{i}")).await;
    }
    pg_trigger_on_versions(
        &srv,
        "lose_once",
        "IF NEW.data LIKE '%Loser%' AND \
            nextval('tries_' || substring(NEW.data from 'Loser ([0-9]+)')) = 1 THEN \
           RAISE EXCEPTION 'deadlock detected (staged)' USING ERRCODE = '40P01'; \
         END IF;",
    )
    .await;
    let names: Vec<String> = (0..10)
        .map(|i| match i % 3 {
            0 => format!("Loser {i}"),
            _ => format!("Winner {i}"),
        })
        .collect();
    for (name, status) in create_at_once(&c, &names).await {
        assert_eq!(status, 201, "{name}");
    }
    assert_stored_with_one_event_each(&srv, &c, names).await;
}

/// Creates on a disk that fills up: each is either acknowledged and
/// stored, or refused and not stored; none is refused yet kept, none
/// acknowledged yet lost. Once there is room again the store works on,
/// and its audit chain verifies. (SQLite only: PostgreSQL's disk is not
/// the test's to fill.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_on_a_full_disk_are_stored_exactly_when_acknowledged() {
    if strongroom_testkit::backend() != strongroom_testkit::Backend::Sqlite {
        return;
    }
    let disk_dir = tempfile::tempdir().unwrap();
    let Some(disk) = strongroom_testkit::Tmpfs::mount(disk_dir.path(), 64 << 20) else {
        return;
    };
    let db = disk_dir.path().join("strongroom.db");
    let srv = TestServer::start_with(Options::with(&[
        ("DATABASE_URL", db.to_str().unwrap()),
        ("RATE_LIMIT_IP_PER_SECOND", "100000"),
        ("RATE_LIMIT_COMPANY_PER_SECOND", "100000"),
    ]))
    .await;
    let c = srv.company_master("ACME").await;
    strongroom_testkit::add_record(&c, "customer", json!({"name": "Before"})).await;
    // Leave room for some dozens of writes, not for all of them.
    let used: u64 = std::fs::read_dir(disk_dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len().div_ceil(4096) * 4096)
        .sum();
    disk.resize(used + (256 << 10));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..150 {
                let name = format!("T{t}-{i} {}", "x".repeat(150));
                let r = strongroom_testkit::send_json(
                    &c,
                    Method::POST,
                    "/api/v1/records/customer",
                    json!({ "data": { "name": name, "address": "y".repeat(1500) } }),
                )
                .await;
                answers.push((name, r.status));
            }
            answers
        }));
    }
    let mut acknowledged = std::collections::BTreeSet::new();
    let mut refused = 0;
    for t in tasks {
        for (name, status) in t.await.unwrap() {
            match status {
                201 => {
                    acknowledged.insert(name);
                }
                500 | 503 => refused += 1,
                other => panic!("{name}: {other}"),
            }
        }
    }
    assert!(refused > 0, "the disk must have filled up");
    assert!(!acknowledged.is_empty(), "some creates fit");
    disk.resize(64 << 20);
    let mut stored = std::collections::BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![("limit", "500")];
        if let Some(cur) = &cursor {
            q.push(("cursor", cur.as_str()));
        }
        let page = c.list_records("customer", &q).await.unwrap();
        for r in &page.items {
            stored.insert(r.data["name"].as_str().unwrap_or_default().to_owned());
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    stored.remove("Before");
    assert_eq!(stored, acknowledged, "stored exactly what was acknowledged");
    strongroom_testkit::add_record(&c, "customer", json!({"name": "After"})).await;
    let events = srv.audit_events("ACME").await;
    let v =
        strongroom_server::audit::verify(srv.store(), &srv.state.keys, events[0].chain, true, None)
            .await
            .unwrap();
    assert_eq!(v.problem, None);
}
