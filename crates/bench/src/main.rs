//! Strongroom's benchmarks. Every figure is printed next to a baseline
//! measured in the same run, as a ratio, because the machines we run on are
//! shared and noisy. Build and run in release mode:
//!
//!     cargo run --release -p strongroom-bench -- crypto

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde_json::{json, Value};
use strongroom_core::clock::{Clock, SystemClock};
use strongroom_core::record::apply_patch;
use strongroom_crypto::envelope::{self, FieldContext, SecretKey};
use strongroom_proto::{DeletedFilter, RecordData};
use strongroom_server::sealing::Sealer;
use strongroom_store::RecordQuery;

#[derive(Parser)]
#[command(about = "Strongroom benchmarks: each figure next to its same-run baseline")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Field encryption against the raw AEAD call, and a blind-index lookup
    /// against a plaintext indexed lookup.
    ///
    /// Example: cargo run --release -p strongroom-bench -- crypto --records 5000
    Crypto {
        /// Records in the lookup data set.
        #[arg(long, default_value_t = 5000)]
        records: usize,
        /// Store to use (default: a fresh SQLite file in a temporary directory).
        #[arg(long)]
        database_url: Option<String>,
    },
}

fn per_op(d: Duration, n: usize) -> f64 {
    d.as_nanos() as f64 / n as f64
}

fn time<F: FnMut()>(n: usize, mut f: F) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.what {
        What::Crypto {
            records,
            database_url,
        } => {
            field_crypto();
            rt.block_on(lookups(records, database_url))?;
        }
    }
    Ok(())
}

/// Encrypt+decrypt of one national ID through the field envelope (AAD
/// building, version tag, base64, JSON) against ring's AES-256-GCM alone.
fn field_crypto() {
    const N: usize = 200_000;
    let key = SecretKey::generate(1).unwrap_or_else(|_| std::process::exit(1));
    let raw = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key.expose()).unwrap_or_else(|_| std::process::exit(1)),
    );
    let value = b"\"079201001234\"";
    let aad =
        b"strongroom/field/v1\0ACME\0customer\0e2c3a1f0-0000-4000-8000-000000000000\0national_id\0";
    // Raw: seal and open in place with a fixed nonce (a baseline, not a pattern to copy).
    let raw_t = time(N, || {
        let mut buf = value.to_vec();
        let nonce = Nonce::assume_unique_for_key([7u8; 12]);
        let _ = raw.seal_in_place_append_tag(nonce, Aad::from(&aad[..]), &mut buf);
        let nonce = Nonce::assume_unique_for_key([7u8; 12]);
        let _ = black_box(
            raw.open_in_place(nonce, Aad::from(&aad[..]), &mut buf)
                .map(|p| p.len()),
        );
    });
    let ctx = FieldContext {
        company: "ACME",
        record_type: "customer",
        record_id: "e2c3a1f0-0000-4000-8000-000000000000",
        field: "national_id",
    };
    let text = "\"079201001234\"";
    let field_t = time(N, || {
        if let Ok(s) = envelope::encrypt_field(&key, ctx, black_box(text)) {
            let _ = black_box(envelope::decrypt_field(&key, ctx, &s));
        }
    });
    let bi_t = time(N, || {
        black_box(envelope::blind_index(
            &key,
            "customer",
            "national_id",
            black_box("079201001234"),
        ));
    });
    println!("## Field encryption ({N} values, one run)");
    println!("| operation | ns/value | ratio to raw AEAD |");
    println!("|---|---:|---:|");
    println!(
        "| raw AES-256-GCM seal+open (ring) | {:.0} | 1.00 |",
        per_op(raw_t, N)
    );
    println!(
        "| field encrypt+decrypt (random nonce, AAD, version, base64) | {:.0} | {:.2} |",
        per_op(field_t, N),
        per_op(field_t, N) / per_op(raw_t, N)
    );
    println!(
        "| blind index (HMAC-SHA256, truncated) | {:.0} | {:.2} |",
        per_op(bi_t, N),
        per_op(bi_t, N) / per_op(raw_t, N)
    );
    println!();
}

/// Finding one customer by national ID (blind index, then opening the
/// record) against finding one by e-mail (plaintext index), on the real
/// store and sealing code.
async fn lookups(records: usize, database_url: Option<String>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = database_url.unwrap_or_else(|| dir.path().join("bench.db").display().to_string());
    let clock = SystemClock;
    let store = strongroom_store::Store::connect(&url, Default::default()).await?;
    store.migrate(clock.now()).await?;
    let (provider, _) =
        strongroom_crypto::keyfile::open(&dir.path().join("keys"), &dir.path().join("data"), true)?;
    let provider: Arc<dyn strongroom_crypto::provider::KeyProvider> = Arc::new(provider);
    let code = format!("B{}", std::process::id());
    strongroom_server::init_company(
        &store,
        provider.as_ref(),
        clock.now(),
        strongroom_server::NewCompany {
            code: &code,
            name: "Bench",
            admin: "master",
            admin_name: "Master",
            password: "correct horse battery staple",
        },
    )
    .await?;
    let (company, _) = store.company_by_code(&code).await?.context("company")?;
    let owner = store.user(company, "master").await?.context("master")?.key;
    let keys = strongroom_server::keys::KeyRing::new(provider, store.clone());
    let rt = store
        .record_type(company, "customer")
        .await?
        .context("customer type")?;
    let sealer = Sealer::new(&keys, company, &code, &rt.view)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;

    let load = Instant::now();
    for i in 0..records {
        let patch: RecordData = json!({
            "name": format!("Customer {i}"),
            "email": format!("c{i}@example.com"),
            "national_id": format!("0792{i:08}"),
        })
        .as_object()
        .cloned()
        .unwrap_or_default();
        let plain = apply_patch(&rt.view.fields, &RecordData::new(), &patch)?;
        let id = uuid::Uuid::new_v4().to_string();
        let (stored, index) = sealer
            .seal(&id, &plain)
            .map_err(|e| anyhow::anyhow!(e.message))?;
        store
            .insert_record(
                company,
                &rt,
                &id,
                None,
                &stored,
                &index,
                owner,
                &[],
                clock.now(),
            )
            .await?;
    }
    // Planner statistics as a live system would have them.
    store.analyze().await?;
    println!(
        "## Exact lookup of one record among {records} ({}; loaded in {:.1} s)",
        if url.starts_with("postgres") {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        load.elapsed().as_secs_f64()
    );

    let field = |k: &str| rt.view.fields.iter().find(|f| f.key == k).cloned();
    let nid = field("national_id").context("national_id")?;
    let email = field("email").context("email")?;
    const M: usize = 2000;
    let query = |f: &str, v: String| RecordQuery {
        after: None,
        limit: 50,
        deleted: DeletedFilter::Exclude,
        equals: vec![(f.to_owned(), v)],
    };
    // Warm both paths once.
    for _ in 0..50 {
        store
            .list_records(company, &rt, &query("email", "c1@example.com".into()))
            .await?;
    }
    let start = Instant::now();
    for i in 0..M {
        let v = Value::String(format!("c{}@example.com", (i * 7919) % records));
        let ix = sealer.index_value(&email, &v).context("index")?;
        let (found, _) = store
            .list_records(company, &rt, &query("email", ix))
            .await?;
        anyhow::ensure!(found.len() == 1, "plaintext lookup found {}", found.len());
        black_box(found);
    }
    let plain_t = start.elapsed();
    let start = Instant::now();
    for i in 0..M {
        let v = Value::String(format!("0792{:08}", (i * 7919) % records));
        let ix = sealer.index_value(&nid, &v).context("index")?;
        let (found, _) = store
            .list_records(company, &rt, &query("national_id", ix))
            .await?;
        anyhow::ensure!(!found.is_empty(), "blind lookup found nothing");
        for r in found {
            // Open the candidate and compare exactly, as the API does.
            let opened = sealer
                .open(&keys, company, &r.id, &r.data)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
            anyhow::ensure!(opened.get("national_id") == Some(&v), "false match");
        }
    }
    let blind_t = start.elapsed();
    println!("| lookup | µs/lookup | lookups/s | ratio to plaintext |");
    println!("|---|---:|---:|---:|");
    println!(
        "| plaintext indexed (email) | {:.1} | {:.0} | 1.00 |",
        per_op(plain_t, M) / 1000.0,
        M as f64 / plain_t.as_secs_f64()
    );
    println!(
        "| blind index (national_id) + decrypt | {:.1} | {:.0} | {:.2} of the plaintext rate |",
        per_op(blind_t, M) / 1000.0,
        M as f64 / blind_t.as_secs_f64(),
        plain_t.as_secs_f64() / blind_t.as_secs_f64()
    );
    store.close().await;
    Ok(())
}
