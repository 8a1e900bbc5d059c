//! The command line: `postern [-C DIR] <subcommand>`.
//!
//! Every subcommand finds its configuration directory the same way: `-C DIR` if given, else
//! `/etc/postern` if it exists, else `./postern-data`.

use std::path::{Path, PathBuf};

use argh::FromArgs;

/// The system-wide configuration directory, used when it exists.
const SYSTEM_DIR: &str = "/etc/postern";
/// The directory used when neither `-C` nor the system directory is there.
const LOCAL_DIR: &str = "postern-data";

/// postern: a small, careful SMTP server for your own domains.
#[derive(Debug, FromArgs)]
pub struct Cli {
    /// configuration directory (default: /etc/postern if it exists, else ./postern-data)
    #[argh(option, short = 'C')]
    pub config_dir: Option<PathBuf>,

    #[argh(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, FromArgs)]
#[argh(subcommand)]
pub enum Command {
    /// Run the SMTP server.
    Serve(Serve),
}

/// run the SMTP server on the configured listeners (creates the default configuration on
/// first run)
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "serve")]
pub struct Serve {}

impl Cli {
    /// The configuration directory this invocation uses.
    pub fn config_dir(&self) -> PathBuf {
        match &self.config_dir {
            Some(dir) => dir.clone(),
            None if Path::new(SYSTEM_DIR).is_dir() => PathBuf::from(SYSTEM_DIR),
            None => PathBuf::from(LOCAL_DIR),
        }
    }
}
