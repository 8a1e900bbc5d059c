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
//! `[auth]`, `[relay]`, `[senders]` and `[aliases]` of postern.toml are parsed by the modules
//! they configure.
//!
//! May use: `proto-core`, [`crate::config`], [`crate::files`], [`crate::log`], and the queue's
//! recipient type ([`crate::queue::store::Address`]), which [`destinations`] produces. Nothing
//! here touches the network or the stored messages.

pub mod aliases;
pub mod destinations;
pub mod header_from;
pub mod logins;
pub mod recipients;
pub mod relay;
pub mod users;

use std::fs;
use std::io;
use std::path::Path;

/// The local domains: the names of the directories under `domains_dir` (`<config>/domains`),
/// sorted, hidden ones left out. A missing `domains/` is none. The aliases, the
/// configuration check and the DNS doctor all read them here.
pub fn domain_names(domains_dir: &Path) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(domains_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}
