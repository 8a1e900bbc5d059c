//! Faults of the disk under the real binary: the data directory is a small tmpfs that the test
//! fills and frees. A reserve refuses new mail before the disk is full; a write that fails on a
//! full disk answers 452 4.3.1 and the store takes mail again by itself once space is freed.
//! No restart in between. (That deliveries whose outcome cannot be recorded are not made
//! again is tested in `deliver::local`, with a store that fails writes on demand: a real full
//! disk still takes a delivery's few bytes of record in the journal's last page.)
//!
//! Mounting a tmpfs needs root (CI runs the tests as root; so does `.ci/run`'s apt step).

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;
use postern::testkit::Client;

/// A tmpfs mounted for one test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs at {} failed: these tests need root",
            at.display()
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A configuration directory with `extra` keys and a certificate for localhost.
fn config_dir(extra: &str) -> tempfile::TempDir {
    let dir = common::config_dir(extra);
    common::write_certbot(
        &dir.path().join("certs/localhost"),
        &common::cert(&["localhost"]),
    );
    dir
}

/// Bytes free on the file system of `path` (as `df` counts them).
fn free(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .expect("df line")
        .trim()
        .parse()
        .expect("df number")
}

/// Fills the file system of `dir` with `dir/filler` until at most `leave` bytes are free
/// (0: until a write fails).
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut f = fs::File::create(&path).expect("filler");
    let block = vec![0x55u8; 64 * 1024];
    loop {
        let left = free(dir);
        if left <= leave {
            break;
        }
        let n = (left - leave).min(block.len() as u64) as usize;
        if f.write_all(&block[..n])
            .and_then(|()| f.sync_all())
            .is_err()
        {
            break;
        }
    }
    path
}

/// One message from `from` to alice@localhost on port `port`: each reply in order (greeting,
/// EHLO, MAIL, RCPT, DATA, end of data), stopping at the first refusal.
fn send(port: u16, body_bytes: usize, subject: &str) -> Vec<String> {
    let (mut c, greeting) = Client::connect(([127, 0, 0, 1], port).into());
    let mut replies = vec![greeting];
    for line in [
        "EHLO client.test",
        "MAIL FROM:<sender@client.test>",
        "RCPT TO:<alice@localhost>",
        "DATA",
    ] {
        let reply = c.send(line);
        let refused = !reply.starts_with('2') && !reply.starts_with('3');
        replies.push(reply);
        if refused {
            let _ = c.send("QUIT");
            return replies;
        }
    }
    let mut message = format!("Subject: {subject}\r\nFrom: sender@client.test\r\n\r\n");
    // Random text: the store compresses, and a body that compresses takes no room.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ body_bytes as u64 ^ subject.len() as u64;
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    while message.len() < body_bytes {
        for _ in 0..76 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            message.push(alphabet[(x % 64) as usize] as char);
        }
        message.push_str("\r\n");
    }
    message.push_str(".\r\n");
    c.write_raw(message.as_bytes());
    replies.push(c.reply());
    let _ = c.send("QUIT");
    replies
}

fn subjects(messages: &[String]) -> Vec<String> {
    let mut s: Vec<String> = messages
        .iter()
        .filter_map(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .map(str::to_string)
        })
        .collect();
    s.sort();
    s
}

/// Waits until alice's Maildir under `mail` holds `n` messages; returns them.
fn wait_mail(mail: &Path, n: usize, secs: u64, server: &Server) -> Vec<String> {
    let new = mail.join("localhost/alice/new");
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let messages: Vec<String> = fs::read_dir(&new)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        if messages.len() >= n || Instant::now() > deadline {
            assert_eq!(messages.len(), n, "log:\n{}", server.log());
            return messages;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_reserve_refuses_new_mail_until_space_is_freed() {
    let dir = config_dir("min_free_space = 3145728");
    let _disk = Tmpfs::mount(&dir.path().join("data"), "8m");
    let server = Server::start(dir.path(), 2);
    let port = server.port("smtp");

    let first = send(port, 2000, "before");
    assert!(
        first.last().expect("reply").starts_with("250 "),
        "{first:?}"
    );

    // 1 MiB left, under the 3 MiB reserve: MAIL is refused, the log says why.
    let filler = fill(&dir.path().join("data"), 1 << 20);
    let refused = send(port, 2000, "refused");
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused[2].starts_with("452 4.3.1 "), "{refused:?}");
    server.wait_log("store problem=\"disk nearly full: ", 5);
    server.wait_log("min_free_space", 5);
    server.wait_log("from=<sender@client.test> reason=\"", 5);

    // Freed: accepted again, no restart.
    fs::remove_file(filler).expect("free");
    let after = send(port, 2000, "after");
    assert!(
        after.last().expect("reply").starts_with("250 "),
        "{after:?}"
    );
    server.wait_log("store msg=\"disk space is back: ", 5);
    let mail = wait_mail(&dir.path().join("data/mail"), 2, 30, &server);
    assert_eq!(subjects(&mail), ["after", "before"]);
}

#[test]
fn a_write_that_finds_the_disk_full_answers_452_and_the_store_recovers_by_itself() {
    // No reserve: the store itself runs into the full disk.
    let dir = config_dir("min_free_space = 0");
    let _disk = Tmpfs::mount(&dir.path().join("data"), "8m");
    let server = Server::start(dir.path(), 2);
    let port = server.port("smtp");

    let first = send(port, 2000, "before");
    assert!(
        first.last().expect("reply").starts_with("250 "),
        "{first:?}"
    );
    wait_mail(&dir.path().join("data/mail"), 1, 30, &server);

    // 64 KiB left; a 600 KB message cannot be stored.
    let filler = fill(&dir.path().join("data"), 64 << 10);
    let full = send(port, 600_000, "lost");
    assert!(
        full.last().expect("reply").starts_with("452 4.3.1 "),
        "{full:?}\nlog:\n{}",
        server.log()
    );
    // The cause is named, and the store is closed to be opened again.
    server.wait_log("No space left on device", 5);
    server.wait_log("the queue store is closed and opened again", 5);

    fs::remove_file(filler).expect("free");
    // The store opens again at most once a second: within a few tries, mail is accepted.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let again = send(port, 2000, "after");
        if again.last().expect("reply").starts_with("250 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not accepted again after space was freed: {again:?}\nlog:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    server.wait_log(
        "store msg=\"reopened the queue store after a failed write",
        5,
    );
    let mail = wait_mail(&dir.path().join("data/mail"), 2, 30, &server);
    assert_eq!(subjects(&mail), ["after", "before"]);
}
