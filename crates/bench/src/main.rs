//! Strongroom's benchmarks. Every figure is printed next to a baseline
//! measured in the same run, as a ratio, because the machines we run on are
//! shared and noisy. Build and run in release mode:
//!
//!     cargo run --release -p strongroom-bench -- crypto

mod suite;

/// The allocator of the `strongroom` binary (see its `main.rs`), so that
/// the servers here run as they do there.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde_json::Value;
use strongroom_core::clock::{Clock, SystemClock};
use strongroom_crypto::envelope::{self, FieldContext, SecretKey};
use strongroom_proto::DeletedFilter;
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

    /// Backup, verify and restore of a store of N records (three encrypted
    /// fields each), next to restic and borgbackup on the same store file
    /// when they are installed.
    ///
    /// Example: cargo run --release -p strongroom-bench -- backup --records 50000
    Backup {
        #[arg(long, default_value_t = 20000)]
        records: usize,
    },

    /// The suite: reads (masked, revealed, unaudited) next to a bare
    /// endpoint and, at 1 connection, next to one durable commit of the
    /// store alone, creates and updates, lists and blind-index searches next
    /// to plaintext ones, sign-ins next to raw Argon2id, reads during a
    /// sign-in flood, audit-chain verification next to raw SHA-256, memory,
    /// and read throughput with many records next to few. Prints Markdown
    /// (bench/run collects it into bench/RESULTS.md).
    ///
    /// Example: cargo run --release -p strongroom-bench -- suite --seconds 3
    Suite {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// PostgreSQL server to benchmark on (fresh databases are created
        /// and dropped there); SQLite files in a temporary directory when
        /// absent. Example: postgres://postgres@127.0.0.1:5432/test
        #[arg(long)]
        database_url: Option<String>,
        /// Customers in the data set the reads, lists and searches run on.
        #[arg(long, default_value_t = 10_000)]
        records: usize,
        /// Customers in the large data set of the scale test (1,000,000
        /// is supported; loading it takes about 15 minutes on 2 cores).
        #[arg(long, default_value_t = 100_000)]
        scale_records: usize,
    },

    /// Audit-chain verification alone: a company's chain of N read events
    /// (written through the server's audit log, with its signed
    /// checkpoints), verified, next to raw SHA-256 over the same bytes.
    ///
    /// Example: cargo run --release -p strongroom-bench -- chain --events 200000
    Chain {
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// PostgreSQL server to benchmark on (a fresh database is created
        /// and dropped there); an SQLite file in a temporary directory when
        /// absent.
        #[arg(long)]
        database_url: Option<String>,
        /// After the table, verify the same chain this many times more and
        /// print each rate: the spread of a noisy machine, and a window for
        /// a profiler (the pid is printed first).
        #[arg(long, default_value_t = 0)]
        again: usize,
    },

    /// One load of the suite, alone and as long as asked, for a profiler
    /// to watch (`perf record -g -p <pid>`, the pid printed first).
    ///
    /// Example: cargo run --release -p strongroom-bench -- profile --load read --seconds 20
    Profile {
        /// read, read-unaudited, create, update, list, signin (8 connections at most), flood (reads alone, then beside 8 connections of sign-ins) or livez.
        #[arg(long)]
        load: String,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        conns: usize,
        /// PostgreSQL server (a fresh database is made there); SQLite when absent.
        #[arg(long)]
        database_url: Option<String>,
    },

    /// The suite's load generator (run by `suite` in a child process).
    #[command(hide = true)]
    Load {
        #[arg(long)]
        base: String,
        #[arg(long)]
        cert: std::path::PathBuf,
        #[arg(long)]
        conns: usize,
        #[arg(long)]
        seconds: u64,
        #[arg(long)]
        method: String,
        /// A file of request paths, one a line; workers take them in turn.
        #[arg(long)]
        paths: std::path::PathBuf,
        /// A JSON body; `{n}` is replaced by a counter.
        #[arg(long)]
        body: Option<String>,
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
        What::Suite {
            seconds,
            database_url,
            records,
            scale_records,
        } => rt.block_on(suite::run(suite::SuiteArgs {
            seconds,
            database_url,
            records: records.max(1),
            scale_records: scale_records.max(records),
        }))?,
        What::Load {
            base,
            cert,
            conns,
            seconds,
            method,
            paths,
            body,
        } => {
            drop(rt);
            suite::load_main(
                base,
                cert,
                conns.max(1),
                seconds.max(1),
                method,
                paths,
                body,
            )?
        }
        What::Backup { records } => rt.block_on(backup_bench(records))?,
        What::Chain {
            events,
            database_url,
            again,
        } => rt.block_on(suite::chain(events, database_url.as_deref(), again))?,
        What::Profile {
            load,
            seconds,
            conns,
            database_url,
        } => rt.block_on(suite::profile(
            &load,
            seconds,
            conns.max(1),
            database_url.as_deref(),
        ))?,
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
    let load = Instant::now();
    let Populated {
        dir: _dir,
        url,
        store,
        keys,
        company,
        code,
        rt,
        ..
    } = populate(records, database_url).await?;
    let sealer = Sealer::new(&keys, company, &code, &rt.view)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
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
        only: None,
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
                .open(&keys, company, &r.view.id, &r.view.data)
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

/// Audit-chain verification over everything a server logged, next to raw
/// SHA-256 over the same canonical bytes in memory.
pub(crate) async fn chain_verify(
    state: &strongroom_server::state::AppState,
    code: &str,
) -> anyhow::Result<()> {
    let store = &state.store;
    let (company, _) = store.company_by_code(code).await?.context("company")?;
    let start = Instant::now();
    let v = strongroom_server::audit::verify(store, &state.keys, company.0, true, None)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let verify_t = start.elapsed();
    anyhow::ensure!(v.problem.is_none(), "chain did not verify: {:?}", v.problem);
    let n = v.events;
    // The baseline hashes the canonical bytes of the chain's first
    // SAMPLE events, PASSES times over: a rate per event, without holding
    // a long chain in memory (which the memory figures would count).
    const SAMPLE: i64 = 20_000;
    const PASSES: usize = 20;
    let encoded: Vec<Vec<u8>> = store
        .audit_events(
            company.0,
            &strongroom_store::AuditQuery {
                limit: SAMPLE,
                ..Default::default()
            },
        )
        .await?
        .iter()
        .map(|e| e.event.canonical(e.seq))
        .collect();
    let start = Instant::now();
    let mut prev = [0u8; 32];
    for _ in 0..PASSES {
        for bytes in &encoded {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(prev);
            h.update(bytes);
            prev = h.finalize().into();
        }
    }
    black_box(prev);
    let sha_rate = (PASSES * encoded.len()) as f64 / start.elapsed().as_secs_f64();
    drop(encoded);
    let verify_rate = n as f64 / verify_t.as_secs_f64();
    println!("\n### 5. Audit-chain verification ({n} events)\n");
    println!("| what | events/s | ratio | goal |");
    println!("|---|---:|---:|---|");
    println!(
        "| raw SHA-256 over the same canonical bytes (the first {SAMPLE} events, {PASSES} times), in memory | {sha_rate:.0} | 1.00 | |"
    );
    println!(
        "| `audit verify`: read from the store, links, hashes, head, {} signed checkpoints | {verify_rate:.0} | {:.3} | {} ≥ 1,000,000 events/s |",
        v.checkpoints,
        verify_rate / sha_rate,
        if verify_rate >= 1e6 { "met:" } else { "NOT met:" }
    );
    Ok(())
}

/// A benchmark data set: a company with `records` customers (three
/// encrypted fields each) in a store of its own.
struct Populated {
    dir: tempfile::TempDir,
    url: String,
    store: strongroom_store::Store,
    provider: Arc<dyn strongroom_crypto::provider::KeyProvider>,
    keys: strongroom_server::keys::KeyRing,
    company: strongroom_core::CompanyId,
    code: String,
    rt: strongroom_store::StoredRecordType,
}

/// Fills `database_url` (default: a fresh SQLite file in a temporary
/// directory) with a new company of `records` customers.
async fn populate(records: usize, database_url: Option<String>) -> anyhow::Result<Populated> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("data"))?;
    let url = database_url.unwrap_or_else(|| {
        dir.path()
            .join("data")
            .join("bench.db")
            .display()
            .to_string()
    });
    let clock = SystemClock;
    let store = strongroom_store::Store::connect(&url, Default::default()).await?;
    store.migrate(clock.now()).await?;
    let (provider, _) =
        strongroom_crypto::keyfile::open(&dir.path().join("keys"), &dir.path().join("data"), true)?;
    let provider: Arc<dyn strongroom_crypto::provider::KeyProvider> = Arc::new(provider);
    // A company of its own, so a reused PostgreSQL database works too.
    let code = format!("B{}", std::process::id());
    suite::new_company(&store, provider.as_ref(), &code).await?;
    let (company, _) = store.company_by_code(&code).await?.context("company")?;
    let keys = strongroom_server::keys::KeyRing::new(provider.clone(), store.clone());
    suite::insert_customers(&store, &keys, company, &code, 0..records, |_| Ok(())).await?;
    let rt = store
        .record_type(company, "customer")
        .await?
        .context("customer type")?;
    Ok(Populated {
        dir,
        url,
        store,
        provider,
        keys,
        company,
        code,
        rt,
    })
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|es| {
            es.flatten()
                .map(|e| {
                    let m = e.metadata().map(|m| m.len()).unwrap_or(0);
                    if e.path().is_dir() {
                        dir_bytes(&e.path())
                    } else {
                        m
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Runs a command, timing it; `None` when the tool is not installed.
fn timed(cmd: &mut std::process::Command) -> Option<Duration> {
    let t = Instant::now();
    match cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Some(t.elapsed()),
        _ => None,
    }
}

async fn backup_bench(records: usize) -> anyhow::Result<()> {
    use strongroom_server::backup;
    let load = Instant::now();
    let Populated {
        dir,
        store,
        provider,
        ..
    } = populate(records, None).await?;
    println!(
        "## Backup and restore of {records} records (SQLite; loaded in {:.1} s)",
        load.elapsed().as_secs_f64()
    );
    // Checkpoint the WAL so the store file is whole for the file-level tools.
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(store.raw_pool())
        .await?;
    let db = dir.path().join("data").join("bench.db");
    let db_mb = std::fs::metadata(&db)?.len() as f64 / 1e6;
    let target = dir.path().join("backups");
    let t = Instant::now();
    let m = backup::create(&store, provider.as_ref(), &target, SystemClock.now()).await?;
    let b = t.elapsed();
    let size = dir_bytes(&target.join(&m.id)) as f64 / 1e6;
    let t = Instant::now();
    backup::verify(provider.as_ref(), &target, &m.id)?;
    let v = t.elapsed();
    let into = strongroom_store::Store::connect(
        &dir.path().join("restored.db").display().to_string(),
        Default::default(),
    )
    .await?;
    let t = Instant::now();
    backup::restore(
        provider.as_ref(),
        &target,
        &m.id,
        &into,
        false,
        backup::Commit::Resumable,
        SystemClock.now(),
        &|_, _| {},
    )
    .await?;
    let r = t.elapsed();
    println!("store file {db_mb:.1} MB, {} rows", m.total_rows());
    println!("| tool | backup s | MB/s of store | backup MB | restore s |");
    println!("|---|---|---|---|---|");
    println!(
        "| strongroom (logical, encrypted) | {:.2} | {:.1} | {size:.1} | {:.2} (verify alone {:.2}) |",
        b.as_secs_f64(),
        db_mb / b.as_secs_f64(),
        r.as_secs_f64(),
        v.as_secs_f64()
    );
    // The same store file with restic and borgbackup (encrypted repositories).
    let repo = dir.path().join("restic");
    let out = dir.path().join("restic-out");
    let restic = |args: &[&str]| {
        let mut c = std::process::Command::new("restic");
        c.args(args)
            .env("RESTIC_PASSWORD", "bench-password")
            .env("RESTIC_REPOSITORY", &repo);
        c
    };
    if timed(&mut restic(&["init"])).is_some() {
        let bk = timed(&mut restic(&["backup", &db.display().to_string()]));
        let rs = timed(&mut restic(&[
            "restore",
            "latest",
            "--target",
            &out.display().to_string(),
        ]));
        if let (Some(bk), Some(rs)) = (bk, rs) {
            println!(
                "| restic | {:.2} | {:.1} | {:.1} | {:.2} |",
                bk.as_secs_f64(),
                db_mb / bk.as_secs_f64(),
                dir_bytes(&repo) as f64 / 1e6,
                rs.as_secs_f64()
            );
        }
    } else {
        println!("| restic | not installed (apt-get install restic) | | | |");
    }
    let brepo = dir.path().join("borg");
    let bout = dir.path().join("borg-out");
    std::fs::create_dir_all(&bout)?;
    let borg = |args: &[&str]| {
        let mut c = std::process::Command::new("borg");
        c.args(args)
            .env("BORG_PASSPHRASE", "bench-password")
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .current_dir(&bout);
        c
    };
    let archive = format!("{}::a", brepo.display());
    if timed(&mut borg(&[
        "init",
        "--encryption=repokey",
        &brepo.display().to_string(),
    ]))
    .is_some()
    {
        let bk = timed(&mut borg(&[
            "create",
            "--compression",
            "zstd,3",
            &archive,
            &db.display().to_string(),
        ]));
        let rs = timed(&mut borg(&["extract", &archive]));
        if let (Some(bk), Some(rs)) = (bk, rs) {
            println!(
                "| borgbackup | {:.2} | {:.1} | {:.1} | {:.2} |",
                bk.as_secs_f64(),
                db_mb / bk.as_secs_f64(),
                dir_bytes(&brepo) as f64 / 1e6,
                rs.as_secs_f64()
            );
        }
    } else {
        println!("| borgbackup | not installed (apt-get install borgbackup) | | | |");
    }
    println!(
        "Strongroom's backup is a logical export (every row decoded, re-encoded, compressed and sealed) and its restore a transactional load with index rebuilds; restic and borg copy the store file's blocks."
    );
    Ok(())
}
