//! The durable queue, against the real binary over loopback, with Python's smtplib as client:
//! several recipients each get one copy; a 100 MB message arrives intact; messages queued while
//! delivery is paused (`POSTERN_DELIVERY_PAUSED=1`) survive a SIGTERM and are delivered after a
//! restart; and the crash test of issue 3: concurrent sessions, `kill -9` at random moments,
//! restarts, and every message that got a 250 must be in the Maildir (duplicates are counted,
//! losses fail the test).
//!
//! Each server runs in its own temporary directory on a port picked once (so clients can
//! reconnect after a restart); a guard kills it when the test ends, pass or fail. Nothing here
//! touches a non-loopback address or DNS.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BINARY: &str = env!("CARGO_BIN_EXE_postern");

/// A server directory and, while it runs, its process. The process is killed on drop.
struct Node {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Node {
    /// A configuration for `localhost` with users alice, bob and carol, listening for smtp on
    /// a free loopback port, accepting messages up to `max_size` bytes.
    fn new(max_size: u64) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let port = free_port();
        fs::write(
            root.join("postern.toml"),
            format!(
                "hostname = \"localhost\"\n\
                 data_dir = \"data\"\n\
                 max_message_size = {max_size}\n\
                 {}\
                 [listeners]\n\
                 smtp = [\"127.0.0.1:{port}\"]\n",
                common::OFFLINE_DNS
            ),
        )
        .expect("write config");
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
        fs::create_dir_all(root.join("certs/localhost")).expect("mkdir certs");
        fs::write(root.join("certs/localhost/fullchain.pem"), ck.cert.pem()).expect("cert");
        fs::write(
            root.join("certs/localhost/privkey.pem"),
            ck.signing_key.serialize_pem(),
        )
        .expect("key");
        fs::create_dir_all(root.join("domains/localhost")).expect("mkdir domain");
        fs::write(root.join("domains/localhost/users"), "alice\nbob\ncarol\n").expect("users");
        Node {
            dir,
            port,
            child: None,
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server and waits until it listens. Its standard error is appended to
    /// `stderr.log`, across restarts.
    fn start(&mut self, paused: bool) {
        assert!(self.child.is_none(), "already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root().join("stderr.log"))
            .expect("log file");
        let mut command = Command::new(BINARY);
        command
            .arg("-C")
            .arg(self.root())
            .arg("serve")
            .current_dir(self.root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .env_remove("POSTERN_DELIVERY_PAUSED");
        if paused {
            command.env("POSTERN_DELIVERY_PAUSED", "1");
        }
        let mut child = command.spawn().expect("spawn postern");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Keep draining after the receiver is gone: a closed pipe would make the
                // server's later lines fail.
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("postern: listening on ") => break,
                Ok(_) => {}
                Err(_) => panic!("server did not start; log:\n{}", self.log()),
            }
        }
    }

    /// `kill -9`, and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM; waits (bounded) for a clean exit.
    fn terminate(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                assert!(status.success(), "exit status {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still running 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log.
    fn log(&self) -> String {
        fs::read_to_string(self.root().join("stderr.log")).unwrap_or_default()
    }

    /// The files in `user@localhost`'s `new/`.
    fn inbox(&self, user: &str) -> Vec<PathBuf> {
        let new = self
            .root()
            .join("data/mail/localhost")
            .join(user)
            .join("new");
        match fs::read_dir(new) {
            Ok(entries) => entries.map(|e| e.expect("entry").path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Waits (bounded) until `user` has at least `n` messages; returns their paths.
    fn wait_for(&self, user: &str, n: usize, limit: Duration) -> Vec<PathBuf> {
        let deadline = Instant::now() + limit;
        loop {
            let inbox = self.inbox(user);
            if inbox.len() >= n || Instant::now() > deadline {
                return inbox;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory of the running server, in KiB (Linux).
    fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

/// A free loopback port below Linux's ephemeral range (32768 and up), so that no client
/// socket takes it while the server is down between a kill and its restart.
fn free_port() -> u16 {
    let mut rng = Rng(u64::from(std::process::id()) << 32
        | u64::from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.subsec_nanos()),
        )
        | 1);
    for _ in 0..1000 {
        let port = 20000 + (rng.next() % 12000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

mod common;
use common::python;

/// Sends one message per subject in argv[3:] to the recipients in argv[2] (comma separated).
const SEND: &str = r#"
import smtplib, sys
port, rcpts, subjects = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3:]
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30)
for subject in subjects:
    msg = ("From: sender@client.test\r\nMessage-ID: <%s@client.test>\r\nSubject: %s\r\n\r\n"
           "body of %s\r\n" % (subject, subject, subject)).encode()
    s.sendmail("sender@client.test", rcpts, msg)
    print("sent", subject, flush=True)
s.quit()
"#;

#[test]
fn several_recipients_each_get_one_copy() {
    let mut node = Node::new(1024 * 1024);
    node.start(false);
    python(
        SEND,
        &[
            node.port.to_string(),
            "alice@localhost,bob@localhost,Carol@localhost,postmaster@localhost,alice@localhost"
                .into(),
            "multi-1".into(),
            "multi-2".into(),
        ],
    );
    for user in ["alice", "bob", "carol", "postmaster"] {
        node.wait_for(user, 2, Duration::from_secs(20));
        // Give a stray duplicate time to show up, if there were one.
        std::thread::sleep(Duration::from_millis(200));
        let inbox = node.inbox(user);
        assert_eq!(inbox.len(), 2, "{user}: {inbox:?}\nlog:\n{}", node.log());
        let mut subjects: Vec<String> = inbox
            .iter()
            .map(|p| {
                let m = fs::read_to_string(p).expect("read");
                assert!(
                    m.starts_with(&format!("Return-Path: <sender@client.test>\r\nDelivered-To: {user}@localhost\r\nReceived: from client.test")),
                    "{m}"
                );
                m.lines()
                    .find_map(|l| l.strip_prefix("Subject: "))
                    .expect("subject")
                    .to_string()
            })
            .collect();
        subjects.sort();
        assert_eq!(subjects, ["multi-1", "multi-2"], "{user}");
    }
    // Copies show in new/ a moment before their delivery is recorded and logged.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.log().matches(" removed id=").count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = node.log();
    assert_eq!(log.matches(" queued id=").count(), 2, "{log}");
    assert_eq!(log.matches(" delivered id=").count(), 8, "{log}");
    assert_eq!(log.matches(" removed id=").count(), 2, "{log}");
}

#[test]
fn queued_messages_survive_a_restart() {
    let mut node = Node::new(1024 * 1024);
    node.start(true);
    python(
        SEND,
        &[
            node.port.to_string(),
            "alice@localhost,bob@localhost".into(),
            "kept-1".into(),
            "kept-2".into(),
            "kept-3".into(),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(node.inbox("alice").is_empty(), "delivery is paused");
    node.terminate();
    assert!(node.inbox("alice").is_empty());

    node.start(false);
    for user in ["alice", "bob"] {
        let inbox = node.wait_for(user, 3, Duration::from_secs(20));
        assert_eq!(inbox.len(), 3, "{user}: {inbox:?}\nlog:\n{}", node.log());
    }
    let log = node.log();
    assert!(log.contains("3 queued messages resume delivery"), "{log}");
}

/// Streams a 100 MB message generated line by line (never whole in memory), then prints the
/// SHA-256 and size of the content after the header.
const SEND_BIG: &str = r#"
import hashlib, smtplib, sys
port, lines = int(sys.argv[1]), int(sys.argv[2])
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=120)
s.ehlo("client.test")
code, _ = s.mail("sender@client.test"); assert code == 250, code
code, _ = s.rcpt("alice@localhost"); assert code == 250, code
s.putcmd("data")
code, _ = s.getreply(); assert code == 354, code
head = b"Message-ID: <big@client.test>\r\nSubject: big\r\n\r\n"
s.sock.sendall(head)
h, size = hashlib.sha256(), 0
filler = b"x" * 90 + b"\r\n"
block = []
for n in range(lines):
    block.append(b"%08d" % n + filler)
    if len(block) == 2000 or n == lines - 1:
        data = b"".join(block)
        h.update(data); size += len(data)
        s.sock.sendall(data)
        block = []
s.sock.sendall(b".\r\n")
code, text = s.getreply()
assert code == 250, (code, text)
s.quit()
print(h.hexdigest(), size)
"#;

/// Prints the SHA-256 and size of a file's content after the first occurrence of a marker
/// line, reading it in blocks.
const HASH_AFTER: &str = r#"
import hashlib, sys
path, marker = sys.argv[1], sys.argv[2].encode()
with open(path, "rb") as f:
    start = f.read(65536)
    i = start.index(marker)
    end_of_head = start.index(b"\r\n\r\n", i) + 4
    h, size = hashlib.sha256(), 0
    rest = start[end_of_head:]
    while rest:
        h.update(rest); size += len(rest)
        rest = f.read(1 << 20)
print(h.hexdigest(), size)
"#;

#[test]
fn a_100_mb_message_lands_intact() {
    let mut node = Node::new(200 * 1024 * 1024);
    node.start(false);
    let started = Instant::now();
    let sent = python(SEND_BIG, &[node.port.to_string(), "1000000".into()]);
    let accepted = started.elapsed();
    let inbox = node.wait_for("alice", 1, Duration::from_secs(120));
    assert_eq!(inbox.len(), 1, "log:\n{}", node.log());
    // The worker removes the message from the queue after the delivery mark.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node.log().contains(" removed id=") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let peak = node.peak_rss_kib();
    let got = python(
        HASH_AFTER,
        &[
            inbox[0].display().to_string(),
            "Message-ID: <big@client.test>".into(),
        ],
    );
    assert_eq!(got.trim(), sent.trim(), "content differs");
    assert!(sent.trim().ends_with(" 100000000"), "{sent}");
    println!(
        "100 MB: accepted in {accepted:?}, delivered after {:?}, server peak RSS {} KiB",
        started.elapsed(),
        peak.map_or("?".into(), |p| p.to_string())
    );
    if let Some(kib) = peak {
        assert!(
            kib < 100 * 1024,
            "peak RSS {kib} KiB: the body must not be held in memory"
        );
    }
}

/// The crash test's client: argv = port, messages, sessions, deadline (seconds). Each session
/// sends its share (message i goes to session i % sessions), reconnecting and retrying after any
/// error, and prints `ACK i` as soon as a message gets its 250. Message i goes to alice, and
/// every fifth also to bob.
const CRASH_CLIENT: &str = r#"
import smtplib, sys, threading, time
port, n, m, limit = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
deadline = time.time() + limit
out = threading.Lock()
def say(line):
    with out:
        sys.stdout.write(line + "\n"); sys.stdout.flush()
def session(k):
    todo = list(range(k, n, m))
    s = None
    while todo and time.time() < deadline:
        i = todo[0]
        rcpts = ["alice@localhost"] + (["bob@localhost"] if i % 5 == 0 else [])
        msg = ("From: sender@client.test\r\nMessage-ID: <crash-%d@client.test>\r\n"
               "Subject: crash %d\r\n\r\n" % (i, i)).encode() + ((b"%d " % i) * 20 + b"\r\n") * 20
        try:
            if s is None:
                s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)
            s.sendmail("sender@client.test", rcpts, msg)
            say("ACK %d" % i)
            todo.pop(0)
        except smtplib.SMTPResponseException as e:
            if e.smtp_code >= 500:
                say("REJECTED %d %d" % (i, e.smtp_code)); todo.pop(0)
            try: s.close()
            except Exception: pass
            s = None; time.sleep(0.05)
        except (smtplib.SMTPException, OSError):
            try: s.close()
            except Exception: pass
            s = None; time.sleep(0.05)
    if s is not None:
        try: s.quit()
        except Exception: pass
    if todo:
        say("UNSENT %d" % len(todo))
threads = [threading.Thread(target=session, args=(k,)) for k in range(m)]
for t in threads: t.start()
for t in threads: t.join()
say("DONE")
"#;

/// A small deterministic generator (xorshift64*), so a failing run can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `lo..hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// Which `crash-<i>` messages are in `user`'s Maildir, and how many copies of each.
fn copies(node: &Node, user: &str) -> HashMap<u64, usize> {
    let mut found = HashMap::new();
    for path in node.inbox(user) {
        let text = fs::read_to_string(&path).expect("read");
        let i = text
            .split_once("Message-ID: <crash-")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(n, _)| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no crash id in {}", path.display()));
        *found.entry(i).or_insert(0) += 1;
    }
    found
}

#[test]
fn kill_9_never_loses_an_acknowledged_message() {
    const MESSAGES: u64 = 1000;
    const SESSIONS: u64 = 8;
    const KILLS: usize = 6;
    let seed = std::env::var("POSTERN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("crash test seed {seed} (replay with POSTERN_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let started = Instant::now();

    let mut node = Node::new(1024 * 1024);
    node.start(false);
    let mut client = Command::new("python3")
        .arg("-c")
        .arg(CRASH_CLIENT)
        .args([
            node.port.to_string(),
            MESSAGES.to_string(),
            SESSIONS.to_string(),
            "100".to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stdout = client.stdout.take().expect("stdout");
    let reader = {
        let acked = acked.clone();
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line
                    .strip_prefix("ACK ")
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    acked.lock().expect("lock").insert(i);
                } else {
                    lines.lock().expect("lock").push(line);
                }
            }
        })
    };
    struct Reap(Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut client = Reap(client);

    // Every kill happens, whether the client is still sending or only deliveries are left:
    // both are moments a crash must survive.
    let mut kills = 0;
    let mut while_sending = 0;
    let mut acked_at_kill = Vec::new();
    for _ in 0..KILLS {
        std::thread::sleep(rng.millis(50, 400));
        if client.0.try_wait().expect("try_wait").is_none() {
            while_sending += 1;
        }
        node.kill();
        kills += 1;
        acked_at_kill.push(acked.lock().expect("lock").len());
        std::thread::sleep(rng.millis(0, 200));
        node.start(false);
    }
    let deadline = Instant::now() + Duration::from_secs(110);
    while client.0.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "the client did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = reader.join();
    let acked: HashSet<u64> = acked.lock().expect("lock").clone();
    let other = lines.lock().expect("lock").clone();
    assert!(
        other.iter().all(|l| l == "DONE"),
        "client reported: {other:?}"
    );
    assert_eq!(
        acked.len() as u64,
        MESSAGES,
        "every message is acknowledged in the end"
    );

    // Let the queue drain: every acknowledged message must arrive.
    let want_bob: HashSet<u64> = acked.iter().copied().filter(|i| i % 5 == 0).collect();
    let drain = Instant::now() + Duration::from_secs(20);
    let (alice, bob) = loop {
        let alice = copies(&node, "alice");
        let bob = copies(&node, "bob");
        let done = acked.iter().all(|i| alice.contains_key(i))
            && want_bob.iter().all(|i| bob.contains_key(i));
        if done || Instant::now() > drain {
            break (alice, bob);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let lost: Vec<String> = acked
        .iter()
        .filter(|i| !alice.contains_key(i))
        .map(|i| format!("alice:{i}"))
        .chain(
            want_bob
                .iter()
                .filter(|i| !bob.contains_key(i))
                .map(|i| format!("bob:{i}")),
        )
        .collect();
    let duplicates: usize = alice
        .values()
        .chain(bob.values())
        .map(|&n| n.saturating_sub(1))
        .sum();
    let deliveries: usize = alice.values().chain(bob.values()).sum();
    println!(
        "crash test: seed {seed}, {MESSAGES} messages over {SESSIONS} sessions, {} acknowledged, \
         {kills} kills ({while_sending} while sending; acknowledged so far at each: \
         {acked_at_kill:?}), {deliveries} copies \
         delivered for {} expected, {duplicates} duplicates, {} lost, {:?} in all",
        acked.len(),
        acked.len() + want_bob.len(),
        lost.len(),
        started.elapsed()
    );
    assert!(
        lost.is_empty(),
        "seed {seed}: acknowledged but lost: {lost:?}\nlog:\n{}",
        node.log()
    );
    let log = node.log();
    assert!(
        !log.contains(" failed id="),
        "seed {seed}: failures in log:\n{log}"
    );
}

/// Sends a partial body of `argv[2]` bytes (never the final dot), then prints `SENT` and waits
/// for stdin to close before closing the connection.
const PARTIAL: &str = r#"
import smtplib, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30)
s.ehlo("client.test")
assert s.mail("sender@client.test")[0] == 250
assert s.rcpt("alice@localhost")[0] == 250
s.putcmd("data")
assert s.getreply()[0] == 354
s.sock.sendall(b"Subject: partial\r\n\r\n" + (b"y" * 98 + b"\r\n") * (size // 100))
print("SENT", flush=True)
sys.stdin.read()
s.sock.close()
"#;

/// Runs [`PARTIAL`] until the body is sent; returns the process, whose stdin closes on drop.
fn partial_body(port: u16, size: usize) -> Child {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(PARTIAL)
        .args([port.to_string(), size.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "SENT");
    child
}

#[test]
fn partial_bodies_are_removed_on_abort_and_swept_after_a_crash() {
    let mut node = Node::new(10 * 1024 * 1024);
    node.start(false);
    // A client that goes away in the middle of DATA: its chunks are removed at once.
    let mut client = partial_body(node.port, 1024 * 1024);
    drop(client.stdin.take());
    let _ = client.wait();
    std::thread::sleep(Duration::from_millis(300));
    node.terminate();
    node.start(false);
    assert!(
        !node.log().contains("partial bodies"),
        "nothing to sweep after an abort:\n{}",
        node.log()
    );
    // A crash in the middle of DATA: the next start sweeps the chunks.
    let mut client = partial_body(node.port, 1024 * 1024);
    std::thread::sleep(Duration::from_millis(300));
    node.kill();
    drop(client.stdin.take());
    let _ = client.wait();
    node.start(false);
    let log = node.log();
    assert!(
        log.contains("removed the partial bodies of 1 unacknowledged messages"),
        "{log}"
    );
    assert!(node.inbox("alice").is_empty(), "nothing was acknowledged");
}
