//! `strongroom`: the operator's command.

/// jemalloc rather than glibc's malloc: under load glibc's allocator took
/// about a sixth of the server's CPU (arena locks, consolidation of freed
/// chunks); jemalloc served the same reads and writes with about a quarter
/// more throughput, for about 6 MB more resident memory when idle.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use strongroom_core::audit::{AuditEvent, SERVER_CHAIN};
use strongroom_core::clock::{Clock, SystemClock};
use strongroom_core::{ident, password};
use strongroom_server::config::{process_env, Config, Resolved};
use zeroize::Zeroizing;

/// Prints a line for the operator. A closed stdout (a supervisor that went
/// away) must not bring the server down, so write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "strongroom",
    version,
    about = "Strongroom: a self-hosted secure records server for business applications",
    long_about = "Strongroom: a self-hosted secure records server for business applications.\n\n\
        Configuration comes from built-in defaults, then the TOML file given with --config, then \
        STRONGROOM_* environment variables (e.g. STRONGROOM_LISTEN=0.0.0.0:8443, \
        STRONGROOM_DATABASE_URL=postgres://..., or STRONGROOM_DATABASE_URL_FILE=/run/secrets/db)."
)]
struct Cli {
    /// Configuration file (TOML). See the README for every key.
    #[arg(long, global = true, env = "STRONGROOM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (HTTPS). Creates the data and key directories, the
    /// master key and a self-signed certificate on first start.
    ///
    /// Example: strongroom serve --config /etc/strongroom/strongroom.toml
    Serve,

    /// Create a company (tenant) with its master account.
    ///
    /// Example: strongroom init --company ACME --company-name "Acme Ltd" --admin master
    /// --admin-password-file ./master.pw
    Init {
        /// Company code used to sign in (letters, digits, '_' and '-'; stored upper-case).
        #[arg(long)]
        company: String,
        /// The company's full name.
        #[arg(long)]
        company_name: String,
        /// User ID of the master account.
        #[arg(long, default_value = "master")]
        admin: String,
        /// Display name of the master account.
        #[arg(long, default_value = "Master administrator")]
        admin_name: String,
        /// File holding the master account's password (first line). Without
        /// it, the password is asked for on the terminal.
        #[arg(long, value_name = "FILE")]
        admin_password_file: Option<PathBuf>,
    },

    /// Ask a running server whether it is healthy.
    ///
    /// Example: strongroom health --url https://127.0.0.1:8443 --ca-cert ./strongroom-data/tls/cert.pem
    Health {
        /// The server's base URL.
        #[arg(long, default_value = "https://127.0.0.1:8443")]
        url: String,
        /// PEM certificate to trust (the server's self-signed certificate).
        /// Defaults to <data_dir>/tls/cert.pem.
        #[arg(long, value_name = "FILE")]
        ca_cert: Option<PathBuf>,
    },

    /// The audit log: verify its hash chains and checkpoints, export it for a SIEM, archive old events.
    #[command(subcommand)]
    Audit(AuditCommand),

    /// Key management: status, data-key rotation, master-key rotation.
    #[command(subcommand)]
    Keys(KeysCommand),

    /// Delete a company with all its users, records and history. Its keys
    /// are destroyed first, so its encrypted values cannot be read again from
    /// this store. Backups made before keep the company (and its wrapped
    /// keys) until they expire.
    ///
    /// Example: strongroom delete-company --company ACME --yes-delete-everything
    DeleteCompany {
        /// Company code.
        #[arg(long)]
        company: String,
        /// Confirms that the company's data is to be destroyed.
        #[arg(long)]
        yes_delete_everything: bool,
    },

    /// Refuse an address: for the whole server, or for one company. Running
    /// servers apply it within a minute.
    ///
    /// Example: strongroom block-address --address 203.0.113.9 --minutes 1440
    BlockAddress {
        /// IPv4 or IPv6 address.
        #[arg(long)]
        address: std::net::IpAddr,
        /// Only for this company (default: the whole server).
        #[arg(long)]
        company: Option<String>,
        /// How long (default one day).
        #[arg(long, default_value_t = 1440)]
        minutes: i64,
    },

    /// Lift a block made by `block-address` or by a detector.
    ///
    /// Example: strongroom unblock-address --address 203.0.113.9
    UnblockAddress {
        #[arg(long)]
        address: std::net::IpAddr,
        #[arg(long)]
        company: Option<String>,
    },

    /// Backups: take one now, list them, check one without restoring, apply retention.
    #[command(subcommand)]
    Backup(BackupCommand),

    /// Restore a backup into an empty store: a directory (an SQLite file is
    /// made there) or a PostgreSQL URL. The whole backup is checked before
    /// the target is touched, then loaded chunk by chunk with its progress
    /// kept in the target: interrupted (killed, disk full), the same command
    /// run again resumes after the last loaded chunk, and until the restore
    /// completes no server or tool uses that store.
    ///
    /// Example: strongroom restore 20261130T020000Z-1a2b3c4d --into /srv/strongroom-restored
    Restore {
        /// The backup's id (`strongroom backup list`).
        id: String,
        /// Directory for a new SQLite store, or postgres://... (an empty database).
        #[arg(long, value_name = "DIR|URL")]
        into: String,
        /// Replace what the target holds.
        #[arg(long)]
        force: bool,
        /// Load everything in one transaction instead: any failure (a kill,
        /// a full disk) leaves the target's data as it was, but a new
        /// attempt starts from the beginning.
        #[arg(long)]
        atomic: bool,
    },

    /// Prove a backup: restore it (the newest, or ID) into a scratch store,
    /// check schema, row counts, audit chains and a sample of encrypted
    /// values, record the result as evidence, and raise an incident and an
    /// alert when a check fails.
    ///
    /// Example: strongroom drill
    Drill {
        /// A backup id; the newest by default.
        id: Option<String>,
    },

    /// A warm standby: follow a backup target, restoring each new backup
    /// into this machine's own store as it appears (`standby --source DIR`),
    /// until `standby promote` makes this store a primary that `serve`
    /// starts on. This machine needs the primary's master key (a copy of
    /// the key file, or the same PKCS#11 token).
    ///
    /// Example: strongroom standby --source /mnt/backups --every 60
    Standby {
        #[command(subcommand)]
        action: Option<StandbyAction>,
        /// The primary's backup target to follow (a directory or s3://bucket/prefix).
        #[arg(long, value_name = "DIR|URL")]
        source: Option<PathBuf>,
        /// Seconds between looks at the source.
        #[arg(long, default_value_t = 60)]
        every: u64,
        /// Look once, restore if there is something new, and stop.
        #[arg(long)]
        once: bool,
    },

    /// Print the OpenAPI document of this version's API.
    ///
    /// Example: strongroom openapi > openapi.json
    Openapi,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute every event's hash, check each chain's head and every
    /// signed checkpoint, and name the first bad event. Exits non-zero when
    /// anything is wrong. It may run beside a running server: events
    /// written while it reads are checked too.
    ///
    /// Example: strongroom audit verify --company ACME
    Verify {
        /// Only this company's chain (default: every chain).
        #[arg(long)]
        company: Option<String>,
        /// Archive files of that company (from `audit archive`), oldest
        /// first: verification then covers the chain from its start.
        #[arg(long, value_name = "FILE", requires = "company")]
        archive: Vec<PathBuf>,
    },

    /// Write audit events as JSON Lines, syslog (RFC 5424) or CEF lines, with
    /// their chain hashes, for a SIEM.
    ///
    /// Example: strongroom audit export --company ACME --format cef --out acme.cef
    Export {
        /// Company code (default: every chain).
        #[arg(long)]
        company: Option<String>,
        /// jsonl, syslog or cef.
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Output file (default: standard output).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },

    /// Move a company's events older than a date to an archive file (JSON
    /// Lines with hashes), then out of the live log. The file is written,
    /// synced and re-verified before anything is removed; the live log keeps
    /// an anchor, and `audit verify --archive FILE` spans both.
    ///
    /// Example: strongroom audit archive --company ACME --before 2026-01-01T00:00:00Z --out acme-2025.jsonl
    Archive {
        #[arg(long)]
        company: String,
        /// Archive events strictly older than this time (RFC 3339).
        #[arg(long)]
        before: chrono::DateTime<chrono::Utc>,
        /// The archive file to create (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum StandbyAction {
    /// Stop following and make this store a primary.
    ///
    /// Example: strongroom standby promote
    Promote,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Take a backup of the whole store now, into backup_target, while the
    /// server keeps serving.
    ///
    /// Example: strongroom backup create
    Create,
    /// The backups in backup_target, oldest first, and the latest drills.
    ///
    /// Example: strongroom backup list
    List,
    /// Check every chunk, the manifest's signature and MAC, and that the
    /// content decrypts, without restoring. With --public-key, check only
    /// what needs no master key (the signature by that key, and every
    /// chunk's checksum): for an auditor who holds the public key alone.
    ///
    /// Example: strongroom backup verify 20261130T020000Z-1a2b3c4d
    Verify {
        id: String,
        /// The installation's backup-signing public key (hex, as `backup
        /// create` and `backup verify` print it) to check the signature
        /// against, without the master key.
        #[arg(long, value_name = "HEX")]
        public_key: Option<String>,
    },
    /// Delete the backups the retention settings no longer keep, and
    /// leftovers of interrupted backups older than a day.
    ///
    /// Example: strongroom backup prune
    Prune,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Show every company key: purpose, version, status, age, and the master
    /// key that wraps it.
    ///
    /// Example: strongroom keys status
    Status,

    /// Start a new data-key version for a company. New writes use it at
    /// once; existing values are re-encrypted to it (here, with progress,
    /// unless --no-wait; a running server also picks it up and resumes
    /// after a restart). The old version is retired when nothing uses it.
    ///
    /// Example: strongroom keys rotate --company ACME
    Rotate {
        /// Company code.
        #[arg(long)]
        company: String,
        /// Only start the rotation; leave the re-encryption to the server.
        #[arg(long)]
        no_wait: bool,
    },

    /// Replace the master key: a new one is added to the key file, every
    /// company key is re-wrapped under it (records are not touched), then
    /// the old one is removed. Back up the key file afterwards. Backups
    /// made before can no longer be restored (their keys were wrapped by
    /// the old master key): the command lists them; take a new backup.
    ///
    /// Example: strongroom keys rotate-master
    RotateMaster,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<(Config, Resolved)> {
    Ok(Config::load(path, &process_env())?)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => serve(cli.config.as_deref()).await,
        Command::Init {
            company,
            company_name,
            admin,
            admin_name,
            admin_password_file,
        } => {
            let (config, _) = load_config(cli.config.as_deref())?;
            init(
                &config,
                &company,
                &company_name,
                &admin,
                &admin_name,
                admin_password_file.as_deref(),
            )
            .await
        }
        Command::Health { url, ca_cert } => {
            let (config, _) = load_config(cli.config.as_deref())?;
            let ca = ca_cert.unwrap_or_else(|| config.data_dir.join("tls").join("cert.pem"));
            let pem = std::fs::read(&ca)
                .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
            let client = strongroom_client::Client::new(&url, Some(&pem))?;
            let h = client.health().await?;
            say!("{} (version {})", h.status, h.version);
            Ok(())
        }
        Command::Audit(AuditCommand::Verify { company, archive }) => {
            let (config, _) = load_config(cli.config.as_deref())?;
            audit_verify(&config, company.as_deref(), &archive).await
        }
        Command::Audit(AuditCommand::Export {
            company,
            format,
            after,
            out,
        }) => {
            let (config, _) = load_config(cli.config.as_deref())?;
            audit_export(&config, company.as_deref(), &format, after, out.as_deref()).await
        }
        Command::Audit(AuditCommand::Archive {
            company,
            before,
            out,
        }) => {
            let (config, _) = load_config(cli.config.as_deref())?;
            audit_archive(&config, &company, before, &out).await
        }
        Command::Backup(b) => {
            let (config, _) = load_config(cli.config.as_deref())?;
            backup_command(&config, b).await
        }
        Command::Restore {
            id,
            into,
            force,
            atomic,
        } => {
            let (config, _) = load_config(cli.config.as_deref())?;
            let commit = if atomic {
                strongroom_server::backup::Commit::Once
            } else {
                strongroom_server::backup::Commit::Resumable
            };
            restore_command(&config, &id, &into, force, commit).await
        }
        Command::Standby {
            action,
            source,
            every,
            once,
        } => {
            let (config, _) = load_config(cli.config.as_deref())?;
            match action {
                Some(StandbyAction::Promote) => {
                    let st = strongroom_server::backup::promote(&config.data_dir)?;
                    say!(
                        "Promoted: this store holds backup {} (taken {}). Start it with `strongroom serve`.",
                        st.restored.unwrap_or_default(),
                        st.backup_created_at
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_default()
                    );
                    Ok(())
                }
                None => {
                    let source =
                        source.context("give the backup target to follow with --source DIR")?;
                    standby(&config, &source, every, once).await
                }
            }
        }
        Command::Drill { id } => {
            let (config, _) = load_config(cli.config.as_deref())?;
            drill_command(&config, id.as_deref()).await
        }
        Command::Keys(k) => {
            let (config, _) = load_config(cli.config.as_deref())?;
            keys(&config, k).await
        }
        Command::DeleteCompany {
            company,
            yes_delete_everything,
        } => {
            let (config, _) = load_config(cli.config.as_deref())?;
            let code = ident::company_code(&company).context("--company")?;
            if !yes_delete_everything {
                bail!("this destroys company {code} and all its data; add --yes-delete-everything to confirm");
            }
            let clock = SystemClock;
            let store = strongroom_server::open_store(&config).await?;
            store.migrate(clock.now()).await?;
            let (id, _) = store
                .company_by_code(&code)
                .await?
                .with_context(|| format!("there is no company {code}"))?;
            store.delete_company(id).await?;
            operator_event(
                &store,
                "company.delete",
                &format!("company/{code}"),
                SERVER_CHAIN,
            )
            .await?;
            store.close().await;
            say!("Deleted company {code}; its keys are destroyed. Restart running servers to drop cached keys.");
            Ok(())
        }
        Command::BlockAddress {
            address,
            company,
            minutes,
        } => {
            let (config, _) = load_config(cli.config.as_deref())?;
            if !(1..=525_600).contains(&minutes) {
                bail!("--minutes must be from 1 to 525600 (a year)");
            }
            let store = strongroom_server::open_store(&config).await?;
            store.migrate(SystemClock.now()).await?;
            let chain = match company.as_deref() {
                Some(c) => chains_of(&store, Some(c)).await?[0],
                None => SERVER_CHAIN,
            };
            let now = SystemClock.now();
            store
                .block_address(
                    &strongroom_store::AddressBlock {
                        chain,
                        address: address.to_string(),
                        until: now + chrono::Duration::minutes(minutes),
                        reason: "operator".into(),
                    },
                    now,
                )
                .await?;
            operator_event(&store, "block.create", &format!("address/{address}"), chain).await?;
            store.close().await;
            say!(
                "Blocked {address} for {minutes} minutes ({}).",
                company.as_deref().unwrap_or("whole server")
            );
            Ok(())
        }
        Command::UnblockAddress { address, company } => {
            let (config, _) = load_config(cli.config.as_deref())?;
            let store = strongroom_server::open_store(&config).await?;
            store.migrate(SystemClock.now()).await?;
            let chain = match company.as_deref() {
                Some(c) => chains_of(&store, Some(c)).await?[0],
                None => SERVER_CHAIN,
            };
            if !store.unblock_address(chain, &address.to_string()).await? {
                bail!("{address} is not blocked there");
            }
            operator_event(&store, "block.delete", &format!("address/{address}"), chain).await?;
            store.close().await;
            say!("Unblocked {address}.");
            Ok(())
        }
        Command::Openapi => {
            say!("{}", strongroom_server::app::openapi_json());
            Ok(())
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRONGROOM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(config_path: Option<&Path>) -> anyhow::Result<()> {
    let (config, resolved) = load_config(config_path)?;
    init_logging(&config.log_format);
    let started = std::time::Instant::now();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let prepared = strongroom_server::prepare(&config, &resolved, clock).await?;
    let listener = strongroom_server::bind(resolved.listen).await?;
    let shutdown = shutdown_signal()?;
    let addr = listener.local_addr()?;
    let info = &prepared.info;
    if info.master_key_created {
        say!(
            "Created the master key in {}. Back it up apart from the data: without it nothing encrypted can be read.",
            config.key_dir.display()
        );
    }
    if info.tls_generated {
        say!(
            "Generated a self-signed TLS certificate: {} (give clients this file to trust).",
            info.tls_cert.display()
        );
    }
    if info.store_empty {
        say!(
            "The store is empty. Create the first company with:\n  strongroom init --company ACME --company-name \"Acme Ltd\" --admin master --admin-password-file FILE"
        );
    }
    // The listening line comes last: scripts and tests wait for it.
    say!(
        "Strongroom {} listening on https://{addr} ({} store, schema version {}), ready in {} ms",
        env!("CARGO_PKG_VERSION"),
        info.database,
        info.schema.to,
        started.elapsed().as_millis()
    );
    strongroom_server::serve(prepared, listener, shutdown).await?;
    say!("Strongroom stopped.");
    Ok(())
}

/// Registers for SIGTERM and Ctrl-C now (before the server says it is
/// ready, so a supervisor's signal is never missed) and returns a future
/// that completes on either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

fn read_password(file: Option<&Path>) -> anyhow::Result<Zeroizing<String>> {
    match file {
        Some(p) => {
            let meta = std::fs::metadata(p)
                .with_context(|| format!("cannot read the password file {}", p.display()))?;
            if meta.len() > 4096 {
                bail!(
                    "the password file {} is larger than 4 KiB; is it the right file?",
                    p.display()
                );
            }
            let text = Zeroizing::new(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the password file {}", p.display()))?,
            );
            let line = text.lines().next().unwrap_or("");
            Ok(Zeroizing::new(line.to_owned()))
        }
        None => {
            if !std::io::stdin().is_terminal() {
                bail!("no --admin-password-file given and no terminal to ask on; write the password to a file and pass --admin-password-file FILE");
            }
            let a = Zeroizing::new(rpassword::prompt_password("Master account password: ")?);
            let b = Zeroizing::new(rpassword::prompt_password("Repeat the password: ")?);
            if a != b {
                bail!("the two passwords differ; run the command again");
            }
            Ok(a)
        }
    }
}

async fn init(
    config: &Config,
    company: &str,
    company_name: &str,
    admin: &str,
    admin_name: &str,
    password_file: Option<&Path>,
) -> anyhow::Result<()> {
    // Check what can be checked before asking for a password.
    ident::company_code(company).context("--company")?;
    ident::user_id(admin).context("--admin")?;
    let password = read_password(password_file)?;
    password::check_baseline(&password).context("master account password")?;

    let clock = SystemClock;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let store = strongroom_server::open_store(config).await?;
    store.migrate(clock.now()).await?;
    let (provider, created) = strongroom_server::open_key_provider(config, &store).await?;
    if created {
        say!(
            "Created the master key: {}. Back it up apart from the data.",
            provider.describe()
        );
    }
    let (code, admin_id) = strongroom_server::init_company(
        &store,
        provider.as_ref(),
        clock.now(),
        strongroom_server::NewCompany {
            code: company,
            name: company_name,
            admin,
            admin_name,
            password: &password,
        },
    )
    .await?;
    if let Some((id, _)) = store.company_by_code(&code).await? {
        operator_event(&store, "company.create", &format!("company/{code}"), id.0).await?;
    }
    store.close().await;
    say!(
        "Created company {code} ({company_name}) with master account '{admin_id}'.\n\
         Sign in: POST /api/v1/auth/login {{\"company\":\"{code}\",\"user\":\"{admin_id}\",\"password\":\"...\"}}"
    );
    Ok(())
}

async fn keys(config: &Config, cmd: KeysCommand) -> anyhow::Result<()> {
    let clock = SystemClock;
    let store = strongroom_server::open_store(config).await?;
    store.migrate(clock.now()).await?;
    match cmd {
        KeysCommand::Status => {
            let (provider, _) = strongroom_server::open_key_provider(config, &store).await?;
            say!(
                "Master key: {} (id {})",
                provider.describe(),
                provider.current_key_id()
            );
            say!(
                "{:<12} {:<14} {:>7}  {:<9} {:>8}  wrapped by",
                "company",
                "purpose",
                "version",
                "status",
                "age (d)"
            );
            for k in store.all_keys().await? {
                let age = (clock.now() - k.created_at).num_days();
                say!(
                    "{:<12} {:<14} {:>7}  {:<9} {:>8}  {}",
                    k.company_code,
                    k.purpose.as_str(),
                    k.version,
                    k.status,
                    age,
                    k.wrap_key_id
                );
            }
            for r in store.open_rotations().await? {
                let code = store.company_code(r.company).await?.unwrap_or_default();
                say!(
                    "re-encryption to data v{} for {code}: {} records done",
                    r.to_version,
                    r.records_done
                );
            }
        }
        KeysCommand::Rotate { company, no_wait } => {
            let code = ident::company_code(&company).context("--company")?;
            let (id, _) = store
                .company_by_code(&code)
                .await?
                .with_context(|| format!("there is no company {code}"))?;
            let (provider, _) = strongroom_server::open_key_provider(config, &store).await?;
            let ring = strongroom_server::keys::KeyRing::new(provider, store.clone());
            let v = ring.rotate_data_key(id, &code, clock.now()).await?;
            operator_event(
                &store,
                "key.rotate",
                &format!("company/{code}/data/v{v}"),
                id.0,
            )
            .await?;
            say!("Company {code} now writes with data key v{v}.");
            if !no_wait {
                strongroom_server::reencrypt::run_pending(
                    &store,
                    &ring,
                    || clock.now(),
                    |p| {
                        say!(
                            "re-encrypting {}: {}/{} records",
                            p.company,
                            p.records_done,
                            p.records_total
                        );
                    },
                )
                .await?;
                say!("Re-encryption finished; older data keys of {code} are retired.");
            }
        }
        KeysCommand::RotateMaster => {
            let (provider, _) = strongroom_server::open_key_provider(config, &store).await?;
            let old = provider.current_key_id();
            let new = provider.add_master_key()?;
            say!("Added master key {new}; re-wrapping company keys (old: {old})...");
            let n = strongroom_server::keys::rewrap_all(provider.as_ref(), &store).await?;
            let dropped = provider.drop_old_master_keys()?;
            operator_event(&store, "key.rotate_master", &new, SERVER_CHAIN).await?;
            say!(
                "Re-wrapped {n} keys; removed {dropped} old master key(s) from {}. Back up the key now.",
                provider.describe()
            );
            // Each backup's key is wrapped by the master key of its day:
            // those are unreadable from now on, and the operator must know.
            let listed = async {
                let loc = strongroom_server::backup::Location::parse(&config.backup_target)?;
                let all = strongroom_server::backup::list_at(&loc).await?;
                anyhow::Ok((loc, all))
            };
            match listed.await {
                Ok((loc, all)) => {
                    let lost: Vec<_> = all.iter().filter(|m| m.wrap_key_id != new).collect();
                    if let (Some(first), Some(last)) = (lost.first(), lost.last()) {
                        say!(
                            "warning: the {} backup(s) in {} ({} .. {}) were made under the removed master key and can no longer be restored or drilled; take a new backup now (strongroom backup create).",
                            lost.len(),
                            loc.describe(),
                            first.id,
                            last.id
                        );
                    }
                }
                Err(e) => say!(
                    "warning: could not list the backups ({e:#}); backups made before this rotation can no longer be restored: take a new one now."
                ),
            }
        }
    }
    store.close().await;
    Ok(())
}

/// Records an operator's action in the audit log.
async fn operator_event(
    store: &strongroom_store::Store,
    action: &str,
    target: &str,
    chain: i64,
) -> anyhow::Result<()> {
    store
        .append_audit(&[AuditEvent::new(
            chain,
            SystemClock.now(),
            "operator",
            action,
            target,
        )])
        .await?;
    Ok(())
}

async fn audit_verify(
    config: &Config,
    company: Option<&str>,
    archive: &[PathBuf],
) -> anyhow::Result<()> {
    let mut archived = Vec::new();
    for f in archive {
        archived.extend(read_archive(f)?);
    }
    let store = strongroom_server::open_store(config).await?;
    store.migrate(SystemClock.now()).await?;
    let (provider, _) = strongroom_server::open_key_provider(config, &store).await?;
    let ring = strongroom_server::keys::KeyRing::new(provider, store.clone());
    let chains = match company {
        Some(c) => {
            let code = ident::company_code(c).context("--company")?;
            let (id, _) = store
                .company_by_code(&code)
                .await?
                .with_context(|| format!("there is no company {code}"))?;
            vec![id.0]
        }
        None => store.audit_chains().await?,
    };
    let mut bad = 0;
    for chain in chains {
        let code = store
            .company_code(strongroom_core::CompanyId(chain))
            .await?;
        let name = match (&code, chain) {
            (_, SERVER_CHAIN) => "(server)".to_owned(),
            (Some(c), _) => c.clone(),
            (None, _) => format!("company #{chain} (deleted)"),
        };
        let arch = (!archive.is_empty()).then_some(archived.as_slice());
        let v = strongroom_server::audit::verify(&store, &ring, chain, code.is_some(), arch)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        match v.problem {
            None => say!(
                "{name}: {} events, {} signed checkpoints: intact",
                v.events,
                v.checkpoints
            ),
            Some(p) => {
                bad += 1;
                say!("{name}: TAMPERED: {p}");
            }
        }
    }
    store.close().await;
    if bad > 0 {
        bail!("{bad} audit chain(s) failed verification");
    }
    Ok(())
}

fn read_archive(path: &Path) -> anyhow::Result<Vec<strongroom_store::StoredEvent>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read archive {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let (seq, event, prev_hash, hash) = strongroom_core::export::parse_json_line(l)
                .map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), i + 1))?;
            Ok(strongroom_store::StoredEvent {
                seq,
                event,
                prev_hash,
                hash,
                damaged: None,
            })
        })
        .collect()
}

/// The chains named by `--company`, or all of them.
async fn chains_of(
    store: &strongroom_store::Store,
    company: Option<&str>,
) -> anyhow::Result<Vec<i64>> {
    match company {
        Some(c) => {
            let code = ident::company_code(c).context("--company")?;
            let (id, _) = store
                .company_by_code(&code)
                .await?
                .with_context(|| format!("there is no company {code}"))?;
            Ok(vec![id.0])
        }
        None => Ok(store.audit_chains().await?),
    }
}

async fn audit_export(
    config: &Config,
    company: Option<&str>,
    format: &str,
    after: i64,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let format = strongroom_core::export::Format::parse(format)
        .with_context(|| format!("--format must be jsonl, syslog or cef, not {format}"))?;
    let store = strongroom_server::open_store(config).await?;
    store.migrate(SystemClock.now()).await?;
    let mut sink: Box<dyn std::io::Write> = match out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let host = strongroom_server::forward::host_name();
    let mut n = 0u64;
    for chain in chains_of(&store, company).await? {
        let code = store
            .company_code(strongroom_core::CompanyId(chain))
            .await?;
        let mut cursor = after;
        loop {
            let page = store.audit_after(chain, cursor, 1000).await?;
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            for e in &page {
                let line = strongroom_server::audit::export_line(format, code.as_deref(), e, &host);
                writeln!(sink, "{line}")?;
                n += 1;
            }
            cursor = last;
        }
    }
    sink.flush()?;
    store.close().await;
    if out.is_some() {
        say!("Exported {n} events.");
    }
    Ok(())
}

async fn audit_archive(
    config: &Config,
    company: &str,
    before: chrono::DateTime<chrono::Utc>,
    out: &Path,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let store = strongroom_server::open_store(config).await?;
    store.migrate(SystemClock.now()).await?;
    let chain = chains_of(&store, Some(company)).await?[0];
    let code = store
        .company_code(strongroom_core::CompanyId(chain))
        .await?;
    let start = store.audit_anchor(chain).await?.map(|a| a.0).unwrap_or(0);
    let mut events = Vec::new();
    let mut cursor = start;
    'read: loop {
        let page = store.audit_after(chain, cursor, 1000).await?;
        let Some(last) = page.last().map(|e| e.seq) else {
            break;
        };
        for e in page {
            // An event changed outside Strongroom is evidence: it stays in
            // the live log, as it is, and so does everything after it.
            if let Some(d) = &e.damaged {
                bail!(
                    "audit event {} of {company} was changed outside Strongroom ({d}); nothing was archived. Run `strongroom audit verify --company {company}` and keep the database as it is",
                    e.seq
                );
            }
            if e.event.at >= before {
                break 'read;
            }
            events.push(e);
        }
        cursor = last;
    }
    let Some(upto) = events.last().map(|e| e.seq) else {
        say!("No events before {before}; nothing archived.");
        return Ok(());
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .with_context(|| format!("cannot create {} (it must not exist yet)", out.display()))?;
    for e in &events {
        let line = strongroom_server::audit::export_line(
            strongroom_core::export::Format::JsonLines,
            code.as_deref(),
            e,
            "",
        );
        writeln!(f, "{line}")?;
    }
    f.sync_all()?;
    // Nothing leaves the live log unless the file reads back identical.
    let back = read_archive(out)?;
    anyhow::ensure!(
        back == events,
        "the archive {} did not read back intact; nothing was removed",
        out.display()
    );
    store.archive_prefix(chain, upto, SystemClock.now()).await?;
    operator_event(
        &store,
        "audit.archive",
        &format!("events {}..{upto}", start + 1),
        chain,
    )
    .await?;
    store.close().await;
    say!("Archived events {}..{upto} to {}; keep the file: `audit verify --company {company} --archive FILE` checks it with the live log.", start + 1, out.display());
    Ok(())
}

async fn open_for_backup(
    config: &Config,
) -> anyhow::Result<(
    strongroom_store::Store,
    Arc<dyn strongroom_crypto::provider::KeyProvider>,
)> {
    let store = strongroom_server::open_store(config).await?;
    store.migrate(SystemClock.now()).await?;
    let (provider, _) = strongroom_server::open_key_provider(config, &store).await?;
    Ok((store, provider))
}

async fn backup_command(config: &Config, cmd: BackupCommand) -> anyhow::Result<()> {
    use strongroom_server::backup;
    let target = &backup::Location::parse(&config.backup_target)?;
    match cmd {
        BackupCommand::Create => {
            let (store, provider) = open_for_backup(config).await?;
            let started = SystemClock.now();
            let t = std::time::Instant::now();
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {pos} rows written ({elapsed})")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            let result = backup::create_at(&store, provider.as_ref(), target, started, &|n| {
                bar.set_position(n)
            })
            .await;
            bar.finish_and_clear();
            let m = result?;
            let secs = t.elapsed().as_secs_f64();
            store
                .record_backup_run(&strongroom_store::BackupRun {
                    kind: "backup".into(),
                    backup_id: m.id.clone(),
                    started_at: started,
                    finished_at: SystemClock.now(),
                    ok: true,
                    detail: serde_json::json!({"rows": m.total_rows(), "chunks": m.chunks.len(), "seconds": secs}),
                })
                .await?;
            operator_event(
                &store,
                "backup.create",
                &format!("backup/{}", m.id),
                SERVER_CHAIN,
            )
            .await?;
            store.close().await;
            say!(
                "Backup {} written to {}: {} rows in {} chunks, {secs:.1} s. Signed by backup-signing key {}.",
                m.id,
                target.describe(),
                m.total_rows(),
                m.chunks.len(),
                m.signature
                    .as_ref()
                    .map(|s| s.public_key.as_str())
                    .unwrap_or("(none)")
            );
            Ok(())
        }
        BackupCommand::List => {
            let all = backup::list_at(target).await?;
            if all.is_empty() {
                say!("No backups in {}.", target.describe());
            }
            for m in &all {
                say!(
                    "{}  {}  schema {}  {} rows  from {}",
                    m.id,
                    m.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    m.schema_version,
                    m.total_rows(),
                    m.source
                );
            }
            if let Ok(store) = strongroom_server::open_store(config).await {
                if store.migrate(SystemClock.now()).await.is_ok() {
                    for r in store
                        .backup_runs(5)
                        .await?
                        .iter()
                        .filter(|r| r.kind == "drill")
                    {
                        say!(
                            "drill of {} at {}: {}",
                            r.backup_id,
                            r.finished_at.format("%Y-%m-%d %H:%M UTC"),
                            if r.ok { "passed" } else { "FAILED" }
                        );
                    }
                }
                store.close().await;
            }
            Ok(())
        }
        BackupCommand::Verify {
            id,
            public_key: Some(key),
        } => {
            let l = backup::local(target, &id).await?;
            let m = backup::verify_signature(&l.root, &id, &key)?;
            say!(
                "Backup {id}: manifest signed by {key}, {} chunks present and intact, {} rows in {} tables. The content was not decrypted (that needs the master key).",
                m.chunks.len(),
                m.total_rows(),
                m.tables.len()
            );
            Ok(())
        }
        BackupCommand::Verify {
            id,
            public_key: None,
        } => {
            let (store, provider) = open_for_backup(config).await?;
            let ours = backup::signing_public_key(&store).await?;
            store.close().await;
            let l = backup::local(target, &id).await?;
            let c = backup::verify(provider.as_ref(), &l.root, &id)?;
            say!(
                "Backup {id}: manifest authentic, {} chunks intact and decrypting, {} rows in {} tables as the manifest says.",
                c.manifest.chunks.len(),
                c.manifest.total_rows(),
                c.manifest.tables.len()
            );
            match (&c.signed_by, ours) {
                (Some(by), Some(ours)) if *by == ours => {
                    say!("Signed by this installation's backup-signing key {by}.")
                }
                (Some(by), _) => say!(
                    "Signed by backup-signing key {by}, which is not this installation's: the backup comes from another installation (or a store restored from one)."
                ),
                (None, _) => say!("Not signed (made before backups were signed); the MAC under the master key authenticates it."),
            }
            Ok(())
        }
        BackupCommand::Prune => {
            let all = backup::list_at(target).await?;
            let gone = backup::expired(
                &all,
                config.backup_keep_last as usize,
                config.backup_keep_daily as usize,
                config.backup_keep_weekly as usize,
                config.backup_keep_monthly as usize,
            );
            for id in &gone {
                backup::remove_at(target, id).await?;
                say!("Deleted backup {id}.");
            }
            let left = match target {
                backup::Location::Dir(d) => {
                    backup::remove_leftovers(d, std::time::Duration::from_secs(24 * 3600))?
                }
                backup::Location::S3 { .. } => 0,
            };
            if left > 0 {
                say!("Removed {left} leftovers of interrupted backups.");
            }
            say!("{} backups kept.", all.len() - gone.len());
            Ok(())
        }
    }
}

async fn restore_command(
    config: &Config,
    id: &str,
    into: &str,
    force: bool,
    commit: strongroom_server::backup::Commit,
) -> anyhow::Result<()> {
    // The configured store may be the restore's own target, resuming: it is
    // opened as it is, only for the master key.
    let store = strongroom_server::connect_store(config).await?;
    if store.restore_progress().await?.is_none() {
        store.migrate(SystemClock.now()).await?;
    }
    let (provider, _) = strongroom_server::open_key_provider(config, &store).await?;
    store.close().await;
    let url = if into.starts_with("postgres://") || into.starts_with("postgresql://") {
        into.to_owned()
    } else {
        let dir = Path::new(into);
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        dir.join("strongroom.db").to_string_lossy().into_owned()
    };
    let target = strongroom_store::Store::connect(&url, Default::default())
        .await
        .context("cannot open the restore target")?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let loc = strongroom_server::backup::Location::parse(&config.backup_target)?;
    let local = strongroom_server::backup::local(&loc, id).await?;
    let t = std::time::Instant::now();
    let result = strongroom_server::backup::restore(
        provider.as_ref(),
        &local.root,
        id,
        &target,
        force,
        commit,
        SystemClock.now(),
        &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .await;
    bar.finish_and_clear();
    let c = result?;
    target.close().await;
    say!(
        "Restored backup {id} ({} rows) in {:.1} s. Start the server on it with database_url = {}.",
        c.manifest.total_rows(),
        t.elapsed().as_secs_f64(),
        if url.starts_with("postgres") {
            "<that database>"
        } else {
            &url
        }
    );
    Ok(())
}

async fn drill_command(config: &Config, id: Option<&str>) -> anyhow::Result<()> {
    let (store, provider) = open_for_backup(config).await?;
    let clock: strongroom_core::clock::SharedClock = Arc::new(SystemClock);
    let loc = strongroom_server::backup::Location::parse(&config.backup_target)?;
    let probe = config.drill_probe();
    let r = strongroom_server::backup::drill_with_probe(
        &store,
        provider,
        &loc,
        id,
        &strongroom_server::alert_settings(config),
        &clock,
        probe.as_ref(),
    )
    .await?;
    store.close().await;
    for (name, ok, why) in &r.checks {
        say!("{:<16} {}  {why}", name, if *ok { "ok  " } else { "FAIL" });
    }
    say!(
        "Drill of backup {} {} in {:.1} s; recorded as evidence.",
        r.backup_id,
        if r.ok { "passed" } else { "FAILED" },
        r.seconds
    );
    if !r.ok {
        bail!("the restore drill failed; an incident was opened");
    }
    Ok(())
}

async fn standby(config: &Config, source: &Path, every: u64, once: bool) -> anyhow::Result<()> {
    let source = &strongroom_server::backup::Location::parse(source)?;
    let store = strongroom_server::open_store(config).await?;
    store.migrate(SystemClock.now()).await?;
    // Never a new master key here: the backups open only with the primary's.
    let (provider, _) = strongroom_server::open_key_provider_with(config, false)
        .await
        .context("a standby needs the primary's master key (copy the key file into key_dir, or use the same token)")?;
    loop {
        let now = SystemClock.now();
        let t = std::time::Instant::now();
        match strongroom_server::backup::standby_step(&store, provider.as_ref(), &config.data_dir, source, now).await {
            Ok(Some(m)) => say!(
                "Restored backup {} ({} rows) in {:.1} s; it is {} s behind the primary's backup time.",
                m.id,
                m.total_rows(),
                t.elapsed().as_secs_f64(),
                (SystemClock.now() - m.created_at).num_seconds()
            ),
            Ok(None) => {}
            Err(e) if once => return Err(e),
            Err(e) => {
                if strongroom_server::backup::read_standby(&config.data_dir)?
                    .is_some_and(|s| s.promoted)
                {
                    say!("Promoted; no longer following.");
                    break;
                }
                say!("standby: {e:#}; trying again in {every} s");
            }
        }
        if once {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(every.max(1))).await;
    }
    store.close().await;
    Ok(())
}
