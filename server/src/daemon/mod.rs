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

/// Answers each connection `incoming` yields on its own task with `answer`, until the task
/// is dropped: the accept loop of the control socket and the metrics page. A failed accept
/// (out of file descriptors and the like) is logged for `role` and waited out for 100 ms.
pub(crate) async fn answer_each<S, F, Fut>(
    role: &'static str,
    incoming: impl futures_lite::Stream<Item = std::io::Result<S>>,
    answer: F,
) where
    F: Fn(S) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use futures_lite::StreamExt;
    let mut incoming = std::pin::pin!(incoming);
    while let Some(next) = incoming.next().await {
        match next {
            Ok(stream) => smol::spawn(answer(stream)).detach(),
            Err(e) => {
                crate::log::line(crate::log::Event::Connection)
                    .field("role", role)
                    .text("error", format_args!("accept failed: {e}"))
                    .write();
                async_io::Timer::after(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
