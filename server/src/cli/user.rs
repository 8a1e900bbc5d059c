//! `postern user ...`: the user database from the command line.
//!
//! Each command names the problem when it fails (unknown domain, duplicate user, malformed
//! address, empty password, a broken line in the users file) and then leaves every file as it
//! was. Passwords are read from the terminal without echo (asked twice when set), or from the
//! first line of standard input with `--password-stdin`; they are never printed.

use std::io::{self, BufRead};
use std::path::Path;

use crate::cli::{UserCommand, UserList};
use crate::directory::logins::MIN_PASSWORD_LENGTH;
use crate::directory::users::{self, Address, User, UserDb, UserDbError};

/// What a user command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum UserCmdError {
    /// From the user database.
    #[error("{0}")]
    Db(#[from] UserDbError),
    /// The password could not be read.
    #[error("cannot read the password: {0}")]
    Read(#[source] io::Error),
    /// The two entries differ.
    #[error("the passwords do not match")]
    Mismatch,
    /// `check` with a wrong password (or a user without one).
    #[error("wrong password for {0}")]
    WrongPassword(Address),
    /// `check` on a receive-only user.
    #[error("{0} is receive-only: it cannot log in")]
    ReceiveOnly(Address),
    /// Shorter than `[auth] min_password_length`.
    #[error(
        "the password is shorter than {min} characters ([auth] min_password_length in postern.toml)"
    )]
    TooShort {
        /// The minimum.
        min: usize,
    },
    /// No terminal to ask on, and no `--password-stdin`.
    #[error(
        "no terminal to ask for the password on: give it on standard input with \
         --password-stdin, e.g. printf '%s\\n' \"$PASSWORD\" | postern user {command} ADDRESS \
         --password-stdin"
    )]
    NoTerminal {
        /// The command (add, passwd, check).
        command: &'static str,
    },
}

/// Runs a user command against the configuration directory `dir`.
pub fn run(dir: &Path, command: UserCommand) -> Result<(), UserCmdError> {
    let db = UserDb::new(dir.join("domains"));
    // A postern.toml with a problem elsewhere (one the server would refuse to start with)
    // does not keep users from being managed: warn, and use the default minimum.
    let min = || -> usize {
        match crate::cli::settings_or_defaults(dir) {
            Ok(settings) => settings.auth.min_password_length,
            Err(e) => {
                eprintln!(
                    "postern: warning: {}; passwords need at least the default {MIN_PASSWORD_LENGTH} characters",
                    e.to_string().replace("\n  fix: ", "; fix: ")
                );
                MIN_PASSWORD_LENGTH
            }
        }
    };
    match command {
        UserCommand::Add(c) => {
            let address = Address::parse(&c.address)?;
            // Check what can be checked before asking for a password.
            db.domain_dir(&address)
                .ok_or_else(|| UserDbError::UnknownDomain {
                    domain: address.domain().to_string(),
                    dir: dir.join("domains").join(address.domain()),
                })?;
            if db.get(&address)?.is_some() {
                return Err(UserDbError::Duplicate(address).into());
            }
            let password = if c.receive_only && !c.password_stdin {
                None
            } else {
                let pw = new_password(c.password_stdin, min(), "add")?;
                Some(users::hash_password(&pw)?)
            };
            db.add(User {
                address: address.clone(),
                password,
                receive_only: c.receive_only,
            })?;
            println!(
                "added {address}{}",
                if c.receive_only {
                    " (receive-only)"
                } else {
                    ""
                }
            );
        }
        UserCommand::Remove(c) => {
            let address = Address::parse(&c.address)?;
            db.remove(&address)?;
            println!("removed {address}");
        }
        UserCommand::List(UserList { domain }) => {
            for user in db.list(domain.as_deref())? {
                let mut line = user.address.to_string();
                if user.receive_only {
                    line.push_str(" receive-only");
                }
                if user.password.is_none() {
                    line.push_str(" no-password");
                }
                println!("{line}");
            }
        }
        UserCommand::Passwd(c) => {
            let address = Address::parse(&c.address)?;
            if db.get(&address)?.is_none() {
                if db.domain_dir(&address).is_none() {
                    return Err(UserDbError::UnknownDomain {
                        domain: address.domain().to_string(),
                        dir: dir.join("domains").join(address.domain()),
                    }
                    .into());
                }
                return Err(UserDbError::NoSuchUser(address).into());
            }
            let pw = new_password(c.password_stdin, min(), "passwd")?;
            if db.set_password(&address, users::hash_password(&pw)?)? {
                println!(
                    "password of {address} set; it was receive-only and can now log in and send"
                );
            } else {
                println!("password of {address} changed");
            }
        }
        UserCommand::Check(c) => {
            let address = Address::parse(&c.address)?;
            let user = db
                .get(&address)?
                .ok_or_else(|| UserDbError::NoSuchUser(address.clone()))?;
            let pw = read_password(c.password_stdin, "Password: ", "check")?;
            if !users::verify_password(user.password.as_deref(), &pw) {
                return Err(UserCmdError::WrongPassword(address));
            }
            if user.receive_only {
                return Err(UserCmdError::ReceiveOnly(address));
            }
            println!("password of {address} is right");
        }
    }
    Ok(())
}

/// A new password: from stdin, or asked twice on the terminal. Never empty, at least `min`
/// characters.
fn new_password(stdin: bool, min: usize, command: &'static str) -> Result<String, UserCmdError> {
    let pw = read_password(stdin, "New password: ", command)?;
    if pw.is_empty() {
        return Err(UserDbError::EmptyPassword.into());
    }
    if pw.chars().count() < min {
        return Err(UserCmdError::TooShort { min });
    }
    if !stdin && read_password(false, "Again: ", command)? != pw {
        return Err(UserCmdError::Mismatch);
    }
    Ok(pw)
}

/// One password: the first line of stdin (without its line end), or from the terminal (for
/// `command`, named when there is none).
pub(crate) fn read_password(
    stdin: bool,
    prompt: &str,
    command: &'static str,
) -> Result<String, UserCmdError> {
    if !stdin
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .is_err()
    {
        return Err(UserCmdError::NoTerminal { command });
    }
    if stdin {
        let mut line = String::new();
        io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(UserCmdError::Read)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        Ok(line.strip_suffix('\r').unwrap_or(line).to_string())
    } else {
        rpassword::prompt_password(prompt).map_err(UserCmdError::Read)
    }
}
