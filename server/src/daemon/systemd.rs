//! systemd integration: socket activation and readiness notification.
//!
//! Socket activation ([sd_listen_fds(3)]): when `LISTEN_PID` is our pid and `LISTEN_FDS` is
//! set, the listening sockets are fds 3 and up, adopted with the `listenfd` crate (which keeps
//! the unsafe fd handling out of this workspace); `LISTEN_FDNAMES` names each one's role:
//! `smtp`, `submission` or `submissions` (`FileDescriptorName=` in the `.socket` unit).
//!
//! Readiness ([sd_notify(3)]): with `NOTIFY_SOCKET` set (a `Type=notify` service), [`notify`]
//! sends `READY=1` once every listener is open, and `STOPPING=1` when shutdown begins. Without
//! it, [`notify`] does nothing.
//!
//! [sd_listen_fds(3)]: https://www.freedesktop.org/software/systemd/man/latest/sd_listen_fds.html
//! [sd_notify(3)]: https://www.freedesktop.org/software/systemd/man/latest/sd_notify.html

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use async_io::Async;

use crate::config::{ConfigError, Role};
use crate::log::{self, Event};

/// A listening socket and its role.
pub type RoleSocket = (Role, Async<TcpListener>);

/// The listening sockets systemd passed, with their roles; `None` when not socket-activated.
///
/// The protocol (sd_listen_fds(3)): `LISTEN_PID` is our pid, `LISTEN_FDS` the number of
/// sockets, starting at fd 3, and `LISTEN_FDNAMES` their colon-separated names.
pub fn activated_sockets() -> Result<Option<Vec<RoleSocket>>, ConfigError> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let names: Vec<&str> = names.split(':').collect();
    let mut sockets = Vec::new();
    for i in 0..fds.len() {
        let name = names.get(i).copied().unwrap_or("");
        let role = match name {
            "smtp" => Role::Smtp,
            "submission" => Role::Submission,
            "submissions" => Role::Submissions,
            other => {
                return Err(activation_error(format!(
                    "socket {} (fd {}) is named {other:?}, which is not a role",
                    i + 1,
                    i + 3
                )));
            }
        };
        let socket = match fds.take_tcp_listener(i) {
            Ok(Some(socket)) => socket,
            Ok(None) => {
                return Err(activation_error(format!("socket {name} was already taken")));
            }
            Err(e) => {
                return Err(activation_error(format!(
                    "socket {name} (fd {}) is not a listening TCP socket: {e}",
                    i + 3
                )));
            }
        };
        let socket = Async::new(socket)
            .map_err(|e| activation_error(format!("cannot use socket {name}: {e}")))?;
        sockets.push((role, socket));
    }
    Ok(Some(sockets))
}

/// A problem with the sockets systemd passed.
pub fn activation_error(message: String) -> ConfigError {
    ConfigError {
        file: PathBuf::from("systemd socket activation (LISTEN_FDS)"),
        line: None,
        message,
        fix: "give each ListenStream= socket of the .socket unit FileDescriptorName=smtp, \
              submission or submissions, or start postern without socket activation"
            .into(),
    }
}

/// Sends `state` (e.g. `READY=1`) to the service manager, if `NOTIFY_SOCKET` names one.
/// Failures are logged, never fatal: the server works without the notification.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|socket| {
        let bytes = target.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket (Linux): the name after '@'.
            Some(name) => send_abstract(&socket, name, state),
            None => socket.send_to(state.as_bytes(), PathBuf::from(&target)),
        }
    });
    if let Err(e) = result {
        log::line(Event::Systemd)
            .text(
                "problem",
                format_args!("cannot notify {}: {e}", target.to_string_lossy()),
            )
            .write();
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &[u8], state: &str) -> std::io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(state.as_bytes(), &addr)
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &str) -> std::io::Result<usize> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}
