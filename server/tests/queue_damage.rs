//! A damaged queue store under the real binary (issue 13, item 3): messages are queued with
//! delivery paused, the server is killed with SIGKILL, the store's files are damaged, and the
//! server is started again. It must start; what can be read is delivered; what cannot is
//! named in the log and by `postern queue recovery`; a damaged store is kept under a new name.
//!
//! The damage: a journal tail cut at a batch boundary (fjall notices nothing: the
//! acknowledgement ledger does), 200 bad bytes in the middle of the journal (fjall would
//! either refuse to open or cut the journal there), and a truncated table file.
//!
//! Loopback only; DNS points at the offline table of the common configuration.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;
use postern::queue::journal::{self, Item};
use postern::testkit::Client;

/// Starts the server in `root`, delivery paused or not, and waits until it listens.
fn start(root: &Path, paused: bool) -> Server {
    let mut command = Command::new(common::BINARY);
    command.arg("-C").arg(root).arg("serve");
    if paused {
        command.env("POSTERN_DELIVERY_PAUSED", "1");
    } else {
        command.env_remove("POSTERN_DELIVERY_PAUSED");
    }
    Server::start_with(&mut command, root, 2)
}

/// A configuration directory with a certificate for localhost.
fn config_dir() -> tempfile::TempDir {
    let dir = common::config_dir("max_message_size = 10000000\n");
    common::write_certbot(
        &dir.path().join("certs/localhost"),
        &common::cert(&["localhost"]),
    );
    dir
}

/// Sends one message with `subject` and a body of about `size` bytes to alice; its queue id.
fn send(port: u16, subject: &str, size: usize) -> String {
    let (mut c, _) = Client::connect(([127, 0, 0, 1], port).into());
    for line in [
        "EHLO client.test",
        "MAIL FROM:<sender@client.test>",
        "RCPT TO:<alice@localhost>",
        "DATA",
    ] {
        let reply = c.send(line);
        assert!(
            reply.starts_with('2') || reply.starts_with('3'),
            "{line}: {reply}"
        );
    }
    let mut message = format!("Subject: {subject}\r\nFrom: sender@client.test\r\n\r\n");
    let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ subject.len() as u64;
    while message.len() < size {
        for _ in 0..76 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            message.push(char::from(b'a' + (x % 26) as u8));
        }
        message.push_str("\r\n");
    }
    message.push_str(".\r\n");
    c.write_raw(message.as_bytes());
    let reply = c.reply();
    let _ = c.send("QUIT");
    reply
        .rsplit_once("queued as ")
        .map(|(_, id)| id.trim().to_string())
        .unwrap_or_else(|| panic!("not queued: {reply}"))
}

/// Queues `n` messages (bodies of `size` bytes) with delivery paused, then kills the server:
/// id -> subject.
fn queue_and_kill(root: &Path, n: usize, size: usize) -> BTreeMap<String, String> {
    let mut server = start(root, true);
    let port = server.port("smtp");
    let mut sent = BTreeMap::new();
    for i in 0..n {
        let subject = format!("m{i:02}");
        sent.insert(send(port, &subject, size), subject);
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    sent
}

fn queue_dir(root: &Path) -> PathBuf {
    root.join("data/queue")
}

/// The store's last journal file.
fn journal_file(root: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = fs::read_dir(queue_dir(root))
        .expect("queue dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .collect();
    files.sort();
    files.pop().expect("a journal")
}

/// The subjects delivered to alice.
fn delivered(server: &Server, n: usize) -> Vec<String> {
    let mut s: Vec<String> = server
        .wait_inbox("localhost", "alice", n)
        .iter()
        .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("Subject: ")))
        .map(str::to_string)
        .collect();
    s.sort();
    s
}

/// `postern queue recovery`'s output; it must succeed.
fn recovery_listing(root: &Path) -> String {
    let out = Command::new(common::BINARY)
        .arg("-C")
        .arg(root)
        .args(["queue", "recovery"])
        .output()
        .expect("run postern queue recovery");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `recovery` log line.
fn recovery_line(server: &Server) -> String {
    server.wait_log(" recovery recovered=", 30);
    server
        .log()
        .lines()
        .find(|l| l.contains(" recovery recovered="))
        .expect("the line")
        .to_string()
}

/// The ids after `lost_ids=` in a recovery line.
fn lost_ids(line: &str) -> Vec<String> {
    let ids = line
        .split(' ')
        .find_map(|f| f.strip_prefix("lost_ids="))
        .expect("lost_ids");
    if ids == "-" {
        return Vec::new();
    }
    ids.split(',').map(str::to_string).collect()
}

/// Checks that every sent message is either delivered or named as lost, everywhere.
fn every_message_delivered_or_named(
    server: &Server,
    root: &Path,
    sent: &BTreeMap<String, String>,
    line: &str,
) -> Vec<String> {
    let lost = lost_ids(line);
    let mut want: Vec<String> = sent
        .iter()
        .filter(|(id, _)| !lost.contains(id))
        .map(|(_, s)| s.clone())
        .collect();
    want.sort();
    assert_eq!(
        delivered(server, want.len()),
        want,
        "log:\n{}",
        server.log()
    );
    let listing = recovery_listing(root);
    for id in &lost {
        assert!(sent.contains_key(id), "{id} was never sent: {line}");
        assert!(listing.contains(&format!("lost {id}")), "{listing}");
        server.wait_log(&format!("damaged id={id} "), 5);
    }
    lost
}

#[test]
fn a_cut_journal_tail_is_noticed_and_the_lost_messages_named() {
    let dir = config_dir();
    let root = dir.path();
    let sent = queue_and_kill(root, 20, 2_000);
    let ids: Vec<&String> = sent.keys().collect();
    // Cut the journal where the envelope of the 18th message starts: the last three
    // acknowledged messages go, at a batch boundary, as fjall cannot notice.
    let path = journal_file(root);
    let bytes = fs::read(&path).expect("read journal");
    let mut cut = None;
    journal::scan(&bytes, |b| {
        let holds = b.items.iter().any(
            |i| matches!(i, Item::Write { key, value: Some(_), .. } if *key == ids[17].as_bytes()),
        );
        if holds && cut.is_none() {
            cut = Some(b.offset as usize);
        }
    });
    fs::write(&path, &bytes[..cut.expect("the envelope's batch")]).expect("cut");

    let server = start(root, false);
    let line = recovery_line(&server);
    assert!(
        line.contains("lost=3 ") && line.contains("moved_to=\"none\""),
        "{line}"
    );
    let lost = every_message_delivered_or_named(&server, root, &sent, &line);
    assert_eq!(
        lost,
        ids[17..].iter().map(|s| s.to_string()).collect::<Vec<_>>()
    );
    assert!(recovery_listing(root).contains("store kept in place"));
}

#[test]
fn bad_bytes_mid_journal_move_the_store_aside_and_the_rest_is_delivered() {
    let dir = config_dir();
    let root = dir.path();
    let sent = queue_and_kill(root, 40, 2_000);
    let path = journal_file(root);
    let mut bytes = fs::read(&path).expect("read journal");
    let end = journal::scan(&bytes, |_| {}).end as usize;
    bytes[end / 2..end / 2 + 200].fill(0xA5);
    fs::write(&path, &bytes).expect("damage");

    let server = start(root, false);
    let line = recovery_line(&server);
    assert!(!line.contains("moved_to=\"none\""), "{line}");
    let lost = every_message_delivered_or_named(&server, root, &sent, &line);
    assert!(!lost.is_empty() && lost.len() < 5, "{line}");
    // The damaged store is kept as it was, under its new name.
    let moved = fs::read_dir(root.join("data"))
        .expect("data")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("queue.damaged-"))
        })
        .expect("the damaged store");
    assert_eq!(
        fs::read(moved.join(path.file_name().expect("name"))).expect("kept"),
        bytes
    );
    assert!(recovery_listing(root).contains(&moved.display().to_string()));
}

#[test]
fn a_truncated_table_file_does_not_stop_the_server() {
    let dir = config_dir();
    let root = dir.path();
    // Large bodies: the bodies keyspace (1 MiB memtable) writes tables.
    let sent = queue_and_kill(root, 4, 1_500_000);
    let tables: Vec<PathBuf> = fs::read_dir(queue_dir(root).join("keyspaces"))
        .expect("keyspaces")
        .map(|k| k.expect("k").path())
        .filter(|k| k.file_name().is_some_and(|n| n != "0"))
        .flat_map(|k| fs::read_dir(k.join("tables")).into_iter().flatten())
        .map(|t| t.expect("t").path())
        .collect();
    let table = tables.first().expect("a table was written");
    let len = fs::metadata(table).expect("meta").len();
    fs::OpenOptions::new()
        .write(true)
        .open(table)
        .expect("open table")
        .set_len(len / 2)
        .expect("truncate");

    let server = start(root, false);
    let line = recovery_line(&server);
    assert!(!line.contains("moved_to=\"none\""), "{line}");
    every_message_delivered_or_named(&server, root, &sent, &line);
}
