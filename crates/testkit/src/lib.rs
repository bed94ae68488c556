//! Starts the real server on port 0 over a fresh database, for tests.
//!
//! The backend is chosen by `STRONGROOM_TEST_DATABASE`: `sqlite` (default)
//! or `postgres`. For PostgreSQL, `STRONGROOM_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) names a server where each test
//! server gets a database of its own, dropped afterwards. A PostgreSQL run
//! that cannot reach its server fails; it never falls back to SQLite.

#![allow(clippy::expect_used, clippy::panic)] // a test harness fails by panicking

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::Connection;
use strongroom_client::{Client, LoginStep};
use strongroom_core::clock::{Clock, ManualClock};
use strongroom_proto::SecondFactorAnswer;
use strongroom_server::config::Config;
use strongroom_server::state::AppState;
use strongroom_store::Store;
use tokio::sync::oneshot;

pub use strongroom_client as client;

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A request for an account with the standard test password that works
/// with every record of its company (role `records_full`, level
/// `restricted`, so protected fields come masked); administrators also
/// hold `reveal`. Tests of access control build their own.
pub fn new_user(user_id: &str, is_admin: bool) -> strongroom_proto::CreateUser {
    let mut roles = vec!["records_full".to_owned()];
    if is_admin {
        roles.push("reveal".into());
    }
    strongroom_proto::CreateUser {
        user_id: user_id.into(),
        display_name: format!("User {user_id}"),
        email: None,
        department: None,
        password: PASSWORD.into(),
        is_admin,
        clearance: strongroom_proto::Classification::Restricted,
        roles,
    }
}

/// Creates a record from JSON field values (no department), or panics.
pub async fn add_record(
    c: &Client,
    record_type: &str,
    data: serde_json::Value,
) -> strongroom_proto::RecordView {
    c.create_record(
        record_type,
        &strongroom_proto::CreateRecord {
            data: data.as_object().cloned().unwrap_or_default(),
            department: None,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("creating a {record_type} failed: {e}"))
}

/// The password every helper-made account gets.
pub const PASSWORD: &str = "plum orchard violin tram";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn backend() -> Backend {
    match std::env::var("STRONGROOM_TEST_DATABASE").as_deref() {
        Ok("postgres") => Backend::Postgres,
        Ok("sqlite") | Err(_) => Backend::Sqlite,
        Ok(other) => panic!("STRONGROOM_TEST_DATABASE must be sqlite or postgres, not {other}"),
    }
}

/// Extra settings for one test server, as `STRONGROOM_*` variables would
/// give them (e.g. `("TRUSTED_PROXIES", "127.0.0.1")`).
#[derive(Debug, Default, Clone)]
pub struct Options {
    pub env: Vec<(String, String)>,
}

impl Options {
    /// Settings from `(KEY, value)` pairs, e.g. `[("TRUSTED_PROXIES", "127.0.0.1")]`.
    pub fn with(pairs: &[(&str, &str)]) -> Options {
        Options {
            env: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

/// Sends a JSON body with any method, for tests that look at the raw
/// answer; panics only when the request cannot be made at all.
pub async fn send_json(
    c: &Client,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> strongroom_client::RawResponse {
    c.raw(
        method,
        path,
        Some("application/json"),
        serde_json::to_vec(&body).unwrap_or_default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub struct TestServer {
    /// The configuration the server was started with, as environment pairs.
    pub env: Vec<(String, String)>,
    pub base_url: String,
    pub clock: ManualClock,
    pub cert_pem: Vec<u8>,
    pub state: AppState,
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    /// The serving task: done once the server has shut down.
    serving: Option<tokio::task::JoinHandle<()>>,
    pg: Option<PgDatabase>,
    factors: std::sync::Mutex<std::collections::HashMap<(String, String), KnownFactor>>,
}

/// A second factor the test server enrolled, for later sign-ins.
struct KnownFactor {
    secret: Vec<u8>,
    recovery: Vec<String>,
    last_step: i64,
}

struct PgDatabase {
    admin_url: String,
    name: String,
}

static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends every server log line (at debug level) of this test process to a
/// buffer, so tests can check what the log holds.
fn init_log_capture() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,sqlx=debug,hyper=info,h2=info,rustls=info",
            ))
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .try_init();
    });
}

/// Everything the servers of this test process have logged so far.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// A fixed, known start time, so tests can reason about hours and days.
pub fn start_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_261_600, 0).expect("valid time") // 2026-01-01 10:00 UTC
}

fn unique_suffix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}_{}_{:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// Replaces the database name in a PostgreSQL URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> TestServer {
        let backend = backend();
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let key_dir = dir.path().join("keys");
        let mut pg = None;
        let database_url = match backend {
            Backend::Sqlite => data_dir
                .join("strongroom.db")
                .to_string_lossy()
                .into_owned(),
            Backend::Postgres => {
                let admin_url = std::env::var("STRONGROOM_TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
                let name = format!("sr_t_{}", unique_suffix());
                let mut conn = sqlx::PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
                    panic!("PostgreSQL test run, but cannot connect to STRONGROOM_TEST_POSTGRES_URL: {e}")
                });
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let _ = conn.close().await;
                let url = with_database(&admin_url, &name);
                pg = Some(PgDatabase { admin_url, name });
                url
            }
        };
        let mut env: Vec<(String, String)> = vec![
            ("STRONGROOM_LISTEN".into(), "127.0.0.1:0".into()),
            (
                "STRONGROOM_DATA_DIR".into(),
                data_dir.to_string_lossy().into(),
            ),
            (
                "STRONGROOM_KEY_DIR".into(),
                key_dir.to_string_lossy().into(),
            ),
            ("STRONGROOM_DATABASE_URL".into(), database_url),
            ("STRONGROOM_DB_MAX_CONNECTIONS".into(), "4".into()),
        ];
        for (k, v) in opts.env {
            env.push((format!("STRONGROOM_{k}"), v));
        }
        init_log_capture();
        let (config, resolved) = Config::load(None, &env).expect("test configuration");
        let clock = ManualClock::new(start_time());
        let prepared = strongroom_server::prepare(&config, &resolved, Arc::new(clock.clone()))
            .await
            .expect("server prepares");
        let state = prepared.state.clone();
        let cert_pem = std::fs::read(&prepared.info.tls_cert).expect("generated certificate");
        let listener = strongroom_server::bind(resolved.listen)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            let _ = strongroom_server::serve(prepared, listener, async {
                let _ = rx.await;
            })
            .await;
        });
        TestServer {
            env,
            base_url: format!("https://127.0.0.1:{}", addr.port()),
            clock,
            cert_pem,
            state,
            backend,
            dir,
            shutdown: Some(tx),
            serving: Some(serving),
            pg,
            factors: Default::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// Shuts the server down as a signal would, waits until it has, and
    /// opens the database again: the server's own store is closed by then.
    pub async fn stop(&mut self) -> Store {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(serving) = self.serving.take() {
            serving.await.expect("the server stops");
        }
        self.open_store().await
    }

    /// The server's database opened once more, as a second node (or a
    /// command run beside the server) opens it.
    pub async fn open_store(&self) -> Store {
        let url = self
            .env
            .iter()
            .find(|(k, _)| k == "STRONGROOM_DATABASE_URL")
            .map(|(_, v)| v.clone())
            .expect("a database URL");
        Store::connect(&url, strongroom_store::StoreOptions::default())
            .await
            .expect("the database opens again")
    }

    /// The server's configuration, re-read from [`TestServer::env`].
    pub fn config(&self) -> (Config, strongroom_server::Resolved) {
        Config::load(None, &self.env).expect("test configuration")
    }

    /// Every stored byte a thief could take: the SQLite files (database and
    /// write-ahead log) or, on PostgreSQL, every row of every table as text.
    pub async fn raw_storage(&self) -> Vec<u8> {
        match self.backend {
            Backend::Sqlite => {
                let mut out = Vec::new();
                let dir = self.dir.path().join("data");
                for entry in std::fs::read_dir(&dir).expect("data dir") {
                    let p = entry.expect("entry").path();
                    if p.is_file() {
                        out.extend(std::fs::read(&p).expect("read data file"));
                    }
                }
                out
            }
            Backend::Postgres => {
                use sqlx::Row;
                let pool = self.store().raw_pool();
                let tables = sqlx::query(
                    "SELECT CAST(tablename AS TEXT) AS tablename FROM pg_tables WHERE schemaname = 'public'",
                )
                .fetch_all(pool)
                .await
                .expect("list tables");
                let mut out = Vec::new();
                for t in tables {
                    let name: String = t.try_get("tablename").expect("name");
                    let rows = sqlx::query(&format!(
                        "SELECT CAST(row_to_json(x) AS TEXT) AS j FROM {name} x"
                    ))
                    .fetch_all(pool)
                    .await
                    .expect("dump table");
                    for r in rows {
                        let j: String = r.try_get("j").expect("row text");
                        out.extend(j.into_bytes());
                        out.push(b'\n');
                    }
                }
                out
            }
        }
    }

    /// Every audit event of a company, oldest first.
    pub async fn audit_events(&self, company: &str) -> Vec<strongroom_core::audit::AuditEvent> {
        let chain = match self
            .store()
            .company_by_code(company)
            .await
            .expect("company lookup")
        {
            Some((id, _)) => id.0,
            None => strongroom_core::audit::SERVER_CHAIN,
        };
        self.chain_events(chain).await
    }

    /// The newest event of a company with this action.
    pub async fn last_event(
        &self,
        company: &str,
        action: &str,
    ) -> strongroom_core::audit::AuditEvent {
        self.audit_events(company)
            .await
            .into_iter()
            .rev()
            .find(|e| e.action == action)
            .unwrap_or_else(|| panic!("no {action} event for {company}"))
    }

    /// Every event of one chain, oldest first.
    pub async fn chain_events(&self, chain: i64) -> Vec<strongroom_core::audit::AuditEvent> {
        self.stored_chain_events(chain)
            .await
            .into_iter()
            .map(|e| e.event)
            .collect()
    }

    /// Every event of one chain as stored (with its place and hashes),
    /// read through the API's reader, oldest first.
    pub async fn stored_chain_events(&self, chain: i64) -> Vec<strongroom_store::StoredEvent> {
        self.store()
            .audit_events(
                chain,
                &strongroom_store::AuditQuery {
                    limit: 1_000_000,
                    ..Default::default()
                },
            )
            .await
            .expect("read audit log")
    }

    /// Runs raw SQL against the server's database (for tampering tests).
    pub async fn raw_sql(&self, sql: &str) -> u64 {
        sqlx::query(sql)
            .execute(self.store().raw_pool())
            .await
            .unwrap_or_else(|e| panic!("raw SQL failed: {e}: {sql}"))
            .rows_affected()
    }

    /// A client with no session, trusting this server's certificate.
    pub fn client(&self) -> Client {
        Client::new(&self.base_url, Some(&self.cert_pem)).expect("client")
    }

    /// The id of company `code`, which must exist (it is also the id of
    /// its audit chain).
    pub async fn company_id(&self, code: &str) -> strongroom_core::CompanyId {
        self.store()
            .company_by_code(code)
            .await
            .expect("company lookup")
            .unwrap_or_else(|| panic!("no company {code}"))
            .0
    }

    /// Creates a company with master account `master` (password [`PASSWORD`]).
    pub async fn company(&self, code: &str) {
        strongroom_server::init_company(
            self.store(),
            self.state.keys.provider(),
            self.clock.now(),
            strongroom_server::NewCompany {
                code,
                name: &format!("{code} Ltd"),
                admin: "master",
                admin_name: "Master",
                password: PASSWORD,
            },
        )
        .await
        .expect("create company");
    }

    /// Signs in and returns a client carrying the session.
    ///
    /// When a second factor applies, it is answered with the authenticator
    /// app this test server enrolled for the user (or one of its recovery
    /// codes when the current code was already used); when the company
    /// requires one that the user lacks, one is enrolled.
    pub async fn sign_in(&self, company: &str, user: &str) -> Client {
        let step = self
            .client()
            .begin_login(company, user, PASSWORD)
            .await
            .unwrap_or_else(|e| panic!("sign-in of {company}/{user} failed: {e}"));
        match step {
            LoginStep::SignedIn(c, r) => {
                if r.restriction.as_deref() == Some("enrol_second_factor") {
                    self.enrol_totp(company, user, &c).await;
                }
                c
            }
            LoginStep::SecondFactor(ch) => {
                let answer = self.second_factor_answer(company, user, &ch.challenge);
                self.client()
                    .second_factor(&answer)
                    .await
                    .unwrap_or_else(|e| panic!("second factor of {company}/{user} failed: {e}"))
                    .0
            }
        }
    }

    /// Enrols an authenticator app for the signed-in user of `c`; the test
    /// server keeps its secret and recovery codes for later sign-ins.
    pub async fn enrol_totp(&self, company: &str, user: &str, c: &Client) -> Vec<u8> {
        let e = c.totp_begin().await.unwrap_or_else(|e| panic!("{e}"));
        let secret = strongroom_crypto::totp::base32_decode(&e.secret).unwrap_or_default();
        let now = self.clock.now().timestamp();
        let code = strongroom_crypto::totp::code_at(&secret, now).unwrap_or_default();
        let codes = c
            .totp_confirm(&code)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.factors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (company.to_owned(), user.to_owned()),
                KnownFactor {
                    secret: secret.clone(),
                    recovery: codes.codes,
                    last_step: now / 30,
                },
            );
        secret
    }

    /// An answer to a second-factor challenge for a user enrolled by
    /// [`TestServer::enrol_totp`].
    pub fn second_factor_answer(
        &self,
        company: &str,
        user: &str,
        challenge: &str,
    ) -> SecondFactorAnswer {
        let mut all = self.factors.lock().unwrap_or_else(|e| e.into_inner());
        let f = all
            .get_mut(&(company.to_owned(), user.to_owned()))
            .unwrap_or_else(|| panic!("no second factor of {company}/{user} is known"));
        let now = self.clock.now().timestamp();
        let mut answer = SecondFactorAnswer {
            challenge: challenge.to_owned(),
            code: None,
            recovery_code: None,
            passkey: None,
        };
        if now / 30 > f.last_step {
            f.last_step = now / 30;
            answer.code = strongroom_crypto::totp::code_at(&f.secret, now).ok();
        } else {
            answer.recovery_code = f.recovery.pop();
        }
        answer
    }

    /// Creates a company and returns its master's signed-in client.
    pub async fn company_master(&self, code: &str) -> Client {
        self.company(code).await;
        self.sign_in(code, "master").await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(pg) = self.pg.take() {
            drop_database(pg);
        }
    }
}

/// Drops a test database. Runs on its own thread and runtime: Drop cannot
/// await, and the test's runtime may already be shutting down.
fn drop_database(pg: PgDatabase) {
    let handle = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&pg.admin_url).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", pg.name))
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
            }
        });
    });
    let _ = handle.join();
}

/// An empty PostgreSQL database of its own, dropped with this value (for
/// tests that move data between backends).
pub struct ScratchPostgres {
    pub url: String,
    db: Option<PgDatabase>,
}

impl ScratchPostgres {
    pub async fn new() -> ScratchPostgres {
        let admin_url = std::env::var("STRONGROOM_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
        let name = format!("sr_t_{}", unique_suffix());
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL for a scratch database: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create scratch database");
        let _ = conn.close().await;
        ScratchPostgres {
            url: with_database(&admin_url, &name),
            db: Some(PgDatabase { admin_url, name }),
        }
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        if let Some(pg) = self.db.take() {
            drop_database(pg);
        }
    }
}

/// A small tmpfs mounted on `dir` (unmounted when dropped), standing in
/// for a full disk. Needs the right to mount: without it the test is
/// skipped, unless STRONGROOM_REQUIRE_MOUNT is set (as `.ci/run` does).
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(dir: &std::path::Path, bytes: u64) -> Option<Tmpfs> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes}"))
            .arg("tmpfs")
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            if std::env::var_os("STRONGROOM_REQUIRE_MOUNT").is_some() {
                panic!(
                    "cannot mount a tmpfs on {} (STRONGROOM_REQUIRE_MOUNT is set)",
                    dir.display()
                );
            }
            eprintln!("skipped: mounting a tmpfs (a full disk) needs root");
            return None;
        }
        Some(Tmpfs(dir.to_owned()))
    }

    pub fn resize(&self, bytes: u64) {
        let ok = std::process::Command::new("mount")
            .args(["-o"])
            .arg(format!("remount,size={bytes}"))
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot resize the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
