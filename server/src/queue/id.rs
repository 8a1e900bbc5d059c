//! Queue ids: how a message is named in the store and in every log line about it.
//!
//! Each transaction gets a [`QueueId`] when its MAIL is accepted. The id is the message's key
//! in the queue store ([`crate::queue::store`]), so it must not repeat across restarts: it starts
//! with the time in microseconds.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Identifies one message in logs: 16 upper-case hex digits (microseconds since the epoch, then
/// a per-process counter), so ids sort by time and do not repeat across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

impl QueueId {
    /// A fresh id, different from every other one (so no `Default`: there is no default id).
    #[allow(clippy::new_without_default)]
    pub fn new() -> QueueId {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xff;
        QueueId(format!("{:014X}{n:02X}", micros & 0xff_ffff_ffff_ffff))
    }

    /// An id read back from the store: 16 upper-case hex digits.
    pub fn parse(s: &str) -> Option<QueueId> {
        (s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')))
            .then(|| QueueId(s.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_sort_by_time() {
        let ids: Vec<QueueId> = (0..200).map(|_| QueueId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        assert!(ids.iter().all(|id| id.as_str().len() == 16));
        assert!(
            ids.iter()
                .all(|id| QueueId::parse(id.as_str()).as_ref() == Some(id))
        );
    }

    #[test]
    fn only_ids_parse() {
        for bad in [
            "",
            "0123456789ABCDE",
            "0123456789abcdef",
            "0123456789ABCDEFG",
            "../../etc/passw",
        ] {
            assert_eq!(QueueId::parse(bad), None, "input {bad:?}");
        }
    }
}
