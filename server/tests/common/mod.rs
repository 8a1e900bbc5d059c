//! Shared by the operations tests: a configuration directory, the real binary run in it, and
//! Python clients. Loopback only; every process is killed when its guard drops.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_postern");

/// A configuration directory: `postern.toml` with loopback listeners and `extra` keys, the
/// local domain `localhost` with user alice. No certificate: tests write their own.
pub fn config_dir(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), extra);
    fs::create_dir_all(dir.path().join("domains/localhost")).expect("mkdir domain");
    fs::write(dir.path().join("domains/localhost/users"), "alice\n").expect("users");
    dir
}

/// Writes `postern.toml` with `extra` top-level keys (and tables). Without a `[dns]` table
/// in `extra`, DNS goes to [`OFFLINE_DNS`].
pub fn write_config(root: &Path, extra: &str) {
    let extra = with_offline_dns(extra);
    fs::write(
        root.join("postern.toml"),
        format!(
            "hostname = \"localhost\"\n\
             data_dir = \"data\"\n\
             {extra}\n\
             [listeners]\n\
             smtp = [\"127.0.0.1:0\"]\n\
             submissions = [\"127.0.0.1:0\"]\n"
        ),
    )
    .expect("write config");
}

// Each test binary uses part of this module; the offline DNS table is the test kit's.
#[allow(unused_imports)]
pub use postern::testkit::{OFFLINE_DNS, with_offline_dns};

/// A self-signed certificate for `names`: (certificate PEM, key PEM, certificate DER in hex).
pub fn cert(names: &[&str]) -> (String, String, String) {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("rcgen");
    (
        ck.cert.pem(),
        ck.signing_key.serialize_pem(),
        hex(ck.cert.der()),
    )
}

/// Writes a certbot-style pair into `dir`.
pub fn write_certbot(dir: &Path, pem: &(String, String, String)) {
    fs::create_dir_all(dir).expect("mkdir cert dir");
    fs::write(dir.join("privkey.pem"), &pem.1).expect("write key");
    fs::write(dir.join("fullchain.pem"), &pem.0).expect("write cert");
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running server; killed and reaped on drop.
pub struct Server {
    pub child: Child,
    pub root: PathBuf,
    pub listeners: HashMap<String, SocketAddr>,
    pub lines: mpsc::Receiver<String>,
}

impl Server {
    /// Runs `postern -C root serve` and waits for `count` listening lines.
    pub fn start(root: &Path, count: usize) -> Server {
        Server::start_with(
            Command::new(BINARY).arg("-C").arg(root).arg("serve"),
            root,
            count,
        )
    }

    /// Runs `command` (which must start postern) and waits for `count` listening lines.
    pub fn start_with(command: &mut Command, root: &Path, count: usize) -> Server {
        let log = fs::File::create(root.join("stderr.log")).expect("log file");
        let mut child = command
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn postern");
        let lines = reader(child.stdout.take().expect("stdout"));
        let mut server = Server {
            child,
            root: root.to_path_buf(),
            listeners: HashMap::new(),
            lines,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.listeners.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = server
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("server did not start; log:\n{}", server.log()));
            if let Some(rest) = line.strip_prefix("postern: listening on ")
                && let Some((addr, role)) = rest.split_once(' ')
            {
                let role = role.trim_matches(|c| c == '(' || c == ')').to_string();
                server
                    .listeners
                    .insert(role, addr.parse().expect("listener address"));
            }
        }
        server
    }

    pub fn port(&self, role: &str) -> u16 {
        self.listeners[role].port()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.root.join("stderr.log")).unwrap_or_default()
    }

    /// Waits until the log contains `needle`, or fails after `secs` seconds.
    pub fn wait_log(&self, needle: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} not logged within {secs} s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit; fails after `secs` seconds.
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {secs} s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most 20 s) until `<user>@<domain>` has at least `n` messages: delivery runs
    /// after the 250, from the queue. Returns what is there then.
    pub fn wait_inbox(&self, domain: &str, user: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let inbox = self.inbox(domain, user);
            if inbox.len() >= n || Instant::now() >= deadline {
                return inbox;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Messages delivered to `<data>/mail/<domain>/<user>/new`, oldest name first.
    pub fn inbox(&self, domain: &str, user: &str) -> Vec<String> {
        postern::testkit::maildir_messages(&self.root, domain, user)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reader(stdout: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Runs a Python script to completion; returns its stdout, failing the test on error.
pub fn python(script: &str, args: &[String]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A Python script running alongside the test, fed lines on stdin; killed on drop.
pub struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Script {
    pub fn start(script: &str, args: &[String]) -> Script {
        let mut child = Command::new("python3")
            .arg("-u")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let stdin = child.stdin.take();
        let lines = reader(child.stdout.take().expect("stdout"));
        Script {
            child,
            stdin,
            lines,
        }
    }

    /// The next line the script prints; fails after 30 s.
    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a line from the script")
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to script");
        stdin.flush().expect("flush");
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prints the certificate (DER, hex) and the TLS version an implicit-TLS port presents for
/// SNI `argv[2]` (empty: no SNI). Optional `argv[3]`: the highest TLS version, "1.2".
pub const PEER_CERT: &str = r#"
import socket, ssl, sys
port, sni = int(sys.argv[1]), sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if len(sys.argv) > 3 and sys.argv[3] == "1.2":
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname=(sni or None)) as s:
        print(s.getpeercert(True).hex())
        print(s.version())
"#;

/// The certificate (hex DER) presented on `port` for `sni`, and the TLS version.
pub fn peer_cert(port: u16, sni: &str) -> (String, String) {
    let out = python(PEER_CERT, &[port.to_string(), sni.to_string()]);
    let mut lines = out.lines();
    (
        lines.next().unwrap_or_default().to_string(),
        lines.next().unwrap_or_default().to_string(),
    )
}

/// `postern -C root user add ADDR --password-stdin`.
pub fn add_user(root: &Path, address: &str, password: &str) {
    let out = with_stdin(
        Command::new(BINARY)
            .arg("-C")
            .arg(root)
            .args(["user", "add", address, "--password-stdin"]),
        &format!("{password}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The password of the users [`instance`] makes.
pub const PASSWORD: &str = "pw-for-tests";

/// A configuration directory for `hostname` with `domains` (each with `users`, password
/// [`PASSWORD`]), a self-signed certificate, and `config` (tables) before `listeners` ([`OFFLINE_DNS`]
/// unless it has a `[dns]` table).
pub fn instance(
    hostname: &str,
    domains: &[(&str, &[&str])],
    config: &str,
    listeners: &str,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::write(
        root.join("postern.toml"),
        format!(
            "hostname = \"{hostname}\"\ndata_dir = \"data\"\n{}\n[listeners]\n{listeners}\n",
            with_offline_dns(config)
        ),
    )
    .expect("config");
    write_certbot(&root.join("certs").join(hostname), &cert(&[hostname]));
    for (domain, users) in domains {
        fs::create_dir_all(root.join("domains").join(domain)).expect("domain");
        for user in *users {
            add_user(root, &format!("{user}@{domain}"), PASSWORD);
        }
    }
    dir
}

/// Waits until `dir/data/mail/<domain>/<user>/new` has `n` messages (at most `secs`).
pub fn wait_messages(
    server: &Server,
    domain: &str,
    user: &str,
    n: usize,
    secs: u64,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let inbox = server.inbox(domain, user);
        if inbox.len() >= n {
            return inbox;
        }
        assert!(
            Instant::now() < deadline,
            "{user}@{domain}: {} of {n} messages after {secs} s; log:\n{}",
            inbox.len(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The standard output of `out`, which must have succeeded (else both outputs are shown).
pub fn succeeded(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `command` run with `input` on its standard input, its outputs captured.
pub fn with_stdin(command: &mut Command, input: &str) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("standard input");
    child.wait_with_output().expect("wait")
}

/// `postern -C root dkim keygen DOMAIN --algo ALGO --selector SELECTOR`: the record's zone
/// line (`name. IN TXT "..." ...`).
pub fn keygen(root: &Path, domain: &str, algo: &str, selector: &str) -> String {
    let out = Command::new(BINARY)
        .arg("-C")
        .arg(root)
        .args([
            "dkim",
            "keygen",
            domain,
            "--algo",
            algo,
            "--selector",
            selector,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run postern");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains(" IN TXT "))
        .expect("a record line")
        .to_string()
}

/// A zone line from `keygen` in the test server's format (`name TTL TXT "..."`).
pub fn zone_line(record: &str) -> String {
    let (name, strings) = record.split_once(" IN TXT ").expect("record");
    format!("{name} 300 TXT {strings}")
}

/// What dkimpy (Debian's python3-dkim, run as /usr/bin/python3), the outside verifier, says
/// of `message` with the TXT records of the zone file `zone` as its DNS: for `check` "arc",
/// the chain's validation and dkimpy's reason (`pass ...`); for "dkim", one `pass` or `fail`
/// line per DKIM-Signature, top first.
pub fn dkimpy(check: &str, zone: &Path, message: &str) -> String {
    let file = zone.with_file_name(format!("dkimpy-{check}.eml"));
    fs::write(&file, message).expect("write the message");
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(DKIMPY)
        .arg(check)
        .arg(zone)
        .arg(&file)
        .output()
        .expect("run /usr/bin/python3 (python3-dkim)");
    assert!(
        out.status.success(),
        "dkimpy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const DKIMPY: &str = r#"
import re, sys, dkim
records = {}
for line in open(sys.argv[2]):
    parts = line.split(None, 3)
    if len(parts) == 4 and parts[2] == "TXT":
        records[parts[0].rstrip(".").lower()] = "".join(re.findall(r'"([^"]*)"', parts[3])).encode()
def dnsfunc(name, timeout=5):
    return records.get(name.decode().rstrip(".").lower())
message = open(sys.argv[3], "rb").read()
if sys.argv[1] == "arc":
    cv, results, reason = dkim.arc_verify(message, dnsfunc=dnsfunc)
    print(cv.decode(), reason)
else:
    d = dkim.DKIM(message)
    count = len([l for l in message.split(b"\n") if l.lower().startswith(b"dkim-signature:")])
    for i in range(count):
        print("pass" if d.verify(idx=i, dnsfunc=dnsfunc) else "fail")
"#;

/// A loopback port nobody listens on (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `postern -C dir ARGS...`, run to its end.
pub fn postern(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BINARY)
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("run postern")
}

/// A test CA and a certificate for `names` signed by it: (CA PEM, chain PEM, key PEM).
pub fn signed_cert(names: &[&str]) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "outbound test CA");
    let ca_key = KeyPair::generate().expect("ca key");
    let ca = params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    (
        ca.pem(),
        format!("{}{}", leaf.pem(), ca.pem()),
        leaf_key.serialize_pem(),
    )
}

/// An HTTPS server for MTA-STS policies: prints its port, then serves
/// `/.well-known/mta-sts.txt` with the policy given for the Host asked for.
pub const POLICY_SERVER: &str = r#"
import http.server, ssl, sys
cert, key = sys.argv[1], sys.argv[2]
policies = dict(arg.split("=", 1) for arg in sys.argv[3:])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0]
        body = policies.get(host)
        if self.path != "/.well-known/mta-sts.txt" or body is None:
            self.send_error(404)
            return
        body = body.replace("|", "\r\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;
