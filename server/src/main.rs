//! The `postern` binary: `postern [-C DIR] serve`.
//!
//! Organised by concern: [`cli`] (arguments), [`config`] (postern.toml), [`init`] (the
//! embedded default), [`tls`] (certificates), [`recipients`] (local domains and users),
//! [`reception`] (the session handler), [`queue`] (queue ids), [`store`] (the fjall queue
//! store), [`commit`] (group commit), [`local`] (delivery workers), [`trace`] (Received: and
//! friends), [`delivery`] (Maildir), [`serve`] (listeners and signals) and [`log`] (one line
//! per mail event).

mod cli;
mod commit;
mod config;
mod delivery;
mod init;
mod local;
mod log;
mod queue;
mod reception;
mod recipients;
mod serve;
mod store;
mod tls;
mod trace;

use std::process::ExitCode;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli: Cli = argh::from_env();
    let dir = cli.config_dir();
    let result = match cli.command {
        Command::Serve(_) => serve::serve(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern: cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}
