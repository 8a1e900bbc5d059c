//! The ARC suites (ValiMail's `arc/arc-draft-validation-tests.yml` and
//! `arc-draft-sign-tests.yml`) against mail-auth's `verify_arc` and `ArcSealer`.
//!
//! Each YAML document holds tests and the `txt-records` (DKIM keys) they share, served from
//! an [`authdns::Zone`] (line breaks inside a record removed; names not listed do not exist).
//! Messages have LF line ends in the YAML and are sent with CRLF.
//!
//! `arc-validation`: the chain validation status mail-auth gives (`ArcOutput::result`) must be
//! the test's `cv`: `None` when there is no ARC set, `Pass` on pass, and `Fail` for every other
//! result (fail, neutral, permerror, temperror: RFC 8617 5.2 knows only none, pass and fail).
//! Three tests leave `cv` empty; each is a chain whose highest ARC-Seal says `cv=fail`, and
//! RFC 8617 5.2 step 2 makes such a chain `fail`, which is what they are held to. A message
//! mail-auth cannot parse at all counts as `unparsable`.
//!
//! `arc-signing`: the signer's clock cannot be set in mail-auth 0.13.3 (`ArcSealer::seal`
//! stamps `t=` with the system time), so the suite's `b=` values, which cover `t=12345`,
//! cannot be reproduced, and mail-auth builds the ARC-Authentication-Results from its own
//! result types, so the suite's AAR text (the message's Authentication-Results merged) cannot
//! be given to it either. What is compared, for each test, after sealing the message (its
//! chain first verified by mail-auth, the key and `sig-headers` of the suite):
//! - ARC-Seal: `a`, `cv`, `d`, `i`, `s` equal to the suite's AS;
//! - ARC-Message-Signature: `a`, `bh`, `c`, `d`, `i`, `s` equal to the suite's AMS, and `h`
//!   the same header names (as a multiset: their order is the signer's choice, RFC 6376
//!   3.5);
//! - ARC-Authentication-Results: `i` and the authserv-id equal to the suite's AAR;
//! - the sealed message verified again by mail-auth: `pass`, or `fail` when the new seal
//!   says `cv=fail` (RFC 8617 5.2 step 2 stops there), which checks the new AMS and AS
//!   signatures for every chain that can still pass.
//!
//! A test whose AS, AMS and AAR are empty expects no set at all (its highest ARC-Seal already
//! says `cv=fail`): mail-auth must refuse to seal it, because `ArcOutput::can_be_sealed` says
//! no.

use std::path::Path;

use futures_lite::future::block_on;
use mail_auth::arc::{ArcSealer, ArcSet, ChainValidation};
use mail_auth::common::crypto::{Algorithm, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::Canonicalization;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimResult, MessageAuthenticator,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};
use serde::Deserialize;

use crate::auth::{Case, SuiteRun, crlf};
use crate::authdns::{self, AuthDns, TxtKind, Zone, ZoneRecord};
use crate::{LoadError, Options, read};

#[derive(Debug, Deserialize)]
struct Scenario {
    description: String,
    tests: Tests,
    #[serde(rename = "txt-records", default)]
    txt_records: serde_yaml::Mapping,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    sel: Option<String>,
    #[serde(default)]
    privatekey: Option<String>,
}

/// A scenario's tests, in order. The validation file repeats four test names in one
/// scenario; as in the suite's own harness (PyYAML), the later test replaces the earlier one.
#[derive(Debug, Default)]
struct Tests(Vec<(String, serde_yaml::Value)>);

impl<'de> Deserialize<'de> for Tests {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Tests, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Tests;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of tests")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Tests, A::Error> {
                let mut tests: Vec<(String, serde_yaml::Value)> = Vec::new();
                while let Some((name, test)) = map.next_entry::<String, serde_yaml::Value>()? {
                    match tests.iter_mut().find(|(n, _)| *n == name) {
                        Some(slot) => slot.1 = test,
                        None => tests.push((name, test)),
                    }
                }
                Ok(Tests(tests))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

#[derive(Debug, Deserialize)]
struct ValidationTest {
    message: String,
    #[serde(default)]
    cv: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct SigningTest {
    message: String,
    sig_headers: String,
    srv_id: String,
    #[serde(rename = "AS")]
    seal: String,
    #[serde(rename = "AMS")]
    signature: String,
    #[serde(rename = "AAR")]
    results: String,
}

/// Loads and runs both ARC suites.
pub(crate) fn run(
    dir: &Path,
    options: &Options,
) -> Result<Vec<(&'static str, SuiteRun)>, LoadError> {
    let authenticator = authdns::offline_authenticator();
    Ok(vec![
        (
            "arc-validation",
            validation(
                &dir.join("arc-draft-validation-tests.yml"),
                &authenticator,
                options,
            )?,
        ),
        (
            "arc-signing",
            signing(
                &dir.join("arc-draft-sign-tests.yml"),
                &authenticator,
                options,
            )?,
        ),
    ])
}

/// The scenarios of a suite file.
fn scenarios(path: &Path) -> Result<Vec<Scenario>, LoadError> {
    let text = read(path)?;
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            Scenario::deserialize(doc).map_err(|e| LoadError::Suite {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        })
        .collect()
}

/// The keys of a scenario (line breaks inside a record removed).
fn zone(records: &serde_yaml::Mapping) -> Result<Zone, String> {
    let mut zone = Zone::new();
    for (name, value) in records {
        let name = name.as_str().ok_or("a name that is not a string")?;
        let value = value.as_str().ok_or_else(|| format!("{name}: {value:?}"))?;
        let record: String = value.lines().map(str::trim_end).collect();
        zone.add(name, ZoneRecord::Txt(record.into_bytes()));
    }
    Ok(zone)
}

/// RFC 8617's chain validation status for mail-auth's result.
fn cv_word(result: &DkimResult) -> &'static str {
    match result {
        DkimResult::None => "none",
        DkimResult::Pass => "pass",
        _ => "fail",
    }
}

fn result_text(output: &ArcOutput<'_>) -> String {
    crate::dkim::result_text(output.result())
}

/// Verifies the ARC chain of `message` with keys from `zone`.
fn verify_chain(
    authenticator: &MessageAuthenticator,
    zone: &Zone,
    message: &AuthenticatedMessage<'_>,
) -> (DkimResult, Vec<String>) {
    let dns = AuthDns::new(zone, TxtKind::DomainKey);
    let output = block_on(authenticator.verify_arc(dns.parameters(message)));
    (output.result().clone(), dns.queries())
}

fn validation(
    path: &Path,
    authenticator: &MessageAuthenticator,
    options: &Options,
) -> Result<SuiteRun, LoadError> {
    const SUITE: &str = "arc-validation";
    let bad = |message: String| LoadError::Suite {
        path: path.to_path_buf(),
        message,
    };
    let mut run = SuiteRun::default();
    for scenario in scenarios(path)? {
        let zone = zone(&scenario.txt_records).map_err(&bad)?;
        for (name, test) in &scenario.tests.0 {
            let test: ValidationTest =
                serde_yaml::from_value(test.clone()).map_err(|e| bad(format!("{name}: {e}")))?;
            if !run.select(options, SUITE, name) {
                continue;
            }
            let expected = match test.cv.as_deref().map(str::trim) {
                Some("") | None => "fail".to_string(),
                Some(cv) => cv.to_ascii_lowercase(),
            };
            let raw = crlf(test.message.as_bytes());
            let (actual, detail) = match AuthenticatedMessage::parse(&raw) {
                None => ("unparsable".to_string(), String::new()),
                Some(message) => {
                    let (result, queries) = verify_chain(authenticator, &zone, &message);
                    (
                        cv_word(&result).to_string(),
                        format!(
                            "{}: mail-auth {}\nDNS questions: {}",
                            scenario.description.trim(),
                            crate::dkim::result_text(&result),
                            queries.join(", ")
                        ),
                    )
                }
            };
            run.cases
                .push(Case::one_of(name.to_string(), expected, actual, detail));
        }
    }
    Ok(run)
}

/// A tag list (`a=rsa-sha256; b=...`) as (tag, value without whitespace) pairs.
fn tags(list: &str) -> Vec<(String, String)> {
    list.split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_ascii_lowercase(),
                v.chars().filter(|c| !c.is_whitespace()).collect(),
            )
        })
        .collect()
}

fn tag<'a>(tags: &'a [(String, String)], name: &str) -> &'a str {
    tags.iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RsaSha256 => "rsa-sha256",
        Algorithm::RsaSha1 => "rsa-sha1",
        Algorithm::Ed25519Sha256 => "ed25519-sha256",
    }
}

fn canonicalization_name(c: Canonicalization) -> &'static str {
    match c {
        Canonicalization::Relaxed => "relaxed",
        Canonicalization::Simple => "simple",
    }
}

fn signing(
    path: &Path,
    authenticator: &MessageAuthenticator,
    options: &Options,
) -> Result<SuiteRun, LoadError> {
    const SUITE: &str = "arc-signing";
    let bad = |message: String| LoadError::Suite {
        path: path.to_path_buf(),
        message,
    };
    let mut run = SuiteRun::default();
    for scenario in scenarios(path)? {
        let zone = zone(&scenario.txt_records).map_err(&bad)?;
        let (Some(domain), Some(selector), Some(pem)) =
            (&scenario.domain, &scenario.sel, &scenario.privatekey)
        else {
            return Err(bad(format!(
                "{}: no domain, sel or key",
                scenario.description
            )));
        };
        let der = pem_der(pem).map_err(&bad)?;
        for (name, test) in &scenario.tests.0 {
            let test: SigningTest =
                serde_yaml::from_value(test.clone()).map_err(|e| bad(format!("{name}: {e}")))?;
            if !run.select(options, SUITE, name) {
                continue;
            }
            let key = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(
                PrivatePkcs1KeyDer::from(der.clone()),
            ))
            .map_err(|e| bad(format!("the private key: {e}")))?;
            run.cases.push(sign_test(
                authenticator,
                &zone,
                name,
                &test,
                key,
                domain,
                selector,
            ));
        }
    }
    Ok(run)
}

fn pem_der(pem: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("the private key: {e}"))
}

fn sign_test(
    authenticator: &MessageAuthenticator,
    zone: &Zone,
    name: &str,
    test: &SigningTest,
    key: RsaKey<Sha256>,
    domain: &str,
    selector: &str,
) -> Case {
    let raw = crlf(test.message.as_bytes());
    let fail = |what: String| Case::one_of(name.into(), "match".into(), what, String::new());
    let Some(message) = AuthenticatedMessage::parse(&raw) else {
        return fail("unparsable message".into());
    };
    let dns = AuthDns::new(zone, TxtKind::DomainKey);
    let chain: ArcOutput<'_> = block_on(authenticator.verify_arc(dns.parameters(&message)));
    let results = AuthenticationResults::new(&test.srv_id);
    let sealer = ArcSealer::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(test.sig_headers.split(':').map(str::trim))
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed);
    // The suite leaves AS, AMS and AAR empty where no set may be added ("if a chain is
    // failing, don't add another set"); mail-auth refuses to seal a chain whose highest
    // ARC-Seal already says cv=fail.
    if test.seal.trim().is_empty() {
        let actual = match sealer.seal(&message, &results, &chain) {
            Err(_) if !chain.can_be_sealed() => "no set".to_string(),
            Err(e) => format!("sealing failed ({e})"),
            Ok(set) => format!("a set i={} cv={:?}", set.seal.i, set.seal.cv),
        };
        return Case::one_of(
            name.into(),
            "no set".into(),
            actual,
            format!("chain before sealing: {}", result_text(&chain)),
        );
    }
    let set: ArcSet<'_> = match sealer.seal(&message, &results, &chain) {
        Ok(set) => set,
        Err(e) => return fail(format!("sealing failed ({e})")),
    };

    let mut differences = Vec::new();
    let mut compare = |what: &str, want: &str, got: &str| {
        if want != got {
            differences.push(format!("{what}: suite {want:?}, mail-auth {got:?}"));
        }
    };
    let seal = tags(&test.seal);
    let cv = match set.seal.cv {
        ChainValidation::None => "none",
        ChainValidation::Pass => "pass",
        ChainValidation::Fail => "fail",
    };
    compare("AS a", tag(&seal, "a"), algorithm_name(set.seal.a));
    compare("AS cv", &tag(&seal, "cv").to_ascii_lowercase(), cv);
    compare("AS d", tag(&seal, "d"), &set.seal.d);
    compare("AS i", tag(&seal, "i"), &set.seal.i.to_string());
    compare("AS s", tag(&seal, "s"), &set.seal.s);
    let ams = tags(&test.signature);
    let sig = &set.signature;
    compare("AMS a", tag(&ams, "a"), algorithm_name(sig.a));
    {
        use base64::Engine;
        let bh = base64::engine::general_purpose::STANDARD.encode(&sig.bh);
        compare("AMS bh", tag(&ams, "bh"), &bh);
    }
    compare(
        "AMS c",
        tag(&ams, "c"),
        &format!(
            "{}/{}",
            canonicalization_name(sig.ch),
            canonicalization_name(sig.cb)
        ),
    );
    compare("AMS d", tag(&ams, "d"), &sig.d);
    compare("AMS i", tag(&ams, "i"), &sig.i.to_string());
    compare("AMS s", tag(&ams, "s"), &sig.s);
    let mut want_h: Vec<String> = tag(&ams, "h")
        .split(':')
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let mut got_h: Vec<String> = sig.h.iter().map(|h| h.to_ascii_lowercase()).collect();
    want_h.sort();
    got_h.sort();
    compare("AMS h", &want_h.join(":"), &got_h.join(":"));
    let aar_i = test
        .results
        .split(';')
        .next()
        .and_then(|t| t.trim().strip_prefix("i="))
        .unwrap_or("");
    let aar_id = test.results.split(';').nth(1).map_or("", str::trim);
    compare("AAR i", aar_i, &set.seal.i.to_string());
    compare("AAR authserv-id", aar_id, &test.srv_id);

    // The sealed message must verify (or fail at its own cv=fail).
    let header = set.to_header();
    let mut sealed = header.clone().into_bytes();
    sealed.extend_from_slice(&raw);
    let reverified = match AuthenticatedMessage::parse(&sealed) {
        None => "unparsable".to_string(),
        Some(m) => {
            let (result, _) = verify_chain(authenticator, zone, &m);
            cv_word(&result).to_string()
        }
    };
    let want_reverified = if cv == "fail" { "fail" } else { "pass" };
    compare("sealed message verifies", want_reverified, &reverified);

    let actual = if differences.is_empty() {
        "match".to_string()
    } else {
        differences.join("; ")
    };
    Case::one_of(
        name.into(),
        "match".into(),
        actual,
        format!(
            "chain before sealing: {}\nmail-auth's set:\n{}",
            result_text(&chain),
            header.trim_end()
        ),
    )
}
