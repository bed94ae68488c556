//! Intrusion detection over the audit event stream: sliding-window
//! detectors with per-company rules, and the responses they call for. Pure:
//! the time comes from the events; the server applies the responses.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Duration, Utc};

use crate::audit::{AuditEvent, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Detector {
    /// Failed sign-ins against one account.
    BruteForce,
    /// Failed sign-ins against many accounts from one address.
    PasswordSpraying,
    /// A sign-in from an address never seen for that user.
    NewAddress,
    /// A sign-in at an hour the user has never signed in at before.
    OffHours,
    /// Many records read or searched by one user.
    MassRead,
    /// Many refusals (denied, not found) for one user or address.
    Probing,
}

impl Detector {
    pub const ALL: [Detector; 6] = [
        Detector::BruteForce,
        Detector::PasswordSpraying,
        Detector::NewAddress,
        Detector::OffHours,
        Detector::MassRead,
        Detector::Probing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Detector::BruteForce => "brute_force",
            Detector::PasswordSpraying => "password_spraying",
            Detector::NewAddress => "new_address",
            Detector::OffHours => "off_hours",
            Detector::MassRead => "mass_read",
            Detector::Probing => "probing",
        }
    }

    pub fn parse(s: &str) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// What to do when a detector fires. Every finding also opens an incident
/// and sends an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Response {
    /// An incident and an alert only.
    Alert,
    /// Refuse the client address for the rule's block duration.
    BlockAddress,
    /// Lock the account for the rule's block duration.
    LockAccount,
    /// End the user's sessions.
    EndSessions,
}

impl Response {
    pub fn as_str(self) -> &'static str {
        match self {
            Response::Alert => "alert",
            Response::BlockAddress => "block_address",
            Response::LockAccount => "lock_account",
            Response::EndSessions => "end_sessions",
        }
    }

    pub fn parse(s: &str) -> Option<Response> {
        [
            Response::Alert,
            Response::BlockAddress,
            Response::LockAccount,
            Response::EndSessions,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// One detector's settings for a company.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub detector: Detector,
    pub enabled: bool,
    /// Events (or distinct accounts, for spraying) within the window that
    /// make it fire.
    pub threshold: u32,
    pub window: Duration,
    pub response: Response,
    /// How long a block or lock lasts.
    pub block_for: Duration,
}

/// The defaults, chosen so normal traffic does not trip them.
pub fn default_rules() -> Vec<Rule> {
    let r = |detector, threshold, window_min, response, block_min| Rule {
        detector,
        enabled: true,
        threshold,
        window: Duration::minutes(window_min),
        response,
        block_for: Duration::minutes(block_min),
    };
    vec![
        // Locking is the sign-in policy's job (growing lock times, or until
        // an administrator unlocks); the detector opens the incident.
        r(Detector::BruteForce, 5, 15, Response::Alert, 15),
        r(
            Detector::PasswordSpraying,
            10,
            15,
            Response::BlockAddress,
            60,
        ),
        r(Detector::NewAddress, 1, 0, Response::Alert, 0),
        r(Detector::OffHours, 20, 0, Response::Alert, 0),
        r(Detector::MassRead, 1000, 5, Response::EndSessions, 0),
        r(Detector::Probing, 30, 5, Response::BlockAddress, 30),
    ]
}

/// A detector that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub chain: i64,
    pub detector: Detector,
    pub response: Response,
    /// The user (`user:<id>`) or address the finding is about.
    pub subject: String,
    pub client_ip: Option<String>,
    pub summary: String,
    pub block_for: Duration,
}

#[derive(Debug, Default)]
struct Window {
    /// (time, distinct key or count).
    hits: VecDeque<(DateTime<Utc>, String, u64)>,
    /// Until when this subject stays quiet after firing.
    quiet_until: Option<DateTime<Utc>>,
}

/// Most windows kept; the oldest are dropped beyond this (bounded memory
/// under many distinct addresses).
const MAX_WINDOWS: usize = 100_000;

/// The sliding windows of the event-driven detectors.
#[derive(Debug, Default)]
pub struct Engine {
    windows: HashMap<(i64, Detector, String), Window>,
}

/// What the detectors can make of an event, judged from the event alone
/// (the company's rules decide the rest). The queue in front of the
/// detectors keeps places of its own for denials, so that a flood of
/// reads cannot crowd out the failed sign-ins and refusals that the
/// brute-force, spraying and probing detectors count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interest {
    /// No detector counts it (a successful write, for one; a successful
    /// sign-in is examined as it happens, not from the log).
    None,
    /// A successful read, list or search (mass reading).
    Reads,
    /// A failed sign-in, or any other request refused or failed
    /// (brute force, password spraying, probing).
    Denials,
}

/// See [`Interest`]; [`Engine::observe`] finds nothing in an event of
/// [`Interest::None`].
pub fn interest(e: &AuditEvent) -> Interest {
    match (e.outcome, e.action.as_str()) {
        (
            Outcome::Success,
            "record.read" | "record.reveal" | "record.history" | "record.list" | "record.search",
        ) => Interest::Reads,
        (Outcome::Success, _) => Interest::None,
        (Outcome::Denied, _) => Interest::Denials,
        (_, "auth.login") => Interest::None,
        _ => Interest::Denials,
    }
}

fn reads_in(e: &AuditEvent) -> u64 {
    match e.action.as_str() {
        "record.read" | "record.reveal" | "record.history" => 1,
        "record.list" | "record.search" => serde_json::from_str::<serde_json::Value>(&e.detail)
            .ok()
            .and_then(|d| {
                d.get("records")
                    .and_then(|r| r.as_array())
                    .map(|a| a.len() as u64)
            })
            .unwrap_or(0),
        _ => 0,
    }
}

impl Engine {
    /// Feeds one stored event; returns what fired. `rules` are the event's
    /// company's.
    pub fn observe(&mut self, e: &AuditEvent, rules: &[Rule]) -> Vec<Finding> {
        let mut out = Vec::new();
        if interest(e) == Interest::None {
            return out;
        }
        let rule = |d| rules.iter().find(|r| r.detector == d && r.enabled);
        let ip = e.client_ip.clone().unwrap_or_default();
        let failed_login = e.action == "auth.login" && e.outcome == Outcome::Denied;
        if failed_login && e.reason.as_deref() == Some("bad_password") {
            if let Some(r) = rule(Detector::BruteForce) {
                self.count(e, r, e.actor.clone(), String::new(), 1, &mut out);
            }
        }
        if failed_login {
            if let Some(r) = rule(Detector::PasswordSpraying) {
                // Distinct accounts tried from one address.
                self.count(e, r, format!("ip:{ip}"), e.actor.clone(), 1, &mut out);
            }
        }
        let n = reads_in(e);
        if n > 0 && e.outcome == Outcome::Success {
            if let Some(r) = rule(Detector::MassRead) {
                self.count(e, r, e.actor.clone(), String::new(), n, &mut out);
            }
        }
        if e.outcome != Outcome::Success && e.action != "auth.login" {
            if let Some(r) = rule(Detector::Probing) {
                self.count(e, r, e.actor.clone(), String::new(), 1, &mut out);
            }
        }
        if self.windows.len() > MAX_WINDOWS {
            self.prune(e.at);
        }
        out
    }

    fn count(
        &mut self,
        e: &AuditEvent,
        rule: &Rule,
        subject: String,
        distinct: String,
        weight: u64,
        out: &mut Vec<Finding>,
    ) {
        let w = self
            .windows
            .entry((e.chain, rule.detector, subject.clone()))
            .or_default();
        if w.quiet_until.is_some_and(|q| e.at < q) {
            return;
        }
        let since = e.at - rule.window;
        while w.hits.front().is_some_and(|h| h.0 < since) {
            w.hits.pop_front();
        }
        w.hits.push_back((e.at, distinct.clone(), weight));
        let score = if distinct.is_empty() {
            w.hits.iter().map(|h| h.2).sum::<u64>()
        } else {
            w.hits.iter().map(|h| &h.1).collect::<HashSet<_>>().len() as u64
        };
        if score >= u64::from(rule.threshold) {
            w.hits.clear();
            // One incident per burst: stay quiet for a window.
            w.quiet_until = Some(e.at + rule.window);
            out.push(Finding {
                chain: e.chain,
                detector: rule.detector,
                response: rule.response,
                subject,
                client_ip: e.client_ip.clone(),
                summary: format!(
                    "{}: {score} within {} min (threshold {})",
                    rule.detector.as_str(),
                    rule.window.num_minutes(),
                    rule.threshold
                ),
                block_for: rule.block_for,
            });
        }
    }

    fn prune(&mut self, now: DateTime<Utc>) {
        self.windows.retain(|_, w| {
            w.hits
                .back()
                .is_some_and(|h| now - h.0 < Duration::hours(1))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(at: i64, user: &str, ip: &str, reason: Option<&str>) -> AuditEvent {
        AuditEvent {
            chain: 1,
            at: DateTime::from_timestamp(1_700_000_000 + at, 0).unwrap(),
            actor: format!("user:{user}"),
            action: "auth.login".into(),
            target: "company/ACME".into(),
            outcome: if reason.is_some() {
                Outcome::Denied
            } else {
                Outcome::Success
            },
            reason: reason.map(str::to_owned),
            detail: "{}".into(),
            session: None,
            client_ip: Some(ip.into()),
            user_agent: None,
            request_id: None,
        }
    }

    #[test]
    fn events_no_detector_counts_are_of_no_interest_and_the_others_are() {
        // Every detector at a threshold of one: whatever one counts fires.
        let rules: Vec<Rule> = default_rules()
            .into_iter()
            .map(|r| Rule { threshold: 1, ..r })
            .collect();
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let cases = [
            ("auth.login", Outcome::Denied, Interest::Denials),
            ("auth.login", Outcome::Failed, Interest::None),
            ("auth.login", Outcome::Success, Interest::None),
            ("record.read", Outcome::Success, Interest::Reads),
            ("record.reveal", Outcome::Success, Interest::Reads),
            ("record.history", Outcome::Success, Interest::Reads),
            ("record.read", Outcome::Denied, Interest::Denials),
            ("record.create", Outcome::Success, Interest::None),
            ("record.create", Outcome::Failed, Interest::Denials),
            ("user.create", Outcome::Success, Interest::None),
            ("audit.read", Outcome::Denied, Interest::Denials),
        ];
        for (action, outcome, want) in cases {
            let e = AuditEvent {
                outcome,
                reason: (outcome != Outcome::Success).then(|| "bad_password".to_owned()),
                client_ip: Some("10.0.0.9".into()),
                ..AuditEvent::new(1, at, "user:ann", action, "customer/x")
            };
            assert_eq!(interest(&e), want, "{action} {outcome:?}");
            let fired = Engine::default().observe(&e, &rules);
            assert_eq!(
                fired.is_empty(),
                want == Interest::None,
                "{action} {outcome:?}: {fired:?}"
            );
        }
    }

    #[test]
    fn brute_force_fires_once_at_the_threshold() {
        let rules = default_rules();
        let mut eng = Engine::default();
        let mut fired = Vec::new();
        for i in 0..12 {
            fired.extend(eng.observe(
                &login(i * 10, "ann", "10.0.0.1", Some("bad_password")),
                &rules,
            ));
        }
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].detector, Detector::BruteForce);
        assert_eq!(fired[0].subject, "user:ann");
        assert_eq!(fired[0].response, Response::Alert);
    }

    #[test]
    fn slow_failures_and_normal_traffic_do_not_fire() {
        let rules = default_rules();
        let mut eng = Engine::default();
        // One failure every 5 minutes: never 5 within 15 minutes.
        for i in 0..20 {
            assert!(eng
                .observe(
                    &login(i * 300, "ann", "10.0.0.1", Some("bad_password")),
                    &rules
                )
                .is_empty());
        }
        for i in 0..100 {
            assert!(eng
                .observe(&login(i, "bob", "10.0.0.2", None), &rules)
                .is_empty());
        }
    }

    #[test]
    fn spraying_counts_distinct_accounts_from_one_address() {
        let rules = default_rules();
        let mut eng = Engine::default();
        let mut fired = Vec::new();
        for i in 0..10 {
            fired.extend(eng.observe(
                &login(i, &format!("u{i}"), "203.0.113.5", Some("unknown_user")),
                &rules,
            ));
        }
        assert_eq!(
            fired
                .iter()
                .filter(|f| f.detector == Detector::PasswordSpraying)
                .count(),
            1
        );
        assert_eq!(fired[0].subject, "ip:203.0.113.5");
        // The same account over and over is not spraying.
        let mut eng = Engine::default();
        for i in 0..30 {
            let f = eng.observe(
                &login(i, "same", "203.0.113.6", Some("unknown_user")),
                &rules,
            );
            assert!(f.iter().all(|f| f.detector != Detector::PasswordSpraying));
        }
    }
}
