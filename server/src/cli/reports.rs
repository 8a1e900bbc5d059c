//! `postern reports [DOMAIN] [--since 7d] [--json] [--no-dns]`: what other receivers reported
//! about the local domains ([`crate::mailauth::reports`]).
//!
//! DMARC aggregate reports are summed per domain, reporting organisation and source address
//! (with its verified reverse name, through `[dns]`): messages, DKIM and SPF as DMARC saw them,
//! the DMARC result and what the receiver did. A source whose mail fails gets a sentence saying
//! what that usually means (a forwarder that breaks the signature, a sender missing from SPF,
//! a spoofer). TLS reports are summed per policy domain: sessions that succeeded and failed,
//! each failure by result type, MX and sending address. Failure reports (ARF) are listed one
//! by one: what failed, for mail from which address.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::cli::Reports;
use crate::config::{ConfigError, Settings};
use crate::dns::{Resolver, ResolverConfig};
use crate::mailauth::reports::{self, DmarcRow, FailureRow, Row, TlsRow};

/// What `postern reports` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ReportsError {
    /// postern.toml does not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--since` does not parse.
    #[error("--since {0:?}: want a span such as 7d, 24h, 30m or a number of seconds")]
    Since(String),
    /// The records cannot be read.
    #[error("cannot read the reports under {}: {source}", dir.display())]
    Read {
        /// The data directory.
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One source address of one domain as one organisation reported it, summed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Source {
    /// The domain reported on.
    pub domain: String,
    /// The reporting organisation.
    pub org: String,
    /// The sending address.
    pub ip: Option<IpAddr>,
    /// Its verified reverse name, when it has one (and DNS was asked).
    pub name: Option<String>,
    /// Messages.
    pub messages: u64,
    /// Messages that passed DMARC.
    pub dmarc_pass: u64,
    /// Messages whose aligned DKIM passed.
    pub dkim_pass: u64,
    /// Messages whose aligned SPF passed.
    pub spf_pass: u64,
    /// Messages by what the receiver did (none, quarantine, reject).
    pub dispositions: BTreeMap<String, u64>,
    /// DKIM signatures seen (`domain result`).
    pub dkim_results: Vec<String>,
    /// SPF checks seen (`domain result`).
    pub spf_results: Vec<String>,
    /// Why the receiver did not apply the policy, when it said.
    pub overrides: Vec<String>,
    /// In words, when some of its mail failed.
    pub explanation: Option<String>,
}

/// One policy domain of the TLS reports, summed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TlsSummary {
    /// The policy domain.
    pub domain: String,
    /// The organisations that reported.
    pub orgs: Vec<String>,
    /// Sessions that succeeded.
    pub successes: u64,
    /// Sessions that failed.
    pub failures: u64,
    /// Failed sessions by (result type, MX, sending address).
    pub failure_details: Vec<(String, String, String, u64)>,
}

/// Everything shown.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    /// DMARC sources.
    pub dmarc: Vec<Source>,
    /// TLS policy domains.
    pub tls: Vec<TlsSummary>,
    /// Failure reports, newest last.
    pub failures: Vec<FailureRow>,
}

/// `7d`, `24h`, `30m`, `45s` or seconds.
pub fn parse_span(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let n: u64 = number.parse().ok()?;
    let unit = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// Sums DMARC rows per (domain, organisation, address).
pub fn sum_dmarc(rows: &[DmarcRow]) -> Vec<Source> {
    let mut by: BTreeMap<(String, String, Option<IpAddr>), Source> = BTreeMap::new();
    for r in rows {
        let s = by
            .entry((r.domain.clone(), r.org.clone(), r.ip))
            .or_insert_with(|| Source {
                domain: r.domain.clone(),
                org: r.org.clone(),
                ip: r.ip,
                name: None,
                messages: 0,
                dmarc_pass: 0,
                dkim_pass: 0,
                spf_pass: 0,
                dispositions: BTreeMap::new(),
                dkim_results: Vec::new(),
                spf_results: Vec::new(),
                overrides: Vec::new(),
                explanation: None,
            });
        let n = u64::from(r.count);
        s.messages += n;
        s.dmarc_pass += if r.passes() { n } else { 0 };
        s.dkim_pass += if r.dkim == "pass" { n } else { 0 };
        s.spf_pass += if r.spf == "pass" { n } else { 0 };
        *s.dispositions.entry(r.disposition.clone()).or_default() += n;
        for (have, new) in [
            (&mut s.dkim_results, &r.dkim_results),
            (&mut s.spf_results, &r.spf_results),
            (&mut s.overrides, &r.overrides),
        ] {
            for v in new {
                if !have.contains(v) {
                    have.push(v.clone());
                }
            }
        }
    }
    let mut sources: Vec<Source> = by.into_values().collect();
    for s in &mut sources {
        s.explanation = explain(s);
    }
    sources
}

/// What a source's failing mail most likely is, in words; `None` when all of it passed.
fn explain(s: &Source) -> Option<String> {
    if s.dmarc_pass == s.messages {
        return None;
    }
    let who = match (&s.ip, &s.name) {
        (Some(ip), Some(name)) => format!("{ip} ({name})"),
        (Some(ip), None) => ip.to_string(),
        _ => "a sender".to_string(),
    };
    let ours = |results: &[String]| {
        results.iter().any(|r| {
            r.split(' ').next().is_some_and(|d| {
                d.eq_ignore_ascii_case(&s.domain) || d.ends_with(&format!(".{}", s.domain))
            })
        })
    };
    let signed_by_us = ours(&s.dkim_results);
    let failed = s.messages - s.dmarc_pass;
    let text = if signed_by_us && s.spf_pass == 0 {
        format!(
            "{who} sent {failed} message(s) carrying your DKIM signature, which no longer \
             verified, from an address your SPF does not list: it forwards your mail and \
             changed it on the way (a footer, a subject tag), without an ARC seal the receiver \
             trusts"
        )
    } else if !signed_by_us && s.spf_pass == 0 {
        format!(
            "{who} sent {failed} message(s) as your domain without your DKIM signature, from \
             an address your SPF does not list: a spoofer, or a service you use that needs your \
             DKIM key or an include: in your SPF record"
        )
    } else if s.dkim_pass == 0 && s.spf_pass > 0 && s.spf_pass < s.messages {
        format!("{who}: {failed} message(s) failed both DKIM and SPF alignment")
    } else {
        format!("{who}: {failed} of {} message(s) failed DMARC", s.messages)
    };
    let text = if s.overrides.is_empty() {
        text
    } else {
        format!(
            "{text}; the receiver overrode the policy ({})",
            s.overrides.join(", ")
        )
    };
    Some(text)
}

/// Sums TLS rows per policy domain.
pub fn sum_tls(rows: &[TlsRow]) -> Vec<TlsSummary> {
    let mut by: BTreeMap<String, TlsSummary> = BTreeMap::new();
    for r in rows {
        let s = by.entry(r.domain.clone()).or_insert_with(|| TlsSummary {
            domain: r.domain.clone(),
            orgs: Vec::new(),
            successes: 0,
            failures: 0,
            failure_details: Vec::new(),
        });
        if !s.orgs.contains(&r.org) {
            s.orgs.push(r.org.clone());
        }
        s.successes += u64::from(r.successes);
        s.failures += u64::from(r.failures);
        for f in &r.failure_details {
            let key = (
                f.result.clone(),
                f.mx.clone().unwrap_or_else(|| "-".into()),
                f.sending_ip.map_or_else(|| "-".into(), |ip| ip.to_string()),
            );
            match s
                .failure_details
                .iter_mut()
                .find(|(a, b, c, _)| (a, b, c) == (&key.0, &key.1, &key.2))
            {
                Some(d) => d.3 += u64::from(f.sessions),
                None => s
                    .failure_details
                    .push((key.0, key.1, key.2, u64::from(f.sessions))),
            }
        }
    }
    by.into_values().collect()
}

/// The text form.
pub fn render(shown: &Shown) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    if shown.dmarc.is_empty() && shown.tls.is_empty() && shown.failures.is_empty() {
        t.push_str("no reports received in that span\n");
        return t;
    }
    let mut domain = "";
    for s in &shown.dmarc {
        if s.domain != domain {
            domain = &s.domain;
            let _ = writeln!(t, "DMARC {domain}:");
        }
        let ip = s.ip.map_or_else(|| "-".to_string(), |ip| ip.to_string());
        let name = s.name.as_deref().unwrap_or("no verified reverse name");
        let dispositions: Vec<String> = s
            .dispositions
            .iter()
            .map(|(d, n)| format!("{d} {n}"))
            .collect();
        let _ = writeln!(
            t,
            "  {} reports {ip} ({name}): {} messages, DMARC pass {}, DKIM aligned pass {}, SPF aligned pass {}; {}",
            s.org,
            s.messages,
            s.dmarc_pass,
            s.dkim_pass,
            s.spf_pass,
            dispositions.join(", ")
        );
        if let Some(why) = &s.explanation {
            let _ = writeln!(t, "    {why}");
        }
    }
    for s in &shown.tls {
        let _ = writeln!(
            t,
            "TLS {} (reported by {}): {} sessions succeeded, {} failed",
            s.domain,
            s.orgs.join(", "),
            s.successes,
            s.failures
        );
        for (result, mx, ip, n) in &s.failure_details {
            let _ = writeln!(t, "  {result} at {mx}: {n} sessions (from {ip})");
        }
    }
    for f in &shown.failures {
        let ip = f
            .source_ip
            .map_or_else(|| "-".to_string(), |ip| ip.to_string());
        let what = match f.feedback.as_str() {
            "auth-failure" => format!("{} failed", f.auth_failure),
            other => other.to_string(),
        };
        let _ = writeln!(
            t,
            "failure report {}: {what} for mail from {ip} (envelope from {}){}{}",
            if f.domain.is_empty() { "-" } else { &f.domain },
            f.mail_from.as_deref().unwrap_or("-"),
            f.dkim
                .as_ref()
                .map(|d| format!(", signature {d}"))
                .unwrap_or_default(),
            f.reporting_mta
                .as_ref()
                .map(|m| format!(", reported by {m}"))
                .unwrap_or_default(),
        );
    }
    t
}

/// Runs `postern reports` against the configuration directory `dir`.
pub fn run(dir: &Path, c: Reports) -> Result<(), ReportsError> {
    let settings = Settings::load(dir)?;
    let span = parse_span(&c.since).ok_or_else(|| ReportsError::Since(c.since.clone()))?;
    let now = crate::queue::timers::unix_now();
    let from = now.saturating_sub(span);
    let wanted = c
        .domain
        .as_ref()
        .map(|d| d.trim_end_matches('.').to_ascii_lowercase());
    // The rows of one kind received in the span, about DOMAIN when given.
    fn rows<T: Row>(
        settings: &Settings,
        from: u64,
        wanted: Option<&str>,
    ) -> Result<Vec<T>, ReportsError> {
        let all: Vec<T> =
            reports::read(&settings.data_dir).map_err(|source| ReportsError::Read {
                dir: settings.data_dir.clone(),
                source,
            })?;
        Ok(all
            .into_iter()
            .filter(|r| r.received() >= from && wanted.is_none_or(|w| w == r.domain()))
            .collect())
    }
    let dmarc: Vec<DmarcRow> = rows(&settings, from, wanted.as_deref())?;
    let tls: Vec<TlsRow> = rows(&settings, from, wanted.as_deref())?;
    let failures: Vec<FailureRow> = rows(&settings, from, wanted.as_deref())?;
    let mut sources = sum_dmarc(&dmarc);
    if !c.no_dns
        && let Ok(config) = ResolverConfig::for_server(&settings)
    {
        let resolver = Arc::new(Resolver::new(config));
        smol::block_on(async {
            for s in &mut sources {
                let Some(ip) = s.ip else { continue };
                let lookup = resolver.verified_name(ip);
                let limit = async {
                    async_io::Timer::after(Duration::from_secs(5)).await;
                    None
                };
                s.name = futures_lite::future::or(lookup, limit).await;
                s.explanation = explain(s);
            }
        });
    }
    let shown = Shown {
        dmarc: sources,
        tls: sum_tls(&tls),
        failures,
    };
    if c.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&shown).unwrap_or_else(|_| "{}".into())
        );
    } else {
        print!("{}", render(&shown));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ip: &str, count: u32, dkim: &str, spf: &str, signed: &[&str]) -> DmarcRow {
        DmarcRow {
            received: 1,
            org: "google.com".into(),
            report_id: "r1".into(),
            domain: "example.org".into(),
            begin: 0,
            end: 1,
            ip: ip.parse().ok(),
            count,
            disposition: if dkim == "pass" || spf == "pass" {
                "none"
            } else {
                "quarantine"
            }
            .into(),
            dkim: dkim.into(),
            spf: spf.into(),
            header_from: "example.org".into(),
            envelope_from: "example.org".into(),
            dkim_results: signed.iter().map(|s| s.to_string()).collect(),
            spf_results: vec!["example.org fail".into()],
            overrides: Vec::new(),
        }
    }

    #[test]
    fn spans_parse() {
        assert_eq!(parse_span("7d"), Some(604_800));
        assert_eq!(parse_span("24h"), Some(86_400));
        assert_eq!(parse_span("90"), Some(90));
        assert_eq!(parse_span("2x"), None);
        assert_eq!(parse_span(""), None);
    }

    /// Rows sum per source; a forwarder that breaks the signature and a spoofer are told
    /// apart; a source whose mail passes gets no sentence.
    #[test]
    fn failing_sources_are_explained() {
        let rows = [
            row("192.0.2.1", 10, "pass", "pass", &["example.org pass"]),
            row("192.0.2.1", 5, "pass", "fail", &["example.org pass"]),
            row("192.0.2.7", 3, "fail", "fail", &["example.org fail"]),
            row("198.51.100.9", 4, "fail", "fail", &[]),
        ];
        let sources = sum_dmarc(&rows);
        assert_eq!(sources.len(), 3);
        let ours = &sources[0];
        assert_eq!(
            (ours.messages, ours.dmarc_pass, ours.spf_pass),
            (15, 15, 10)
        );
        assert_eq!(ours.explanation, None);
        let forwarder = sources[1].explanation.as_deref().expect("explained");
        assert!(
            forwarder.starts_with("192.0.2.7 sent 3 message(s) carrying your DKIM signature"),
            "{forwarder}"
        );
        assert!(forwarder.contains("forwards your mail"), "{forwarder}");
        let spoofer = sources[2].explanation.as_deref().expect("explained");
        assert!(spoofer.contains("without your DKIM signature"), "{spoofer}");
        let text = render(&Shown {
            dmarc: sources,
            tls: Vec::new(),
            failures: Vec::new(),
        });
        assert!(text.starts_with("DMARC example.org:\n  google.com reports 192.0.2.1 (no verified reverse name): 15 messages, DMARC pass 15"), "{text}");
        assert!(text.contains("quarantine 3"), "{text}");
    }
}
