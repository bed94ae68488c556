//! The Strongroom server: configuration, start-up checks, the HTTPS
//! listener and the HTTP API.

pub mod access;
pub mod admin;
pub mod api_keys;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod config;
pub mod detection;
pub mod error;
pub mod extract;
pub mod forward;
pub mod hours;
pub mod ip_rules;
pub mod keys;
pub mod limits;
pub mod lockout;
pub mod metrics;
pub mod passkeys;
pub mod passwords;
pub mod policy_cache;
pub mod records;
pub mod reencrypt;
pub mod sealing;
pub mod second_factor;
pub mod security;
pub mod session_admin;
pub mod state;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use secrecy::ExposeSecret;
use strongroom_core::clock::SharedClock;
use strongroom_core::session::SessionPolicy;
use strongroom_crypto::password::{HashParams, PasswordHasher};
use strongroom_store::{MigrationReport, Store, StoreOptions};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

pub use config::{Config, Resolved};

use crate::extract::{PeerAddr, TrustedProxies};
use crate::state::{AppState, HashPool};

/// What start-up found and did, for the operator.
#[derive(Debug, Clone)]
pub struct StartInfo {
    pub master_key_created: bool,
    pub tls_cert: PathBuf,
    pub tls_generated: bool,
    pub database: &'static str,
    pub schema: MigrationReport,
    pub store_empty: bool,
}

/// A server ready to accept connections.
pub struct Prepared {
    pub state: AppState,
    pub info: StartInfo,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    max_connections: usize,
    syslog_forward: Option<String>,
}

/// Opens the key store, the TLS certificate and the database (migrating
/// it), and builds the router. Refuses unsafe key files, a key directory
/// inside the data directory and a database newer than this binary.
pub async fn prepare(
    config: &Config,
    resolved: &Resolved,
    clock: SharedClock,
) -> anyhow::Result<Prepared> {
    prepare_with(config, resolved, clock, false).await
}

/// [`prepare`], with auditing of reads switched off when `bench_no_audit`:
/// for the benchmark that measures what auditing costs, and nothing else.
pub async fn prepare_with(
    config: &Config,
    resolved: &Resolved,
    clock: SharedClock,
    bench_no_audit: bool,
) -> anyhow::Result<Prepared> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let tls_files = tls::ensure_files(
        config.tls_cert.as_deref(),
        config.tls_key.as_deref(),
        &config.data_dir,
    )?;
    let tls = tls::server_config(&tls_files)?;
    if let Some(st) = backup::read_standby(&config.data_dir)? {
        if !st.promoted {
            anyhow::bail!(
                "this store is a standby following {}; run `strongroom standby promote` to make it a primary first",
                st.source
            );
        }
    }
    let store = open_store(config).await?;
    let schema = store.migrate(clock.now()).await?;
    let (provider, master_key_created) = open_key_provider(config, &store).await?;
    let keys = Arc::new(keys::KeyRing::new(provider, store.clone()));
    let given = keys.ensure_company_keys(clock.now()).await?;
    if given > 0 {
        tracing::warn!(
            companies = given,
            "gave keys to companies that had none; their protected values will be encrypted now"
        );
    }
    access::ensure_built_in_roles(&store, clock.now())
        .await
        .map_err(|e| anyhow::anyhow!("built-in roles: {}", e.message))?;
    let store_empty = store.is_empty().await?;
    let blocks = Arc::new(detection::Blocks::default());
    blocks.reload(&store, clock.now()).await?;
    let metrics = Arc::new(metrics::Metrics::new());
    let detection = detection::Detection::start(
        store.clone(),
        clock.clone(),
        blocks.clone(),
        alert_settings(config),
        metrics.detector_skipped.clone(),
        detection::replay_plan(&store).await?,
    );
    let hasher = PasswordHasher::new(HashParams::default())?;
    let concurrency = match config.login_concurrency {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        n => n,
    };
    let deny_list = if config.password_deny_list.trim().is_empty() {
        passwords::DenyList::default()
    } else {
        let list =
            passwords::DenyList::load(std::path::Path::new(config.password_deny_list.trim()))?;
        tracing::info!(entries = list.len(), "loaded the password deny list");
        list
    };
    let webauthn = passkeys::build(&resolved.public_origin)?;
    let state = AppState::new(state::SharedState {
        deny_list: Arc::new(deny_list),
        webauthn: Arc::new(webauthn),
        policy: Arc::default(),
        store: store.clone(),
        clock: clock.clone(),
        sessions: SessionPolicy {
            idle_timeout: chrono::Duration::minutes(config.session_idle_minutes),
            absolute_lifetime: chrono::Duration::hours(config.session_lifetime_hours),
        },
        hashing: HashPool::new(hasher, concurrency, config.login_hash_nice as i32)?,
        metrics,
        metrics_allow: Arc::new(resolved.metrics_allow.clone()),
        audit: {
            let log = audit::AuditLog::start(
                store.clone(),
                keys.clone(),
                clock.clone(),
                detection.clone(),
            );
            if bench_no_audit {
                log.discarding()
            } else {
                log
            }
        },
        detection,
        blocks: blocks.clone(),
        limits: Arc::new(limits::Limits::new(
            limits::LimitSettings {
                per_ip_per_second: config.rate_limit_ip_per_second,
                per_company_per_second: config.rate_limit_company_per_second,
                logins_per_ip_per_minute: config.login_rate_per_ip_per_minute,
                max_in_flight: config.max_in_flight,
                request_timeout: Duration::from_secs(config.request_timeout_seconds),
            },
            blocks,
            clock.clone(),
        )),
        keys,
    });
    backup::spawn_schedule(
        store.clone(),
        state.keys.shared_provider(),
        clock.clone(),
        backup::Schedule {
            target: backup::Location::parse(&config.backup_target)?,
            backups: config.backup_cadence()?,
            drills: config.drill_cadence()?,
            keep: (
                config.backup_keep_last as usize,
                config.backup_keep_daily as usize,
                config.backup_keep_weekly as usize,
                config.backup_keep_monthly as usize,
            ),
            alerts: alert_settings(config),
            probe: config.drill_probe(),
        },
    );
    let router = app::router(
        state.clone(),
        TrustedProxies(resolved.trusted_proxies.clone()),
        config.max_body_bytes,
    );
    Ok(Prepared {
        info: StartInfo {
            master_key_created,
            tls_cert: tls_files.cert,
            tls_generated: tls_files.generated,
            database: config.database_kind(),
            schema,
            store_empty,
        },
        state,
        tls,
        router,
        max_connections: config.max_connections,
        syslog_forward: config.syslog_forward.clone(),
    })
}

/// Where alerts go, from the configuration.
pub fn alert_settings(config: &Config) -> detection::AlertSettings {
    detection::AlertSettings {
        webhook_url: config.alert_webhook_url.clone(),
        webhook_secret: config.alert_webhook_secret(),
        smtp_url: config.smtp_url(),
        smtp_from: config.smtp_from.clone(),
        smtp_to: config.smtp_to.clone(),
    }
}

/// Opens the configured key provider. A new master key is made only for a
/// store that holds no wrapped keys yet; otherwise a missing key is an error.
pub async fn open_key_provider(
    config: &Config,
    store: &Store,
) -> anyhow::Result<(Arc<dyn strongroom_crypto::provider::KeyProvider>, bool)> {
    let may_create = !store.has_wrapped_keys().await?;
    open_key_provider_with(config, may_create).await
}

/// Opens the configured key provider; a master key is made only when
/// `may_create` (never for a standby, which must use the primary's).
pub async fn open_key_provider_with(
    config: &Config,
    may_create: bool,
) -> anyhow::Result<(Arc<dyn strongroom_crypto::provider::KeyProvider>, bool)> {
    if let Some(settings) = config.pkcs11() {
        // Token operations block; they are short, but keep them off the executor.
        let (p, created) = tokio::task::spawn_blocking(move || {
            strongroom_crypto::pkcs11::Pkcs11KeyProvider::open(&settings, may_create)
        })
        .await??;
        return Ok((Arc::new(p), created));
    }
    let (p, created) =
        strongroom_crypto::keyfile::open(&config.key_dir, &config.data_dir, may_create)?;
    Ok((Arc::new(p), created))
}

/// Opens the configured store (without migrating it) for work on it,
/// refusing one that holds an interrupted restore (its data is partial).
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let store = connect_store(config).await?;
    if let Some(p) = store.restore_progress().await? {
        store.close().await;
        anyhow::bail!("this store holds {p}");
    }
    Ok(store)
}

/// Connects to the configured store as it is (a restore may be resuming
/// into it).
pub async fn connect_store(config: &Config) -> anyhow::Result<Store> {
    Ok(Store::connect(
        config.database_url().expose_secret(),
        StoreOptions {
            max_connections: config.db_max_connections,
            ..Default::default()
        },
    )
    .await?)
}

/// Serves HTTPS on `listener` until `shutdown` completes, then lets open
/// requests finish (up to 10 s), and the intrusion detectors examine what
/// they were given (up to 10 s more).
pub async fn serve(
    prepared: Prepared,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let Prepared {
        state,
        tls,
        router,
        max_connections,
        syslog_forward,
        ..
    } = prepared;
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let housekeeping = tokio::spawn(housekeeping(state.clone()));
    if let Some(target) = syslog_forward {
        forward::start(state.store.clone(), target, state.clock.clone());
    }
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Typically out of file descriptors: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing new connection");
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                router.clone().oneshot(req)
            });
            let conn = builder.serve_connection(TokioIo::new(tls), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    housekeeping.abort();
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("some connections were still open after 10 s; closing them");
        }
    }
    // What the detectors have not examined yet (queued, or waiting in the
    // audit log) is examined, and responded to, before the store closes:
    // a restart must not forget an attack in progress.
    if tokio::time::timeout(Duration::from_secs(10), state.detection.flush())
        .await
        .is_err()
    {
        tracing::warn!(
            "intrusion detection had not caught up 10 s into the shutdown; \
             events it has not examined yet will not be"
        );
    }
    state.store.close().await;
    Ok(())
}

/// Background work: re-encryption after key rotations (checked every
/// minute, so a rotation started by the CLI or another node is picked up),
/// and purging sessions past their lifetime.
async fn housekeeping(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    let mut round: u64 = 0;
    loop {
        tick.tick().await;
        let clock = state.clock.clone();
        match reencrypt::run_pending(&state.store, &state.keys, || clock.now(), |p| {
            tracing::info!(company = %p.company, to_version = p.to_version, done = p.records_done, total = p.records_total, "re-encrypting");
        })
        .await
        {
            Ok(n) if n > 0 => tracing::info!(rotations = n, "re-encryption finished"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "re-encryption paused; will retry"),
        }
        // Sign every chain with unsigned events: a checkpoint at least
        // every minute, besides every CHECKPOINT_EVERY events.
        if let Err(e) =
            audit::checkpoint_all(&state.store, &state.keys, state.clock.now(), true).await
        {
            tracing::warn!(error = %e.message, "audit checkpoint failed");
        }
        state.limits.prune();
        if let Err(e) = state.blocks.reload(&state.store, state.clock.now()).await {
            tracing::warn!(error = %e, "cannot reload address blocks");
        }
        if round % 10 == 0 {
            match state.store.purge_expired_sessions(state.clock.now()).await {
                Ok(n) if n > 0 => tracing::info!(sessions = n, "purged expired sessions"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "session purge failed"),
            }
        }
        round += 1;
    }
}

/// A company to create, with its master account.
pub struct NewCompany<'a> {
    pub code: &'a str,
    pub name: &'a str,
    pub admin: &'a str,
    pub admin_name: &'a str,
    pub password: &'a str,
}

/// Creates a company with its master account and default record types.
/// Returns the normalised company code and master user ID.
pub async fn init_company(
    store: &Store,
    provider: &dyn strongroom_crypto::provider::KeyProvider,
    now: chrono::DateTime<chrono::Utc>,
    req: NewCompany<'_>,
) -> anyhow::Result<(String, String)> {
    use strongroom_core::{catalogue, ident, password};
    let code = ident::company_code(req.code).context("company code")?;
    let name = ident::display_text("company name", req.name, 200)?;
    let admin = ident::user_id(req.admin).context("master user ID")?;
    let admin_name = ident::display_text("master display name", req.admin_name, 200)?;
    password::check(
        req.password,
        &password::PasswordRules::default(),
        password::Owner {
            user_id: &admin,
            display_name: &admin_name,
            company_code: &code,
        },
    )
    .context("master account password")?;
    let hasher = PasswordHasher::new(HashParams::default())?;
    let password = zeroize::Zeroizing::new(req.password.to_owned());
    let password_hash = tokio::task::spawn_blocking(move || hasher.hash(&password)).await??;
    let master = strongroom_store::NewUser {
        user_id: admin.clone(),
        display_name: admin_name,
        email: None,
        department: None,
        password_hash,
        is_admin: true,
        is_master: true,
        clearance: "restricted".into(),
    };
    let keys = keys::new_company_keys(provider, &code)?;
    store
        .create_company(
            &code,
            &name,
            master,
            &catalogue::default_catalogue(),
            &keys,
            now,
        )
        .await?;
    access::ensure_built_in_roles(store, now)
        .await
        .map_err(|e| anyhow::anyhow!("built-in roles: {}", e.message))?;
    Ok((code, admin))
}

/// Binds the configured address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}; is another server using the port? (config key: listen)")
    })
}
