//! A minimal SMTP sink on blocking `std::net`, to show that proto-core needs no particular
//! runtime. It accepts every message and writes it to `DIR/<n>.eml`.
//!
//! Usage: `cargo run -p postern-proto-core --example sink -- 127.0.0.1:2526 /tmp/sink`
//! (no TLS, no AUTH; one thread per connection).

// The driver is the I/O side: it reads the clock and passes the time in. The clock ban in
// clippy.toml is for the sans-IO core, not for its drivers.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use proto_core::{
    server::Action, server::Config, server::Event, server::PeerInfo, server::Session,
    server::Verdict,
};

static COUNT: AtomicU64 = AtomicU64::new(0);

fn serve(mut sock: TcpStream, config: Arc<Config>, dir: PathBuf) -> std::io::Result<()> {
    let peer = PeerInfo::new(sock.peer_addr().ok(), sock.local_addr().ok());
    let mut session = Session::new(config, peer, Instant::now());
    let (mut body, mut buf, mut out) = (Vec::new(), vec![0; 64 * 1024], Vec::new());
    loop {
        while let Some(action) = session.poll_action() {
            match action {
                Action::Send(reply) => reply.encode(&mut out),
                Action::Event(Event::MessageStart) => body.clear(),
                Action::Event(Event::MessageData(chunk)) => body.extend_from_slice(&chunk),
                Action::Event(Event::MessageEnd { ticket }) => {
                    let n = COUNT.fetch_add(1, Ordering::SeqCst);
                    std::fs::write(dir.join(format!("{n}.eml")), &body)?;
                    let text = format!("stored as {n}.eml");
                    let _ = session.resolve(Instant::now(), ticket, Verdict::AcceptWithText(text));
                }
                Action::Event(Event::Mail { ticket, .. } | Event::Rcpt { ticket, .. }) => {
                    let _ = session.resolve(Instant::now(), ticket, Verdict::Accept);
                }
                Action::Close => return sock.write_all(&out),
                _ => {}
            }
        }
        sock.write_all(&out)?;
        out.clear();
        sock.set_read_timeout(session.poll_timeout().map(|t| {
            t.saturating_duration_since(Instant::now())
                .max(std::time::Duration::from_millis(1))
        }))?;
        match sock.read(&mut buf) {
            Ok(0) => session.handle_eof(Instant::now()),
            Ok(n) => session.handle_input(Instant::now(), &buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                session.handle_timeout(Instant::now())
            }
            Err(e) => return Err(e),
        }
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:2526".into());
    let dir = PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    let listener = TcpListener::bind(&addr)?;
    println!("sink listening on {}", listener.local_addr()?);
    let config = Arc::new(Config::new("sink.localhost"));
    for sock in listener.incoming() {
        let (sock, config, dir) = (sock?, config.clone(), dir.clone());
        std::thread::spawn(move || serve(sock, config, dir));
    }
    Ok(())
}
