//! Read cache of decoded units keyed by physical location (segment, offset), so entries never
//! go stale: an overwrite writes elsewhere. Two generations give LRU-like behaviour in O(1).

use std::collections::HashMap;
use std::sync::Arc;

type Key = (u32, u32);

/// A bounded cache of decoded (decompressed, verified) units.
#[derive(Debug)]
pub struct ReadCache {
    young: HashMap<Key, Arc<Vec<u8>>>,
    old: HashMap<Key, Arc<Vec<u8>>>,
    young_bytes: usize,
    /// Bytes per generation.
    limit: usize,
    pub hits: u64,
    pub misses: u64,
}

impl ReadCache {
    /// A cache holding about `bytes` of data (0 disables it).
    pub fn new(bytes: usize) -> Self {
        ReadCache {
            young: HashMap::new(),
            old: HashMap::new(),
            young_bytes: 0,
            limit: bytes / 2,
            hits: 0,
            misses: 0,
        }
    }

    pub fn get(&mut self, key: Key) -> Option<Arc<Vec<u8>>> {
        if let Some(v) = self.young.get(&key) {
            self.hits += 1;
            return Some(v.clone());
        }
        if let Some(v) = self.old.remove(&key) {
            self.hits += 1;
            self.put(key, v.clone());
            return Some(v);
        }
        self.misses += 1;
        None
    }

    /// Whether `key` is cached, without counting a hit or a miss.
    pub fn peek(&self, key: Key) -> bool {
        self.young.contains_key(&key) || self.old.contains_key(&key)
    }

    pub fn put(&mut self, key: Key, v: Arc<Vec<u8>>) {
        if self.limit == 0 {
            return;
        }
        self.young_bytes += v.len();
        self.young.insert(key, v);
        if self.young_bytes > self.limit {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
    }

    /// Drops entries of a deleted segment.
    pub fn forget_segment(&mut self, seg: u32) {
        self.young.retain(|k, _| k.0 != seg);
        self.old.retain(|k, _| k.0 != seg);
    }
}
