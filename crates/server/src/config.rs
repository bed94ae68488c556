//! Configuration: built-in defaults, then a TOML file, then `STRONGROOM_*`
//! environment variables. Secrets may come from a file instead
//! (`database_url_file` / `STRONGROOM_DATABASE_URL_FILE`); giving a secret
//! both ways is refused. Every error names the key and the fix.

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const ENV_PREFIX: &str = "STRONGROOM_";

/// Keys whose values are secrets: they may be given as `KEY_FILE`, and are
/// never printed.
const SECRET_KEYS: &[&str] = &[
    "database_url",
    "pkcs11_pin",
    "alert_webhook_secret",
    "smtp_url",
    "drill_probe_password",
];

/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on (HTTPS).
    #[serde(default = "d_listen")]
    pub listen: String,
    /// Directory for the SQLite database and the generated TLS certificate.
    #[serde(default = "d_data_dir")]
    pub data_dir: PathBuf,
    /// Directory for the master key file; must not be inside `data_dir`.
    #[serde(default = "d_key_dir")]
    pub key_dir: PathBuf,
    /// Where the master key lives: `file` (in `key_dir`) or `pkcs11` (a token).
    #[serde(default = "d_key_provider")]
    pub key_provider: String,
    /// PKCS#11 module (shared library) for `key_provider = "pkcs11"`.
    #[serde(default)]
    pub pkcs11_module: Option<PathBuf>,
    /// Label of the PKCS#11 token.
    #[serde(default)]
    pub pkcs11_token: Option<String>,
    /// The token's user PIN (a secret; or `pkcs11_pin_file`).
    #[serde(default)]
    pkcs11_pin: Option<SecretString>,
    #[serde(default)]
    pkcs11_pin_file: Option<PathBuf>,
    /// Base label of the master key objects in the token.
    #[serde(default = "d_key_label")]
    pub pkcs11_key_label: String,
    /// SQLite file path or `postgres://...`; empty means `<data_dir>/strongroom.db`.
    #[serde(default)]
    database_url: Option<SecretString>,
    #[serde(default)]
    database_url_file: Option<PathBuf>,
    /// Connections in the database pool.
    #[serde(default = "d_db_connections")]
    pub db_max_connections: u32,
    /// PEM certificate chain; empty means a self-signed one generated in `<data_dir>/tls`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Proxies whose `X-Forwarded-For` is believed (addresses or CIDR ranges).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Client addresses allowed to read `/metrics`.
    #[serde(default = "d_metrics_allow")]
    pub metrics_allow: Vec<String>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "d_max_body")]
    pub max_body_bytes: usize,
    /// Most simultaneous client connections.
    #[serde(default = "d_max_conns")]
    pub max_connections: usize,
    /// Minutes of inactivity after which a session ends (10 to 1440).
    #[serde(default = "d_idle")]
    pub session_idle_minutes: i64,
    /// Hours after sign-in at which a session ends regardless (1 to 168).
    #[serde(default = "d_lifetime")]
    pub session_lifetime_hours: i64,
    /// Requests per second from one client address (twice that in a burst).
    #[serde(default = "d_rate_ip")]
    pub rate_limit_ip_per_second: u32,
    /// Requests per second for one company's users together.
    #[serde(default = "d_rate_company")]
    pub rate_limit_company_per_second: u32,
    /// Sign-in attempts per minute from one client address.
    #[serde(default = "d_rate_login")]
    pub login_rate_per_ip_per_minute: u32,
    /// Requests served at once; more get 503 with Retry-After.
    #[serde(default = "d_in_flight")]
    pub max_in_flight: usize,
    /// Longest time one request may take, reading its body included.
    #[serde(default = "d_timeout")]
    pub request_timeout_seconds: u64,
    /// Mail server for e-mail alerts: `smtps://user:pass@host:465` or
    /// `smtp://user:pass@host:587?tls=required` (a secret).
    #[serde(default)]
    smtp_url: Option<SecretString>,
    #[serde(default)]
    smtp_url_file: Option<PathBuf>,
    /// Sender of e-mail alerts, e.g. `Strongroom <strongroom@example.com>`.
    #[serde(default)]
    pub smtp_from: Option<String>,
    /// Recipients of e-mail alerts.
    #[serde(default)]
    pub smtp_to: Vec<String>,
    /// `host:port` of a syslog receiver (TCP) that gets every audit event.
    #[serde(default)]
    pub syslog_forward: Option<String>,
    /// Where intrusion alerts are POSTed (JSON); none means incidents only.
    #[serde(default)]
    pub alert_webhook_url: Option<String>,
    /// Key for the `X-Strongroom-Signature` HMAC of each alert (a secret).
    #[serde(default)]
    alert_webhook_secret: Option<SecretString>,
    #[serde(default)]
    alert_webhook_secret_file: Option<PathBuf>,
    /// Password hashes computed at once; 0 means one per CPU core.
    #[serde(default)]
    pub login_concurrency: usize,
    /// Added to the server's CPU niceness for the threads that hash
    /// passwords (0 to 19; 0 = the same priority as other requests). Above
    /// 0, with two hashing threads or more, one of them is an overflow
    /// thread in the idle scheduling class (see `HashPool`).
    #[serde(default = "d_login_hash_nice")]
    pub login_hash_nice: i64,
    /// `text` or `json`.
    #[serde(default = "d_log_format")]
    pub log_format: String,
    /// The address users reach the server at, e.g.
    /// `https://records.example.com`; passkeys are bound to its host name.
    /// Empty means `https://localhost:<listen port>`.
    #[serde(default)]
    pub public_origin: String,
    /// A file of passwords nobody may choose, besides the bundled list:
    /// one per line, either the password or its SHA-1 in hex (the
    /// "Pwned Passwords" format, `HASH:count`, is accepted). Empty: none.
    #[serde(default)]
    pub password_deny_list: String,
    /// Directory that holds backups (`strongroom backup create`, and the
    /// server's scheduled backups).
    #[serde(default = "d_backup_target")]
    pub backup_target: PathBuf,
    /// Minutes between scheduled backups (0: none).
    #[serde(default)]
    pub backup_interval_minutes: i64,
    /// When to take scheduled backups, as a five-field cron expression
    /// read in `schedule_timezone` (instead of `backup_interval_minutes`).
    #[serde(default)]
    pub backup_schedule: String,
    /// When to run restore drills, as a cron expression (instead of
    /// `drill_interval_days`).
    #[serde(default)]
    pub drill_schedule: String,
    /// The time zone the cron expressions are read in (IANA name).
    #[serde(default = "d_schedule_timezone")]
    pub schedule_timezone: String,
    /// Retention: the newest N backups, plus the newest of each of the last
    /// N days, ISO weeks and months.
    #[serde(default = "d_keep_last")]
    pub backup_keep_last: i64,
    #[serde(default = "d_keep_daily")]
    pub backup_keep_daily: i64,
    #[serde(default = "d_keep_weekly")]
    pub backup_keep_weekly: i64,
    #[serde(default = "d_keep_monthly")]
    pub backup_keep_monthly: i64,
    /// Days between scheduled restore drills of the newest backup (0: none).
    #[serde(default = "d_drill_days")]
    pub drill_interval_days: i64,
    /// An account drills sign in with on the restored store, as
    /// `COMPANY/USER` (empty: no sign-in check).
    #[serde(default)]
    pub drill_probe: String,
    /// Its password (a secret; or `drill_probe_password_file`).
    #[serde(default)]
    drill_probe_password: Option<SecretString>,
    #[serde(default)]
    drill_probe_password_file: Option<PathBuf>,
}

fn d_backup_target() -> PathBuf {
    "./strongroom-backups".into()
}
fn d_keep_last() -> i64 {
    7
}
fn d_keep_daily() -> i64 {
    7
}
fn d_keep_weekly() -> i64 {
    4
}
fn d_keep_monthly() -> i64 {
    12
}
fn d_drill_days() -> i64 {
    30
}

fn d_schedule_timezone() -> String {
    "UTC".into()
}

/// The public origin: given, or `https://localhost:<port>`. Passkeys need
/// a host name (not an IP address) and HTTPS.
fn public_origin(given: &str, listen: SocketAddr) -> Result<url::Url, ConfigError> {
    let text = if given.trim().is_empty() {
        format!("https://localhost:{}", listen.port())
    } else {
        given.trim().to_owned()
    };
    let url = url::Url::parse(&text).map_err(|_| {
        cerr(format!(
            "public_origin: '{text}' is not a URL such as https://records.example.com"
        ))
    })?;
    if url.scheme() != "https" || url.domain().is_none() || url.path() != "/" {
        return Err(cerr(format!(
            "public_origin: '{text}' must be https:// with a host name (not an IP address) and no path"
        )));
    }
    Ok(url)
}

fn d_listen() -> String {
    "127.0.0.1:8443".into()
}
fn d_data_dir() -> PathBuf {
    "./strongroom-data".into()
}
fn d_key_dir() -> PathBuf {
    "./strongroom-keys".into()
}
fn d_key_provider() -> String {
    "file".into()
}
fn d_key_label() -> String {
    "strongroom-master".into()
}
fn d_login_hash_nice() -> i64 {
    10
}
fn d_db_connections() -> u32 {
    16
}
fn d_metrics_allow() -> Vec<String> {
    vec!["127.0.0.1/32".into(), "::1/128".into()]
}
fn d_max_body() -> usize {
    1 << 20
}
fn d_max_conns() -> usize {
    1024
}
fn d_rate_ip() -> u32 {
    100
}
fn d_rate_company() -> u32 {
    500
}
fn d_rate_login() -> u32 {
    20
}
fn d_in_flight() -> usize {
    512
}
fn d_timeout() -> u64 {
    30
}
fn d_idle() -> i64 {
    30
}
fn d_lifetime() -> i64 {
    12
}
fn d_log_format() -> String {
    "text".into()
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("key_dir", &self.key_dir)
            .field("database", &self.database_kind())
            .field("trusted_proxies", &self.trusted_proxies)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

fn cerr(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Checked values derived from the configuration.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub listen: SocketAddr,
    /// Where users reach the server (passkeys are bound to its host).
    pub public_origin: url::Url,
    pub trusted_proxies: Vec<IpNet>,
    pub metrics_allow: Vec<IpNet>,
}

impl Config {
    /// Defaults only (no file, no environment).
    pub fn defaults() -> Config {
        Config {
            listen: d_listen(),
            data_dir: d_data_dir(),
            key_dir: d_key_dir(),
            key_provider: d_key_provider(),
            pkcs11_module: None,
            pkcs11_token: None,
            pkcs11_pin: None,
            pkcs11_pin_file: None,
            pkcs11_key_label: d_key_label(),
            database_url: None,
            database_url_file: None,
            db_max_connections: d_db_connections(),
            tls_cert: None,
            tls_key: None,
            trusted_proxies: Vec::new(),
            metrics_allow: d_metrics_allow(),
            max_body_bytes: d_max_body(),
            max_connections: d_max_conns(),
            session_idle_minutes: d_idle(),
            session_lifetime_hours: d_lifetime(),
            rate_limit_ip_per_second: d_rate_ip(),
            rate_limit_company_per_second: d_rate_company(),
            login_rate_per_ip_per_minute: d_rate_login(),
            max_in_flight: d_in_flight(),
            request_timeout_seconds: d_timeout(),
            smtp_url: None,
            smtp_url_file: None,
            smtp_from: None,
            smtp_to: Vec::new(),
            syslog_forward: None,
            alert_webhook_url: None,
            alert_webhook_secret: None,
            alert_webhook_secret_file: None,
            login_concurrency: 0,
            login_hash_nice: d_login_hash_nice(),
            log_format: d_log_format(),
            public_origin: String::new(),
            password_deny_list: String::new(),
            backup_target: d_backup_target(),
            backup_interval_minutes: 0,
            backup_schedule: String::new(),
            drill_schedule: String::new(),
            schedule_timezone: d_schedule_timezone(),
            backup_keep_last: d_keep_last(),
            backup_keep_daily: d_keep_daily(),
            backup_keep_weekly: d_keep_weekly(),
            backup_keep_monthly: d_keep_monthly(),
            drill_interval_days: d_drill_days(),
            drill_probe: String::new(),
            drill_probe_password: None,
            drill_probe_password_file: None,
        }
    }

    /// Reads the file (if any), then the environment, then checks the result.
    pub fn load(
        file: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<(Config, Resolved), ConfigError> {
        let mut table = match file {
            Some(p) => read_table(p)?,
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let mut cfg: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| cerr(describe_toml_error(&e, file)))?;
        cfg.resolve_secret_files()?;
        let resolved = cfg.check()?;
        Ok((cfg, resolved))
    }

    /// The database URL to use (a secret: never log it).
    pub fn database_url(&self) -> SecretString {
        match &self.database_url {
            Some(u) if !u.expose_secret().trim().is_empty() => u.clone(),
            _ => SecretString::from(
                self.data_dir
                    .join("strongroom.db")
                    .to_string_lossy()
                    .into_owned(),
            ),
        }
    }

    pub fn set_database_url(&mut self, url: &str) {
        self.database_url = Some(SecretString::from(url.to_owned()));
    }

    /// `sqlite` or `postgres`, for messages.
    pub fn database_kind(&self) -> &'static str {
        let url = self.database_url();
        let u = url.expose_secret();
        if u.starts_with("postgres://") || u.starts_with("postgresql://") {
            "postgres"
        } else {
            "sqlite"
        }
    }

    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        resolve_secret(
            "database_url",
            &mut self.database_url,
            self.database_url_file.take(),
        )?;
        resolve_secret(
            "pkcs11_pin",
            &mut self.pkcs11_pin,
            self.pkcs11_pin_file.take(),
        )?;
        resolve_secret("smtp_url", &mut self.smtp_url, self.smtp_url_file.take())?;
        resolve_secret(
            "drill_probe_password",
            &mut self.drill_probe_password,
            self.drill_probe_password_file.take(),
        )?;
        resolve_secret(
            "alert_webhook_secret",
            &mut self.alert_webhook_secret,
            self.alert_webhook_secret_file.take(),
        )?;
        Ok(())
    }

    pub fn smtp_url(&self) -> Option<SecretString> {
        self.smtp_url.clone()
    }

    pub fn alert_webhook_secret(&self) -> Option<SecretString> {
        self.alert_webhook_secret.clone()
    }

    /// When the server takes backups: `backup_schedule`, or every
    /// `backup_interval_minutes`, or never.
    pub fn backup_cadence(&self) -> anyhow::Result<Option<crate::backup::Cadence>> {
        self.cadence(
            &self.backup_schedule,
            (self.backup_interval_minutes > 0).then(|| self.backup_interval_minutes * 60),
        )
    }

    /// When the server drills: `drill_schedule`, or every
    /// `drill_interval_days` while it also takes scheduled backups, or
    /// never.
    pub fn drill_cadence(&self) -> anyhow::Result<Option<crate::backup::Cadence>> {
        let backups = self.backup_cadence()?.is_some();
        self.cadence(
            &self.drill_schedule,
            (backups && self.drill_interval_days > 0).then(|| self.drill_interval_days * 24 * 3600),
        )
    }

    /// `schedule` (a cron expression in `schedule_timezone`) when set, else
    /// every `every_secs` seconds when given, else never.
    fn cadence(
        &self,
        schedule: &str,
        every_secs: Option<i64>,
    ) -> anyhow::Result<Option<crate::backup::Cadence>> {
        use crate::backup::Cadence;
        if !schedule.trim().is_empty() {
            return Cadence::cron(schedule, &self.schedule_timezone).map(Some);
        }
        Ok(every_secs.map(|s| Cadence::Every(std::time::Duration::from_secs(s.unsigned_abs()))))
    }

    /// The drill's probe account: company, user and password.
    pub fn drill_probe(&self) -> Option<(String, String, SecretString)> {
        let (c, u) = self.drill_probe.trim().split_once('/')?;
        Some((
            c.to_owned(),
            u.to_owned(),
            self.drill_probe_password.clone()?,
        ))
    }

    /// PKCS#11 settings, when `key_provider = "pkcs11"`.
    pub fn pkcs11(&self) -> Option<strongroom_crypto::pkcs11::Pkcs11Settings> {
        if self.key_provider != "pkcs11" {
            return None;
        }
        Some(strongroom_crypto::pkcs11::Pkcs11Settings {
            module: self.pkcs11_module.clone()?,
            token_label: self.pkcs11_token.clone()?,
            pin: self.pkcs11_pin.clone()?,
            key_label: self.pkcs11_key_label.clone(),
        })
    }

    fn check(&self) -> Result<Resolved, ConfigError> {
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            cerr(format!(
                "listen: '{}' is not an address and port such as 127.0.0.1:8443",
                self.listen
            ))
        })?;
        let nets = |key: &str, list: &[String]| -> Result<Vec<IpNet>, ConfigError> {
            list.iter()
                .map(|s| parse_net(s).ok_or_else(|| cerr(format!(
                    "{key}: '{s}' is not an IP address or CIDR range such as 10.0.0.0/8 or 2001:db8::/32"
                ))))
                .collect()
        };
        let trusted_proxies = nets("trusted_proxies", &self.trusted_proxies)?;
        let metrics_allow = nets("metrics_allow", &self.metrics_allow)?;
        range("session_idle_minutes", self.session_idle_minutes, 10, 1440)?;
        range(
            "session_lifetime_hours",
            self.session_lifetime_hours,
            1,
            168,
        )?;
        range("max_body_bytes", self.max_body_bytes as i64, 1024, 64 << 20)?;
        range("max_connections", self.max_connections as i64, 1, 100_000)?;
        range(
            "db_max_connections",
            i64::from(self.db_max_connections),
            1,
            1000,
        )?;
        range("login_concurrency", self.login_concurrency as i64, 0, 256)?;
        range("login_hash_nice", self.login_hash_nice, 0, 19)?;
        range(
            "rate_limit_ip_per_second",
            i64::from(self.rate_limit_ip_per_second),
            1,
            1_000_000,
        )?;
        range(
            "rate_limit_company_per_second",
            i64::from(self.rate_limit_company_per_second),
            1,
            1_000_000,
        )?;
        range(
            "login_rate_per_ip_per_minute",
            i64::from(self.login_rate_per_ip_per_minute),
            1,
            100_000,
        )?;
        range("max_in_flight", self.max_in_flight as i64, 1, 1_000_000)?;
        range(
            "backup_interval_minutes",
            self.backup_interval_minutes,
            0,
            525_600,
        )?;
        range("backup_keep_last", self.backup_keep_last, 1, 10_000)?;
        range("backup_keep_daily", self.backup_keep_daily, 0, 10_000)?;
        range("backup_keep_weekly", self.backup_keep_weekly, 0, 10_000)?;
        range("backup_keep_monthly", self.backup_keep_monthly, 0, 10_000)?;
        range("drill_interval_days", self.drill_interval_days, 0, 3650)?;
        if !self.backup_schedule.trim().is_empty() && self.backup_interval_minutes > 0 {
            return Err(cerr(
                "set backup_schedule or backup_interval_minutes, not both",
            ));
        }
        self.backup_cadence()
            .map_err(|e| cerr(format!("backup_schedule: {e:#}")))?;
        self.drill_cadence()
            .map_err(|e| cerr(format!("drill_schedule: {e:#}")))?;
        if !self.drill_probe.trim().is_empty()
            && (!self.drill_probe.contains('/') || self.drill_probe_password.is_none())
        {
            return Err(cerr(
                "drill_probe: give COMPANY/USER, and its password as drill_probe_password or drill_probe_password_file",
            ));
        }
        if self.backup_target.starts_with(&self.data_dir) {
            return Err(cerr(
                "backup_target: must not be inside data_dir (a backup on the same disk as the data proves little)",
            ));
        }
        range(
            "request_timeout_seconds",
            self.request_timeout_seconds as i64,
            1,
            3600,
        )?;
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(cerr("log_format must be \"text\" or \"json\""));
        }
        if let Some(u) = &self.alert_webhook_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return Err(cerr("alert_webhook_url must be an http:// or https:// URL"));
            }
        }
        if let Some(t) = &self.syslog_forward {
            let ok = t
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(cerr(format!(
                    "syslog_forward: '{t}' is not host:port, such as siem.internal:6514"
                )));
            }
        }
        match self.key_provider.as_str() {
            "file" => {}
            "pkcs11" => {
                for (key, missing) in [
                    ("pkcs11_module", self.pkcs11_module.is_none()),
                    ("pkcs11_token", self.pkcs11_token.is_none()),
                    ("pkcs11_pin", self.pkcs11_pin.is_none()),
                ] {
                    if missing {
                        return Err(cerr(format!(
                            "key_provider = \"pkcs11\" needs {key} (see the README's configuration table)"
                        )));
                    }
                }
            }
            other => {
                return Err(cerr(format!(
                    "key_provider must be \"file\" or \"pkcs11\", not \"{other}\""
                )))
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(cerr(
                "tls_cert and tls_key go together: give both, or neither for a generated self-signed certificate",
            ));
        }
        strongroom_store::normalise_url(self.database_url().expose_secret())
            .map_err(|e| cerr(format!("database_url: {e}")))?;
        let public_origin = public_origin(&self.public_origin, listen)?;
        Ok(Resolved {
            listen,
            public_origin,
            trusted_proxies,
            metrics_allow,
        })
    }
}

fn range(key: &str, v: i64, min: i64, max: i64) -> Result<(), ConfigError> {
    if v < min || v > max {
        Err(cerr(format!(
            "{key} must be between {min} and {max}, not {v}"
        )))
    } else {
        Ok(())
    }
}

/// An address (`10.0.0.1`) or a network (`10.0.0.0/8`), parsed as a network,
/// never compared as a string prefix.
pub fn parse_net(s: &str) -> Option<IpNet> {
    strongroom_core::ip_policy::parse_network(s)
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| cerr(format!("cannot read config file {}: {e}", path.display())))?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(cerr(format!(
            "config file {} is larger than 1 MiB; is it the right file?",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| cerr(format!("cannot read config file {}: {e}", path.display())))?;
    text.parse::<toml::Table>()
        .map_err(|e| cerr(describe_toml_error(&e, Some(path))))
}

fn describe_toml_error(e: &toml::de::Error, file: Option<&Path>) -> String {
    let place = file
        .map(|p| format!("in {}: ", p.display()))
        .unwrap_or_default();
    // toml's message names the key (e.g. "unknown field `lisen`, expected one of ...").
    let msg = e.message().replace('\n', " ");
    format!("{place}{msg}")
}

fn resolve_secret(
    key: &str,
    value: &mut Option<SecretString>,
    file: Option<PathBuf>,
) -> Result<(), ConfigError> {
    if let Some(path) = file {
        if value.is_some() {
            return Err(cerr(format!(
                "{key} is given both directly and as {key}_file; keep one"
            )));
        }
        *value = Some(read_secret_file(&format!("{key}_file"), &path)?);
    }
    Ok(())
}

fn read_secret_file(key: &str, path: &Path) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| cerr(format!("{key}: cannot read {}: {e}", path.display())))?;
    let v = text.trim_end_matches(['\n', '\r']).to_owned();
    if v.is_empty() {
        return Err(cerr(format!("{key}: {} is empty", path.display())));
    }
    Ok(SecretString::from(v))
}

/// Overlays `STRONGROOM_<KEY>` variables. Each value is read with the type of
/// the key's default: numbers as numbers, lists comma-separated.
fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Result<(), ConfigError> {
    let defaults = defaults_table();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let key = rest.to_ascii_lowercase();
        if let Some(secret) = key.strip_suffix("_file") {
            if SECRET_KEYS.contains(&secret) {
                if env
                    .iter()
                    .any(|(n, _)| n == &format!("{ENV_PREFIX}{}", secret.to_ascii_uppercase()))
                {
                    return Err(cerr(format!(
                        "{name} and {ENV_PREFIX}{} are both set; keep one",
                        secret.to_ascii_uppercase()
                    )));
                }
                table.remove(secret);
                table.insert(key.clone(), toml::Value::String(value.clone()));
                continue;
            }
        }
        let Some(default) = defaults.get(&key) else {
            // Other STRONGROOM_* variables (e.g. STRONGROOM_CONFIG) are not keys.
            continue;
        };
        if SECRET_KEYS.contains(&key.as_str()) {
            table.remove(&format!("{key}_file"));
        }
        let v = match default {
            toml::Value::Integer(_) => value
                .trim()
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| cerr(format!("{name}: '{value}' is not a whole number")))?,
            toml::Value::Array(_) => toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ),
            _ => toml::Value::String(value.clone()),
        };
        table.insert(key, v);
    }
    Ok(())
}

/// The keys and the types of their values, for reading the environment.
fn defaults_table() -> toml::Table {
    let c = Config::defaults();
    let mut t = toml::Table::new();
    let s = |v: &str| toml::Value::String(v.to_owned());
    let i = |v: i64| toml::Value::Integer(v);
    let a = || toml::Value::Array(Vec::new());
    t.insert("listen".into(), s(&c.listen));
    t.insert("data_dir".into(), s(""));
    t.insert("key_dir".into(), s(""));
    t.insert("key_provider".into(), s(""));
    t.insert("pkcs11_module".into(), s(""));
    t.insert("pkcs11_token".into(), s(""));
    t.insert("pkcs11_pin".into(), s(""));
    t.insert("pkcs11_key_label".into(), s(""));
    t.insert("database_url".into(), s(""));
    t.insert("db_max_connections".into(), i(0));
    t.insert("tls_cert".into(), s(""));
    t.insert("tls_key".into(), s(""));
    t.insert("trusted_proxies".into(), a());
    t.insert("metrics_allow".into(), a());
    t.insert("max_body_bytes".into(), i(0));
    t.insert("max_connections".into(), i(0));
    t.insert("session_idle_minutes".into(), i(0));
    t.insert("session_lifetime_hours".into(), i(0));
    t.insert("login_concurrency".into(), i(0));
    t.insert("login_hash_nice".into(), i(0));
    t.insert("alert_webhook_url".into(), s(""));
    t.insert("syslog_forward".into(), s(""));
    t.insert("smtp_url".into(), s(""));
    t.insert("smtp_from".into(), s(""));
    t.insert("smtp_to".into(), a());
    t.insert("alert_webhook_secret".into(), s(""));
    t.insert("rate_limit_ip_per_second".into(), i(0));
    t.insert("rate_limit_company_per_second".into(), i(0));
    t.insert("login_rate_per_ip_per_minute".into(), i(0));
    t.insert("max_in_flight".into(), i(0));
    t.insert("request_timeout_seconds".into(), i(0));
    t.insert("log_format".into(), s(""));
    t.insert("public_origin".into(), s(""));
    t.insert("password_deny_list".into(), s(""));
    t.insert("backup_target".into(), s(""));
    t.insert("drill_probe".into(), s(""));
    t.insert("backup_schedule".into(), s(""));
    t.insert("drill_schedule".into(), s(""));
    t.insert("schedule_timezone".into(), s(""));
    t.insert("drill_probe_password".into(), s(""));
    for k in [
        "backup_interval_minutes",
        "backup_keep_last",
        "backup_keep_daily",
        "backup_keep_weekly",
        "backup_keep_monthly",
        "drill_interval_days",
    ] {
        t.insert(k.into(), i(0));
    }
    t
}

/// The environment as (name, value) pairs, for [`Config::load`].
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_are_valid() {
        let (c, r) = Config::load(None, &[]).unwrap();
        assert_eq!(r.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.database_kind(), "sqlite");
        assert!(c
            .database_url()
            .expose_secret()
            .ends_with("strongroom-data/strongroom.db"));
    }

    #[test]
    fn env_overrides_file() {
        let f = write("listen = \"127.0.0.1:9000\"\nsession_idle_minutes = 20\n");
        let (c, r) = Config::load(
            Some(f.path()),
            &env(&[
                ("STRONGROOM_SESSION_IDLE_MINUTES", "45"),
                ("STRONGROOM_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1"),
            ]),
        )
        .unwrap();
        assert_eq!(r.listen.port(), 9000);
        assert_eq!(c.session_idle_minutes, 45);
        assert_eq!(r.trusted_proxies.len(), 2);
    }

    #[test]
    fn errors_name_the_key() {
        let f = write("lisen = \"x\"\n");
        let e = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = Config::load(None, &env(&[("STRONGROOM_LISTEN", "nope")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
        let e = Config::load(None, &env(&[("STRONGROOM_SESSION_IDLE_MINUTES", "5")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("session_idle_minutes"), "{e}");
        let e = Config::load(None, &env(&[("STRONGROOM_TRUSTED_PROXIES", "10.0.0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("trusted_proxies"), "{e}");
        let e = Config::load(None, &env(&[("STRONGROOM_DATABASE_URL", "mysql://x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("database_url"), "{e}");
    }

    #[test]
    fn secret_from_file_and_refused_both_ways() {
        let secret = write("postgres://u:pw@localhost/db\n");
        let p = secret.path().to_string_lossy().to_string();
        let (c, _) = Config::load(None, &env(&[("STRONGROOM_DATABASE_URL_FILE", &p)])).unwrap();
        assert_eq!(
            c.database_url().expose_secret(),
            "postgres://u:pw@localhost/db"
        );
        assert!(!format!("{c:?}").contains("pw"));
        let e = Config::load(
            None,
            &env(&[
                ("STRONGROOM_DATABASE_URL_FILE", &p),
                ("STRONGROOM_DATABASE_URL", "postgres://x"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("both"), "{e}");
        let f = write(&format!(
            "database_url = \"x.db\"\ndatabase_url_file = \"{p}\"\n"
        ));
        assert!(Config::load(Some(f.path()), &[]).is_err());
    }
}
