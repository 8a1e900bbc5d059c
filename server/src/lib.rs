//! postern: the library behind the `postern` binary. Its `main.rs` parses the command line
//! and calls [`run`]; everything else is here, in folders that follow a message's way through
//! the server:
//!
//! | folder | what it holds |
//! |---|---|
//! | [`reception`] | the session handler on the listeners: transactions, trace fields |
//! | [`mailauth`] | SPF, DKIM, ARC and DMARC checks, DKIM signing and keys, forged-result removal, the mail-auth DNS adapter |
//! | [`directory`] | users, local recipients, aliases and their destinations, relay and sender rules, logins |
//! | [`queue`] | queue ids, the store and its envelope, group commit, dispatch, bounces, the one tail every delivery ends in (`settle`), retry timers |
//! | [`deliver`] | the delivery methods: Maildir, LMTP, command (local workers) and SMTP to other servers |
//! | [`tls`] | server certificates, client TLS, the TLS memory, MTA-STS |
//! | [`dns`] | the stub resolver |
//! | [`config`] | `postern.toml` and the embedded default |
//! | [`cli`] | the command line, one module per command group |
//! | [`daemon`] | `postern serve`: listeners, reloads, limits, systemd |
//!
//! Beside them, [`log`] (one line per mail event) and [`files`] (atomic file replacement);
//! with the `testkit` feature, `testkit` starts a whole server inside a test.
//! This library exists for the binary and its tests; its API is not promised to anyone else
//! (the embeddable, documented API is `proto-core`'s).

pub mod cli;
pub mod config;
pub mod daemon;
pub mod deliver;
pub mod directory;
pub mod dns;
pub mod files;
pub mod log;
pub mod mailauth;
pub mod queue;
pub mod reception;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod tls;

use std::process::ExitCode;

use cli::{Cli, Command};

/// Runs one `postern` command line: `serve` until stopped, or an operator's command. Errors
/// are printed as `postern: <error>` on standard error, with a failure exit status.
pub fn run(cli: Cli) -> ExitCode {
    let dir = cli.config_dir();
    let result = match cli.command {
        Command::Serve(_) => daemon::serve::serve(&dir).map_err(|e| format!("cannot start: {e}")),
        Command::User(user) => cli::user::run(&dir, user.command).map_err(|e| e.to_string()),
        Command::Alias(alias) => cli::alias::run(&dir, alias.command).map_err(|e| e.to_string()),
        Command::Dkim(dkim) => cli::dkim::run(&dir, dkim.command).map_err(|e| e.to_string()),
        Command::Queue(queue) => cli::queue::run(&dir, queue.command).map_err(|e| e.to_string()),
        Command::Tls(tls) => cli::tls::run(&dir, tls.command).map_err(|e| e.to_string()),
        Command::Init(init) => cli::init::run(&dir, init).map_err(|e| e.to_string()),
        Command::Doctor(doctor) => cli::doctor::run(&dir, doctor).map_err(|e| e.to_string()),
        Command::SendTest(c) => cli::send_test::run(&dir, c).map_err(|e| e.to_string()),
        Command::Reports(c) => cli::reports::run(&dir, c).map_err(|e| e.to_string()),
        Command::Status(status) => cli::queue::status(&dir, status.json).map_err(|e| e.to_string()),
        Command::Config(config) => {
            cli::config::run(&dir, config.command).map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern: {e}");
            ExitCode::FAILURE
        }
    }
}
