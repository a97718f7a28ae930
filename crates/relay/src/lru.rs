//! The cache's policy, pure: which entries to drop so the cache stays within its size, least
//! recently used first.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default)]
pub struct Lru {
    limit: u64,
    total: u64,
    tick: u64,
    entries: HashMap<String, (u64, u64)>,
    order: BTreeMap<u64, String>,
}

impl Lru {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Marks `key` as used now; false when it is not held.
    pub fn touch(&mut self, key: &str) -> bool {
        let Some(e) = self.entries.get_mut(key) else {
            return false;
        };
        self.order.remove(&e.1);
        self.tick += 1;
        e.1 = self.tick;
        self.order.insert(self.tick, key.to_owned());
        true
    }

    /// Adds (or replaces) `key` of `size` bytes as used now and returns the keys to drop so the
    /// total fits the limit, least recently used first. An entry larger than the whole limit is
    /// itself dropped at once (returned last).
    pub fn insert(&mut self, key: &str, size: u64) -> Vec<String> {
        self.remove(key);
        self.tick += 1;
        self.entries.insert(key.to_owned(), (size, self.tick));
        self.order.insert(self.tick, key.to_owned());
        self.total += size;
        let mut dropped = Vec::new();
        while self.total > self.limit {
            let Some((_, k)) = self.order.pop_first() else {
                break;
            };
            if let Some((s, _)) = self.entries.remove(&k) {
                self.total -= s;
            }
            dropped.push(k);
        }
        dropped
    }

    pub fn remove(&mut self, key: &str) -> bool {
        let Some((size, tick)) = self.entries.remove(key) else {
            return false;
        };
        self.order.remove(&tick);
        self.total -= size;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_goes_first() {
        let mut l = Lru::new(100);
        assert!(l.insert("a", 40).is_empty());
        assert!(l.insert("b", 40).is_empty());
        assert!(l.touch("a"));
        assert_eq!(l.insert("c", 40), vec!["b".to_owned()]);
        assert_eq!(l.total(), 80);
        assert!(l.contains("a") && l.contains("c") && !l.contains("b"));
    }

    #[test]
    fn replacing_counts_once_and_oversize_is_dropped() {
        let mut l = Lru::new(100);
        l.insert("a", 60);
        assert!(l.insert("a", 70).is_empty());
        assert_eq!(l.total(), 70);
        assert_eq!(
            l.insert("huge", 500),
            vec!["a".to_owned(), "huge".to_owned()]
        );
        assert_eq!(l.total(), 0);
        assert!(l.is_empty());
        assert!(!l.touch("huge"));
    }
}
