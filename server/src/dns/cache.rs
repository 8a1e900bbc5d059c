//! The answer cache: positive and negative answers until their TTL runs out, bounded in size,
//! reading time from an injectable [`Clock`].

use std::collections::HashMap;
use std::fmt::Debug;
use std::time::Instant;

use hickory_proto::rr::{Name, RecordType};

use super::{Answer, DnsError};

/// Where the resolver reads the time: [`SystemClock`] in the server, a manual clock in tests.
pub trait Clock: Send + Sync + Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

/// A cache key: the lower-cased name and the type.
pub(super) type Key = (Name, RecordType);

/// A bounded map from questions to answers with expiry times.
#[derive(Debug)]
pub(super) struct Cache {
    entries: HashMap<Key, Entry>,
    capacity: usize,
}

#[derive(Debug)]
struct Entry {
    expires: Instant,
    value: Result<Answer, DnsError>,
}

impl Cache {
    /// An empty cache holding at most `capacity` answers (0 disables caching).
    pub(super) fn new(capacity: usize) -> Self {
        Cache {
            entries: HashMap::new(),
            capacity,
        }
    }

    /// The answer stored for `key`, if it has not expired at `now`.
    pub(super) fn get(&mut self, key: &Key, now: Instant) -> Option<Result<Answer, DnsError>> {
        match self.entries.get(key) {
            Some(e) if e.expires > now => Some(e.value.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores `value` until `expires`. When full, expired entries go first, then the one
    /// closest to expiry (a linear scan, only when full).
    pub(super) fn insert(
        &mut self,
        key: Key,
        value: Result<Answer, DnsError>,
        expires: Instant,
        now: Instant,
    ) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= self.capacity
                && let Some(soonest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&soonest);
            }
        }
        self.entries.insert(key, Entry { expires, value });
    }

    /// How many answers are stored (expired ones included until touched).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}
