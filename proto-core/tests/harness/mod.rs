//! A test harness: one server session on a virtual clock, a scripted client, and an
//! application whose verdicts are a plain function of the event.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use proto_core::{
    ForwardPath, Reply, ReplyCode, ReversePath, TlsInfo, server::Action, server::Config,
    server::Event, server::PeerInfo, server::Session, server::Verdict,
};

/// What the harness records, in order: replies (as wire text), events (summarised), and
/// the driver actions StartTls / Close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Reply(String),
    Event(String),
    StartTls,
    Close,
}

/// The test application: accepts everything except these.
#[derive(Debug, Clone)]
pub struct App {
    /// Recipients (local part) refused with 550 5.1.1.
    pub unknown_users: Vec<String>,
    /// The only password that works.
    pub password: String,
    /// Whether verdicts are given at once (true) or left pending for the test to give.
    pub auto: bool,
}

impl Default for App {
    fn default() -> Self {
        App {
            unknown_users: vec!["nobody".into()],
            password: "secret".into(),
            auto: true,
        }
    }
}

pub struct Harness {
    pub session: Session,
    pub now: Instant,
    pub out: Vec<Out>,
    pub body: Vec<u8>,
    pub messages: Vec<Vec<u8>>,
    pub app: App,
    pub pending: Vec<(proto_core::server::Ticket, String)>,
}

pub fn config() -> Config {
    let mut c = Config::new("mx.test");
    c.extensions.starttls = true;
    c
}

impl Harness {
    pub fn new(config: Config) -> Harness {
        Harness::with_peer(config, PeerInfo::default())
    }

    pub fn with_peer(config: Config, peer: PeerInfo) -> Harness {
        // The virtual clock needs an origin; after this it only moves when a test says so.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let session = Session::new(Arc::new(config), peer, now);
        let mut h = Harness {
            session,
            now,
            out: Vec::new(),
            body: Vec::new(),
            messages: Vec::new(),
            app: App::default(),
            pending: Vec::new(),
        };
        h.drain();
        h
    }

    pub fn input(&mut self, bytes: &[u8]) {
        self.session.handle_input(self.now, bytes);
        self.drain();
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.session.handle_timeout(self.now);
        self.drain();
    }

    pub fn tls(&mut self) {
        self.session
            .handle_tls_established(
                self.now,
                TlsInfo::new("TLSv1.3", "TLS_AES_128_GCM_SHA256", None),
            )
            .unwrap();
        self.drain();
    }

    pub fn resolve_next(&mut self, verdict: Verdict) {
        let (ticket, _) = self.pending.remove(0);
        self.session.resolve(self.now, ticket, verdict).unwrap();
        self.drain();
    }

    fn verdict(&self, event: &Event) -> Verdict {
        match event {
            Event::Rcpt {
                to: ForwardPath::Mailbox(m),
                ..
            } if self
                .app
                .unknown_users
                .iter()
                .any(|u| u == m.local_part().as_str()) =>
            {
                Verdict::Reject(Reply::new(
                    ReplyCode::MAILBOX_UNAVAILABLE,
                    proto_core::EnhancedStatus::new(5, 1, 1),
                    "No such user",
                ))
            }
            Event::Auth { credentials, .. } if credentials.password != self.app.password => {
                Verdict::Reject(Reply::new(
                    ReplyCode::AUTH_INVALID,
                    proto_core::EnhancedStatus::new(5, 7, 8),
                    "Bad credentials",
                ))
            }
            Event::MessageEnd { .. } => {
                Verdict::AcceptWithText(format!("queued as Q{}", self.messages.len()))
            }
            _ => Verdict::Accept,
        }
    }

    pub fn drain(&mut self) {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Send(r) => self
                    .out
                    .push(Out::Reply(String::from_utf8(r.to_bytes()).unwrap())),
                Action::StartTls => self.out.push(Out::StartTls),
                Action::Close => self.out.push(Out::Close),
                Action::Event(e) => {
                    self.out.push(Out::Event(summary(&e)));
                    let ticket = match &e {
                        Event::MessageData(d) => {
                            self.body.extend_from_slice(d);
                            None
                        }
                        Event::MessageStart => {
                            self.body.clear();
                            None
                        }
                        Event::MessageEnd { ticket } => {
                            self.messages.push(std::mem::take(&mut self.body));
                            Some(*ticket)
                        }
                        Event::Mail { ticket, .. }
                        | Event::Rcpt { ticket, .. }
                        | Event::Auth { ticket, .. } => Some(*ticket),
                        _ => None,
                    };
                    if let Some(ticket) = ticket {
                        if self.app.auto {
                            let v = self.verdict(&e);
                            self.session.resolve(self.now, ticket, v).unwrap();
                        } else {
                            self.pending.push((ticket, summary(&e)));
                        }
                    }
                }
                _ => panic!("unknown action"),
            }
        }
    }

    /// Reply codes in order, e.g. ["220", "250", "354"].
    pub fn codes(&self) -> Vec<String> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Out::Reply(r) => Some(r[..3].to_string()),
                _ => None,
            })
            .collect()
    }

    /// The first line of every reply, e.g. "250 2.1.0 Sender <a@b> OK".
    pub fn replies(&self) -> Vec<String> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Out::Reply(r) => Some(r.lines().last().unwrap().to_string()),
                _ => None,
            })
            .collect()
    }

    pub fn closed(&self) -> bool {
        self.out.last() == Some(&Out::Close)
    }
}

/// A stable summary of an event, for comparing runs. Body chunks are not listed one by one
/// (their boundaries may differ); the harness compares the assembled body instead.
pub fn summary(e: &Event) -> String {
    match e {
        Event::Mail { from, .. } => format!(
            "mail {}",
            match from {
                ReversePath::Null => "<>".to_string(),
                other => other.to_string(),
            }
        ),
        Event::Rcpt { to, .. } => format!("rcpt {to}"),
        Event::Auth { credentials, .. } => format!("auth {}", credentials.authcid),
        Event::MessageStart => "message-start".into(),
        Event::MessageData(_) => "data".into(),
        Event::MessageEnd { .. } => "message-end".into(),
        Event::TransactionAborted => "aborted".into(),
        _ => "other".into(),
    }
}

/// Runs `script` split into the given chunks; returns (outputs without data events, messages).
pub fn run_split(config: &Config, script: &[u8], cuts: &[usize]) -> (Vec<Out>, Vec<Vec<u8>>) {
    let mut h = Harness::new(config.clone());
    let mut last = 0;
    for &c in cuts.iter().chain(std::iter::once(&script.len())) {
        let c = c.clamp(last, script.len());
        h.input(&script[last..c]);
        last = c;
    }
    let out = h
        .out
        .into_iter()
        .filter(|o| *o != Out::Event("data".into()))
        .collect();
    (out, h.messages)
}
