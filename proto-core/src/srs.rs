//! SRS, the Sender Rewriting Scheme: the envelope sender of forwarded mail, and bounces back.
//!
//! When we forward a message to another domain, SPF at the destination would fail if the
//! envelope sender stayed the original one. So the sender is rewritten into an address of ours
//! that encodes the original ([`Srs::forward`]); a bounce sent to that address is checked and
//! turned back into the original sender ([`Srs::reverse`]). The hash makes the rewritten
//! addresses unforgeable (we are not an open relay for bounces) and the timestamp makes them
//! expire.
//!
//! # The scheme
//!
//! The common one, as in Shevek's paper and libsrs2 / postsrsd, so addresses look like every
//! other forwarder's:
//!
//! ```text
//! SRS0=HHHH=TT=orig-domain=orig-local@forwarder       first forwarder
//! SRS1=HHHH=first-forwarder==HHHH=TT=orig-domain=orig-local@forwarder    next ones
//! ```
//!
//! - `TT`: the day (Unix time / 86400) modulo 1024, as two base32 characters
//!   (`A`-`Z`, `2`-`7`), most significant first. An address is accepted for
//!   [`Srs::max_age_days`] days (default 21), and refused as expired after.
//! - `HHHH`: the first [`Srs::hash_len`] characters (default 4) of the standard base64 of
//!   HMAC-SHA1(secret, data), where data is the ASCII-lower-cased concatenation of
//!   `TT`, `orig-domain`, `orig-local` for SRS0, and of `first-forwarder`, and the rest of the
//!   SRS0 local part after `SRS0` (the `=` included) for SRS1. It is compared without regard
//!   to ASCII case, as implementations do: mail systems on the way may change case.
//! - Forwarding an SRS0 address makes an SRS1 address that keeps the first forwarder's SRS0
//!   part (so a bounce goes back to the first forwarder, not through every hop); forwarding an
//!   SRS1 address only re-signs it with our hash. Reversing an SRS1 address gives the SRS0
//!   address at the first forwarder; its inner hash is that forwarder's business.
//! - The separator after `SRS0`/`SRS1` may be `=`, `+` or `-` when reading; we write `=`.
//!
//! A sender already in the forwarder's domain is not rewritten; the null sender `<>` is never
//! rewritten (there is nothing to bounce to). The SRS0 hash does not cover the forwarder's
//! domain after the `@`: it only routes the bounce to us, and the caller checks that the
//! domain is one of its own.
//!
//! Several secrets can be given: the first signs, all verify, so a secret can be replaced
//! without refusing the bounces of mail forwarded just before.
//!
//! A rewritten local part longer than 64 octets (RFC 5321 section 4.5.3.1.1) is refused
//! ([`SrsError::TooLong`]); the caller then forwards with the original sender.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1_hmac::Sha1;

use crate::address::{Domain, LocalPart, Mailbox};

/// Seconds in a timestamp unit.
const DAY: u64 = 24 * 60 * 60;
/// Timestamps are days modulo this.
const SLOTS: u64 = 1024;
/// The base32 alphabet of timestamps.
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// The separator between fields.
const SEP: char = '=';
/// Separators accepted right after the tag.
const TAG_SEPARATORS: [char; 3] = ['=', '+', '-'];
/// Base64 characters of a whole SHA-1 digest: the longest hash.
const MAX_HASH_LEN: usize = 27;

/// The secrets and settings of SRS rewriting.
#[derive(Clone)]
pub struct Srs {
    secrets: Vec<Vec<u8>>,
    max_age_days: u16,
    hash_len: usize,
}

/// An SRS address decoded: what it was before we (or the first forwarder) rewrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SrsKind {
    /// An SRS0 address: the original sender.
    Srs0,
    /// An SRS1 address: the SRS0 address at the first forwarder.
    Srs1,
}

/// Why an address could not be rewritten or reversed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SrsError {
    /// The local part does not start with `SRS0` or `SRS1` and a separator.
    #[error("not an SRS address")]
    NotSrs,
    /// A field is missing or empty.
    #[error("malformed SRS address: {0}")]
    Malformed(&'static str),
    /// The timestamp is not two base32 characters.
    #[error("malformed SRS address: bad timestamp {0:?}")]
    BadTimestamp(String),
    /// The timestamp is older than the maximum age.
    #[error("SRS address expired: {age_days} days old, at most {max_age_days} accepted")]
    Expired {
        /// Its age.
        age_days: u64,
        /// The limit.
        max_age_days: u16,
    },
    /// The hash does not match: forged, or signed with a secret we no longer have.
    #[error("SRS address has a wrong hash (forged, or signed with another secret)")]
    BadHash,
    /// The rewritten local part would exceed 64 octets.
    #[error("the SRS address would be longer than 64 octets")]
    TooLong,
    /// The original address cannot be encoded (a domain with `=`).
    #[error("cannot encode {0} in SRS")]
    Unsupported(String),
    /// The decoded original is not a valid address.
    #[error("SRS address decodes to an invalid address: {0}")]
    BadOriginal(String),
}

impl Srs {
    /// SRS with this secret, a maximum age of 21 days and 4 hash characters. Use a long random
    /// secret and keep it: a changed secret refuses the bounces of earlier mail (unless the old
    /// one is kept with [`Srs::with_previous_secret`]).
    pub fn new(secret: &[u8]) -> Srs {
        Srs {
            secrets: vec![secret.to_vec()],
            max_age_days: 21,
            hash_len: 4,
        }
    }

    /// Also accepts addresses signed with an older `secret`.
    pub fn with_previous_secret(mut self, secret: &[u8]) -> Srs {
        self.secrets.push(secret.to_vec());
        self
    }

    /// Refuses addresses older than `days` (at most 1023: timestamps wrap at 1024 days).
    pub fn with_max_age_days(mut self, days: u16) -> Srs {
        self.max_age_days = days.min(1023);
        self
    }

    /// Uses `len` hash characters (4 to 27).
    pub fn with_hash_len(mut self, len: usize) -> Srs {
        self.hash_len = len.clamp(4, MAX_HASH_LEN);
        self
    }

    /// The maximum age, in days.
    pub fn max_age_days(&self) -> u16 {
        self.max_age_days
    }

    /// The number of hash characters.
    pub fn hash_len(&self) -> usize {
        self.hash_len
    }

    /// The envelope sender to use when forwarding mail from `sender` out of `forwarder` (our
    /// domain) at `now`. A sender already in `forwarder` is returned as is.
    pub fn forward(
        &self,
        sender: &Mailbox,
        forwarder: &Domain,
        now: SystemTime,
    ) -> Result<Mailbox, SrsError> {
        let host = sender.domain().as_str().into_owned();
        if host.eq_ignore_ascii_case(&forwarder.as_str()) {
            return Ok(sender.clone());
        }
        let user = sender.local_part().as_str();
        let local = if let Some(rest) = strip_tag(user, "SRS1") {
            // SRS1<sep>hash=host=srs0-rest: keep host and rest, sign again.
            let (_, after_hash) = rest.split_once(SEP).ok_or(SrsError::Malformed("no host"))?;
            let (first, srs0) = after_hash
                .split_once(SEP)
                .ok_or(SrsError::Malformed("no SRS0 part"))?;
            if first.is_empty() || srs0.is_empty() {
                return Err(SrsError::Malformed("empty host or SRS0 part"));
            }
            let hash = self.hash(0, &[first, srs0]);
            format!("SRS1{SEP}{hash}{SEP}{first}{SEP}{srs0}")
        } else if strip_tag(user, "SRS0").is_some() {
            // The SRS0 part after the tag, separator included.
            let srs0 = &user[4..];
            let hash = self.hash(0, &[&host, srs0]);
            format!("SRS1{SEP}{hash}{SEP}{host}{SEP}{srs0}")
        } else {
            if host.contains(SEP) {
                return Err(SrsError::Unsupported(sender.to_string()));
            }
            let stamp = timestamp(now);
            let hash = self.hash(0, &[&stamp, &host, user]);
            format!("SRS0{SEP}{hash}{SEP}{stamp}{SEP}{host}{SEP}{user}")
        };
        let local = LocalPart::new(&local).map_err(|e| {
            if e.is_too_long() {
                SrsError::TooLong
            } else {
                SrsError::Unsupported(sender.to_string())
            }
        })?;
        Ok(Mailbox::new(local, forwarder.clone()))
    }

    /// The address a bounce to the SRS address `address` goes to, after checking its hash and
    /// (for SRS0) its age at `now`. The domain of `address` is not checked here.
    pub fn reverse(&self, address: &Mailbox, now: SystemTime) -> Result<Mailbox, SrsError> {
        self.decode(address.local_part().as_str(), now)
            .map(|(mailbox, _)| mailbox)
    }

    /// Like [`Srs::reverse`] for a local part, also telling which kind of address it was.
    pub fn decode(&self, local: &str, now: SystemTime) -> Result<(Mailbox, SrsKind), SrsError> {
        if let Some(rest) = strip_tag(local, "SRS1") {
            let (hash, after) = rest.split_once(SEP).ok_or(SrsError::Malformed("no host"))?;
            let (host, srs0) = after
                .split_once(SEP)
                .ok_or(SrsError::Malformed("no SRS0 part"))?;
            if hash.is_empty() || host.is_empty() || srs0.is_empty() {
                return Err(SrsError::Malformed("empty hash, host or SRS0 part"));
            }
            self.check_hash(hash, &[host, srs0])?;
            let original = mailbox(&format!("SRS0{srs0}"), host)?;
            return Ok((original, SrsKind::Srs1));
        }
        let rest = strip_tag(local, "SRS0").ok_or(SrsError::NotSrs)?;
        let mut fields = rest.splitn(4, SEP);
        let (Some(hash), Some(stamp), Some(host), Some(user)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(SrsError::Malformed("expected hash=timestamp=domain=user"));
        };
        if hash.is_empty() || host.is_empty() || user.is_empty() {
            return Err(SrsError::Malformed("empty hash, domain or user"));
        }
        let then = decode_timestamp(stamp)?;
        let age = age_days(then, now);
        if age > u64::from(self.max_age_days) {
            return Err(SrsError::Expired {
                age_days: age,
                max_age_days: self.max_age_days,
            });
        }
        self.check_hash(hash, &[stamp, host, user])?;
        Ok((mailbox(user, host)?, SrsKind::Srs0))
    }

    /// The hash of `data` (lower-cased) with secret `index`.
    fn hash(&self, index: usize, data: &[&str]) -> String {
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(&self.secrets[index])
            .expect("HMAC accepts keys of any length");
        for d in data {
            mac.update(d.to_ascii_lowercase().as_bytes());
        }
        let mut hash = STANDARD.encode(mac.finalize().into_bytes());
        hash.truncate(self.hash_len);
        hash
    }

    /// Whether `hash` is the hash of `data` with one of the secrets, ignoring ASCII case.
    fn check_hash(&self, hash: &str, data: &[&str]) -> Result<(), SrsError> {
        let ok = hash.len() == self.hash_len
            && (0..self.secrets.len()).any(|i| self.hash(i, data).eq_ignore_ascii_case(hash));
        if ok { Ok(()) } else { Err(SrsError::BadHash) }
    }
}

impl std::fmt::Debug for Srs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Srs")
            .field("secrets", &format_args!("<{} secrets>", self.secrets.len()))
            .field("max_age_days", &self.max_age_days)
            .field("hash_len", &self.hash_len)
            .finish()
    }
}

/// Whether `local` looks like an SRS address (`SRS0` or `SRS1` and a separator, any case).
/// Such local parts should be reversed, not looked up as users.
pub fn is_srs(local: &str) -> bool {
    strip_tag(local, "SRS0").is_some() || strip_tag(local, "SRS1").is_some()
}

/// What follows `tag` and its separator, if `local` starts with them (tag in any case).
fn strip_tag<'a>(local: &'a str, tag: &str) -> Option<&'a str> {
    let head = local.get(..4)?;
    let rest = &local[4..];
    let sep = rest.chars().next()?;
    (head.eq_ignore_ascii_case(tag) && TAG_SEPARATORS.contains(&sep)).then(|| &rest[1..])
}

/// The day of `now`, modulo 1024.
fn day(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / DAY)
        .unwrap_or(0)
        % SLOTS
}

/// The two-character timestamp of `now`.
fn timestamp(now: SystemTime) -> String {
    let d = day(now) as usize;
    [BASE32[d >> 5], BASE32[d & 31]]
        .iter()
        .map(|&b| char::from(b))
        .collect()
}

/// The day (modulo 1024) of a timestamp, read in any case.
fn decode_timestamp(stamp: &str) -> Result<u64, SrsError> {
    let bad = || SrsError::BadTimestamp(stamp.to_string());
    if stamp.len() != 2 {
        return Err(bad());
    }
    stamp.bytes().try_fold(0u64, |acc, b| {
        let i = BASE32
            .iter()
            .position(|&c| c == b.to_ascii_uppercase())
            .ok_or_else(bad)?;
        Ok((acc << 5) | i as u64)
    })
}

/// Days from `then` (a day modulo 1024) to `now`; a `then` "in the future" is taken as the
/// previous cycle, so it comes out very old.
fn age_days(then: u64, now: SystemTime) -> u64 {
    let today = day(now);
    if today >= then {
        today - then
    } else {
        today + SLOTS - then
    }
}

/// `user@host` as a mailbox.
fn mailbox(user: &str, host: &str) -> Result<Mailbox, SrsError> {
    let domain = Domain::parse(host).map_err(|e| SrsError::BadOriginal(format!("{host}: {e}")))?;
    let local = LocalPart::new(user).map_err(|e| SrsError::BadOriginal(format!("{user}: {e}")))?;
    Ok(Mailbox::new(local, domain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at_day(d: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(d * DAY + 3600)
    }

    #[test]
    fn timestamps() {
        // (day since the epoch, timestamp)
        let cases = [
            (0, "AA"),
            (1, "AB"),
            (31, "A7"),
            (32, "BA"),
            (1023, "77"),
            (1024, "AA"),
        ];
        for (d, want) in cases {
            assert_eq!(timestamp(at_day(d)), want, "day {d}");
            assert_eq!(decode_timestamp(want), Ok(d % SLOTS), "{want}");
        }
        assert_eq!(decode_timestamp("ba"), Ok(32));
        for bad in ["A", "AAA", "A1", "A=", "ÄA"] {
            assert!(decode_timestamp(bad).is_err(), "{bad:?}");
        }
        assert_eq!(age_days(5, at_day(1024 + 3)), 1022);
        assert_eq!(age_days(3, at_day(1024 + 5)), 2);
    }

    #[test]
    fn hash_is_libsrs2s() {
        // HMAC-SHA1("secret", "aa" "example.com" "user") is rzows0o+el+cBdNHDTUHB2Y/dDM= in
        // standard base64, computed independently (Python's hmac and base64 modules). The data
        // is lower-cased before hashing.
        let srs = Srs::new(b"secret");
        assert_eq!(srs.hash(0, &["AA", "Example.com", "user"]), "rzow");
        let long = Srs::new(b"secret").with_hash_len(100);
        assert_eq!(
            long.hash(0, &["aa", "example.com", "user"]),
            "rzows0o+el+cBdNHDTUHB2Y/dDM"
        );
    }
}
