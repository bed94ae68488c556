//! Field encryption, proven from the outside: what a thief with the
//! database (and the log) gets, what tampering does, keys and rotation.
//! Runs over SQLite and PostgreSQL like the main suite.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use strongroom_core::clock::Clock;
use strongroom_crypto::provider::KeyProvider;

use serde_json::{json, Value};
use strongroom_proto::*;
use strongroom_testkit::client::Client;
use strongroom_testkit::{captured_logs, Backend, TestServer};

fn data(v: Value) -> RecordData {
    v.as_object().unwrap().clone()
}

async fn create(c: &Client, t: &str, v: Value) -> RecordView {
    strongroom_testkit::add_record(c, t, v).await
}

async fn reveal(srv: &TestServer, c: &Client, t: &str, id: &str) -> RecordView {
    let r = c
        .raw_get(&format!("/api/v1/records/{t}/{id}?reveal=all"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let _ = srv;
    serde_json::from_slice(&r.body).unwrap()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

// Values no other test uses, so a scan of the shared log finds only ours.
const NATIONAL_ID: &str = "079188004321";
const CARD: &str = "4539578763621486";
const BANK: &str = "0071009988776";
const SALARY: &str = "98765.43";

#[tokio::test]
async fn a_copy_of_the_database_or_the_log_reveals_no_protected_value() {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    let emp = create(
        &c,
        "employee",
        json!({"name": "Nguyen Van A", "national_id": "079 188 004 321", "card_number": "4539-5787-6362-1486",
               "bank_account": BANK, "salary": SALARY}),
    )
    .await;
    // Masked by default, to everyone.
    assert_eq!(emp.data["national_id"], "*********321");
    assert_eq!(emp.data["card_number"], "************1486");
    assert_eq!(emp.data["bank_account"], "*********8776");
    assert_eq!(emp.data["salary"], "****");
    assert_eq!(
        emp.data["name"], "Nguyen Van A",
        "unprotected fields are plain"
    );
    let mut masked = emp.masked.clone();
    masked.sort();
    assert_eq!(
        masked,
        vec!["bank_account", "card_number", "national_id", "salary"]
    );

    // Changes keep values sealed in history too.
    c.update_record(
        "employee",
        &emp.id,
        &UpdateRecord {
            data: data(json!({"phone": "+84 90 000 0000"})),
            expected_version: None,
        },
    )
    .await
    .unwrap();
    let history = c.record_history("employee", &emp.id).await.unwrap();
    assert!(history
        .iter()
        .all(|v| v.data["national_id"] == "*********321"));

    let raw = srv.raw_storage().await;
    assert!(
        contains(&raw, "Nguyen Van A"),
        "the scan must see plain fields, or it proves nothing"
    );
    for secret in [NATIONAL_ID, CARD, BANK, SALARY, "4539-5787", "079 188"] {
        assert!(
            !contains(&raw, secret),
            "{secret} is readable in the stored data"
        );
    }
    let logs = captured_logs();
    for secret in [NATIONAL_ID, CARD, BANK, SALARY] {
        assert!(!logs.contains(secret), "{secret} is in the server log");
    }
}

#[tokio::test]
async fn admins_reveal_on_request_and_the_reveal_is_audited() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    admin
        .create_user(&strongroom_testkit::new_user("clerk", false))
        .await
        .unwrap();
    let clerk = srv.sign_in("ACME", "clerk").await;
    let r = create(
        &clerk,
        "customer",
        json!({"name": "Kim", "national_id": "900101-1234567", "card_number": CARD}),
    )
    .await;

    let full = reveal(&srv, &admin, "customer", &r.id).await;
    assert_eq!(full.data["national_id"], "9001011234567");
    assert_eq!(full.data["card_number"], CARD);
    assert!(full.masked.is_empty());

    // Only the named field is revealed.
    let one = admin
        .raw(
            reqwest::Method::GET,
            &format!("/api/v1/records/customer/{}?reveal=card_number", r.id),
            None,
            vec![],
        )
        .await
        .unwrap()
        .json();
    assert_eq!(one["data"]["card_number"], CARD);
    assert_eq!(one["data"]["national_id"], "**********567");

    // A clerk may not reveal.
    let denied = clerk
        .raw(
            reqwest::Method::GET,
            &format!("/api/v1/records/customer/{}?reveal=all", r.id),
            None,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["code"], "forbidden");

    let events = srv.audit_events("ACME").await;
    let reveals: Vec<_> = events
        .iter()
        .filter(|e| {
            e.action == "record.reveal" && e.outcome == strongroom_core::audit::Outcome::Success
        })
        .collect();
    assert_eq!(reveals.len(), 2, "{events:?}");
    // The clerk's attempt is recorded as a denial.
    assert!(events.iter().any(|e| e.action == "record.reveal"
        && e.actor == "user:clerk"
        && e.outcome == strongroom_core::audit::Outcome::Denied
        && e.reason.as_deref() == Some("forbidden")));
    assert!(reveals
        .iter()
        .all(|e| e.actor == "user:master" && e.target == format!("customer/{}", r.id)));
    assert!(reveals[1].detail.contains("card_number"));
    for e in &events {
        assert!(
            !e.detail.contains(CARD) && !e.detail.contains("1234567"),
            "a value reached the audit log"
        );
    }
}

#[tokio::test]
async fn exact_search_on_encrypted_fields_uses_blind_indexes() {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    let a = create(
        &c,
        "customer",
        json!({"name": "A", "national_id": "079201001234"}),
    )
    .await;
    create(
        &c,
        "customer",
        json!({"name": "B", "national_id": "079201005678"}),
    )
    .await;
    create(
        &c,
        "customer",
        json!({"name": "C", "bank_account": "DE89 3704 0044 0532 0130 00"}),
    )
    .await;

    // Written differently, normalised the same.
    let found = c
        .list_records("customer", &[("f.national_id", "079-201-001-234")])
        .await
        .unwrap();
    assert_eq!(found.items.len(), 1);
    assert_eq!(found.items[0].id, a.id);
    assert_eq!(found.items[0].data["national_id"], "*********234");
    assert!(c
        .list_records("customer", &[("f.national_id", "079201009999")])
        .await
        .unwrap()
        .items
        .is_empty());
    let iban = c
        .list_records("customer", &[("f.bank_account", "de89370400440532013000")])
        .await
        .unwrap();
    assert_eq!(iban.items.len(), 1);

    // The index holds no plain value.
    let raw = srv.raw_storage().await;
    assert!(!contains(&raw, "079201001234"));
    assert!(!contains(&raw, "DE89370400440532013000"));

    // Bad values are refused with the rule that failed.
    for (field, bad, says) in [
        ("card_number", "4539 5787 6362 1487", "check digit"),
        ("national_id", "999201001234", "province"),
        ("bank_account", "DE00370400440532013000", "IBAN"),
    ] {
        let e = c
            .create_record(
                "customer",
                &CreateRecord {
                    data: data(json!({"name": "X", field: bad})),
                    department: None,
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::ValidationFailed));
        assert!(e.to_string().contains(says), "{e}");
    }
}

async fn stored_data(srv: &TestServer, id: &str) -> String {
    use sqlx::Row;
    sqlx::query(&format!(
        "SELECT data FROM records WHERE public_id = '{id}'"
    ))
    .fetch_one(srv.store().raw_pool())
    .await
    .unwrap()
    .try_get("data")
    .unwrap()
}

async fn set_stored_data(srv: &TestServer, id: &str, text: &str) {
    let escaped = text.replace('\'', "''");
    let n = srv
        .raw_sql(&format!(
            "UPDATE records SET data = '{escaped}' WHERE public_id = '{id}'"
        ))
        .await;
    assert_eq!(n, 1);
}

async fn expect_integrity_error(c: &Client, t: &str, id: &str) {
    let r = c
        .raw_get(&format!("/api/v1/records/{t}/{id}"))
        .await
        .unwrap();
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["code"], "integrity_error");
    assert!(!String::from_utf8_lossy(&r.body).contains("sr1:"));
}

#[tokio::test]
async fn moved_or_altered_ciphertexts_are_reported_as_tampering() {
    let srv = TestServer::start().await;
    let a = srv.company_master("ALPHA").await;
    let b = srv.company_master("BETA").await;
    let r1 = create(
        &a,
        "customer",
        json!({"name": "One", "national_id": "079201001111", "card_number": CARD}),
    )
    .await;
    let r2 = create(
        &a,
        "customer",
        json!({"name": "Two", "national_id": "079201002222"}),
    )
    .await;
    let rb = create(
        &b,
        "customer",
        json!({"name": "Beta", "national_id": "079201003333"}),
    )
    .await;

    let d1: serde_json::Map<String, Value> =
        serde_json::from_str(&stored_data(&srv, &r1.id).await).unwrap();
    let d2: serde_json::Map<String, Value> =
        serde_json::from_str(&stored_data(&srv, &r2.id).await).unwrap();
    let db: serde_json::Map<String, Value> =
        serde_json::from_str(&stored_data(&srv, &rb.id).await).unwrap();

    // Another record's ciphertext.
    let mut swapped = d2.clone();
    swapped.insert("national_id".into(), d1["national_id"].clone());
    set_stored_data(&srv, &r2.id, &Value::Object(swapped).to_string()).await;
    expect_integrity_error(&a, "customer", &r2.id).await;

    // Another field's ciphertext within the same record.
    let mut crossed = d1.clone();
    crossed.insert("national_id".into(), d1["card_number"].clone());
    set_stored_data(&srv, &r1.id, &Value::Object(crossed).to_string()).await;
    expect_integrity_error(&a, "customer", &r1.id).await;

    // Another company's ciphertext.
    let mut foreign = db.clone();
    foreign.insert("national_id".into(), d1["national_id"].clone());
    set_stored_data(&srv, &rb.id, &Value::Object(foreign).to_string()).await;
    expect_integrity_error(&b, "customer", &rb.id).await;

    // A plain value slipped into a protected field.
    let mut plain = d1.clone();
    plain.insert("national_id".into(), json!("079201001111"));
    set_stored_data(&srv, &r1.id, &Value::Object(plain).to_string()).await;
    expect_integrity_error(&a, "customer", &r1.id).await;
    // Lists fail closed the same way rather than skipping the record.
    let e = a.list_records("customer", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::IntegrityError));

    // Putting the original back makes it readable again.
    set_stored_data(&srv, &r1.id, &Value::Object(d1).to_string()).await;
    assert_eq!(
        reveal(&srv, &a, "customer", &r1.id).await.data["national_id"],
        "079201001111"
    );
    assert!(captured_logs().contains("INTEGRITY"));
}

#[tokio::test]
async fn without_the_master_key_the_server_refuses_to_start() {
    let srv = TestServer::start().await;
    srv.company("ACME").await;
    let (config, resolved) = srv.config();
    let key = config.key_dir.join("master.key");
    let saved = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let clock = Arc::new(srv.clock.clone());
    let e = strongroom_server::prepare(&config, &resolved, clock.clone())
        .await
        .err()
        .expect("start-up must fail without the key")
        .to_string();
    assert!(e.contains("missing") && e.contains("restore"), "{e}");
    assert!(!key.exists(), "no new key may be made in its place");

    // A different key does not open the stored keys either.
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .unwrap();
        std::io::Write::write_all(
            &mut f,
            format!("strongroom-master-key-v1\n{}\n", "ab".repeat(32)).as_bytes(),
        )
        .unwrap();
    }
    let prepared = strongroom_server::prepare(&config, &resolved, clock.clone()).await;
    // It may start (keys are unwrapped on first use) but cannot read anything.
    if let Ok(p) = prepared {
        let (company, _) = p
            .state
            .store
            .company_by_code("ACME")
            .await
            .unwrap()
            .unwrap();
        assert!(p
            .state
            .keys
            .current(company, strongroom_store::KeyPurpose::Data)
            .await
            .is_err());
    }
    std::fs::remove_file(&key).unwrap();
    std::fs::write(&key, saved).unwrap();
}

#[tokio::test]
async fn data_key_rotation_under_concurrent_writes_loses_nothing() {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let r = create(
            &c,
            "customer",
            json!({"name": format!("C{i}"), "national_id": format!("0792010{i:05}")}),
        )
        .await;
        ids.push(r.id);
    }
    let company = srv.company_id("ACME").await;
    let keys = srv.state.keys.clone();
    let v = keys
        .rotate_data_key(company, "ACME", srv.clock.now())
        .await
        .unwrap();
    assert_eq!(v, 2);

    // Writers change half the records while the re-encryption runs.
    let writer = {
        let c = c.clone();
        let ids = ids.clone();
        tokio::spawn(async move {
            for (i, id) in ids.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
                c.update_record(
                    "customer",
                    id,
                    &UpdateRecord {
                        data: data(json!({"national_id": format!("0792020{i:05}")})),
                        expected_version: None,
                    },
                )
                .await
                .unwrap();
            }
        })
    };
    let store = srv.store().clone();
    let clock = srv.clock.clone();
    let mut reports = 0;
    let finished =
        strongroom_server::reencrypt::run_pending(&store, &keys, || clock.now(), |_| reports += 1)
            .await
            .unwrap();
    writer.await.unwrap();
    assert_eq!(finished, 1);
    assert!(reports > 0, "progress was reported");
    // A second pass (as the server's housekeeping would run) finds nothing left.
    strongroom_server::reencrypt::run_pending(&store, &keys, || clock.now(), |_| {})
        .await
        .unwrap();

    for (i, id) in ids.iter().enumerate() {
        let r = reveal(&srv, &c, "customer", id).await;
        let want = if i % 2 == 0 {
            format!("0792020{i:05}")
        } else {
            format!("0792010{i:05}")
        };
        assert_eq!(r.data["national_id"], want.as_str(), "record {i}");
        let stored = stored_data(&srv, id).await;
        assert!(
            stored.contains("\"sr1:2:"),
            "record {i} not moved to v2: {stored}"
        );
        assert!(!stored.contains("\"sr1:1:"));
        // History is readable and re-encrypted too.
        let h = c.record_history("customer", id).await.unwrap();
        assert_eq!(h.len(), if i % 2 == 0 { 2 } else { 1 }, "record {i}");
    }
    let old_history = srv
        .raw_sql(
            "UPDATE record_versions SET change_kind = change_kind WHERE data LIKE '%\"sr1:1:%'",
        )
        .await;
    assert_eq!(
        old_history, 0,
        "history rows still sealed under the old key"
    );
    let all = srv.store().all_keys().await.unwrap();
    let data_keys: Vec<_> = all
        .iter()
        .filter(|k| k.company_code == "ACME" && k.purpose == strongroom_store::KeyPurpose::Data)
        .collect();
    assert_eq!(data_keys.len(), 2);
    assert_eq!(data_keys[0].status, "retired");
    assert_eq!(data_keys[1].status, "active");
    let raw = srv.raw_storage().await;
    assert!(!contains(&raw, "079201000003"));
}

#[tokio::test]
async fn master_key_rotation_rewraps_keys_without_touching_records() {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    let r = create(&c, "customer", json!({"name": "A", "card_number": CARD})).await;
    let before = stored_data(&srv, &r.id).await;
    let (config, resolved) = srv.config();
    let (file, _) =
        strongroom_crypto::keyfile::open(&config.key_dir, &config.data_dir, false).unwrap();
    let old_id = file.current_key_id();
    file.add_master_key().unwrap();
    let n = strongroom_server::keys::rewrap_all(&file, srv.store())
        .await
        .unwrap();
    assert_eq!(n, 3, "data, index and audit-signing keys");
    file.drop_old_master_keys().unwrap();
    assert_eq!(stored_data(&srv, &r.id).await, before, "records untouched");
    assert!(srv
        .store()
        .all_keys()
        .await
        .unwrap()
        .iter()
        .all(|k| k.wrap_key_id != old_id));

    // A fresh start (nothing cached) reads the record with the new master key.
    let p = strongroom_server::prepare(&config, &resolved, Arc::new(srv.clock.clone()))
        .await
        .unwrap();
    let (company, _) = p
        .state
        .store
        .company_by_code("ACME")
        .await
        .unwrap()
        .unwrap();
    p.state
        .keys
        .current(company, strongroom_store::KeyPurpose::Data)
        .await
        .unwrap();
    assert_eq!(
        reveal(&srv, &c, "customer", &r.id).await.data["card_number"],
        CARD
    );
    let _ = srv.backend == Backend::Sqlite;
}
