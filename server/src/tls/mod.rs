//! TLS, both ways.
//!
//! - [`certs`]: the server's certificates from `certs/` (certbot or acme.sh layout), SNI, and
//!   live reload when they are renewed.
//! - [`client`]: client configurations for outbound delivery (strict and lenient, the roots).
//! - [`memory`]: the best TLS level each recipient domain has shown, never gone back on.
//! - [`mta_sts`]: MTA-STS policies (RFC 8461), fetched, cached and applied.
//!
//! May use: `rustls` (through `runtime-smol`), [`crate::dns`], [`crate::files`],
//! [`crate::log`].

pub mod certs;
pub mod client;
pub mod memory;
pub mod mta_sts;
