//! Hands queued messages to the workers that deliver them: the local delivery workers for
//! recipients of our domains, the outbound workers for the others (a message with both goes
//! to both; each changes only its own recipients, see [`crate::queue::store::Store::apply`]),
//! and keeps [`Flights`]: which messages each kind of worker holds right now, so that no
//! message is delivered by two workers of a kind at once, nor removed while one holds it.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_channel::Sender;

use crate::queue::QueueId;
use crate::queue::store::{Envelope, Owner};

/// The workers' channels.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// Local delivery ([`crate::deliver::local`]).
    pub local: Sender<QueueId>,
    /// Outbound delivery ([`crate::deliver::smtp`]).
    pub remote: Sender<QueueId>,
    /// The messages held by workers now (shared by every clone).
    pub flights: Flights,
}

impl Dispatch {
    /// The channels, with no message in flight yet.
    pub fn new(local: Sender<QueueId>, remote: Sender<QueueId>) -> Dispatch {
        Dispatch {
            local,
            remote,
            flights: Flights::default(),
        }
    }

    /// The channel of `owner`'s workers.
    fn channel(&self, owner: Owner) -> &Sender<QueueId> {
        match owner {
            Owner::Local => &self.local,
            Owner::Remote => &self.remote,
        }
    }
}

impl Dispatch {
    /// Sends `id` to the workers that have pending recipients in `envelope`.
    pub fn queued(&self, id: &QueueId, envelope: &Envelope) {
        // Unbounded channels: sending fails only once they are closed (shutting down), and
        // the message is durable: it resumes at the next start.
        if envelope.pending_for(Owner::Local) {
            let _ = self.local.try_send(id.clone());
        }
        if envelope.pending_for(Owner::Remote) {
            let _ = self.remote.try_send(id.clone());
        }
    }

    /// Sends `id` to both kinds of workers (startup: each skips what is not its own).
    pub fn both(&self, id: &QueueId) {
        let _ = self.local.try_send(id.clone());
        let _ = self.remote.try_send(id.clone());
    }

    /// Keeps every worker off `id` so that it can be taken out of the queue (`postern queue
    /// remove`): waits up to `wait` for the workers that hold it to finish, then returns a
    /// guard under which no worker takes it. `None`: a worker still held it after `wait`.
    /// When the guard goes, the ids asked for meanwhile go to their workers again (a removed
    /// message is then simply not found).
    pub fn removal(&self, id: &QueueId, wait: Duration) -> Option<Removal<'_>> {
        let (lock, changed) = &*self.flights.0;
        let deadline = Instant::now() + wait;
        let mut flights = relock(lock.lock());
        flights.entry(id.clone()).or_default().removing = true;
        loop {
            let flight = flights.get(id).copied().unwrap_or_default();
            if flight.working == [false, false] {
                return Some(Removal {
                    dispatch: self,
                    id: id.clone(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(flights);
                drop(Removal {
                    dispatch: self,
                    id: id.clone(),
                });
                return None;
            }
            flights = match changed.wait_timeout(flights, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// The messages held by delivery workers right now, per kind of worker ([`Owner`]), and the
/// ones asked for again while held. One worker of a kind at a time holds a message: a second
/// dispatch of it (`queue retry` during a slow delivery, say) is remembered and handed out
/// again when the first is done, instead of delivering the same recipients twice.
#[derive(Debug, Default, Clone)]
pub struct Flights(Arc<(Mutex<HashMap<QueueId, Flight>>, Condvar)>);

/// One message's entry in [`Flights`].
#[derive(Debug, Default, Clone, Copy)]
struct Flight {
    /// Held by a worker of each kind (local, remote).
    working: [bool; 2],
    /// Asked for again while held (or while being removed), per kind.
    again: [bool; 2],
    /// Being taken out of the queue: no worker takes it.
    removing: bool,
}

impl Flight {
    fn idle(&self) -> bool {
        self.working == [false, false] && self.again == [false, false] && !self.removing
    }
}

/// The slot of `owner` in a [`Flight`].
fn slot(owner: Owner) -> usize {
    match owner {
        Owner::Local => 0,
        Owner::Remote => 1,
    }
}

/// A lock's guard, poisoned or not (the map is valid after any panic).
fn relock<'a, T>(
    r: Result<MutexGuard<'a, T>, PoisonError<MutexGuard<'a, T>>>,
) -> MutexGuard<'a, T> {
    r.unwrap_or_else(PoisonError::into_inner)
}

impl Flights {
    /// A worker of `owner`'s kind would take `id`: `true` if it may. `false` when another of
    /// its kind holds it or it is being removed; the request is then remembered, and
    /// [`Flights::end`] (or the end of the removal) hands it out again.
    pub fn begin(&self, id: &QueueId, owner: Owner) -> bool {
        let mut flights = relock(self.0.0.lock());
        let flight = flights.entry(id.clone()).or_default();
        if flight.removing || flight.working[slot(owner)] {
            flight.again[slot(owner)] = true;
            return false;
        }
        flight.working[slot(owner)] = true;
        true
    }

    /// The worker of `owner`'s kind is done with `id`. Returns whether `id` was asked for
    /// again meanwhile: the caller looks at it again (after a new [`Flights::begin`]).
    pub fn end(&self, id: &QueueId, owner: Owner) -> bool {
        let mut flights = relock(self.0.0.lock());
        let Some(flight) = flights.get_mut(id) else {
            return false;
        };
        flight.working[slot(owner)] = false;
        let again = std::mem::take(&mut flight.again[slot(owner)]);
        if flight.idle() {
            flights.remove(id);
        }
        drop(flights);
        self.0.1.notify_all();
        again
    }
}

/// Keeps the workers off a message while it is removed ([`Dispatch::removal`]).
#[derive(Debug)]
pub struct Removal<'a> {
    dispatch: &'a Dispatch,
    id: QueueId,
}

impl Drop for Removal<'_> {
    fn drop(&mut self) {
        let again = {
            let mut flights = relock(self.dispatch.flights.0.0.lock());
            let Some(flight) = flights.get_mut(&self.id) else {
                return;
            };
            flight.removing = false;
            let again = std::mem::take(&mut flight.again);
            if flight.idle() {
                flights.remove(&self.id);
            }
            again
        };
        for owner in [Owner::Local, Owner::Remote] {
            if again[slot(owner)] {
                let _ = self.dispatch.channel(owner).try_send(self.id.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispatch() -> (
        Dispatch,
        async_channel::Receiver<QueueId>,
        async_channel::Receiver<QueueId>,
    ) {
        let (local, local_ids) = async_channel::unbounded();
        let (remote, remote_ids) = async_channel::unbounded();
        (Dispatch::new(local, remote), local_ids, remote_ids)
    }

    /// One worker of a kind holds a message; a second request is kept for when it is done.
    #[test]
    fn a_message_is_held_by_one_worker_of_a_kind() {
        let (d, _, _) = dispatch();
        let id = QueueId::new();
        assert!(d.flights.begin(&id, Owner::Local));
        // The other kind works on its own recipients meanwhile.
        assert!(d.flights.begin(&id, Owner::Remote));
        assert!(!d.flights.begin(&id, Owner::Local));
        assert!(!d.flights.begin(&id, Owner::Local));
        // Asked for again (twice counts once): look again.
        assert!(d.flights.end(&id, Owner::Local));
        assert!(d.flights.begin(&id, Owner::Local));
        assert!(!d.flights.end(&id, Owner::Local));
        assert!(!d.flights.end(&id, Owner::Remote));
        assert!(
            relock(d.flights.0.0.lock()).is_empty(),
            "nothing left behind"
        );
    }

    /// A removal waits for the worker that holds the message, keeps every worker off it
    /// while it runs, and hands out the requests made meanwhile when it is done.
    #[test]
    fn a_removal_waits_for_the_worker_and_keeps_others_off() {
        let (d, local_ids, remote_ids) = dispatch();
        let id = QueueId::new();
        assert!(d.flights.begin(&id, Owner::Remote));
        // Still held after the wait: no removal.
        assert!(d.removal(&id, Duration::from_millis(50)).is_none());
        assert!(remote_ids.try_recv().is_err());

        let worker = {
            let (d, id) = (d.clone(), id.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                d.flights.end(&id, Owner::Remote)
            })
        };
        let removal = d
            .removal(&id, Duration::from_secs(10))
            .expect("the worker ended");
        assert!(!worker.join().expect("worker"), "not asked again");
        assert!(!d.flights.begin(&id, Owner::Local));
        assert!(!d.flights.begin(&id, Owner::Remote));
        assert!(local_ids.try_recv().is_err());
        drop(removal);
        assert_eq!(local_ids.try_recv().ok(), Some(id.clone()));
        assert_eq!(remote_ids.try_recv().ok(), Some(id.clone()));
        assert!(d.flights.begin(&id, Owner::Local));
        assert!(!d.flights.end(&id, Owner::Local));
        assert!(
            relock(d.flights.0.0.lock()).is_empty(),
            "nothing left behind"
        );
    }
}
