//! The flow cache in front of a slow path (opte's unified flow table, OVS megaflows):
//! the slow path's decision for a flow is stored under the flow's key and replayed for
//! every later packet. Bumping the epoch (when rules change) invalidates every entry
//! at once without walking the table.

use rustc_hash::FxHashMap;
use std::hash::Hash;

/// A bounded key -> decision cache with epoch invalidation.
#[derive(Debug, Clone)]
pub struct FlowCache<K, V> {
    entries: FxHashMap<K, (u64, V)>,
    epoch: u64,
    capacity: usize,
    hits: u64,
    misses: u64,
}

impl<K: Hash + Eq, V: Clone> FlowCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        FlowCache {
            entries: FxHashMap::default(),
            epoch: 0,
            capacity,
            hits: 0,
            misses: 0,
        }
    }

    /// The cached decision for `key`, if one from the current epoch exists.
    pub fn get(&mut self, key: &K) -> Option<V> {
        match self.entries.get(key) {
            Some((epoch, value)) if *epoch == self.epoch => {
                self.hits += 1;
                Some(value.clone())
            }
            _ => {
                self.misses += 1;
                None
            }
        }
    }

    /// Like [`FlowCache::get`], the decision itself (to update it in place).
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        match self.entries.get_mut(key) {
            Some((epoch, value)) if *epoch == self.epoch => {
                self.hits += 1;
                Some(value)
            }
            _ => {
                self.misses += 1;
                None
            }
        }
    }

    /// Stores the slow path's decision. A full cache is emptied first (entries are
    /// cheap to recompute; the bound keeps memory flat under a flood of new flows). A
    /// cache of capacity 0 stores nothing: every packet takes the slow path.
    pub fn insert(&mut self, key: K, value: V) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries.clear();
        }
        self.entries.insert(key, (self.epoch, value));
    }

    /// The decision stored for `key`, whatever its epoch (to finish what a replay
    /// of it left pending), without counting a hit or a miss.
    pub fn get_mut_any_epoch(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(_, value)| value)
    }

    /// Decisions it holds now (some may be from an old epoch).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets every decision.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Invalidates every entry (rules changed).
    pub fn bump_epoch(&mut self) {
        self.epoch += 1;
    }

    /// Decisions it holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn hits(&self) -> u64 {
        self.hits
    }

    pub fn misses(&self) -> u64 {
        self.misses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_after_insert_and_miss_after_epoch_bump() {
        let mut cache = FlowCache::new(4);
        assert_eq!(cache.get(&1), None);
        cache.insert(1, "tunnel");
        assert_eq!(cache.get(&1), Some("tunnel"));
        cache.bump_epoch();
        assert_eq!(cache.get(&1), None);
        assert_eq!((cache.hits(), cache.misses()), (1, 2));
    }

    #[test]
    fn capacity_bounds_the_table() {
        let mut cache = FlowCache::new(2);
        cache.insert(1, ());
        cache.insert(2, ());
        cache.insert(3, ());
        assert_eq!(cache.get(&3), Some(()));
        assert_eq!(cache.get(&1), None);
    }
}
