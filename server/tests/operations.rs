//! Running the real binary as an operator would: connection limits, graceful shutdown on
//! SIGTERM, configuration reload on SIGHUP and systemd socket activation. Loopback only
//! (127.0.0.2 and 127.0.0.3 are loopback addresses too); every process is killed when its
//! guard drops. For socket activation a Python helper binds the listeners, puts them on fds 3
//! and up without close-on-exec, and execs postern (keeping its pid, so `LISTEN_PID` matches):
//! no unsafe code in the test.

mod common;

use common::{Script, Server, cert, config_dir, python, write_certbot};

/// Opens connections from the given source addresses and prints each greeting's first line,
/// keeping every connection open until all greetings are read.
const GREETINGS: &str = r#"
import socket, sys
port = int(sys.argv[1])
socks = []
for source in sys.argv[2:]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    socks.append(s)
    print(source, s.makefile("rb").readline().decode().strip())
"#;

#[test]
fn connection_limits_answer_421() {
    // Loopback is exempt from the per-address limit by default; this test needs it counted.
    let dir = config_dir(
        "max_connections = 3\nmax_connections_per_ip = 2\nmax_connections_per_ip_exempt = []",
    );
    write_certbot(&dir.path().join("certs/localhost"), &cert(&["localhost"]));
    let server = Server::start(dir.path(), 2);
    let out = python(
        GREETINGS,
        &[
            server.port("smtp").to_string(),
            "127.0.0.1".into(),
            "127.0.0.1".into(),
            "127.0.0.1".into(),
            "127.0.0.2".into(),
            "127.0.0.3".into(),
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[0].starts_with("127.0.0.1 220 localhost"), "{out}");
    assert!(lines[1].starts_with("127.0.0.1 220 localhost"), "{out}");
    let too_many = "421 4.7.0 localhost Too many connections, try later";
    assert_eq!(lines[2], format!("127.0.0.1 {too_many}"), "per IP: {out}");
    assert!(lines[3].starts_with("127.0.0.2 220 localhost"), "{out}");
    assert_eq!(lines[4], format!("127.0.0.3 {too_many}"), "total: {out}");
    let log = server.log();
    assert!(log.contains("limit=max_connections_per_ip"), "{log}");
    assert!(log.contains("limit=max_connections\n"), "{log}");
    // The connections closed with the script: there is room again (once the server has seen
    // them close).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let again = python(
            GREETINGS,
            &[server.port("smtp").to_string(), "127.0.0.1".into()],
        );
        if again.starts_with("127.0.0.1 220 localhost") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{again}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Opens one connection per `port:source:mode` argument (mode `tls`: implicit TLS, any
/// certificate; `plain`), in order, and prints each greeting's
/// first line, keeping every connection open until all greetings are read.
const GREETINGS_ON: &str = r#"
import socket, ssl, sys
tls = ssl.create_default_context()
tls.check_hostname = False
tls.verify_mode = ssl.CERT_NONE
socks = []
for arg in sys.argv[1:]:
    port, source, mode = arg.split(":")
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=10, source_address=(source, 0))
    if mode == "tls":
        s = tls.wrap_socket(s)
    socks.append(s)
    print(port, source, s.makefile("rb").readline().decode().strip())
"#;

#[test]
fn a_full_port_25_leaves_submissions_its_slots_and_loopback_is_exempt_per_address() {
    let dir = config_dir("max_connections = 3\nmax_connections_per_ip = 1");
    write_certbot(&dir.path().join("certs/localhost"), &cert(&["localhost"]));
    let server = Server::start(dir.path(), 2);
    let (smtp, submissions) = (server.port("smtp"), server.port("submissions"));
    let args: Vec<String> = [
        (smtp, "127.0.0.1:plain"),
        (smtp, "127.0.0.1:plain"),
        (smtp, "127.0.0.1:plain"),
        (smtp, "127.0.0.2:plain"),
        (submissions, "127.0.0.1:tls"),
        (submissions, "127.0.0.2:tls"),
    ]
    .iter()
    .map(|(port, source)| format!("{port}:{source}"))
    .collect();
    let out = python(GREETINGS_ON, &args);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    for line in &lines[..3] {
        assert!(
            line.contains(" 220 localhost"),
            "loopback is not held to max_connections_per_ip = 1: {out}"
        );
    }
    assert!(
        lines[3].ends_with("421 4.7.0 localhost Too many connections, try later"),
        "port 25's own 3 slots are taken: {out}"
    );
    assert!(
        lines[4].contains(" 220 localhost"),
        "submissions has its own slots: {out}"
    );
    assert!(lines[5].contains(" 220 localhost"), "{out}");
    let log = server.log();
    assert!(
        log.contains("result=refused client=127.0.0.2 role=smtp limit=max_connections\n"),
        "{log}"
    );
    assert!(!log.contains("role=submissions limit="), "{log}");
}

/// Dribbles a command line, then message data, one byte every 0.2 s, and holds a TLS port
/// without a handshake; prints what each got and after how long (bounded at 15 s each).
const DRIBBLE: &str = r#"
import socket, sys, time
smtp, submissions = int(sys.argv[1]), int(sys.argv[2])
def dribble(s, data):
    start = time.monotonic()
    s.settimeout(0.2)
    for b in data:
        try:
            s.send(bytes([b]))
        except OSError:
            break
        try:
            got = s.recv(1000)
            return got.decode().strip(), time.monotonic() - start
        except socket.timeout:
            pass
        if time.monotonic() - start > 15:
            break
    return "held", time.monotonic() - start
s = socket.create_connection(("127.0.0.1", smtp), timeout=10)
f = s.makefile("rb")
f.readline()
got, took = dribble(s, b"NOOP " * 100)
print("command", got.splitlines()[-1] if got else "closed", round(took))
s = socket.create_connection(("127.0.0.1", smtp), timeout=10)
f = s.makefile("rb")
f.readline()
s.sendall(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n")
for _ in range(4):
    line = f.readline()
    while line[3:4] == b"-":
        line = f.readline()
got, took = dribble(s, b"x" * 100)
print("data", got.splitlines()[-1] if got else "closed", round(took))
s = socket.create_connection(("127.0.0.1", submissions), timeout=15)
start = time.monotonic()
got = s.recv(100)
print("handshake", "closed" if got == b"" else got, round(time.monotonic() - start))
"#;

#[test]
fn slow_clients_lose_their_slot() {
    let dir = config_dir("command_timeout = 2\ndata_timeout = 2\ntls_handshake_timeout = 1");
    write_certbot(&dir.path().join("certs/localhost"), &cert(&["localhost"]));
    let server = Server::start(dir.path(), 2);
    let out = python(
        DRIBBLE,
        &[
            server.port("smtp").to_string(),
            server.port("submissions").to_string(),
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    // Each gets its 2 s (1 s for the handshake) however often it sends a byte: not the
    // 15 s the script would keep dribbling.
    for (line, what) in lines.iter().zip(["command", "data"]) {
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words[0], what, "{out}");
        assert!(line.contains(" 421 4.4.2 localhost Timeout"), "{out}");
        let took: u64 = words.last().expect("a time").parse().expect("seconds");
        assert!((2..=8).contains(&took), "{what} held {took} s: {out}");
    }
    let handshake: Vec<&str> = lines[2].split(' ').collect();
    assert_eq!(handshake[..2], ["handshake", "closed"], "{out}");
    let took: u64 = handshake[2].parse().expect("seconds");
    assert!((1..=6).contains(&took), "{out}");
    server.wait_log("error=\"TLS handshake timed out\"", 10);
}

/// Starts a transaction and sends half a body; on a line from stdin sends the rest and QUIT.
/// Then checks that no new connection is accepted.
const IN_FLIGHT: &str = r#"
import smtplib, socket, sys
port = int(sys.argv[1])
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30)
s.ehlo()
s.mail("sender@client.test")
s.rcpt("alice@localhost")
code, _ = s.docmd("DATA")
print("data", code)
s.send(b"From: sender@client.test\r\nSubject: in flight\r\n\r\nfirst half\r\n")
sys.stdin.readline()
s.send(b"second half\r\n.\r\n")
print("end", s.getreply()[0])
print("quit", s.quit()[0])
try:
    socket.create_connection(("127.0.0.1", port), timeout=5).recv(100)
    print("new connection accepted")
except OSError as e:
    print("new connection refused")
"#;

#[test]
fn sigterm_lets_a_message_in_flight_finish() {
    let dir = config_dir("shutdown_grace = 20");
    write_certbot(&dir.path().join("certs/localhost"), &cert(&["localhost"]));
    let mut server = Server::start(dir.path(), 2);
    let mut client = Script::start(IN_FLIGHT, &[server.port("smtp").to_string()]);
    assert_eq!(client.line(), "data 354");
    server.signal("TERM");
    server.wait_log("waiting up to 20 s for 1 open connections", 10);
    assert!(
        server.child.try_wait().expect("try_wait").is_none(),
        "exited early"
    );
    client.send("go");
    assert_eq!(client.line(), "end 250", "log:\n{}", server.log());
    // The transaction done, the session is closed with 421 4.3.2 (it is shutting down); the
    // client's QUIT reads that reply.
    assert_eq!(client.line(), "quit 421");
    assert_eq!(client.line(), "new connection refused");
    let status = server.wait_exit(10);
    assert!(status.success(), "{status}");
    assert!(
        server.log().contains("all connections closed"),
        "{}",
        server.log()
    );
    // The message was durable before its 250: delivered before the exit, or from the queue
    // at the next start.
    let server = Server::start(dir.path(), 2);
    let inbox = server.wait_inbox("localhost", "alice", 1);
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert!(
        inbox[0].contains("first half\r\nsecond half\r\n"),
        "{}",
        inbox[0]
    );
}

#[test]
fn shutdown_grace_bounds_the_wait() {
    let dir = config_dir("shutdown_grace = 1");
    write_certbot(&dir.path().join("certs/localhost"), &cert(&["localhost"]));
    let mut server = Server::start(dir.path(), 2);
    // A client that stops halfway through its message and never leaves.
    let stalled = Script::start(STALLED, &[server.port("smtp").to_string()]);
    assert_eq!(stalled.line(), "in data");
    server.signal("TERM");
    let status = server.wait_exit(10);
    assert!(status.success(), "{status}");
    assert!(
        server.log().contains("shutdown_grace over"),
        "{}",
        server.log()
    );
}

#[test]
fn a_second_sigterm_stops_waiting() {
    let dir = config_dir("shutdown_grace = 60");
    write_certbot(&dir.path().join("certs/localhost"), &cert(&["localhost"]));
    let mut server = Server::start(dir.path(), 2);
    let stalled = Script::start(STALLED, &[server.port("smtp").to_string()]);
    assert_eq!(stalled.line(), "in data");
    server.signal("TERM");
    server.wait_log("waiting up to 60 s for 1 open connections", 10);
    server.signal("TERM");
    let status = server.wait_exit(10);
    assert!(status.success(), "{status}");
    assert!(server.log().contains("second signal"), "{}", server.log());
}

/// Opens a transaction, starts DATA, says so, then stalls until stdin closes.
const STALLED: &str = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
f = s.makefile("rb")
f.readline()
s.sendall(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n")
while not f.readline().startswith(b"354"):
    pass
s.sendall(b"Subject: half\r\n")
print("in data", flush=True)
sys.stdin.readline()
"#;

#[test]
fn sigterm_closes_idle_sessions_at_once() {
    let dir = config_dir("shutdown_grace = 60");
    write_certbot(&dir.path().join("certs/localhost"), &cert(&["localhost"]));
    let mut server = Server::start(dir.path(), 2);
    let idle = python(
        IDLE_AFTER_EHLO,
        &[
            server.port("smtp").to_string(),
            "TERM".into(),
            server.child.id().to_string(),
        ],
    );
    assert_eq!(
        idle,
        "421 4.3.2 localhost Service shutting down, try again later\n"
    );
    let status = server.wait_exit(10);
    assert!(status.success(), "{status}");
    assert!(
        server.log().contains("all connections closed"),
        "{}",
        server.log()
    );
}

/// Greets, sends SIGTERM to the server (pid in argv[3]), prints what the server says unasked.
const IDLE_AFTER_EHLO: &str = r#"
import os, signal, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
f = s.makefile("rb")
f.readline()
s.sendall(b"EHLO c.test\r\n")
while not f.readline().startswith(b"250 "):
    pass
os.kill(int(sys.argv[3]), signal.SIGTERM)
print(f.readline().decode().strip())
"#;

/// Reads the greeting, then prints what the server says next without being asked.
const IDLE: &str = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
f = s.makefile("rb")
f.readline()
print(f.readline().decode().strip())
"#;

/// Prints the greeting and the EHLO reply of a new connection.
const EHLO: &str = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
f = s.makefile("rb")
print(f.readline().decode().strip())
s.sendall(b"EHLO client.test\r\n")
while True:
    line = f.readline().decode().strip()
    print(line)
    if not line.startswith("250-"):
        break
s.sendall(b"QUIT\r\n")
"#;

#[test]
fn sighup_reloads_the_configuration_and_refuses_a_broken_one() {
    let dir = config_dir("max_message_size = 1048576");
    let root = dir.path();
    write_certbot(
        &root.join("certs/localhost"),
        &cert(&["localhost", "mx.test"]),
    );
    let server = Server::start(root, 2);
    let port = server.port("smtp").to_string();
    let before = python(EHLO, std::slice::from_ref(&port));
    assert!(before.starts_with("220 localhost "), "{before}");
    assert!(before.contains("250-SIZE 1048576\n"), "{before}");

    // A connection opened before the reload keeps its configuration.
    let held = Script::start(
        "import socket, sys\ns = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n\
         f = s.makefile('rb')\nprint(f.readline().decode().strip())\nsys.stdin.readline()\n\
         s.sendall(b'EHLO client.test\\r\\n')\nwhile True:\n    line = f.readline().decode().strip()\n\
         \x20   print(line)\n    if not line.startswith('250-'):\n        break\n",
        std::slice::from_ref(&port),
    );
    assert!(held.line().starts_with("220 localhost "));
    let mut held = held;

    // Live changes: host name, size limit; a listener added needs a restart.
    std::fs::write(
        root.join("postern.toml"),
        format!(
            "hostname = \"mx.test\"\ndata_dir = \"data\"\nmax_message_size = 2097152\n\
             command_timeout = 1\n{}\
             [listeners]\nsmtp = [\"127.0.0.1:0\"]\nsubmissions = [\"127.0.0.1:0\"]\n\
             submission = [\"127.0.0.1:0\"]\n",
            common::OFFLINE_DNS
        ),
    )
    .expect("write config");
    server.signal("HUP");
    server.wait_log("configuration reloaded", 10);
    assert!(
        server.log().contains("[listeners] changed in ") && server.log().contains("needs restart"),
        "{}",
        server.log()
    );
    let after = python(EHLO, std::slice::from_ref(&port));
    assert!(after.starts_with("220 mx.test "), "{after}");
    assert!(after.contains("250-SIZE 2097152\n"), "{after}");
    // Delivery, which runs across reloads, names the host as new sessions do.
    let sent = python(SEND, std::slice::from_ref(&port));
    assert_eq!(sent.trim(), "refused {}", "{sent}");
    server.wait_log(" removed id=", 10);
    let delivered = server.inbox("localhost", "alice");
    assert!(
        delivered.len() == 1 && delivered[0].contains("by mx.test (postern)"),
        "{delivered:?}"
    );
    held.send("go");
    assert!(
        held.line().starts_with("250-localhost"),
        "old session, old name"
    );
    let idle = python(IDLE, std::slice::from_ref(&port));
    assert_eq!(
        idle, "421 4.4.2 mx.test Timeout, closing connection\n",
        "new timeout"
    );

    // A broken file is refused; the log names file and line; the old configuration runs on.
    std::fs::write(
        root.join("postern.toml"),
        "hostname = \"mx.test\"\ndata_dir = \"data\"\nmax_message_size = \"big\"\n\
         [listeners]\nsmtp = [\"127.0.0.1:0\"]\n",
    )
    .expect("write config");
    server.signal("HUP");
    server.wait_log("refused, keeping the current configuration", 10);
    assert!(
        server.log().contains("postern.toml, line 3: invalid type"),
        "{}",
        server.log()
    );
    let still = python(EHLO, std::slice::from_ref(&port));
    assert!(still.starts_with("220 mx.test "), "{still}");
    assert!(still.contains("250-SIZE 2097152\n"), "{still}");
}

/// Binds one listener per name in argv[3:], moves them to fds 3, 4, ... (inheritable), sets
/// the systemd variables with LISTEN_PID = its own pid, and execs postern (same pid). Prints
/// "bound <name> <port>" to stderr (the server's log file).
const SOCKET_ACTIVATION: &str = r#"
import os, socket, sys
binary, root, names = sys.argv[1], sys.argv[2], sys.argv[3:]
socks = []
for name in names:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    print("bound", name, s.getsockname()[1], file=sys.stderr, flush=True)
    socks.append(s)
high = [os.dup(s.fileno()) for s in socks]
for s in socks:
    s.close()
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i, inheritable=True)
    os.close(fd)
env = dict(os.environ, LISTEN_FDS=str(len(names)), LISTEN_FDNAMES=":".join(names),
           LISTEN_PID=str(os.getpid()))
os.execve(binary, [binary, "-C", root, "serve"], env)
"#;

#[test]
fn systemd_socket_activation_uses_the_passed_sockets() {
    // [listeners] names a port the test holds: binding it would fail, so the server can only
    // run on the sockets it is given.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = held.local_addr().expect("addr");
    let dir = config_dir("");
    let root = dir.path();
    std::fs::write(
        root.join("postern.toml"),
        format!(
            "hostname = \"localhost\"\ndata_dir = \"data\"\n{}[listeners]\nsmtp = [\"{taken}\"]\n",
            common::OFFLINE_DNS
        ),
    )
    .expect("write config");
    let default = cert(&["localhost"]);
    write_certbot(&root.join("certs/localhost"), &default);
    let mut command = std::process::Command::new("python3");
    command.arg("-c").arg(SOCKET_ACTIVATION).args([
        common::BINARY,
        root.to_str().expect("utf-8 path"),
        "smtp",
        "submissions",
    ]);
    let server = Server::start_with(&mut command, root, 2);
    let log = server.log();
    for role in ["smtp", "submissions"] {
        let line = format!("bound {role} {}\n", server.port(role));
        assert!(log.contains(&line), "{line:?} not in:\n{log}");
    }
    // Mail over the passed smtp socket; TLS on the passed submissions socket.
    let out = python(SEND, &[server.port("smtp").to_string()]);
    assert!(out.contains("refused {}"), "{out}");
    assert_eq!(server.wait_inbox("localhost", "alice", 1).len(), 1);
    assert_eq!(
        common::peer_cert(server.port("submissions"), "").0,
        default.2
    );
    drop(held);
}

#[test]
fn socket_activation_with_an_unknown_name_refuses_to_start() {
    let dir = config_dir("");
    let root = dir.path();
    write_certbot(&root.join("certs/localhost"), &cert(&["localhost"]));
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(SOCKET_ACTIVATION)
        .args([
            common::BINARY,
            root.to_str().expect("utf-8 path"),
            "smtp",
            "postern.socket",
        ])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("is named \"postern.socket\", which is not a role"),
        "{stderr}"
    );
    assert!(stderr.contains("FileDescriptorName=smtp"), "{stderr}");
}

/// Sends one plain message to alice@localhost.
const SEND: &str = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test", timeout=20)
msg = b"From: sender@client.test\r\nTo: alice@localhost\r\nSubject: activated\r\n\r\nhi\r\n"
print("refused", s.sendmail("sender@client.test", ["alice@localhost"], msg))
s.quit()
"#;

#[test]
fn tells_systemd_when_ready_and_stopping() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    let dir = config_dir("");
    let root = dir.path();
    write_certbot(&root.join("certs/localhost"), &cert(&["localhost"]));
    let path = root.join("notify.sock");
    let abstract_name = format!("postern-test-{}", std::process::id());
    let sockets = [
        (
            UnixDatagram::bind(&path).expect("bind path"),
            path.to_str().expect("utf-8").to_string(),
        ),
        (
            UnixDatagram::bind_addr(
                &SocketAddr::from_abstract_name(abstract_name.as_bytes()).expect("name"),
            )
            .expect("bind abstract"),
            format!("@{abstract_name}"),
        ),
    ];
    for (socket, name) in sockets {
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .expect("timeout");
        let mut command = std::process::Command::new(common::BINARY);
        command
            .arg("-C")
            .arg(root)
            .arg("serve")
            .env("NOTIFY_SOCKET", &name);
        let mut server = Server::start_with(&mut command, root, 2);
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("READY=1 arrives");
        assert_eq!(&buf[..n], b"READY=1", "{name}");
        server.signal("TERM");
        let n = socket.recv(&mut buf).expect("STOPPING=1 arrives");
        assert_eq!(&buf[..n], b"STOPPING=1", "{name}");
        assert!(server.wait_exit(10).success());
    }
}

#[test]
fn a_closed_stdout_does_not_stop_the_server() {
    use std::io::{BufRead, BufReader};
    let dir = config_dir("");
    write_certbot(&dir.path().join("certs/localhost"), &cert(&["localhost"]));
    let mut child = std::process::Command::new(common::BINARY)
        .arg("-C")
        .arg(dir.path())
        .arg("serve")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn postern");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut port = None;
    while port.is_none() {
        let line = lines.next().expect("a line").expect("utf-8");
        if let Some(rest) = line.strip_prefix("postern: listening on ")
            && rest.ends_with("(smtp)")
        {
            let addr: std::net::SocketAddr =
                rest.split(' ').next().expect("addr").parse().expect("addr");
            port = Some(addr.port());
        }
    }
    // Nobody reads standard output any more; the stop message must not kill the server.
    drop(lines);
    let out = python(SEND, &[port.expect("port").to_string()]);
    assert!(out.contains("refused {}"), "{out}");
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "still running");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
