//! Audit events: what happened, to what, by whom, with what outcome. The
//! domain describes events; the store chains them (each event's hash covers
//! the previous one) and the server signs checkpoints.
//!
//! Events never carry sensitive values: field names yes, values no.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// How a request ended, as the audit log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Refused by a rule (the reason code says which).
    Denied,
    /// Failed for another reason (bad input, conflict).
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// Chain 0 holds events that belong to no company (operator actions,
/// sign-in attempts naming an unknown company).
pub const SERVER_CHAIN: i64 = 0;

/// One event, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Company id, or [`SERVER_CHAIN`].
    pub chain: i64,
    pub at: DateTime<Utc>,
    /// `user:<id>`, `operator`, or `system`.
    pub actor: String,
    /// e.g. `record.read`, `auth.login`, `user.update`.
    pub action: String,
    /// e.g. `customer/<record id>`, `user/<user id>`.
    pub target: String,
    pub outcome: Outcome,
    /// Why it was denied or failed (stable code), if it was.
    pub reason: Option<String>,
    /// JSON object: which fields were returned, masked, revealed; counts.
    pub detail: String,
    /// A short reference to the session (not the token).
    pub session: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl AuditEvent {
    /// A successful event with no details and no client: what operators'
    /// commands and the system itself record. Other fields are set with
    /// struct update syntax.
    pub fn new(
        chain: i64,
        at: DateTime<Utc>,
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
    ) -> AuditEvent {
        AuditEvent {
            chain,
            at,
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: Outcome::Success,
            reason: None,
            detail: "{}".into(),
            session: None,
            client_ip: None,
            user_agent: None,
            request_id: None,
        }
    }

    /// The bytes the chain hash covers: every field, length-prefixed, in a
    /// fixed order, with the sequence number. Stable across versions: a
    /// change here is a new format, never an edit.
    pub fn canonical(&self, seq: i64) -> Vec<u8> {
        canonical_parts(
            self.chain,
            seq,
            self.at.timestamp_micros(),
            [
                Some(self.actor.as_str()),
                Some(self.action.as_str()),
                Some(self.target.as_str()),
                Some(self.outcome.as_str()),
                self.reason.as_deref(),
                Some(self.detail.as_str()),
                self.session.as_deref(),
                self.client_ip.as_deref(),
                self.user_agent.as_deref(),
                self.request_id.as_deref(),
            ],
        )
    }
}

/// [`AuditEvent::canonical`] from an event's parts: its time in
/// microseconds, then actor, action, target, outcome, reason, detail,
/// session, client address, user agent and request id. (The chain scan
/// builds it straight from the database's bytes, with [`write_canonical`].)
pub fn canonical_parts(chain: i64, seq: i64, at_micros: i64, parts: [Option<&str>; 10]) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(
        &mut out,
        chain,
        seq,
        at_micros,
        parts.map(|p| p.map(str::as_bytes)),
    );
    out
}

/// [`canonical_parts`] appended to `out`, from the parts' bytes as stored.
/// (A chain scan hashes the bytes without checking they are UTF-8: bytes
/// that differ from the ones written fail their hash either way.)
pub fn write_canonical(
    out: &mut Vec<u8>,
    chain: i64,
    seq: i64,
    at_micros: i64,
    parts: [Option<&[u8]>; 10],
) {
    let len: usize = parts.iter().map(|p| 9 + p.map_or(0, <[u8]>::len)).sum();
    out.reserve(43 + len);
    out.extend_from_slice(b"strongroom/audit/v1");
    out.extend_from_slice(&chain.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&at_micros.to_be_bytes());
    for part in parts {
        match part {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                out.extend_from_slice(&(s.len() as u64).to_be_bytes());
                out.extend_from_slice(s);
            }
        }
    }
}

/// The hash that links an event to the one before it.
pub fn chain_hash(prev: &[u8], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical);
    h.finalize().into()
}

/// The hash before the first event of a chain.
pub fn genesis(chain: i64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"strongroom/audit/genesis/v1");
    h.update(chain.to_be_bytes());
    h.finalize().into()
}

/// What a checkpoint signature covers.
pub fn checkpoint_message(chain: i64, seq: i64, hash: &[u8], at: DateTime<Utc>) -> Vec<u8> {
    let mut m = b"strongroom/audit/checkpoint/v1".to_vec();
    m.extend_from_slice(&chain.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&at.timestamp_micros().to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> AuditEvent {
        AuditEvent {
            chain: 1,
            at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            actor: "user:master".into(),
            action: "record.read".into(),
            target: "customer/x".into(),
            outcome: Outcome::Success,
            reason: None,
            detail: "{}".into(),
            session: Some("ab12".into()),
            client_ip: Some("127.0.0.1".into()),
            user_agent: None,
            request_id: Some("r1".into()),
        }
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = ev();
        let h = chain_hash(&genesis(1), &base.canonical(1));
        let mut variants = Vec::new();
        let mut e = base.clone();
        e.actor = "user:other".into();
        variants.push(e.canonical(1));
        let mut e = base.clone();
        e.outcome = Outcome::Denied;
        variants.push(e.canonical(1));
        let mut e = base.clone();
        e.user_agent = Some(String::new());
        variants.push(e.canonical(1)); // Some("") is not None
        variants.push(base.canonical(2));
        let mut e = base.clone();
        e.chain = 2;
        variants.push(e.canonical(1));
        for v in variants {
            assert_ne!(chain_hash(&genesis(1), &v), h);
        }
        assert_ne!(chain_hash(&genesis(2), &base.canonical(1)), h);
    }

    #[test]
    fn fields_cannot_bleed_into_each_other() {
        let mut a = ev();
        a.actor = "ab".into();
        a.action = "c".into();
        let mut b = ev();
        b.actor = "a".into();
        b.action = "bc".into();
        assert_ne!(a.canonical(1), b.canonical(1));
    }
}
