//! The directory: who is who, and what an address means.
//!
//! - [`users`]: the `users` files of the local domains, passwords, address normalisation.
//! - [`recipients`]: which domains are local and which local addresses exist.
//! - [`aliases`]: the `aliases` files, watched and reloaded.
//! - [`destinations`]: where a local address goes (a mailbox, a pipe, a forward with SRS).
//! - [`relay`]: who may send where, and as whom.
//! - [`header_from`]: the check of an authenticated user's header From.
//! - [`logins`]: SMTP AUTH credentials and the brute-force limits.
//!
//! May use: `proto-core`, [`crate::config`], [`crate::files`], [`crate::log`]. Nothing here
//! touches the network or the queue.

pub mod aliases;
pub mod destinations;
pub mod header_from;
pub mod logins;
pub mod recipients;
pub mod relay;
pub mod users;
