//! Retry timers: the one mechanism that brings a message back to its workers when its next
//! attempt is due.
//!
//! A worker that leaves recipients pending asks for the message again at their earliest
//! [`crate::queue::store::Recipient::next_attempt`] (what [`crate::queue::store::Applied`]
//! reports). One timer runs per (message, time): asking twice for the same moment sets one.
//! Timers live in memory only; after a restart the startup scan hands every queued message
//! to its workers, which skip the recipients that are not due and set the timers again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_channel::Sender;
use async_io::Timer;

use crate::queue::QueueId;

/// The timers of one kind of worker, sending due ids on that worker's channel.
#[derive(Debug, Clone)]
pub struct Timers {
    /// The channel the workers take ids from.
    to: Sender<QueueId>,
    /// The timers set: (id, Unix seconds).
    set: Arc<Mutex<HashSet<(QueueId, u64)>>>,
}

impl Timers {
    /// Timers that send on `to`.
    pub fn new(to: Sender<QueueId>) -> Timers {
        Timers {
            to,
            set: Arc::default(),
        }
    }

    /// Sends `id` again at `at` (Unix seconds; now if that is past), once per (id, time).
    pub fn at(&self, id: &QueueId, at: u64) {
        // Held by the operator: it comes back when released, not by a timer.
        if at == crate::queue::store::HELD {
            return;
        }
        let key = (id.clone(), at);
        if !self.lock().insert(key.clone()) {
            return;
        }
        let timers = self.clone();
        smol::spawn(async move {
            Timer::after(Duration::from_secs(at.saturating_sub(unix_now()))).await;
            timers.lock().remove(&key);
            let _ = timers.to.send(key.0).await;
        })
        .detach();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(QueueId, u64)>> {
        self.set.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
