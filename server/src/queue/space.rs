//! The free-space reserve: new mail is refused (452 4.3.1, RFC 3463 "mail system full")
//! while the file system of the data directory has less than `min_free_space` bytes free, so
//! the queue never runs into a full disk while accepting, and the deliveries and their
//! records still have room. Like Postfix's `queue_minfree`; a client's `SIZE=` counts too.
//!
//! The state changes are logged once each (`store problem="disk nearly full: ..."`, then
//! `store disk space is back: ...`): the server takes mail again by itself when space is freed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::log::{self, Event};

/// The reserve of one data directory.
#[derive(Debug)]
pub struct Reserve {
    /// Where the queue and the mailboxes live.
    dir: PathBuf,
    /// The bytes to keep free.
    min_free: u64,
    /// Whether the last check found too little room (for logging the changes only).
    short: AtomicBool,
}

/// Too little room: what was free, and what is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} free, below the reserve of {} (min_free_space)", mib(*free), mib(*min_free))]
pub struct Short {
    /// Bytes free.
    pub free: u64,
    /// The reserve, plus what the message needs.
    pub min_free: u64,
}

impl Reserve {
    /// A reserve of `min_free` bytes on the file system of `dir` (0: no reserve; a full disk
    /// is still noticed on the write that fails).
    pub fn new(dir: PathBuf, min_free: u64) -> Reserve {
        Reserve {
            dir,
            min_free,
            short: AtomicBool::new(false),
        }
    }

    /// Whether a message of `need` bytes fits and leaves the reserve free. A file system that
    /// cannot be asked counts as having room (the writes themselves will tell).
    pub fn check(&self, need: u64) -> Result<(), Short> {
        let Ok(free) = crate::files::free_space(&self.dir) else {
            return Ok(());
        };
        let min_free = self.min_free.saturating_add(need);
        // With no reserve, an empty file system is still full.
        let short = free < min_free || free == 0;
        let was = self.short.swap(short, Ordering::AcqRel);
        match (was, short) {
            (false, true) => log::line(Event::Store)
                .text(
                    "problem",
                    format_args!(
                        "disk nearly full: {} free on {}, below the reserve of {} \
                         (min_free_space); new mail is refused with 452 4.3.1 until there is room",
                        mib(free),
                        self.dir.display(),
                        mib(self.min_free)
                    ),
                )
                .write(),
            (true, false) => log::line(Event::Store)
                .text(
                    "msg",
                    format_args!(
                        "disk space is back: {} free on {}; mail is accepted again",
                        mib(free),
                        self.dir.display()
                    ),
                )
                .write(),
            _ => {}
        }
        if short {
            Err(Short { free, min_free })
        } else {
            Ok(())
        }
    }
}

/// `bytes` in MiB with one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_the_disk_refuses_and_a_small_one_accepts() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let free = crate::files::free_space(tmp.path()).expect("statvfs");
        let huge = Reserve::new(tmp.path().to_path_buf(), u64::MAX / 2);
        let short = huge.check(0).expect_err("no disk is that big");
        assert!(short.free <= free.saturating_add(64 << 20));
        assert!(short.to_string().contains("below the reserve"), "{short}");
        let none = Reserve::new(tmp.path().to_path_buf(), 0);
        none.check(1024).expect("a KiB fits");
        // A message as big as the disk does not fit, whatever the reserve.
        none.check(free.saturating_mul(2))
            .expect_err("twice the free space");
    }
}
