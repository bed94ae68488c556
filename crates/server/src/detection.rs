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
/// detectors fall far behind, stored events wait in the audit log instead
/// of the queue, and are read back from there once the detectors catch up
/// (see [`Deferred`]); a warning is logged.
#[derive(Clone)]
pub struct Detection {
    tx: mpsc::Sender<Input>,
    /// Places for reads waiting to be examined (see [`MAX_QUEUED_READS`]).
    reads: Arc<tokio::sync::Semaphore>,
    /// Places for denials, apart (see [`MAX_QUEUED_DENIALS`]).
    denials: Arc<tokio::sync::Semaphore>,
    /// Events left in the audit log for want of a place.
    deferred: Arc<Deferred>,
    /// Events refused a place (a metric).
    skipped: prometheus_client::metrics::counter::Counter,
    /// Each company's rules, shared by the detector task and the sign-in
    /// checks.
    rules: Arc<RuleCache>,
}

/// Stored events that found their places in the queue taken: per chain
/// and kind, the runs of sequence numbers not yet examined. While a
/// stretch is open, newer events of its chain and kind join it instead of
/// the queue, so the detectors still see each chain's events of a kind in
/// order; the detector task reads the stretch back from the audit log,
/// once the queue holds nothing from before it opened, and closes it when
/// it has read to its end. A run is what one batch of this node's audit
/// writer appended to the chain, merged with the next when they touch:
/// other nodes' events between them (PostgreSQL) are theirs to examine.
#[derive(Default)]
struct Deferred(std::sync::Mutex<DeferredState>);

#[derive(Default)]
struct DeferredState {
    stretches: HashMap<(i64, Interest), Stretch>,
    /// Event batches queued so far.
    queued: u64,
}

#[derive(Debug)]
struct Stretch {
    /// First and last sequence numbers, oldest first.
    runs: std::collections::VecDeque<(i64, i64)>,
    /// Readable once the detector task has taken this many batches from
    /// the queue.
    after: u64,
}

/// Runs a stretch keeps at most (16 bytes each); events beyond are not
/// examined, and the server log says so.
const MAX_RUNS: usize = 65_536;

impl DeferredState {
    /// Adds the run `first..=last` of `chain` to its stretch of `kind`,
    /// opening one (readable after the batches queued so far) if needed.
    /// False when the stretch is full.
    fn defer(&mut self, chain: i64, kind: Interest, (first, last): (i64, i64)) -> bool {
        let after = self.queued;
        let s = self.stretches.entry((chain, kind)).or_insert(Stretch {
            runs: Default::default(),
            after,
        });
        let full = s.runs.len() >= MAX_RUNS;
        match s.runs.back_mut() {
            Some(run) if first <= run.1 + 1 => run.1 = run.1.max(last),
            _ if full => return false,
            _ => s.runs.push_back((first, last)),
        }
        true
    }

    /// Defers the numbered events `marks` (chain, sequence number) of
    /// `kind`, one run per chain; returns how many could not be (their
    /// stretch was full).
    fn defer_all(&mut self, kind: Interest, marks: impl IntoIterator<Item = (i64, i64)>) -> u64 {
        let mut lost = 0;
        for (chain, (run, n)) in runs(marks) {
            if !self.defer(chain, kind, run) {
                lost += n;
            }
        }
        lost
    }
}

/// For each chain, the first and last of the sequence numbers given, and
/// how many were given.
fn runs(marks: impl IntoIterator<Item = (i64, i64)>) -> HashMap<i64, ((i64, i64), u64)> {
    let mut out: HashMap<i64, ((i64, i64), u64)> = HashMap::new();
    for (chain, seq) in marks {
        let (run, n) = out.entry(chain).or_insert(((seq, seq), 0));
        run.0 = run.0.min(seq);
        run.1 = run.1.max(seq);
        *n += 1;
    }
    out
}

impl Deferred {
    fn lock(&self) -> std::sync::MutexGuard<'_, DeferredState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The oldest run of a stretch the detector task may read, having
    /// taken `taken` batches.
    fn ready(&self, taken: u64) -> Option<(i64, Interest, (i64, i64))> {
        self.lock()
            .stretches
            .iter()
            .filter(|(_, s)| s.after <= taken)
            .find_map(|(&(chain, kind), s)| Some((chain, kind, *s.runs.front()?)))
    }

    /// Everything of the oldest run before `next` has been examined (or
    /// cannot be).
    fn advance(&self, chain: i64, kind: Interest, next: i64) {
        let mut state = self.lock();
        let Some(s) = state.stretches.get_mut(&(chain, kind)) else {
            return;
        };
        if let Some(run) = s.runs.front_mut() {
            run.0 = run.0.max(next);
            if run.0 > run.1 {
                s.runs.pop_front();
            }
        }
        if s.runs.is_empty() {
            state.stretches.remove(&(chain, kind));
        }
    }
}

/// Events a stretch is read back in, a page at a time.
const CATCH_UP_PAGE: i64 = 500;

/// Where each chain ended (chain, seq) when this server started: the
/// detectors read the refusals of their windows up to there again (see
/// `Examiner::replay`).
pub type ReplayPlan = Vec<(i64, i64)>;

/// Refused and failed events read again per chain at start, at most.
const REPLAY_MAX: usize = 100_000;

/// The longest window read again at start, whatever a rule says.
const REPLAY_WINDOW_MAX_HOURS: i64 = 24;

/// The plan for a server about to start: every chain's end, read before
/// the first request is served (events after it reach the detectors
/// through the queue).
pub async fn replay_plan(store: &Store) -> strongroom_store::StoreResult<ReplayPlan> {
    store.audit_ends().await
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
pub const MAX_QUEUED_READS: usize = 65_536;

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
    /// Starts the detector task; it first reads again what `replay` names
    /// (see `Examiner::replay`), then examines what it is fed.
    pub fn start(
        store: Store,
        clock: SharedClock,
        blocks: Arc<Blocks>,
        alerts: AlertSettings,
        skipped: prometheus_client::metrics::counter::Counter,
        replay: ReplayPlan,
    ) -> Detection {
        Self::start_bounded(
            store,
            clock,
            blocks,
            alerts,
            skipped,
            (MAX_QUEUED_READS, MAX_QUEUED_DENIALS),
            replay,
        )
    }

    fn start_bounded(
        store: Store,
        clock: SharedClock,
        blocks: Arc<Blocks>,
        alerts: AlertSettings,
        skipped: prometheus_client::metrics::counter::Counter,
        (max_reads, max_denials): (usize, usize),
        replay: ReplayPlan,
    ) -> Detection {
        // Every event batch holds at least one place, so batches are
        // bounded by the event bounds too.
        let (tx, rx) = mpsc::channel(max_reads + max_denials + 64);
        let notify = Arc::new(Notify::new());
        let rules = Arc::new(RuleCache::default());
        let deferred = Arc::new(Deferred::default());
        tokio::spawn(detector_task(
            Examiner {
                store: store.clone(),
                clock: clock.clone(),
                blocks,
                notify: notify.clone(),
                channels: alerts.channels(),
                rules: rules.clone(),
                deferred: deferred.clone(),
                engine: Engine::default(),
            },
            rx,
            replay,
        ));
        tokio::spawn(crate::detection::deliver_alerts(
            store, clock, alerts, notify,
        ));
        Detection {
            tx,
            reads: Arc::new(tokio::sync::Semaphore::new(max_reads)),
            denials: Arc::new(tokio::sync::Semaphore::new(max_denials)),
            deferred,
            skipped,
            rules,
        }
    }

    /// Returns once everything fed before (events waiting in the audit log
    /// too) has been examined and responded to (for tests and orderly
    /// shutdown).
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
    /// places in its queue, and nothing that no detector counts. Their
    /// places in the audit log are not known, so when their places in the
    /// queue are taken they are not examined: `false`, and a warning in
    /// the log.
    pub fn feed(&self, events: Vec<AuditEvent>) -> bool {
        self.feed_stored(events.into_iter().map(|e| (e, None)).collect())
    }

    /// [`Detection::feed`] for events stored in the audit log, with their
    /// sequence numbers: when their places in the queue are taken, they
    /// are read back from the log once the detectors catch up. `false`
    /// only for what will never be examined (events without a number).
    pub fn feed_stored(&self, events: Vec<(AuditEvent, Option<i64>)>) -> bool {
        let (mut reads, mut denials) = (Vec::new(), Vec::new());
        for (e, seq) in events {
            match interest(&e) {
                Interest::Reads => reads.push((e, seq)),
                Interest::Denials => denials.push((e, seq)),
                Interest::None => {}
            }
        }
        let denials_taken = self.queue(denials, Interest::Denials);
        self.queue(reads, Interest::Reads) && denials_taken
    }

    /// Queues events of one kind (reads or denials), or defers them.
    fn queue(&self, part: Vec<(AuditEvent, Option<i64>)>, kind: Interest) -> bool {
        if part.is_empty() {
            return true;
        }
        let places = match kind {
            Interest::Denials => &self.denials,
            Interest::Reads | Interest::None => &self.reads,
        };
        // Held until the batch is queued or deferred, so that no stretch
        // closes in between.
        let mut deferred = self.deferred.lock();
        let mut events = Vec::with_capacity(part.len());
        let mut marks = Vec::with_capacity(part.len());
        let mut joining = Vec::new();
        for (e, seq) in part {
            match seq {
                // Behind the events of its chain already waiting in the log.
                Some(seq) if deferred.stretches.contains_key(&(e.chain, kind)) => {
                    joining.push((e.chain, seq));
                }
                _ => {
                    marks.push((e.chain, seq));
                    events.push(e);
                }
            }
        }
        self.skipped.inc_by(joining.len() as u64);
        let mut lost = deferred.defer_all(kind, joining);
        if !events.is_empty() {
            let n = u32::try_from(events.len()).unwrap_or(u32::MAX);
            let sent = match places.clone().try_acquire_many_owned(n) {
                Ok(places) => self.tx.try_send(Input::Events(events, places)).is_ok(),
                Err(_) => false,
            };
            if sent {
                deferred.queued += 1;
            } else {
                self.skipped.inc_by(u64::from(n));
                let numbered = marks.iter().filter_map(|&(c, seq)| Some((c, seq?)));
                lost += marks.iter().filter(|(_, seq)| seq.is_none()).count() as u64;
                lost += deferred.defer_all(kind, numbered);
                tracing::warn!(
                    events = n,
                    kind = ?kind,
                    "intrusion detection is lagging; events wait in the audit log to be examined"
                );
            }
        }
        if lost > 0 {
            tracing::error!(
                events = lost,
                kind = ?kind,
                "intrusion detection is too far behind; events will not be examined"
            );
        }
        lost == 0
    }

    /// Hands findings to the detector task. Waits while its queue is full
    /// (the sign-in that made them waits with it) rather than drop one.
    pub async fn report_findings(&self, findings: Vec<Finding>) {
        if !findings.is_empty() && self.tx.send(Input::Findings(findings)).await.is_err() {
            tracing::error!("intrusion detection has stopped; a finding was not examined");
        }
    }

    /// After a successful sign-in, before its session is made: records the
    /// sign-in in the user's history, and gives back what it reveals (a
    /// never-seen address, an hour the user never signs in at) as findings,
    /// not yet reported. The caller reports them with
    /// [`Detection::report_findings`] once the session exists, so that a
    /// response (ending the user's sessions, locking the account) reaches
    /// the session this sign-in made, too.
    #[allow(clippy::too_many_arguments)]
    pub async fn after_sign_in(
        &self,
        store: &Store,
        company: CompanyId,
        user: UserKey,
        user_id: &str,
        ip: IpAddr,
        now: DateTime<Utc>,
    ) -> strongroom_store::StoreResult<Vec<Finding>> {
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
        Ok(out)
    }
}

/// What the detector task works with.
struct Examiner {
    store: Store,
    clock: SharedClock,
    blocks: Arc<Blocks>,
    notify: Arc<Notify>,
    channels: Vec<&'static str>,
    rules: Arc<RuleCache>,
    deferred: Arc<Deferred>,
    engine: Engine,
}

impl Examiner {
    async fn observe(&mut self, e: &AuditEvent, found: &mut Vec<Finding>) {
        match self.rules.get(&self.store, e.chain).await {
            Ok(company_rules) => found.extend(self.engine.observe(e, &company_rules)),
            Err(err) => tracing::warn!(error = %err, "cannot load detector rules"),
        }
    }

    /// [`Examiner::observe`] for an event read back from the audit log, by
    /// `rules` when given (else by its company's). One changed there by
    /// hand is not examined: its stand-ins (see `StoredEvent::damaged`)
    /// would count as something that never happened, and `audit verify`
    /// names it.
    async fn observe_stored(
        &mut self,
        e: &strongroom_store::StoredEvent,
        rules: Option<&[Rule]>,
        found: &mut Vec<Finding>,
    ) {
        match (&e.damaged, rules) {
            (Some(d), _) => tracing::error!(chain = e.event.chain, seq = e.seq, damage = %d,
                "an event read back from the audit log was changed there; it is not examined"),
            (None, Some(rules)) => found.extend(self.engine.observe(&e.event, rules)),
            (None, None) => self.observe(&e.event, found).await,
        }
    }

    async fn respond_all(&self, findings: Vec<Finding>) {
        for f in findings {
            if let Err(err) =
                respond(&self.store, &self.clock, &self.blocks, &f, &self.channels).await
            {
                tracing::error!(error = %err, detector = f.detector.as_str(), "could not respond to a detection");
            }
            self.notify.notify_one();
        }
    }

    /// The detectors' windows live in memory, so a restart empties them,
    /// and a crash also loses what was queued: an attack could go on
    /// across a restart uncounted. So before anything else, the detector
    /// task reads again each chain's refused and failed events of the
    /// longest window of its brute-force, spraying and probing rules (24 h
    /// at most; the first [`REPLAY_MAX`] at most), up to where the chain
    /// ended at start. What fires opens an incident, unless one of that detector and
    /// subject was opened within the window (it fired before the restart).
    /// On PostgreSQL this reads every node's events, so a node that starts
    /// counts what the others saw in the window too. For the mass-read
    /// rule it then reads the successful events of that rule's window,
    /// only the last [`REPLAY_MAX`] events of the chain when the window
    /// holds more (a window can hold millions; a mass read still going on
    /// shows at its end), and counts them for that rule alone (the
    /// refusals among them were counted already).
    async fn replay(&mut self, plan: ReplayPlan) {
        let now = self.clock.now();
        for (chain, until) in plan {
            let rules = match self.rules.get(&self.store, chain).await {
                Ok(r) => r,
                Err(err) => {
                    tracing::error!(error = %err, chain, "cannot load detector rules; the detectors' windows start empty");
                    continue;
                }
            };
            let counted = [
                Detector::BruteForce,
                Detector::PasswordSpraying,
                Detector::Probing,
            ];
            let of = |detectors: &[Detector]| -> Vec<Rule> {
                rules
                    .iter()
                    .filter(|r| r.enabled && detectors.contains(&r.detector))
                    .cloned()
                    .collect()
            };
            let longest = |rules: &[Rule]| {
                rules
                    .iter()
                    .map(|r| {
                        r.window
                            .min(chrono::Duration::hours(REPLAY_WINDOW_MAX_HOURS))
                    })
                    .max()
            };
            if let Some(window) = longest(&of(&counted)) {
                if let Err(err) = self.replay_chain(chain, until, now - window, None).await {
                    tracing::error!(error = %err, chain, "cannot read the detectors' windows again; they start empty");
                }
            }
            let mass_read = of(&[Detector::MassRead]);
            if let Some(window) = longest(&mass_read) {
                let reads = Some(mass_read.as_slice());
                if let Err(err) = self.replay_chain(chain, until, now - window, reads).await {
                    tracing::error!(error = %err, chain, "cannot read the mass-read window again; it starts empty");
                }
            }
        }
    }

    /// Reads a chain's events since `since` up to `until` again: its
    /// refusals for every detector (`mass_read` none), or its successful
    /// events for the mass-read rules given alone.
    async fn replay_chain(
        &mut self,
        chain: i64,
        until: i64,
        since: DateTime<Utc>,
        mass_read: Option<&[Rule]>,
    ) -> strongroom_store::StoreResult<()> {
        let Some(mut after) = self.store.audit_place_before(chain, since).await? else {
            return Ok(());
        };
        let reads = mass_read.is_some();
        if reads && after < until - REPLAY_MAX as i64 {
            after = until - REPLAY_MAX as i64;
            tracing::warn!(
                chain,
                events = REPLAY_MAX,
                "the mass-read detector read only the last events of its window again at start; the earlier reads in it are not counted"
            );
        }
        let mut read = 0usize;
        while read < REPLAY_MAX {
            let query = strongroom_store::AuditQuery {
                after_seq: after,
                until_seq: Some(until),
                from: Some(since),
                refusals: !reads,
                outcome: reads
                    .then(|| strongroom_core::audit::Outcome::Success.as_str().to_owned()),
                limit: 1000,
                ..Default::default()
            };
            let page = self.store.audit_events(chain, &query).await?;
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            let mut found = Vec::new();
            for e in page.iter().take(REPLAY_MAX - read) {
                self.observe_stored(e, mass_read, &mut found).await;
            }
            read += page.len();
            let mut fresh = Vec::new();
            for f in found {
                if !self.fired_before(&f, since).await? {
                    fresh.push(f);
                }
            }
            self.respond_all(fresh).await;
            after = last;
        }
        // (A read pass starts at most REPLAY_MAX events before its end, and
        // warned above.)
        if read >= REPLAY_MAX && !reads {
            tracing::warn!(
                chain,
                events = REPLAY_MAX,
                "the detectors read the window's first refusals again at start, as many as they read; the later ones in it are not counted"
            );
        }
        Ok(())
    }

    /// Whether an incident of the finding's detector and subject was opened
    /// since `since`.
    async fn fired_before(
        &self,
        f: &Finding,
        since: DateTime<Utc>,
    ) -> strongroom_store::StoreResult<bool> {
        self.store
            .incident_opened_since(f.chain, f.detector.as_str(), &f.subject, since)
            .await
    }

    /// Reads and examines one page of a deferred stretch that is ready,
    /// `taken` batches having been taken from the queue; false when none
    /// is.
    async fn catch_up(&mut self, taken: u64) -> bool {
        let Some((chain, kind, (first, last))) = self.deferred.ready(taken) else {
            return false;
        };
        let page = match self
            .store
            .audit_after(chain, first - 1, (last - first + 1).clamp(1, CATCH_UP_PAGE))
            .await
        {
            Ok(page) => page,
            Err(err) => {
                self.deferred.advance(chain, kind, last + 1);
                tracing::error!(error = %err, chain, first, last,
                    "cannot read deferred events back from the audit log; they are not examined");
                return true;
            }
        };
        if page.first().is_none_or(|e| e.seq > last) {
            // Archived or gone since.
            self.deferred.advance(chain, kind, last + 1);
            tracing::error!(
                chain,
                first,
                last,
                "deferred events are no longer in the audit log; they are not examined"
            );
            return true;
        }
        let mut next = first;
        let mut found = Vec::new();
        for e in page.iter().take_while(|e| e.seq <= last) {
            next = e.seq + 1;
            if interest(&e.event) == kind {
                self.observe_stored(e, None, &mut found).await;
            }
        }
        self.deferred.advance(chain, kind, next);
        self.respond_all(found).await;
        true
    }
}

async fn detector_task(mut x: Examiner, mut rx: mpsc::Receiver<Input>, replay: ReplayPlan) {
    x.replay(replay).await;
    // Event batches taken from the queue.
    let mut taken = 0u64;
    loop {
        let input = match rx.try_recv() {
            Ok(input) => input,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                if x.catch_up(taken).await {
                    continue;
                }
                match rx.recv().await {
                    Some(input) => input,
                    None => break,
                }
            }
        };
        let findings = match input {
            Input::Flush(done) => {
                while x.catch_up(taken).await {}
                let _ = done.send(());
                continue;
            }
            Input::Findings(f) => f,
            Input::Events(events, _places) => {
                taken += 1;
                let mut found = Vec::new();
                for e in &events {
                    x.observe(e, &mut found).await;
                }
                found
            }
        };
        x.respond_all(findings).await;
        // A queue that never empties still lets deferred events through.
        x.catch_up(taken).await;
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

    /// A detector over a store of its own, with `bounds` places for reads
    /// and denials; its skipped-events metric.
    struct Started {
        _dir: tempfile::TempDir,
        store: Store,
        d: Detection,
        skipped: prometheus_client::metrics::counter::Counter,
    }

    /// A detector as a server starting over `store` makes it.
    async fn restarted(store: &Store) -> Detection {
        Detection::start(
            store.clone(),
            Arc::new(ManualClock::new(at())),
            Arc::default(),
            AlertSettings::default(),
            prometheus_client::metrics::counter::Counter::default(),
            replay_plan(store).await.unwrap(),
        )
    }

    async fn started(bounds: (usize, usize)) -> Started {
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
            bounds,
            Vec::new(),
        );
        Started {
            _dir: dir,
            store,
            d,
            skipped,
        }
    }

    /// Appends each batch to the audit log, as the audit writer does, and
    /// gives them back numbered, to be fed later.
    async fn stored(
        store: &Store,
        batches: Vec<Vec<AuditEvent>>,
    ) -> Vec<Vec<(AuditEvent, Option<i64>)>> {
        let mut out = Vec::new();
        for batch in batches {
            let heads = store.append_audit(&batch).await.unwrap();
            out.push(strongroom_store::numbered(batch, &heads));
        }
        out
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_events_and_keeps_places_for_denials() {
        let Started {
            _dir,
            store,
            d,
            skipped,
        } = started((10, 5)).await;
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

    /// Feeds `before` to a detector and examines it, restarts, feeds
    /// `after`, then restarts once more with nothing new: the incidents of
    /// `detector` after each of the three.
    async fn across_a_restart(
        before: Vec<AuditEvent>,
        after: Vec<AuditEvent>,
        detector: &str,
    ) -> [usize; 3] {
        let Started { _dir, store, d, .. } = started((2000, 10)).await;
        let incidents = |store: Store| async move {
            let found = store.incidents(7).await.unwrap();
            found.iter().filter(|i| i.detector == detector).count()
        };
        for batch in stored(&store, vec![before]).await {
            d.feed_stored(batch);
        }
        d.flush().await;
        let first = incidents(store.clone()).await;
        let d = restarted(&store).await;
        for batch in stored(&store, vec![after]).await {
            d.feed_stored(batch);
        }
        d.flush().await;
        let second = incidents(store.clone()).await;
        let d = restarted(&store).await;
        d.flush().await;
        [first, second, incidents(store.clone()).await]
    }

    #[tokio::test]
    async fn a_restart_counts_the_refusals_of_the_window_again() {
        // Four bad passwords (the threshold is five), a restart, the fifth;
        // then another restart finds the same five, and the open incident.
        let four = (0..4).map(|_| failed_sign_in("ann")).collect();
        assert_eq!(
            across_a_restart(four, vec![failed_sign_in("ann")], "brute_force").await,
            [0, 1, 1],
            "none before, one for five within the window, no second"
        );
    }

    #[tokio::test]
    async fn a_restart_counts_the_reads_of_the_mass_read_window_again() {
        // 600 reads (the threshold is 1000 in 5 minutes) and a refusal, a
        // restart, 400 more; then another restart finds the same reads.
        let mut first: Vec<AuditEvent> = (0..600).map(event).collect();
        first.push(failed_sign_in("x"));
        assert_eq!(
            across_a_restart(first, (600..1000).map(event).collect(), "mass_read").await,
            [0, 1, 1],
            "none before, one for 1000 reads within the window, no second"
        );
    }

    #[tokio::test]
    async fn findings_wait_for_a_place_rather_than_being_dropped() {
        let Started { _dir, store, d, .. } = started((10, 5)).await;
        // The queue holds 10 + 5 + 64 items; the detector task has not run
        // yet, and runs only while a report waits.
        for i in 0..100 {
            d.report_findings(vec![Finding {
                chain: 7,
                detector: Detector::NewAddress,
                response: Response::Alert,
                subject: format!("user:u{i}"),
                client_ip: Some("192.0.2.7".into()),
                summary: format!("new_address: first sign-in of u{i} from 192.0.2.7"),
                block_for: chrono::Duration::zero(),
            }])
            .await;
        }
        d.flush().await;
        assert_eq!(store.incidents(7).await.unwrap().len(), 100);
    }

    #[tokio::test]
    async fn events_that_find_their_places_taken_are_read_back_from_the_log() {
        let Started {
            _dir,
            store,
            d,
            skipped,
        } = started((10, 2)).await;
        // Stored first; fed afterwards, with no await in between, so the
        // detector task does not run until the flush.
        let stored = stored(
            &store,
            vec![
                vec![failed_sign_in("bob"), failed_sign_in("bob")],
                (0..5).map(|_| failed_sign_in("ann")).collect(),
                vec![failed_sign_in("ann"), failed_sign_in("bob")],
            ],
        )
        .await;
        let mut stored = stored.into_iter();
        assert!(
            d.feed_stored(stored.next().unwrap()),
            "two denials take every place"
        );
        assert!(
            d.feed_stored(stored.next().unwrap()),
            "five more wait in the log, to be examined"
        );
        assert_eq!(skipped.get(), 5, "and are counted in the metric");
        // The queue has room again once the task runs, but the chain's
        // next denials wait behind those already in the log.
        assert!(d.feed_stored(stored.next().unwrap()));
        assert_eq!(skipped.get(), 7);
        d.flush().await;
        // Ann's six bad passwords were read back from the log, and opened
        // an incident; Bob's three did not.
        let found = store.incidents(7).await.unwrap();
        assert_eq!(
            found
                .iter()
                .map(|i| (i.detector.as_str(), i.subject.as_str()))
                .collect::<Vec<_>>(),
            [("brute_force", "user:ann")]
        );
        // Read to its end, the stretch is closed: denials are queued again.
        assert!(d.feed(vec![failed_sign_in("carol")]));
        assert_eq!(skipped.get(), 7);
    }

    /// On PostgreSQL several nodes append to one chain; each node's
    /// detectors examine what its own audit writer stored. What waits in
    /// the log is read back run by run, never the other nodes' events
    /// between them.
    #[tokio::test]
    async fn events_read_back_are_this_nodes_own() {
        let Started {
            _dir,
            store,
            d,
            skipped: _,
        } = started((10, 2)).await;
        let stored = stored(
            &store,
            vec![
                vec![failed_sign_in("bob"), failed_sign_in("bob")],
                (0..3).map(|_| failed_sign_in("ann")).collect(),
                // Another node's: stored, never fed here.
                (0..5).map(|_| failed_sign_in("ann")).collect(),
                vec![failed_sign_in("ann")],
            ],
        )
        .await;
        let [fill, mine, _theirs, more] = <[_; 4]>::try_from(stored).unwrap();
        assert!(d.feed_stored(fill));
        assert!(d.feed_stored(mine), "three wait in the log");
        assert!(d.feed_stored(more), "and one more");
        d.flush().await;
        // Four of Ann's bad passwords were this node's: under the threshold
        // of five, though the log holds nine.
        assert_eq!(store.incidents(7).await.unwrap().len(), 0);
    }
}
