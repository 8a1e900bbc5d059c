//! The queue: what postern has said 250 to, until every recipient is delivered or bounced.
//!
//! - [`id`]: queue ids ([`QueueId`]), the name of a message in the store and the log.
//! - [`store`]: the fjall store of envelopes and bodies, and the [`store::Envelope`] format.
//! - [`commit`]: group commit, one fsync for every session waiting on one.
//! - [`dispatch`]: which delivery workers get a queued message.
//! - [`bounce`]: delivery status notifications, queued like any other message.
//! - [`settle`]: the tail every delivery shares: per-recipient fates recorded, bounced,
//!   scheduled (proto-core's retry schedule) and logged in one place.
//! - [`timers`]: retry timers, one mechanism for every worker.
//! - [`space`]: the free-space reserve below which new mail is refused.
//! - [`recovery`]: opening the queue at startup; a damaged store moved aside and salvaged,
//!   losses reported; [`journal`] reads fjall's journal for it, [`ledger`] records what was
//!   acknowledged so that silent losses are noticed.
//!
//! May use: `proto-core`, `fjall`, [`crate::log`]. The delivery methods that take messages
//! out of the queue are in [`crate::deliver`].

pub mod bounce;
pub mod commit;
pub mod dispatch;
pub mod id;
pub mod journal;
pub mod ledger;
pub mod recovery;
pub mod settle;
pub mod space;
pub mod store;
pub mod timers;

pub use id::QueueId;
