//! Intrusion detection and response: stored audit events flow into the
//! detectors (one task per server); what fires opens an incident, sends an
//! alert and applies the rule's response (block the address, lock the
//! account, end the sessions). Blocks and locks live in the store, so they
//! hold across restarts; this node keeps the blocks in memory for its
//! per-request checks and reloads them every minute (other nodes' blocks
//! apply within that minute).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use chrono::{DateTime, Timelike, Utc};
use hmac_sig::sign_payload;
use strongroom_core::audit::{AuditEvent, SERVER_CHAIN};
use strongroom_core::clock::SharedClock;
use strongroom_core::detect::{interest, Detector, Engine, Finding, Interest, Response, Rule};
use strongroom_core::{CompanyId, UserKey};
use strongroom_store::{AddressBlock, Store};
use tokio::sync::{mpsc, Notify};

/// Addresses refused per company (chain) or server-wide (chain 0).
#[derive(Default)]
pub struct Blocks {
    map: RwLock<HashMap<(i64, IpAddr), DateTime<Utc>>>,
}

impl Blocks {
    pub fn is_blocked(&self, chain: i64, ip: IpAddr, now: DateTime<Utc>) -> bool {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        [chain, SERVER_CHAIN]
            .iter()
            .any(|c| map.get(&(*c, ip)).is_some_and(|until| *until > now))
    }

    /// Like [`Blocks::is_blocked`], but also asks the store, so a block that
    /// another node made in the last minute applies here at once. For the
    /// sign-in steps (which hash a password anyway), not for every request.
    pub async fn is_blocked_fresh(
        &self,
        store: &Store,
        chain: i64,
        ip: IpAddr,
        now: DateTime<Utc>,
    ) -> strongroom_store::StoreResult<bool> {
        if self.is_blocked(chain, ip, now) {
            return Ok(true);
        }
        let found = store
            .address_blocked_until((chain, SERVER_CHAIN), &ip.to_string(), now)
            .await?;
        if let Some((c, until)) = found {
            self.add(c, ip, until);
            return Ok(true);
        }
        Ok(false)
    }

    pub(crate) fn add(&self, chain: i64, ip: IpAddr, until: DateTime<Utc>) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((chain, ip), until);
    }

    /// Replaces the in-memory view with the store's.
    pub async fn reload(
        &self,
        store: &Store,
        now: DateTime<Utc>,
    ) -> strongroom_store::StoreResult<()> {
        let mut fresh = HashMap::new();
        for b in store.active_blocks(now).await? {
            if let Ok(ip) = b.address.parse::<IpAddr>() {
                fresh.insert((b.chain, ip), b.until);
            }
        }
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

enum Input {
    /// With their places in the queue's bound, given back once examined.
    Events(Vec<AuditEvent>, tokio::sync::OwnedSemaphorePermit),
    Findings(Vec<Finding>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The detectors' front door. Feeding never blocks a request: if the
/// detectors fall far behind, events are dropped from detection (they are
/// stored in the audit log regardless) and a warning is logged.
#[derive(Clone)]
pub struct Detection {
    tx: mpsc::Sender<Input>,
    /// Places for reads waiting to be examined (see [`MAX_QUEUED_EVENTS`]).
    reads: Arc<tokio::sync::Semaphore>,
    /// Places for denials, apart (see [`MAX_QUEUED_DENIALS`]).
    denials: Arc<tokio::sync::Semaphore>,
    /// Events refused for want of a place (a metric).
    skipped: prometheus_client::metrics::counter::Counter,
    /// Each company's rules, shared by the detector task and the sign-in
    /// checks.
    rules: Arc<RuleCache>,
}

/// Each company's detector rules as last read, and when (see
/// [`RULES_FRESH_SECS`]).
#[derive(Default)]
struct RuleCache(std::sync::Mutex<HashMap<i64, ReadRules>>);

/// A company's rules, and when they were read.
type ReadRules = (Arc<Vec<Rule>>, Instant);

impl RuleCache {
    /// A company's rules, read from the store at most every
    /// [`RULES_FRESH_SECS`].
    async fn get(
        &self,
        store: &Store,
        chain: i64,
    ) -> strongroom_store::StoreResult<Arc<Vec<Rule>>> {
        let cached = {
            let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&chain)
                .filter(|(_, at)| at.elapsed().as_secs() < RULES_FRESH_SECS)
                .map(|(r, _)| r.clone())
        };
        if let Some(r) = cached {
            return Ok(r);
        }
        let r = Arc::new(store.detector_rules(chain).await?);
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= 10_000 {
            map.clear();
        }
        map.insert(chain, (r.clone(), Instant::now()));
        Ok(r)
    }

    fn forget(&self, chain: i64) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&chain);
    }
}

/// How long a company's detector rules are used before they are read
/// again. A change made through this node applies at once (see
/// [`Detection::rules_changed`]); one made through another node, within
/// this long.
const RULES_FRESH_SECS: u64 = 30;

/// Reads waiting to be examined, at most. The queue is bounded in events,
/// not in batches (the audit log hands over up to 512 at a time), so a
/// detector that falls behind holds a known amount of memory (well under
/// 100 MB with [`MAX_QUEUED_DENIALS`]) rather than millions of events.
/// Events that no detector counts ([`Interest::None`]) are not queued.
pub const MAX_QUEUED_EVENTS: usize = 65_536;

/// Denials (failed sign-ins, refused requests) waiting to be examined, at
/// most, in places of their own: reads, which anyone signed in can make by
/// the thousand, cannot crowd them out.
pub const MAX_QUEUED_DENIALS: usize = 16_384;

/// Where alerts go.
#[derive(Clone, Default)]
pub struct AlertSettings {
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<secrecy::SecretString>,
    /// `smtps://user:pass@host:465`, `smtp://host:587?tls=required`, ... (a secret).
    pub smtp_url: Option<secrecy::SecretString>,
    pub smtp_from: Option<String>,
    pub smtp_to: Vec<String>,
}

impl AlertSettings {
    pub fn channels(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.webhook_url.is_some() {
            c.push("webhook");
        }
        if self.smtp_url.is_some() && self.smtp_from.is_some() && !self.smtp_to.is_empty() {
            c.push("email");
        }
        c
    }
}

impl Detection {
    pub fn start(
        store: Store,
        clock: SharedClock,
        blocks: Arc<Blocks>,
        alerts: AlertSettings,
        skipped: prometheus_client::metrics::counter::Counter,
    ) -> Detection {
        Self::start_bounded(
            store,
            clock,
            blocks,
            alerts,
            skipped,
            (MAX_QUEUED_EVENTS, MAX_QUEUED_DENIALS),
        )
    }

    fn start_bounded(
        store: Store,
        clock: SharedClock,
        blocks: Arc<Blocks>,
        alerts: AlertSettings,
        skipped: prometheus_client::metrics::counter::Counter,
        (max_reads, max_denials): (usize, usize),
    ) -> Detection {
        // Every event batch holds at least one place, so batches are
        // bounded by the event bounds too.
        let (tx, rx) = mpsc::channel(max_reads + max_denials + 64);
        let notify = Arc::new(Notify::new());
        let rules = Arc::new(RuleCache::default());
        tokio::spawn(detector_task(
            store.clone(),
            clock.clone(),
            blocks,
            rx,
            notify.clone(),
            alerts.channels(),
            rules.clone(),
        ));
        tokio::spawn(crate::detection::deliver_alerts(
            store, clock, alerts, notify,
        ));
        Detection {
            tx,
            reads: Arc::new(tokio::sync::Semaphore::new(max_reads)),
            denials: Arc::new(tokio::sync::Semaphore::new(max_denials)),
            skipped,
            rules,
        }
    }

    /// Returns once everything fed before has been examined and responded
    /// to (for tests and orderly shutdown).
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Input::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// A company's rules changed: use them from the next event on.
    pub fn rules_changed(&self, chain: i64) {
        self.rules.forget(chain);
    }

    /// Hands events to the detector: reads and denials each to their own
    /// places in its queue, and nothing that no detector counts. `false`
    /// (and a warning in the log) when some will not be examined because
    /// their places are all taken.
    pub fn feed(&self, events: Vec<AuditEvent>) -> bool {
        let (mut reads, mut denials) = (Vec::new(), Vec::new());
        for e in events {
            match interest(&e) {
                Interest::Reads => reads.push(e),
                Interest::Denials => denials.push(e),
                Interest::None => {}
            }
        }
        let denials_taken = self.queue(denials, &self.denials, "denials");
        self.queue(reads, &self.reads, "reads") && denials_taken
    }

    fn queue(
        &self,
        events: Vec<AuditEvent>,
        places: &Arc<tokio::sync::Semaphore>,
        kind: &'static str,
    ) -> bool {
        if events.is_empty() {
            return true;
        }
        let n = u32::try_from(events.len()).unwrap_or(u32::MAX);
        let sent = match places.clone().try_acquire_many_owned(n) {
            Ok(places) => self.tx.try_send(Input::Events(events, places)).is_ok(),
            Err(_) => false,
        };
        if !sent {
            self.skipped.inc_by(u64::from(n));
            tracing::warn!(
                events = n,
                kind,
                "intrusion detection is lagging; some events were not examined"
            );
        }
        sent
    }

    fn report(&self, findings: Vec<Finding>) {
        if !findings.is_empty() && self.tx.try_send(Input::Findings(findings)).is_err() {
            tracing::warn!("intrusion detection is lagging; a finding was dropped");
        }
    }

    /// After a successful sign-in: a never-seen address, or an hour the user
    /// never signs in at, is a finding.
    #[allow(clippy::too_many_arguments)]
    pub async fn after_sign_in(
        &self,
        store: &Store,
        company: CompanyId,
        user: UserKey,
        user_id: &str,
        ip: IpAddr,
        now: DateTime<Utc>,
    ) -> strongroom_store::StoreResult<()> {
        let (addr_seen, hour_seen, total) = store
            .note_sign_in(company, user, &ip.to_string(), now.hour())
            .await?;
        let rules = self.rules.get(store, company.0).await?;
        let rule = |d| rules.iter().find(|r: &&Rule| r.detector == d && r.enabled);
        let mut out = Vec::new();
        let mk = |r: &Rule, summary: String| Finding {
            chain: company.0,
            detector: r.detector,
            response: r.response,
            subject: format!("user:{user_id}"),
            client_ip: Some(ip.to_string()),
            summary,
            block_for: r.block_for,
        };
        if let Some(r) = rule(Detector::NewAddress) {
            if total > 0 && addr_seen == 0 {
                out.push(mk(
                    r,
                    format!("new_address: first sign-in of {user_id} from {ip}"),
                ));
            }
        }
        if let Some(r) = rule(Detector::OffHours) {
            if total >= i64::from(r.threshold) && hour_seen == 0 {
                out.push(mk(
                    r,
                    format!("off_hours: {user_id} signed in at {:02}:00 UTC, an hour never used in {total} sign-ins", now.hour()),
                ));
            }
        }
        self.report(out);
        Ok(())
    }
}

async fn detector_task(
    store: Store,
    clock: SharedClock,
    blocks: Arc<Blocks>,
    mut rx: mpsc::Receiver<Input>,
    notify: Arc<Notify>,
    channels: Vec<&'static str>,
    rules: Arc<RuleCache>,
) {
    let mut engine = Engine::default();
    while let Some(input) = rx.recv().await {
        let findings = match input {
            Input::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Input::Findings(f) => f,
            Input::Events(events, _places) => {
                let mut found = Vec::new();
                for e in events {
                    match rules.get(&store, e.chain).await {
                        Ok(company_rules) => found.extend(engine.observe(&e, &company_rules)),
                        Err(err) => tracing::warn!(error = %err, "cannot load detector rules"),
                    }
                }
                found
            }
        };
        for f in findings {
            if let Err(err) = respond(&store, &clock, &blocks, &f, &channels).await {
                tracing::error!(error = %err, detector = f.detector.as_str(), "could not respond to a detection");
            }
            notify.notify_one();
        }
    }
}

/// Opens the incident, applies the response, records both, queues the alert.
async fn respond(
    store: &Store,
    clock: &SharedClock,
    blocks: &Blocks,
    f: &Finding,
    channels: &[&'static str],
) -> anyhow::Result<()> {
    let now = clock.now();
    let id = store
        .open_incident(
            f.chain,
            f.detector.as_str(),
            &f.subject,
            &f.summary,
            f.response.as_str(),
            now,
        )
        .await?;
    tracing::warn!(incident = id, chain = f.chain, detector = f.detector.as_str(), subject = %f.subject, "INTRUSION DETECTED: {}", f.summary);
    let mut applied = f.response.as_str().to_owned();
    match f.response {
        Response::Alert => {}
        Response::BlockAddress => {
            if let Some(ip) = f
                .client_ip
                .as_deref()
                .and_then(|s| s.parse::<IpAddr>().ok())
            {
                let until = now + f.block_for;
                store
                    .block_address(
                        &AddressBlock {
                            chain: f.chain,
                            address: ip.to_string(),
                            until,
                            reason: format!("incident {id}: {}", f.detector.as_str()),
                        },
                        now,
                    )
                    .await?;
                blocks.add(f.chain, ip, until);
            }
        }
        Response::LockAccount | Response::EndSessions => {
            let user = match f.subject.strip_prefix("user:") {
                Some(u) if f.chain != SERVER_CHAIN => store.user(CompanyId(f.chain), u).await?,
                _ => None,
            };
            match user {
                Some(u) if f.response == Response::LockAccount => {
                    store
                        .lock_account(
                            CompanyId(f.chain),
                            u.key,
                            now + f.block_for,
                            &format!("incident {id}"),
                        )
                        .await?;
                }
                Some(u) => {
                    store.end_sessions_of(CompanyId(f.chain), u.key).await?;
                }
                // The account does not exist (a guessed name): nothing to lock.
                None => applied = "alert".into(),
            }
        }
    }
    let company = match f.chain {
        SERVER_CHAIN => None,
        c => store.company_code(CompanyId(c)).await?,
    };
    store
        .append_audit(&[AuditEvent {
            reason: Some(f.detector.as_str().into()),
            detail: serde_json::json!({
                "subject": f.subject, "response": applied, "summary": f.summary,
                "until": (applied == "block_address" || applied == "lock_account").then(|| now + f.block_for),
            })
            .to_string(),
            client_ip: f.client_ip.clone(),
            ..AuditEvent::new(f.chain, now, "system", "incident.open", format!("incident/{id}"))
        }])
        .await?;
    let payload = serde_json::json!({
        "type": "strongroom.incident",
        "incident": id,
        "company": company,
        "detector": f.detector.as_str(),
        "subject": f.subject,
        "client_ip": f.client_ip,
        "summary": f.summary,
        "response": applied,
        "at": now,
    });
    // One outbox entry per channel, so each is retried on its own.
    for channel in channels {
        let mut p = payload.clone();
        p["channel"] = serde_json::Value::from(*channel);
        store.enqueue_alert(&p.to_string(), now).await?;
    }
    Ok(())
}

/// HMAC signatures for alert payloads.
mod hmac_sig {
    /// `sha256=<hex HMAC-SHA256(secret, body)>`.
    pub fn sign_payload(secret: &[u8], body: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        format!(
            "sha256={}",
            hex::encode(ring::hmac::sign(&key, body).as_ref())
        )
    }
}

/// Delivers queued alerts (webhook and e-mail), retrying each with
/// exponential backoff (capped at an hour) until it is accepted.
pub async fn deliver_alerts(
    store: Store,
    clock: SharedClock,
    settings: AlertSettings,
    notify: Arc<Notify>,
) {
    if settings.channels().is_empty() {
        return;
    }
    let http = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the alert HTTP client; alerts are not delivered");
            return;
        }
    };
    let mailer = match &settings.smtp_url {
        Some(url) => {
            use secrecy::ExposeSecret;
            match lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(
                url.expose_secret(),
            ) {
                Ok(b) => Some(b.timeout(Some(std::time::Duration::from_secs(20))).build()),
                Err(e) => {
                    tracing::error!(error = %e, "smtp_url is not usable; e-mail alerts are not sent");
                    None
                }
            }
        }
        None => None,
    };
    loop {
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        let now = clock.now();
        let due = match store.due_alerts(now).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the alert outbox");
                continue;
            }
        };
        for item in due {
            let payload: serde_json::Value =
                serde_json::from_str(&item.payload).unwrap_or_default();
            let result = match payload.get("channel").and_then(|c| c.as_str()) {
                Some("email") => send_email(mailer.as_ref(), &settings, &payload).await,
                _ => send_webhook(&http, &settings, &item.payload).await,
            };
            let stored = match result {
                Ok(()) => store.alert_delivered(item.id, now).await,
                Err(e) => {
                    let backoff = 2i64
                        .saturating_pow(item.attempts.clamp(0, 12) as u32)
                        .min(3600);
                    tracing::warn!(alert = item.id, attempt = item.attempts + 1, error = %e, "alert delivery failed; retrying in {backoff} s");
                    store
                        .alert_failed(item.id, now + chrono::Duration::seconds(backoff), &e)
                        .await
                }
            };
            if let Err(e) = stored {
                tracing::warn!(error = %e, "cannot update the alert outbox");
            }
        }
    }
}

async fn send_webhook(
    http: &reqwest::Client,
    settings: &AlertSettings,
    body: &str,
) -> Result<(), String> {
    let Some(url) = &settings.webhook_url else {
        return Err("no webhook configured".into());
    };
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(secret) = &settings.webhook_secret {
        use secrecy::ExposeSecret;
        req = req.header(
            "x-strongroom-signature",
            sign_payload(secret.expose_secret().as_bytes(), body.as_bytes()),
        );
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("webhook answered {}", r.status())),
        Err(e) => Err(format!("webhook unreachable: {e}")),
    }
}

async fn send_email(
    mailer: Option<&lettre::AsyncSmtpTransport<lettre::Tokio1Executor>>,
    settings: &AlertSettings,
    payload: &serde_json::Value,
) -> Result<(), String> {
    use lettre::AsyncTransport;
    let Some(mailer) = mailer else {
        return Err("no usable smtp_url".into());
    };
    let from = settings.smtp_from.as_deref().unwrap_or_default();
    let mut msg = lettre::Message::builder()
        .from(from.parse().map_err(|e| format!("smtp_from: {e}"))?)
        .subject(format!(
            "[Strongroom] incident {}: {} ({})",
            payload["incident"],
            payload["detector"].as_str().unwrap_or("?"),
            payload["company"].as_str().unwrap_or("server")
        ));
    for to in &settings.smtp_to {
        msg = msg.to(to.parse().map_err(|e| format!("smtp_to {to}: {e}"))?);
    }
    let body = format!(
        "{}\n\nSubject: {}\nAddress: {}\nResponse: {}\nAt: {}\n\n{}\n",
        payload["summary"].as_str().unwrap_or(""),
        payload["subject"].as_str().unwrap_or(""),
        payload["client_ip"].as_str().unwrap_or("-"),
        payload["response"].as_str().unwrap_or(""),
        payload["at"].as_str().unwrap_or(""),
        payload
    );
    let email = msg
        .body(body)
        .map_err(|e| format!("cannot build the e-mail: {e}"))?;
    mailer
        .send(email)
        .await
        .map(|_| ())
        .map_err(|e| format!("SMTP: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use strongroom_core::clock::ManualClock;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn event(i: usize) -> AuditEvent {
        AuditEvent::new(7, at(), "user:x", "record.read", format!("customer/{i}"))
    }

    fn failed_sign_in(user: &str) -> AuditEvent {
        AuditEvent {
            outcome: strongroom_core::audit::Outcome::Denied,
            reason: Some("bad_password".into()),
            client_ip: Some("203.0.113.9".into()),
            ..AuditEvent::new(7, at(), format!("user:{user}"), "auth.login", "company/X")
        }
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_events_and_keeps_places_for_denials() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = Store::connect(&url, Default::default()).await.unwrap();
        store.migrate(at()).await.unwrap();
        let clock: SharedClock = Arc::new(ManualClock::new(at()));
        let skipped = prometheus_client::metrics::counter::Counter::default();
        let d = Detection::start_bounded(
            store.clone(),
            clock,
            Arc::default(),
            AlertSettings::default(),
            skipped.clone(),
            (10, 5),
        );
        // The detector task has not run yet (one thread, no await between).
        assert!(d.feed((0..6).map(event).collect()));
        assert!(d.feed((6..10).map(event).collect()));
        assert!(!d.feed(vec![event(10)]), "an eleventh read is refused");
        assert_eq!(skipped.get(), 1, "and counted in the metric");
        // What no detector counts takes no place.
        let writes = (0..100)
            .map(|i| AuditEvent::new(7, at(), "user:x", "record.create", format!("customer/{i}")))
            .collect();
        assert!(d.feed(writes));
        // The reads' places are all taken, and failed sign-ins still get in.
        assert!(d.feed((0..5).map(|_| failed_sign_in("ann")).collect()));
        assert!(
            !d.feed(vec![failed_sign_in("ann")]),
            "a sixth denial is refused"
        );
        assert_eq!(skipped.get(), 2);
        // They were examined: five bad passwords open a brute-force incident.
        d.flush().await;
        let found = store.incidents(7).await.unwrap();
        assert_eq!(
            found
                .iter()
                .map(|i| i.detector.as_str())
                .collect::<Vec<_>>(),
            ["brute_force"]
        );
        // Once the queue is examined, its places are free again.
        assert!(d.feed((0..10).map(event).collect()));
        assert!(d.feed((0..5).map(|_| failed_sign_in("bob")).collect()));
    }
}
