//! Removing `Authentication-Results` fields that claim to be ours.
//!
//! [RFC 8601 5](https://www.rfc-editor.org/rfc/rfc8601#section-5): "An MTA [...] MUST remove
//! or rename any header field that claims to be such a field [one with its own authserv-id]
//! [...] before delivering". A sender could otherwise write `Authentication-Results:
//! <our hostname>; dkim=pass` into its message and have it read as our verdict.
//!
//! [`ForgedFilter`] sits between the DATA stream and the store and drops such fields from the
//! header section, whatever the chunk boundaries. A field is judged on its first
//! [`DECIDE_AT`] octets (the authserv-id comes right after the colon), so memory stays
//! bounded however long a field is; the body passes through untouched.

/// How many octets of a field are enough to judge it.
pub const DECIDE_AT: usize = 1024;

/// The field name judged.
const NAME: &[u8] = b"Authentication-Results";

/// Drops our forged `Authentication-Results` fields from a message as it streams.
///
/// Call order: [`ForgedFilter::feed`] with each chunk, then [`ForgedFilter::finish`] once;
/// each appends to `out` what is to be stored.
#[derive(Debug)]
pub struct ForgedFilter {
    authserv_id: String,
    state: State,
    /// The start of the current field, until it is judged.
    field: Vec<u8>,
    /// The judgement of the current field: `Some(true)` to keep it.
    keep: Option<bool>,
    /// The last octet was the LF of a CRLF: the next one starts a line.
    line_start: bool,
    /// The last octet was a CR.
    cr: bool,
    /// Fields removed so far.
    removed: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Body,
}

impl ForgedFilter {
    /// A filter for fields claiming `authserv_id` (our hostname).
    pub fn new(authserv_id: &str) -> ForgedFilter {
        ForgedFilter {
            authserv_id: authserv_id.to_ascii_lowercase(),
            state: State::Header,
            field: Vec::new(),
            keep: None,
            line_start: true,
            cr: false,
            removed: 0,
        }
    }

    /// Filters the next chunk into `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for (i, &b) in chunk.iter().enumerate() {
            if self.state == State::Body {
                out.extend_from_slice(&chunk[i..]);
                return;
            }
            if self.line_start && b != b' ' && b != b'\t' {
                // The field before is complete; this octet starts a new line.
                self.end_field(out);
            }
            self.line_start = self.cr && b == b'\n';
            self.cr = b == b'\r';
            match self.keep {
                Some(true) => out.push(b),
                Some(false) => {}
                None => {
                    self.field.push(b);
                    if self.field == b"\r\n" {
                        // The empty line: the header section ends.
                        out.extend_from_slice(&self.field);
                        self.field.clear();
                        self.state = State::Body;
                    } else if self.field.len() >= DECIDE_AT {
                        self.judge(out);
                    }
                }
            }
        }
    }

    /// Ends the message: a last field without its end is judged too.
    pub fn finish(mut self, out: &mut Vec<u8>) -> usize {
        if self.state == State::Header {
            self.end_field(out);
        }
        self.removed
    }

    fn end_field(&mut self, out: &mut Vec<u8>) {
        if self.keep.is_none() && !self.field.is_empty() {
            self.judge(out);
        }
        self.field.clear();
        self.keep = None;
    }

    /// Decides on the current field from what is buffered, and writes it if kept.
    fn judge(&mut self, out: &mut Vec<u8>) {
        let keep = !claims(&self.field, &self.authserv_id);
        if keep {
            out.extend_from_slice(&self.field);
        } else {
            self.removed += 1;
        }
        self.field.clear();
        self.keep = Some(keep);
    }
}

/// Whether `field` (its start) is an `Authentication-Results` field with authserv-id `id`
/// (RFC 8601 2.2: `"Authentication-Results:" [CFWS] authserv-id [ CFWS authres-version ] ...`;
/// the authserv-id compared case-insensitively, as a domain name).
fn claims(field: &[u8], id: &str) -> bool {
    let Some(colon) = field.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = field[..colon].trim_ascii_end();
    if !name.eq_ignore_ascii_case(NAME) {
        return false;
    }
    let value = skip_cfws(&field[colon + 1..]);
    let end = value
        .iter()
        .position(|&b| matches!(b, b';' | b'(' | b' ' | b'\t' | b'\r' | b'\n'))
        .unwrap_or(value.len());
    let token = &value[..end];
    let token = token.strip_prefix(b"\"").unwrap_or(token);
    let token = token.strip_suffix(b"\"").unwrap_or(token);
    token.eq_ignore_ascii_case(id.as_bytes())
}

/// Skips folding white space and (nested) comments.
fn skip_cfws(mut value: &[u8]) -> &[u8] {
    loop {
        match value.first() {
            Some(b' ' | b'\t' | b'\r' | b'\n') => value = &value[1..],
            Some(b'(') => {
                let mut depth = 0usize;
                let mut i = 0;
                while i < value.len() {
                    match value[i] {
                        b'\\' => i += 1,
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                value = value.get(i + 1..).unwrap_or_default();
            }
            _ => return value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(message: &[u8], step: usize) -> (Vec<u8>, usize) {
        let mut f = ForgedFilter::new("MX.Example.org");
        let mut out = Vec::new();
        for chunk in message.chunks(step) {
            f.feed(chunk, &mut out);
        }
        let removed = f.finish(&mut out);
        (out, removed)
    }

    #[test]
    fn removes_ours_whatever_the_chunks() {
        let long = format!(
            "Authentication-Results: mx.example.org;\r\n dkim=pass {}\r\n",
            "x".repeat(3000)
        );
        let message = format!(
            "Received: from a\r\n\
             Authentication-Results: mx.example.org; spf=pass\r\n\
             authentication-results : (comment (nested)) \"MX.EXAMPLE.ORG\"\r\n\t; dkim=pass\r\n\
             Authentication-Results: other.example; dkim=pass\r\n\
             Authentication-Results: mx.example.org.evil; dkim=pass\r\n\
             {long}\
             Subject: hi\r\n\
             \r\n\
             Authentication-Results: mx.example.org; in the body\r\n"
        );
        let want = "Received: from a\r\n\
             Authentication-Results: other.example; dkim=pass\r\n\
             Authentication-Results: mx.example.org.evil; dkim=pass\r\n\
             Subject: hi\r\n\
             \r\n\
             Authentication-Results: mx.example.org; in the body\r\n";
        for step in [1, 2, 3, 5, 64, 1023, 1024, 1025, 100_000] {
            let (out, removed) = filter(message.as_bytes(), step);
            assert_eq!(String::from_utf8_lossy(&out), want, "chunks of {step}");
            assert_eq!(removed, 3, "chunks of {step}");
        }
    }

    #[test]
    fn leaves_other_messages_alone() {
        for message in [
            &b""[..],
            b"\r\nbody only\r\n",
            b"Subject: no body",
            b"Subject: x\r\n\r\n",
            b"Authentication-Results: other; none\r\n",
        ] {
            for step in [1, 2, 7] {
                let (out, removed) = filter(message, step);
                assert_eq!(out, message, "{}", String::from_utf8_lossy(message));
                assert_eq!(removed, 0);
            }
        }
        // A last field without CRLF is still judged.
        let (out, removed) = filter(b"Authentication-Results: mx.example.org; x", 3);
        assert_eq!((out.as_slice(), removed), (&b""[..], 1));
    }
}
