//! SASL exchanges of the server side of AUTH: PLAIN and LOGIN.
//!
//! [RFC 4954 section 4](https://www.rfc-editor.org/rfc/rfc4954#section-4): the server sends
//! `334` challenges (base64), the client answers one line each.
//! > "If the client wishes to cancel the authentication exchange, it issues a line with a single
//! > "*". If the server receives such a response, it MUST reject the AUTH command by sending a
//! > 501 reply."
//! > "If the server cannot [BASE64] decode any client response, it MUST reject the AUTH command
//! > with a 501 reply".
//!
//! PLAIN ([RFC 4616](https://www.rfc-editor.org/rfc/rfc4616)): one message
//! `[authzid] NUL authcid NUL passwd`, UTF-8, each part at most 255 octets, authcid and passwd
//! not empty. An initial response `=` means "empty".
//!
//! LOGIN (draft-murchison-sasl-login): challenges `Username:` and `Password:`, one response each;
//! an initial response, if any, is the user name.
//!
//! This module only decodes; whether the credentials are right is the application's verdict.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::command::Mechanism;
use crate::reply::{Reply, ReplyCode};

/// Credentials a client presented with AUTH. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Credentials {
    /// The mechanism used.
    pub mechanism: Mechanism,
    /// The authorization identity (PLAIN only), when the client asked to act as someone else.
    pub authzid: Option<String>,
    /// The authentication identity: the user name.
    pub authcid: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("mechanism", &self.mechanism)
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where an AUTH exchange stands: which response line the session expects next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SaslState {
    /// PLAIN, after an empty `334 `.
    PlainResponse,
    /// LOGIN, after `334 VXNlcm5hbWU6` (Username:).
    LoginUser,
    /// LOGIN, after `334 UGFzc3dvcmQ6` (Password:).
    LoginPassword {
        /// The user name already received.
        user: String,
    },
}

/// What the session does after one step of the exchange.
#[derive(Debug)]
pub(crate) enum SaslStep {
    /// Send this 334 challenge and wait for the next line in this state.
    Continue(Reply, SaslState),
    /// The exchange is complete: ask the application.
    Done(Credentials),
    /// The exchange failed: send this reply, AUTH is over.
    Fail(Reply),
}

const USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
const PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// Starts an exchange for `mechanism` (PLAIN or LOGIN) with an optional initial response.
pub(crate) fn start(mechanism: &Mechanism, initial: Option<&str>) -> SaslStep {
    match (mechanism, initial) {
        (Mechanism::Plain, None) => SaslStep::Continue(challenge(""), SaslState::PlainResponse),
        (Mechanism::Plain, Some(resp)) => step(SaslState::PlainResponse, resp.as_bytes()),
        (Mechanism::Login, None) => {
            SaslStep::Continue(challenge(USERNAME_CHALLENGE), SaslState::LoginUser)
        }
        (Mechanism::Login, Some(resp)) => step(SaslState::LoginUser, resp.as_bytes()),
        (Mechanism::Other(_), _) => SaslStep::Fail(Reply::of(
            ReplyCode::PARAM_NOT_IMPLEMENTED,
            (5, 5, 4),
            "Unrecognized authentication type",
        )),
    }
}

/// Feeds one response line (without CRLF) to the exchange.
pub(crate) fn step(state: SaslState, line: &[u8]) -> SaslStep {
    if line == b"*" {
        return SaslStep::Fail(Reply::of(
            ReplyCode::PARAM_SYNTAX_ERROR,
            (5, 0, 0),
            "Authentication cancelled",
        ));
    }
    let Some(decoded) = decode(line) else {
        return SaslStep::Fail(Reply::of(
            ReplyCode::PARAM_SYNTAX_ERROR,
            (5, 5, 2),
            "Cannot decode base64 response",
        ));
    };
    match state {
        SaslState::PlainResponse => match parse_plain(&decoded) {
            Some(c) => SaslStep::Done(c),
            None => SaslStep::Fail(Reply::of(
                ReplyCode::PARAM_SYNTAX_ERROR,
                (5, 5, 2),
                "Malformed PLAIN response",
            )),
        },
        SaslState::LoginUser => match text(decoded) {
            Some(user) => SaslStep::Continue(
                challenge(PASSWORD_CHALLENGE),
                SaslState::LoginPassword { user },
            ),
            None => SaslStep::Fail(Reply::of(
                ReplyCode::PARAM_SYNTAX_ERROR,
                (5, 5, 2),
                "Malformed user name",
            )),
        },
        SaslState::LoginPassword { user } => match text(decoded) {
            Some(password) => SaslStep::Done(Credentials {
                mechanism: Mechanism::Login,
                authzid: None,
                authcid: user,
                password,
            }),
            None => SaslStep::Fail(Reply::of(
                ReplyCode::PARAM_SYNTAX_ERROR,
                (5, 5, 2),
                "Malformed password",
            )),
        },
    }
}

fn challenge(b64: &str) -> Reply {
    Reply::new(crate::ReplyCode::AUTH_CHALLENGE, None, b64)
}

fn decode(line: &[u8]) -> Option<Vec<u8>> {
    if line == b"=" {
        return Some(Vec::new());
    }
    STANDARD.decode(line).ok()
}

fn text(bytes: Vec<u8>) -> Option<String> {
    let s = String::from_utf8(bytes).ok()?;
    (!s.is_empty() && s.len() <= 255 && !s.contains('\0')).then_some(s)
}

fn parse_plain(msg: &[u8]) -> Option<Credentials> {
    let mut parts = msg.split(|&b| b == 0);
    let authzid = parts.next()?;
    let authcid = parts.next()?;
    let password = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let authzid = if authzid.is_empty() {
        None
    } else {
        Some(text(authzid.to_vec())?)
    };
    Some(Credentials {
        mechanism: Mechanism::Plain,
        authzid,
        authcid: text(authcid.to_vec())?,
        password: text(password.to_vec())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        STANDARD.encode(s)
    }

    fn outcome(s: SaslStep) -> String {
        match s {
            SaslStep::Continue(r, st) => format!("continue {} {:?}", r.lines()[0], st),
            SaslStep::Done(c) => format!("done {:?}/{}/{}", c.authzid, c.authcid, c.password),
            SaslStep::Fail(r) => format!("fail {}", r.code()),
        }
    }

    #[test]
    fn plain_cases() {
        let cases: Vec<(Option<String>, &str)> = vec![
            (None, "continue  PlainResponse"),
            (Some(b64(b"\0user\0pw")), "done None/user/pw"),
            (
                Some(b64(b"admin\0user\0pw")),
                "done Some(\"admin\")/user/pw",
            ),
            (Some(b64(b"\0\0pw")), "fail 501"),
            (Some(b64(b"\0user\0")), "fail 501"),
            (Some(b64(b"user\0pw")), "fail 501"),
            (Some(b64(b"\0a\0b\0c")), "fail 501"),
            (Some(b64(b"\0\xff\0pw")), "fail 501"),
            (Some("=".into()), "fail 501"),
            (Some("!!!".into()), "fail 501"),
            (Some("*".into()), "fail 501"),
        ];
        for (initial, want) in cases {
            assert_eq!(
                outcome(start(&Mechanism::Plain, initial.as_deref())),
                want,
                "initial {initial:?}"
            );
        }
    }

    #[test]
    fn login_exchange() {
        let SaslStep::Continue(r, st) = start(&Mechanism::Login, None) else {
            panic!("LOGIN starts with a challenge")
        };
        assert_eq!(r.to_bytes(), b"334 VXNlcm5hbWU6\r\n");
        let SaslStep::Continue(r, st) = step(st, b64(b"bob").as_bytes()) else {
            panic!("then asks for the password")
        };
        assert_eq!(r.to_bytes(), b"334 UGFzc3dvcmQ6\r\n");
        assert_eq!(
            outcome(step(st.clone(), b64(b"secret").as_bytes())),
            "done None/bob/secret"
        );
        assert_eq!(outcome(step(st, b"*")), "fail 501");
        assert_eq!(outcome(step(SaslState::LoginUser, b"%%%")), "fail 501");
        assert_eq!(
            outcome(start(&Mechanism::Login, Some(&b64(b"bob")))),
            "continue UGFzc3dvcmQ6 LoginPassword { user: \"bob\" }"
        );
        assert_eq!(
            outcome(start(&Mechanism::Other("CRAM-MD5".into()), None)),
            "fail 504"
        );
    }

    #[test]
    fn debug_hides_password() {
        let c = Credentials {
            mechanism: Mechanism::Plain,
            authzid: None,
            authcid: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
