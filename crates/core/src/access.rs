//! Who the caller is, and what they may do. Code that needs administrative
//! rights asks for an [`AdminAuthority`], which only [`Principal::admin`]
//! can make, so a forgotten check does not compile.

use crate::error::{DomainError, DomainResult};
use crate::policy::{Power, Profile};
use crate::{CompanyId, UserKey};
use strongroom_proto::{UpdateUser, UserStatus};

/// An authenticated caller: a live session of an active user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub company: CompanyId,
    pub company_code: String,
    pub user: UserKey,
    pub user_id: String,
    pub department: Option<i64>,
    pub is_admin: bool,
    pub is_master: bool,
}

/// Proof that the caller may administer its company (users, departments,
/// record types). Not constructible outside this module.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuthority {
    company: CompanyId,
    by: UserKey,
}

impl AdminAuthority {
    pub fn company(&self) -> CompanyId {
        self.company
    }

    pub fn by(&self) -> UserKey {
        self.by
    }
}

impl Principal {
    /// Authority for work that needs `power`, which the caller's profile
    /// (their roles, or the master account) must hold.
    pub fn authority(&self, profile: &Profile, power: Power) -> DomainResult<AdminAuthority> {
        match profile.has_power(power) {
            Ok(()) => Ok(AdminAuthority {
                company: self.company,
                by: self.user,
            }),
            Err(_) => Err(DomainError::Forbidden(format!(
                "this needs the '{}' administrative power; ask your master admin for a role that has it",
                power.as_str()
            ))),
        }
    }
}

/// Which administrative power an administrative action needs: one table
/// for every endpoint, so duties stay separable.
pub fn power_for(action: &str) -> Power {
    let prefix = action.split('.').next().unwrap_or(action);
    match prefix {
        "user" | "department" | "session" | "api_key" | "training" => Power::Users,
        "audit" => Power::Audit,
        "key" | "backup" => Power::Keys,
        // ip_rules, access_hours, password_rules, session_policy,
        // sign_in_policy, detector, incident, block, role, record_type,
        // pledge, training_policy and anything new: security settings.
        _ => Power::Security,
    }
}

/// The facts about a user account that the protection rules look at.
#[derive(Debug, Clone, Copy)]
pub struct TargetUser {
    pub key: UserKey,
    pub is_master: bool,
}

/// The master account cannot be disabled or demoted, and nobody changes
/// their own admin flag or disables themselves (so a company can never lose
/// its last way in by accident).
pub fn check_user_update(
    auth: &AdminAuthority,
    target: TargetUser,
    change: &UpdateUser,
) -> DomainResult<()> {
    if target.is_master {
        if change.status == Some(UserStatus::Disabled) {
            return Err(DomainError::Forbidden(
                "the master account cannot be disabled".into(),
            ));
        }
        if change.is_admin == Some(false) {
            return Err(DomainError::Forbidden(
                "the master account cannot be demoted".into(),
            ));
        }
    }
    if target.key == auth.by() {
        if change.is_admin.is_some() {
            return Err(DomainError::Forbidden(
                "you cannot change your own administrator rights; ask another administrator".into(),
            ));
        }
        if change.status == Some(UserStatus::Disabled) {
            return Err(DomainError::Forbidden(
                "you cannot disable your own account".into(),
            ));
        }
    }
    Ok(())
}

pub fn check_user_delete(auth: &AdminAuthority, target: TargetUser) -> DomainResult<()> {
    if target.is_master {
        return Err(DomainError::Forbidden(
            "the master account cannot be deleted".into(),
        ));
    }
    if target.key == auth.by() {
        return Err(DomainError::Forbidden(
            "you cannot delete your own account".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(admin: bool) -> Principal {
        Principal {
            company: CompanyId(1),
            company_code: "ACME".into(),
            user: UserKey(2),
            user_id: "u".into(),
            department: None,
            is_admin: admin,
            is_master: false,
        }
    }

    fn profile(powers: &[Power]) -> Profile {
        Profile {
            user: UserKey(2),
            department: None,
            is_master: false,
            clearance: strongroom_proto::Classification::Internal,
            pledge_ok: true,
            training_ok: true,
            grants: vec![],
            powers: powers.iter().copied().collect(),
        }
    }

    #[test]
    fn authority_needs_the_power() {
        let p = principal(false);
        assert!(p.authority(&profile(&[]), Power::Users).is_err());
        assert!(p
            .authority(&profile(&[Power::Audit]), Power::Users)
            .is_err());
        assert!(p.authority(&profile(&[Power::Users]), Power::Users).is_ok());
        assert_eq!(power_for("user.create"), Power::Users);
        assert_eq!(power_for("audit.read"), Power::Audit);
        assert_eq!(power_for("ip_rules.update"), Power::Security);
        assert_eq!(power_for("role.update"), Power::Security);
    }

    #[test]
    fn master_is_protected() {
        let auth = principal(true)
            .authority(&profile(&[Power::Users]), Power::Users)
            .unwrap();
        let master = TargetUser {
            key: UserKey(1),
            is_master: true,
        };
        let demote = UpdateUser {
            is_admin: Some(false),
            ..Default::default()
        };
        assert!(check_user_update(&auth, master, &demote).is_err());
        assert!(check_user_delete(&auth, master).is_err());
        let other = TargetUser {
            key: UserKey(3),
            is_master: false,
        };
        assert!(check_user_update(&auth, other, &demote).is_ok());
        let me = TargetUser {
            key: UserKey(2),
            is_master: false,
        };
        assert!(check_user_update(&auth, me, &demote).is_err());
    }
}
