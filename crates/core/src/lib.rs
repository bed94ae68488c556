//! Strongroom's domain: companies, users, records, the policies that govern
//! them and the access decisions. No HTTP and no SQL here; the current time
//! is always a parameter (see [`clock`]).

pub mod access;
pub mod audit;
pub mod catalogue;
pub mod clock;
pub mod detect;
pub mod error;
pub mod export;
pub mod hours;
pub mod ident;
pub mod ip_policy;
pub mod password;
pub mod pii;
pub mod policy;
pub mod record;
pub mod session;
pub mod signin;

pub use error::{DomainError, DomainResult};

/// Internal numeric id of a company. Every store call takes one, so no query
/// can forget which company it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CompanyId(pub i64);

/// Internal numeric id of a user (not the user ID people type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserKey(pub i64);
