//! DKIM, ARC and DMARC at the end of data, with the body hashed as it streams past.
//!
//! mail-auth verifies a parsed message (`AuthenticatedMessage`) whose body hashes it computes
//! when parsing, one per (canonicalization, algorithm, `l=`) of its signatures, kept in a
//! public field. [`Verifier`] keeps only the header section (at most [`MAX_HEADER`] octets),
//! parses it once the empty line has passed to learn which body hashes are needed, and
//! computes them with [`proto_core::dkim::BodyHasher`] as the body chunks arrive. At the end
//! the header section is parsed again (with an empty body), the hashes computed here are put
//! in place of mail-auth's, and mail-auth checks the signatures (DKIM, then the ARC chain)
//! and evaluates DMARC with them: the body is never in memory as a whole.
//!
//! A header section longer than [`MAX_HEADER`] cannot be authenticated (a From field could
//! hide past the limit), and the message is refused.

use crate::mailauth::authdns::{AuthDns, TxtKind};
use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::HashAlgorithm as MaHash;
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::Canonicalization as MaCanon;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, ReceivedSpf,
};
use proto_core::Reply;
use proto_core::dkim::{BodyHasher, Canonicalization, HashAlgorithm, HeaderSection};

use super::dns::{self, Fetched};
use super::{Disposition, Inbound, OnFail, OnTempError, SpfResults, spf_word};

/// The longest header section kept for verifying.
pub const MAX_HEADER: usize = crate::mailauth::dkim::MAX_HEADER_BLOCK;

/// One body hash mail-auth asks for: body canonicalization, hash algorithm, `l=` (0: all).
type HashKey = (MaCanon, MaHash, u64);

/// The header section and the body hashes of a message.
type Collected = (Vec<u8>, Vec<(HashKey, Vec<u8>)>);

/// Collects what the checks need from a message as it streams: see the module doc.
///
/// Call order: [`Verifier::update`] with each chunk of the message, then
/// [`Inbound::check_message`] with the verifier.
#[derive(Debug)]
pub struct Verifier {
    state: State,
}

#[derive(Debug)]
enum State {
    /// Collecting the header section.
    Header(HeaderSection),
    /// The header section (its final CRLF included) is complete; the body streams.
    Body {
        header: Vec<u8>,
        hashers: Vec<(HashKey, BodyHasher)>,
    },
    /// The header section was longer than [`MAX_HEADER`].
    TooLong,
}

/// What the checks of a message found.
#[derive(Debug)]
pub struct Report {
    /// The fields to add (`Received-SPF`, `Authentication-Results`), each ending in CRLF.
    pub headers: String,
    /// Whether to take the message.
    pub decision: Disposition,
    /// The results in one line, for the log.
    pub summary: String,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            state: State::Header(HeaderSection::new(MAX_HEADER)),
        }
    }
}

impl Verifier {
    /// Feeds the next chunk of the message (as received: CRLF line ends, no dot-stuffing).
    pub fn update(&mut self, chunk: &[u8]) {
        match &mut self.state {
            State::Header(section) => {
                if let Some(body) = section.feed(chunk) {
                    let header = section.take();
                    let mut hashers = hashers_for(&header);
                    for (_, hasher) in &mut hashers {
                        hasher.update(body);
                    }
                    self.state = State::Body { header, hashers };
                } else if section.is_too_long() {
                    self.state = State::TooLong;
                }
            }
            State::Body { hashers, .. } => {
                for (_, hasher) in hashers {
                    hasher.update(chunk);
                }
            }
            State::TooLong => {}
        }
    }

    /// The header section (final CRLF included) and the body hashes, or `None` when it was
    /// too long.
    fn finish(self) -> Option<Collected> {
        let (header, hashers) = match self.state {
            State::Body { header, hashers } => (header, hashers),
            // All header, no body.
            State::Header(mut section) => {
                let header = section.take();
                let hashers = hashers_for(&header);
                (header, hashers)
            }
            State::TooLong => return None,
        };
        let hashes = hashers
            .into_iter()
            .map(|(key, hasher)| (key, hasher.finish().digest().to_vec()))
            .collect();
        Some((header, hashes))
    }
}

/// The header section followed by the empty line: what mail-auth parses.
fn with_empty_line(header: &[u8]) -> Vec<u8> {
    let mut message = header.to_vec();
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(b"\r\n");
    message
}

/// A hasher for each body hash the signatures of `header` need.
fn hashers_for(header: &[u8]) -> Vec<(HashKey, BodyHasher)> {
    let message = with_empty_line(header);
    // The whole body, relaxed, SHA-256: what an ARC-Message-Signature of ours covers.
    let seal = (
        (MaCanon::Relaxed, MaHash::Sha256, 0),
        BodyHasher::new(Canonicalization::Relaxed, HashAlgorithm::Sha256),
    );
    let Some(parsed) = AuthenticatedMessage::parse(&message) else {
        return vec![seal];
    };
    let mut hashers: Vec<(HashKey, BodyHasher)> = parsed
        .body_hashes
        .iter()
        .map(|(c, h, l, _)| {
            let canonicalization = match c {
                MaCanon::Relaxed => Canonicalization::Relaxed,
                MaCanon::Simple => Canonicalization::Simple,
            };
            let algorithm = match h {
                MaHash::Sha256 => HashAlgorithm::Sha256,
                MaHash::Sha1 => HashAlgorithm::Sha1,
            };
            let limit = (*l > 0).then_some(*l);
            (
                (*c, *h, *l),
                BodyHasher::with_limit(canonicalization, algorithm, limit),
            )
        })
        .collect();
    if !hashers.iter().any(|(key, _)| *key == seal.0) {
        hashers.push(seal);
    }
    hashers
}

impl Inbound {
    /// DKIM, ARC and DMARC for the message `verifier` saw, with the SPF results of its
    /// transaction: the fields to add, and whether to take it.
    ///
    /// With `seal` (the keys of the domain that forwards the message), the results are also
    /// sealed into a new ARC set (RFC 8617: ARC-Seal, ARC-Message-Signature,
    /// ARC-Authentication-Results), put on top of the fields to add, so that the next hop
    /// can trust these checks even though forwarding breaks SPF.
    pub async fn check_message(
        &self,
        verifier: Verifier,
        spf: &SpfResults,
        seal: Option<&crate::mailauth::dkim::DkimKeys>,
    ) -> Report {
        let Some((header, hashes)) = verifier.finish() else {
            return Report {
                headers: String::new(),
                decision: Disposition::Refuse(Reply::of(
                    proto_core::ReplyCode::EXCEEDED_STORAGE,
                    (5, 6, 0),
                    "Header section too long to authenticate",
                )),
                summary: "header too long".into(),
            };
        };
        let fetched = Fetched::default();
        let message = with_empty_line(&header);
        let received_spf = ReceivedSpf::new(
            &spf.mail_from,
            spf.ip,
            &spf.helo,
            &spf.sender,
            &self.hostname,
        )
        .to_header();
        let spf_part = format!(
            "spf={} helo-spf={}",
            spf_word(spf.mail_from.result()),
            spf_word(spf.helo_result.result())
        );
        let results = AuthenticationResults::new(&self.hostname)
            .with_spf_mailfrom_result(&spf.mail_from, spf.ip, &spf.sender, &spf.helo)
            .with_spf_ehlo_result(&spf.helo_result, spf.ip, &spf.helo);
        let Some(mut parsed) = AuthenticatedMessage::parse(&message) else {
            // No header section at all: nothing to verify, no From to apply DMARC to.
            let results = results.to_header();
            return Report {
                headers: format!("{received_spf}{}", add_none(&results, "dkim=none")),
                decision: Disposition::Accept,
                summary: format!("{spf_part} dkim=none arc=none dmarc=none"),
            };
        };
        for (c, h, l, bh) in &mut parsed.body_hashes {
            if let Some((_, digest)) = hashes.iter().find(|(key, _)| *key == (*c, *h, *l)) {
                bh.clone_from(digest);
            }
        }
        // The sealer takes the body hash of its signature from here, when it finds one.
        let whole = (MaCanon::Relaxed, MaHash::Sha256, 0);
        if !parsed
            .body_hashes
            .iter()
            .any(|(c, h, l, _)| (*c, *h, *l) == whole)
            && let Some((_, digest)) = hashes.iter().find(|(key, _)| *key == whole)
        {
            parsed
                .body_hashes
                .push((whole.0, whole.1, whole.2, digest.clone()));
        }
        let parsed = parsed;
        let keys = AuthDns::new(&fetched, TxtKind::DomainKey);
        let dkim = dns::run(&self.resolver, &fetched, &keys, |dns| {
            self.authenticator.verify_dkim(dns.parameters(&parsed))
        })
        .await;
        let arc = dns::run(&self.resolver, &fetched, &keys, |dns| {
            self.authenticator.verify_arc(dns.parameters(&parsed))
        })
        .await;
        let policies = AuthDns::new(&fetched, TxtKind::Dmarc);
        let mail_from_domain = spf.mail_from.domain().to_string();
        let dmarc = dns::run(&self.resolver, &fetched, &policies, |dns| {
            self.authenticator
                .verify_dmarc(dns.parameters(DmarcParameters::new(
                    &parsed,
                    &dkim,
                    &mail_from_domain,
                    &spf.mail_from,
                )))
        })
        .await;

        let results = results
            .with_dkim_results(&dkim, parsed.from())
            .with_arc_result(&arc, spf.ip)
            .with_dmarc_result(&dmarc);
        let arc_set = match seal {
            Some(keys) => seal_set(keys, &parsed, &results, &arc),
            None => String::new(),
        };
        let results = results.to_header();
        let results = if dkim.is_empty() {
            add_none(&results, "dkim=none")
        } else {
            results
        };
        let dkim_summary: Vec<String> = dkim
            .iter()
            .map(|o| {
                let d = o.signature().map_or("-", |s| s.d.as_str());
                format!("{}:{d}", dkim_word(o.result()))
            })
            .collect();
        let dmarc_result = dmarc.result();
        let summary = format!(
            "{spf_part} dkim={} arc={} dmarc={} policy={} from_domain={}",
            if dkim_summary.is_empty() {
                "none".to_string()
            } else {
                dkim_summary.join(",")
            },
            dkim_word(arc.result()),
            dmarc_word(&dmarc_result),
            policy_word(dmarc.policy()),
            if dmarc.domain().is_empty() {
                "-"
            } else {
                dmarc.domain()
            },
        );
        let decision = self.dmarc_decision(&dmarc_result, dmarc.policy(), dmarc.domain());
        Report {
            headers: format!("{arc_set}{received_spf}{results}"),
            decision,
            summary,
        }
    }

    /// What `[checks]` says about a DMARC result.
    fn dmarc_decision(&self, result: &DmarcResult, policy: Policy, domain: &str) -> Disposition {
        let s = &self.settings;
        match result {
            // RFC 7489 6.6.3/7.3 (and 10.3): a receiver rejecting for p=reject "SHOULD" use
            // 550 5.7.1.
            DmarcResult::Fail(_)
                if (policy == Policy::Reject && s.dmarc_reject == OnFail::Reject)
                    || (policy == Policy::Quarantine && s.dmarc_quarantine == OnFail::Reject) =>
            {
                Disposition::Refuse(Reply::of(
                    proto_core::ReplyCode::MAILBOX_UNAVAILABLE,
                    (5, 7, 1),
                    format!("Message rejected per the DMARC policy of {domain}"),
                ))
            }
            // RFC 7489 6.6.2: temporary failures to get a record "MAY" defer the message.
            DmarcResult::TempError(_) if s.temperror == OnTempError::Defer => {
                Disposition::Refuse(Reply::of(
                    proto_core::ReplyCode::LOCAL_ERROR,
                    (4, 4, 3),
                    "DMARC: temporary DNS failure, try again later",
                ))
            }
            _ => Disposition::Accept,
        }
    }
}

/// The header fields an ARC-Message-Signature of ours covers (those present are signed).
const SEALED_FIELDS: [&str; 13] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "DKIM-Signature",
];

/// The key that seals a domain's ARC sets: its first RSA key by selector. RFC 8617 allows
/// only rsa-sha256 for ARC, and verifiers refuse an Ed25519 seal (dkimpy: "unknown signature
/// algorithm"), so an Ed25519 key never seals.
pub(crate) fn arc_key(
    keys: &crate::mailauth::dkim::DkimKeys,
) -> Option<&crate::mailauth::dkim::DkimKey> {
    keys.keys().iter().find(|k| k.algorithm() == "rsa-sha256")
}

/// A new ARC set over `parsed` with `results`, signed with [`arc_key`]; empty when the
/// domain has no RSA key (logged), the chain cannot be continued (a failed chain is not sealed
/// again, RFC 8617 5.1.2) or signing fails (the message still goes, unsealed; logged).
fn seal_set(
    keys: &crate::mailauth::dkim::DkimKeys,
    parsed: &AuthenticatedMessage<'_>,
    results: &AuthenticationResults<'_>,
    arc: &ArcOutput<'_>,
) -> String {
    if keys.is_empty() || !arc.can_be_sealed() {
        return String::new();
    }
    let Some(key) = arc_key(keys) else {
        crate::log::line(crate::log::Event::Arc)
            .field("domain", keys.domain())
            .text(
                "problem",
                format_args!(
                    "not sealed: ARC signs with RSA only and {0} has no RSA key; \
                     make one with postern dkim keygen {0} --algo rsa2048",
                    keys.domain()
                ),
            )
            .write();
        return String::new();
    };
    let sealer = ArcSealer::from_key(crate::mailauth::dkim::SealingKey(key))
        .domain(keys.domain())
        .selector(key.selector())
        .headers(SEALED_FIELDS);
    match sealer.seal(parsed, results, arc) {
        Ok(set) => set.to_header(),
        Err(e) => {
            crate::log::line(crate::log::Event::Arc)
                .field("domain", keys.domain())
                .text("problem", format_args!("sealing: {e}"))
                .write();
            String::new()
        }
    }
}

/// `field` (an `Authentication-Results` field) with `;\r\n\t<method>` after its authserv-id.
fn add_none(field: &str, method: &str) -> String {
    match field.split_once(';') {
        Some((head, rest)) => format!("{head};\r\n\t{method};{rest}"),
        // Only the authserv-id and "; none" were there.
        None => field.to_string(),
    }
}

fn dkim_word(result: &DkimResult) -> &'static str {
    match result {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn dmarc_word(result: &DmarcResult) -> &'static str {
    match result {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

fn policy_word(policy: Policy) -> &'static str {
    match policy {
        Policy::Reject => "reject",
        Policy::Quarantine => "quarantine",
        Policy::None | Policy::Unspecified => "none",
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;
    use crate::dns::test_server::TestServer;
    use crate::dns::{Resolver, ResolverConfig};
    use crate::mailauth::dkim::{DkimKey, DkimKeys};
    use crate::mailauth::{CheckSettings, Inbound};

    const MESSAGE: &[u8] = b"From: Alice <alice@example.org>\r\n\
        To: bob@example.net\r\n\
        Subject: streamed\r\n\
        \r\n\
        Hello,   world.\r\n\
        \r\n\
        A second  paragraph, long enough to cross chunks.\r\n\r\n\r\n";

    /// ARC seals with the first RSA key by selector, even when an Ed25519 key sorts first;
    /// a domain with Ed25519 keys only has no sealing key.
    #[test]
    fn arc_seals_with_an_rsa_key_never_ed25519() {
        use crate::mailauth::dkim::{KeyAlgorithm, generate};
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("domains/example.org")).expect("domain");
        generate(tmp.path(), "example.org", "aaa-ed", KeyAlgorithm::Ed25519).expect("ed");
        generate(tmp.path(), "example.org", "zzz-rsa", KeyAlgorithm::Rsa2048).expect("rsa");
        let keys = DkimKeys::load(tmp.path(), "example.org").expect("load");
        assert_eq!(keys.keys()[0].selector(), "aaa-ed", "Ed25519 sorts first");
        assert_eq!(arc_key(&keys).map(DkimKey::selector), Some("zzz-rsa"));
        let ed_only = DkimKeys::new(
            "example.org",
            vec![DkimKey::ed25519_from_seed("s1", &[7; 32]).expect("key")],
        );
        assert!(arc_key(&ed_only).is_none());
    }

    /// A checker whose resolver asks a test server publishing `zone` (SOA added).
    fn inbound(dir: &std::path::Path, zone: &str) -> (Inbound, TestServer) {
        let path = dir.join("zone");
        let zone = format!(
            "example.org. 3600 SOA ns.example.org. h.example.org. 1 7200 900 1209600 60\n{zone}"
        );
        std::fs::write(&path, zone).expect("zone");
        let server = TestServer::start(Ipv4Addr::LOCALHOST.into(), &path).expect("dns");
        let resolver = Arc::new(Resolver::new(ResolverConfig::new(vec![server.addr])));
        let inbound = Inbound::new(
            dir.to_path_buf(),
            CheckSettings::default(),
            "mx.example.net".into(),
            resolver,
        );
        (inbound, server)
    }

    /// SPF results as MAIL would have left them (none for example.org here).
    fn spf(inbound: &Inbound) -> SpfResults {
        smol::block_on(inbound.spf(
            "127.0.0.1".parse().expect("ip"),
            "client.example.org",
            "alice@example.org",
        ))
        .0
    }

    fn check(inbound: &Inbound, message: &[u8], step: usize) -> Report {
        let mut verifier = Verifier::default();
        for chunk in message.chunks(step) {
            verifier.update(chunk);
        }
        smol::block_on(inbound.check_message(verifier, &spf(inbound), None))
    }

    /// Verifying streams: any chunking of a signed message gives dkim=pass (and aligned
    /// DMARC); a changed body fails on the body hash, whatever the chunking.
    #[test]
    fn streamed_verification_is_chunk_invariant() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = DkimKey::ed25519_from_seed("s1", &[7; 32]).expect("key");
        let record = key.dns_record("example.org");
        let keys = DkimKeys::new("example.org", vec![key]);
        let fields = keys.sign(MESSAGE, SystemTime::now()).expect("sign");
        let signed = [fields.concat().as_bytes(), MESSAGE].concat();
        let (inbound, _server) = inbound(
            dir.path(),
            &format!(
                "{}\n_dmarc.example.org. 60 TXT \"v=DMARC1; p=reject\"\n",
                record.zone_line().replacen(". IN TXT", ". 60 TXT", 1)
            ),
        );
        for step in [1, 2, 3, 7, 64, 100_000] {
            let report = check(&inbound, &signed, step);
            assert!(
                report.summary.contains("dkim=pass:example.org"),
                "chunks of {step}: {}",
                report.summary
            );
            assert!(report.summary.contains("dmarc=pass"), "{}", report.summary);
            assert_eq!(report.decision, Disposition::Accept);
            assert!(
                report
                    .headers
                    .contains("\r\n\tdkim=pass header.d=example.org header.s=s1"),
                "{}",
                report.headers
            );
        }
        let changed = String::from_utf8_lossy(&signed).replace("second", "third");
        for step in [1, 5, 100_000] {
            let report = check(&inbound, changed.as_bytes(), step);
            assert!(
                report.summary.contains("dkim=neutral:example.org"),
                "chunks of {step}: {}",
                report.summary
            );
            assert!(report.summary.contains("dmarc=fail"), "{}", report.summary);
            assert!(
                matches!(&report.decision, Disposition::Refuse(r) if r.to_string().starts_with("550 5.7.1")),
                "{:?}",
                report.decision
            );
        }
    }

    /// ARC: mail-auth's sealed vectors (conformance/suites/arc/mail-auth: key records,
    /// an empty line, the message) validate as pass with the body streamed in any chunks.
    #[test]
    fn arc_chains_validate_streamed() {
        let vectors = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../conformance/suites/arc/mail-auth"
        );
        for name in ["001.txt", "002.txt"] {
            let path = std::path::Path::new(vectors).join(name);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let (records, message) = text.split_once("\n\n").expect("records, then message");
            let mut zone = String::new();
            for line in records.lines() {
                let (name, value) = line.split_once(' ').expect("name value");
                let strings: Vec<String> = value
                    .as_bytes()
                    .chunks(255)
                    .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
                    .collect();
                zone.push_str(&format!("{name}. 60 TXT {}\n", strings.join(" ")));
            }
            let message = message.replace('\n', "\r\n");
            let dir = tempfile::tempdir().expect("tempdir");
            let (inbound, _server) = inbound(dir.path(), &zone);
            for step in [1, 13, 100_000] {
                let report = check(&inbound, message.as_bytes(), step);
                assert!(
                    report.summary.contains(" arc=pass "),
                    "{name} in chunks of {step}: {}",
                    report.summary
                );
                assert!(
                    report
                        .headers
                        .contains("\r\n\tarc=pass smtp.remote-ip=127.0.0.1"),
                    "{}",
                    report.headers
                );
            }
            // A line added to the body breaks the last AMS's body hash.
            let report = check(&inbound, format!("{message}added\r\n").as_bytes(), 7);
            assert!(
                report.summary.contains(" arc=neutral "),
                "{name}: {}",
                report.summary
            );
        }
    }

    /// SPF needs names it only learns from the records (include, then mx, then the
    /// exchange's address): each run fetches what the last one missed.
    #[test]
    fn spf_fetches_what_each_round_discovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (inbound, server) = inbound(
            dir.path(),
            "example.org. 60 TXT \"v=spf1 include:a.example.org -all\"\n\
             a.example.org. 60 TXT \"v=spf1 mx:b.example.org -all\"\n\
             b.example.org. 60 MX 10 mx.b.example.org.\n\
             mx.b.example.org. 60 A 127.0.0.1\n\
             client.example.org. 60 TXT \"v=spf1 -all\"\n",
        );
        for (ip, sender, want, helo_want) in [
            ("127.0.0.1", "alice@example.org", "pass", "fail"),
            ("127.0.0.2", "alice@example.org", "fail", "fail"),
            ("127.0.0.1", "", "fail", "fail"),
        ] {
            let (results, decision) =
                smol::block_on(inbound.spf(ip.parse().expect("ip"), "client.example.org", sender));
            assert_eq!(
                spf_word(results.mail_from.result()),
                want,
                "{ip} {sender:?}"
            );
            assert_eq!(spf_word(results.helo_result.result()), helo_want, "{ip}");
            let refused = matches!(&decision, Disposition::Refuse(r) if r.to_string().starts_with("550 5.7.23"));
            assert_eq!(refused, want == "fail", "{ip} {sender:?}: {decision:?}");
        }
        assert!(server.queries() >= 5, "{}", server.queries());
    }

    /// A header section over the limit cannot be authenticated.
    #[test]
    fn an_overlong_header_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (inbound, _server) = inbound(dir.path(), "");
        let mut verifier = Verifier::default();
        verifier.update(b"From: a@example.org\r\nX-Long: ");
        for _ in 0..=(MAX_HEADER / 4096) {
            verifier.update(&[b'x'; 4096]);
        }
        verifier.update(b"\r\n\r\nbody\r\n");
        let report = smol::block_on(inbound.check_message(verifier, &spf(&inbound), None));
        assert!(
            matches!(&report.decision, Disposition::Refuse(r) if r.to_string().starts_with("552 5.6.0")),
            "{:?}",
            report.decision
        );
    }
}
