//! The DKIM suites: `dkim-rfc8463`, `dkim-mail-auth` and `dkim-chasquid` (`dkim/`, see its
//! INDEX.md), verified by mail-auth with keys served from an [`authdns::Zone`].
//!
//! - `dkim-rfc8463` (`rfc/rfc8463/`): both signatures of `signed-relaxed.eml` (RFC 8463
//!   A.3: Ed25519 and RSA) and of `signed-simple-dkimpy.eml` must pass. Then `unsigned.eml`
//!   is signed by mail-auth's `DkimSigner` with each key and the tags of A.3 (`d=`, `s=`,
//!   `i=`, `h=`, relaxed/relaxed): the `bh=` must equal A.3's byte for byte and the new
//!   signature must verify. The `b=` of A.3 cannot be reproduced through `DkimSigner`: it
//!   always stamps `t=` with the current time (0.13.3 has no way to give it one) and writes
//!   its own tag set and order (no `q=`), and `b=` covers both. One more case signs the data
//!   A.3's Ed25519 signature covers, assembled from mail-auth's public parts (header
//!   selection, relaxed canonicalization, `Ed25519Key`), and must get A.3's `b=` byte for
//!   byte: this checks mail-auth's signing primitive and canonicalization, not its signer.
//! - `dkim-mail-auth` (`mail-auth/NNN.txt`: key lines, a blank line, the message with LF
//!   ends): the last signature must pass, as in mail-auth's own test.
//! - `dkim-chasquid` (`chasquid/NN-name.{msg,dns,result,error}`): every signature's state
//!   must be the one in `.result`, in order, identified by its selector. chasquid's states
//!   map onto mail-auth's results as RFC 6376 names them: SUCCESS is pass, TEMPFAIL is
//!   temperror, PERMFAIL is fail, permerror or neutral (mail-auth reports a signature it
//!   cannot parse as neutral, RFC 8601 2.7.1). A vector with an `.error` other than `<nil>`
//!   and no `.result` expects the message itself to be refused.
//!
//! mail-auth's `verify_dkim` reads the system clock (no clock parameter in 0.13.3), so a
//! signature with an `x=` in the past verifies as expired; see DEVIATIONS.md.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_lite::future::block_on;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use mail_auth::{AuthenticatedMessage, DkimOutput, DkimResult, MessageAuthenticator};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};

use crate::auth::{Case, SuiteRun, crlf};
use crate::authdns::{self, AuthDns, TxtKind, Zone, ZoneRecord};
use crate::{LoadError, Options, files_with_extension, read};

/// Loads and runs the three DKIM suites.
pub(crate) fn run(
    dir: &Path,
    options: &Options,
) -> Result<Vec<(&'static str, SuiteRun)>, LoadError> {
    let authenticator = authdns::offline_authenticator();
    Ok(vec![
        (
            "dkim-rfc8463",
            rfc8463(&dir.join("rfc").join("rfc8463"), &authenticator, options)?,
        ),
        (
            "dkim-mail-auth",
            mail_auth_vectors(&dir.join("mail-auth"), &authenticator, options)?,
        ),
        (
            "dkim-chasquid",
            chasquid(&dir.join("chasquid"), &authenticator, options)?,
        ),
    ])
}

/// The suite's word for a result, with mail-auth's reason when there is one.
pub(crate) fn result_text(result: &DkimResult) -> String {
    match result {
        DkimResult::Pass => "pass".into(),
        DkimResult::None => "none".into(),
        DkimResult::Neutral(e) => format!("neutral ({e})"),
        DkimResult::Fail(e) => format!("fail ({e})"),
        DkimResult::PermError(e) => format!("permerror ({e})"),
        DkimResult::TempError(e) => format!("temperror ({e})"),
    }
}

/// One signature's result, owned.
struct Verified {
    result: DkimResult,
    /// The selector of the signature (none when mail-auth could not parse it).
    selector: String,
}

/// Verifies `message` with keys from `zone`: the results, and the DNS questions asked.
fn verify(
    authenticator: &MessageAuthenticator,
    zone: &Zone,
    message: &AuthenticatedMessage<'_>,
) -> (Vec<Verified>, Vec<String>) {
    let dns = AuthDns::new(zone, TxtKind::DomainKey);
    let outputs: Vec<DkimOutput<'_>> = block_on(authenticator.verify_dkim(dns.parameters(message)));
    let verified = outputs
        .iter()
        .map(|o| Verified {
            result: o.result().clone(),
            selector: o.signature().map_or(String::new(), |s| s.s.clone()),
        })
        .collect();
    (verified, dns.queries())
}

/// Key lines `name record` (mail-auth's vectors and RFC 8463's `dns.txt`).
fn zone_from_lines(text: &str) -> Zone {
    let mut zone = Zone::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some((name, record)) = line.split_once(' ') {
            zone.add(name, ZoneRecord::Txt(record.as_bytes().to_vec()));
        }
    }
    zone
}

fn rfc8463(
    dir: &Path,
    authenticator: &MessageAuthenticator,
    options: &Options,
) -> Result<SuiteRun, LoadError> {
    const SUITE: &str = "dkim-rfc8463";
    let zone = zone_from_lines(&read(&dir.join("dns.txt"))?);
    let mut run = SuiteRun::default();
    for file in ["signed-relaxed.eml", "signed-simple-dkimpy.eml"] {
        let name = format!("verify/{file}");
        if !run.select(options, SUITE, &name) {
            continue;
        }
        let raw = crlf(read(&dir.join(file))?.as_bytes());
        let (actual, detail) = match AuthenticatedMessage::parse(&raw) {
            None => ("unparsable message".to_string(), String::new()),
            Some(message) => {
                let (outputs, queries) = verify(authenticator, &zone, &message);
                let words: Vec<String> = outputs.iter().map(|o| result_text(&o.result)).collect();
                (
                    words.join(","),
                    format!("DNS questions: {}", queries.join(", ")),
                )
            }
        };
        run.cases
            .push(Case::one_of(name, "pass,pass".into(), actual, detail));
    }

    // Signing: the tags of RFC 8463 A.3, mail-auth's signer, the A.3 body hash.
    let unsigned = crlf(read(&dir.join("unsigned.eml"))?.as_bytes());
    let signed = crlf(read(&dir.join("signed-relaxed.eml"))?.as_bytes());
    let reference = AuthenticatedMessage::parse(&signed).ok_or_else(|| LoadError::Suite {
        path: dir.join("signed-relaxed.eml"),
        message: "mail-auth cannot parse it".into(),
    })?;
    let reference_bh: HashMap<String, Vec<u8>> = reference
        .dkim_headers
        .iter()
        .map(|h| (h.header.s.clone(), h.header.bh.clone()))
        .collect();
    let bad_key = |file: &str, message: String| LoadError::Suite {
        path: dir.join(file),
        message,
    };
    let seed = BASE64
        .decode(read(&dir.join("ed25519-private-seed.b64"))?.trim())
        .map_err(|e| bad_key("ed25519-private-seed.b64", e.to_string()))?;
    let public = zone_public_key(&read(&dir.join("dns.txt"))?, "brisbane.")
        .ok_or_else(|| bad_key("dns.txt", "no p= for brisbane".into()))?;
    let ed25519_key = || {
        Ed25519Key::from_seed_and_public_key(&seed, &public)
            .map_err(|e| bad_key("ed25519-private-seed.b64", e.to_string()))
    };
    let ed25519 = ed25519_key()?;
    let rsa = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(
        pem_body(&read(&dir.join("rsa-private.pem"))?)
            .map_err(|e| bad_key("rsa-private.pem", e))?,
    )))
    .map_err(|e| bad_key("rsa-private.pem", e.to_string()))?;

    if run.select(options, SUITE, "sign/ed25519-b-over-a3-data") {
        run.cases
            .push(ed25519_over_a3_data(&reference, &ed25519_key()?));
    }
    if run.select(options, SUITE, "sign/ed25519-sha256") {
        let case = sign_case(
            authenticator,
            &zone,
            "sign/ed25519-sha256",
            ed25519,
            "brisbane",
            &unsigned,
            reference_bh.get("brisbane"),
        );
        run.cases.push(case);
    }
    if run.select(options, SUITE, "sign/rsa-sha256") {
        let case = sign_case(
            authenticator,
            &zone,
            "sign/rsa-sha256",
            rsa,
            "test",
            &unsigned,
            reference_bh.get("test"),
        );
        run.cases.push(case);
    }
    Ok(run)
}

/// mail-auth's signer cannot stamp `t=1528637909` nor write A.3's tag list, so this case
/// builds the data A.3's Ed25519 signature covers from mail-auth's public parts instead: the
/// header fields its verifier selects for `h=` (`signed_headers`), A.3's own DKIM-Signature
/// with an empty `b=`, relaxed header canonicalization, and signs it with mail-auth's
/// `Ed25519Key`. Ed25519 is deterministic, so the result must be A.3's `b=` byte for byte.
fn ed25519_over_a3_data(reference: &AuthenticatedMessage<'_>, key: &Ed25519Key) -> Case {
    let name = "sign/ed25519-b-over-a3-data".to_string();
    let expected = "b=A.3".to_string();
    let Some(header) = reference
        .dkim_headers
        .iter()
        .find(|h| h.header.s == "brisbane")
    else {
        return Case::one_of(
            name,
            expected,
            "no brisbane signature".into(),
            String::new(),
        );
    };
    let stripped = without_b_value(header.value);
    let mut data = Vec::new();
    header.header.ch.canonicalize_headers(
        reference.signed_headers(&header.header.h, header.name, &stripped),
        &mut data,
    );
    let actual = match key.sign(&data[..]) {
        Ok(b) if b == header.header.b => "b=A.3".to_string(),
        Ok(b) => format!("b={}", BASE64.encode(b)),
        Err(e) => format!("signing failed ({e})"),
    };
    Case::one_of(
        name,
        expected,
        actual,
        format!(
            "signed data ({} bytes):\n{}",
            data.len(),
            String::from_utf8_lossy(&data)
        ),
    )
}

/// A DKIM-Signature value with the `b=` tag's value removed (RFC 6376 3.7), and no final
/// line break.
fn without_b_value(value: &[u8]) -> Vec<u8> {
    let value = value.strip_suffix(b"\r\n").unwrap_or(value);
    let mut out = Vec::with_capacity(value.len());
    let mut rest = value;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&c| c == b';')
            .map_or(rest.len(), |p| p + 1);
        let (tag, tail) = rest.split_at(end);
        let is_b = tag.iter().position(|&c| c == b'=').is_some_and(|eq| {
            tag[..eq]
                .iter()
                .filter(|c| !c.is_ascii_whitespace())
                .eq(b"b")
        });
        match tag.iter().position(|&c| c == b'=') {
            Some(eq) if is_b => {
                out.extend_from_slice(&tag[..=eq]);
                if tag.ends_with(b";") {
                    out.push(b';');
                }
            }
            _ => out.extend_from_slice(tag),
        }
        rest = tail;
    }
    out
}

/// Signs `unsigned` as RFC 8463 A.3 does and checks the body hash and the signature.
fn sign_case<K: SigningKey>(
    authenticator: &MessageAuthenticator,
    zone: &Zone,
    name: &str,
    key: K,
    selector: &str,
    unsigned: &[u8],
    reference_bh: Option<&Vec<u8>>,
) -> Case {
    let signer = DkimSigner::from_key(key)
        .domain("football.example.com")
        .selector(selector)
        .headers([
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "From",
            "Subject",
            "Date",
        ])
        .agent_user_identifier("@football.example.com")
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed);
    let expected = "bh=A.3,pass".to_string();
    let signature = match signer.sign(unsigned) {
        Ok(s) => s,
        Err(e) => {
            return Case::one_of(
                name.into(),
                expected,
                format!("signing failed ({e})"),
                String::new(),
            );
        }
    };
    let header = signature.to_header();
    let bh = if Some(&signature.bh) == reference_bh {
        "bh=A.3".to_string()
    } else {
        format!("bh={}", BASE64.encode(&signature.bh))
    };
    let mut signed = header.clone().into_bytes();
    signed.extend_from_slice(unsigned);
    let result = match AuthenticatedMessage::parse(&signed) {
        None => "unparsable signed message".to_string(),
        Some(message) => {
            let (outputs, _) = verify(authenticator, zone, &message);
            outputs
                .first()
                .map_or("no signature found".into(), |o| result_text(&o.result))
        }
    };
    Case::one_of(
        name.into(),
        expected,
        format!("{bh},{result}"),
        format!("mail-auth's header:\n{}", header.trim_end()),
    )
}

/// The `p=` of the key line whose name starts with `selector`.
fn zone_public_key(lines: &str, selector: &str) -> Option<Vec<u8>> {
    let line = lines.lines().find(|l| l.starts_with(selector))?;
    let p = line.split(';').find_map(|t| t.trim().strip_prefix("p="))?;
    BASE64.decode(p.trim()).ok()
}

/// The DER inside a PEM block.
fn pem_body(pem: &str) -> Result<Vec<u8>, String> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    BASE64.decode(body).map_err(|e| e.to_string())
}

fn mail_auth_vectors(
    dir: &Path,
    authenticator: &MessageAuthenticator,
    options: &Options,
) -> Result<SuiteRun, LoadError> {
    const SUITE: &str = "dkim-mail-auth";
    let mut run = SuiteRun::default();
    for path in files_with_extension(dir, "txt")? {
        let name = file_stem(&path);
        if !run.select(options, SUITE, &name) {
            continue;
        }
        let text = read(&path)?;
        let (keys, message) = text.split_once("\n\n").ok_or_else(|| LoadError::Suite {
            path: path.clone(),
            message: "no blank line after the keys".into(),
        })?;
        let zone = zone_from_lines(keys);
        let raw = crlf(message.as_bytes());
        let (actual, detail) = match AuthenticatedMessage::parse(&raw) {
            None => ("unparsable message".to_string(), String::new()),
            Some(message) => {
                let (outputs, queries) = verify(authenticator, &zone, &message);
                let all: Vec<String> = outputs.iter().map(|o| result_text(&o.result)).collect();
                (
                    outputs
                        .last()
                        .map_or("no signature".into(), |o| result_text(&o.result)),
                    format!(
                        "all signatures: {}\nDNS questions: {}",
                        all.join(", "),
                        queries.join(", ")
                    ),
                )
            }
        };
        run.cases
            .push(Case::one_of(name, "pass".into(), actual, detail));
    }
    Ok(run)
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The `.dns` file of a chasquid vector: `name: value` blocks with `\` continuations.
fn chasquid_zone(text: &str) -> Zone {
    let mut zone = Zone::new();
    let joined = text.replace("\\\n", "");
    for line in joined.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        match value.as_str() {
            "TEMPERROR" => zone.set_timeout(name.trim()),
            // A permanent lookup failure: served as the name not existing (NXDOMAIN).
            "PERMERROR" => {}
            // The name exists without a TXT record (NODATA).
            "NOTFOUND" => zone.add_name(name.trim()),
            _ => zone.add(name.trim(), ZoneRecord::Txt(value.into_bytes())),
        }
    }
    zone
}

/// chasquid's state for a mail-auth result (see the module doc).
fn chasquid_state(result: &DkimResult) -> &'static str {
    match result {
        DkimResult::Pass => "SUCCESS",
        DkimResult::TempError(_) => "TEMPFAIL",
        DkimResult::Fail(_) | DkimResult::PermError(_) | DkimResult::Neutral(_) => "PERMFAIL",
        DkimResult::None => "NONE",
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ChasquidResult {
    results: Vec<ChasquidSignature>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ChasquidSignature {
    selector: String,
    state: String,
}

fn chasquid(
    dir: &Path,
    authenticator: &MessageAuthenticator,
    options: &Options,
) -> Result<SuiteRun, LoadError> {
    const SUITE: &str = "dkim-chasquid";
    let mut run = SuiteRun::default();
    for path in files_with_extension(dir, "msg")? {
        let name = file_stem(&path);
        if !run.select(options, SUITE, &name) {
            continue;
        }
        let sibling = |ext: &str| path.with_extension(ext);
        let bad = |message: String| LoadError::Suite {
            path: path.clone(),
            message,
        };
        let expected = if sibling("result").is_file() {
            let result: ChasquidResult = serde_json::from_str(&read(&sibling("result"))?)
                .map_err(|e| bad(format!(".result: {e}")))?;
            result
                .results
                .iter()
                .map(|r| format!("{}({})", r.state, r.selector))
                .collect::<Vec<_>>()
                .join(",")
        } else {
            let error = read(&sibling("error"))?;
            if error.trim() == "<nil>" {
                return Err(bad("neither a .result nor an error".into()));
            }
            "refused".to_string()
        };
        let zone = if sibling("dns").is_file() {
            chasquid_zone(&read(&sibling("dns"))?)
        } else {
            Zone::new()
        };
        let raw = crlf(read(&path)?.as_bytes());
        let (actual, detail) = match AuthenticatedMessage::parse(&raw) {
            None => ("refused".to_string(), String::new()),
            Some(message) => {
                let (outputs, queries) = verify(authenticator, &zone, &message);
                let states: Vec<String> = outputs
                    .iter()
                    .map(|o| format!("{}({})", chasquid_state(&o.result), o.selector))
                    .collect();
                let results: Vec<String> = outputs.iter().map(|o| result_text(&o.result)).collect();
                (
                    states.join(","),
                    format!(
                        "mail-auth: {}\nDNS questions: {}",
                        results.join(", "),
                        queries.join(", ")
                    ),
                )
            }
        };
        run.cases.push(Case::one_of(name, expected, actual, detail));
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_the_b_value() {
        let cases: [(&[u8], &[u8]); 4] = [
            (b"a=x; bh=abc; b=def\r\n", b"a=x; bh=abc; b="),
            (b"b=abc;h=From\r\n", b"b=;h=From"),
            (b"h=From; b = ab\r\n cd\r\n; v=1\r\n", b"h=From; b =; v=1"),
            (b"bh=B64b=;h=From;b=abc", b"bh=B64b=;h=From;b="),
        ];
        for (value, want) in cases {
            assert_eq!(
                without_b_value(value),
                want,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
    }
}
