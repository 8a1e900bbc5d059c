//! `dmarc-cases`: DMARC evaluation cases (`dmarc/dmarc-cases.yaml`, written for this project
//! from RFC 7489 and DMARCbis) against mail-auth's `verify_dmarc`.
//!
//! A case gives the `_dmarc` TXT records (or `NXDOMAIN`, `TEMPFAIL`), the RFC 5322.From
//! address, and SPF and DKIM results already computed. The runner builds a message with that
//! From, mail-auth's SPF output (result, MAIL FROM domain) and DKIM outputs (result, `d=`),
//! serves the records from an [`authdns::Zone`] (names not listed do not exist), and compares
//! two things:
//! - the DMARC result (`DmarcOutput::result`): pass, fail, none, temperror, permerror;
//! - the disposition: what the receiver applies. mail-auth reports the record's policy for
//!   the From domain (`p`, `sp` or `np`, lowered one step by `t=y`), and the receiver applies
//!   it when DMARC fails (RFC 7489 6.6.4): so it is `none` on pass, that policy on fail, and
//!   `n/a` when there is no DMARC verdict (none, temperror, permerror).
//!
//! Both are printed together, `result/disposition`, e.g. `fail/reject`.

use std::path::Path;

use futures_lite::future::block_on;
use mail_auth::dkim::Signature;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::{AuthenticatedMessage, DkimOutput, DmarcResult, Error, SpfOutput, SpfResult};
use serde::Deserialize;

use crate::auth::{Case, SuiteRun};
use crate::authdns::{self, AuthDns, TxtKind, Zone, ZoneRecord};
use crate::{LoadError, Options, read};

const SUITE: &str = "dmarc-cases";

#[derive(Debug, Deserialize)]
struct DmarcCase {
    id: String,
    spec: String,
    dns: serde_yaml::Mapping,
    from: String,
    spf: SpfInput,
    dkim: Vec<DkimInput>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
struct SpfInput {
    result: String,
    domain: String,
}

#[derive(Debug, Deserialize)]
struct DkimInput {
    result: String,
    d: String,
}

#[derive(Debug, Deserialize)]
struct Expect {
    result: String,
    policy: String,
}

/// Loads the cases and runs the selected ones.
pub(crate) fn run(path: &Path, options: &Options) -> Result<SuiteRun, LoadError> {
    let bad = |message: String| LoadError::Suite {
        path: path.to_path_buf(),
        message,
    };
    let cases: Vec<DmarcCase> =
        serde_yaml::from_str(&read(path)?).map_err(|e| bad(e.to_string()))?;
    let authenticator = authdns::offline_authenticator();
    let mut run = SuiteRun::default();
    for case in cases {
        if !run.select(options, SUITE, &case.id) {
            continue;
        }
        let zone = zone(&case.dns).map_err(|e| bad(format!("{}: {e}", case.id)))?;
        let spf_result = spf_result(&case.spf.result)
            .ok_or_else(|| bad(format!("{}: SPF result {}", case.id, case.spf.result)))?;
        let raw = format!(
            "From: {}\r\nSubject: DMARC case\r\n\r\nBody.\r\n",
            case.from
        );
        let Some(message) = AuthenticatedMessage::parse(raw.as_bytes()) else {
            return Err(bad(format!(
                "{}: mail-auth cannot parse the message",
                case.id
            )));
        };
        let signatures: Vec<Signature> = case
            .dkim
            .iter()
            .map(|d| Signature {
                d: d.d.clone(),
                s: "selector".into(),
                ..Signature::default()
            })
            .collect();
        let mut dkim_outputs = Vec::new();
        for (input, signature) in case.dkim.iter().zip(&signatures) {
            let output = match input.result.as_str() {
                "pass" => DkimOutput::pass(),
                "fail" => {
                    DkimOutput::fail(Error::Dkim(mail_auth::dkim::DkimError::FailedBodyHashMatch))
                }
                "temperror" => DkimOutput::temp_err(Error::Dns(mail_auth::DnsError::Resolver(
                    "case input".into(),
                ))),
                other => return Err(bad(format!("{}: DKIM result {other}", case.id))),
            };
            dkim_outputs.push(output.with_signature(signature));
        }
        let spf_output = SpfOutput::new(case.spf.domain.clone()).with_result(spf_result);
        let dns = AuthDns::new(&zone, TxtKind::Dmarc);
        let output = block_on(
            authenticator.verify_dmarc(dns.parameters(DmarcParameters::new(
                &message,
                &dkim_outputs,
                &case.spf.domain,
                &spf_output,
            ))),
        );
        let result = match output.result() {
            DmarcResult::Pass => "pass",
            DmarcResult::Fail(_) => "fail",
            DmarcResult::TempError(_) => "temperror",
            DmarcResult::PermError(_) => "permerror",
            DmarcResult::None => "none",
        };
        let disposition = match result {
            "pass" => "none",
            "fail" => match output.policy() {
                Policy::Reject => "reject",
                Policy::Quarantine => "quarantine",
                Policy::None | Policy::Unspecified => "none",
            },
            _ => "n/a",
        };
        let detail = format!(
            "spec {}\nmail-auth: spf {:?}, dkim {:?}, policy {:?}, domain {:?}\nDNS questions: {}",
            case.spec,
            output.spf_result(),
            output.dkim_result(),
            output.policy(),
            output.domain(),
            dns.queries().join(", ")
        );
        run.cases.push(Case::one_of(
            case.id.clone(),
            format!("{}/{}", case.expect.result, case.expect.policy),
            format!("{result}/{disposition}"),
            detail,
        ));
    }
    Ok(run)
}

fn spf_result(word: &str) -> Option<SpfResult> {
    Some(match word {
        "pass" => SpfResult::Pass,
        "fail" => SpfResult::Fail,
        "softfail" => SpfResult::SoftFail,
        "neutral" => SpfResult::Neutral,
        "temperror" => SpfResult::TempError,
        "permerror" => SpfResult::PermError,
        "none" => SpfResult::None,
        _ => return None,
    })
}

/// The case's records: a list of TXT strings, `NXDOMAIN` (left out: names not in the zone
/// do not exist) or `TEMPFAIL` (a time-out).
fn zone(dns: &serde_yaml::Mapping) -> Result<Zone, String> {
    let mut zone = Zone::new();
    for (name, value) in dns {
        let name = name.as_str().ok_or("a name that is not a string")?;
        match value {
            serde_yaml::Value::String(s) if s == "NXDOMAIN" => {}
            serde_yaml::Value::String(s) if s == "TEMPFAIL" => zone.set_timeout(name),
            serde_yaml::Value::Sequence(records) => {
                for record in records {
                    let record = record
                        .as_str()
                        .ok_or_else(|| format!("{name}: {record:?}"))?;
                    zone.add(name, ZoneRecord::Txt(record.as_bytes().to_vec()));
                }
            }
            other => return Err(format!("{name}: {other:?}")),
        }
    }
    Ok(zone)
}
