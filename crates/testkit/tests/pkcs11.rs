//! The `pkcs11` key provider against SoftHSM2: the master key lives in a
//! token, cannot be extracted, and wraps the company keys from inside it.
//!
//! Needs Debian's `softhsm2`. Without it these tests say so and pass,
//! unless STRONGROOM_REQUIRE_PKCS11 is set (as `.ci/run` does), when they fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use serde_json::json;
use strongroom_crypto::provider::KeyProvider;
use strongroom_testkit::{Options, TestServer};

const MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
];
const PIN: &str = "4711-0815-pin";

struct Hsm {
    module: PathBuf,
    dir: PathBuf,
}

/// Sets up a private SoftHSM2 token directory for this test process (once,
/// before any test loads the library).
fn hsm() -> Option<&'static Hsm> {
    static HSM: OnceLock<Option<Hsm>> = OnceLock::new();
    HSM.get_or_init(|| {
        let module = MODULES.iter().map(PathBuf::from).find(|p| p.exists());
        let util = Command::new("softhsm2-util").arg("--version").output().is_ok();
        let (Some(module), true) = (module, util) else {
            if std::env::var_os("STRONGROOM_REQUIRE_PKCS11").is_some() {
                panic!("SoftHSM2 is required (STRONGROOM_REQUIRE_PKCS11) but not installed: apt-get install softhsm2");
            }
            eprintln!("SKIPPING PKCS#11 tests: SoftHSM2 is not installed (apt-get install softhsm2)");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("strongroom-softhsm-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("tokens")).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.join("tokens").display()
            ),
        )
        .unwrap();
        // Read by the library when it is initialised, which happens only
        // after this (every test calls hsm() first). SoftHSM2 lists tokens
        // when initialised, so every token the tests use is made now.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let hsm = Hsm { module, dir };
        for label in TOKENS {
            init_token(&hsm, label);
        }
        Some(hsm)
    })
    .as_ref()
}

const TOKENS: &[&str] = &["sr-wrap", "sr-pin", "sr-wrong-pin", "sr-empty"];

fn init_token(hsm: &Hsm, label: &str) {
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            PIN,
            "--so-pin",
            "9999-so-pin",
        ])
        .env("SOFTHSM2_CONF", hsm.dir.join("softhsm2.conf"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "softhsm2-util: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The PIN file of a token made at set-up.
fn new_token(hsm: &Hsm, label: &str) -> PathBuf {
    assert!(TOKENS.contains(&label), "add {label} to TOKENS");
    let pin_file = hsm.dir.join(format!("{label}.pin"));
    std::fs::write(&pin_file, PIN).unwrap();
    pin_file
}

fn options(hsm: &Hsm, token: &str, pin_file: &std::path::Path) -> Options {
    Options {
        env: vec![
            ("KEY_PROVIDER".into(), "pkcs11".into()),
            ("PKCS11_MODULE".into(), hsm.module.display().to_string()),
            ("PKCS11_TOKEN".into(), token.into()),
            ("PKCS11_PIN_FILE".into(), pin_file.display().to_string()),
        ],
    }
}

#[tokio::test]
async fn the_master_key_lives_in_the_token_and_wraps_company_keys_there() {
    let Some(hsm) = hsm() else { return };
    let pin = new_token(hsm, "sr-wrap");
    let srv = TestServer::start_with(options(hsm, "sr-wrap", &pin)).await;
    let c = srv.company_master("ACME").await;
    let r = strongroom_testkit::add_record(
        &c,
        "customer",
        json!({"name": "HSM", "national_id": "079201004242"}),
    )
    .await;
    assert_eq!(r.data["national_id"], "*********242");
    let shown = c
        .raw(
            reqwest::Method::GET,
            &format!("/api/v1/records/customer/{}?reveal=all", r.id),
            None,
            vec![],
        )
        .await
        .unwrap()
        .json();
    assert_eq!(shown["data"]["national_id"], "079201004242");

    // No key file was made, and the token's key is sensitive and not extractable.
    let (config, resolved) = srv.config();
    assert!(!config.key_dir.join("master.key").exists());
    let settings = config.pkcs11().unwrap();
    let (p, created) =
        strongroom_crypto::pkcs11::Pkcs11KeyProvider::open(&settings, false).unwrap();
    assert!(!created);
    assert_eq!(p.current_key_flags().unwrap(), (true, false));
    let keys = srv.store().all_keys().await.unwrap();
    assert!(
        keys.iter()
            .all(|k| k.wrap_key_id.starts_with("pkcs11:sr-wrap/")),
        "{keys:?}"
    );
    assert!(!srv
        .raw_storage()
        .await
        .windows(12)
        .any(|w| w == b"079201004242"));

    // Master-key rotation inside the token: re-wrap, destroy the old key,
    // and a fresh start still reads everything.
    let old = p.current_key_id();
    let new = p.add_master_key().unwrap();
    assert_ne!(old, new);
    let n = strongroom_server::keys::rewrap_all(&p, srv.store())
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(p.drop_old_master_keys().unwrap(), 1);
    let fresh = strongroom_server::prepare(&config, &resolved, Arc::new(srv.clock.clone()))
        .await
        .unwrap();
    let (company, _) = fresh
        .state
        .store
        .company_by_code("ACME")
        .await
        .unwrap()
        .unwrap();
    fresh
        .state
        .keys
        .current(company, strongroom_store::KeyPurpose::Data)
        .await
        .expect("keys open under the new master key");
}

#[tokio::test]
async fn a_wrong_pin_or_token_stops_start_up() {
    let Some(hsm) = hsm() else { return };
    let pin = new_token(hsm, "sr-pin");
    let srv = TestServer::start_with(options(hsm, "sr-pin", &pin)).await;
    srv.company("ACME").await;
    let (config, _) = srv.config();
    let clock = Arc::new(srv.clock.clone());

    let mut wrong_token = config.pkcs11().unwrap();
    wrong_token.token_label = "no-such-token".into();
    let e = strongroom_crypto::pkcs11::Pkcs11KeyProvider::open(&wrong_token, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("no PKCS#11 token labelled 'no-such-token'"),
        "{e}"
    );

    // A wrong PIN (on a token nobody in this process has logged in to).
    let _ = new_token(hsm, "sr-wrong-pin");
    let mut wrong_pin = config.pkcs11().unwrap();
    wrong_pin.token_label = "sr-wrong-pin".into();
    wrong_pin.pin = "not-the-pin".to_owned().into();
    let e = strongroom_crypto::pkcs11::Pkcs11KeyProvider::open(&wrong_pin, true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("login") && e.contains("pkcs11_pin"), "{e}");

    // A token without our key, once the store holds wrapped keys: refused,
    // and no new key is made in it.
    let other_pin = new_token(hsm, "sr-empty");
    let env: Vec<(String, String)> = srv
        .env
        .iter()
        .map(|(k, v)| match k.as_str() {
            "STRONGROOM_PKCS11_TOKEN" => (k.clone(), "sr-empty".to_owned()),
            "STRONGROOM_PKCS11_PIN_FILE" => (k.clone(), other_pin.display().to_string()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let (other, other_resolved) = strongroom_server::Config::load(None, &env).unwrap();
    let e = strongroom_server::prepare(&other, &other_resolved, clock.clone())
        .await
        .err()
        .expect("a token without the master key must be refused")
        .to_string();
    assert!(e.contains("is not in token 'sr-empty'"), "{e}");
}
