//! Hands queued messages to the workers that deliver them: the local delivery workers for
//! recipients of our domains, the outbound workers for the others (a message with both goes
//! to both; each changes only its own recipients, see [`crate::queue::store::Store::apply`]).

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
}
