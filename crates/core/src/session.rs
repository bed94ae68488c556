//! Session lifetime rules. The time is always passed in.

use chrono::{DateTime, Duration, Utc};

/// How long sessions live. Per-user idle timeouts come with the sign-in
/// security settings; these are the server-wide defaults and bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    /// A session not used for this long ends.
    pub idle_timeout: Duration,
    /// A session ends this long after sign-in, however active.
    pub absolute_lifetime: Duration,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            idle_timeout: Duration::minutes(30),
            absolute_lifetime: Duration::hours(12),
        }
    }
}

/// The times that bound one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimes {
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Live,
    IdleTimedOut,
    Expired,
}

impl SessionPolicy {
    pub fn start(&self, now: DateTime<Utc>) -> SessionTimes {
        SessionTimes {
            created_at: now,
            last_seen_at: now,
            expires_at: now + self.absolute_lifetime,
        }
    }

    pub fn idle_expires_at(&self, t: &SessionTimes) -> DateTime<Utc> {
        (t.last_seen_at + self.idle_timeout).min(t.expires_at)
    }

    pub fn state(&self, t: &SessionTimes, now: DateTime<Utc>) -> SessionState {
        if now >= t.expires_at {
            SessionState::Expired
        } else if now >= t.last_seen_at + self.idle_timeout {
            SessionState::IdleTimedOut
        } else {
            SessionState::Live
        }
    }

    /// Whether `last_seen_at` is stale enough to be worth writing. Saves a
    /// database write on every request while keeping idle time exact to
    /// within a minute.
    pub fn should_touch(&self, t: &SessionTimes, now: DateTime<Utc>) -> bool {
        now - t.last_seen_at >= Duration::seconds(60).min(self.idle_timeout / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_and_absolute_expiry() {
        let p = SessionPolicy::default();
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut t = p.start(t0);
        assert_eq!(p.state(&t, t0 + Duration::minutes(29)), SessionState::Live);
        assert_eq!(
            p.state(&t, t0 + Duration::minutes(30)),
            SessionState::IdleTimedOut
        );
        t.last_seen_at = t0 + Duration::hours(11) + Duration::minutes(50);
        assert_eq!(p.state(&t, t0 + Duration::hours(12)), SessionState::Expired);
        assert_eq!(p.idle_expires_at(&t), t.expires_at);
    }
}
