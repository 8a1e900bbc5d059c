//! `spf-rfc7208`: the openspf.org RFC 7208 suite (`spf/rfc7208-tests.yml`).
//!
//! Each YAML document is a scenario: `tests` (client address `host`, `mailfrom`, `helo`, the
//! acceptable `result`s) and `zonedata`, served from an [`authdns::Zone`]. A test runs
//! mail-auth's `check_host` for the MAIL FROM identity, or for the HELO identity
//! (`postmaster@<helo>`) when `mailfrom` is empty, as the suite's reference driver (pyspf's
//! `testspf.py`) does; it passes when mail-auth's result is one of the listed ones. The
//! `explanation` fields are not compared: the TXT cache is typed per name (see
//! [`authdns`]), and the check's names are served as SPF records, so an `exp=` explanation
//! record cannot be served as one too.
//!
//! The zone follows the suite's conventions (those of its reference driver):
//! - type SPF (99) records are also served as TXT, unless the name lists a `TXT` entry
//!   (`TXT: NONE` means no TXT records): RFC 7208 3.1 dropped type SPF, and mail-auth only
//!   asks for TXT, so a name with only type SPF records has no policy;
//! - `TIMEOUT` in a name's list: questions for a type with no record listed before it time
//!   out, and records after it are never reached;
//! - a name not in `zonedata` does not exist (NXDOMAIN);
//! - strings with `\xNN` escapes are raw bytes (Latin-1).

use std::net::IpAddr;
use std::path::Path;

use futures_lite::future::block_on;
use mail_auth::spf::verify::SpfParameters;
use serde::Deserialize;
use serde_yaml::Value;

use crate::auth::{Case, SuiteRun, latin1_bytes};
use crate::authdns::{self, AuthDns, TxtKind, Zone, ZoneRecord};
use crate::{LoadError, Options, read};

const SUITE: &str = "spf-rfc7208";

/// The receiving host's name (the `%{r}` macro).
const RECEIVER: &str = "receiver.example.org";

#[derive(Debug, Deserialize)]
struct Scenario {
    description: String,
    tests: serde_yaml::Mapping,
    #[serde(default)]
    zonedata: serde_yaml::Mapping,
}

#[derive(Debug, Deserialize)]
struct Test {
    helo: String,
    host: String,
    mailfrom: String,
    result: Value,
    #[serde(default)]
    spec: Value,
}

/// Loads the suite and runs the selected tests.
pub(crate) fn run(path: &Path, options: &Options) -> Result<SuiteRun, LoadError> {
    let text = read(path)?;
    let bad = |message: String| LoadError::Suite {
        path: path.to_path_buf(),
        message,
    };
    let authenticator = authdns::offline_authenticator();
    let mut run = SuiteRun::default();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let scenario =
            Scenario::deserialize(document).map_err(|e| bad(format!("a scenario: {e}")))?;
        let zone = load_zone(&scenario.zonedata)
            .map_err(|e| bad(format!("{}: zonedata: {e}", scenario.description)))?;
        for (name, test) in &scenario.tests {
            let name = name
                .as_str()
                .ok_or_else(|| bad(format!("{}: a test name", scenario.description)))?;
            let case_name = format!("{}/{name}", scenario.description);
            let test: Test = serde_yaml::from_value(test.clone())
                .map_err(|e| bad(format!("{case_name}: {e}")))?;
            if !run.select(options, SUITE, &case_name) {
                continue;
            }
            let case = run_test(&authenticator, &zone, case_name, &test)
                .map_err(|e| bad(format!("{name}: {e}")))?;
            run.cases.push(case);
        }
    }
    Ok(run)
}

fn run_test(
    authenticator: &mail_auth::MessageAuthenticator,
    zone: &Zone,
    name: String,
    test: &Test,
) -> Result<Case, String> {
    let expected = match &test.result {
        Value::String(s) => s.clone(),
        Value::Sequence(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or("a non-string result"))
            .collect::<Result<Vec<_>, _>>()?
            .join("|"),
        other => return Err(format!("result {other:?}")),
    };
    let ip: IpAddr = test
        .host
        .parse()
        .map_err(|e| format!("host {:?}: {e}", test.host))?;
    let dns = AuthDns::new(zone, TxtKind::Spf).with_addresses(&[ip]);
    let params = if test.mailfrom.is_empty() {
        SpfParameters::verify_ehlo(ip, &test.helo, RECEIVER)
    } else {
        SpfParameters::verify_mail_from(ip, &test.helo, RECEIVER, &test.mailfrom)
    };
    let output = block_on(authenticator.verify_spf(dns.parameters(params)));
    let actual = postern::mailauth::authdns::spf_word(output.result());
    let detail = format!(
        "spec {}; host {}, mailfrom {:?}, helo {:?}\nDNS questions: {}",
        spec_text(&test.spec),
        test.host,
        test.mailfrom,
        test.helo,
        dns.queries().join(", ")
    );
    Ok(Case::one_of(name, expected, actual.to_string(), detail))
}

fn spec_text(spec: &Value) -> String {
    match spec {
        Value::String(s) => s.clone(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    }
}

/// Builds the zone of a scenario (see the module doc for the conventions).
fn load_zone(zonedata: &serde_yaml::Mapping) -> Result<Zone, String> {
    let mut zone = Zone::new();
    for (name, entries) in zonedata {
        let name = name.as_str().ok_or("a name that is not a string")?;
        let entries = entries
            .as_sequence()
            .ok_or_else(|| format!("{name}: not a list"))?;
        zone.add_name(name);
        let mut has_txt = false;
        let mut spf_records = Vec::new();
        let mut timed_out = false;
        for entry in entries {
            if entry.as_str() == Some("TIMEOUT") {
                zone.set_timeout(name);
                timed_out = true;
                continue;
            }
            let map = entry
                .as_mapping()
                .filter(|m| m.len() == 1)
                .ok_or_else(|| format!("{name}: entry {entry:?}"))?;
            let Some((rtype, value)) = map.iter().next() else {
                continue;
            };
            let rtype = rtype.as_str().ok_or_else(|| format!("{name}: type"))?;
            if rtype == "TXT" {
                has_txt = true;
            }
            if value.as_str() == Some("NONE") {
                continue;
            }
            if timed_out {
                // The reference driver stops at TIMEOUT: what follows is never served.
                continue;
            }
            match rtype {
                "SPF" => {
                    if let Some(txt) = txt_data(value).map_err(|e| format!("{name}: {e}"))? {
                        spf_records.push(txt);
                    }
                }
                "TXT" => {
                    if let Some(txt) = txt_data(value).map_err(|e| format!("{name}: {e}"))? {
                        zone.add(name, ZoneRecord::Txt(txt));
                    }
                }
                "A" => {
                    for a in scalars(value) {
                        let a = a.parse().map_err(|e| format!("{name}: A {a}: {e}"))?;
                        zone.add(name, ZoneRecord::A(a));
                    }
                }
                "AAAA" => {
                    for a in scalars(value) {
                        let a = a.parse().map_err(|e| format!("{name}: AAAA {a}: {e}"))?;
                        zone.add(name, ZoneRecord::Aaaa(a));
                    }
                }
                "MX" => {
                    let pair = value.as_sequence().filter(|s| s.len() == 2);
                    let (preference, exchange) = pair
                        .and_then(|s| Some((s[0].as_u64()?, s[1].as_str()?)))
                        .ok_or_else(|| format!("{name}: MX {value:?}"))?;
                    let preference = u16::try_from(preference)
                        .map_err(|_| format!("{name}: MX preference {preference}"))?;
                    zone.add(name, ZoneRecord::Mx(preference, exchange.to_string()));
                }
                "PTR" => {
                    for target in scalars(value) {
                        zone.add(name, ZoneRecord::Ptr(target));
                    }
                }
                "CNAME" => {
                    for target in scalars(value) {
                        zone.add(name, ZoneRecord::Cname(target));
                    }
                }
                other => return Err(format!("{name}: unknown type {other}")),
            }
        }
        // Type SPF stands in for TXT only where no TXT entry is listed; the reference
        // driver appends these after TIMEOUT, so a timed-out name never serves them.
        if !has_txt && !timed_out {
            for txt in spf_records {
                zone.add(name, ZoneRecord::Txt(txt));
            }
        }
    }
    Ok(zone)
}

/// The data of a TXT (or SPF) record: a string, or a list of strings joined without
/// separator (RFC 7208 3.3). An empty list is no record at all (mail-auth skips TXT records
/// without strings).
fn txt_data(value: &Value) -> Result<Option<Vec<u8>>, String> {
    match value {
        Value::String(s) => Ok(Some(latin1_bytes(s))),
        Value::Sequence(items) if items.is_empty() => Ok(None),
        Value::Sequence(items) => {
            let mut joined = Vec::new();
            for item in items {
                let s = item.as_str().ok_or_else(|| format!("TXT part {item:?}"))?;
                joined.extend(latin1_bytes(s));
            }
            Ok(Some(joined))
        }
        other => Err(format!("TXT {other:?}")),
    }
}

/// A string, a number, or a list of them, as strings.
fn scalars(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Number(n) => vec![n.to_string()],
        Value::Sequence(items) => items.iter().flat_map(scalars).collect(),
        _ => Vec::new(),
    }
}
