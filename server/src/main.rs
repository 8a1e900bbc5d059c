//! The `postern` binary: `postern [-C DIR] serve`, and the operator's commands `user`,
//! `alias` and `dkim`.
//!
//! Organised by concern: [`cli`] (arguments), [`config`] (postern.toml), [`init`] (the
//! embedded default), [`tls`] (certificates), [`limits`] (connection limits), [`userdb`]
//! (users, passwords, address normalisation), [`usercmd`] (`postern user`), [`aliases`]
//! (alias files, watched), [`aliascmd`] (`postern alias`), [`dkim`] and [`dkimcmd`] (keys,
//! signing, `postern dkim`), [`auth`] (logins, brute-force limits), [`relay`] (who may send
//! where, as whom), [`header_from`] (the header From check), [`recipients`] (local domains
//! and users), [`destinations`] (where a local address goes: aliases, SRS), [`reception`]
//! (the session handler), [`inbound`] (signing and the SPF/DKIM/ARC/DMARC checks),
//! [`authdns`] (our DNS answers for mail-auth), [`queue`] (queue ids), [`store`] (the fjall
//! queue store), [`commit`] (group commit), [`dispatch`] (which workers get a message),
//! [`local`] (local delivery workers), [`mailbox`] (LMTP and command delivery),
//! [`delivery`] (Maildir), [`outbound`] (delivery to other servers: routing, TLS, retries),
//! [`tls_memory`] and [`mta_sts`] (outbound TLS policy), [`bounce`] (DSNs), [`dns`] (the stub
//! resolver), [`trace`] (Received: and friends), [`files`] (atomic file replacement),
//! [`serve`] (listeners and signals), [`systemd`] (socket activation and readiness) and
//! [`log`] (one line per mail event).

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
