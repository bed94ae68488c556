//! The benchmark suite: the real server stack (the code `strongroom serve`
//! runs: TLS, router, middleware, store) in this process, driven by a load
//! generator in a child process (this binary's hidden `load` command), so
//! that the memory figures are the server's own. Every figure is printed
//! next to a limit measured in the same run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use strongroom_core::clock::{Clock, SystemClock};
use strongroom_core::record::apply_patch;
use strongroom_proto::RecordData;
use strongroom_server::sealing::Sealer;
use strongroom_server::state::AppState;

const PASSWORD: &str = "plum orchard violin tram";
const FLOOD_PASSWORD: &str = "quartz lantern meadow sparrow";

/// What the suite was asked to do.
pub struct SuiteArgs {
    pub seconds: u64,
    pub database_url: Option<String>,
    pub records: usize,
    pub scale_records: usize,
}

/// Where the load generator sends its requests, and as whom.
#[derive(Clone)]
struct Target {
    base: String,
    cert: PathBuf,
    token: String,
    /// Where the lists of paths for the load generator are written.
    scratch: PathBuf,
}

/// A running server with one company, a signed-in master, and the files
/// the load generator reads.
struct Server {
    target: Target,
    state: AppState,
    code: String,
    record: String,
    dir: tempfile::TempDir,
    database: Option<ScratchDatabase>,
}

impl Server {
    /// Drops the server's PostgreSQL database, if it has one. Every command
    /// that starts servers calls it at its end, whether it ran or failed.
    async fn drop_database(&self) -> anyhow::Result<()> {
        if let Some(db) = &self.database {
            db.drop_now().await?;
        }
        Ok(())
    }
}

/// A fresh PostgreSQL database for one server, dropped at the end.
struct ScratchDatabase {
    admin_url: String,
    name: String,
    /// The database's own URL, as the server was given it.
    url: String,
}

impl ScratchDatabase {
    async fn new(admin_url: &str, tag: &str) -> anyhow::Result<ScratchDatabase> {
        let name = format!("strongroom_bench_{}_{tag}", std::process::id());
        let pool = admin(admin_url).await?;
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&pool)
            .await?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&pool)
            .await
            .context("creating the benchmark database (the URL's user needs CREATEDB)")?;
        pool.close().await;
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .context("a PostgreSQL URL ends with /<database>")?;
        Ok(ScratchDatabase {
            admin_url: admin_url.to_owned(),
            url: format!("{base}/{name}"),
            name,
        })
    }

    async fn drop_now(&self) -> anyhow::Result<()> {
        let pool = admin(&self.admin_url).await?;
        sqlx::raw_sql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&pool)
        .await?;
        pool.close().await;
        Ok(())
    }
}

async fn admin(url: &str) -> anyhow::Result<sqlx::AnyPool> {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .context("connecting to PostgreSQL for the benchmark databases")
}

async fn start(no_audit: bool, database_url: Option<&str>, tag: &str) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let mut env: Vec<(String, String)> = vec![
        ("STRONGROOM_LISTEN".into(), "127.0.0.1:0".into()),
        (
            "STRONGROOM_DATA_DIR".into(),
            dir.path().join("data").display().to_string(),
        ),
        (
            "STRONGROOM_KEY_DIR".into(),
            dir.path().join("keys").display().to_string(),
        ),
        // The benchmark measures the work, not the limits that stop floods.
        (
            "STRONGROOM_RATE_LIMIT_IP_PER_SECOND".into(),
            "1000000".into(),
        ),
        (
            "STRONGROOM_RATE_LIMIT_COMPANY_PER_SECOND".into(),
            "1000000".into(),
        ),
        (
            "STRONGROOM_LOGIN_RATE_PER_IP_PER_MINUTE".into(),
            "100000".into(),
        ),
    ];
    // The operator's own STRONGROOM_* settings apply too (to try a setting's
    // effect, e.g. STRONGROOM_DB_MAX_CONNECTIONS=4), after the suite's.
    env.extend(
        std::env::vars()
            .filter(|(k, _)| k.starts_with("STRONGROOM_") && k != "STRONGROOM_BENCH_TOKEN"),
    );
    let database = match database_url {
        Some(u) if u.starts_with("postgres") => {
            let db = ScratchDatabase::new(u, tag).await?;
            env.push(("STRONGROOM_DATABASE_URL".into(), db.url.clone()));
            Some(db)
        }
        Some(u) => {
            anyhow::bail!("--database-url takes a postgres:// URL (SQLite is the default), not {u}")
        }
        None => None,
    };
    let (config, resolved) = strongroom_server::Config::load(None, &env)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let prepared =
        strongroom_server::prepare_with(&config, &resolved, clock.clone(), no_audit).await?;
    let state = prepared.state.clone();
    let cert = prepared.info.tls_cert.clone();
    let listener = strongroom_server::bind(resolved.listen).await?;
    let base = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
    tokio::spawn(strongroom_server::serve(
        prepared,
        listener,
        std::future::pending(),
    ));
    let code = "BENCH".to_owned();
    new_company(&state.store, state.keys.provider(), &code).await?;
    // Detectors would (rightly) stop one client reading thousands of
    // records a second; the suite measures the checks, not the responses.
    let (company, _) = state
        .store
        .company_by_code(&code)
        .await?
        .context("company")?;
    for mut rule in strongroom_core::detect::default_rules() {
        rule.enabled = false;
        state.store.set_detector_rule(company.0, &rule).await?;
    }
    let pem = std::fs::read(&cert)?;
    let client = strongroom_client::Client::new(&base, Some(&pem))?;
    let (c, login) = client.login(&code, "master", PASSWORD).await?;
    let r = c
        .create_record(
            "customer",
            &strongroom_proto::CreateRecord {
                data: customer(0),
                department: None,
            },
        )
        .await?;
    Ok(Server {
        target: Target {
            base,
            cert,
            token: login.token,
            scratch: dir.path().to_owned(),
        },
        state,
        code,
        record: r.id,
        dir,
        database,
    })
}

/// A benchmark company with its master (password [`PASSWORD`]).
pub(crate) async fn new_company(
    store: &strongroom_store::Store,
    provider: &dyn strongroom_crypto::provider::KeyProvider,
    code: &str,
) -> anyhow::Result<()> {
    strongroom_server::init_company(
        store,
        provider,
        SystemClock.now(),
        strongroom_server::NewCompany {
            code,
            name: "Bench",
            admin: "master",
            admin_name: "Master",
            password: PASSWORD,
        },
    )
    .await?;
    Ok(())
}

fn customer(i: usize) -> RecordData {
    json!({
        "name": format!("Customer {i}"),
        "email": format!("c{i}@example.com"),
        "phone": "+84 24 3825 1234",
        "national_id": format!("0792{i:08}"),
        "card_number": "4539578763621486",
        "bank_account": format!("00710{i:08}"),
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

/// Adds customers `from..to` straight through the store and the sealing
/// code (as the API would store them, without an HTTP request each), and
/// appends their paths to `paths`.
async fn fill(s: &Server, from: usize, to: usize, paths: &Path) -> anyhow::Result<()> {
    let store = &s.state.store;
    let (company, _) = store.company_by_code(&s.code).await?.context("company")?;
    let mut out = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths)?,
    );
    insert_customers(store, &s.state.keys, company, &s.code, from..to, |id| {
        writeln!(out, "/api/v1/records/customer/{id}")
    })
    .await?;
    out.flush()?;
    store.analyze().await?;
    Ok(())
}

/// Seals and stores customers numbered `range` (owned by the company's
/// master), telling `each` every new record's id.
pub(crate) async fn insert_customers(
    store: &strongroom_store::Store,
    keys: &strongroom_server::keys::KeyRing,
    company: strongroom_core::CompanyId,
    code: &str,
    range: std::ops::Range<usize>,
    mut each: impl FnMut(&str) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let owner = store.user(company, "master").await?.context("master")?.key;
    let rt = store
        .record_type(company, "customer")
        .await?
        .context("customer type")?;
    let sealer = Sealer::new(keys, company, code, &rt.view)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    for i in range {
        let plain = apply_patch(&rt.view.fields, &RecordData::new(), &customer(i))?;
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
                SystemClock.now(),
            )
            .await?;
        each(&id)?;
    }
    Ok(())
}

/// One load: what the child load generator is told.
struct Load<'a> {
    method: &'a str,
    paths: Vec<String>,
    body: Option<String>,
    token: bool,
    conns: usize,
}

impl<'a> Load<'a> {
    fn get(path: impl Into<String>, conns: usize) -> Load<'a> {
        Load {
            method: "GET",
            paths: vec![path.into()],
            body: None,
            token: true,
            conns,
        }
    }
}

/// What a load measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// Runs the load generator in a child process and reads its result.
async fn drive(s: &Server, l: Load<'_>, secs: u64) -> anyhow::Result<Run> {
    drive_at(&s.target, l, secs).await
}

async fn drive_at(s: &Target, l: Load<'_>, secs: u64) -> anyhow::Result<Run> {
    let paths_file = s.scratch.join(format!("paths-{}", uuid::Uuid::new_v4()));
    std::fs::write(&paths_file, l.paths.join("\n"))?;
    drive_file(s, &l, &paths_file, secs).await
}

async fn drive_file(s: &Target, l: &Load<'_>, paths: &Path, secs: u64) -> anyhow::Result<Run> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("load")
        .arg("--base")
        .arg(&s.base)
        .arg("--cert")
        .arg(&s.cert)
        .arg("--conns")
        .arg(l.conns.to_string())
        .arg("--seconds")
        .arg(secs.to_string())
        .arg("--method")
        .arg(l.method)
        .arg("--paths")
        .arg(paths);
    if let Some(b) = &l.body {
        cmd.arg("--body").arg(b);
    }
    if l.token {
        // Through the environment, not the command line (which `ps` shows).
        cmd.env("STRONGROOM_BENCH_TOKEN", &s.token);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    anyhow::ensure!(
        out.status.success(),
        "load generator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let f = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    Ok(Run {
        rps: f("rps"),
        p50: Duration::from_micros(f("p50_us") as u64),
        p99: Duration::from_micros(f("p99_us") as u64),
    })
}

/// The child: `conns` workers, each with its own HTTP/1.1 connection (like
/// separate ERP front-end workers), for `secs` seconds; prints one JSON line.
pub fn load_main(
    base: String,
    cert: PathBuf,
    conns: usize,
    secs: u64,
    method: String,
    paths: PathBuf,
    body: Option<String>,
) -> anyhow::Result<()> {
    let token = std::env::var("STRONGROOM_BENCH_TOKEN").ok();
    let paths: Arc<Vec<String>> = Arc::new(
        std::fs::read_to_string(&paths)?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    );
    anyhow::ensure!(!paths.is_empty(), "no paths to request");
    let pem = std::fs::read(&cert)?;
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let lat = rt.block_on(async move {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for w in 0..conns {
            let http = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
                .http1_only()
                .build()?;
            let (paths, base, token, body, method) = (
                paths.clone(),
                base.clone(),
                token.clone(),
                body.clone(),
                method.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut k = w;
                while Instant::now() < end {
                    let url = format!("{base}{}", paths[k % paths.len()]);
                    k += conns;
                    let mut req = http.request(method.clone(), &url);
                    if let Some(t) = &token {
                        req = req.bearer_auth(t);
                    }
                    if let Some(b) = &body {
                        req = req
                            .header("content-type", "application/json")
                            .body(b.replace("{n}", &k.to_string()));
                    }
                    let t = Instant::now();
                    let r = req
                        .send()
                        .await
                        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
                    let status = r.status();
                    let bytes = r.bytes().await.unwrap_or_default();
                    anyhow::ensure!(
                        status.is_success(),
                        "{url}: {status}: {}",
                        String::from_utf8_lossy(&bytes)
                    );
                    lat.push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(lat)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    let mut all = lat;
    all.sort();
    println!(
        "{}",
        json!({
            "n": all.len(),
            "rps": all.len() as f64 / secs as f64,
            "p50_us": percentile(&all, 0.50).as_micros() as u64,
            "p99_us": percentile(&all, 0.99).as_micros() as u64,
        })
    );
    Ok(())
}

/// The `p` quantile (0 to 1) of durations sorted in ascending order; zero
/// when there are none.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// The process's resident set size and its peak, in MB.
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// Raw Argon2id: password verifications per second on every core, with
/// the parameters the server hashes with, each thread keeping its working
/// memory from one to the next (as the server's hashing threads do while
/// sign-ins keep coming).
fn argon2_rate(secs: u64) -> anyhow::Result<f64> {
    use strongroom_crypto::password::{HashParams, PasswordHasher, WorkMemory};
    let hasher = Arc::new(PasswordHasher::new(HashParams::default())?);
    let stored = hasher.hash(FLOOD_PASSWORD)?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let end = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let (h, s) = (hasher.clone(), stored.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                let mut work = WorkMemory::default();
                while Instant::now() < end {
                    if h.verify_in(&mut work, FLOOD_PASSWORD, Some(&s)) {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let mut n = 0;
    for t in threads {
        n += t.join().unwrap_or(0);
    }
    Ok(n as f64 / secs as f64)
}

/// Commits timed by [`commit_floor`].
const COMMIT_FLOOR_COMMITS: usize = 2000;

/// The least a request waiting for its own durable commit waits: `n`
/// one-row updates, each committed durably on its own, one after the other,
/// on the server's kind of store: an SQLite file beside the server's (WAL,
/// `synchronous = FULL`, as the server's writers), or a table in the
/// server's PostgreSQL database (over the same driver and TLS).
async fn commit_floor(s: &Server, n: usize) -> anyhow::Result<Run> {
    let mut times = match &s.database {
        Some(db) => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&db.url).await?;
            sqlx::raw_sql(
                "CREATE TABLE bench_commit_floor (n BIGINT NOT NULL); \
                 INSERT INTO bench_commit_floor VALUES (0)",
            )
            .execute(&mut conn)
            .await?;
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                sqlx::query("UPDATE bench_commit_floor SET n = n + 1")
                    .execute(&mut conn)
                    .await?;
                times.push(t.elapsed());
            }
            sqlx::raw_sql("DROP TABLE bench_commit_floor")
                .execute(&mut conn)
                .await?;
            conn.close().await?;
            times
        }
        None => {
            let file = s.dir.path().join("commit-floor.db");
            tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Duration>> {
                let conn = rusqlite::Connection::open(&file)?;
                conn.execute_batch(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                     CREATE TABLE floor (n INTEGER NOT NULL); INSERT INTO floor VALUES (0);",
                )?;
                let mut update = conn.prepare("UPDATE floor SET n = n + 1")?;
                let mut times = Vec::with_capacity(n);
                for _ in 0..n {
                    let t = Instant::now();
                    update.execute([])?;
                    times.push(t.elapsed());
                }
                drop(update);
                drop(conn);
                std::fs::remove_file(&file)?;
                Ok(times)
            })
            .await??
        }
    };
    times.sort_unstable();
    let total: Duration = times.iter().sum();
    Ok(Run {
        rps: n as f64 / total.as_secs_f64(),
        p50: percentile(&times, 0.50),
        p99: percentile(&times, 0.99),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A results table, printed as Markdown.
struct Table;

impl Table {
    fn new(title: &str) -> Table {
        println!("\n### {title}\n");
        println!("| what | conns | req/s | p50 ms | p99 ms | ratio | goal |");
        println!("|---|---:|---:|---:|---:|---|---|");
        Table
    }

    fn row(&mut self, what: &str, conns: usize, r: Run, ratio: &str, goal: &str) {
        println!(
            "| {what} | {conns} | {:.0} | {:.2} | {:.2} | {ratio} | {goal} |",
            r.rps,
            ms(r.p50),
            ms(r.p99)
        );
    }
}

fn verdict(ok: bool, text: String) -> String {
    format!("{} {text}", if ok { "met:" } else { "NOT met:" })
}

/// Section 5 of the suite on its own, over a chain of `events` events.
pub async fn chain(events: usize, database_url: Option<&str>, again: usize) -> anyhow::Result<()> {
    let s = start(false, database_url, "chain").await?;
    let ran = chain_on(&s, events, again).await;
    s.drop_database().await?;
    ran
}

async fn chain_on(s: &Server, events: usize, again: usize) -> anyhow::Result<()> {
    let (company, _) = s
        .state
        .store
        .company_by_code(&s.code)
        .await?
        .context("company")?;
    let now = SystemClock.now();
    let mut written = 0;
    while written < events {
        let n = (events - written).min(100);
        let batch = (written..written + n)
            .map(|i| strongroom_core::audit::AuditEvent {
                detail: json!({"returned": ["email", "name", "national_id"],
                    "masked": ["national_id"], "revealed": [], "withheld": []})
                .to_string(),
                session: Some("0123456789abcdef".into()),
                client_ip: Some("127.0.0.1".into()),
                user_agent: Some("strongroom-bench".into()),
                request_id: Some(format!("req-{i}")),
                ..strongroom_core::audit::AuditEvent::new(
                    company.0,
                    now,
                    "user:master",
                    "record.read",
                    format!("customer/{i:08}-0000-4000-8000-000000000000"),
                )
            })
            .collect();
        s.state
            .audit
            .write(batch)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        written += n;
    }
    crate::chain_verify(&s.state, &s.code).await?;
    if again > 0 {
        eprintln!(
            "pid {} ready; verifying {again} times more",
            std::process::id()
        );
        println!();
        for _ in 0..again {
            let start = std::time::Instant::now();
            let v = strongroom_server::audit::verify(
                &s.state.store,
                &s.state.keys,
                company.0,
                true,
                None,
            )
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
            anyhow::ensure!(v.problem.is_none(), "chain did not verify: {:?}", v.problem);
            println!(
                "again: {:.0} events/s",
                v.events as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Starts a server, fills it with 1000 customers, then runs one of the
/// suite's loads for `secs` seconds and prints what it measured; drops its
/// PostgreSQL database at the end, whether the load ran or failed.
pub async fn profile(
    load: &str,
    secs: u64,
    conns: usize,
    database_url: Option<&str>,
) -> anyhow::Result<()> {
    let s = start(load == "read-unaudited", database_url, "profile").await?;
    let ran = profile_on(&s, load, secs, conns).await;
    s.drop_database().await?;
    ran
}

async fn profile_on(s: &Server, load: &str, secs: u64, conns: usize) -> anyhow::Result<()> {
    let paths = s.dir.path().join("records.txt");
    fill(s, 0, 1000, &paths).await?;
    let some: Vec<String> = std::fs::read_to_string(&paths)?
        .lines()
        .take(conns)
        .map(str::to_owned)
        .collect();
    if load == "flood" {
        // Section 4's second half alone: reads, then reads beside a flood
        // of sign-ins on the same server.
        let read = || Load::get(format!("/api/v1/records/customer/{}", s.record), conns);
        let flood = sign_in_load(s, 8).await?;
        eprintln!(
            "pid {} ready; reads for {secs} s, then reads beside a sign-in flood",
            std::process::id()
        );
        let quiet = drive(s, read(), secs).await?;
        let target = s.target.clone();
        let (flood_paths, flood_body) = (flood.paths.clone(), flood.body.clone());
        let signing = tokio::spawn(async move {
            let l = Load {
                method: "POST",
                paths: flood_paths,
                body: flood_body,
                token: false,
                conns: 8,
            };
            drive_at(&target, l, secs + 1).await
        });
        let during = drive(s, read(), secs).await?;
        let signed = signing.await??;
        for (what, r) in [("reads alone", quiet), ("reads in the flood", during)] {
            println!(
                "{what}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
                r.rps,
                ms(r.p50),
                ms(r.p99)
            );
        }
        println!(
            "sign-ins: {:.0}/s; reads' p99 in the flood = {:.2}× alone",
            signed.rps,
            during.p99.as_secs_f64() / quiet.p99.as_secs_f64()
        );
        return Ok(());
    }
    let l = match load {
        "read" | "read-unaudited" => {
            Load::get(format!("/api/v1/records/customer/{}", s.record), conns)
        }
        "livez" => Load::get("/livez", conns),
        "list" => Load::get("/api/v1/records/customer?limit=50", conns),
        "create" => Load {
            method: "POST",
            paths: vec!["/api/v1/records/customer".into()],
            body: Some(create_body()),
            token: true,
            conns,
        },
        "update" => Load {
            method: "PATCH",
            paths: some,
            body: Some(json!({"data": {"name": "Renamed {n}"}}).to_string()),
            token: true,
            conns,
        },
        "signin" => sign_in_load(s, conns.min(8)).await?,
        other => anyhow::bail!(
            "unknown load '{other}': read, read-unaudited, create, update, list, signin, flood or livez"
        ),
    };
    eprintln!(
        "pid {} ready; driving '{load}' for {secs} s",
        std::process::id()
    );
    let r = drive(s, l, secs).await?;
    println!(
        "{load}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
        r.rps,
        ms(r.p50),
        ms(r.p99)
    );
    if load == "signin" {
        let raw = tokio::task::spawn_blocking(move || argon2_rate(secs)).await??;
        println!(
            "raw Argon2id on every core: {raw:.1}/s; sign-ins = {:.2} of raw",
            r.rps / raw
        );
    }
    Ok(())
}

/// Makes the user "flood" and returns a load that signs it in over and
/// over (the password checked in full each time).
async fn sign_in_load(s: &Server, conns: usize) -> anyhow::Result<Load<'_>> {
    let pem = std::fs::read(&s.target.cert)?;
    let client = strongroom_client::Client::new(&s.target.base, Some(&pem))?;
    let (master, _) = client.login(&s.code, "master", PASSWORD).await?;
    master
        .create_user(&strongroom_proto::CreateUser {
            user_id: "flood".into(),
            display_name: "Flood".into(),
            email: None,
            department: None,
            password: FLOOD_PASSWORD.into(),
            is_admin: false,
            clearance: strongroom_proto::Classification::Internal,
            roles: vec!["records_full".into()],
        })
        .await?;
    Ok(Load {
        method: "POST",
        paths: vec!["/api/v1/auth/login".into()],
        body: Some(
            json!({"company": s.code, "user": "flood", "password": FLOOD_PASSWORD}).to_string(),
        ),
        token: false,
        conns,
    })
}

/// The body of the create load (`{n}` numbered by the load generator).
fn create_body() -> String {
    json!({"data": {"name": "New {n}", "email": "new{n}@example.com",
        "national_id": "079299000000", "card_number": "4539578763621486",
        "bank_account": "0071000000000"}})
    .to_string()
}

pub async fn run(a: SuiteArgs) -> anyhow::Result<()> {
    let secs = a.seconds;
    let backend = if a.database_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!("## Strongroom benchmark suite: {backend}");
    println!();
    println!(
        "Server (the `serve` stack: TLS, router, middleware, store) in the bench process; load generator in a child process on the same machine; {secs} s per measurement; one run."
    );
    let (idle_rss, _) = rss_mb();
    let on = start(false, a.database_url.as_deref(), "on").await?;
    let off = start(true, a.database_url.as_deref(), "off").await?;
    let measured = measure(&a, &on, &off, idle_rss).await;
    // The databases go whether the suite ran through or failed.
    on.drop_database().await?;
    off.drop_database().await?;
    measured
}

/// The suite's sections, over a server with auditing (`on`) and one
/// without (`off`); `idle_rss` is the process's size before they started.
async fn measure(a: &SuiteArgs, on: &Server, off: &Server, idle_rss: f64) -> anyhow::Result<()> {
    let secs = a.seconds;
    // Idle: a hashing thread keeps Argon2's 19 MiB for half a second after
    // the last sign-in (the master's, in `start`), then gives it back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (two_idle, _) = rss_mb();
    let paths = on.dir.path().join("records.txt");
    fill(on, 0, a.records, &paths).await?;
    let read = format!("/api/v1/records/customer/{}", on.record);

    // 1. Reads.
    let mut t = Table::new("1. Authenticated, authorised read of one record with three encrypted fields, audit event durably stored");
    let mut bare32 = Run::default();
    for conns in [1usize, 32] {
        let bare = drive(on, Load::get("/livez", conns), secs).await?;
        let masked = drive(on, Load::get(read.clone(), conns), secs).await?;
        let revealed = drive(on, Load::get(format!("{read}?reveal=all"), conns), secs).await?;
        let unaudited = drive(
            off,
            Load::get(format!("/api/v1/records/customer/{}", off.record), conns),
            secs,
        )
        .await?;
        t.row(
            "bare `/livez` (same TLS, router, middleware)",
            conns,
            bare,
            "1.00",
            "",
        );
        let goal = if conns == 32 {
            verdict(
                masked.rps / bare.rps >= 0.35 && masked.p99 < Duration::from_millis(10),
                "≥ 0.35 of bare, p99 < 10 ms".into(),
            )
        } else {
            String::new()
        };
        t.row(
            "read, masked, audited",
            conns,
            masked,
            &format!("{:.2} of bare", masked.rps / bare.rps),
            &goal,
        );
        t.row(
            "read, revealed (`?reveal=all`), audited",
            conns,
            revealed,
            &format!("{:.2} of bare", revealed.rps / bare.rps),
            "",
        );
        t.row(
            "read, masked, auditing off (bench build only)",
            conns,
            unaudited,
            &format!("audited = {:.2} of this", masked.rps / unaudited.rps),
            &verdict(
                masked.rps / unaudited.rps >= 0.6,
                "audited ≥ 0.6 of this".into(),
            ),
        );
        if conns == 1 {
            let floor = commit_floor(on, COMMIT_FLOOR_COMMITS).await?;
            // One connection waits for every step of its read in turn: an
            // audited read takes at least the unaudited one's time and one
            // durable commit's.
            let (read_s, commit_s) = (1.0 / unaudited.rps, 1.0 / floor.rps);
            t.row(
                "one durable commit of the store alone, one after the other (each audited read waits for one)",
                conns,
                floor,
                &format!(
                    "audited ≤ {:.2} of unaudited at best",
                    read_s / (read_s + commit_s)
                ),
                "",
            );
        }
        if conns == 32 {
            bare32 = bare;
        }
    }
    let quiet = drive(on, Load::get(read.clone(), 32), secs).await?;
    let (_, load_peak) = rss_mb();

    // 2. Writes.
    let mut t = Table::new(
        "2. Record create and update, each with its audit event in the same transaction",
    );
    let create = drive(
        on,
        Load {
            method: "POST",
            paths: vec!["/api/v1/records/customer".into()],
            body: Some(create_body()),
            token: true,
            conns: 32,
        },
        secs,
    )
    .await?;
    t.row("bare `/livez`", 32, bare32, "1.00", "");
    t.row(
        "create (3 fields encrypted, blind indexes, version, audit)",
        32,
        create,
        &format!("{:.2} of bare", create.rps / bare32.rps),
        &verdict(create.rps / bare32.rps >= 0.2, "≥ 0.2 of bare".into()),
    );
    // One record per connection: two updates of one record at once are
    // (rightly) refused with version_conflict.
    let some: Vec<String> = std::fs::read_to_string(&paths)?
        .lines()
        .take(32)
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(
        some.len() == 32,
        "the update test needs --records 32 or more"
    );
    let update = drive(
        on,
        Load {
            method: "PATCH",
            paths: some,
            body: Some(json!({"data": {"name": "Renamed {n}"}}).to_string()),
            token: true,
            conns: 32,
        },
        secs,
    )
    .await?;
    t.row(
        "update (merge patch, new version, audit)",
        32,
        update,
        &format!("{:.2} of bare", update.rps / bare32.rps),
        "",
    );

    // 3. Lists and searches.
    let mut t = Table::new(&format!(
        "3. List and exact search among {} customers",
        a.records
    ));
    let list = drive(on, Load::get("/api/v1/records/customer?limit=50", 32), secs).await?;
    let pick: Vec<usize> = (0..256).map(|i| (i * 7919) % a.records.max(1)).collect();
    let search = |query: fn(usize) -> String| Load {
        paths: pick
            .iter()
            .map(|&i| format!("/api/v1/records/customer?{}", query(i)))
            .collect(),
        ..Load::get("", 32)
    };
    let plain = drive(on, search(|i| format!("f.email=c{i}@example.com")), secs).await?;
    let blind = drive(on, search(|i| format!("f.national_id=0792{i:08}")), secs).await?;
    t.row(
        "list, 50 records a page, masked, audited",
        32,
        list,
        &format!("{:.2} of bare", list.rps / bare32.rps),
        "",
    );
    t.row(
        "search on a plaintext indexed field (`f.email`)",
        32,
        plain,
        "1.00",
        "",
    );
    t.row(
        "search on an encrypted field by blind index (`f.national_id`)",
        32,
        blind,
        &format!("{:.2} of plaintext", blind.rps / plain.rps),
        &verdict(blind.rps / plain.rps >= 0.8, "≥ 0.8 of plaintext".into()),
    );

    // 4. Sign-in.
    let login = sign_in_load(on, 8).await?;
    let raw = tokio::task::spawn_blocking(move || argon2_rate(secs)).await??;
    let signins = drive(on, login, secs).await?;
    let mut t = Table::new("4. Sign-in (Argon2id, default parameters)");
    println!(
        "| raw Argon2id verifications on every core, same parameters | | {raw:.1} | | | 1.00 | |"
    );
    t.row(
        "sign-in (password, lockout and policy checks, session, audit)",
        8,
        signins,
        &format!("{:.2} of raw", signins.rps / raw),
        &verdict(signins.rps / raw >= 0.9, "≥ 0.9 of raw".into()),
    );
    // Reads while a flood of sign-ins runs alongside.
    let flood = {
        let target = on.target.clone();
        let body =
            json!({"company": on.code, "user": "flood", "password": FLOOD_PASSWORD}).to_string();
        tokio::spawn(async move {
            let l = Load {
                method: "POST",
                paths: vec!["/api/v1/auth/login".into()],
                body: Some(body),
                token: false,
                conns: 8,
            };
            drive_at(&target, l, secs + 1).await
        })
    };
    let during = drive(on, Load::get(read.clone(), 32), secs).await?;
    let _ = flood.await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (after_flood, _) = rss_mb();
    t.row("read without sign-ins", 32, quiet, "1.00", "");
    t.row(
        "read during a sign-in flood (8 connections)",
        32,
        during,
        &format!(
            "p99 {:.2}× the p99 without",
            during.p99.as_secs_f64() / quiet.p99.as_secs_f64()
        ),
        &verdict(
            during.p99.as_secs_f64() <= 2.0 * quiet.p99.as_secs_f64(),
            "≤ 2× without".into(),
        ),
    );

    // 5. Audit-chain verification.
    crate::chain_verify(&on.state, &on.code).await?;

    // 7. Scale.
    // Every record of the data set, in turn, from 32 connections.
    let random_reads = || async {
        let all = Load {
            paths: Vec::new(),
            ..Load::get("", 32)
        };
        drive_file(&on.target, &all, &paths, secs).await
    };
    let small = random_reads().await?;
    let t0 = Instant::now();
    fill(on, a.records, a.scale_records, &paths).await?;
    let fill_s = t0.elapsed().as_secs_f64();
    let big = random_reads().await?;
    let (with_big, peak) = rss_mb();
    let mut t = Table::new(&format!(
        "7. Scale: reads of random records, {} vs {} customers (the larger set loaded in {fill_s:.0} s)",
        a.records, a.scale_records
    ));
    t.row(&format!("{} customers", a.records), 32, small, "1.00", "");
    t.row(
        &format!("{} customers", a.scale_records),
        32,
        big,
        &format!("{:.2} of the small set", big.rps / small.rps),
        &verdict(big.rps / small.rps >= 0.8, "≥ 0.8".into()),
    );

    // 6. Memory.
    println!("\n### 6. Memory (resident set of the bench process, which holds the servers; the load generator runs apart)\n");
    println!("| when | RSS MB | goal |");
    println!("|---|---:|---|");
    println!("| before the servers start | {idle_rss:.1} | |");
    println!(
        "| two servers started, idle (both; one server in its process ≈ {:.1} MB) | {two_idle:.1} | {} |",
        (two_idle - idle_rss) / 2.0 + idle_rss,
        verdict(
            (two_idle - idle_rss) / 2.0 + idle_rss < 40.0,
            "one server < 40 MB idle".into()
        )
    );
    println!(
        "| peak under the read loads | {load_peak:.1} | {} |",
        verdict(load_peak < 150.0, "< 150 MB under load".into())
    );
    println!("| idle again, 1 s after the sign-in flood | {after_flood:.1} | |");
    println!(
        "| after loading and reading {} customers (peak {peak:.1}) | {with_big:.1} | |",
        a.scale_records
    );
    Ok(())
}
