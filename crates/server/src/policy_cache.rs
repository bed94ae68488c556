//! What every request's security checks read (access hours, IP rules, the
//! caller's roles and clearance, record types, current key versions),
//! cached per node under the company's policy epoch; and, for sign-in, the
//! session and sign-in policies, the password rules, and whether a company
//! has users besides its master.
//!
//! The epoch is a counter in the store that triggers move in the same
//! transaction as any change to those inputs (see the store's
//! `policy_epoch`). A request reads it together with its session, so an
//! entry is used only while nothing it depends on has changed, whichever
//! node or tool made the change. Without an epoch (sign-in, before there is
//! a session), the checks read the store directly.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use strongroom_core::ip_policy::IpRule;
use strongroom_core::password::PasswordRules;
use strongroom_core::signin::SignInPolicy;
use strongroom_store::{AccessFacts, HoursSettings, StoredRecordType};

/// Entries per map before it is emptied (a bound on memory, whatever the
/// number of users and types).
const MAX_ENTRIES: usize = 20_000;

/// A map of values, each tagged with the epoch it was read under.
pub struct EpochCache<K, V> {
    map: Mutex<HashMap<K, (i64, V)>>,
}

impl<K: Eq + Hash, V: Clone> Default for EpochCache<K, V> {
    fn default() -> Self {
        EpochCache {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, V: Clone> EpochCache<K, V> {
    /// The value read under exactly this epoch, if any.
    pub fn get(&self, key: &K, epoch: i64) -> Option<V> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some((e, v)) if *e == epoch => Some(v.clone()),
            _ => None,
        }
    }

    /// Keeps a value read (from the store, after the epoch was read) under
    /// `epoch`, unless a newer epoch's value is already there.
    pub fn put(&self, key: K, epoch: i64, value: V) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
            map.clear();
        }
        match map.get(&key) {
            Some((e, _)) if *e > epoch => {}
            _ => {
                map.insert(key, (epoch, value));
            }
        }
    }

    /// The value under `epoch` (when there is one), or what `load` reads,
    /// kept for the next request.
    pub async fn get_or_load<E, F>(&self, key: K, epoch: Option<i64>, load: F) -> Result<V, E>
    where
        F: std::future::Future<Output = Result<V, E>>,
    {
        let Some(epoch) = epoch else {
            return load.await;
        };
        if let Some(v) = self.get(&key, epoch) {
            return Ok(v);
        }
        let v = load.await?;
        self.put(key, epoch, v.clone());
        Ok(v)
    }
}

/// A company's IP rules and a user's own.
pub type IpRuleLists = (Vec<IpRule>, Vec<IpRule>);

/// The caches, one per kind of input.
#[derive(Default)]
pub struct PolicyCache {
    /// (company, user) → access hours and account validity.
    pub hours: EpochCache<(i64, i64), HoursSettings>,
    /// (company, user) → the company's and the user's IP rules.
    pub ip_rules: EpochCache<(i64, Option<i64>), IpRuleLists>,
    /// (company, user) → clearance, roles, pledge and training.
    pub access: EpochCache<(i64, i64), Option<AccessFacts>>,
    /// (company, type key) → the record type and its fields.
    pub record_types: EpochCache<(i64, String), Option<StoredRecordType>>,
    /// company → the current (data, index) key versions.
    pub key_versions: EpochCache<i64, (i64, i64)>,
    /// company → its session limit, what to do when full, idle minutes.
    pub session_policy: EpochCache<i64, (i64, String, i64)>,
    /// company → whether it has users besides its master account.
    pub other_users: EpochCache<i64, bool>,
    /// company → its lockout, throttling and second-factor policy.
    pub sign_in_policy: EpochCache<i64, SignInPolicy>,
    /// (company, user) → the password rules that apply to the user.
    pub password_rules: EpochCache<(i64, i64), PasswordRules>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_used_only_under_its_own_epoch() {
        let c: EpochCache<i64, &str> = EpochCache::default();
        c.put(1, 5, "five");
        assert_eq!(c.get(&1, 5), Some("five"));
        assert_eq!(c.get(&1, 6), None, "a moved epoch must miss");
        assert_eq!(c.get(&1, 4), None);
        // An older read never replaces a newer one.
        c.put(1, 4, "four");
        assert_eq!(c.get(&1, 5), Some("five"));
        c.put(1, 6, "six");
        assert_eq!(c.get(&1, 6), Some("six"));
        assert_eq!(c.get(&1, 5), None);
    }

    #[test]
    fn the_map_stays_bounded() {
        let c: EpochCache<usize, usize> = EpochCache::default();
        for i in 0..(MAX_ENTRIES * 2 + 7) {
            c.put(i, 1, i);
        }
        assert!(c.map.lock().unwrap().len() <= MAX_ENTRIES);
    }

    #[tokio::test]
    async fn without_an_epoch_the_store_is_read_every_time() {
        let c: EpochCache<i64, i64> = EpochCache::default();
        let mut reads = 0;
        for _ in 0..3 {
            let v: Result<i64, ()> = c
                .get_or_load(1, None, async {
                    reads += 1;
                    Ok(7)
                })
                .await;
            assert_eq!(v, Ok(7));
        }
        assert_eq!(reads, 3);
        for _ in 0..3 {
            let _: Result<i64, ()> = c
                .get_or_load(1, Some(2), async {
                    reads += 1;
                    Ok(7)
                })
                .await;
        }
        assert_eq!(reads, 4, "one read, then the cached value");
    }
}
