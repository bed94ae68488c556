//! A company's sign-in policy beyond passwords: when repeated failures lock
//! an account (for a time that grows with each lockout, or until an
//! administrator unlocks it), when one address has failed too often, and
//! who must use a second factor. Pure: counts and times are passed in.

use chrono::Duration;

use crate::{DomainError, DomainResult};

/// Who must sign in with a second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwoFactorPolicy {
    /// Nobody (except the master account once the company has other users).
    Off,
    /// Administrators and the master account.
    Admins,
    /// Everyone.
    All,
    /// The users marked as required, and the master account.
    Selected,
}

impl TwoFactorPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TwoFactorPolicy::Off => "off",
            TwoFactorPolicy::Admins => "admins",
            TwoFactorPolicy::All => "all",
            TwoFactorPolicy::Selected => "selected",
        }
    }

    pub fn parse(s: &str) -> Option<TwoFactorPolicy> {
        [
            TwoFactorPolicy::Off,
            TwoFactorPolicy::Admins,
            TwoFactorPolicy::All,
            TwoFactorPolicy::Selected,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// Facts about one user that decide whether a second factor is required.
#[derive(Debug, Clone, Copy)]
pub struct TwoFactorSubject {
    pub is_master: bool,
    pub is_admin: bool,
    /// Marked by an administrator ("selected users").
    pub marked: bool,
    /// The company has users besides the master account.
    pub company_has_others: bool,
}

/// Whether this user must sign in with a second factor.
pub fn second_factor_required(policy: TwoFactorPolicy, u: TwoFactorSubject) -> bool {
    if u.is_master && u.company_has_others {
        return true;
    }
    match policy {
        TwoFactorPolicy::Off => false,
        TwoFactorPolicy::Admins => u.is_admin || u.is_master,
        TwoFactorPolicy::All => true,
        TwoFactorPolicy::Selected => u.marked,
    }
}

/// Lockout and throttling settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignInPolicy {
    /// Failed sign-ins within `window` that lock the account (1 to 100).
    pub lockout_threshold: u32,
    pub window: Duration,
    /// The first lock's length; each further lockout doubles it.
    pub lockout_base: Duration,
    /// The longest a timed lock lasts.
    pub lockout_max: Duration,
    /// Locks last until an administrator unlocks the account.
    pub until_unlocked: bool,
    /// Failed sign-ins from one address (any accounts) within `window`
    /// that refuse the address for `address_block` (1 to 10000).
    pub address_threshold: u32,
    pub address_block: Duration,
    pub two_factor: TwoFactorPolicy,
}

impl Default for SignInPolicy {
    fn default() -> Self {
        SignInPolicy {
            lockout_threshold: 5,
            window: Duration::minutes(15),
            lockout_base: Duration::minutes(15),
            lockout_max: Duration::hours(24),
            until_unlocked: false,
            address_threshold: 20,
            address_block: Duration::minutes(15),
            two_factor: TwoFactorPolicy::Off,
        }
    }
}

impl SignInPolicy {
    pub fn checked(self) -> DomainResult<Self> {
        let mins = |d: Duration| d.num_minutes();
        let ok = (1..=100).contains(&self.lockout_threshold)
            && (1..=10_000).contains(&self.address_threshold)
            && (1..=1440).contains(&mins(self.window))
            && (1..=10_080).contains(&mins(self.lockout_base))
            && (mins(self.lockout_base)..=525_600).contains(&mins(self.lockout_max))
            && (1..=10_080).contains(&mins(self.address_block));
        if !ok {
            return Err(DomainError::invalid(
                "lockout_threshold is 1 to 100 and address_threshold 1 to 10000; window_minutes 1 to 1440; \
                 lockout_minutes and address_block_minutes 1 to 10080; lockout_max_minutes from lockout_minutes to 525600",
            ));
        }
        Ok(self)
    }

    /// How long the account is locked after its `lockouts`-th lockout
    /// (1 for the first), or `None` for "until unlocked".
    pub fn lock_length(&self, lockouts: u32) -> Option<Duration> {
        if self.until_unlocked {
            return None;
        }
        let doublings = lockouts.saturating_sub(1).min(20);
        let secs = self
            .lockout_base
            .num_seconds()
            .saturating_mul(1_i64 << doublings);
        Some(Duration::seconds(secs).min(self.lockout_max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_grow_and_are_capped() {
        let p = SignInPolicy::default();
        assert_eq!(p.lock_length(1), Some(Duration::minutes(15)));
        assert_eq!(p.lock_length(2), Some(Duration::minutes(30)));
        assert_eq!(p.lock_length(3), Some(Duration::minutes(60)));
        assert_eq!(p.lock_length(10), Some(Duration::hours(24)));
        assert_eq!(p.lock_length(u32::MAX), Some(Duration::hours(24)));
        let manual = SignInPolicy {
            until_unlocked: true,
            ..p
        };
        assert_eq!(manual.lock_length(1), None);
    }

    #[test]
    fn who_needs_a_second_factor() {
        let u = |is_master, is_admin, marked, others| TwoFactorSubject {
            is_master,
            is_admin,
            marked,
            company_has_others: others,
        };
        use TwoFactorPolicy::*;
        // The master alone in a new company may sign in with a password.
        assert!(!second_factor_required(Off, u(true, true, false, false)));
        assert!(second_factor_required(Off, u(true, true, false, true)));
        assert!(!second_factor_required(Off, u(false, true, true, true)));
        assert!(second_factor_required(Admins, u(false, true, false, true)));
        assert!(!second_factor_required(Admins, u(false, false, true, true)));
        assert!(second_factor_required(All, u(false, false, false, true)));
        assert!(second_factor_required(
            Selected,
            u(false, false, true, true)
        ));
        assert!(!second_factor_required(
            Selected,
            u(false, true, false, true)
        ));
    }

    #[test]
    fn bounds_are_checked() {
        assert!(SignInPolicy::default().checked().is_ok());
        let bad = SignInPolicy {
            lockout_threshold: 0,
            ..Default::default()
        };
        assert!(bad.checked().is_err());
        let bad = SignInPolicy {
            lockout_max: Duration::minutes(1),
            ..Default::default()
        };
        assert!(bad.checked().is_err());
    }
}
