//! The `postern` binary: `postern [-C DIR] serve`, `postern [-C DIR] user ...` and
//! `postern [-C DIR] alias ...`.
//!
//! Organised by concern: [`cli`] (arguments), [`config`] (postern.toml), [`init`] (the
//! embedded default), [`tls`] (certificates), [`limits`] (connection limits), [`userdb`]
//! (users, passwords, address normalisation), [`usercmd`] (`postern user`), [`aliases`]
//! (alias files, watched), [`aliascmd`] (`postern alias`), [`auth`] (logins, brute-force
//! limits), [`relay`] (who may send where, as whom), [`header_from`] (the header
//! From check), [`recipients`] (local domains and users), [`reception`] (the session
//! handler), [`queue`] (queue ids), [`store`] (the fjall queue store), [`commit`] (group
//! commit), [`local`] (delivery workers), [`trace`] (Received: and friends), [`delivery`]
//! (Maildir), [`dns`] (the stub resolver, not wired yet), [`tls_memory`] and [`mta_sts`]
//! (outbound TLS policy, not wired yet), [`serve`] (listeners and signals), [`systemd`]
//! (socket activation and readiness) and [`log`] (one line per mail event).

mod aliascmd;
mod aliases;
mod auth;
mod authdns;
mod bounce;
mod cli;
mod commit;
mod config;
mod delivery;
mod destinations;
mod dispatch;
mod dkim;
mod dkimcmd;
mod dns;
mod files;
mod header_from;
mod inbound;
mod init;
mod limits;
mod local;
mod log;
mod mailbox;
mod mta_sts;
mod outbound;
mod queue;
mod reception;
mod recipients;
mod relay;
mod serve;
mod store;
mod systemd;
mod tls;
mod tls_memory;
mod trace;
mod usercmd;
mod userdb;

use std::process::ExitCode;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli: Cli = argh::from_env();
    let dir = cli.config_dir();
    let result = match cli.command {
        Command::Serve(_) => serve::serve(&dir).map_err(|e| format!("cannot start: {e}")),
        Command::User(user) => usercmd::run(&dir, user.command).map_err(|e| e.to_string()),
        Command::Alias(alias) => aliascmd::run(&dir, alias.command).map_err(|e| e.to_string()),
        Command::Dkim(dkim) => dkimcmd::run(&dir, dkim.command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern: {e}");
            ExitCode::FAILURE
        }
    }
}
