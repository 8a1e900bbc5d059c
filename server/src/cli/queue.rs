//! `postern queue ...`: the queue from the command line.
//!
//! `postern queue recovery` lists what startup did with a damaged queue store
//! ([`crate::queue::recovery`]), oldest first, from the report files in `data_dir` (it never
//! opens the store, so it runs beside the server):
//!
//! ```text
//! 2026-12-03T07:25:21Z recovered 39, lost 1, damaged store moved to /var/lib/postern/queue.damaged-1796282721
//!   cause: journal /var/lib/postern/queue/0.jnl does not read from byte 10740 to 11107 (1 damaged ranges)
//!   lost 0661B5A978C566FC: chunk 0 of its body is missing
//!   report: /var/lib/postern/queue.damaged-1796282721.report
//! ```
//!
//! The exit status is 0 (also when there was never a recovery: `no queue recoveries`), 1 when
//! the configuration or a report cannot be read.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::cli::QueueCommand;
use crate::config::{ConfigError, Settings};
use crate::daemon::control;
use crate::queue::recovery::Report;
use crate::queue::settle::human_duration;

/// What a queue command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum QueueCmdError {
    /// postern.toml does not load.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The running server could not be asked.
    #[error(transparent)]
    Ask(#[from] crate::daemon::control::AskError),
    /// The server refused, or answered something unexpected.
    #[error("the server answered: {0}")]
    Answer(String),
    /// The arguments do not say what to do.
    #[error("{0}")]
    Usage(String),
    /// The reports cannot be listed or read.
    #[error("cannot read the reports in {}: {source}", data_dir.display())]
    Reports {
        /// The data directory.
        data_dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs a queue command against the configuration directory `dir`.
pub fn run(dir: &Path, command: QueueCommand) -> Result<(), QueueCmdError> {
    match command {
        QueueCommand::Recovery(_) => {
            let settings = Settings::load(dir)?;
            let reports =
                Report::all(&settings.data_dir).map_err(|source| QueueCmdError::Reports {
                    data_dir: settings.data_dir.clone(),
                    source,
                })?;
            let mut out = String::new();
            if reports.is_empty() {
                out.push_str("no queue recoveries\n");
            }
            for (path, report) in &reports {
                out.push_str(&describe(path, report));
            }
            crate::log::status(format_args!("{}", out.trim_end()));
            Ok(())
        }
        QueueCommand::Retry(c) => {
            let request = retry_request(&c)?;
            let (reply, _): (serde_json::Value, _) = ask(dir, &request)?;
            let ids: Vec<&str> = reply["retried"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            println!("{} messages due now: {}", ids.len(), ids.join(" "));
            Ok(())
        }
        QueueCommand::Show(c) => {
            let (shown, _): (control::Shown, _) = ask(dir, &format!("queue-show {}", c.id))?;
            print!("{}", describe_entry(&shown.entry));
            println!("{}", shown.headers.replace("\r\n", "\n").trim_end());
            if !shown.history.is_empty() {
                println!("\nlog:");
                for line in &shown.history {
                    println!("  {line}");
                }
            }
            Ok(())
        }
        QueueCommand::Remove(c) => {
            let verb = if c.silent {
                "queue-remove-silent"
            } else {
                "queue-remove"
            };
            let (reply, _): (serde_json::Value, _) = ask(dir, &format!("{verb} {}", c.id))?;
            let bounced = reply["bounced"].as_u64().unwrap_or(0);
            match bounced {
                0 => println!("removed {} without a DSN", c.id),
                n => println!("removed {}; the sender gets a DSN for {n} recipients", c.id),
            }
            Ok(())
        }
        QueueCommand::Hold(c) => hold(dir, "queue-hold", &c.id, "held"),
        QueueCommand::Release(c) => hold(dir, "queue-release", &c.id, "released"),
        QueueCommand::List(c) => {
            let (entries, answer): (Vec<control::QueueEntry>, _) = ask(dir, "queue-list")?;
            if c.json {
                println!("{answer}");
                return Ok(());
            }
            if entries.is_empty() {
                println!("the queue is empty");
            }
            for e in &entries {
                print!("{}", describe_entry(e));
            }
            Ok(())
        }
    }
}

/// `queue hold` / `queue release`.
fn hold(dir: &Path, verb: &str, id: &str, done: &str) -> Result<(), QueueCmdError> {
    let _: (serde_json::Value, _) = ask(dir, &format!("{verb} {id}"))?;
    println!("{done} {id}");
    Ok(())
}

/// A message and its recipients, as `queue list` and `queue show` print them.
fn describe_entry(e: &control::QueueEntry) -> String {
    use std::fmt::Write as _;
    let mut t = format!(
        "{} {} {} bytes, from {}, queued {} ago\n",
        e.id,
        e.received,
        e.size,
        e.from,
        human_duration(e.age_seconds)
    );
    for r in &e.recipients {
        let _ = write!(t, "    {} {}", r.to, r.state);
        if r.attempts > 0 {
            let _ = write!(t, ", {} attempts", r.attempts);
        }
        if let Some(next) = &r.next_attempt {
            let _ = write!(t, ", next {next}");
        }
        if let Some(error) = &r.last_error {
            let _ = write!(t, ": {error}");
        }
        t.push('\n');
    }
    t
}

/// The server's `{"error": ...}`, or the answer as it came.
/// Asks the server running with the configuration in `dir` for `request`, and reads its
/// answer as `T`; an `{"error": ...}` answer is the error. Also returns the answer as sent.
fn ask<T: serde::de::DeserializeOwned>(
    dir: &Path,
    request: &str,
) -> Result<(T, String), QueueCmdError> {
    let settings = crate::cli::settings_or_defaults(dir)?;
    let answer = control::ask(&settings.data_dir, request)?
        .trim()
        .to_string();
    let value: serde_json::Value =
        serde_json::from_str(&answer).map_err(|_| QueueCmdError::Answer(answer.clone()))?;
    if let Some(e) = value["error"].as_str() {
        return Err(QueueCmdError::Answer(e.to_string()));
    }
    let typed = serde_json::from_value(value).map_err(|_| QueueCmdError::Answer(answer.clone()))?;
    Ok((typed, answer))
}

/// What `queue retry` is about, as the control socket reads it.
fn retry_request(c: &crate::cli::QueueRetry) -> Result<String, QueueCmdError> {
    match (&c.id, c.all, &c.domain) {
        (Some(id), false, None) => Ok(format!("queue-retry {id}")),
        (None, true, None) => Ok("queue-retry all".into()),
        (None, false, Some(d)) => Ok(format!("queue-retry domain {d}")),
        _ => Err(QueueCmdError::Usage(
            "give one of: a queue id, --all, --domain DOMAIN".into(),
        )),
    }
}

/// `postern status`: the running server's state.
pub fn status(dir: &Path, json: bool) -> Result<(), QueueCmdError> {
    let (s, answer): (control::Status, _) = ask(dir, "status")?;
    if json {
        println!("{answer}");
        return Ok(());
    }
    println!("{} up {}", s.hostname, human_duration(s.uptime_seconds));
    for (role, addr) in &s.listeners {
        println!("listening on {addr} ({role})");
    }
    let sessions: Vec<String> = s
        .sessions
        .iter()
        .map(|(role, n)| format!("{role} {n}"))
        .collect();
    println!("sessions open: {}", sessions.join(", "));
    println!(
        "queue: {} messages, {} recipients pending, oldest {}",
        s.queued_messages,
        s.pending_recipients,
        human_duration(s.oldest_age_seconds)
    );
    let count = |name: &str| {
        s.last_hour
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, c)| *c)
    };
    println!(
        "last hour: {} received, {} rejected, {} delivered, {} deferred, {} failed, {} DSNs",
        count("received"),
        count("rejected"),
        count("delivered"),
        count("deferred"),
        count("failed"),
        count("dsn")
    );
    let (tls, plain) = (count("relayed_tls"), count("relayed_plaintext"));
    if tls + plain > 0 {
        println!(
            "outbound: {tls} of {} deliveries over TLS ({}%)",
            tls + plain,
            tls * 100 / (tls + plain)
        );
    }
    if let Some((chain, expires)) = &s.certificate {
        println!("certificate: {chain}, valid until {expires}");
    }
    Ok(())
}

/// One recovery, as listed.
fn describe(path: &Path, r: &Report) -> String {
    use std::fmt::Write as _;
    let when = crate::reception::trace::rfc3339(UNIX_EPOCH + Duration::from_secs(r.at));
    let mut t = format!("{when} recovered {}, lost {}", r.recovered, r.lost.len());
    match &r.moved_to {
        Some(p) => {
            let _ = writeln!(t, ", damaged store moved to {}", p.display());
        }
        None => t.push_str(", store kept in place\n"),
    }
    let _ = writeln!(t, "  cause: {}", r.cause);
    for (id, why) in &r.lost {
        let _ = writeln!(t, "  lost {id}: {why}");
    }
    for id in &r.possibly_lost {
        let _ = writeln!(
            t,
            "  possibly lost {id}: seen in damaged data, fate unknown"
        );
    }
    for note in &r.notes {
        let _ = writeln!(t, "  note: {note}");
    }
    let _ = writeln!(t, "  report: {}", path.display());
    t
}
