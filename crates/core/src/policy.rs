//! The one access decision point. Every question about records — may this
//! person act on this record type, on this record, which records may they
//! list, which fields may they see — is answered here, with a reason code
//! for every denial. The server's read, list, search, history, write and
//! reveal paths, and API keys, all call these functions; there is no second
//! implementation. Deny by default: a record type, field or action nobody
//! was granted stays out of reach.

use std::collections::BTreeSet;

use strongroom_proto::{Classification, FieldDef};

use crate::pii::is_protected;
use crate::UserKey;

/// What may be done to records of a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    View,
    Create,
    Edit,
    Delete,
    Export,
    Reveal,
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::View,
        Action::Create,
        Action::Edit,
        Action::Delete,
        Action::Export,
        Action::Reveal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::View => "view",
            Action::Create => "create",
            Action::Edit => "edit",
            Action::Delete => "delete",
            Action::Export => "export",
            Action::Reveal => "reveal",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// Which records a grant covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Records the user owns.
    Own,
    /// Records of the user's current department.
    Department,
    /// Every record of the company.
    Company,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Own => "own",
            Scope::Department => "department",
            Scope::Company => "company",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        [Scope::Own, Scope::Department, Scope::Company]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// Administrative powers, held as separate roles so duties can be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Power {
    /// Users, departments, role and clearance assignment, API keys,
    /// others' sessions, unlocking.
    Users,
    /// Security settings: IP rules, hours, password and sign-in policy,
    /// detectors, incidents, blocks, roles, record types and their
    /// classification, the pledge and training rules.
    Security,
    /// Reading the audit log.
    Audit,
    /// Key and backup operations.
    Keys,
}

impl Power {
    pub const ALL: [Power; 4] = [Power::Users, Power::Security, Power::Audit, Power::Keys];

    pub fn as_str(self) -> &'static str {
        match self {
            Power::Users => "users",
            Power::Security => "security",
            Power::Audit => "audit",
            Power::Keys => "keys",
        }
    }

    pub fn parse(s: &str) -> Option<Power> {
        Power::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// One grant of a role: actions on a record type (or `*`, every type) over
/// a scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    pub record_type: String,
    pub actions: BTreeSet<Action>,
    pub scope: Scope,
}

impl Grant {
    fn covers_type(&self, record_type: &str) -> bool {
        self.record_type == "*" || self.record_type == record_type
    }
}

/// Everything the decisions look at about the person asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub user: UserKey,
    pub department: Option<i64>,
    pub is_master: bool,
    /// The security level granted to the user.
    pub clearance: Classification,
    /// The current security pledge was accepted (or none is published).
    pub pledge_ok: bool,
    /// Security training is current (or the company does not require it).
    pub training_ok: bool,
    /// The union of the user's own roles and their department's.
    pub grants: Vec<Grant>,
    pub powers: BTreeSet<Power>,
}

/// The facts about one record that scope decisions need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordFacts {
    pub department: Option<i64>,
    pub owner: UserKey,
}

/// Why access was refused; the code goes to the audit log and the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    PledgeNotAccepted,
    AboveClearance,
    NoGrant,
    OutOfScope,
    NoPower,
}

impl Denial {
    pub fn code(self) -> &'static str {
        match self {
            Denial::PledgeNotAccepted => "pledge_not_accepted",
            Denial::AboveClearance => "above_clearance",
            Denial::NoGrant => "no_grant",
            Denial::OutOfScope => "out_of_scope",
            Denial::NoPower => "no_power",
        }
    }

    /// What the person can do about it.
    pub fn message(self) -> &'static str {
        match self {
            Denial::PledgeNotAccepted => {
                "accept the company's current security pledge first: GET then POST /api/v1/pledge/accept"
            }
            Denial::AboveClearance => {
                "this information is classified above your security level (or your security training has lapsed)"
            }
            Denial::NoGrant => "none of your roles allows this; ask your administrator for a role",
            Denial::OutOfScope => {
                "this record is outside the records your roles cover (your own, your department's)"
            }
            Denial::NoPower => "this needs an administrative role you do not hold",
        }
    }
}

pub type Decision = Result<(), Denial>;

/// Which records a listing may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListScope {
    All,
    /// Records of this department (if any) or owned by this user (if set).
    Limited {
        department: Option<i64>,
        owner: Option<UserKey>,
    },
}

/// How one field is shown to the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldAccess {
    Visible,
    Masked,
    /// Above the reader's level: not returned, marked as withheld.
    Withheld,
}

impl ListScope {
    /// The store's form of this scope: `None` for every record, else the
    /// department and owner a record must match (one of them).
    pub fn as_filter(self) -> Option<(Option<i64>, Option<UserKey>)> {
        match self {
            ListScope::All => None,
            ListScope::Limited { department, owner } => Some((department, owner)),
        }
    }
}

impl Profile {
    /// The level the reader may see now: lapsed training caps it at
    /// internal.
    pub fn effective_clearance(&self) -> Classification {
        if self.training_ok {
            self.clearance
        } else {
            self.clearance.min(Classification::Internal)
        }
    }

    pub fn has_power(&self, p: Power) -> Decision {
        if self.is_master || self.powers.contains(&p) {
            Ok(())
        } else {
            Err(Denial::NoPower)
        }
    }

    fn gate(&self, type_class: Classification) -> Decision {
        if !self.pledge_ok {
            return Err(Denial::PledgeNotAccepted);
        }
        if type_class > self.effective_clearance() {
            return Err(Denial::AboveClearance);
        }
        Ok(())
    }

    fn matching(&self, record_type: &str, action: Action) -> impl Iterator<Item = &Grant> {
        let record_type = record_type.to_owned();
        self.grants
            .iter()
            .filter(move |g| g.covers_type(&record_type) && g.actions.contains(&action))
    }

    fn scope_covers(&self, scope: Scope, r: RecordFacts) -> bool {
        match scope {
            Scope::Company => true,
            Scope::Department => self.department.is_some() && r.department == self.department,
            Scope::Own => r.owner == self.user,
        }
    }

    /// May the person do `action` on records of this type at all (on some
    /// record)?
    pub fn decide_type(
        &self,
        record_type: &str,
        type_class: Classification,
        action: Action,
    ) -> Decision {
        self.gate(type_class)?;
        if self.is_master || self.matching(record_type, action).next().is_some() {
            Ok(())
        } else {
            Err(Denial::NoGrant)
        }
    }

    /// May the person do `action` on this record?
    pub fn decide_record(
        &self,
        record_type: &str,
        type_class: Classification,
        action: Action,
        record: RecordFacts,
    ) -> Decision {
        self.decide_type(record_type, type_class, action)?;
        if self.is_master
            || self
                .matching(record_type, action)
                .any(|g| self.scope_covers(g.scope, record))
        {
            Ok(())
        } else {
            Err(Denial::OutOfScope)
        }
    }

    /// Which records of a type a listing or search may return.
    pub fn list_scope(
        &self,
        record_type: &str,
        type_class: Classification,
        action: Action,
    ) -> Result<ListScope, Denial> {
        self.decide_type(record_type, type_class, action)?;
        if self.is_master {
            return Ok(ListScope::All);
        }
        let scopes: BTreeSet<Scope> = self
            .matching(record_type, action)
            .map(|g| g.scope)
            .collect();
        if scopes.contains(&Scope::Company) {
            return Ok(ListScope::All);
        }
        Ok(ListScope::Limited {
            department: self
                .department
                .filter(|_| scopes.contains(&Scope::Department)),
            owner: scopes.contains(&Scope::Own).then_some(self.user),
        })
    }

    /// How a field of a record the person may view is shown; `reveal` is
    /// whether they asked for it in full.
    pub fn field_access(
        &self,
        record_type: &str,
        field: &FieldDef,
        record: RecordFacts,
        reveal: bool,
    ) -> FieldAccess {
        if field.classification > self.effective_clearance() {
            return FieldAccess::Withheld;
        }
        if !is_protected(field) {
            return FieldAccess::Visible;
        }
        if reveal && self.may_reveal(record_type, record) {
            FieldAccess::Visible
        } else {
            FieldAccess::Masked
        }
    }

    /// May the person reveal protected fields of this record?
    pub fn may_reveal(&self, record_type: &str, record: RecordFacts) -> bool {
        self.is_master
            || self
                .matching(record_type, Action::Reveal)
                .any(|g| self.scope_covers(g.scope, record))
    }
}

/// A role the product defines; every company has these, and they cannot be
/// changed or deleted (companies make their own alongside).
#[derive(Debug, Clone)]
pub struct BuiltInRole {
    pub name: &'static str,
    pub description: &'static str,
    pub grants: Vec<Grant>,
    pub powers: Vec<Power>,
}

pub fn built_in_roles() -> Vec<BuiltInRole> {
    use Action::*;
    let all = |actions: &[Action], scope| Grant {
        record_type: "*".into(),
        actions: actions.iter().copied().collect(),
        scope,
    };
    let power = |name, description, p| BuiltInRole {
        name,
        description,
        grants: vec![],
        powers: vec![p],
    };
    vec![
        BuiltInRole {
            name: "records_full",
            description: "View, create, edit, delete and export every record of the company",
            grants: vec![all(&[View, Create, Edit, Delete, Export], Scope::Company)],
            powers: vec![],
        },
        BuiltInRole {
            name: "records_department",
            description: "View, create and edit the records of one's own department",
            grants: vec![all(&[View, Create, Edit], Scope::Department)],
            powers: vec![],
        },
        BuiltInRole {
            name: "records_own",
            description: "View, create and edit one's own records",
            grants: vec![all(&[View, Create, Edit], Scope::Own)],
            powers: vec![],
        },
        BuiltInRole {
            name: "reveal",
            description: "Show protected fields in full (audited), within one's security level",
            grants: vec![all(&[Reveal], Scope::Company)],
            powers: vec![],
        },
        power(
            "user_admin",
            "Manage users, departments, roles held, API keys and sessions",
            Power::Users,
        ),
        power(
            "security_admin",
            "Manage security settings, roles, record types and the pledge",
            Power::Security,
        ),
        power("auditor", "Read the audit log", Power::Audit),
        power("key_officer", "Key and backup operations", Power::Keys),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use strongroom_proto::{FieldType, PiiKind};
    use Classification::*;

    fn grant(t: &str, actions: &[Action], scope: Scope) -> Grant {
        Grant {
            record_type: t.into(),
            actions: actions.iter().copied().collect(),
            scope,
        }
    }

    fn profile(clearance: Classification, grants: Vec<Grant>) -> Profile {
        Profile {
            user: UserKey(10),
            department: Some(1),
            is_master: false,
            clearance,
            pledge_ok: true,
            training_ok: true,
            grants,
            powers: BTreeSet::new(),
        }
    }

    fn field(c: Classification, pii: PiiKind) -> FieldDef {
        FieldDef {
            key: "f".into(),
            label: "F".into(),
            field_type: FieldType::Text,
            classification: c,
            pii_kind: pii,
            required: false,
        }
    }

    const MINE: RecordFacts = RecordFacts {
        department: Some(2),
        owner: UserKey(10),
    };
    const MY_DEPT: RecordFacts = RecordFacts {
        department: Some(1),
        owner: UserKey(99),
    };
    const OTHER: RecordFacts = RecordFacts {
        department: Some(2),
        owner: UserKey(99),
    };
    const NO_DEPT: RecordFacts = RecordFacts {
        department: None,
        owner: UserKey(99),
    };

    #[test]
    fn decisions_table() {
        use Action::*;
        use Scope::*;
        // (clearance, grants, type class, action, record, expected)
        type Row = (
            Classification,
            Vec<Grant>,
            Classification,
            Action,
            RecordFacts,
            Decision,
        );
        let rows: Vec<Row> = vec![
            // Deny by default.
            (Restricted, vec![], Public, View, MINE, Err(Denial::NoGrant)),
            // A grant for another type does not help.
            (
                Restricted,
                vec![grant("vendor", &[View], Company)],
                Internal,
                View,
                OTHER,
                Err(Denial::NoGrant),
            ),
            // Nor one for another action.
            (
                Restricted,
                vec![grant("customer", &[View], Company)],
                Internal,
                Edit,
                OTHER,
                Err(Denial::NoGrant),
            ),
            (
                Internal,
                vec![grant("*", &[View], Company)],
                Internal,
                View,
                OTHER,
                Ok(()),
            ),
            // Nobody reads above their level, whatever the grant.
            (
                Internal,
                vec![grant("*", &[View], Company)],
                Confidential,
                View,
                OTHER,
                Err(Denial::AboveClearance),
            ),
            // Scopes.
            (
                Restricted,
                vec![grant("customer", &[View], Own)],
                Internal,
                View,
                MINE,
                Ok(()),
            ),
            (
                Restricted,
                vec![grant("customer", &[View], Own)],
                Internal,
                View,
                MY_DEPT,
                Err(Denial::OutOfScope),
            ),
            (
                Restricted,
                vec![grant("customer", &[View], Department)],
                Internal,
                View,
                MY_DEPT,
                Ok(()),
            ),
            (
                Restricted,
                vec![grant("customer", &[View], Department)],
                Internal,
                View,
                OTHER,
                Err(Denial::OutOfScope),
            ),
            (
                Restricted,
                vec![grant("customer", &[View], Department)],
                Internal,
                View,
                NO_DEPT,
                Err(Denial::OutOfScope),
            ),
            // The union of grants: a narrow and a wide one.
            (
                Restricted,
                vec![
                    grant("customer", &[View], Own),
                    grant("*", &[View], Department),
                ],
                Internal,
                View,
                MY_DEPT,
                Ok(()),
            ),
        ];
        for (i, (cl, grants, tc, action, rec, want)) in rows.into_iter().enumerate() {
            let p = profile(cl, grants);
            assert_eq!(
                p.decide_record("customer", tc, action, rec),
                want,
                "row {i}"
            );
        }
    }

    #[test]
    fn gates_come_first() {
        let mut p = profile(
            Restricted,
            vec![grant("*", &[Action::View], Scope::Company)],
        );
        p.pledge_ok = false;
        assert_eq!(
            p.decide_type("customer", Public, Action::View),
            Err(Denial::PledgeNotAccepted)
        );
        p.pledge_ok = true;
        p.training_ok = false;
        assert_eq!(p.effective_clearance(), Internal);
        assert_eq!(
            p.decide_type("customer", Confidential, Action::View),
            Err(Denial::AboveClearance)
        );
        assert_eq!(p.decide_type("customer", Internal, Action::View), Ok(()));
        // The master holds everything, but not past the gates.
        let mut m = profile(Restricted, vec![]);
        m.is_master = true;
        assert_eq!(
            m.decide_record("customer", Restricted, Action::Delete, OTHER),
            Ok(())
        );
        m.pledge_ok = false;
        assert!(m.decide_type("customer", Public, Action::View).is_err());
    }

    #[test]
    fn fields_are_withheld_masked_or_shown() {
        let p = profile(
            Confidential,
            vec![
                grant("customer", &[Action::View], Scope::Company),
                grant("customer", &[Action::Reveal], Scope::Own),
            ],
        );
        let restricted = field(Restricted, PiiKind::NationalId);
        let phone = field(Confidential, PiiKind::Phone);
        let name = field(Internal, PiiKind::Name);
        assert_eq!(
            p.field_access("customer", &restricted, MINE, true),
            FieldAccess::Withheld
        );
        assert_eq!(
            p.field_access("customer", &name, OTHER, false),
            FieldAccess::Visible
        );
        let high = profile(Restricted, p.grants.clone());
        assert_eq!(
            high.field_access("customer", &restricted, OTHER, false),
            FieldAccess::Masked
        );
        // Reveal follows its own grant's scope.
        assert_eq!(
            high.field_access("customer", &restricted, OTHER, true),
            FieldAccess::Masked
        );
        assert_eq!(
            high.field_access("customer", &restricted, MINE, true),
            FieldAccess::Visible
        );
        let _ = phone;
    }

    #[test]
    fn list_scope_is_the_union() {
        use Scope::*;
        let p = profile(
            Restricted,
            vec![
                grant("customer", &[Action::View], Own),
                grant("customer", &[Action::View], Department),
            ],
        );
        assert_eq!(
            p.list_scope("customer", Internal, Action::View),
            Ok(ListScope::Limited {
                department: Some(1),
                owner: Some(UserKey(10))
            })
        );
        let wide = profile(Restricted, vec![grant("*", &[Action::View], Company)]);
        assert_eq!(
            wide.list_scope("customer", Internal, Action::View),
            Ok(ListScope::All)
        );
        assert_eq!(
            profile(Restricted, vec![]).list_scope("customer", Internal, Action::View),
            Err(Denial::NoGrant)
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn class() -> impl Strategy<Value = Classification> {
            prop_oneof![
                Just(Public),
                Just(Internal),
                Just(Confidential),
                Just(Restricted)
            ]
        }
        fn scope() -> impl Strategy<Value = Scope> {
            prop_oneof![
                Just(Scope::Own),
                Just(Scope::Department),
                Just(Scope::Company)
            ]
        }
        fn grant_s() -> impl Strategy<Value = Grant> {
            (
                prop_oneof![Just("*"), Just("customer"), Just("vendor")],
                proptest::collection::btree_set(
                    prop_oneof![Just(Action::View), Just(Action::Reveal), Just(Action::Edit)],
                    0..3,
                ),
                scope(),
            )
                .prop_map(|(t, actions, scope)| Grant {
                    record_type: t.into(),
                    actions,
                    scope,
                })
        }
        fn facts() -> impl Strategy<Value = RecordFacts> {
            (proptest::option::of(0i64..3), 8i64..12).prop_map(|(d, o)| RecordFacts {
                department: d,
                owner: UserKey(o),
            })
        }

        proptest! {
            #[test]
            fn nothing_above_the_level_and_nothing_out_of_scope(
                clearance in class(),
                training_ok in any::<bool>(),
                department in proptest::option::of(0i64..3),
                grants in proptest::collection::vec(grant_s(), 0..4),
                type_class in class(),
                field_class in class(),
                rec in facts(),
                reveal in any::<bool>(),
            ) {
                let p = Profile {
                    user: UserKey(10),
                    department,
                    is_master: false,
                    clearance,
                    pledge_ok: true,
                    training_ok,
                    grants,
                    powers: BTreeSet::new(),
                };
                let cap = p.effective_clearance();
                let f = field(field_class, PiiKind::NationalId);
                // A field above the level is never shown, masked or not.
                if field_class > cap {
                    prop_assert_eq!(p.field_access("customer", &f, rec, reveal), FieldAccess::Withheld);
                }
                // A viewable record is of a type within the level and covered
                // by a grant whose scope includes it.
                if p.decide_record("customer", type_class, Action::View, rec).is_ok() {
                    prop_assert!(type_class <= cap);
                    let covered = p.grants.iter().any(|g| (g.record_type == "*" || g.record_type == "customer")
                        && g.actions.contains(&Action::View)
                        && match g.scope {
                            Scope::Company => true,
                            Scope::Department => department.is_some() && rec.department == department,
                            Scope::Own => rec.owner == UserKey(10),
                        });
                    prop_assert!(covered);
                }
                // The listing scope agrees with the per-record decision.
                if let Ok(ls) = p.list_scope("customer", type_class, Action::View) {
                    let listed = match ls {
                        ListScope::All => true,
                        ListScope::Limited { department: d, owner: o } =>
                            (d.is_some() && rec.department == d) || o == Some(rec.owner),
                    };
                    prop_assert_eq!(listed, p.decide_record("customer", type_class, Action::View, rec).is_ok());
                }
                // A revealed value needs a reveal grant covering the record.
                if p.field_access("customer", &f, rec, reveal) == FieldAccess::Visible {
                    prop_assert!(reveal && p.may_reveal("customer", rec));
                }
            }
        }
    }
}
