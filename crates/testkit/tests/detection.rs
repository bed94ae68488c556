//! Intrusion detection from the outside: each detector fires on its
//! scenario and not on normal traffic, its response is applied (blocks,
//! locks, ended sessions), incidents are registered, alerts are delivered
//! signed. Runs over SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::{json, Value};
use strongroom_core::audit::{AuditEvent, Outcome};
use strongroom_core::clock::Clock;
use strongroom_proto::*;
use strongroom_testkit::client::Client;
use strongroom_testkit::{Options, TestServer, PASSWORD};
use tokio::sync::mpsc;

const SECRET: &str = "webhook-shared-secret";

/// A webhook receiver on loopback: every POST body with its signature.
async fn receiver() -> (String, mpsc::UnboundedReceiver<(String, Value)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let tx = tx.clone();
            async move {
                let sig = headers
                    .get("x-strongroom-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let _ = tx.send((sig, serde_json::from_str(&body).unwrap_or(Value::Null)));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), rx)
}

async fn server(webhook: &str) -> TestServer {
    TestServer::start_with(Options {
        env: vec![
            ("TRUSTED_PROXIES".into(), "127.0.0.1".into()),
            ("ALERT_WEBHOOK_URL".into(), webhook.into()),
            ("ALERT_WEBHOOK_SECRET".into(), SECRET.into()),
        ],
    })
    .await
}

/// Turns a detector on with these settings (and a 600 s block or lock).
async fn set_detector(admin: &Client, detector: &str, threshold: u32, window: u32, response: &str) {
    let r = admin
        .raw(
            reqwest::Method::PUT,
            &format!("/api/v1/security/detectors/{detector}"),
            Some("application/json"),
            serde_json::to_vec(&json!({"detector": detector, "enabled": true,
                "threshold": threshold, "window_seconds": window, "response": response,
                "block_seconds": 600}))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

async fn incidents(admin: &Client) -> Vec<Value> {
    admin
        .raw_get("/api/v1/security/incidents")
        .await
        .unwrap()
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn signature(body: &Value) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body.to_string().as_bytes()).as_ref())
    )
}

async fn next_alert(rx: &mut mpsc::UnboundedReceiver<(String, Value)>) -> (String, Value) {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an alert within 20 s")
        .expect("receiver open")
}

#[tokio::test]
async fn brute_force_locks_the_account_and_alerts() {
    let (hook, mut alerts) = receiver().await;
    let srv = server(&hook).await;
    let admin = srv.company_master("ACME").await.forwarded_for("192.0.2.10");
    admin
        .create_user(&strongroom_testkit::new_user("ann", false))
        .await
        .unwrap();
    let ann = srv
        .client()
        .forwarded_for("192.0.2.20")
        .login("ACME", "ann", PASSWORD)
        .await
        .unwrap()
        .0;
    let attacker = srv.client().forwarded_for("198.51.100.9");
    for _ in 0..5 {
        assert!(attacker
            .login("ACME", "ann", "not her password")
            .await
            .is_err());
    }
    srv.state.detection.flush().await;

    // Locked: the right password no longer works, her session has ended.
    let e = srv
        .client()
        .forwarded_for("192.0.2.20")
        .login("ACME", "ann", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::SignInFailed));
    assert_eq!(ann.session().await.unwrap_err().status(), Some(401));
    let list = incidents(&admin).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["detector"], "brute_force");
    assert_eq!(list[0]["subject"], "user:ann");
    // The sign-in policy locked the account; the detector alerts.
    assert_eq!(list[0]["response"], "alert");
    let locked_event = srv.last_event("ACME", "auth.login").await;
    assert_eq!(locked_event.reason.as_deref(), Some("account_locked"));

    // The alert arrives, signed.
    let (sig, body) = next_alert(&mut alerts).await;
    assert_eq!(body["detector"], "brute_force");
    assert_eq!(body["company"], "ACME");
    assert_eq!(sig, signature(&body), "bad HMAC signature");

    // The incident is worked on and the account unlocked by an administrator.
    let id = list[0]["id"].as_i64().unwrap();
    let r = admin
        .raw(
            reqwest::Method::PATCH,
            &format!("/api/v1/security/incidents/{id}"),
            Some("application/json"),
            serde_json::to_vec(
                &json!({"status": "resolved", "note": "Ann's ex-colleague; password changed"}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "resolved");
    assert_eq!(r.json()["notes"][0]["by"], "user:master");
    let r = admin
        .raw(
            reqwest::Method::POST,
            "/api/v1/users/ann/unlock",
            None,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    srv.client()
        .forwarded_for("192.0.2.20")
        .login("ACME", "ann", PASSWORD)
        .await
        .unwrap();
}

#[tokio::test]
async fn password_spraying_blocks_the_address_before_any_password_check() {
    let (hook, _alerts) = receiver().await;
    let srv = server(&hook).await;
    let admin = srv.company_master("ACME").await.forwarded_for("192.0.2.10");
    let other = srv.company_master("BETA").await;
    let sprayer = srv.client().forwarded_for("203.0.113.66");
    for i in 0..10 {
        let _ = sprayer
            .login("ACME", &format!("guess{i}"), "Summer2026!summer")
            .await;
    }
    srv.state.detection.flush().await;

    let before = srv.state.hashing.verifications();
    let e = sprayer.login("ACME", "master", PASSWORD).await.unwrap_err();
    assert_eq!(
        e.status(),
        Some(403),
        "the right password from a blocked address must not help"
    );
    assert_eq!(
        srv.state.hashing.verifications(),
        before,
        "no password was checked"
    );
    let blocks = admin
        .raw_get("/api/v1/security/blocks")
        .await
        .unwrap()
        .json();
    assert_eq!(blocks[0]["address"], "203.0.113.66");
    // Other addresses and other companies are unaffected.
    srv.client()
        .forwarded_for("192.0.2.11")
        .login("ACME", "master", PASSWORD)
        .await
        .unwrap();
    other.session().await.unwrap();
    srv.client()
        .forwarded_for("203.0.113.66")
        .login("BETA", "master", PASSWORD)
        .await
        .unwrap();
    // Lifting the block lets the address in again.
    let r = admin
        .raw(
            reqwest::Method::DELETE,
            "/api/v1/security/blocks/203.0.113.66",
            None,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    sprayer.login("ACME", "master", PASSWORD).await.unwrap();
}

#[tokio::test]
async fn mass_reads_end_the_readers_sessions_and_probing_blocks_the_address() {
    let (hook, _alerts) = receiver().await;
    let srv = server(&hook).await;
    let admin = srv.company_master("ACME").await.forwarded_for("192.0.2.10");
    for (detector, threshold, response) in [
        ("mass_read", 5, "end_sessions"),
        ("probing", 3, "block_address"),
    ] {
        set_detector(&admin, detector, threshold, 300, response).await;
    }
    admin
        .create_user(&strongroom_testkit::new_user("reader", false))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            strongroom_testkit::add_record(&admin, "customer", json!({"name": format!("C{i}")}))
                .await
                .id,
        );
    }
    let reader = srv
        .client()
        .forwarded_for("192.0.2.30")
        .login("ACME", "reader", PASSWORD)
        .await
        .unwrap()
        .0;
    for id in &ids[..5] {
        reader.record("customer", id).await.unwrap();
    }
    srv.state.detection.flush().await;
    assert_eq!(
        reader.session().await.unwrap_err().status(),
        Some(401),
        "mass reader still signed in"
    );

    // Probing: three refusals (reveals it may not make) from one address.
    let prober = srv
        .client()
        .forwarded_for("198.51.100.50")
        .login("ACME", "reader", PASSWORD)
        .await
        .unwrap()
        .0;
    for id in &ids[..3] {
        let r = prober
            .raw_get(&format!("/api/v1/records/customer/{id}?reveal=all"))
            .await
            .unwrap();
        assert_eq!(r.status, 403);
    }
    srv.state.detection.flush().await;
    let r = prober.raw_get("/api/v1/auth/session").await.unwrap();
    assert_eq!(r.status, 403, "a probing address must be blocked");
    let detectors: Vec<String> = incidents(&admin)
        .await
        .iter()
        .map(|i| i["detector"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        detectors.contains(&"mass_read".to_owned()) && detectors.contains(&"probing".to_owned()),
        "{detectors:?}"
    );
}

#[tokio::test]
async fn a_new_address_raises_an_alert_and_normal_work_raises_nothing() {
    let (hook, mut alerts) = receiver().await;
    let srv = server(&hook).await;
    srv.company("ACME").await;
    // A working day: sign-ins from the usual place, reads, writes, searches,
    // a few typos in passwords.
    let home = srv.client().forwarded_for("192.0.2.10");
    let admin = home.login("ACME", "master", PASSWORD).await.unwrap().0;
    for i in 0..3 {
        let _ = home.login("ACME", "master", "typo in password").await;
        let c = home.login("ACME", "master", PASSWORD).await.unwrap().0;
        let r =
            strongroom_testkit::add_record(&c, "vendor", json!({"name": format!("V{i}")})).await;
        c.record("vendor", &r.id).await.unwrap();
        c.list_records("vendor", &[("f.name", "V1")]).await.unwrap();
    }
    srv.state.detection.flush().await;
    assert!(
        incidents(&admin).await.is_empty(),
        "normal traffic raised an incident"
    );

    // The same user from an address never seen before.
    srv.client()
        .forwarded_for("203.0.113.200")
        .login("ACME", "master", PASSWORD)
        .await
        .unwrap();
    srv.state.detection.flush().await;
    let list = incidents(&admin).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["detector"], "new_address");
    assert_eq!(list[0]["response"], "alert");
    let (_, body) = next_alert(&mut alerts).await;
    assert_eq!(body["detector"], "new_address");
    assert_eq!(body["client_ip"], "203.0.113.200");
}

/// A sign-in whose finding locks the account keeps no session: the finding
/// is reported only once the session the sign-in made exists, so locking
/// (which ends the user's sessions) ends that one too, however soon the
/// detector task gets to it.
#[tokio::test]
async fn a_sign_in_that_gets_its_account_locked_keeps_no_session() {
    let (hook, _alerts) = receiver().await;
    let srv = server(&hook).await;
    let admin = srv.company_master("ACME").await.forwarded_for("192.0.2.10");
    set_detector(&admin, "new_address", 1, 0, "lock_account").await;
    admin
        .create_user(&strongroom_testkit::new_user("clerk", false))
        .await
        .unwrap();
    let sign_in = |ip: &'static str| {
        let c = srv.client().forwarded_for(ip);
        async move { c.login("ACME", "clerk", PASSWORD).await }
    };
    // The first sign-in only starts the history.
    let home = sign_in("192.0.2.30").await.unwrap().0;
    let away = sign_in("203.0.113.200").await.unwrap().0;
    srv.state.detection.flush().await;
    for (c, what) in [
        (&away, "the sign-in that raised the finding"),
        (&home, "an earlier one"),
    ] {
        assert_eq!(
            c.session().await.unwrap_err().status(),
            Some(401),
            "{what} still has its session"
        );
    }
    assert!(
        sign_in("192.0.2.30").await.is_err(),
        "the account is locked"
    );
    let list = incidents(&admin).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["response"], "lock_account");
}

#[tokio::test]
async fn an_operator_block_refuses_an_address_on_every_path() {
    use strongroom_core::clock::Clock;
    let (hook, _alerts) = receiver().await;
    let srv = server(&hook).await;
    let c = srv
        .company_master("ACME")
        .await
        .forwarded_for("203.0.113.44");
    let now = srv.clock.now();
    srv.store()
        .block_address(
            &strongroom_store::AddressBlock {
                chain: strongroom_core::audit::SERVER_CHAIN,
                address: "203.0.113.44".into(),
                until: now + chrono::Duration::hours(1),
                reason: "operator".into(),
            },
            now,
        )
        .await
        .unwrap();
    srv.state.blocks.reload(srv.store(), now).await.unwrap();
    for path in [
        "/healthz",
        "/api/v1/auth/session",
        "/api/v1/records/customer",
        "/api/v1/openapi.json",
    ] {
        let r = c.raw_get(path).await.unwrap();
        assert_eq!(r.status, 403, "{path}");
    }
    let e = srv
        .client()
        .forwarded_for("203.0.113.44")
        .login("ACME", "master", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
    // Others pass; and the block ends on time.
    srv.client()
        .forwarded_for("203.0.113.45")
        .login("ACME", "master", PASSWORD)
        .await
        .unwrap();
    srv.clock.advance(chrono::Duration::minutes(61));
    srv.client()
        .forwarded_for("203.0.113.44")
        .login("ACME", "master", PASSWORD)
        .await
        .unwrap();
}

/// A minimal SMTP receiver on loopback: hands over each message's DATA.
async fn smtp_receiver() -> (String, mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = w.write_all(b"220 test ESMTP\r\n").await;
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(d) = data.as_mut() {
                        if line == "." {
                            let _ = tx.send(data.take().unwrap_or_default());
                            let _ = w.write_all(b"250 queued\r\n").await;
                        } else {
                            d.push_str(&line);
                            d.push('\n');
                        }
                        continue;
                    }
                    let cmd = line.to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") {
                        b"250-test\r\n250 OK\r\n"
                    } else if cmd.starts_with("DATA") {
                        data = Some(String::new());
                        b"354 go on\r\n"
                    } else if cmd.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        break;
                    } else {
                        b"250 OK\r\n"
                    };
                    let _ = w.write_all(reply).await;
                }
            });
        }
    });
    (format!("smtp://{addr}"), rx)
}

#[tokio::test]
async fn alerts_also_go_by_email_when_smtp_is_configured() {
    let (smtp, mut mails) = smtp_receiver().await;
    let srv = TestServer::start_with(Options {
        env: vec![
            ("TRUSTED_PROXIES".into(), "127.0.0.1".into()),
            ("SMTP_URL".into(), smtp),
            ("SMTP_FROM".into(), "Strongroom <alerts@example.com>".into()),
            ("SMTP_TO".into(), "security@example.com".into()),
        ],
    })
    .await;
    srv.company("ACME").await;
    let attacker = srv.client().forwarded_for("198.51.100.9");
    for _ in 0..5 {
        let _ = attacker.login("ACME", "master", "not the password").await;
    }
    srv.state.detection.flush().await;
    // A delivery that fails (a busy machine) is retried after a backoff in
    // the server's clock, which the test moves on while it waits.
    let mut mail = None;
    for _ in 0..40 {
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(500), mails.recv()).await {
            mail = m;
            break;
        }
        srv.clock.advance(chrono::Duration::seconds(30));
    }
    let mail = mail.expect("an e-mail within 20 s");
    assert!(
        mail.contains("Subject: [Strongroom] incident") && mail.contains("brute_force"),
        "{mail}"
    );
    assert!(mail.contains("To: security@example.com"), "{mail}");
    assert!(!mail.contains("not the password"));
}

/// A server told to stop first examines what its detectors have not
/// examined yet, and responds, before it closes its store: a restart does
/// not forget an attack in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_examines_what_is_left_first() {
    let mut srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    admin
        .create_user(&strongroom_testkit::new_user("ann", false))
        .await
        .unwrap();
    let company = srv.company_id("ACME").await;
    let chain = company.0;
    // The detectors are behind: many lists of 300 records, each by a user
    // of its own (none near a threshold), then five bad passwords for ann,
    // as the audit log's writer hands them over.
    let at = srv.clock.now();
    let records: Vec<String> = (0..300).map(|i| format!("customer/{i}")).collect();
    let detail = json!({ "records": records }).to_string();
    let mut events: Vec<AuditEvent> = (0..20_000)
        .map(|i| {
            let mut e = AuditEvent::new(chain, at, format!("user:u{i}"), "record.list", "customer");
            e.detail = detail.clone();
            e
        })
        .collect();
    for _ in 0..5 {
        let mut e = AuditEvent::new(chain, at, "user:ann", "auth.login", "user:ann");
        e.outcome = Outcome::Denied;
        e.reason = Some("bad_password".into());
        e.client_ip = Some("198.51.100.9".into());
        events.push(e);
    }
    // In batches of 500, as the audit log's writer commits them.
    for batch in events.chunks(500) {
        assert!(srv.state.detection.feed(batch.to_vec()));
    }
    let store = srv.stop().await;
    let found = store.incidents(chain).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].detector.as_str(), "brute_force");
}

/// The detectors as a server starting over `store` makes them.
async fn detectors_starting(
    store: &strongroom_store::Store,
    clock: &std::sync::Arc<strongroom_core::clock::ManualClock>,
) -> strongroom_server::detection::Detection {
    strongroom_server::detection::Detection::start(
        store.clone(),
        clock.clone(),
        Default::default(),
        Default::default(),
        Default::default(),
        strongroom_server::detection::replay_plan(store)
            .await
            .unwrap(),
    )
}

/// The detectors' windows live in memory. A server that starts reads the
/// refusals of the window again from the audit log, so an attack that
/// spans a restart (or a crash) is still counted as one.
#[tokio::test]
async fn an_attack_across_a_restart_is_counted_as_one() {
    let mut srv = TestServer::start().await;
    srv.company_master("ACME").await;
    let chain = srv.company_id("ACME").await.0;
    // Six of the ten accounts that make password spraying, from one
    // address, before the restart...
    let attacker = srv.client();
    for i in 0..6 {
        assert!(attacker
            .login("ACME", &format!("nobody{i}"), "Summer2026!")
            .await
            .is_err());
    }
    let clock = std::sync::Arc::new(srv.clock.clone());
    let store = srv.stop().await;
    assert!(store.incidents(chain).await.unwrap().is_empty());
    // ...and four after it, stored and handed over as the audit log's
    // writer does, to the detectors of the server that starts next.
    let d = detectors_starting(&store, &clock).await;
    let after: Vec<AuditEvent> = (6..10)
        .map(|i| {
            let mut e = AuditEvent::new(
                chain,
                clock.now(),
                format!("user:nobody{i}"),
                "auth.login",
                "company/ACME",
            );
            e.outcome = Outcome::Denied;
            e.reason = Some("unknown_user".into());
            e.client_ip = Some("127.0.0.1".into());
            e
        })
        .collect();
    let heads = store.append_audit(&after).await.unwrap();
    d.feed_stored(strongroom_store::numbered(after, &heads));
    d.flush().await;
    let found = store.incidents(chain).await.unwrap();
    assert_eq!(
        found
            .iter()
            .map(|i| i.detector.as_str())
            .collect::<Vec<_>>(),
        ["password_spraying"],
        "{found:?}"
    );
    assert!(store
        .address_blocked_until((chain, 0), "127.0.0.1", clock.now())
        .await
        .unwrap()
        .is_some());
    // The next start reads all ten again, and finds the incident open.
    let d = detectors_starting(&store, &clock).await;
    d.flush().await;
    assert_eq!(store.incidents(chain).await.unwrap().len(), 1);
}
