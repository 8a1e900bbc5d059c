//! A real Postfix as the remote MX postern delivers to, end to end over loopback: alice
//! submits to postern (mx.a.test) with AUTH on the submission port, postern signs the message
//! and delivers it to a whole Postfix (master, smtpd, cleanup, qmgr, virtual(8) into a
//! Maildir) that serves b.test, found through the test DNS server's MX record.
//!
//! It proves two things a postern-to-postern test cannot, since both depend on what the
//! other side does:
//! - a message submitted without Date and Message-ID gets both from postern before it is
//!   signed, so that Postfix, told to add what a message lacks (`always_add_missing_headers =
//!   yes`, which would break the over-signed Date and Message-ID of the signature), finds
//!   nothing missing, and dkimpy verifies the copy in Postfix's Maildir;
//! - an 8-bit body reaches Postfix's Maildir unchanged, and postern offers no BINARYMIME:
//!   Postfix offers CHUNKING but not BINARYMIME, so a binary body could never go on to it.
//!
//! Postfix runs from its own configuration directory in a temporary directory (its own queue,
//! data directory and log file), listens on a free 127.0.0.1 port, asks no DNS and is
//! stopped when the test ends, even when it fails.

mod common;

use postern::dns::test_server::TestServer;

use std::fs;
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, instance, keygen, zone_line};

/// postern's hostname: the right-hand side of the Message-ID it adds.
const POSTERN_HOST: &str = "mx.a.test";

/// A port free on 127.0.0.1 now.
fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    l.local_addr().expect("addr").port()
}

/// A whole Postfix under `base`: `etc/` (main.cf, master.cf), `queue/`, `data/`, `maillog`,
/// and `mail/bob/`, the Maildir where virtual(8) puts all mail for b.test. Stopped on drop.
struct Postfix {
    base: PathBuf,
    port: u16,
}

impl Postfix {
    /// Writes the configuration and runs `postfix -c base/etc start`; returns once smtpd
    /// answers on `port` (at most 30 s).
    fn start(base: &Path) -> Postfix {
        let port = free_port();
        let b = base.display();
        // The daemons run as user postfix, virtual(8) as 65534: they must reach the queue,
        // the data directory and the Maildir through `base` and the tempdir it is in (0700).
        fs::create_dir_all(base).expect("mkdir base");
        for dir in [base, base.parent().expect("a parent")] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        for dir in ["etc", "queue", "data", "mail"] {
            fs::create_dir_all(base.join(dir)).expect("mkdir");
        }
        chown("postfix:postfix", &base.join("data"));
        chown("65534:65534", &base.join("mail"));
        // An MX on the Internet: it takes mail for b.test from anyone, treats postern as a
        // remote client (no header rewriting: `local_header_rewrite_clients` is empty) but
        // still adds Date, Message-Id, From and To when a message lacks them
        // (`always_add_missing_headers`). No DNS at all: no peer name lookup, no client or
        // HELO checks, and nothing is sent out. `debug_peer_list` logs the dialogue with
        // loopback clients (`< unknown[127.0.0.1]: MAIL FROM:...`).
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {b}/queue\n\
             data_directory = {b}/data\n\
             command_directory = /usr/sbin\n\
             daemon_directory = /usr/lib/postfix/sbin\n\
             shlib_directory = /usr/lib/postfix\n\
             meta_directory = /etc/postfix\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             maillog_file = {b}/maillog\n\
             maillog_file_prefixes = {b}\n\
             myhostname = mx.b.test\n\
             mydomain = b.test\n\
             mydestination =\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mynetworks = 127.0.0.1/32\n\
             local_header_rewrite_clients =\n\
             always_add_missing_headers = yes\n\
             alias_maps =\n\
             alias_database =\n\
             local_recipient_maps =\n\
             virtual_mailbox_domains = b.test\n\
             virtual_mailbox_base = {b}/mail\n\
             virtual_mailbox_maps = static:bob/\n\
             virtual_uid_maps = static:65534\n\
             virtual_gid_maps = static:65534\n\
             virtual_transport = virtual\n\
             default_transport = error:this test sends nothing out\n\
             relay_transport = error:this test sends nothing out\n\
             debug_peer_list = 127.0.0.1\n\
             debug_peer_level = 1\n\
             smtpd_peername_lookup = no\n\
             smtpd_client_restrictions =\n\
             smtpd_helo_restrictions =\n\
             smtpd_sender_restrictions =\n\
             smtpd_relay_restrictions = reject_unauth_destination\n\
             smtpd_recipient_restrictions =\n\
             disable_dns_lookups = yes\n\
             smtp_dns_support_level = disabled\n\
             biff = no\n\
             append_dot_mydomain = no\n\
             notify_classes =\n\
             delay_warning_time = 0\n"
        );
        fs::write(base.join("etc/main.cf"), main_cf).expect("main.cf");
        // No chroot (the fifth column): the daemons use the paths above as they are.
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd\n\
             pickup    unix  n - n 60    1 pickup\n\
             cleanup   unix  n - n -     0 cleanup\n\
             qmgr      unix  n - n 300   1 qmgr\n\
             rewrite   unix  - - n -     - trivial-rewrite\n\
             bounce    unix  - - n -     0 bounce\n\
             defer     unix  - - n -     0 bounce\n\
             trace     unix  - - n -     0 bounce\n\
             verify    unix  - - n -     1 verify\n\
             flush     unix  n - n 1000? 0 flush\n\
             proxymap  unix  - - n -     - proxymap\n\
             showq     unix  n - n -     - showq\n\
             error     unix  - - n -     - error\n\
             retry     unix  - - n -     - error\n\
             discard   unix  - - n -     - discard\n\
             virtual   unix  - n n -     - virtual\n\
             anvil     unix  - - n -     1 anvil\n\
             scache    unix  - - n -     1 scache\n\
             postlog   unix-dgram n - n - 1 postlogd\n"
        );
        fs::write(base.join("etc/master.cf"), master_cf).expect("master.cf");
        let postfix = Postfix {
            base: base.to_path_buf(),
            port,
        };
        // Its output goes to a file: master inherits the descriptors, a pipe would never end.
        let out = fs::File::create(base.join("postfix-start.out")).expect("output file");
        let status = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(base.join("etc"))
            .arg("start")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .status()
            .expect("postfix must be installed (/usr/sbin/postfix): .ci/run installs it");
        assert!(
            status.success(),
            "postfix start: {status}; output:\n{}\nmaillog:\n{}\n(without a terminal, \
             `postfix` writes its own errors to syslog only: run `script -qc \"postfix -c {} \
             check\"` to see them)",
            fs::read_to_string(base.join("postfix-start.out")).unwrap_or_default(),
            postfix.maillog(),
            base.join("etc").display()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Postfix's smtpd does not answer on 127.0.0.1:{port}; maillog:\n{}",
                postfix.maillog()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        postfix
    }

    fn maillog(&self) -> String {
        fs::read_to_string(self.base.join("maillog")).unwrap_or_default()
    }

    /// The messages in bob's Maildir (`new/`: virtual(8) renames a file there once it is
    /// complete), oldest name first.
    fn delivered(&self) -> Vec<Vec<u8>> {
        let Ok(entries) = fs::read_dir(self.base.join("mail/bob/new")) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.expect("entry").path()).collect();
        paths.sort();
        paths
            .iter()
            .map(|p| fs::read(p).expect("read a delivered message"))
            .collect()
    }

    /// The pid in `queue/pid/master.pid`, if any.
    fn master_pid(&self) -> Option<u32> {
        fs::read_to_string(self.base.join("queue/pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let pid = self.master_pid();
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.base.join("etc"))
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let Some(pid) = pid else { return };
        // master exits after its children; a zombie (state Z) is gone as far as we care.
        let running = || {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, r)| !r.starts_with('Z'))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if running() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn chown(owner: &str, path: &Path) {
    let status = Command::new("chown")
        .arg(owner)
        .arg(path)
        .status()
        .expect("chown runs");
    assert!(status.success(), "chown {owner} {}", path.display());
}

/// Everything one test needs: the test DNS (a.test's DKIM key; b.test's MX at 127.0.0.1),
/// Postfix for b.test, postern for a.test delivering to Postfix's port. Dropped in field
/// order: postern first, Postfix before the directory it lives in.
struct Lab {
    postern: Server,
    _postern_dir: tempfile::TempDir,
    postfix: Postfix,
    zone: PathBuf,
    _dns: TestServer,
    _tmp: tempfile::TempDir,
}

impl Lab {
    fn start() -> Lab {
        let tmp = tempfile::tempdir().expect("tempdir");
        let postfix = Postfix::start(&tmp.path().join("postfix"));

        // The key first (keygen needs only the domain's directory), then the zone with its
        // record, then postern's configuration, which names the DNS server's port.
        let keys = tmp.path().join("keys");
        fs::create_dir_all(keys.join("domains/a.test")).expect("mkdir");
        let record = keygen(&keys, "a.test", "rsa2048", "sel");
        let zone = tmp.path().join("zone");
        fs::write(
            &zone,
            format!(
                "test. 3600 SOA ns.test. hostmaster.test. 1 7200 900 1209600 300\n\
                 {}\n\
                 b.test. 300 MX 10 mx.b.test.\n\
                 mx.b.test. 300 A 127.0.0.1\n",
                zone_line(&record)
            ),
        )
        .expect("zone");
        let dns = TestServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), &zone).expect("dns");

        let config = format!(
            "[auth]\nallow_plaintext_on_loopback = true\n\
             [dns]\nnameservers = [\"{}\"]\n\
             [delivery]\nmx_port = {}\nmta_sts = false\nfirst_retry = 1\nmax_retry_interval = 2\n",
            dns.addr, postfix.port
        );
        let postern_dir = instance(
            POSTERN_HOST,
            &[("a.test", &["alice"])],
            &config,
            "submission = [\"127.0.0.1:0\"]",
        );
        let dkim = postern_dir.path().join("domains/a.test/dkim");
        fs::create_dir_all(&dkim).expect("mkdir dkim");
        fs::copy(
            keys.join("domains/a.test/dkim/sel.pem"),
            dkim.join("sel.pem"),
        )
        .expect("key");
        let postern = Server::start(postern_dir.path(), 1);
        Lab {
            postern,
            _postern_dir: postern_dir,
            postfix,
            zone,
            _dns: dns,
            _tmp: tmp,
        }
    }

    /// Both logs, for failure messages.
    fn logs(&self) -> String {
        format!(
            "postern's log:\n{}\nPostfix's maillog:\n{}",
            self.postern.log(),
            self.postfix.maillog()
        )
    }

    /// Waits (at most 30 s) until Postfix has delivered `n` messages to bob's Maildir.
    fn wait_delivered(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.postfix.delivered();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} messages in Postfix's Maildir after 30 s\n{}",
                got.len(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Submits `message` (CRLF line endings) as alice, with AUTH on postern's submission
    /// port, with `BODY=8BITMIME` when `eight_bit`.
    fn submit(&self, message: &[u8], eight_bit: bool) {
        let mut args = vec![
            self.postern.port("submission").to_string(),
            common::PASSWORD.to_string(),
            common::hex(message),
        ];
        if eight_bit {
            args.push("BODY=8BITMIME".to_string());
        }
        assert_eq!(
            common::python(SUBMIT, &args).trim(),
            "sent",
            "{}",
            self.logs()
        );
    }
}

/// Logs in as alice with password `argv[2]` on `argv[1]` (no TLS: loopback) and sends the
/// message hex-encoded in `argv[3]` to bob@b.test, with the MAIL parameters that follow.
/// Prints "sent".
const SUBMIT: &str = r#"
import smtplib, sys
port, password, message = int(sys.argv[1]), sys.argv[2], bytes.fromhex(sys.argv[3])
options = sys.argv[4:]
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30)
s.login("alice@a.test", password)
s.sendmail("alice@a.test", ["bob@b.test"], message, mail_options=options)
s.quit()
print("sent")
"#;

/// Sends the message hex-encoded in `argv[2]` straight to the SMTP server on `argv[1]`, as
/// another MTA would. Prints "sent".
const RELAY: &str = r#"
import smtplib, sys
port, message = int(sys.argv[1]), bytes.fromhex(sys.argv[2])
s = smtplib.SMTP("127.0.0.1", port, local_hostname="mta.elsewhere.test", timeout=30)
s.sendmail("someone@elsewhere.test", ["bob@b.test"], message)
s.quit()
print("sent")
"#;

/// The EHLO keywords of the server on `argv[1]` (upper case, sorted, one line); with
/// `argv[2]` = "binary", then logs in as alice with password `argv[3]` and prints the reply
/// to `MAIL FROM:<alice@a.test> BODY=BINARYMIME`.
const EHLO: &str = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test", timeout=30)
s.ehlo()
print(" ".join(sorted(k.upper() for k in s.esmtp_features)))
if sys.argv[2:3] == ["binary"]:
    s.login("alice@a.test", sys.argv[3])
    code, text = s.mail("alice@a.test", ["BODY=BINARYMIME"])
    print(code, text.decode())
s.quit()
"#;

/// The header section of `message` (CRLF or LF line endings) as (name, unfolded value)
/// pairs, and the body after the empty line.
fn split(message: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let (header, body) = [&b"\r\n\r\n"[..], b"\n\n"]
        .iter()
        .filter_map(|sep| {
            message
                .windows(sep.len())
                .position(|w| w == *sep)
                .map(|at| (at, sep.len()))
        })
        .min()
        .map(|(at, len)| (&message[..at], &message[at + len..]))
        .unwrap_or((message, &b""[..]));
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in String::from_utf8_lossy(header).lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.to_string(), value.trim().to_string()));
        }
    }
    (fields, body)
}

/// The values of the fields named `name` (any case).
fn values(fields: &[(String, String)], name: &str) -> Vec<String> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

/// The delivered message whose Subject is `subject`.
fn by_subject<'a>(messages: &'a [Vec<u8>], subject: &str, lab: &Lab) -> &'a [u8] {
    messages
        .iter()
        .find(|m| values(&split(m).0, "Subject") == [subject])
        .unwrap_or_else(|| panic!("no message with Subject {subject:?}\n{}", lab.logs()))
}

/// A message without Date and Message-ID: postern adds both before signing, and Postfix,
/// which adds whatever a message lacks, adds neither (a Date or Message-Id of its own would
/// break the signature, which over-signs them). dkimpy verifies the copy in the Maildir. A
/// bare message sent to Postfix directly shows that it does add them.
#[test]
fn postern_adds_date_and_message_id_before_signing_so_postfix_adds_none() {
    let lab = Lab::start();
    let bare = b"From: Alice <alice@a.test>\r\n\
                 To: Bob <bob@b.test>\r\n\
                 Subject: no date, no id\r\n\
                 \r\n\
                 No Date, no Message-ID: the MSA adds them.\r\n";
    lab.submit(bare, false);
    let got = lab.wait_delivered(1);
    let copy = by_subject(&got, "no date, no id", &lab);
    let text = String::from_utf8_lossy(copy);
    let (fields, _) = split(copy);

    let dates = values(&fields, "Date");
    let ids = values(&fields, "Message-ID");
    assert_eq!(dates.len(), 1, "one Date: {dates:?}\n{text}");
    assert_eq!(ids.len(), 1, "one Message-ID: {ids:?}\n{text}");
    let id = &ids[0];
    let local = id
        .strip_prefix('<')
        .and_then(|i| i.strip_suffix(&format!("@{POSTERN_HOST}>")))
        .unwrap_or_else(|| panic!("postern's Message-ID, <queue id@{POSTERN_HOST}>: {id}"));
    // The left-hand side is postern's queue id for the message.
    let log = lab.postern.log();
    assert!(
        log.contains(&format!("queued id={local} ")),
        "{id} names no queued message\n{}",
        lab.logs()
    );
    // postern's Date (RFC 5322, UTC), not Postfix's ("... +0000 (UTC)").
    assert!(dates[0].ends_with(" +0000"), "{dates:?}\n{text}");
    // Postfix took postern's Message-ID as the message's.
    assert!(
        lab.postfix.maillog().contains(&format!("message-id={id}")),
        "{}",
        lab.logs()
    );

    let signatures = values(&fields, "DKIM-Signature");
    assert_eq!(signatures.len(), 1, "{text}");
    let signature = signatures[0].replace([' ', '\t'], "").to_ascii_lowercase();
    assert!(
        signature.contains("d=a.test;") && signature.contains("s=sel;"),
        "{signature}"
    );
    let signed = signature
        .split(';')
        .find_map(|tag| tag.strip_prefix("h="))
        .expect("h= tag");
    let signed: Vec<&str> = signed.split(':').collect();
    for name in ["date", "message-id"] {
        assert!(
            signed.iter().filter(|n| **n == name).count() >= 2,
            "{name} signed and over-signed: h={signed:?}"
        );
    }
    assert_eq!(
        common::dkimpy("dkim", &lab.zone, &text),
        "pass\n",
        "dkimpy on Postfix's copy:\n{text}"
    );
    // What a Message-Id added at the end of the header section, as Postfix adds it, would
    // have done: the over-signed field fails the signature.
    let end = text.find("\n\n").expect("end of the header section");
    let added = format!(
        "{}\nMessage-Id: <added@mx.b.test>{}",
        &text[..end],
        &text[end..]
    );
    assert_eq!(common::dkimpy("dkim", &lab.zone, &added), "fail\n");

    // The control: the same kind of message straight from another MTA gets Postfix's own
    // Date and Message-Id, so the copy above would have had them (and failed) had postern
    // not added its own.
    let control = b"From: someone@elsewhere.test\r\nTo: bob@b.test\r\nSubject: control\r\n\r\n\
                    Straight to Postfix.\r\n";
    let out = common::python(RELAY, &[lab.postfix.port.to_string(), common::hex(control)]);
    assert_eq!(out.trim(), "sent");
    let got = lab.wait_delivered(2);
    let (fields, _) = split(by_subject(&got, "control", &lab));
    let ids = values(&fields, "Message-ID");
    assert!(
        ids.len() == 1 && ids[0].ends_with("@mx.b.test>"),
        "Postfix adds its own Message-Id: {fields:?}"
    );
    assert_eq!(values(&fields, "Date").len(), 1, "and a Date: {fields:?}");
}

/// An 8-bit message (UTF-8 body, BODY=8BITMIME) reaches Postfix's Maildir with its body as
/// it was sent, and still verifies. Neither postern nor Postfix offers BINARYMIME (Postfix
/// offers CHUNKING), and postern refuses `BODY=BINARYMIME`, so no binary body is accepted
/// that could never be relayed to such a server.
#[test]
fn eight_bit_body_reaches_postfix_unchanged_and_binarymime_is_offered_nowhere() {
    let lab = Lab::start();

    // What each side offers.
    let postfix_ehlo = common::python(EHLO, &[lab.postfix.port.to_string()]);
    let postfix_ehlo: Vec<&str> = postfix_ehlo.split_whitespace().collect();
    assert!(
        postfix_ehlo.contains(&"8BITMIME") && postfix_ehlo.contains(&"CHUNKING"),
        "Postfix offers 8BITMIME and CHUNKING: {postfix_ehlo:?}"
    );
    assert!(
        !postfix_ehlo.contains(&"BINARYMIME"),
        "Postfix offers no BINARYMIME: {postfix_ehlo:?}"
    );
    let postern_ehlo = common::python(
        EHLO,
        &[
            lab.postern.port("submission").to_string(),
            "binary".to_string(),
            common::PASSWORD.to_string(),
        ],
    );
    let mut lines = postern_ehlo.lines();
    let keywords: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    for want in ["8BITMIME", "CHUNKING", "SMTPUTF8"] {
        assert!(
            keywords.contains(&want),
            "postern offers {want}: {keywords:?}"
        );
    }
    assert!(
        !keywords.contains(&"BINARYMIME"),
        "postern offers no BINARYMIME: {keywords:?}"
    );
    let binary = lines.next().unwrap_or_default();
    assert!(
        binary.starts_with("555 5.5.4 "),
        "MAIL FROM with BODY=BINARYMIME: {binary}"
    );

    // The message: UTF-8 in the header and the body, a line that smtplib's DATA dot-stuffs,
    // trailing white space, a tab.
    let header = "From: Alice <alice@a.test>\r\n\
                  To: bob@b.test\r\n\
                  Subject: 8bit\r\n\
                  Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n\
                  Message-ID: <8bit@a.test>\r\n\
                  MIME-Version: 1.0\r\n\
                  Content-Type: text/plain; charset=utf-8\r\n\
                  Content-Transfer-Encoding: 8bit\r\n";
    let body = "Grüße aus Köln, naïve café: 日本語 ✓ €\r\n\
                .a line that starts with a dot\r\n\
                trailing white space \t \r\n\
                tab\there, ÆØÅ æøå ßẞ\r\n\
                \r\n\
                the end\r\n";
    let message = format!("{header}\r\n{body}");
    lab.submit(message.as_bytes(), true);
    let got = lab.wait_delivered(1);
    // postern declared the 8-bit body to Postfix (RFC 6152), and sent it as it was.
    let maillog = lab.postfix.maillog();
    let mail = maillog
        .lines()
        .find(|l| l.contains(": MAIL FROM:<alice@a.test>"))
        .unwrap_or_else(|| panic!("postern's MAIL command not logged\n{}", lab.logs()));
    assert!(mail.contains(" BODY=8BITMIME"), "{mail}");
    // The SIZE declared is at least what was then sent (RFC 1870: the stored body plus the
    // fields postern adds: signature, Received).
    let declared: u64 = mail
        .split(" SIZE=")
        .nth(1)
        .and_then(|rest| rest.split([' ', '>']).next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no SIZE in {mail}"));
    let sent: u64 = maillog
        .lines()
        .find_map(|l| l.split(": BDAT ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no BDAT in the maillog\n{}", lab.logs()));
    assert!(declared >= sent, "SIZE={declared}, BDAT {sent}");
    let copy = by_subject(&got, "8bit", &lab);
    let text = String::from_utf8_lossy(copy);
    let (fields, delivered) = split(copy);
    // virtual(8) writes Maildir files with LF line endings; nothing else may differ.
    let sent = body.replace("\r\n", "\n");
    assert_eq!(
        String::from_utf8_lossy(delivered),
        sent,
        "the body as sent\n{}",
        lab.logs()
    );
    assert_eq!(delivered, sent.as_bytes(), "byte for byte");
    assert_eq!(
        values(&fields, "Content-Transfer-Encoding"),
        ["8bit"],
        "not converted: {text}"
    );
    assert_eq!(
        common::dkimpy("dkim", &lab.zone, &text),
        "pass\n",
        "dkimpy on Postfix's copy:\n{text}"
    );
}
