//! Backups from the outside: a round trip restores every row (into the
//! same backend and into the other one), the restored store passes audit
//! verification and a server starts on it, the backup bytes hold no
//! readable sensitive value, every kind of damage is detected before the
//! target is touched, a non-empty target is refused, an incomplete backup
//! is never listed, and drills record their evidence (and raise an
//! incident when they fail). Runs over SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use strongroom_core::clock::Clock;
use strongroom_server::backup;
use strongroom_store::{Cell, Store, BACKUP_TABLES};
use strongroom_testkit::{add_record, new_user, Backend, ScratchPostgres, TestServer, Tmpfs};

const NATIONAL_ID: &str = "079201001234";
const CARD: &str = "4539578763621486";

/// Every backed-up table's rows, as sorted JSON lines (row order within a
/// table is not part of the contract).
async fn dump(store: &Store) -> BTreeMap<String, Vec<String>> {
    let mut snap = store.snapshot().await.unwrap();
    let mut out = BTreeMap::new();
    for t in BACKUP_TABLES {
        let mut rows = Vec::new();
        snap.table(t, |_, cells: Vec<Cell>| {
            rows.push(serde_json::to_string(&cells).unwrap());
            Ok(())
        })
        .await
        .unwrap();
        rows.sort();
        out.insert((*t).to_owned(), rows);
    }
    snap.end().await.unwrap();
    out
}

async fn populated() -> TestServer {
    let srv = TestServer::start().await;
    let admin = srv.company_master("ACME").await;
    admin.create_department("SALES", "Sales").await.unwrap();
    admin.create_user(&new_user("ann", false)).await.unwrap();
    let ann = srv.sign_in("ACME", "ann").await;
    srv.enrol_totp("ACME", "ann", &ann).await;
    let r = add_record(
        &admin,
        "customer",
        json!({"name": "Hanoi Trading", "email": "buy@hanoi.vn",
               "national_id": NATIONAL_ID, "card_number": CARD}),
    )
    .await;
    admin
        .update_record(
            "customer",
            &r.id,
            &strongroom_proto::UpdateRecord {
                data: json!({"phone": "+84 24 3825 1234"})
                    .as_object()
                    .cloned()
                    .unwrap(),
                expected_version: None,
            },
        )
        .await
        .unwrap();
    for i in 0..30 {
        add_record(&ann, "vendor", json!({"name": format!("Vendor {i}")})).await;
    }
    srv.company_master("BETA").await;
    srv
}

/// One backup of `srv` in a target of its own.
async fn backup_of(srv: &TestServer) -> anyhow::Result<(tempfile::TempDir, backup::Manifest)> {
    let target = tempfile::tempdir()?;
    let m = backup::create(
        srv.store(),
        srv.state.keys.provider(),
        target.path(),
        srv.clock.now(),
    )
    .await?;
    Ok((target, m))
}

/// A populated server and one backup of it in a target of its own.
async fn backed_up() -> (TestServer, tempfile::TempDir, backup::Manifest) {
    let srv = populated().await;
    let (target, m) = backup_of(&srv).await.unwrap();
    (srv, target, m)
}

fn files(dir: &Path) -> Vec<Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_backup_restores_every_row_into_either_backend() {
    let (srv, target, m) = backed_up().await;
    let provider = srv.state.keys.provider();
    assert!(m.total_rows() > 50);
    assert!(m.chain_heads.len() >= 2);

    // Nothing readable in the bytes: not the protected values, not even
    // the plain ones.
    for bytes in files(&target.path().join(&m.id)) {
        let text = String::from_utf8_lossy(&bytes);
        for secret in [NATIONAL_ID, CARD, "Hanoi Trading", "buy@hanoi.vn", "ACME"] {
            if text.contains(secret) && !text.starts_with('{') {
                panic!("{secret} readable in a backup chunk");
            }
        }
    }
    let manifest =
        std::fs::read_to_string(target.path().join(&m.id).join("manifest.json")).unwrap();
    for secret in [NATIONAL_ID, CARD, "Hanoi Trading", "buy@hanoi.vn"] {
        assert!(!manifest.contains(secret), "{secret} in the manifest");
    }

    let before = dump(srv.store()).await;
    let checked = backup::verify(provider, target.path(), &m.id).unwrap();
    assert_eq!(checked.manifest.id, m.id);

    // Into a SQLite file and into a PostgreSQL database: whatever the
    // source, one of them crosses backends.
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::connect(
        &dir.path().join("restored.db").to_string_lossy(),
        Default::default(),
    )
    .await
    .unwrap();
    let pg = ScratchPostgres::new().await;
    let postgres = Store::connect(&pg.url, Default::default()).await.unwrap();
    for restored in [&sqlite, &postgres] {
        let seen = std::sync::atomic::AtomicU64::new(0);
        backup::restore(
            provider,
            target.path(),
            &m.id,
            restored,
            false,
            backup::Commit::Once,
            srv.clock.now(),
            &|done, _| seen.store(done, std::sync::atomic::Ordering::Relaxed),
        )
        .await
        .unwrap();
        assert_eq!(
            seen.into_inner(),
            m.total_rows(),
            "progress reached the end"
        );
        let after = dump(restored).await;
        for t in BACKUP_TABLES {
            assert_eq!(before[*t], after[*t], "table {t} differs after restore");
        }
        // The audit chains verify, signatures included.
        let ring = strongroom_server::keys::KeyRing::new(
            srv.state.keys.shared_provider(),
            restored.clone(),
        );
        for chain in restored.audit_chains().await.unwrap() {
            let company = restored
                .company_code(strongroom_core::CompanyId(chain))
                .await
                .unwrap();
            let v =
                strongroom_server::audit::verify(restored, &ring, chain, company.is_some(), None)
                    .await
                    .unwrap();
            assert_eq!(v.problem, None, "chain {chain}");
        }
        // A second restore into it is refused: it is not empty.
        let e = backup::restore(
            provider,
            target.path(),
            &m.id,
            restored,
            false,
            backup::Commit::Once,
            srv.clock.now(),
            &|_, _| {},
        )
        .await
        .unwrap_err();
        assert!(format!("{e:#}").contains("not empty"), "{e:#}");
    }

    // A server starts on the restored store (same key directory) and
    // serves its records.
    let mut env = srv.env.clone();
    let data2 = tempfile::tempdir().unwrap();
    for (k, v) in env.iter_mut() {
        match k.as_str() {
            "STRONGROOM_DATABASE_URL" => *v = pg.url.clone(),
            "STRONGROOM_DATA_DIR" => *v = data2.path().to_string_lossy().into_owned(),
            _ => {}
        }
    }
    postgres.close().await;
    let (config, resolved) = strongroom_server::config::Config::load(None, &env).unwrap();
    let prepared = strongroom_server::prepare(&config, &resolved, Arc::new(srv.clock.clone()))
        .await
        .expect("a server starts on the restored store");
    let company = prepared
        .state
        .store
        .company_by_code("ACME")
        .await
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(
        prepared.state.store.count_records(company).await.unwrap(),
        31
    );
}

/// SQLite keeps whatever bytes it is given. A row changed outside
/// Strongroom (text that is not UTF-8, bytes in a text column) is carried
/// by a backup as it is rather than stopping it; it
/// restores into SQLite byte for byte, where audit verification names the
/// changed event; PostgreSQL's restore names the value and what to do, and
/// leaves the target as it was.
#[tokio::test]
async fn a_row_changed_outside_strongroom_is_backed_up_as_it_is() {
    let srv = populated().await;
    if srv.backend == Backend::Postgres {
        // PostgreSQL refuses such values when they are written.
        return;
    }
    let chain = srv.company_id("ACME").await.0;
    for set in [
        "target = CAST(X'FF00FE' AS TEXT) WHERE seq = 3",
        "actor = X'00' WHERE seq = 4",
    ] {
        srv.raw_sql(&format!(
            "UPDATE audit_events SET {set} AND chain = {chain}"
        ))
        .await;
    }
    let (target, m) = backup_of(&srv)
        .await
        .expect("a changed row does not stop the backup");
    let before = dump(srv.store()).await;
    let events = &before["audit_events"];
    assert!(
        events.iter().any(|r| r.contains(r#"{"b":"/wD+"}"#)),
        "the bytes are carried as bytes"
    );

    let dir = tempfile::tempdir().unwrap();
    let (stores, _pg) = fresh_targets(dir.path()).await;
    let (sqlite, postgres) = (&stores[0], &stores[1]);
    restore_quietly(&srv, target.path(), &m.id, sqlite, backup::Commit::Once)
        .await
        .unwrap();
    assert_eq!(dump(sqlite).await, before, "restored byte for byte");
    let ring =
        strongroom_server::keys::KeyRing::new(srv.state.keys.shared_provider(), sqlite.clone());
    let v = strongroom_server::audit::verify(sqlite, &ring, chain, true, None)
        .await
        .unwrap();
    assert_eq!(
        v.problem.as_deref(),
        Some("event 3 was changed after it was written")
    );

    let e = restore_quietly(&srv, target.path(), &m.id, postgres, backup::Commit::Once)
        .await
        .unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("audit_events.target") && e.contains("not UTF-8") && e.contains("SQLite file"),
        "{e}"
    );
    assert!(
        postgres.is_blank().await.unwrap(),
        "the target is untouched"
    );
}

#[tokio::test]
async fn damage_is_detected_before_the_target_is_touched() {
    let (srv, target, m) = backed_up().await;
    let provider = srv.state.keys.provider();
    let good = target.path().join(&m.id);
    // Each case damages its own copy of the backup, in a target of its own.
    let variant = |name: &str, damage: &dyn Fn(&Path)| {
        let root = tempfile::tempdir().unwrap();
        let _ = name;
        let dir = root.path().join(&m.id);
        std::fs::create_dir(&dir).unwrap();
        for e in std::fs::read_dir(&good).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        damage(&dir);
        root
    };
    let chunk = |d: &Path| d.join("chunk-000001.bin");
    let edit = |d: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let mf = d.join("manifest.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&mf).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&mf, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    let renamed = format!("{}0", m.id);
    let cases: Vec<(tempfile::TempDir, String, &str)> = vec![
        (
            variant("flip", &|d| {
                let mut b = std::fs::read(chunk(d)).unwrap();
                let n = b.len() / 2;
                b[n] ^= 1;
                std::fs::write(chunk(d), b).unwrap();
            }),
            m.id.clone(),
            "damaged",
        ),
        (
            variant("trunc", &|d| {
                let b = std::fs::read(chunk(d)).unwrap();
                std::fs::write(chunk(d), &b[..b.len() / 3]).unwrap();
            }),
            m.id.clone(),
            "damaged",
        ),
        (
            variant("gone", &|d| std::fs::remove_file(chunk(d)).unwrap()),
            m.id.clone(),
            "missing",
        ),
        (
            variant("rows", &|d| {
                edit(d, &|v| v["tables"][0]["rows"] = json!(999))
            }),
            m.id.clone(),
            "altered",
        ),
        (
            variant("future", &|d| edit(d, &|v| v["format"] = json!(99))),
            m.id.clone(),
            "newer",
        ),
        // The id is bound into the key and the chunks: a renamed backup
        // does not open.
        (
            variant("renamed", &|d| {
                edit(d, &|v| v["id"] = json!(renamed.clone()));
                std::fs::rename(d, d.with_file_name(&renamed)).unwrap();
            }),
            renamed.clone(),
            "does not open",
        ),
    ];
    for (root, id, want) in &cases {
        let e = backup::verify(provider, root.path(), id).unwrap_err();
        assert!(format!("{e:#}").contains(want), "{id}: {e:#}");
        // The restore refuses before touching its target.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let t = Store::connect(&path.to_string_lossy(), Default::default())
            .await
            .unwrap();
        assert!(backup::restore(
            provider,
            root.path(),
            id,
            &t,
            false,
            backup::Commit::Once,
            srv.clock.now(),
            &|_, _| {}
        )
        .await
        .is_err());
        assert_eq!(
            t.schema_version().await.unwrap_or(0),
            0,
            "{id}: target touched"
        );
    }

    // Another master key cannot open it.
    let other_keys = tempfile::tempdir().unwrap();
    let other_data = tempfile::tempdir().unwrap();
    let (other, _) =
        strongroom_crypto::keyfile::open(&other_keys.path().join("k"), other_data.path(), true)
            .unwrap();
    let e = backup::verify(&other, target.path(), &m.id).unwrap_err();
    assert!(format!("{e:#}").contains("master key"), "{e:#}");

    // An interrupted backup (no manifest yet, a partial directory) is
    // never listed as a backup.
    std::fs::create_dir(target.path().join(".partial-20990101T000000Z-00000000")).unwrap();
    std::fs::create_dir(target.path().join("20990101T000000Z-deadbeef")).unwrap();
    let listed: Vec<String> = backup::list(target.path())
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert!(listed.contains(&m.id));
    assert!(
        !listed.iter().any(|i| i.starts_with("20990101")),
        "{listed:?}"
    );
    // Ids that are paths are refused.
    assert!(backup::verify(provider, target.path(), "../etc").is_err());
}

#[tokio::test]
async fn drills_record_evidence_and_failures_raise_an_incident() {
    let srv = populated().await;
    let target = tempfile::tempdir().unwrap();
    let provider = srv.state.keys.provider();
    let clock: strongroom_core::clock::SharedClock = Arc::new(srv.clock.clone());
    backup::create(srv.store(), provider, target.path(), srv.clock.now())
        .await
        .unwrap();
    let r = backup::drill(
        srv.store(),
        srv.state.keys.shared_provider(),
        &backup::Location::Dir(target.path().to_owned()),
        None,
        &Default::default(),
        &clock,
    )
    .await
    .unwrap();
    assert!(r.ok, "{:?}", r.checks);
    let names: Vec<&str> = r.checks.iter().map(|c| c.0.as_str()).collect();
    for want in [
        "restore",
        "schema_version",
        "row_counts",
        "audit_chains",
        "decrypt_sample",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
    let runs = srv.store().backup_runs(10).await.unwrap();
    assert_eq!(runs[0].kind, "drill");
    assert!(runs[0].ok);
    // With a probe account, the drill also signs in on the restored store.
    let loc = backup::Location::Dir(target.path().to_owned());
    for (password, ok) in [
        (strongroom_testkit::PASSWORD, true),
        ("not the password at all", false),
    ] {
        let probe = (
            "ACME".to_owned(),
            "ann".to_owned(),
            secrecy::SecretString::from(password.to_owned()),
        );
        let r = backup::drill_with_probe(
            srv.store(),
            srv.state.keys.shared_provider(),
            &loc,
            None,
            &Default::default(),
            &clock,
            Some(&probe),
        )
        .await
        .unwrap();
        let check = r.checks.iter().find(|c| c.0 == "probe_sign_in").unwrap();
        assert_eq!(check.1, ok, "{check:?}");
        assert_eq!(r.ok, ok);
    }

    // A damaged newest backup fails its drill: recorded, and an incident.
    srv.clock.advance(chrono::Duration::hours(1));
    let m2 = backup::create(srv.store(), provider, target.path(), srv.clock.now())
        .await
        .unwrap();
    let c = target.path().join(&m2.id).join("chunk-000001.bin");
    let mut b = std::fs::read(&c).unwrap();
    b[20] ^= 0xff;
    std::fs::write(&c, b).unwrap();
    let r = backup::drill(
        srv.store(),
        srv.state.keys.shared_provider(),
        &backup::Location::Dir(target.path().to_owned()),
        None,
        &Default::default(),
        &clock,
    )
    .await
    .unwrap();
    assert!(!r.ok);
    assert_eq!(r.backup_id, m2.id);
    let runs = srv.store().backup_runs(10).await.unwrap();
    assert!(!runs[0].ok);
    let incidents = srv
        .store()
        .incidents(strongroom_core::audit::SERVER_CHAIN)
        .await
        .unwrap();
    assert!(
        incidents.iter().any(|i| i.detector == "restore_drill"),
        "{incidents:?}"
    );
}

#[tokio::test]
async fn a_standby_follows_new_backups_and_serves_once_promoted() {
    let srv = populated().await;
    let target = tempfile::tempdir().unwrap();
    let provider = srv.state.keys.provider();
    let m1 = backup::create(srv.store(), provider, target.path(), srv.clock.now())
        .await
        .unwrap();

    // The standby: a store and data directory of its own, the primary's
    // master key.
    let standby_dir = tempfile::tempdir().unwrap();
    let data_dir = standby_dir.path().join("data");
    let db = data_dir.join("strongroom.db");
    std::fs::create_dir_all(&data_dir).unwrap();
    let store = Store::connect(&db.to_string_lossy(), Default::default())
        .await
        .unwrap();
    let step = |now| {
        let store = store.clone();
        let (data_dir, source) = (
            data_dir.clone(),
            backup::Location::Dir(target.path().to_owned()),
        );
        async move { backup::standby_step(&store, provider, &data_dir, &source, now).await }
    };
    assert_eq!(step(srv.clock.now()).await.unwrap().unwrap().id, m1.id);
    assert!(
        step(srv.clock.now()).await.unwrap().is_none(),
        "nothing new"
    );

    // New work on the primary, a new backup: the standby catches up.
    let admin = srv.sign_in("ACME", "master").await;
    add_record(
        &admin,
        "customer",
        json!({"name": "After the first backup"}),
    )
    .await;
    srv.clock.advance(chrono::Duration::minutes(15));
    let m2 = backup::create(srv.store(), provider, target.path(), srv.clock.now())
        .await
        .unwrap();
    assert_eq!(step(srv.clock.now()).await.unwrap().unwrap().id, m2.id);
    let company = store.company_by_code("ACME").await.unwrap().unwrap().0;
    assert_eq!(store.count_records(company).await.unwrap(), 32);
    let st = backup::read_standby(&data_dir).unwrap().unwrap();
    assert_eq!(st.restored.as_deref(), Some(m2.id.as_str()));
    store.close().await;

    // A standby does not serve until promoted; then it does, and stops
    // following.
    let mut env = srv.env.clone();
    for (k, v) in env.iter_mut() {
        match k.as_str() {
            "STRONGROOM_DATABASE_URL" => *v = db.to_string_lossy().into_owned(),
            "STRONGROOM_DATA_DIR" => *v = data_dir.to_string_lossy().into_owned(),
            _ => {}
        }
    }
    let (config, resolved) = strongroom_server::config::Config::load(None, &env).unwrap();
    let clock: strongroom_core::clock::SharedClock = Arc::new(srv.clock.clone());
    let e = strongroom_server::prepare(&config, &resolved, clock.clone())
        .await
        .err()
        .expect("a standby refuses to serve");
    assert!(format!("{e:#}").contains("promote"), "{e:#}");
    backup::promote(&data_dir).unwrap();
    let prepared = strongroom_server::prepare(&config, &resolved, clock)
        .await
        .expect("a promoted standby serves");
    assert_eq!(
        prepared.state.store.count_records(company).await.unwrap(),
        32
    );
    let again = Store::connect(&db.to_string_lossy(), Default::default())
        .await
        .unwrap();
    let e = backup::standby_step(
        &again,
        provider,
        &data_dir,
        &backup::Location::Dir(target.path().to_owned()),
        srv.clock.now(),
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("promoted"), "{e:#}");
}

/// An S3-compatible server on loopback (s3s-fs: buckets are directories),
/// started by the test itself.
async fn s3_server(root: &Path) -> String {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    std::fs::create_dir_all(root.join("backups")).unwrap();
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
    b.set_auth(s3s::auth::SimpleAuth::from_single(
        "test-key",
        "test-secret",
    ));
    let service = b.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn backups_to_s3_compatible_storage() {
    let srv = populated().await;
    let root = tempfile::tempdir().unwrap();
    let endpoint = s3_server(root.path()).await;
    let os = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name("backups")
        .with_access_key_id("test-key")
        .with_secret_access_key("test-secret")
        .build()
        .unwrap();
    let loc = backup::Location::S3 {
        store: Arc::new(os),
        prefix: "strongroom/prod".into(),
        display: "s3://backups/strongroom/prod".into(),
    };
    let provider = srv.state.keys.provider();
    let m = backup::create_at(srv.store(), provider, &loc, srv.clock.now(), &|_| {})
        .await
        .unwrap();
    // An upload that stopped before its manifest is not a backup.
    use object_store::ObjectStore;
    if let backup::Location::S3 { store, .. } = &loc {
        store
            .put(
                &object_store::path::Path::from(
                    "strongroom/prod/20990101T000000Z-00000000/chunk-000001.bin",
                ),
                b"half".to_vec().into(),
            )
            .await
            .unwrap();
    }
    let listed: Vec<String> = backup::list_at(&loc)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed, vec![m.id.clone()]);
    // The objects hold nothing readable.
    for e in walk(&root.path().join("backups")) {
        let bytes = std::fs::read(&e).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(NATIONAL_ID) && !text.contains("Hanoi Trading"),
            "{}",
            e.display()
        );
    }
    let local = backup::local(&loc, &m.id).await.unwrap();
    backup::verify(provider, &local.root, &m.id).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let restored = Store::connect(
        &dir.path().join("r.db").to_string_lossy(),
        Default::default(),
    )
    .await
    .unwrap();
    backup::restore(
        provider,
        &local.root,
        &m.id,
        &restored,
        false,
        backup::Commit::Once,
        srv.clock.now(),
        &|_, _| {},
    )
    .await
    .unwrap();
    let company = restored.company_by_code("ACME").await.unwrap().unwrap().0;
    assert_eq!(restored.count_records(company).await.unwrap(), 31);
    // Drills work from object storage too; deleting removes it.
    let clock: strongroom_core::clock::SharedClock = Arc::new(srv.clock.clone());
    let r = backup::drill(
        srv.store(),
        srv.state.keys.shared_provider(),
        &loc,
        None,
        &Default::default(),
        &clock,
    )
    .await
    .unwrap();
    assert!(r.ok, "{:?}", r.checks);
    backup::remove_at(&loc, &m.id).await.unwrap();
    assert!(backup::list_at(&loc).await.unwrap().is_empty());
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test]
async fn manifests_are_signed_and_a_pinned_key_checks_them_without_the_master_key() {
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let (srv, target, m) = backed_up().await;
    let provider = srv.state.keys.provider();
    let ours = backup::signing_public_key(srv.store())
        .await
        .unwrap()
        .expect("the first backup made the installation's signing key");
    let sig = m.signature.clone().expect("the manifest is signed");
    assert_eq!(sig.public_key, ours);
    assert_eq!(sig.algorithm, "ed25519");
    // The full check names the signer; the key-less check passes with the
    // pinned key and fails with any other.
    let c = backup::verify(provider, target.path(), &m.id).unwrap();
    assert_eq!(c.signed_by.as_deref(), Some(ours.as_str()));
    backup::verify_signature(target.path(), &m.id, &ours).unwrap();
    let stranger = hex::encode([7u8; 32]);
    let e = backup::verify_signature(target.path(), &m.id, &stranger).unwrap_err();
    assert!(format!("{e:#}").contains("not by the pinned key"), "{e:#}");

    // Someone without the master key alters the manifest (its date, so that
    // retention would keep an old backup as the newest) and signs it again
    // with a key of their own: the pinned key refuses it, and so does the
    // MAC.
    let mf = target.path().join(&m.id).join("manifest.json");
    let original = std::fs::read(&mf).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&original).unwrap();
    v["created_at"] = json!("2099-01-01T00:00:00Z");
    std::fs::write(&mf, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = backup::verify_signature(target.path(), &m.id, &ours).unwrap_err();
    assert!(
        format!("{e:#}").contains("signature does not match"),
        "{e:#}"
    );
    let seed = [9u8; 32];
    let forger = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
    let mut forged: backup::Manifest = serde_json::from_value(v).unwrap();
    let forger_hex = hex::encode(forger.public_key().as_ref());
    if let Some(s) = forged.signature.as_mut() {
        s.public_key = forger_hex.clone();
        s.sig = String::new();
    }
    let mut unsigned = forged.clone();
    unsigned.mac = String::new();
    let mut bytes = b"strongroom/backup-manifest-signature/v1\0".to_vec();
    bytes.extend(serde_json::to_vec(&unsigned).unwrap());
    forged.signature.as_mut().unwrap().sig = hex::encode(forger.sign(&bytes).as_ref());
    std::fs::write(&mf, serde_json::to_vec(&forged).unwrap()).unwrap();
    // The forgery is self-consistent (it passes with the forger's key) ...
    backup::verify_signature(target.path(), &m.id, &forger_hex).unwrap();
    // ... but not with the installation's key, nor under the master key.
    let e = backup::verify_signature(target.path(), &m.id, &ours).unwrap_err();
    assert!(format!("{e:#}").contains("not by the pinned key"), "{e:#}");
    let e = backup::verify(provider, target.path(), &m.id).unwrap_err();
    assert!(format!("{e:#}").contains("altered"), "{e:#}");
    std::fs::write(&mf, &original).unwrap();

    // A damaged chunk fails the key-less check too.
    let chunk = target.path().join(&m.id).join("chunk-000001.bin");
    let good = std::fs::read(&chunk).unwrap();
    let mut bad = good.clone();
    bad[3] ^= 0x40;
    std::fs::write(&chunk, &bad).unwrap();
    let e = backup::verify_signature(target.path(), &m.id, &ours).unwrap_err();
    assert!(format!("{e:#}").contains("checksum"), "{e:#}");
    std::fs::write(&chunk, &good).unwrap();

    // After a master-key rotation the signing key is re-wrapped with the
    // company keys: the next backup is signed by the same key, and the old
    // master key is gone.
    let shared = srv.state.keys.shared_provider();
    shared.add_master_key().unwrap();
    strongroom_server::keys::rewrap_all(shared.as_ref(), srv.store())
        .await
        .unwrap();
    shared.drop_old_master_keys().unwrap();
    let m2 = backup::create(srv.store(), provider, target.path(), srv.clock.now())
        .await
        .unwrap();
    assert_eq!(m2.signature.unwrap().public_key, ours);
    backup::verify(provider, target.path(), &m2.id).unwrap();
}

/// Restores backup `id` from `target` into `into`, unforced, hearing no
/// progress.
async fn restore_quietly(
    srv: &TestServer,
    target: &Path,
    id: &str,
    into: &Store,
    commit: backup::Commit,
) -> anyhow::Result<backup::Checked> {
    backup::restore(
        srv.state.keys.provider(),
        target,
        id,
        into,
        false,
        commit,
        srv.clock.now(),
        &|_, _| {},
    )
    .await
}

/// A backup in chunks of about 2 KiB (many chunks from a small store).
async fn create_in_small_chunks(
    srv: &TestServer,
    target: &Path,
) -> anyhow::Result<backup::Manifest> {
    backup::create_with(
        srv.store(),
        srv.state.keys.provider(),
        target,
        srv.clock.now(),
        2048,
        &|_| {},
    )
    .await
}

/// Connects to a fresh store of each backend: a SQLite file in `dir`, and
/// a scratch PostgreSQL database.
async fn fresh_targets(dir: &Path) -> (Vec<Store>, ScratchPostgres) {
    let sqlite = Store::connect(
        &dir.join("restored.db").to_string_lossy(),
        Default::default(),
    )
    .await
    .unwrap();
    let pg = ScratchPostgres::new().await;
    let postgres = Store::connect(&pg.url, Default::default()).await.unwrap();
    (vec![sqlite, postgres], pg)
}

#[tokio::test]
async fn an_interrupted_restore_resumes_and_nothing_uses_the_store_before() {
    let srv = populated().await;
    let target = tempfile::tempdir().unwrap();
    let provider = srv.state.keys.provider();
    let written = std::sync::atomic::AtomicU64::new(0);
    let m = backup::create_with(
        srv.store(),
        provider,
        target.path(),
        srv.clock.now(),
        2048,
        &|n| written.store(n, std::sync::atomic::Ordering::Relaxed),
    )
    .await
    .unwrap();
    assert!(m.chunks.len() >= 6, "{} chunks", m.chunks.len());
    assert_eq!(
        written.into_inner(),
        m.total_rows(),
        "progress reached the end"
    );
    let other = backup::create(srv.store(), provider, target.path(), srv.clock.now())
        .await
        .unwrap();
    let before = dump(srv.store()).await;
    let dir = tempfile::tempdir().unwrap();
    let (targets, pg) = fresh_targets(dir.path()).await;
    let two_chunks: u64 = m.chunks[..2].iter().map(|c| c.rows).sum();
    for (n, into) in targets.iter().enumerate() {
        // Interrupted in the middle of the third chunk: the restore is
        // dropped there, as a killed process would stop.
        let reached = tokio::sync::Notify::new();
        let hear = |done: u64, _: u64| {
            if done > two_chunks {
                reached.notify_one();
            }
        };
        let run = backup::restore(
            provider,
            target.path(),
            &m.id,
            into,
            false,
            backup::Commit::Resumable,
            srv.clock.now(),
            &hear,
        );
        // Biased: once the callback has fired, the restore is not polled
        // again (it stops at its next wait).
        tokio::select! {
            biased;
            _ = reached.notified() => {}
            r = run => panic!("the restore ended before it was interrupted: {:?}", r.map(|c| c.manifest.id)),
        }
        let p = into
            .restore_progress()
            .await
            .unwrap()
            .expect("the store remembers the interrupted restore");
        assert_eq!(p.backup_id, m.id);
        // Two chunks were committed when the callback fired; the third may
        // have committed too if the store answered before the restore
        // yielded, but never all of them.
        assert!(p.chunks_done >= 2 && p.chunks_done < p.chunks, "{p:?}");
        let kept: u64 = m.chunks[..p.chunks_done as usize]
            .iter()
            .map(|c| c.rows)
            .sum();
        assert_eq!(p.chunks, m.chunks.len() as i64);

        // No server starts on it, and no tool works on it.
        let mut env = srv.env.clone();
        let data = tempfile::tempdir().unwrap();
        let url = if n == 0 {
            dir.path()
                .join("restored.db")
                .to_string_lossy()
                .into_owned()
        } else {
            pg.url.clone()
        };
        for (k, v) in env.iter_mut() {
            match k.as_str() {
                "STRONGROOM_DATABASE_URL" => *v = url.clone(),
                "STRONGROOM_DATA_DIR" => *v = data.path().to_string_lossy().into_owned(),
                _ => {}
            }
        }
        let (config, resolved) = strongroom_server::config::Config::load(None, &env).unwrap();
        let e = strongroom_server::prepare(&config, &resolved, Arc::new(srv.clock.clone()))
            .await
            .err()
            .expect("a server refuses a partly restored store");
        let text = format!("{e:#}");
        assert!(text.contains("interrupted restore"), "{text}");
        assert!(text.contains(&m.id), "{text}");

        // Another backup is refused there unless forced.
        let e = restore_quietly(
            &srv,
            target.path(),
            &other.id,
            into,
            backup::Commit::Resumable,
        )
        .await
        .unwrap_err();
        assert!(format!("{e:#}").contains("interrupted restore"), "{e:#}");

        // Run again, it resumes after the second chunk and completes.
        let first = std::sync::Mutex::new(None);
        backup::restore(
            provider,
            target.path(),
            &m.id,
            into,
            false,
            backup::Commit::Resumable,
            srv.clock.now(),
            &|done, _| {
                first.lock().unwrap().get_or_insert(done);
            },
        )
        .await
        .unwrap();
        let first = first.into_inner().unwrap().unwrap();
        assert!(first > kept, "resumed from the start ({first} rows)");
        assert_eq!(into.restore_progress().await.unwrap(), None);
        let after = dump(into).await;
        for t in BACKUP_TABLES {
            assert_eq!(
                before[*t], after[*t],
                "table {t} differs after a resumed restore"
            );
        }
        let ring =
            strongroom_server::keys::KeyRing::new(srv.state.keys.shared_provider(), into.clone());
        for chain in into.audit_chains().await.unwrap() {
            let company = into
                .company_code(strongroom_core::CompanyId(chain))
                .await
                .unwrap();
            let v = strongroom_server::audit::verify(into, &ring, chain, company.is_some(), None)
                .await
                .unwrap();
            assert_eq!(v.problem, None, "chain {chain}");
        }
        strongroom_server::prepare(&config, &resolved, Arc::new(srv.clock.clone()))
            .await
            .expect("a server starts once the restore is complete");
    }
}

fn size_of_tree(p: &Path) -> u64 {
    walk(p)
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[tokio::test]
async fn a_full_disk_is_a_clear_error_and_leaves_nothing_that_looks_complete() {
    let srv = populated().await;
    let roomy = tempfile::tempdir().unwrap();
    let m = create_in_small_chunks(&srv, roomy.path()).await.unwrap();
    let backup_bytes = size_of_tree(&roomy.path().join(&m.id));
    let before = dump(srv.store()).await;

    // A backup onto a disk with room for half of it fails, says why, and
    // leaves neither a listed backup nor a partial directory behind.
    let small = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(small.path(), (backup_bytes / 2).max(4096)) else {
        return;
    };
    let e = create_in_small_chunks(&srv, small.path())
        .await
        .unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("disk is full") || text.contains("No space left"),
        "{text}"
    );
    assert!(backup::list(small.path()).unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(small.path()).unwrap().count(),
        0,
        "leftovers"
    );
    assert_eq!(dump(srv.store()).await, before, "the source store changed");
    drop(disk);

    // A restore into an SQLite store whose disk fills up halfway through
    // the load stops with a clear error; once there is room, the same
    // restore resumes and completes. (How much the load needs is measured
    // first, on a roomy disk.)
    let used = |p: &Path| -> u64 {
        walk(p)
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len().div_ceil(4096) * 4096)
            .sum()
    };
    let measure = tempfile::tempdir().unwrap();
    let t = Store::connect(
        &measure.path().join("s.db").to_string_lossy(),
        Default::default(),
    )
    .await
    .unwrap();
    t.migrate(srv.clock.now()).await.unwrap();
    let empty = used(measure.path());
    restore_quietly(&srv, roomy.path(), &m.id, &t, backup::Commit::Resumable)
        .await
        .unwrap();
    let load = used(measure.path()) - empty;
    t.close().await;
    let small = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(small.path(), 64 << 20).expect("mounted once already");
    let into = Store::connect(
        &small.path().join("s.db").to_string_lossy(),
        Default::default(),
    )
    .await
    .unwrap();
    into.migrate(srv.clock.now()).await.unwrap();
    disk.resize(used(small.path()) + load / 2);
    let e = restore_quietly(&srv, roomy.path(), &m.id, &into, backup::Commit::Resumable)
        .await
        .unwrap_err();
    let text = format!("{e:#}");
    assert!(text.contains("the restore stopped at chunk"), "{text}");
    assert!(
        text.contains("run the same command again to resume"),
        "{text}"
    );
    assert!(text.contains("disk is full"), "{text}");
    let p = into
        .restore_progress()
        .await
        .unwrap()
        .expect("progress kept");
    assert!(p.chunks_done < p.chunks, "{p:?}");
    disk.resize(256 << 20);
    restore_quietly(&srv, roomy.path(), &m.id, &into, backup::Commit::Resumable)
        .await
        .unwrap();
    let after = dump(&into).await;
    for t in BACKUP_TABLES {
        assert_eq!(
            before[*t], after[*t],
            "table {t} differs after a restore that met a full disk"
        );
    }
    into.close().await;
}
