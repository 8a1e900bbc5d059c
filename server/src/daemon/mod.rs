//! The daemon: `postern serve` and what keeps it running.
//!
//! - [`serve`]: startup checks, listeners, the workers, SIGHUP reloads, and the stop on
//!   SIGTERM or SIGINT.
//! - [`listeners`]: `[listeners]`, the addresses and roles to serve.
//! - [`limits`]: connection limits, in total and per client address.
//! - [`systemd`]: socket activation and readiness notification.
//! - [`control`]: the control socket the command line talks to the running server through
//!   (queue commands, status).
//! - [`metrics`]: `[metrics]`, the OpenMetrics page.
//!
//! May use everything else: this is where the parts are put together.

pub mod control;
pub mod limits;
pub mod listeners;
pub mod metrics;
pub mod serve;
pub mod systemd;
