//! Running the real binary as an operator would: connection limits, graceful shutdown on
//! SIGTERM, configuration reload on SIGHUP and systemd socket activation. Loopback only
//! (127.0.0.2 and 127.0.0.3 are loopback addresses too); every process is killed when its
//! guard drops.

mod common;

use common::{Server, cert, config_dir, python, write_certbot};

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
    let dir = config_dir("max_connections = 3\nmax_connections_per_ip = 2");
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
    // The connections closed with the script: there is room again.
    let again = python(
        GREETINGS,
        &[server.port("smtp").to_string(), "127.0.0.1".into()],
    );
    assert!(again.starts_with("127.0.0.1 220 localhost"), "{again}");
}
