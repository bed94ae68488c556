//! Access control from the outside: deny by default, security levels and
//! classification (withheld fields), department and own scopes, movers and
//! leavers, the pledge and training gates, separated administrative
//! powers, attempts at self-elevation, and a property test over random
//! users, roles, departments and records. Runs over SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::Duration;
use reqwest::Method;
use serde_json::{json, Value};
use strongroom_proto::*;
use strongroom_testkit::client::Client;
use strongroom_testkit::{new_user, send_json as send, Options, TestServer};

fn person(id: &str, dept: Option<&str>, clearance: Classification, roles: &[&str]) -> CreateUser {
    CreateUser {
        department: dept.map(str::to_owned),
        clearance,
        roles: roles.iter().map(|r| r.to_string()).collect(),
        ..new_user(id, false)
    }
}

async fn record_in(c: &Client, t: &str, dept: Option<&str>, data: Value) -> RecordView {
    c.create_record(
        t,
        &CreateRecord {
            data: data.as_object().cloned().unwrap(),
            department: dept.map(str::to_owned),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("create {t}: {e}"))
}

const FULL: Value = Value::Null;

fn customer(name: &str) -> Value {
    json!({"name": name, "email": format!("{}@example.com", name.to_lowercase()),
           "phone": "+84 24 3825 1234", "national_id": "079201001234"})
}

async fn ids(c: &Client, t: &str) -> Vec<String> {
    let mut v: Vec<String> = c
        .list_records(t, &[])
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|r| r.id)
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn deny_by_default_and_levels_withhold_fields() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    let _ = FULL;
    let r = record_in(&admin, "customer", None, customer("Alpha")).await;

    // A new user with no role sees nothing, and the refusal is recorded.
    admin
        .create_user(&person("nobody", None, Classification::Restricted, &[]))
        .await
        .unwrap();
    let nobody = srv.sign_in("ACME", "nobody").await;
    let e = nobody.list_records("customer", &[]).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    let ev = srv.last_event("ACME", "record.list").await;
    assert_eq!(ev.reason.as_deref(), Some("no_grant"));
    assert_eq!(
        nobody.record("customer", &r.id).await.unwrap_err().status(),
        Some(403)
    );

    // Confidential level: restricted fields are withheld, and say so.
    admin
        .create_user(&person(
            "conf",
            None,
            Classification::Confidential,
            &["records_full"],
        ))
        .await
        .unwrap();
    let conf = srv.sign_in("ACME", "conf").await;
    let got = conf.record("customer", &r.id).await.unwrap();
    assert!(got.data.get("national_id").is_none(), "{:?}", got.data);
    assert!(got.withheld.contains(&"national_id".to_owned()));
    assert!(got.withheld.contains(&"card_number".to_owned()));
    assert_eq!(got.data["phone"], "+84 24 3825 1234");
    let listed = conf.list_records("customer", &[]).await.unwrap();
    assert!(listed.items[0].data.get("national_id").is_none());
    let history = conf.record_history("customer", &r.id).await.unwrap();
    assert!(history.iter().all(|v| v.data.get("national_id").is_none()));
    // Searching by a withheld field would tell its values: refused.
    let e = conf
        .list_records("customer", &[("f.national_id", "079201001234")])
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
    // Writing one is refused too.
    let e = conf
        .update_record(
            "customer",
            &r.id,
            &UpdateRecord {
                data: json!({"national_id": "079201009999"})
                    .as_object()
                    .cloned()
                    .unwrap(),
                expected_version: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403));

    // Restricted level: restricted fields come masked, not withheld.
    admin
        .create_user(&person(
            "high",
            None,
            Classification::Restricted,
            &["records_full"],
        ))
        .await
        .unwrap();
    let high = srv.sign_in("ACME", "high").await;
    let got = high.record("customer", &r.id).await.unwrap();
    assert!(got.masked.contains(&"national_id".to_owned()));
    assert!(got.withheld.is_empty());
    // Revealing needs the reveal grant.
    let e = high
        .raw_get(&format!("/api/v1/records/customer/{}?reveal=all", r.id))
        .await
        .unwrap();
    assert_eq!(e.status, 403);

    // Internal level: the customer type (confidential) is out of reach and
    // out of sight.
    admin
        .create_user(&person(
            "low",
            None,
            Classification::Internal,
            &["records_full"],
        ))
        .await
        .unwrap();
    let low = srv.sign_in("ACME", "low").await;
    let e = low.list_records("customer", &[]).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert_eq!(
        srv.last_event("ACME", "record.list")
            .await
            .reason
            .as_deref(),
        Some("above_clearance")
    );
    let types: Vec<String> = low
        .record_types()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.key)
        .collect();
    assert!(!types.contains(&"customer".to_owned()), "{types:?}");

    // A company can lower a type's level; the phone becomes internal too.
    let r2 = send(
        &admin,
        Method::PUT,
        "/api/v1/record-types/customer/classification",
        json!({"classification": "internal", "fields": {"phone": "internal"}}),
    )
    .await;
    assert_eq!(r2.status, 204, "{}", String::from_utf8_lossy(&r2.body));
    let got = low.record("customer", &r.id).await.unwrap();
    assert_eq!(got.data["phone"], "+84 24 3825 1234");
    assert!(got.withheld.contains(&"email".to_owned()));
    // Moving a field across the encryption line is refused.
    let r3 = send(
        &admin,
        Method::PUT,
        "/api/v1/record-types/customer/classification",
        json!({"fields": {"email": "restricted"}}),
    )
    .await;
    assert_eq!(r3.status, 400);
}

#[tokio::test]
async fn department_and_own_scopes() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    admin.create_department("SALES", "Sales").await.unwrap();
    admin.create_department("HR", "HR").await.unwrap();
    let s1 = record_in(&admin, "customer", Some("SALES"), customer("S1")).await;
    let h1 = record_in(&admin, "customer", Some("HR"), customer("H1")).await;
    admin
        .create_user(&person(
            "sam",
            Some("SALES"),
            Classification::Restricted,
            &["records_department"],
        ))
        .await
        .unwrap();
    let sam = srv.sign_in("ACME", "sam").await;
    assert_eq!(ids(&sam, "customer").await, vec![s1.id.clone()]);
    // A record of another department answers as if it did not exist, and
    // the denial is recorded.
    let e = sam.record("customer", &h1.id).await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    let ev = srv.last_event("ACME", "record.read").await;
    assert_eq!(ev.reason.as_deref(), Some("out_of_scope"));
    // Creating into another department is refused; into one's own works.
    let e = sam
        .create_record(
            "customer",
            &CreateRecord {
                data: customer("X").as_object().cloned().unwrap(),
                department: Some("HR".into()),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
    let mine = record_in(&sam, "customer", None, customer("S2")).await;
    assert_eq!(mine.department.as_deref(), Some("SALES"));
    // Export is not in the role either.
    assert_eq!(
        sam.raw_get("/api/v1/records/customer/export")
            .await
            .unwrap()
            .status,
        403
    );
    let all = admin
        .raw_get("/api/v1/records/customer/export")
        .await
        .unwrap();
    assert_eq!(all.status, 200);
    assert_eq!(String::from_utf8_lossy(&all.body).lines().count(), 3);
    assert_eq!(
        srv.last_event("ACME", "record.export").await.detail,
        "{\"records\":3}"
    );
    // Delete is not in the role.
    assert_eq!(
        sam.delete_record("customer", &mine.id)
            .await
            .unwrap_err()
            .status(),
        Some(403)
    );

    // Own scope: only what one created.
    admin
        .create_user(&person(
            "olga",
            Some("SALES"),
            Classification::Restricted,
            &["records_own"],
        ))
        .await
        .unwrap();
    let olga = srv.sign_in("ACME", "olga").await;
    assert!(ids(&olga, "customer").await.is_empty());
    let o1 = record_in(&olga, "customer", None, customer("O1")).await;
    assert_eq!(ids(&olga, "customer").await, vec![o1.id]);
}

#[tokio::test]
async fn a_mover_loses_the_old_departments_access_at_once() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    admin.create_department("SALES", "Sales").await.unwrap();
    admin.create_department("HR", "HR").await.unwrap();
    let r = send(
        &admin,
        Method::PUT,
        "/api/v1/departments/SALES/roles",
        json!({"roles": ["records_department"]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let s1 = record_in(&admin, "customer", Some("SALES"), customer("S1")).await;
    let h1 = record_in(&admin, "customer", Some("HR"), customer("H1")).await;
    admin
        .create_user(&person(
            "mo",
            Some("SALES"),
            Classification::Restricted,
            &[],
        ))
        .await
        .unwrap();
    let mo = srv.sign_in("ACME", "mo").await;
    assert_eq!(ids(&mo, "customer").await, vec![s1.id.clone()]);

    admin
        .update_user(
            "mo",
            &UpdateUser {
                department: Some(Some("HR".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Sessions ended; the move is recorded with what it took away.
    assert_eq!(mo.session().await.unwrap_err().status(), Some(401));
    let ev = srv.last_event("ACME", "user.department_change").await;
    assert!(ev.detail.contains("records_department"), "{}", ev.detail);
    assert!(ev.detail.contains("SALES"), "{}", ev.detail);
    // In HR, nothing until HR grants something.
    let mo = srv.sign_in("ACME", "mo").await;
    assert_eq!(
        mo.list_records("customer", &[]).await.unwrap_err().status(),
        Some(403)
    );
    assert_eq!(
        mo.record("customer", &s1.id).await.unwrap_err().status(),
        Some(403)
    );
    let r = send(
        &admin,
        Method::PUT,
        "/api/v1/departments/HR/roles",
        json!({"roles": ["records_department"]}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(ids(&mo, "customer").await, vec![h1.id.clone()]);
    // A personal department-scoped role follows the person, not the old
    // department: the SALES record stays out of reach.
    assert_eq!(
        mo.record("customer", &s1.id).await.unwrap_err().status(),
        Some(404)
    );

    // The leaver: disabled, every session ends at once.
    admin
        .update_user(
            "mo",
            &UpdateUser {
                status: Some(UserStatus::Disabled),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(mo.session().await.unwrap_err().status(), Some(401));
}

#[tokio::test]
async fn the_pledge_gates_records_until_accepted() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    admin.create_user(&new_user("ann", false)).await.unwrap();
    let ann = srv.sign_in("ACME", "ann").await;
    ann.list_records("customer", &[]).await.unwrap();
    let r = send(
        &admin,
        Method::POST,
        "/api/v1/pledge",
        json!({"text": "I will protect the information entrusted to me."}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let e = ann.list_records("customer", &[]).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert!(e.to_string().contains("pledge"), "{e}");
    assert_eq!(
        srv.last_event("ACME", "record.list")
            .await
            .reason
            .as_deref(),
        Some("pledge_not_accepted")
    );
    let p: PledgeView =
        serde_json::from_slice(&ann.raw_get("/api/v1/pledge").await.unwrap().body).unwrap();
    assert_eq!(p.version, 1);
    assert!(!p.accepted);
    let r = send(
        &ann,
        Method::POST,
        "/api/v1/pledge/accept",
        json!({"version": 1}),
    )
    .await;
    assert_eq!(r.status, 204);
    let acc = srv.last_event("ACME", "pledge.accept").await;
    assert!(acc.detail.contains("\"version\":1"));
    ann.list_records("customer", &[]).await.unwrap();
    // A new version needs a new acceptance; an old version is refused.
    send(
        &admin,
        Method::POST,
        "/api/v1/pledge",
        json!({"text": "Version two."}),
    )
    .await;
    assert!(ann.list_records("customer", &[]).await.is_err());
    let r = send(
        &ann,
        Method::POST,
        "/api/v1/pledge/accept",
        json!({"version": 1}),
    )
    .await;
    assert_eq!(r.status, 409);
    let r = send(
        &ann,
        Method::POST,
        "/api/v1/pledge/accept",
        json!({"version": 2}),
    )
    .await;
    assert_eq!(r.status, 204);
    ann.list_records("customer", &[]).await.unwrap();
}

#[tokio::test]
async fn lapsed_training_lowers_the_level_until_renewed() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    admin.create_user(&new_user("ann", false)).await.unwrap();
    let r = record_in(&admin, "customer", None, customer("Alpha")).await;
    let t = send(
        &admin,
        Method::PUT,
        "/api/v1/users/ann/training",
        json!({"completed_on": "2025-12-01"}),
    )
    .await;
    assert_eq!(t.status, 204, "{}", String::from_utf8_lossy(&t.body));
    let t = send(
        &admin,
        Method::PUT,
        "/api/v1/security/training-policy",
        json!({"required": true, "interval_days": 60}),
    )
    .await;
    assert_eq!(t.status, 200);
    // The master took no training either: it gives itself the record.
    let t = send(
        &admin,
        Method::PUT,
        "/api/v1/users/master/training",
        json!({"completed_on": "2025-12-31"}),
    )
    .await;
    assert_eq!(t.status, 204);
    let ann = srv.sign_in("ACME", "ann").await;
    ann.record("customer", &r.id).await.unwrap();
    // Sixty days after her training, confidential information is out.
    srv.clock.advance(Duration::days(31));
    let ann = srv.sign_in("ACME", "ann").await;
    let e = ann.record("customer", &r.id).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    let access: EffectiveAccess =
        serde_json::from_slice(&ann.raw_get("/api/v1/auth/access").await.unwrap().body).unwrap();
    assert!(access.training_due);
    assert_eq!(access.effective_clearance, Classification::Internal);
    let admin = srv.sign_in("ACME", "master").await;
    let due: Vec<TrainingDue> = serde_json::from_slice(
        &admin
            .raw_get("/api/v1/security/training-due")
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    assert!(due.iter().any(|d| d.user_id == "ann"), "{due:?}");
    // Renewed: back.
    let t = send(
        &admin,
        Method::PUT,
        "/api/v1/users/ann/training",
        json!({"completed_on": "2026-01-31"}),
    )
    .await;
    assert_eq!(t.status, 204);
    ann.record("customer", &r.id).await.unwrap();
}

#[tokio::test]
async fn powers_are_separate_and_nobody_raises_themselves() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    admin
        .create_user(&person(
            "ua",
            None,
            Classification::Confidential,
            &["user_admin"],
        ))
        .await
        .unwrap();
    admin
        .create_user(&person("aud", None, Classification::Internal, &["auditor"]))
        .await
        .unwrap();
    admin
        .create_user(&person(
            "boss",
            None,
            Classification::Restricted,
            &["records_full"],
        ))
        .await
        .unwrap();
    admin
        .create_user(&person(
            "clerk",
            None,
            Classification::Internal,
            &["records_full"],
        ))
        .await
        .unwrap();
    let ua = srv.sign_in("ACME", "ua").await;
    let aud = srv.sign_in("ACME", "aud").await;

    // Segregation: the user administrator manages users but cannot read
    // the audit log or change security settings; the auditor the reverse.
    ua.users().await.unwrap();
    assert_eq!(
        ua.raw_get("/api/v1/audit/events").await.unwrap().status,
        403
    );
    assert_eq!(
        ua.raw_get("/api/v1/security/ip-rules")
            .await
            .unwrap()
            .status,
        403
    );
    assert_eq!(
        aud.raw_get("/api/v1/audit/events").await.unwrap().status,
        200
    );
    assert_eq!(aud.users().await.unwrap_err().status(), Some(403));
    // Neither reaches records without a record role.
    assert_eq!(
        ua.list_records("customer", &[]).await.unwrap_err().status(),
        Some(403)
    );

    let set = |c: &Client, who: &str, body: Value| {
        let c = c.clone();
        let path = format!("/api/v1/users/{who}/access");
        async move { send(&c, Method::PUT, &path, body).await }
    };
    // Not oneself.
    let r = set(
        &ua,
        "ua",
        json!({"clearance": "confidential", "roles": ["user_admin", "records_full"]}),
    )
    .await;
    assert_eq!(r.status, 403);
    // Not above one's own level.
    let r = set(
        &ua,
        "clerk",
        json!({"clearance": "restricted", "roles": []}),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(String::from_utf8_lossy(&r.body).contains("above your own"));
    // Not a user of a higher level.
    let r = set(&ua, "boss", json!({"clearance": "internal", "roles": []})).await;
    assert_eq!(r.status, 403);
    // Not the master.
    let r = set(&ua, "master", json!({"clearance": "internal", "roles": []})).await;
    assert_eq!(r.status, 403);
    // Not a power one lacks.
    let r = set(
        &ua,
        "clerk",
        json!({"clearance": "internal", "roles": ["security_admin"]}),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(String::from_utf8_lossy(&r.body).contains("security"));
    // Not an administrator.
    let r = send(
        &ua,
        Method::PATCH,
        "/api/v1/users/aud",
        json!({"is_admin": true}),
    )
    .await;
    assert_eq!(r.status, 403);
    // Acting on a higher or administrative account would lend its rights:
    // no password reset, no API key, no second-factor reset.
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/users/boss/password",
            json!({"password": "lantern quartz meadow ferry"}),
        ),
        (
            Method::POST,
            "/api/v1/users/master/password",
            json!({"password": "lantern quartz meadow ferry"}),
        ),
        (
            Method::POST,
            "/api/v1/users/boss/api-keys",
            json!({"label": "x", "scopes": ["records:read"], "expires_in_days": 1}),
        ),
        (
            Method::DELETE,
            "/api/v1/users/master/second-factor",
            json!({}),
        ),
    ] {
        let r = send(&ua, method, path, body).await;
        assert_eq!(
            r.status,
            403,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let r = send(
        &ua,
        Method::POST,
        "/api/v1/users/clerk/password",
        json!({"password": "lantern quartz meadow ferry"}),
    )
    .await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    // Each refusal is recorded.
    let refusals = srv
        .audit_events("ACME")
        .await
        .into_iter()
        .filter(|e| {
            e.action == "user.access" && e.outcome == strongroom_core::audit::Outcome::Denied
        })
        .count();
    assert_eq!(refusals, 5);
    // Within bounds it works, and is recorded with what changed.
    let r = set(
        &ua,
        "clerk",
        json!({"clearance": "confidential", "roles": ["records_own"]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let ev = srv.last_event("ACME", "user.access").await;
    assert!(ev.detail.contains("records_own"), "{}", ev.detail);

    // A security administrator cannot make a role with powers it lacks.
    admin
        .create_user(&person(
            "sec",
            None,
            Classification::Internal,
            &["security_admin"],
        ))
        .await
        .unwrap();
    let sec = srv.sign_in("ACME", "sec").await;
    let r = send(
        &sec,
        Method::PUT,
        "/api/v1/roles/superuser",
        json!({"description": "all", "powers": ["users", "audit"]}),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = send(
        &sec,
        Method::PUT,
        "/api/v1/roles/sales_reader",
        json!({"description": "Read sales records",
               "grants": [{"record_type": "customer", "actions": ["view"], "scope": "department"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = send(
        &sec,
        Method::PUT,
        "/api/v1/roles/bad",
        json!({"grants": [{"record_type": "customer", "actions": ["fly"], "scope": "department"}]}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("unknown action"));
    // Built-in roles stay as they are.
    let r = send(
        &sec,
        Method::PUT,
        "/api/v1/roles/records_full",
        json!({"grants": []}),
    )
    .await;
    assert_eq!(r.status, 409);
}

#[tokio::test]
async fn random_users_never_see_above_their_level_or_outside_their_scope() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;

    let srv = TestServer::start_with(Options {
        env: vec![("LOGIN_RATE_PER_IP_PER_MINUTE".into(), "10000".into())],
    })
    .await;
    let admin = srv.company_master("ACME").await;
    let other = srv.company_master("BETA").await;
    let depts = ["D0", "D1", "D2"];
    for d in depts {
        admin.create_department(d, d).await.unwrap();
    }
    let mut records = Vec::new();
    for (i, d) in depts.iter().enumerate() {
        for j in 0..2 {
            let r = record_in(&admin, "customer", Some(d), customer(&format!("C{i}{j}"))).await;
            records.push((r.id, Some(d.to_string())));
        }
    }
    let foreign = record_in(&other, "customer", None, customer("Foreign")).await;

    let levels = [
        Classification::Public,
        Classification::Internal,
        Classification::Confidential,
        Classification::Restricted,
    ];
    let roles = [
        "records_full",
        "records_department",
        "records_own",
        "reveal",
        "auditor",
    ];
    let strategy = (
        0usize..4,
        proptest::option::of(0usize..3),
        proptest::collection::vec(0usize..5, 0..3),
        proptest::option::of(0usize..3),
    );
    let mut runner = TestRunner::deterministic();
    for case in 0..12 {
        let (level, dept, role_ix, dept_role) = strategy.new_tree(&mut runner).unwrap().current();
        let id = format!("p{case}");
        let dept_code = dept.map(|d| depts[d]);
        let my_roles: Vec<&str> = role_ix.iter().map(|i| roles[*i]).collect();
        if let (Some(d), Some(r)) = (dept_code, dept_role) {
            send(
                &admin,
                Method::PUT,
                &format!("/api/v1/departments/{d}/roles"),
                json!({"roles": [roles[r]]}),
            )
            .await;
        }
        admin
            .create_user(&person(&id, dept_code, levels[level], &my_roles))
            .await
            .unwrap();
        let c = srv.sign_in("ACME", &id).await;
        let me: EffectiveAccess =
            serde_json::from_slice(&c.raw_get("/api/v1/auth/access").await.unwrap().body).unwrap();
        let rt = admin.record_type("customer").await.unwrap();
        let above: Vec<&str> = rt
            .fields
            .iter()
            .filter(|f| f.classification > me.effective_clearance)
            .map(|f| f.key.as_str())
            .collect();
        let in_scope = |rec_dept: &Option<String>| {
            me.grants.iter().any(|g| {
                g.actions.iter().any(|a| a == "view")
                    && (g.record_type == "*" || g.record_type == "customer")
                    && match g.scope.as_str() {
                        "company" => true,
                        "department" => dept_code.is_some() && rec_dept.as_deref() == dept_code,
                        _ => false, // the admin owns every record here
                    }
            })
        };
        let check = |data: &RecordData, withheld: &[String]| {
            for f in &above {
                assert!(
                    data.get(*f).is_none(),
                    "case {case}: {f} above {:?} returned",
                    me.effective_clearance
                );
                assert!(
                    withheld.iter().any(|w| w == f),
                    "case {case}: {f} not marked"
                );
            }
        };
        // List and search.
        for query in [vec![], vec![("f.name", "C00")]] {
            if let Ok(page) = c.list_records("customer", &query).await {
                for r in &page.items {
                    let d = records
                        .iter()
                        .find(|(id, _)| id == &r.id)
                        .map(|(_, d)| d.clone());
                    let d = d.unwrap_or_else(|| panic!("case {case}: listed a foreign record"));
                    assert!(in_scope(&d), "case {case}: listed {} outside scope", r.id);
                    check(&r.data, &r.withheld);
                }
            }
        }
        // Read and history of every record, and the other company's.
        for (rid, d) in &records {
            match c.record("customer", rid).await {
                Ok(r) => {
                    assert!(in_scope(d), "case {case}: read {rid} outside scope");
                    check(&r.data, &r.withheld);
                }
                Err(e) => assert!(matches!(e.status(), Some(403 | 404)), "{e}"),
            }
            if let Ok(h) = c.record_history("customer", rid).await {
                assert!(in_scope(d), "case {case}: history of {rid} outside scope");
                for v in h {
                    check(&v.data, &v.withheld);
                }
            }
        }
        assert!(c.record("customer", &foreign.id).await.is_err());
        // Export.
        let ex = c.raw_get("/api/v1/records/customer/export").await.unwrap();
        if ex.status == 200 {
            let exports = me
                .grants
                .iter()
                .any(|g| g.actions.iter().any(|a| a == "export"));
            assert!(exports, "case {case}: exported without an export grant");
            for line in String::from_utf8_lossy(&ex.body).lines() {
                let r: RecordView = serde_json::from_str(line).unwrap();
                let d = records
                    .iter()
                    .find(|(id, _)| id == &r.id)
                    .map(|(_, d)| d.clone());
                let d = d.unwrap_or_else(|| panic!("case {case}: exported a foreign record"));
                assert!(in_scope(&d), "case {case}: exported {} outside scope", r.id);
                check(&r.data, &r.withheld);
            }
        } else {
            assert_eq!(ex.status, 403, "case {case}");
        }
        // Reset department roles for the next case.
        if let Some(d) = dept_code {
            send(
                &admin,
                Method::PUT,
                &format!("/api/v1/departments/{d}/roles"),
                json!({"roles": []}),
            )
            .await;
        }
    }
}

#[tokio::test]
async fn deleting_a_company_removes_its_access_and_sign_in_state() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("BETA").await;
    admin.create_department("OPS", "Ops").await.unwrap();
    admin.create_user(&new_user("ann", false)).await.unwrap();
    let ann = srv.sign_in("BETA", "ann").await;
    srv.enrol_totp("BETA", "ann", &ann).await;
    for (m, path, body) in [
        (
            Method::PUT,
            "/api/v1/roles/mine",
            json!({"grants": [{"record_type": "*", "actions": ["view"], "scope": "own"}]}),
        ),
        (
            Method::PUT,
            "/api/v1/departments/OPS/roles",
            json!({"roles": ["mine"]}),
        ),
        (Method::POST, "/api/v1/pledge", json!({"text": "Pledge."})),
        (
            Method::PUT,
            "/api/v1/security/training-policy",
            json!({"required": false, "interval_days": 30}),
        ),
        (
            Method::PUT,
            "/api/v1/users/ann/password-rules",
            json!({"min_length": 14, "min_score": 3, "require_classes": 0, "history": 2}),
        ),
        (
            Method::POST,
            "/api/v1/users/ann/api-keys",
            json!({"label": "k", "scopes": ["records:read"], "expires_in_days": 5}),
        ),
    ] {
        let r = send(&admin, m, path, body).await;
        assert!(
            r.status < 300,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let p = srv.client().login("BETA", "ann", "wrong wrong wrong").await;
    assert!(p.is_err());
    let mut policy = admin.sign_in_policy().await.unwrap();
    policy.two_factor = "all".into();
    admin.set_sign_in_policy(&policy).await.unwrap();
    let id = srv.company_id("BETA").await;
    srv.store().delete_company(id).await.unwrap();
    assert!(srv.store().company_by_code("BETA").await.unwrap().is_none());
    for table in [
        "roles",
        "user_roles",
        "department_roles",
        "pledge_versions",
        "training_policy",
        "user_password_rules",
        "sign_in_policy",
        "totp_factors",
        "recovery_codes",
        "api_keys",
        "users",
    ] {
        let n = srv
            .raw_sql(&format!("DELETE FROM {table} WHERE company_id = {}", id.0))
            .await;
        assert_eq!(n, 0, "{table} still holds rows of the deleted company");
    }
}

/// The server caches what its checks read (roles, IP rules, access hours,
/// record types) under a counter the store moves on every such change. A
/// change made beneath this server (by another node, a tool, plain SQL)
/// must apply at the next request all the same.
#[tokio::test]
async fn changes_made_beneath_the_server_apply_at_the_next_request() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    let r = record_in(&admin, "customer", None, customer("Beneath")).await;
    admin
        .create_user(&person(
            "pat",
            None,
            Classification::Restricted,
            &["records_full"],
        ))
        .await
        .unwrap();
    let pat = srv.sign_in("ACME", "pat").await;
    for _ in 0..3 {
        pat.record("customer", &r.id).await.unwrap();
    }

    // Roles taken away in the store: the next read is refused.
    let removed = srv
        .raw_sql(
            "DELETE FROM user_roles WHERE user_key = (SELECT id FROM users WHERE user_id = 'pat')",
        )
        .await;
    assert_eq!(removed, 1);
    assert_eq!(
        pat.record("customer", &r.id).await.unwrap_err().status(),
        Some(403)
    );
    // And given back the same way: allowed again.
    srv.raw_sql(
        "INSERT INTO user_roles (company_id, user_key, role_id) \
         SELECT u.company_id, u.id, r.id FROM users u JOIN roles r ON r.company_id = u.company_id \
         WHERE u.user_id = 'pat' AND r.name = 'records_full'",
    )
    .await;
    pat.record("customer", &r.id).await.unwrap();

    // Clearance lowered to the record type's level, then the type raised
    // above it, in the store: refused at once.
    srv.raw_sql("UPDATE users SET clearance = 'confidential' WHERE user_id = 'pat'")
        .await;
    pat.record("customer", &r.id).await.unwrap();
    srv.raw_sql(
        "UPDATE record_types SET classification = 'restricted' WHERE type_key = 'customer'",
    )
    .await;
    assert_eq!(
        pat.record("customer", &r.id).await.unwrap_err().status(),
        Some(403)
    );
    srv.raw_sql("UPDATE users SET clearance = 'restricted' WHERE user_id = 'pat'")
        .await;
    pat.record("customer", &r.id).await.unwrap();

    // A company block list naming the test client's address: refused, and
    // the session is ended.
    srv.raw_sql(
        "INSERT INTO ip_rules (company_id, user_key, kind, network, label, created_at) \
         SELECT id, NULL, 'block', '127.0.0.0/8', 'beneath', 0 FROM companies WHERE code = 'ACME'",
    )
    .await;
    assert_eq!(
        pat.record("customer", &r.id).await.unwrap_err().status(),
        Some(403)
    );
}
