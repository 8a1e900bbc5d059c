//! `postern doctor [DOMAIN]`: is the DNS right for this server? Asked through `[dns]` (the
//! resolver the server uses), for each local domain (or DOMAIN):
//!
//! - `mx`: the domain's MX records name this server's hostname;
//! - `address`: the hostname has A/AAAA records, and they are the server's addresses (given
//!   with `--ip`, else the smtp listeners' own addresses when they are not wildcards);
//! - `ptr`: each address has a reverse name that resolves back to it (FCrDNS) and is the
//!   hostname;
//! - `spf`: the domain has an SPF record that evaluates to `pass` for each address (a
//!   missing `include:` is a permerror, as at the receiver);
//! - `dkim`: each key on disk has its record published, and equal;
//! - `dmarc`: a record that parses, its policy, and where its reports go; a report address
//!   in another domain must be authorised there (`<domain>._report._dmarc.<its domain>`);
//! - `tls-rpt`, `mta-sts`: their records when present (they are optional); an MTA-STS
//!   policy is fetched over HTTPS (web PKI plus `[delivery] tls_roots`), must parse, and must
//!   list the hostname among its `mx`;
//! - `certificate`: the default certificate covers the hostname, and when it expires.
//!
//! Each finding is `ok`, `warning` or `error`, with the record to publish or change. Exit
//! status 1 when there is an error; `--json` prints one JSON array of findings.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mail_auth::common::parse::TxtRecordParser;
use serde::Serialize;

use crate::cli::Doctor;
use crate::config::{ConfigError, Settings};
use crate::dns::{Mx, Resolver, ResolverConfig};
use crate::mailauth::dkim::DkimKeys;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// As it should be.
    Ok,
    /// Works, but worth a look.
    Warning,
    /// Mail will suffer: fix it.
    Error,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The domain (or the hostname) it is about.
    pub domain: String,
    /// The check: mx, address, ptr, spf, dkim, dmarc, tls-rpt, mta-sts, certificate.
    pub check: &'static str,
    /// ok, warning, error.
    pub level: Level,
    /// What was found.
    pub message: String,
    /// The record to publish or change (zone-file line), or what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// What the doctor can fail with (findings are not failures).
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// postern.toml does not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The resolver cannot be set up.
    #[error("cannot read the DNS configuration: {0}")]
    Resolver(std::io::Error),
    /// Not a local domain.
    #[error("{0} is not a local domain (no domains/{0}/)")]
    NotLocal(String),
    /// Some checks found errors (printed already).
    #[error("{0} error(s) found")]
    Errors(usize),
}

/// Runs `postern doctor` against the configuration directory `dir`.
pub fn run(dir: &Path, c: Doctor) -> Result<(), DoctorError> {
    let settings = Settings::load(dir)?;
    let config = ResolverConfig::for_server(&settings).map_err(DoctorError::Resolver)?;
    let resolver = Arc::new(Resolver::new(config));
    let mut domains = local_domains(&settings);
    if let Some(one) = &c.domain {
        let one = one.trim_end_matches('.').to_ascii_lowercase();
        if !domains.contains(&one) {
            return Err(DoctorError::NotLocal(one));
        }
        domains = vec![one];
    }
    let findings = smol::block_on(examine(&settings, &resolver, &domains, &c.ip));
    if c.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&findings).unwrap_or_else(|_| "[]".into())
        );
    } else {
        print!("{}", render(&findings));
    }
    let errors = findings.iter().filter(|f| f.level == Level::Error).count();
    if errors > 0 {
        return Err(DoctorError::Errors(errors));
    }
    Ok(())
}

/// The local domains ([`crate::directory::domain_names`]), lower case.
fn local_domains(settings: &Settings) -> Vec<String> {
    crate::directory::domain_names(&settings.domains_dir())
        .unwrap_or_default()
        .into_iter()
        .map(|n| n.to_ascii_lowercase())
        .collect()
}

/// The findings as lines for a person.
fn render(findings: &[Finding]) -> String {
    let mut t = String::new();
    for f in findings {
        let level = match f.level {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Error => "error",
        };
        let _ = writeln!(t, "{level:<8}{} {}: {}", f.domain, f.check, f.message);
        if let Some(fix) = &f.fix {
            let _ = writeln!(t, "        fix: {fix}");
        }
    }
    t
}

/// Collects findings.
struct Report(Vec<Finding>);

impl Report {
    fn add(&mut self, domain: &str, check: &'static str, level: Level, message: String) {
        self.0.push(Finding {
            domain: domain.to_string(),
            check,
            level,
            message,
            fix: None,
        });
    }

    fn fix(
        &mut self,
        domain: &str,
        check: &'static str,
        level: Level,
        message: String,
        fix: String,
    ) {
        self.0.push(Finding {
            domain: domain.to_string(),
            check,
            level,
            message,
            fix: Some(fix),
        });
    }
}

/// Every check, in the order a person fixes things.
async fn examine(
    settings: &Settings,
    resolver: &Arc<Resolver>,
    domains: &[String],
    given: &[IpAddr],
) -> Vec<Finding> {
    let host = settings.hostname.trim_end_matches('.').to_ascii_lowercase();
    let mut r = Report(Vec::new());
    let addresses = host_addresses(&mut r, settings, resolver, &host, given).await;
    for ip in &addresses {
        check_ptr(&mut r, resolver, &host, *ip).await;
    }
    check_certificate(&mut r, settings, &host);
    for domain in domains {
        check_mx(&mut r, resolver, domain, &host).await;
        check_spf(&mut r, settings, resolver, domain, &host, &addresses).await;
        check_dkim(&mut r, settings, resolver, domain).await;
        check_dmarc(&mut r, settings, resolver, domain, domains).await;
        check_optional(&mut r, settings, resolver, domain, &host).await;
    }
    r.0
}

/// The server's addresses: `--ip`, else the smtp listeners' (when not wildcards or
/// loopback), else the hostname's A/AAAA. Checks that the hostname's records hold them.
async fn host_addresses(
    r: &mut Report,
    settings: &Settings,
    resolver: &Resolver,
    host: &str,
    given: &[IpAddr],
) -> Vec<IpAddr> {
    let mut published: Vec<IpAddr> = Vec::new();
    if let Ok(v4) = resolver.a(host).await {
        published.extend(v4.into_iter().map(IpAddr::V4));
    }
    if let Ok(v6) = resolver.aaaa(host).await {
        published.extend(v6.into_iter().map(IpAddr::V6));
    }
    let ours: Vec<IpAddr> = if given.is_empty() {
        settings
            .listeners
            .iter()
            .filter(|l| l.role == crate::config::Role::Smtp)
            .map(|l| l.addr.ip())
            .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
            .collect()
    } else {
        given.to_vec()
    };
    if published.is_empty() {
        let example = ours.first().map_or_else(
            || format!("{host}. IN A <this server's IPv4 address>"),
            |ip| match ip {
                IpAddr::V4(v4) => format!("{host}. IN A {v4}"),
                IpAddr::V6(v6) => format!("{host}. IN AAAA {v6}"),
            },
        );
        r.fix(
            host,
            "address",
            Level::Error,
            format!("{host} has no A or AAAA record: no one can reach this server by name"),
            example,
        );
        return ours;
    }
    if ours.is_empty() {
        r.add(
            host,
            "address",
            Level::Warning,
            format!(
                "{host} has {}; the listeners are wildcards, so whether they are this \
                 server's is not known (give them with --ip)",
                list(&published)
            ),
        );
        return published;
    }
    for ip in &ours {
        if published.contains(ip) {
            r.add(host, "address", Level::Ok, format!("{host} has {ip}"));
        } else {
            let kind = if ip.is_ipv4() { "A" } else { "AAAA" };
            r.fix(
                host,
                "address",
                Level::Error,
                format!("{host} has {}, not {ip}", list(&published)),
                format!("{host}. IN {kind} {ip}"),
            );
        }
    }
    for ip in published.iter().filter(|ip| !ours.contains(ip)) {
        r.add(
            host,
            "address",
            Level::Warning,
            format!("{host} also has {ip}, which is not one of this server's addresses"),
        );
    }
    ours
}

fn list(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// PTR of `ip` exists, resolves back, and is the hostname.
async fn check_ptr(r: &mut Report, resolver: &Resolver, host: &str, ip: IpAddr) {
    let ask = format!("ask your provider to set the reverse name of {ip} to {host}");
    let names = resolver.ptr(ip).await.unwrap_or_default();
    if names.is_empty() {
        let message = format!("{ip} has no reverse name (PTR): many receivers refuse such mail");
        r.fix(host, "ptr", Level::Error, message, ask);
        return;
    }
    match resolver.verified_name(ip).await {
        Some(name) if name == host => r.add(
            host,
            "ptr",
            Level::Ok,
            format!("{ip} is {host}, and {host} has {ip} (FCrDNS)"),
        ),
        Some(name) => r.fix(
            host,
            "ptr",
            Level::Warning,
            format!("{ip} is {name} (confirmed), not the hostname {host}"),
            ask,
        ),
        None => {
            let shown: Vec<String> = names.iter().map(|n| n.to_ascii()).collect();
            r.fix(
                host,
                "ptr",
                Level::Error,
                format!(
                    "{ip} is named {}, which does not resolve back to {ip} (no FCrDNS)",
                    shown.join(", ")
                ),
                ask,
            );
        }
    }
}

/// The domain's MX records name the hostname.
async fn check_mx(r: &mut Report, resolver: &Resolver, domain: &str, host: &str) {
    let publish = format!("{domain}. IN MX 10 {host}.");
    match resolver.mx(domain).await {
        Ok(Mx::Hosts(hosts)) if hosts.is_empty() => r.fix(
            domain,
            "mx",
            Level::Error,
            "no MX record: mail goes to the domain's own address, if any".into(),
            publish,
        ),
        Ok(Mx::Hosts(hosts)) => {
            let names: Vec<String> = hosts
                .iter()
                .map(|h| {
                    h.exchange
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase()
                })
                .collect();
            match names.iter().position(|n| n == host) {
                Some(i) => r.add(
                    domain,
                    "mx",
                    Level::Ok,
                    format!("{host} is an MX (preference {})", hosts[i].preference),
                ),
                None => r.fix(
                    domain,
                    "mx",
                    Level::Error,
                    format!("the MX records name {}, not {host}", names.join(", ")),
                    publish,
                ),
            }
        }
        Ok(Mx::Null) => r.fix(
            domain,
            "mx",
            Level::Error,
            "a null MX (\".\"): the domain says it takes no mail".into(),
            publish,
        ),
        Err(e) => r.fix(
            domain,
            "mx",
            Level::Error,
            format!("MX lookup: {e}"),
            publish,
        ),
    }
}

/// SPF passes for each of the server's addresses.
async fn check_spf(
    r: &mut Report,
    settings: &Settings,
    resolver: &Arc<Resolver>,
    domain: &str,
    host: &str,
    addresses: &[IpAddr],
) {
    let publish = format!("{domain}. IN TXT \"v=spf1 mx -all\"");
    let records: Vec<String> = resolver
        .txt(domain)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|t| String::from_utf8_lossy(&t).into_owned())
        .filter(|t| t.to_ascii_lowercase().starts_with("v=spf1"))
        .collect();
    match records.len() {
        0 => {
            r.fix(
                domain,
                "spf",
                Level::Error,
                "no SPF record: receivers cannot tell this server may send for the domain".into(),
                publish,
            );
            return;
        }
        1 => {}
        n => {
            r.fix(
                domain,
                "spf",
                Level::Error,
                format!("{n} SPF records: RFC 7208 makes that a permerror"),
                publish,
            );
            return;
        }
    }
    let inbound = crate::mailauth::Inbound::new(
        settings.dir.clone(),
        settings.checks.clone(),
        host.to_string(),
        resolver.clone(),
    );
    let sender = format!("postmaster@{domain}");
    for ip in addresses {
        let (results, _) = inbound.spf(*ip, host, &sender).await;
        let result = results.mail_from.result();
        let word = crate::mailauth::spf_word(result);
        if word == "pass" {
            r.add(
                domain,
                "spf",
                Level::Ok,
                format!("\"{}\" passes for {ip}", records[0]),
            );
        } else {
            r.fix(
                domain,
                "spf",
                Level::Error,
                format!("\"{}\" gives {word} for {ip}", records[0]),
                publish.clone(),
            );
        }
    }
}

/// Each key on disk is published, and equal.
async fn check_dkim(r: &mut Report, settings: &Settings, resolver: &Resolver, domain: &str) {
    let keys = match DkimKeys::load(&settings.dir, domain) {
        Ok(keys) => keys,
        Err(e) => {
            r.add(domain, "dkim", Level::Error, e.to_string());
            return;
        }
    };
    if keys.is_empty() {
        r.fix(
            domain,
            "dkim",
            Level::Warning,
            "no DKIM key: submitted mail goes out unsigned, and DMARC rests on SPF alone".into(),
            format!("postern dkim keygen {domain}, then publish the record it prints"),
        );
        return;
    }
    for key in keys.keys() {
        let record = key.dns_record(keys.domain());
        let wanted: String = record.value.split_whitespace().collect();
        let published: Vec<String> = resolver
            .txt(&record.name)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|t| String::from_utf8_lossy(&t).split_whitespace().collect())
            .collect();
        if published.contains(&wanted) {
            r.add(
                domain,
                "dkim",
                Level::Ok,
                format!(
                    "selector {} ({}) is published",
                    key.selector(),
                    key.algorithm()
                ),
            );
        } else if published.is_empty() {
            r.fix(
                domain,
                "dkim",
                Level::Error,
                format!(
                    "selector {} ({}) is not published: receivers cannot verify its signatures",
                    key.selector(),
                    key.algorithm()
                ),
                record.zone_line(),
            );
        } else {
            r.fix(
                domain,
                "dkim",
                Level::Error,
                format!(
                    "selector {} ({}): the published record is another key",
                    key.selector(),
                    key.algorithm()
                ),
                record.zone_line(),
            );
        }
    }
}

/// A DMARC record that parses, its policy and report addresses; a report address in
/// another domain must be authorised there (RFC 7489 7.1).
async fn check_dmarc(
    r: &mut Report,
    settings: &Settings,
    resolver: &Resolver,
    domain: &str,
    local: &[String],
) {
    let name = format!("_dmarc.{domain}");
    let publish =
        format!("{name}. IN TXT \"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}\"");
    let records: Vec<Vec<u8>> = resolver
        .txt(&name)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.to_ascii_lowercase().starts_with(b"v=dmarc1"))
        .collect();
    let Some(record) = records.first() else {
        r.fix(
            domain,
            "dmarc",
            Level::Warning,
            "no DMARC record: receivers such as Gmail want one from bulk senders, and forged \
             mail in the domain's name is not refused"
                .into(),
            publish,
        );
        return;
    };
    match mail_auth::dmarc::Dmarc::parse(record) {
        Ok(dmarc) => {
            use mail_auth::dmarc::Policy;
            let policy = match dmarc.p {
                Policy::None => "none",
                Policy::Quarantine => "quarantine",
                Policy::Reject => "reject",
                _ => "unspecified",
            };
            let reports: Vec<&str> = dmarc.rua.iter().map(|u| u.uri()).collect();
            let level = if dmarc.rua.is_empty() || policy == "none" {
                Level::Warning
            } else {
                Level::Ok
            };
            let message = format!(
                "p={policy}; reports to {}",
                if reports.is_empty() {
                    "nobody (no rua=)".to_string()
                } else {
                    reports.join(", ")
                }
            );
            r.add(domain, "dmarc", level, message);
            let targets = dmarc.rua.iter().chain(dmarc.ruf.iter()).map(|u| u.uri());
            check_report_targets(r, resolver, domain, targets.clone(), local).await;
            // Reports to this server that `postern reports` would not see.
            for target in targets {
                let address = target.trim().to_ascii_lowercase();
                let ours = address
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| local.iter().any(|l| *l == d));
                if ours && !settings.report_addresses.contains(&address) {
                    r.fix(
                        domain,
                        "dmarc",
                        Level::Warning,
                        format!(
                            "reports go to {address}, which [reports] addresses does not list: \
                             they arrive as plain mail, and `postern reports` does not see them"
                        ),
                        format!("[reports] addresses = [\"{address}\"] in postern.toml"),
                    );
                }
            }
        }
        Err(e) => r.fix(
            domain,
            "dmarc",
            Level::Error,
            format!("the record does not parse: {e}"),
            publish,
        ),
    }
}

/// Each report address of `domain`'s DMARC record outside the domain (and its
/// subdomains) needs `<domain>._report._dmarc.<its domain>` TXT "v=DMARC1" there, or
/// receivers send it nothing (RFC 7489 7.1).
async fn check_report_targets(
    r: &mut Report,
    resolver: &Resolver,
    domain: &str,
    targets: impl Iterator<Item = &str>,
    local: &[String],
) {
    let mut seen: Vec<String> = Vec::new();
    for target in targets {
        let Some((_, at)) = target.rsplit_once('@') else {
            continue;
        };
        let at = at.trim_end_matches('.').to_ascii_lowercase();
        if at == domain || at.ends_with(&format!(".{domain}")) || seen.contains(&at) {
            continue;
        }
        seen.push(at.clone());
        let name = format!("{domain}._report._dmarc.{at}");
        let authorised = resolver.txt(&name).await.is_ok_and(|records| {
            records
                .iter()
                .any(|t| t.to_ascii_lowercase().starts_with(b"v=dmarc1"))
        });
        let record = format!("{name}. IN TXT \"v=DMARC1\"");
        if authorised {
            r.add(
                domain,
                "dmarc",
                Level::Ok,
                format!("{at} accepts reports about {domain} ({name})"),
            );
        } else {
            // One of ours: publish it; another's: they must.
            let fix = if local.contains(&at) {
                record
            } else {
                format!("ask the operator of {at} to publish {record}")
            };
            r.fix(
                domain,
                "dmarc",
                Level::Warning,
                format!(
                    "reports go to {target}, in another domain, which has not said it accepts \
                     them: receivers send nothing there"
                ),
                fix,
            );
        }
    }
}

/// TLS-RPT and MTA-STS records, when present; an MTA-STS policy is fetched (with
/// `[delivery] tls_roots` trusted besides the web PKI) and must list the hostname.
async fn check_optional(
    r: &mut Report,
    settings: &Settings,
    resolver: &Arc<Resolver>,
    domain: &str,
    host: &str,
) {
    let txt = |name: String| async move {
        resolver
            .txt(&name)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .collect::<Vec<_>>()
    };
    let tlsrpt = txt(format!("_smtp._tls.{domain}")).await;
    match tlsrpt.iter().find(|t| t.starts_with("v=TLSRPTv1")) {
        Some(t) if t.contains("rua=") => {
            r.add(domain, "tls-rpt", Level::Ok, format!("\"{t}\""));
        }
        Some(t) => r.add(
            domain,
            "tls-rpt",
            Level::Error,
            format!("\"{t}\" has no rua= (where reports go)"),
        ),
        None => r.fix(
            domain,
            "tls-rpt",
            Level::Warning,
            "no TLS-RPT record (optional): senders cannot tell you about TLS failures".into(),
            format!("_smtp._tls.{domain}. IN TXT \"v=TLSRPTv1; rua=mailto:postmaster@{domain}\""),
        ),
    }
    let sts = txt(format!("_mta-sts.{domain}")).await;
    let records: Vec<Vec<u8>> = sts.iter().map(|t| t.as_bytes().to_vec()).collect();
    match sts.iter().find(|t| t.starts_with("v=STSv1")) {
        Some(t) if t.contains("id=") => match crate::tls::mta_sts::policy::txt_id(&records) {
            Ok(id) => check_sts_policy(r, settings, resolver, domain, host, &id).await,
            Err(e) => r.add(domain, "mta-sts", Level::Error, format!("\"{t}\": {e}")),
        },
        Some(t) => r.add(
            domain,
            "mta-sts",
            Level::Error,
            format!("\"{t}\" has no id=: senders ignore it"),
        ),
        None => r.add(
            domain,
            "mta-sts",
            Level::Ok,
            "no MTA-STS record (optional)".into(),
        ),
    }
}

/// The MTA-STS policy of `domain` (TXT record `id`) can be fetched, parses, and lets
/// senders deliver to `host`.
async fn check_sts_policy(
    r: &mut Report,
    settings: &Settings,
    resolver: &Arc<Resolver>,
    domain: &str,
    host: &str,
    id: &str,
) {
    let url = format!("https://mta-sts.{domain}/.well-known/mta-sts.txt");
    let sts = crate::tls::client::load_roots(&settings.delivery.extra_roots)
        .map_err(|e| e.to_string())
        .and_then(|roots| {
            crate::tls::mta_sts::MtaSts::uncached(resolver.clone(), roots)
                .map_err(|e| e.to_string())
        });
    let sts = match sts {
        Ok(sts) => sts.with_port(settings.delivery.mta_sts_port),
        Err(e) => {
            r.add(
                domain,
                "mta-sts",
                Level::Error,
                format!("cannot fetch {url}: {e}"),
            );
            return;
        }
    };
    let policy = match sts.fetch_now(domain, id).await {
        Ok(policy) => policy,
        Err(e) => {
            r.fix(
                domain,
                "mta-sts",
                Level::Error,
                format!("_mta-sts.{domain} announces a policy (id={id}), but {url}: {e}"),
                format!(
                    "serve the policy over HTTPS with a certificate for mta-sts.{domain}, \
                     or remove the _mta-sts.{domain} record"
                ),
            );
            return;
        }
    };
    let mode = policy.mode.as_str();
    let described = format!(
        "policy id={id}: mode {mode}, mx {}, max_age {} s",
        policy.mx.join(", "),
        policy.max_age.as_secs()
    );
    if !policy.allows_mx(host) {
        r.fix(
            domain,
            "mta-sts",
            if policy.mode == crate::tls::mta_sts::policy::Mode::Enforce {
                Level::Error
            } else {
                Level::Warning
            },
            format!("{described}: {host} is not among its mx (in enforce mode, senders will not deliver to it)"),
            format!("add the line \"mx: {host}\" to {url}, then give _mta-sts.{domain} a new id="),
        );
    } else if policy.mode == crate::tls::mta_sts::policy::Mode::None {
        r.add(
            domain,
            "mta-sts",
            Level::Warning,
            format!("{described}: mode none withdraws the policy"),
        );
    } else {
        r.add(domain, "mta-sts", Level::Ok, described);
    }
}

/// The default certificate covers the hostname, and is not about to expire.
fn check_certificate(r: &mut Report, settings: &Settings, host: &str) {
    let store = match crate::tls::certs::load(settings) {
        Ok(store) => store,
        Err(e) => {
            r.add(host, "certificate", Level::Error, e.to_string());
            return;
        }
    };
    let Some((chain, not_after)) = store.default_expiry() else {
        r.add(
            host,
            "certificate",
            Level::Error,
            format!("no certificate holds {host}"),
        );
        return;
    };
    let now = SystemTime::now();
    let left = not_after.duration_since(now).unwrap_or(Duration::ZERO);
    let days = left.as_secs() / 86_400;
    let when = crate::reception::trace::rfc3339(not_after);
    let (level, message) = if left.is_zero() {
        (
            Level::Error,
            format!("{} expired on {when}", chain.display()),
        )
    } else if days < 14 {
        (
            Level::Warning,
            format!(
                "{} expires in {days} days ({when}): is renewal running?",
                chain.display()
            ),
        )
    } else {
        (
            Level::Ok,
            format!(
                "{} holds {host}, valid until {when} ({days} days)",
                chain.display()
            ),
        )
    };
    r.add(host, "certificate", level, message);
}
