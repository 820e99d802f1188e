//! The result cache: counts of filters that are not saved segments, kept
//! while what they read stays the same, within a byte budget.
//!
//! A count is filed under its [`Key`]: the plan's [`plan::key`], the
//! version of every cohort the plan reads (a cohort's version changes with
//! its members, and a cohort created again never has an old one's), and,
//! for a plan whose result depends on the users themselves (NOT, every
//! user, a bucket range: [`plan::reads_users`]), the number of users. Any
//! change to what a count read makes a key that was never filed, so an
//! entry is never invalidated explicitly: it ages out. The least recently
//! used entries go first once the budget is exceeded.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::Workspace;
use crate::ids::CohortKey;
use crate::segment::plan::{self, Leaf, Plan};

/// The default budget: 4 MiB (some 20,000 counts of ten-leaf filters).
pub const DEFAULT_BYTES: usize = 4 << 20;

/// What a cached count depends on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    plan: String,
    versions: Vec<u64>,
    users: Option<u32>,
}

impl Key {
    /// The key of `p` (planned on `ws`), or `None` for a plan counted
    /// without evaluation (every user, nobody, one cohort) or naming a
    /// cohort `ws` does not hold.
    pub fn new(ws: &Workspace, p: &Plan) -> Option<Key> {
        if matches!(
            p,
            Plan::All | Plan::Nothing | Plan::Leaf(Leaf::Cohort { .. })
        ) {
            return None;
        }
        let versions = plan::cohorts(p)
            .into_iter()
            .map(|(partner, id)| {
                ws.cohorts
                    .get(&CohortKey::new(partner, id))
                    .map(|c| c.version)
            })
            .collect::<Option<Vec<u64>>>()?;
        Some(Key {
            plan: plan::key(p),
            versions,
            users: plan::reads_users(p).then(|| ws.users.len()),
        })
    }

    /// What an entry under this key is charged: the key twice (the map
    /// and the recency order hold it) and a fixed overhead.
    fn bytes(&self) -> usize {
        2 * (self.plan.len() + 8 * self.versions.len()) + 128
    }
}

/// Hits, misses and size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Counts answered from the cache since the workspace was opened.
    pub hits: u64,
    /// Counts looked up and not found (then evaluated and stored).
    pub misses: u64,
    /// Results held now.
    pub entries: u64,
    /// Estimated bytes the held results take.
    pub bytes: u64,
    /// The byte budget (`result_cache_bytes`); 0: the cache is off.
    pub budget: u64,
}

#[derive(Debug, Default)]
struct Entries {
    /// count, last use, charge.
    map: HashMap<Key, (u64, u64, usize)>,
    /// Keys by last use, oldest first.
    order: BTreeMap<u64, Key>,
    bytes: usize,
    tick: u64,
}

/// A bounded cache of counts.
#[derive(Debug)]
pub struct ResultCache {
    entries: Mutex<Entries>,
    budget: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Default for ResultCache {
    fn default() -> Self {
        ResultCache::new(DEFAULT_BYTES)
    }
}

impl ResultCache {
    /// A cache holding at most about `budget` bytes (0: none).
    pub fn new(budget: usize) -> Self {
        ResultCache {
            entries: Mutex::default(),
            budget,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The count filed under `key`, if any (counted as a hit or a miss).
    pub fn get(&self, key: &Key) -> Option<u64> {
        let mut e = self.lock();
        e.tick += 1;
        let tick = e.tick;
        let found = match e.map.get_mut(key) {
            Some((count, used, _)) => {
                let old = std::mem::replace(used, tick);
                Some((*count, old))
            }
            None => None,
        };
        match found {
            Some((count, old)) => {
                if let Some(k) = e.order.remove(&old) {
                    e.order.insert(tick, k);
                }
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(count)
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Files a count, evicting the least recently used entries past the
    /// budget.
    pub fn insert(&self, key: Key, count: u64) {
        let charge = key.bytes();
        if charge > self.budget {
            return;
        }
        let mut e = self.lock();
        e.tick += 1;
        let tick = e.tick;
        if let Some((_, used, old_charge)) = e.map.remove(&key) {
            e.order.remove(&used);
            e.bytes -= old_charge;
        }
        e.order.insert(tick, key.clone());
        e.map.insert(key, (count, tick, charge));
        e.bytes += charge;
        while e.bytes > self.budget {
            let Some((_, oldest)) = e.order.pop_first() else {
                break;
            };
            if let Some((_, _, c)) = e.map.remove(&oldest) {
                e.bytes -= c;
            }
        }
    }

    /// Drops every entry (the workspace was rebuilt).
    pub fn clear(&self) {
        let mut e = self.lock();
        e.map.clear();
        e.order.clear();
        e.bytes = 0;
    }

    /// The cache's hits, misses and size now.
    pub fn stats(&self) -> Stats {
        let e = self.lock();
        Stats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: e.map.len() as u64,
            bytes: e.bytes as u64,
            budget: self.budget as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Key {
        Key {
            plan: format!("&(c{i};)"),
            versions: vec![i],
            users: None,
        }
    }

    #[test]
    fn hits_misses_and_eviction_at_the_budget() {
        let per = key(0).bytes();
        let cache = ResultCache::new(3 * per);
        cache.insert(key(1), 10);
        cache.insert(key(2), 20);
        cache.insert(key(3), 30);
        assert_eq!(cache.get(&key(1)), Some(10)); // 1 is now the newest
        cache.insert(key(4), 40); // evicts 2, the least recently used
        assert_eq!(cache.get(&key(2)), None);
        assert_eq!(cache.get(&key(3)), Some(30));
        assert_eq!(cache.get(&key(1)), Some(10));
        assert_eq!(cache.get(&key(4)), Some(40));
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.entries), (4, 1, 3));
        assert!(s.bytes <= s.budget, "{s:?}");
        assert_eq!(s.bytes, 3 * per as u64);
        // Filing under a key already held replaces it.
        cache.insert(key(4), 41);
        assert_eq!(cache.get(&key(4)), Some(41));
        assert_eq!(cache.stats().entries, 3);
    }

    #[test]
    fn a_zero_budget_holds_nothing() {
        let cache = ResultCache::new(0);
        cache.insert(key(1), 10);
        assert_eq!(cache.get(&key(1)), None);
        assert_eq!(cache.stats().bytes, 0);
    }
}
