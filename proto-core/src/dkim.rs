//! DKIM canonicalization and hashing ([RFC 6376](https://www.rfc-editor.org/rfc/rfc6376)),
//! without keys, clocks or I/O.
//!
//! DKIM signs two hashes: the *body hash* (`bh=`) over the canonicalized body, and the
//! *header hash* over the canonicalized header fields named in `h=` followed by the
//! `DKIM-Signature` field itself with an empty `b=`. This module computes the inputs and the
//! body hash; the caller does the public-key operation on [`header_hash_input`]'s output.
//!
//! - [`BodyCanonicalizer`] turns a body, handed in as chunks split anywhere (even inside a
//!   CRLF or a run of blank lines), into its canonical form (RFC 6376 3.4.3 and 3.4.4). Its
//!   state is a few counters: memory does not grow with the body.
//! - [`BodyHasher`] hashes that canonical form as it is produced (SHA-256, or SHA-1 to verify
//!   old `rsa-sha1` signatures), optionally stopping after `l=` octets (3.5).
//! - [`canonicalize_header`] canonicalizes one header field (3.4.1, 3.4.2);
//!   [`HeaderFields`] splits a header block into fields;
//!   [`header_hash_input`] selects the fields named by `h=` bottom-up (5.4.2) and appends the
//!   signature field; [`strip_b_value`] empties the `b=` of a received signature for verifying.
//!
//! ```
//! use proto_core::dkim::{BodyHasher, Canonicalization, HashAlgorithm};
//!
//! let mut hasher = BodyHasher::new(Canonicalization::Relaxed, HashAlgorithm::Sha256);
//! for chunk in [&b"Hi.\r\n\r\nWe lost the game.  Are you hun"[..], b"gry yet?\r\n\r\nJoe.\r", b"\n"] {
//!     hasher.update(chunk);
//! }
//! let hash = hasher.finish();
//! assert_eq!(hash.to_base64(), "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");
//! ```
//!
//! # Line ends
//!
//! A line ends with CRLF, which may be split across chunks. Deliberate deviation: a bare CR
//! or a bare LF is an ordinary octet here (neither a line end nor whitespace). RFC 6376
//! leaves them undefined (messages must not contain them, RFC 5322 2.3), implementations
//! differ, and postern's DATA reader refuses messages that contain them, so a signature of
//! ours never covers one.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::Digest as _;

/// A canonicalization algorithm (RFC 6376 3.4), for the header (`c=` before the slash) or the
/// body (after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Canonicalization {
    /// `simple`: almost no change (3.4.1 for headers, 3.4.3 for the body).
    Simple,
    /// `relaxed`: tolerant of whitespace changes and header case (3.4.2, 3.4.4).
    Relaxed,
}

/// A hash algorithm of a DKIM signature (`a=` after the dash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HashAlgorithm {
    /// SHA-256: what signers use (RFC 6376 3.3 "Signers MUST implement and SHOULD sign using
    /// rsa-sha256"; RFC 8463 for ed25519-sha256).
    Sha256,
    /// SHA-1: only to verify old `rsa-sha1` signatures (RFC 8301 3.1 forbids signing with it).
    Sha1,
}

/// Turns a body, fed in arbitrary chunks, into its canonical form.
///
/// Call order: [`BodyCanonicalizer::feed`] any number of times with consecutive pieces of the
/// body (the octets after the empty line that ends the header block), then
/// [`BodyCanonicalizer::finish`] once. Each call appends the canonical octets that are
/// settled so far to `out`; trailing blank lines are held back as a count until content
/// follows them, so the state stays a few words whatever the input.
///
/// Simple ([RFC 6376 3.4.3](https://www.rfc-editor.org/rfc/rfc6376#section-3.4.3)): "The
/// 'simple' body canonicalization algorithm ignores all empty lines at the end of the message
/// body. [...] If there is no body or no trailing CRLF on the message body, a CRLF is added."
///
/// Relaxed ([3.4.4](https://www.rfc-editor.org/rfc/rfc6376#section-3.4.4)): "Ignore all
/// whitespace at the end of lines. Implementations MUST NOT remove the CRLF at the end of the
/// line. Reduce all sequences of WSP within a line to a single SP character." Then empty lines
/// at the end are ignored, and "If the body is non-empty but does not end with a CRLF, a CRLF
/// is added": an empty body (or one of blank lines only) stays empty.
#[derive(Debug, Clone)]
pub struct BodyCanonicalizer {
    canonicalization: Canonicalization,
    /// Line ends seen but not written: they are dropped if nothing but blank lines follows.
    pending_crlf: u64,
    /// Relaxed: whitespace seen since the last octet written on this line.
    pending_wsp: bool,
    /// The last chunk ended with a CR: a line end if the next octet is LF.
    pending_cr: bool,
    /// Relaxed: some octet other than a line end has been written.
    written: bool,
}

impl BodyCanonicalizer {
    /// A canonicalizer at the start of a body.
    pub fn new(canonicalization: Canonicalization) -> Self {
        BodyCanonicalizer {
            canonicalization,
            pending_crlf: 0,
            pending_wsp: false,
            pending_cr: false,
            written: false,
        }
    }

    /// The algorithm in use.
    pub fn canonicalization(&self) -> Canonicalization {
        self.canonicalization
    }

    /// Canonicalizes the next piece of the body, appending what is settled to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.feed_into(chunk, out);
    }

    /// Ends the body: appends the final line end (if any) to `out`.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        self.finish_into(out);
    }

    fn feed_into(&mut self, mut chunk: &[u8], out: &mut impl Sink) {
        if self.pending_cr {
            let Some((&first, rest)) = chunk.split_first() else {
                return;
            };
            self.pending_cr = false;
            if first == b'\n' {
                self.line_end();
                chunk = rest;
            } else {
                // A bare CR: an ordinary octet.
                self.octets(b"\r", out);
            }
        }
        let relaxed = self.canonicalization == Canonicalization::Relaxed;
        while !chunk.is_empty() {
            // The run of ordinary octets up to the next CR (or, relaxed, whitespace).
            let special = chunk
                .iter()
                .position(|&b| b == b'\r' || (relaxed && (b == b' ' || b == b'\t')))
                .unwrap_or(chunk.len());
            if special > 0 {
                self.octets(&chunk[..special], out);
                chunk = &chunk[special..];
                continue;
            }
            match chunk {
                [b'\r', b'\n', rest @ ..] => {
                    self.line_end();
                    chunk = rest;
                }
                [b'\r'] => {
                    self.pending_cr = true;
                    chunk = &[];
                }
                [b'\r', rest @ ..] => {
                    self.octets(b"\r", out);
                    chunk = rest;
                }
                [_, rest @ ..] => {
                    // SP or HTAB, relaxed only.
                    self.pending_wsp = true;
                    chunk = rest;
                }
                [] => {}
            }
        }
    }

    fn finish_into(&mut self, out: &mut impl Sink) {
        if std::mem::take(&mut self.pending_cr) {
            self.octets(b"\r", out);
        }
        match self.canonicalization {
            // Every trailing CRLF collapses into one, and one is added if there was none.
            Canonicalization::Simple => out.put(b"\r\n"),
            Canonicalization::Relaxed if self.written => out.put(b"\r\n"),
            Canonicalization::Relaxed => {}
        }
        self.pending_crlf = 0;
        self.pending_wsp = false;
    }

    /// A CRLF: held back, with the whitespace before it forgotten (relaxed).
    fn line_end(&mut self) {
        self.pending_crlf += 1;
        self.pending_wsp = false;
    }

    /// Ordinary octets (never CR, never WSP when relaxed): what was held back goes first.
    fn octets(&mut self, bytes: &[u8], out: &mut impl Sink) {
        for _ in 0..std::mem::take(&mut self.pending_crlf) {
            out.put(b"\r\n");
        }
        if std::mem::take(&mut self.pending_wsp) {
            out.put(b" ");
        }
        out.put(bytes);
        self.written = true;
    }
}

/// Where canonical octets go: a buffer, or straight into a hash.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// The hash of a body as it streams past: canonicalization, the `l=` limit and the digest.
///
/// Call order: [`BodyHasher::update`] with consecutive pieces of the body, then
/// [`BodyHasher::finish`] for the [`BodyHash`].
///
/// The limit counts canonical octets ([RFC 6376 3.5](https://www.rfc-editor.org/rfc/rfc6376#section-3.5),
/// `l=`: "Body length count (plain-text unsigned decimal integer; OPTIONAL, default is entire
/// body). This tag informs the Verifier of the number of octets in the body of the email after
/// canonicalization included in the cryptographic hash [...] This value MUST NOT be larger
/// than the actual number of octets in the canonicalized message body"). A verifier compares
/// [`BodyHash::length`] with `l=` to check that last sentence.
#[derive(Debug, Clone)]
pub struct BodyHasher {
    canonicalizer: BodyCanonicalizer,
    digest: LimitedDigest,
}

/// The digest with the `l=` limit in front of it.
#[derive(Clone)]
struct LimitedDigest {
    state: DigestState,
    limit: Option<u64>,
    length: u64,
}

#[derive(Clone)]
enum DigestState {
    Sha256(sha2::Sha256),
    Sha1(sha1::Sha1),
}

/// A finished body hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyHash {
    algorithm: HashAlgorithm,
    digest: Vec<u8>,
    length: u64,
}

impl BodyHasher {
    /// A hasher over the whole body.
    pub fn new(canonicalization: Canonicalization, algorithm: HashAlgorithm) -> Self {
        BodyHasher::with_limit(canonicalization, algorithm, None)
    }

    /// A hasher over the first `limit` canonical octets (`l=`), or the whole body for `None`.
    pub fn with_limit(
        canonicalization: Canonicalization,
        algorithm: HashAlgorithm,
        limit: Option<u64>,
    ) -> Self {
        let state = match algorithm {
            HashAlgorithm::Sha256 => DigestState::Sha256(sha2::Sha256::new()),
            HashAlgorithm::Sha1 => DigestState::Sha1(sha1::Sha1::new()),
        };
        BodyHasher {
            canonicalizer: BodyCanonicalizer::new(canonicalization),
            digest: LimitedDigest {
                state,
                limit,
                length: 0,
            },
        }
    }

    /// Hashes the next piece of the body.
    pub fn update(&mut self, chunk: &[u8]) {
        self.canonicalizer.feed_into(chunk, &mut self.digest);
    }

    /// Ends the body and returns its hash.
    pub fn finish(mut self) -> BodyHash {
        self.canonicalizer.finish_into(&mut self.digest);
        let (algorithm, digest) = match self.digest.state {
            DigestState::Sha256(h) => (HashAlgorithm::Sha256, h.finalize().to_vec()),
            DigestState::Sha1(h) => (HashAlgorithm::Sha1, h.finalize().to_vec()),
        };
        BodyHash {
            algorithm,
            digest,
            length: self.digest.length,
        }
    }
}

impl Sink for LimitedDigest {
    fn put(&mut self, bytes: &[u8]) {
        let take = match self.limit {
            Some(limit) => {
                let room = limit.saturating_sub(self.length);
                usize::try_from(room).map_or(bytes.len(), |room| room.min(bytes.len()))
            }
            None => bytes.len(),
        };
        let bytes = &bytes[..take];
        match &mut self.state {
            DigestState::Sha256(h) => h.update(bytes),
            DigestState::Sha1(h) => h.update(bytes),
        }
        self.length += bytes.len() as u64;
    }
}

impl fmt::Debug for LimitedDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithm = match self.state {
            DigestState::Sha256(_) => HashAlgorithm::Sha256,
            DigestState::Sha1(_) => HashAlgorithm::Sha1,
        };
        f.debug_struct("LimitedDigest")
            .field("algorithm", &algorithm)
            .field("limit", &self.limit)
            .field("length", &self.length)
            .finish()
    }
}

impl BodyHash {
    /// The algorithm used.
    pub fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }

    /// The digest: 32 octets for SHA-256, 20 for SHA-1.
    pub fn digest(&self) -> &[u8] {
        &self.digest
    }

    /// How many canonical octets were hashed (at most the limit, if one was given).
    pub fn length(&self) -> u64 {
        self.length
    }

    /// The digest in base64, as the `bh=` tag carries it.
    pub fn to_base64(&self) -> String {
        BASE64.encode(&self.digest)
    }
}

/// Collects the header section of a message fed in chunks, up to the empty line that ends
/// it, and hands back what follows as body: what a signer or verifier keeps of a message,
/// whose body only streams through a [`BodyHasher`].
///
/// Call order: [`HeaderSection::feed`] with consecutive chunks of the message (CRLF line
/// ends, no dot-stuffing) until it returns the body part of a chunk (the section is then
/// complete: read it with [`HeaderSection::take`]) or [`HeaderSection::is_too_long`] says the
/// limit was passed. A message that starts with the empty line has an empty section.
#[derive(Debug, Clone)]
pub struct HeaderSection {
    bytes: Vec<u8>,
    /// The first `searched` octets hold no `CRLF CRLF`.
    searched: usize,
    limit: usize,
    state: SectionState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SectionState {
    Collecting,
    Complete,
    TooLong,
}

impl HeaderSection {
    /// A collector that gives up past `limit` octets.
    pub fn new(limit: usize) -> Self {
        HeaderSection {
            bytes: Vec::new(),
            searched: 0,
            limit,
            state: SectionState::Collecting,
        }
    }

    /// Feeds the next chunk. Once the empty line is in, returns the octets of `chunk` after
    /// it (the start of the body, maybe empty); `None` while the section is incomplete, and
    /// for anything fed after it was complete or too long.
    pub fn feed<'c>(&mut self, chunk: &'c [u8]) -> Option<&'c [u8]> {
        if self.state != SectionState::Collecting {
            return None;
        }
        let before = self.bytes.len();
        self.bytes.extend_from_slice(chunk);
        // `end`: where the section ends, its final CRLF included; the empty line follows.
        let end = if self.bytes.starts_with(b"\r\n") {
            Some(0)
        } else {
            self.bytes[self.searched..]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| self.searched + i + 2)
        };
        match end {
            Some(end) => {
                // The empty line ends in this chunk: the body starts in it too.
                self.bytes.truncate(end);
                self.state = SectionState::Complete;
                Some(&chunk[(end + 2 - before).min(chunk.len())..])
            }
            None if self.bytes.len() > self.limit => {
                self.bytes = Vec::new();
                self.state = SectionState::TooLong;
                None
            }
            None => {
                self.searched = self.bytes.len().saturating_sub(3);
                None
            }
        }
    }

    /// Whether the empty line has been fed.
    pub fn is_complete(&self) -> bool {
        self.state == SectionState::Complete
    }

    /// Whether the section was longer than the limit (nothing is kept then).
    pub fn is_too_long(&self) -> bool {
        self.state == SectionState::TooLong
    }

    /// The section (its final CRLF included, not the empty line), or what was collected of
    /// it; the collector is left empty.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }
}

/// One header field of a header block: its name and its complete text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderField<'a> {
    /// The field name: the octets before the colon, trailing whitespace removed. Empty for a
    /// line without a colon (such a field is never selected by `h=`).
    pub name: &'a [u8],
    /// The whole field: name, colon, value, continuation lines, and the CRLF that ends it
    /// (missing only when the block ended without one).
    pub raw: &'a [u8],
}

/// The fields of a header block, top to bottom: see [`HeaderFields::new`].
#[derive(Debug, Clone)]
pub struct HeaderFields<'a> {
    rest: &'a [u8],
}

impl<'a> HeaderFields<'a> {
    /// The fields of `block`: the header section of a message, with or without the empty line
    /// that ends it (and whatever follows it, which is ignored). A field runs until a CRLF
    /// that is not followed by SP or HTAB (RFC 5322 2.2.3 folding).
    pub fn new(block: &'a [u8]) -> Self {
        HeaderFields { rest: block }
    }
}

impl<'a> Iterator for HeaderFields<'a> {
    type Item = HeaderField<'a>;

    fn next(&mut self) -> Option<HeaderField<'a>> {
        let rest = self.rest;
        if rest.is_empty() || rest.starts_with(b"\r\n") {
            self.rest = &[];
            return None;
        }
        let mut end = rest.len();
        let mut from = 0;
        while let Some(i) = find_crlf(&rest[from..]) {
            let after = from + i + 2;
            if !matches!(rest.get(after), Some(b' ' | b'\t')) {
                end = after;
                break;
            }
            from = after;
        }
        let (raw, tail) = rest.split_at(end);
        self.rest = tail;
        let name = match raw.iter().position(|&b| b == b':') {
            Some(colon) => trim_wsp_end(&raw[..colon]),
            None => &[][..],
        };
        Some(HeaderField { name, raw })
    }
}

/// Appends the canonical form of one header field to `out` (RFC 6376 3.4.1, 3.4.2).
///
/// `field` is the field's complete text, as [`HeaderField::raw`] gives it; a missing final
/// CRLF is added. Simple: the field unchanged. Relaxed
/// ([3.4.2](https://www.rfc-editor.org/rfc/rfc6376#section-3.4.2)): the name in lower case;
/// the value unfolded ("lines with terminators embedded in continued header field values
/// (that is, CRLF sequences followed by WSP) MUST be interpreted without the CRLF"), every
/// run of WSP made one SP, whitespace at its end and around the colon deleted.
pub fn canonicalize_header(canonicalization: Canonicalization, field: &[u8], out: &mut Vec<u8>) {
    let field = field.strip_suffix(b"\r\n").unwrap_or(field);
    match canonicalization {
        Canonicalization::Simple => out.extend_from_slice(field),
        Canonicalization::Relaxed => {
            let (name, value) = match field.iter().position(|&b| b == b':') {
                Some(colon) => (&field[..colon], Some(&field[colon + 1..])),
                None => (field, None),
            };
            out.extend(trim_wsp_end(name).iter().map(u8::to_ascii_lowercase));
            if let Some(value) = value {
                out.push(b':');
                relaxed_value(value, out);
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A relaxed value: unfolded, WSP runs as one SP, no WSP at either end.
fn relaxed_value(value: &[u8], out: &mut Vec<u8>) {
    let mut space = false;
    let mut started = false;
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'\r' if value.get(i + 1) == Some(&b'\n') => {
                // Only folding CRLFs remain inside a field: the WSP after them follows.
                i += 2;
                continue;
            }
            b' ' | b'\t' => space = true,
            b => {
                if space && started {
                    out.push(b' ');
                }
                space = false;
                started = true;
                out.push(b);
            }
        }
        i += 1;
    }
}

/// Appends to `out` the octets the header hash is computed over (RFC 6376 3.7, 5.4.2).
///
/// - `block`: the message's header block (see [`HeaderFields::new`]).
/// - `signed`: the names of the `h=` tag in order (case-insensitive; surrounding whitespace
///   ignored, so the pieces of `h=from : to` split at the colons do).
/// - `signature_field`: the `DKIM-Signature` field being signed or verified, with the value of
///   its `b=` tag empty (see [`strip_b_value`]).
///
/// Each name takes the bottom-most instance of that field not taken yet
/// ([5.4.2](https://www.rfc-editor.org/rfc/rfc6376#section-5.4.2): signers "MUST sign such
/// header fields in order from the bottom of the header field block to the top"); a name
/// listed more often than the field occurs contributes nothing for the extra listings
/// ([3.5](https://www.rfc-editor.org/rfc/rfc6376#section-3.5), `h=`: "nonexistent header
/// fields do not contribute to the signature computation"), which is how over-signing keeps
/// a field from being added later. The signature field comes last, canonicalized the same
/// way, without its final CRLF.
pub fn header_hash_input<N: AsRef<[u8]>>(
    canonicalization: Canonicalization,
    block: &[u8],
    signed: &[N],
    signature_field: &[u8],
    out: &mut Vec<u8>,
) {
    let fields: Vec<HeaderField<'_>> = HeaderFields::new(block).collect();
    let mut taken = vec![false; fields.len()];
    for name in signed {
        let name = trim_fws(name.as_ref());
        if name.is_empty() {
            continue;
        }
        let found = fields
            .iter()
            .enumerate()
            .rev()
            .find(|(i, f)| !taken[*i] && f.name.eq_ignore_ascii_case(name));
        if let Some((i, field)) = found {
            taken[i] = true;
            canonicalize_header(canonicalization, field.raw, out);
        }
    }
    canonicalize_header(canonicalization, signature_field, out);
    out.truncate(out.len() - 2);
}

/// The names of an `h=` tag value (`"From:To : Subject"`), split at the colons, whitespace
/// (including folding) removed.
pub fn split_h_tag(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(':')
        .map(|name| name.trim_matches([' ', '\t', '\r', '\n']))
        .filter(|name| !name.is_empty())
}

/// A `DKIM-Signature` field with the value of its `b=` tag removed, as the header hash
/// covers it ([RFC 6376 3.7](https://www.rfc-editor.org/rfc/rfc6376#section-3.7): the field
/// is hashed "with the value of the 'b=' tag (including all surrounding whitespace) deleted
/// (i.e., treated as the empty string)"). The whitespace before `b` and the `=` stay; the
/// final CRLF does not (it is not hashed).
///
/// Returns `None` when the field has no `b=` tag.
pub fn strip_b_value(field: &[u8]) -> Option<Vec<u8>> {
    let field = field.strip_suffix(b"\r\n").unwrap_or(field);
    let colon = field.iter().position(|&b| b == b':')?;
    let mut start = colon + 1;
    loop {
        let end = field[start..]
            .iter()
            .position(|&b| b == b';')
            .map_or(field.len(), |i| start + i);
        let tag = &field[start..end];
        if let Some(eq) = tag.iter().position(|&b| b == b'=')
            && trim_fws(&tag[..eq]) == b"b"
        {
            let mut out = field[..start + eq + 1].to_vec();
            out.extend_from_slice(&field[end..]);
            return Some(out);
        }
        if end == field.len() {
            return None;
        }
        start = end + 1;
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

fn trim_wsp_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// Without leading and trailing folding whitespace (SP, HTAB, CR, LF).
fn trim_fws(bytes: &[u8]) -> &[u8] {
    let fws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let start = bytes.iter().position(|b| !fws(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !fws(b)).map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(c: Canonicalization, chunks: &[&[u8]]) -> Vec<u8> {
        let mut canon = BodyCanonicalizer::new(c);
        let mut out = Vec::new();
        for chunk in chunks {
            canon.feed(chunk, &mut out);
        }
        canon.finish(&mut out);
        out
    }

    /// Every split of `input` into three pieces gives `expected`.
    fn check_body(c: Canonicalization, input: &[u8], expected: &[u8]) {
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let got = canon(c, &[&input[..i], &input[i..j], &input[j..]]);
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(expected),
                    "{c:?} of {:?} split at {i}, {j}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn header_section_splits_anywhere() {
        let message: &[u8] = b"From: a@b\r\nSubject: x\r\n y\r\n\r\nBody\r\n\r\nmore\r\n";
        for i in 0..=message.len() {
            for j in i..=message.len() {
                let mut section = HeaderSection::new(1000);
                let mut body = Vec::new();
                for piece in [&message[..i], &message[i..j], &message[j..]] {
                    if section.is_complete() {
                        body.extend_from_slice(piece);
                    } else if let Some(rest) = section.feed(piece) {
                        body.extend_from_slice(rest);
                    }
                }
                assert!(section.is_complete(), "split at {i}, {j}");
                assert_eq!(
                    section.take(),
                    b"From: a@b\r\nSubject: x\r\n y\r\n",
                    "{i}, {j}"
                );
                assert_eq!(body, b"Body\r\n\r\nmore\r\n", "split at {i}, {j}");
            }
        }
        let mut section = HeaderSection::new(100);
        assert_eq!(section.feed(b"\r"), None);
        assert_eq!(section.feed(b"\nbody"), Some(&b"body"[..]));
        assert_eq!(section.take(), b"");
        let mut section = HeaderSection::new(10);
        assert_eq!(section.feed(b"Subject: too long"), None);
        assert!(section.is_too_long());
        assert_eq!(section.feed(b"\r\n\r\n"), None);
    }

    #[test]
    fn body_table() {
        use Canonicalization::{Relaxed, Simple};
        let cases: &[(&[u8], &[u8], &[u8])] = &[
            // (input, simple, relaxed)
            (b"", b"\r\n", b""),
            (b"\r\n", b"\r\n", b""),
            (b"a", b"a\r\n", b"a\r\n"),
            (b"a\r\n", b"a\r\n", b"a\r\n"),
            (b"a\r\n\r\n\r\n", b"a\r\n", b"a\r\n"),
            (b"a \t b  \r\n", b"a \t b  \r\n", b"a b\r\n"),
            (b"  a\r\n", b"  a\r\n", b" a\r\n"),
            (b"a\r\n \r\n\t\r\n", b"a\r\n \r\n\t\r\n", b"a\r\n"),
            (b"a\r\n \r\nb", b"a\r\n \r\nb\r\n", b"a\r\n\r\nb\r\n"),
            (
                b"a\r\n\r\n\r\nb\r\n\r\n",
                b"a\r\n\r\n\r\nb\r\n",
                b"a\r\n\r\n\r\nb\r\n",
            ),
            // Bare CR and bare LF are ordinary octets (see the module doc).
            (b"a\rb\r\n", b"a\rb\r\n", b"a\rb\r\n"),
            (b"a\nb\n", b"a\nb\n\r\n", b"a\nb\n\r\n"),
            (b"a\r", b"a\r\r\n", b"a\r\r\n"),
            (b"\r", b"\r\r\n", b"\r\r\n"),
            (b"a \r\r\n", b"a \r\r\n", b"a \r\r\n"),
            (b"\r\r\n\r\n", b"\r\r\n", b"\r\r\n"),
            (b"a\r\n\n", b"a\r\n\n\r\n", b"a\r\n\n\r\n"),
            (b"x\t\r\n\r\n \r\n", b"x\t\r\n\r\n \r\n", b"x\r\n"),
        ];
        for (input, simple, relaxed) in cases {
            check_body(Simple, input, simple);
            check_body(Relaxed, input, relaxed);
        }
    }

    #[test]
    fn one_octet_at_a_time() {
        let input = b" C \r\nD \t E\r\n\r\n\r\n";
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(canon(Canonicalization::Relaxed, &chunks), b" C\r\nD E\r\n");
        assert_eq!(
            canon(Canonicalization::Simple, &chunks),
            b" C \r\nD \t E\r\n"
        );
    }

    #[test]
    fn limit_counts_canonical_octets() {
        let body = b"a  b\r\nc\r\n\r\n";
        // Relaxed canonical form: "a b\r\nc\r\n" (8 octets).
        for (limit, hashed) in [
            (0, &b""[..]),
            (3, b"a b"),
            (8, b"a b\r\nc\r\n"),
            (100, b"a b\r\nc\r\n"),
        ] {
            let mut h = BodyHasher::with_limit(
                Canonicalization::Relaxed,
                HashAlgorithm::Sha256,
                Some(limit),
            );
            for chunk in body.chunks(3) {
                h.update(chunk);
            }
            let got = h.finish();
            assert_eq!(got.length(), hashed.len() as u64, "limit {limit}");
            assert_eq!(
                got.digest(),
                sha2::Sha256::digest(hashed).as_slice(),
                "limit {limit}"
            );
        }
        let sha1 = BodyHasher::new(Canonicalization::Simple, HashAlgorithm::Sha1).finish();
        assert_eq!(sha1.to_base64(), "uoq1oCgLlTqpdDX/iUbLy7J1Wic=");
        assert_eq!(sha1.algorithm(), HashAlgorithm::Sha1);
    }

    #[test]
    fn header_fields_split() {
        let block = b"A: 1\r\nB: 2\r\n  more\r\n\tand more\r\nno colon\r\nC :3\r\n\r\nbody: x\r\n";
        let fields: Vec<(&[u8], &[u8])> =
            HeaderFields::new(block).map(|f| (f.name, f.raw)).collect();
        assert_eq!(
            fields,
            vec![
                (&b"A"[..], &b"A: 1\r\n"[..]),
                (b"B", b"B: 2\r\n  more\r\n\tand more\r\n"),
                (b"", b"no colon\r\n"),
                (b"C", b"C :3\r\n"),
            ]
        );
        let unterminated: Vec<_> = HeaderFields::new(b"A: 1\r\nB: 2").map(|f| f.raw).collect();
        assert_eq!(unterminated, vec![&b"A: 1\r\n"[..], b"B: 2"]);
    }

    #[test]
    fn header_table() {
        let cases: &[(&[u8], &[u8], &[u8])] = &[
            // (field, simple, relaxed)
            (b"A: X\r\n", b"A: X\r\n", b"a:X\r\n"),
            (
                b"B : Y\t\r\n\tZ  \r\n",
                b"B : Y\t\r\n\tZ  \r\n",
                b"b:Y Z\r\n",
            ),
            (b"X-Empty:\r\n", b"X-Empty:\r\n", b"x-empty:\r\n"),
            (b"X-Empty: \t \r\n", b"X-Empty: \t \r\n", b"x-empty:\r\n"),
            (
                b"Subject: a\r\n b",
                b"Subject: a\r\n b\r\n",
                b"subject:a b\r\n",
            ),
            (b"Sub:ject: a:b", b"Sub:ject: a:b\r\n", b"sub:ject: a:b\r\n"),
        ];
        for (field, simple, relaxed) in cases {
            for (c, want) in [
                (Canonicalization::Simple, simple),
                (Canonicalization::Relaxed, relaxed),
            ] {
                let mut out = Vec::new();
                canonicalize_header(c, field, &mut out);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(want),
                    "{c:?} of {:?}",
                    String::from_utf8_lossy(field)
                );
            }
        }
    }

    #[test]
    fn header_selection_bottom_up_and_oversigned() {
        let block = b"Received: r1\r\nFrom: a\r\nReceived: r2\r\nTo: b\r\nfrom: c\r\n\r\n";
        let sig = b"DKIM-Signature: v=1; h=from:from:from; b=";
        let mut out = Vec::new();
        header_hash_input(
            Canonicalization::Relaxed,
            block,
            &[
                "From", " FROM ", "from", "Received", "X-Absent", "received", "received",
            ],
            sig,
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "from:c\r\nfrom:a\r\nreceived:r2\r\nreceived:r1\r\n\
             dkim-signature:v=1; h=from:from:from; b="
        );
        let mut out = Vec::new();
        header_hash_input(Canonicalization::Simple, block, &["to"], sig, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "To: b\r\nDKIM-Signature: v=1; h=from:from:from; b="
        );
    }

    #[test]
    fn h_tag_and_b_value() {
        let names: Vec<&str> = split_h_tag("from : to :\r\n subject:: date").collect();
        assert_eq!(names, ["from", "to", "subject", "date"]);
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (
                b"DKIM-Signature: v=1; bh=xyz; b=abc\r\n def\r\n",
                Some(b"DKIM-Signature: v=1; bh=xyz; b="),
            ),
            (
                b"DKIM-Signature: b = abc ; d=x",
                Some(b"DKIM-Signature: b =; d=x"),
            ),
            (
                b"DKIM-Signature: v=1;\r\n\tb=\r\n",
                Some(b"DKIM-Signature: v=1;\r\n\tb="),
            ),
            (b"DKIM-Signature: v=1; bh=xyz", None),
            (b"no colon b=x", None),
        ];
        for (field, want) in cases {
            assert_eq!(
                strip_b_value(field).as_deref(),
                *want,
                "{:?}",
                String::from_utf8_lossy(field)
            );
        }
    }
}
