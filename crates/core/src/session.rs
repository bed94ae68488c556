//! Session lifetime rules. The time is always passed in.

use chrono::{DateTime, Duration, Utc};

/// How long sessions live: the server-wide absolute lifetime, and the idle
/// timeout used where a company or user sets none. Each session carries its
/// own idle timeout, fixed at sign-in from the user's or company's setting.
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
    /// A session not used for this long ends.
    pub idle: Duration,
}

/// Bounds of a per-user or per-company idle timeout, in minutes.
pub const IDLE_MINUTES: std::ops::RangeInclusive<u32> = 10..=1440;

/// What a session may be used for. A user who must set up a second factor
/// or change the password gets a session that can do only that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restriction {
    None,
    /// Only enrol a second factor (and see or end the session).
    Enrol,
    /// Only change the password (and see or end the session).
    Password,
}

impl Restriction {
    pub fn as_str(self) -> &'static str {
        match self {
            Restriction::None => "",
            Restriction::Enrol => "enrol",
            Restriction::Password => "password",
        }
    }

    pub fn parse(s: &str) -> Option<Restriction> {
        match s {
            "" => Some(Restriction::None),
            "enrol" => Some(Restriction::Enrol),
            "password" => Some(Restriction::Password),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Live,
    IdleTimedOut,
    Expired,
}

impl SessionPolicy {
    /// A new session's times; `idle` is the user's idle timeout, or the
    /// server default when `None`.
    pub fn start(&self, now: DateTime<Utc>, idle: Option<Duration>) -> SessionTimes {
        SessionTimes {
            created_at: now,
            last_seen_at: now,
            expires_at: now + self.absolute_lifetime,
            idle: idle.unwrap_or(self.idle_timeout),
        }
    }

    pub fn idle_expires_at(&self, t: &SessionTimes) -> DateTime<Utc> {
        (t.last_seen_at + t.idle).min(t.expires_at)
    }

    pub fn state(&self, t: &SessionTimes, now: DateTime<Utc>) -> SessionState {
        if now >= t.expires_at {
            SessionState::Expired
        } else if now >= t.last_seen_at + t.idle {
            SessionState::IdleTimedOut
        } else {
            SessionState::Live
        }
    }

    /// Whether `last_seen_at` is stale enough to be worth writing. Saves a
    /// database write on every request while keeping idle time exact to
    /// within a minute.
    pub fn should_touch(&self, t: &SessionTimes, now: DateTime<Utc>) -> bool {
        now - t.last_seen_at >= Duration::seconds(60).min(t.idle / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_and_absolute_expiry() {
        let p = SessionPolicy::default();
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut t = p.start(t0, None);
        assert_eq!(p.state(&t, t0 + Duration::minutes(29)), SessionState::Live);
        assert_eq!(
            p.state(&t, t0 + Duration::minutes(30)),
            SessionState::IdleTimedOut
        );
        t.last_seen_at = t0 + Duration::hours(11) + Duration::minutes(50);
        assert_eq!(p.state(&t, t0 + Duration::hours(12)), SessionState::Expired);
        assert_eq!(p.idle_expires_at(&t), t.expires_at);
    }

    #[test]
    fn a_session_keeps_its_own_idle_timeout() {
        let p = SessionPolicy::default();
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let t = p.start(t0, Some(Duration::minutes(10)));
        assert_eq!(p.state(&t, t0 + Duration::minutes(9)), SessionState::Live);
        assert_eq!(
            p.state(&t, t0 + Duration::minutes(10)),
            SessionState::IdleTimedOut
        );
        assert_eq!(p.idle_expires_at(&t), t0 + Duration::minutes(10));
    }
}
