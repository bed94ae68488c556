//! The audit log from the outside: every access writes its event before the
//! answer, a failed audit write fails the request, and every kind of
//! tampering is found. Runs over SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use reqwest::Method;
use serde_json::{json, Value};
use strongroom_core::audit::{AuditEvent, Outcome, SERVER_CHAIN};
use strongroom_core::clock::Clock;
use strongroom_proto::*;
use strongroom_store::ChainLink;
use strongroom_testkit::client::{Client, RawResponse};
use strongroom_testkit::{Backend, TestServer, PASSWORD};

async fn call(c: &Client, m: Method, path: &str, body: Option<Value>) -> RawResponse {
    let (ct, bytes) = match body {
        Some(b) => (Some("application/json"), serde_json::to_vec(&b).unwrap()),
        None => (None, vec![]),
    };
    c.raw(m, path, ct, bytes).await.unwrap()
}

fn request_id(r: &RawResponse) -> String {
    r.headers["x-request-id"].to_str().unwrap().to_owned()
}

fn uuid_like() -> String {
    "00000000-0000-4000-8000-000000000001".to_owned()
}

async fn last_event(srv: &TestServer) -> AuditEvent {
    srv.audit_events("ACME").await.pop().expect("an event")
}

async fn company_chain(srv: &TestServer) -> i64 {
    srv.company_id("ACME").await.0
}

#[tokio::test]
async fn every_record_endpoint_writes_its_event_before_answering() {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    let created = call(
        &c,
        Method::POST,
        "/api/v1/records/customer",
        Some(json!({"data": {"name": "Audited", "national_id": "079201007777"}})),
    )
    .await;
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let e = last_event(&srv).await;
    assert_eq!(
        (e.action.as_str(), e.target.as_str()),
        ("record.create", format!("customer/{id}").as_str())
    );
    assert_eq!(e.request_id.as_deref(), Some(request_id(&created).as_str()));

    // Every record endpoint in the OpenAPI document must be listed here with
    // the event it writes: a new endpoint without one fails this test.
    let doc = c.openapi().await.unwrap();
    let mut seen = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/v1/records") {
            continue;
        }
        for method in ops.as_object().unwrap().keys() {
            let concrete = path.replace("{type}", "customer").replace("{id}", &id);
            let (m, body, action): (Method, Option<Value>, &str) =
                match (method.as_str(), path.as_str()) {
                    ("get", "/api/v1/records/{type}") => (Method::GET, None, "record.list"),
                    ("post", "/api/v1/records/{type}") => (
                        Method::POST,
                        Some(json!({"data": {"name": "Another"}})),
                        "record.create",
                    ),
                    ("get", "/api/v1/records/{type}/{id}") => (Method::GET, None, "record.read"),
                    ("patch", "/api/v1/records/{type}/{id}") => (
                        Method::PATCH,
                        Some(json!({"data": {"phone": "+84 28 1111 2222"}})),
                        "record.update",
                    ),
                    ("delete", "/api/v1/records/{type}/{id}") => {
                        (Method::DELETE, None, "record.delete")
                    }
                    ("get", "/api/v1/records/{type}/{id}/history") => {
                        (Method::GET, None, "record.history")
                    }
                    ("post", "/api/v1/records/{type}/{id}/restore") => {
                        (Method::POST, None, "record.restore")
                    }
                    ("get", "/api/v1/records/{type}/export") => {
                        (Method::GET, None, "record.export")
                    }
                    other => panic!("record endpoint {other:?} has no audit expectation; add one"),
                };
            // Delete and restore need the record in the right state.
            if action == "record.restore" && c.record("customer", &id).await.is_ok() {
                c.delete_record("customer", &id).await.unwrap();
            }
            if action == "record.delete" && c.record("customer", &id).await.is_err() {
                c.restore_record("customer", &id, None).await.unwrap();
            }
            if matches!(action, "record.read" | "record.update" | "record.history")
                && c.record("customer", &id).await.is_err()
            {
                c.restore_record("customer", &id, None).await.unwrap();
            }
            let r = call(&c, m.clone(), &concrete, body).await;
            assert!(
                r.status < 300,
                "{method} {path}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
            let e = last_event(&srv).await;
            assert_eq!(e.action, action, "{method} {path}");
            assert_eq!(e.actor, "user:master");
            assert_eq!(e.outcome, Outcome::Success);
            assert_eq!(
                e.request_id.as_deref(),
                Some(request_id(&r).as_str()),
                "{method} {path}"
            );
            assert_eq!(e.client_ip.as_deref(), Some("127.0.0.1"));
            assert!(e.session.is_some());
            assert!(
                !e.detail.contains("079201007777"),
                "a value reached the audit log: {}",
                e.detail
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 8);

    // Reads say which fields were returned and which were masked.
    call(
        &c,
        Method::GET,
        &format!("/api/v1/records/customer/{id}"),
        None,
    )
    .await;
    let e = last_event(&srv).await;
    let d: Value = serde_json::from_str(&e.detail).unwrap();
    assert!(d["returned"].as_array().unwrap().contains(&json!("name")));
    assert_eq!(d["masked"], json!(["national_id"]));
    // Ids that do not exist are recorded as failures (probing shows up).
    let ghost = uuid_like();
    let r = call(
        &c,
        Method::GET,
        &format!("/api/v1/records/customer/{ghost}"),
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    let e = last_event(&srv).await;
    assert_eq!(
        (e.action.as_str(), e.outcome, e.reason.as_deref()),
        ("record.read", Outcome::Failed, Some("not_found"))
    );
    // Searches name the fields searched, never the value.
    call(
        &c,
        Method::GET,
        "/api/v1/records/customer?f.national_id=079201007777",
        None,
    )
    .await;
    let e = last_event(&srv).await;
    assert_eq!(e.action, "record.search");
    assert!(e.detail.contains("national_id") && !e.detail.contains("079201007777"));
}

#[tokio::test]
async fn sign_in_decisions_are_recorded_with_their_reasons() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    admin
        .create_user(&strongroom_testkit::new_user("gone", false))
        .await
        .unwrap();
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
    for (company, user, pw) in [
        ("ACME", "master", "wrong password 123"),
        ("ACME", "nobody", PASSWORD),
        ("ACME", "gone", PASSWORD),
        ("NOPE", "master", PASSWORD),
    ] {
        assert!(anon.login(company, user, pw).await.is_err());
    }
    let events: Vec<AuditEvent> = srv
        .audit_events("ACME")
        .await
        .into_iter()
        .filter(|e| e.action == "auth.login")
        .collect();
    let reasons: Vec<(String, Option<String>)> = events
        .iter()
        .map(|e| (e.actor.clone(), e.reason.clone()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("user:master".into(), None),
            ("user:master".into(), Some("bad_password".into())),
            ("user:nobody".into(), Some("unknown_user".into())),
            ("user:gone".into(), Some("account_disabled".into())),
        ]
    );
    assert!(events[1..].iter().all(|e| e.outcome == Outcome::Denied));
    // An unknown company's attempt goes to the server's own chain.
    let server = srv.chain_events(SERVER_CHAIN).await;
    assert!(server
        .iter()
        .any(|e| e.action == "auth.login" && e.reason.as_deref() == Some("unknown_company")));
    for e in events.iter().chain(server.iter()) {
        assert!(!e.detail.contains("wrong password") && !e.detail.contains(PASSWORD));
    }
    // Sessions that end by themselves are recorded too.
    srv.clock.advance(chrono::Duration::minutes(31));
    assert!(admin.session().await.is_err());
    let e = last_event(&srv).await;
    assert_eq!(
        (e.action.as_str(), e.reason.as_deref()),
        ("session.end", Some("idle_timeout"))
    );
}

async fn no_audit_writes(srv: &TestServer) {
    match srv.backend {
        Backend::Sqlite => {
            srv.raw_sql("CREATE TRIGGER no_audit BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'audit disk full'); END")
                .await;
        }
        Backend::Postgres => {
            srv.raw_sql("CREATE FUNCTION no_audit() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit disk full'; END $$ LANGUAGE plpgsql")
                .await;
            srv.raw_sql("CREATE TRIGGER no_audit BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION no_audit()")
                .await;
        }
    }
}

async fn audit_writes_again(srv: &TestServer) {
    match srv.backend {
        Backend::Sqlite => srv.raw_sql("DROP TRIGGER no_audit").await,
        Backend::Postgres => srv.raw_sql("DROP TRIGGER no_audit ON audit_events").await,
    };
}

#[tokio::test]
async fn a_request_whose_audit_event_cannot_be_stored_fails() {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    let r = strongroom_testkit::add_record(&c, "customer", json!({"name": "Before"})).await;
    no_audit_writes(&srv).await;

    let read = call(
        &c,
        Method::GET,
        &format!("/api/v1/records/customer/{}", r.id),
        None,
    )
    .await;
    assert_eq!(read.status, 500);
    assert!(
        !String::from_utf8_lossy(&read.body).contains("Before"),
        "data left without its audit event"
    );
    assert!(
        !String::from_utf8_lossy(&read.body).contains("audit disk full"),
        "internal text reached the client"
    );
    let list = call(&c, Method::GET, "/api/v1/records/customer", None).await;
    assert_eq!(list.status, 500);
    let update = call(
        &c,
        Method::PATCH,
        &format!("/api/v1/records/customer/{}", r.id),
        Some(json!({"data": {"name": "After"}})),
    )
    .await;
    assert_eq!(update.status, 500);
    let created = call(
        &c,
        Method::POST,
        "/api/v1/records/customer",
        Some(json!({"data": {"name": "Ghost"}})),
    )
    .await;
    assert_eq!(created.status, 500);
    assert!(
        srv.client()
            .login("ACME", "master", PASSWORD)
            .await
            .is_err(),
        "no session without its audit event"
    );

    audit_writes_again(&srv).await;
    // The write did not happen without its event.
    assert_eq!(
        c.record("customer", &r.id).await.unwrap().data["name"],
        "Before"
    );
    assert_eq!(
        c.list_records("customer", &[]).await.unwrap().items.len(),
        1
    );
}

#[tokio::test]
async fn the_log_is_read_by_administrators_and_reading_is_recorded() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    admin
        .create_user(&strongroom_testkit::new_user("clerk", false))
        .await
        .unwrap();
    let clerk = srv.sign_in("ACME", "clerk").await;
    for i in 0..3 {
        strongroom_testkit::add_record(&clerk, "customer", json!({"name": format!("N{i}")})).await;
    }
    let denied = call(&clerk, Method::GET, "/api/v1/audit/events", None).await;
    assert_eq!(denied.status, 403);
    let e = last_event(&srv).await;
    assert_eq!(
        (e.action.as_str(), e.outcome, e.actor.as_str()),
        ("audit.read", Outcome::Denied, "user:clerk")
    );

    let page = call(
        &admin,
        Method::GET,
        "/api/v1/audit/events?action=record.create&limit=2",
        None,
    )
    .await
    .json();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert!(page["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["action"] == "record.create" && e["actor"] == "user:clerk"));
    let after = page["next_after"].as_i64().unwrap();
    let rest = call(
        &admin,
        Method::GET,
        &format!("/api/v1/audit/events?action=record.create&after={after}"),
        None,
    )
    .await
    .json();
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next_after"].is_null());
    assert_eq!(rest["items"][0]["hash"].as_str().unwrap().len(), 64);
    let e = last_event(&srv).await;
    assert_eq!(
        (e.action.as_str(), e.actor.as_str()),
        ("audit.read", "user:master")
    );
    let bad = call(&admin, Method::GET, "/api/v1/audit/events?limit=0", None).await;
    assert_eq!(bad.status, 400);
    let bad = call(&admin, Method::GET, "/api/v1/audit/events?colour=red", None).await;
    assert_eq!(bad.status, 400);
}

/// A server with a chain of at least `n` events, signed at its head.
async fn signed_chain(n: usize) -> (TestServer, i64) {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    for i in 0..n {
        strongroom_testkit::add_record(&c, "customer", json!({"name": format!("E{i}")})).await;
    }
    let chain = company_chain(&srv).await;
    strongroom_server::audit::checkpoint_all(srv.store(), &srv.state.keys, srv.clock.now(), true)
        .await
        .unwrap();
    let v = verify(&srv, chain).await;
    assert_eq!(v.problem, None, "untouched chain must verify");
    assert!(v.checkpoints >= 1);
    (srv, chain)
}

/// Verifies a chain read whole, and again read in two halves at once (as
/// long chains are read): both must find the same.
async fn verify(srv: &TestServer, chain: i64) -> strongroom_server::audit::Verification {
    let read = |split_from| {
        strongroom_server::audit::verify_split_from(
            srv.store(),
            &srv.state.keys,
            chain,
            true,
            None,
            split_from,
        )
    };
    let whole = read(i64::MAX).await.unwrap();
    let halves = read(2).await.unwrap();
    assert_eq!(
        (&halves.problem, halves.checkpoints),
        (&whole.problem, whole.checkpoints),
        "read in halves, the chain must verify as it does read whole"
    );
    whole
}

/// The first 1000 events of the log, as the API lists them to `c` (it
/// must answer 200).
async fn audit_page(c: &Client) -> Vec<Value> {
    let page = c.raw_get("/api/v1/audit/events?limit=1000").await.unwrap();
    assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
    page.json()["items"].as_array().unwrap().clone()
}

/// Changes one stored event by hand (`set` is an SQL assignment), as an
/// intruder with access to the database would.
async fn change_event(srv: &TestServer, chain: i64, seq: i64, set: &str) {
    let changed = srv
        .raw_sql(&format!(
            "UPDATE audit_events SET {set} WHERE chain = {chain} AND seq = {seq}"
        ))
        .await;
    assert_eq!(
        changed, 1,
        "event {seq} of chain {chain} is there to change"
    );
}

async fn problem(srv: &TestServer, chain: i64) -> String {
    verify(srv, chain)
        .await
        .problem
        .expect("tampering must be found")
}

#[tokio::test]
async fn each_kind_of_tampering_is_found_and_named() {
    // Changed.
    let (srv, chain) = signed_chain(6).await;
    change_event(&srv, chain, 3, "actor = 'user:someone-else'").await;
    assert_eq!(
        problem(&srv, chain).await,
        "event 3 was changed after it was written"
    );

    // Deleted.
    let (srv, chain) = signed_chain(6).await;
    srv.raw_sql(&format!(
        "DELETE FROM audit_events WHERE chain = {chain} AND seq = 3"
    ))
    .await;
    assert!(problem(&srv, chain).await.starts_with("event 3 is missing"));

    // Inserted (later events shifted up to make room, as a careful forger would).
    let (srv, chain) = signed_chain(6).await;
    srv.raw_sql(&format!(
        "UPDATE audit_events SET seq = seq + 1000 WHERE chain = {chain} AND seq >= 3"
    ))
    .await;
    srv.raw_sql(&format!(
        "UPDATE audit_events SET seq = seq - 999 WHERE chain = {chain} AND seq >= 1003"
    ))
    .await;
    srv.raw_sql(&format!(
        "INSERT INTO audit_events (chain, seq, at, actor, action, target, outcome, detail, prev_hash, hash) \
         SELECT chain, 3, at, 'user:forger', 'record.read', target, outcome, '{{}}', prev_hash, hash \
         FROM audit_events WHERE chain = {chain} AND seq = 2"
    ))
    .await;
    let p = problem(&srv, chain).await;
    assert!(p.starts_with("event 3"), "{p}");

    // Reordered.
    let (srv, chain) = signed_chain(6).await;
    change_event(&srv, chain, 3, "seq = 1000").await;
    change_event(&srv, chain, 4, "seq = 3").await;
    change_event(&srv, chain, 1000, "seq = 4").await;
    assert_eq!(
        problem(&srv, chain).await,
        "event 3 does not follow event 2: the chain is broken (an event was removed, inserted or reordered)"
    );

    // Truncated, with the head moved back to hide it: the signed checkpoint
    // still vouches for the lost events.
    let (srv, chain) = signed_chain(6).await;
    let head = srv.store().audit_head(chain).await.unwrap().unwrap().0;
    let keep = head - 3;
    srv.raw_sql(&format!(
        "DELETE FROM audit_events WHERE chain = {chain} AND seq > {keep}"
    ))
    .await;
    srv.raw_sql(&format!(
        "UPDATE audit_heads SET seq = {keep}, hash = (SELECT hash FROM audit_events WHERE chain = {chain} AND seq = {keep}) WHERE chain = {chain}"
    ))
    .await;
    let p = problem(&srv, chain).await;
    assert!(
        p.contains("truncated") && p.contains(&format!("event {head}")),
        "{p}"
    );

    // A forged checkpoint signature.
    let (srv, chain) = signed_chain(3).await;
    let sig_sql = match srv.backend {
        Backend::Sqlite => "UPDATE audit_checkpoints SET signature = zeroblob(64)",
        Backend::Postgres => {
            "UPDATE audit_checkpoints SET signature = decode(repeat('00', 64), 'hex')"
        }
    };
    srv.raw_sql(sig_sql).await;
    assert!(problem(&srv, chain).await.contains("bad signature"));

    // A value no writer stores: named by its place, not an internal error.
    let (srv, chain) = signed_chain(6).await;
    change_event(&srv, chain, 3, "outcome = 'maybe'").await;
    assert_eq!(
        problem(&srv, chain).await,
        format!("audit event 3 of chain {chain}: audit outcome 'maybe'")
    );
}

/// SQLite keeps whatever bytes it is given in a TEXT column: a value that
/// is not UTF-8, or a blob, is a changed event like any other, named by
/// its place in the chain, and not a failure of the verification itself.
#[tokio::test]
async fn bytes_that_are_not_text_read_as_a_changed_event() {
    let (srv, chain) = signed_chain(6).await;
    if srv.backend == Backend::Postgres {
        // PostgreSQL refuses text that is not UTF-8 when it is written.
        return;
    }
    change_event(&srv, chain, 3, "target = CAST(X'FF00FE' AS TEXT)").await;
    change_event(&srv, chain, 4, "actor = 42, hash = CAST(hash AS TEXT)").await;
    assert_eq!(
        problem(&srv, chain).await,
        "event 3 was changed after it was written"
    );
    // The log's readers still show both events and every one after them:
    // a bad row must not hide the rest of the log.
    let head = srv.store().audit_head(chain).await.unwrap().unwrap().0;
    let items = audit_page(&srv.sign_in("ACME", "master").await).await;
    let at = |seq: i64| {
        items
            .iter()
            .find(|e| e["seq"] == seq)
            .unwrap_or_else(|| panic!("event {seq} is listed"))
    };
    assert_eq!(at(3)["target"], "\u{fffd}\u{0}\u{fffd}");
    assert_eq!(at(3)["damaged"], "its target is not UTF-8 text");
    assert_eq!(at(4)["actor"], "42");
    assert!(at(4).get("damaged").is_none(), "{}", at(4));
    assert!(
        items.iter().any(|e| e["seq"] == head),
        "the newest event before the request is listed"
    );

    // A time that is not a number (INTEGER affinity keeps such text) is
    // a changed event too, named by its place.
    let (srv, chain) = signed_chain(6).await;
    change_event(&srv, chain, 3, "at = 'yesterday'").await;
    assert_eq!(
        problem(&srv, chain).await,
        format!("audit event 3 of chain {chain}: its time is not a number")
    );
    // A place that is not a number is left out by the readers.
    change_event(&srv, chain, 5, "seq = 'five'").await;
    // The API's reader shows it, says what is wrong, and goes on past it.
    let items = audit_page(&srv.sign_in("ACME", "master").await).await;
    assert_eq!(items[2]["seq"], 3);
    assert_eq!(items[2]["damaged"], "its time is not a number");
    assert_eq!(items[2]["at"], "1970-01-01T00:00:00Z");
    let listed: Vec<i64> = items.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(&listed[..5], &[1, 2, 3, 4, 6], "{listed:?}");

    let (srv, chain) = signed_chain(6).await;
    // The same bytes as a blob are the same event...
    change_event(
        &srv,
        chain,
        3,
        "actor = CAST(actor AS BLOB), prev_hash = CAST(prev_hash AS TEXT)",
    )
    .await;
    assert_eq!(verify(&srv, chain).await.problem, None);
    // ...and other bytes are not.
    change_event(&srv, chain, 4, "actor = X'00'").await;
    assert_eq!(
        problem(&srv, chain).await,
        "event 4 was changed after it was written"
    );
}

/// Chain verification reads events through `scan_audit` (on SQLite, a
/// driver of its own): every kind of text must come back byte for byte (or
/// every hash fails), in order, the same as the API's reader gives.
#[tokio::test]
async fn pages_read_for_verification_keep_every_byte_of_every_event() {
    let srv = TestServer::start().await;
    srv.company_master("ACME").await;
    let chain = company_chain(&srv).await;
    let awkward = [
        "plain",
        "quote \" backslash \\ slash / tab \t newline \n return \r",
        "control \u{1}\u{1f}\u{7f} and \u{2028}\u{2029}",
        "accents: Nguyễn Thị Minh Khai, Zürich, Łódź; emoji 🗝️👩‍💼; combining e\u{301}",
        "json-looking: {\"a\": [1, 2]} and [\"x\"] and null",
        "",
    ];
    let long = "x".repeat(20_000);
    // Stored to the microsecond.
    let at = chrono::DateTime::from_timestamp_micros(srv.clock.now().timestamp_micros()).unwrap();
    let mut events = Vec::new();
    for (i, text) in awkward.iter().chain([&long.as_str()]).enumerate() {
        events.push(AuditEvent {
            chain,
            at,
            actor: format!("user:{text}"),
            action: "test.awkward".into(),
            target: (*text).to_owned(),
            outcome: if i % 2 == 0 {
                Outcome::Success
            } else {
                Outcome::Denied
            },
            reason: (i % 3 == 0).then(|| (*text).to_owned()),
            detail: serde_json::to_string(&json!({ "text": text })).unwrap(),
            session: None,
            client_ip: Some("2001:db8::1".into()),
            user_agent: (i % 2 == 1).then(|| (*text).to_owned()),
            request_id: None,
        });
    }
    srv.store().append_audit(&events).await.unwrap();
    let by_rows = srv.stored_chain_events(chain).await;
    assert!(by_rows.len() > events.len());
    let scan = |after: i64, until: i64, stop_after: usize| {
        srv.store()
            .scan_audit(chain, after, until, Vec::new(), move |seen, e| {
                seen.push(e.owned());
                seen.len() < stop_after
            })
    };
    // What the scan hands out is what the hash covers: the canonical bytes
    // (every field, length-prefixed) of the events as written.
    let links: Vec<ChainLink> = by_rows.iter().map(ChainLink::of).collect();
    let scanned = scan(0, i64::MAX, usize::MAX).await.unwrap();
    assert_eq!(scanned, links);
    let written: Vec<&AuditEvent> = by_rows
        .iter()
        .filter(|e| e.event.action == "test.awkward")
        .map(|e| &e.event)
        .collect();
    assert_eq!(written, events.iter().collect::<Vec<_>>());
    let first = by_rows.len() - events.len();
    for (e, link) in events.iter().zip(&scanned[first..]) {
        assert_eq!(link.canonical, e.canonical(link.seq));
    }
    // From the middle, up to a bound, and stopping when told.
    let part = scan(2, i64::MAX, 3).await.unwrap();
    assert_eq!(part, links[2..5]);
    assert_eq!(scan(2, 4, usize::MAX).await.unwrap(), links[2..4]);
    let last = by_rows.last().unwrap().seq;
    assert!(scan(last, i64::MAX, usize::MAX).await.unwrap().is_empty());
    assert!(scan(1, 1, usize::MAX).await.unwrap().is_empty());
    assert_eq!(verify(&srv, chain).await.problem, None);

    // SQLite keeps a value of any type in any column: a tampered value of
    // another type is a changed event, not a reader's failure.
    if srv.backend == Backend::Sqlite {
        change_event(&srv, chain, 2, "target = 12345").await;
        assert_eq!(
            problem(&srv, chain).await,
            "event 2 was changed after it was written"
        );
    }
}

/// `n` read events of `chain`, of records `customer/{tag}-0` and on.
fn reads(chain: i64, at: chrono::DateTime<chrono::Utc>, n: usize, tag: &str) -> Vec<AuditEvent> {
    (0..n)
        .map(|i| {
            AuditEvent::new(
                chain,
                at,
                "user:master",
                "record.read",
                format!("customer/{tag}-{i}"),
            )
        })
        .collect()
}

/// `audit verify` may run beside a server that keeps writing: events
/// appended while the chain is read are not a truncated log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_written_to_during_verification_still_verifies() {
    let (srv, chain) = signed_chain(3).await;
    let store = srv.store().clone();
    let at = srv.clock.now();
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = tokio::spawn({
        let writing = writing.clone();
        async move {
            let mut n = 0;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let batch = reads(chain, at, 5, &n.to_string());
                store.append_audit(&batch).await.unwrap();
                n += 1;
            }
            n
        }
    });
    for _ in 0..20 {
        let v = verify(&srv, chain).await;
        assert_eq!(v.problem, None, "after {} events", v.events);
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let batches = writer.await.unwrap();
    assert!(batches > 0, "the writer must have run meanwhile");
    let v = verify(&srv, chain).await;
    assert_eq!(v.problem, None);
    assert!(v.events >= 5 * batches);
}

/// Reads are recorded by the audit log's writer (on SQLite through a
/// connection of its own), creates by the record's own transaction: both
/// append to one chain, at once, and the chain must stay one unbroken line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_recorded_at_once_keep_one_unbroken_chain() {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    let r = strongroom_testkit::add_record(&c, "customer", json!({"name": "First"})).await;
    let chain = company_chain(&srv).await;
    let before = srv.stored_chain_events(chain).await.len();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (c, id) = (c.clone(), r.id.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                if t % 2 == 0 {
                    c.record("customer", &id).await.unwrap();
                } else {
                    let name = format!("W{t}-{i}");
                    strongroom_testkit::add_record(&c, "customer", json!({ "name": name })).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let events = srv.stored_chain_events(chain).await;
    let new = &events[before..];
    let count = |action: &str| new.iter().filter(|e| e.event.action == action).count();
    assert_eq!(count("record.read"), 30, "every read recorded once");
    assert_eq!(count("record.create"), 30, "every create recorded once");
    for pair in events.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "sequence numbers run on");
        assert_eq!(
            pair[1].prev_hash, pair[0].hash,
            "each event links to the one before"
        );
    }
    let v = verify(&srv, chain).await;
    assert_eq!(v.problem, None);
}

/// Two nodes appending to one chain. On PostgreSQL a node stores a batch
/// with one statement, linked onto where it last saw the chain end; once
/// the other node has moved the head, that statement must store nothing
/// and the batch go the long way (head locked), never fork the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_appending_to_one_chain_keep_it_unbroken() {
    let srv = TestServer::start().await;
    srv.company("ACME").await;
    let chain = company_chain(&srv).await;
    let (a, b) = (srv.open_store().await, srv.open_store().await);
    let start = srv
        .stored_chain_events(chain)
        .await
        .last()
        .map_or(0, |e| e.seq);
    let at = srv.clock.now();
    let batch = move |node: &str, n: usize| reads(chain, at, 3, &format!("{node}-{n}"));
    let postgres = strongroom_testkit::backend() == Backend::Postgres;
    let fast = |s: &strongroom_store::Store| s.audit_appends_in_one_statement();
    a.append_audit(&batch("a", 0)).await.unwrap();
    assert_eq!(
        fast(&a),
        0,
        "a node that has not seen the chain end locks its head"
    );
    a.append_audit(&batch("a", 1)).await.unwrap();
    assert_eq!(
        fast(&a),
        u64::from(postgres),
        "then appends in one statement"
    );
    b.append_audit(&batch("b", 0)).await.unwrap();
    let last = a.append_audit(&batch("a", 2)).await.unwrap();
    assert_eq!(
        fast(&a),
        u64::from(postgres),
        "the head moved by the other node sends this batch the long way"
    );
    assert_eq!(last[0].seq, start + 12, "four batches of three, none lost");
    a.append_audit(&batch("a", 3)).await.unwrap();
    assert_eq!(fast(&a), 2 * u64::from(postgres));
    // Both at once.
    let mut tasks = Vec::new();
    for (name, node) in [("a", a.clone()), ("b", b.clone())] {
        tasks.push(tokio::spawn(async move {
            for n in 10..40 {
                node.append_audit(&batch(name, n)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let events = srv.stored_chain_events(chain).await;
    for pair in events.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "sequence numbers run on");
        assert_eq!(
            pair[1].prev_hash, pair[0].hash,
            "each event links to the one before"
        );
    }
    let targets: std::collections::HashSet<&str> =
        events.iter().map(|e| e.event.target.as_str()).collect();
    for name in ["a", "b"] {
        for n in 10..40 {
            for i in 0..3 {
                assert!(targets.contains(format!("customer/{name}-{n}-{i}").as_str()));
            }
        }
    }
    let v = verify(&srv, chain).await;
    assert_eq!(v.problem, None);
    assert_eq!(v.events as usize, events.len());
}

#[tokio::test]
async fn a_checkpoint_is_signed_every_hundred_events() {
    let srv = TestServer::start().await;
    let c = srv.company_master("ACME").await;
    let r = strongroom_testkit::add_record(&c, "customer", json!({"name": "Busy"})).await;
    let chain = company_chain(&srv).await;
    // Reads until the hundredth event, and no request after it: the
    // checkpoint signed after that batch has no next batch to be stored
    // with, and is stored alone.
    let head = loop {
        c.record("customer", &r.id).await.unwrap();
        let (seq, _) = srv.store().audit_head(chain).await.unwrap().unwrap();
        if seq >= strongroom_server::audit::CHECKPOINT_EVERY {
            break seq;
        }
    };
    let stored = async {
        loop {
            let cps = srv.store().checkpoints(chain).await.unwrap();
            if cps.iter().any(|c| c.seq == head) {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), stored)
        .await
        .unwrap_or_else(|_| panic!("no checkpoint at event {head} within 10 s"));
    let v = verify(&srv, chain).await;
    assert_eq!(v.problem, None);
    assert!(v.events >= head && v.checkpoints >= 1, "{v:?}");
}

#[tokio::test]
async fn settings_and_user_changes_are_recorded() {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    admin.create_department("HR", "People").await.unwrap();
    admin
        .rename_department("HR", "Human resources")
        .await
        .unwrap();
    admin
        .create_user(&CreateUser {
            display_name: "Ann".into(),
            department: Some("HR".into()),
            ..strongroom_testkit::new_user("ann", false)
        })
        .await
        .unwrap();
    admin.users().await.unwrap();
    admin.user("ann").await.unwrap();
    admin
        .update_user(
            "ann",
            &UpdateUser {
                display_name: Some("Ann B".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    admin
        .set_password("ann", "another fine passphrase")
        .await
        .unwrap();
    admin.delete_user("ann").await.unwrap();
    admin.delete_department("HR").await.unwrap();
    admin
        .create_record_type(&CreateRecordType {
            key: "asset".into(),
            name: "Asset".into(),
            classification: Classification::Internal,
            fields: vec![],
        })
        .await
        .unwrap();
    let actions: Vec<String> = srv
        .audit_events("ACME")
        .await
        .into_iter()
        .filter(|e| e.action != "auth.login")
        .map(|e| format!("{} {}", e.action, e.target))
        .collect();
    assert_eq!(
        actions,
        vec![
            "department.create department/HR",
            "department.update department/HR",
            "user.create user/ann",
            "user.list users",
            "user.read user/ann",
            "user.update user/ann",
            "user.set_password user/ann",
            "user.delete user/ann",
            "department.delete department/HR",
            "record_type.create record_type/asset",
        ]
    );
    let all = srv.audit_events("ACME").await;
    assert!(!all
        .iter()
        .any(|e| e.detail.contains("another fine passphrase") || e.detail.contains(PASSWORD)));
}

/// What a syslog receiver on `listener` gets from the server's first
/// connection, up to the first message that holds `want`.
async fn syslog_until(listener: &tokio::net::TcpListener, want: &str) -> String {
    use tokio::io::AsyncReadExt;
    let wait = std::time::Duration::from_secs(30);
    let (mut sock, _) = tokio::time::timeout(wait, listener.accept())
        .await
        .expect("the server connects within 30 s")
        .unwrap();
    let mut got = String::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !got.contains(want) {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "receiver closed");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    tokio::time::timeout(wait, read)
        .await
        .unwrap_or_else(|_| panic!("{want} arrives within 30 s"));
    got
}

/// An intruder who can write the database changes one event into
/// something no writer of Strongroom stores. The readers must neither fail
/// on it nor stop there: the API lists it and what follows, saying what is
/// wrong, and forwarding to the SIEM carries it and goes on.
#[tokio::test]
async fn a_changed_event_neither_stops_the_log_readers_nor_forwarding() {
    // Nothing listens at first, so nothing is forwarded before the change.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let srv = TestServer::start_with(strongroom_testkit::Options {
        env: vec![("SYSLOG_FORWARD".into(), addr.to_string())],
    })
    .await;
    let c = srv.company_master("ACME").await;
    strongroom_testkit::add_record(&c, "customer", json!({"name": "Before"})).await;
    let chain = company_chain(&srv).await;
    change_event(&srv, chain, 2, "outcome = 'maybe'").await;
    let r = strongroom_testkit::add_record(&c, "customer", json!({"name": "After"})).await;

    let damage = "its outcome 'maybe' is none of success, denied, failed";
    let items = audit_page(&c).await;
    assert_eq!(items[1]["seq"], 2);
    assert_eq!(items[1]["damaged"], damage, "{}", items[1]);
    assert_eq!(items[1]["outcome"], "failed");
    assert!(
        items
            .iter()
            .any(|e| e["target"] == format!("customer/{}", r.id)),
        "the record created after the change is listed: {items:?}"
    );

    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let got = syslog_until(&listener, &format!("target=\"customer/{}\"", r.id)).await;
    assert!(
        got.contains("seq=\"2\" actor=") && got.contains(&format!(" damaged=\"{damage}\"")),
        "{got}"
    );
}

#[tokio::test]
async fn events_are_forwarded_to_a_syslog_receiver() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = TestServer::start_with(strongroom_testkit::Options {
        env: vec![("SYSLOG_FORWARD".into(), addr.to_string())],
    })
    .await;
    let c = srv.company_master("ACME").await;
    let r = strongroom_testkit::add_record(&c, "customer", json!({"name": "Forwarded"})).await;
    let got = syslog_until(&listener, &format!("target=\"customer/{}\"", r.id)).await;
    // Octet-counted RFC 5424 frames, with the chain hashes.
    let first = got.split_once(' ').unwrap();
    let len: usize = first.0.parse().unwrap();
    assert!(first.1.starts_with("<110>1 "), "{got}");
    assert!(first.1.len() >= len);
    assert!(
        got.contains("record.create") && got.contains("hash=\""),
        "{got}"
    );
}
