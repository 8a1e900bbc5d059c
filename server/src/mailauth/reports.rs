//! DMARC aggregate reports (RFC 7489 7.2), failure reports (RFC 5965, 7489 7.3) and TLS
//! reports (RFC 8460) that other receivers mail
//! to this server's report addresses (`[reports] addresses`): parsed with mail-auth and kept as
//! compact records, one JSON line each, in `<data_dir>/reports/dmarc.jsonl` and `tls.jsonl`,
//! for `postern reports`. A file past [`MAX_FILE`] moves to `<name>.old`, so the records
//! never take more than twice that per kind. The message itself is delivered as its
//! recipients' aliases say.
//!
//! A DMARC report becomes one [`DmarcRow`] per row of the report (a source IP and what the
//! receiver saw of its mail); a TLS report one [`TlsRow`] per policy; a failure report (ARF,
//! the ruf= of DMARC) one [`FailureRow`], in `failures.jsonl`. Attachments are
//! uncompressed (gzip, zip) up to [`MAX_UNCOMPRESSED`] bytes.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The largest uncompressed report read.
pub const MAX_UNCOMPRESSED: usize = 16 * 1024 * 1024;

/// The largest message kept in memory for parsing at reception; larger ones are delivered
/// but not read as reports.
pub const MAX_REPORT_MESSAGE: usize = 8 * 1024 * 1024;

/// The folder, under the data directory.
pub const DIR_NAME: &str = "reports";

/// A records file larger than this is moved to `<name>.old` (replacing the one before) and
/// a new one begun: at most twice this much per kind stays on disk.
pub const MAX_FILE: u64 = 32 * 1024 * 1024;

/// One row of a DMARC aggregate report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmarcRow {
    /// When we received the report (Unix seconds).
    pub received: u64,
    /// The reporting organisation.
    pub org: String,
    /// The report's id.
    pub report_id: String,
    /// The domain the report is about (policy_published).
    pub domain: String,
    /// The period covered (Unix seconds).
    pub begin: u64,
    /// The end of the period.
    pub end: u64,
    /// The sending address.
    pub ip: Option<IpAddr>,
    /// Messages from it.
    pub count: u32,
    /// What the receiver did: none, quarantine, reject.
    pub disposition: String,
    /// DMARC's DKIM result (aligned pass or fail).
    pub dkim: String,
    /// DMARC's SPF result (aligned pass or fail).
    pub spf: String,
    /// The header From domain.
    pub header_from: String,
    /// The envelope sender's domain, when given.
    pub envelope_from: String,
    /// Each DKIM signature: `domain result`.
    pub dkim_results: Vec<String>,
    /// Each SPF check: `domain result`.
    pub spf_results: Vec<String>,
    /// Why the policy was not applied, when it was not (forwarded, mailing_list...).
    pub overrides: Vec<String>,
}

impl DmarcRow {
    /// Whether DMARC passed for these messages (DKIM or SPF aligned and passing).
    pub fn passes(&self) -> bool {
        self.dkim == "pass" || self.spf == "pass"
    }
}

/// One policy of a TLS report: sessions to our MX hosts, as a sender saw them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsRow {
    /// When we received the report (Unix seconds).
    pub received: u64,
    /// The reporting organisation.
    pub org: String,
    /// The report's id.
    pub report_id: String,
    /// The period covered (Unix seconds).
    pub begin: u64,
    /// The end of the period.
    pub end: u64,
    /// The policy's kind: sts, tlsa, no-policy-found.
    pub policy: String,
    /// The domain the policy is for.
    pub domain: String,
    /// Sessions that succeeded.
    pub successes: u32,
    /// Sessions that failed.
    pub failures: u32,
    /// Each failure: result type, receiving MX, sending IP, sessions.
    pub failure_details: Vec<TlsFailure>,
}

/// One failure detail of a [`TlsRow`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFailure {
    /// RFC 8460 4.3's result type (starttls-not-supported, certificate-expired...).
    pub result: String,
    /// The MX host the sender tried.
    pub mx: Option<String>,
    /// The sender's address.
    pub sending_ip: Option<IpAddr>,
    /// Sessions that failed so.
    pub sessions: u32,
}

/// What a message to a report address turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A DMARC aggregate report's rows.
    Dmarc(Vec<DmarcRow>),
    /// A TLS report's policies.
    Tls(Vec<TlsRow>),
    /// A failure report (ARF, RFC 5965; DMARC's ruf=, RFC 7489 7.3).
    Failure(FailureRow),
}

/// A failure report: one message (or several alike) that failed at a receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRow {
    /// When we received the report (Unix seconds).
    pub received: u64,
    /// The feedback type: auth-failure, abuse, fraud...
    pub feedback: String,
    /// For auth-failure: what failed (dmarc, dkim, spf, bodyhash, revoked...).
    pub auth_failure: String,
    /// The sending address.
    pub source_ip: Option<IpAddr>,
    /// The domain reported (the first `Reported-Domain`).
    pub domain: String,
    /// The envelope sender of the failed message.
    pub mail_from: Option<String>,
    /// The envelope recipient.
    pub rcpt_to: Option<String>,
    /// When it arrived at the receiver (Unix seconds).
    pub arrival: Option<i64>,
    /// The DKIM signature's domain and selector, for a DKIM failure.
    pub dkim: Option<String>,
    /// The receiver's MTA.
    pub reporting_mta: Option<String>,
    /// How many messages alike.
    pub incidents: u32,
}

/// Why a message to a report address was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotKept {
    /// It is not a DMARC, TLS or failure report.
    NotAReport,
    /// It could not be written (the log line says why).
    Write,
}

impl Parsed {
    /// For the log: the kind (dmarc, tls, failure), the reporting organisation (or MTA) and
    /// the domain reported on, when the report names them.
    pub fn summary(&self) -> (&'static str, Option<String>, Option<String>) {
        match self {
            Parsed::Dmarc(rows) => (
                "dmarc",
                rows.first().map(|r| r.org.clone()),
                rows.first().map(|r| r.domain.clone()),
            ),
            Parsed::Tls(rows) => (
                "tls",
                rows.first().map(|r| r.org.clone()),
                rows.first().map(|r| r.domain.clone()),
            ),
            Parsed::Failure(row) => (
                "failure",
                row.reporting_mta.clone(),
                Some(row.domain.clone()).filter(|d| !d.is_empty()),
            ),
        }
    }
}

/// A message received at a report address (queue id `id`): read as a report ([`parse`]) and
/// its rows kept ([`keep`]), with a `report` log line either way (blocking). Returns how many
/// rows were kept.
pub fn receive(
    data_dir: &Path,
    id: &impl std::fmt::Display,
    message: &[u8],
) -> Result<usize, NotKept> {
    use crate::log::{self, Event};
    let now = crate::queue::timers::unix_now();
    let line = log::line(Event::Report).field("id", id);
    let Some(parsed) = parse(message, now) else {
        line.text("msg", "sent to a report address, but not a report")
            .write();
        return Err(NotKept::NotAReport);
    };
    let (kind, org, domain) = parsed.summary();
    let line = line
        .field("kind", kind)
        .text("org", org.unwrap_or_default())
        .field("domain", domain.unwrap_or_else(|| "-".into()));
    match keep(data_dir, &parsed) {
        Ok((path, n)) => {
            line.field("rows", n).field("file", path.display()).write();
            Ok(n)
        }
        Err(e) => {
            line.text("error", format_args!("cannot keep it: {e}"))
                .write();
            Err(NotKept::Write)
        }
    }
}

/// A lower-case word for a mail-auth enum (its `Debug` name).
fn word(value: impl std::fmt::Debug) -> String {
    let text = format!("{value:?}");
    let mut out = String::with_capacity(text.len() + 2);
    for (i, c) in text.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The name RFC 8460 gives a TLS report value (its serde name in mail-auth).
fn rfc_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "other".into(),
    }
}

/// Reads `message` (RFC 5322, as received) as a DMARC aggregate report, else a TLS report.
/// `None`: neither (the message is still delivered).
pub fn parse(message: &[u8], received: u64) -> Option<Parsed> {
    use mail_auth::report::Report;
    use mail_auth::report::tlsrpt::TlsReport;
    if let Ok(report) = Report::parse_rfc5322(message, MAX_UNCOMPRESSED) {
        return Some(Parsed::Dmarc(dmarc_rows(&report, received)));
    }
    if let Ok(report) = TlsReport::parse_rfc5322(message, MAX_UNCOMPRESSED) {
        return Some(Parsed::Tls(tls_rows(&report, received)));
    }
    let feedback = mail_auth::report::Feedback::parse_rfc5322(message).ok()?;
    Some(Parsed::Failure(failure_row(&feedback, received)))
}

/// The row of a failure report.
pub fn failure_row(f: &mail_auth::report::Feedback<'_>, received: u64) -> FailureRow {
    let text = |v: Option<&str>| v.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
    FailureRow {
        received,
        feedback: word(f.feedback_type()),
        auth_failure: word(f.auth_failure()),
        source_ip: f.source_ip(),
        domain: f
            .reported_domain()
            .first()
            .map(|d| d.trim().to_ascii_lowercase())
            .unwrap_or_default(),
        mail_from: text(f.original_mail_from()),
        rcpt_to: text(f.original_rcpt_to()),
        arrival: f.arrival_date(),
        dkim: match (f.dkim_domain(), f.dkim_selector()) {
            (Some(d), Some(s)) => Some(format!("d={d} s={s}")),
            (Some(d), None) => Some(format!("d={d}")),
            _ => None,
        },
        reporting_mta: text(f.reporting_mta()),
        incidents: f.incidents(),
    }
}

/// The rows of a DMARC aggregate report.
pub fn dmarc_rows(report: &mail_auth::report::Report, received: u64) -> Vec<DmarcRow> {
    report
        .records()
        .iter()
        .map(|r| DmarcRow {
            received,
            org: report.org_name().to_string(),
            report_id: report.report_id().to_string(),
            domain: report.domain().to_ascii_lowercase(),
            begin: report.date_range_begin(),
            end: report.date_range_end(),
            ip: r.source_ip(),
            count: r.count(),
            disposition: word(r.action_disposition()),
            dkim: word(r.dmarc_dkim_result()),
            spf: word(r.dmarc_spf_result()),
            header_from: r.header_from().to_ascii_lowercase(),
            envelope_from: r.envelope_from().to_ascii_lowercase(),
            dkim_results: r
                .dkim_auth_result()
                .iter()
                .map(|d| format!("{} {}", d.domain(), word(d.result())))
                .collect(),
            spf_results: r
                .spf_auth_result()
                .iter()
                .map(|s| format!("{} {}", s.domain(), word(s.result())))
                .collect(),
            overrides: r
                .policy_override_reason()
                .iter()
                .map(|o| word(o.type_))
                .collect(),
        })
        .collect()
}

/// The policies of a TLS report.
pub fn tls_rows(report: &mail_auth::report::tlsrpt::TlsReport, received: u64) -> Vec<TlsRow> {
    let begin = u64::try_from(report.date_range.start_datetime.to_timestamp()).unwrap_or(0);
    let end = u64::try_from(report.date_range.end_datetime.to_timestamp()).unwrap_or(0);
    report
        .policies
        .iter()
        .map(|p| TlsRow {
            received,
            org: report.organization_name.clone().unwrap_or_default(),
            report_id: report.report_id.clone(),
            begin,
            end,
            policy: rfc_name(&p.policy.policy_type),
            domain: p.policy.policy_domain.to_ascii_lowercase(),
            successes: p.summary.total_success,
            failures: p.summary.total_failure,
            failure_details: p
                .failure_details
                .iter()
                .map(|f| TlsFailure {
                    result: rfc_name(&f.result_type),
                    mx: f.receiving_mx_hostname.clone(),
                    sending_ip: f.sending_mta_ip,
                    sessions: f.failed_session_count,
                })
                .collect(),
        })
        .collect()
}

/// What every kind of record says of itself: the domain reported on and when we got it.
pub trait Row: Serialize + for<'de> Deserialize<'de> {
    /// The file of this kind.
    const KIND: Kind;
    /// The domain the report is about.
    fn domain(&self) -> &str;
    /// When we received the report (Unix seconds).
    fn received(&self) -> u64;
}

macro_rules! row {
    ($type:ty, $kind:expr) => {
        impl Row for $type {
            const KIND: Kind = $kind;
            fn domain(&self) -> &str {
                &self.domain
            }
            fn received(&self) -> u64 {
                self.received
            }
        }
    };
}
row!(DmarcRow, Kind::Dmarc);
row!(TlsRow, Kind::Tls);
row!(FailureRow, Kind::Failure);

/// The kinds of records, each in its own file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// DMARC aggregate report rows: `dmarc.jsonl`.
    Dmarc,
    /// TLS report policies: `tls.jsonl`.
    Tls,
    /// Failure reports (ARF): `failures.jsonl`.
    Failure,
}

/// `<data_dir>/reports/<kind>.jsonl`.
pub fn file(data_dir: &Path, kind: Kind) -> PathBuf {
    data_dir.join(DIR_NAME).join(match kind {
        Kind::Dmarc => "dmarc.jsonl",
        Kind::Tls => "tls.jsonl",
        Kind::Failure => "failures.jsonl",
    })
}

/// Appends what `parsed` holds to its file (blocking). Returns the file and how many records.
pub fn keep(data_dir: &Path, parsed: &Parsed) -> std::io::Result<(PathBuf, usize)> {
    fn lines<T: Serialize>(rows: &[T]) -> Vec<String> {
        rows.iter()
            .filter_map(|r| serde_json::to_string(r).ok())
            .collect()
    }
    let (path, lines) = match parsed {
        Parsed::Dmarc(rows) => (file(data_dir, Kind::Dmarc), lines(rows)),
        Parsed::Tls(rows) => (file(data_dir, Kind::Tls), lines(rows)),
        Parsed::Failure(row) => (
            file(data_dir, Kind::Failure),
            lines(std::slice::from_ref(row)),
        ),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > MAX_FILE) {
        std::fs::rename(&path, old_file(&path))?;
    }
    let mut text = String::new();
    for line in &lines {
        text.push_str(line);
        text.push('\n');
    }
    // One write in append mode: lines of two reports never interleave.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?
        .write_all(text.as_bytes())?;
    Ok((path, lines.len()))
}

/// The file a full records file is moved to: `<name>.old`.
fn old_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".old");
    PathBuf::from(name)
}

/// Every record of one kind kept under `data_dir` (the older file first); lines that do not
/// parse are skipped.
pub fn read<T: Row>(data_dir: &Path) -> std::io::Result<Vec<T>> {
    let current = file(data_dir, T::KIND);
    let mut rows = Vec::new();
    for path in [old_file(&current), current] {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        rows.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../conformance/suites/dmarc/reports")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// mail-auth's sample reports (zip, gzip and plain XML attachments, from several
    /// receivers) all parse into rows.
    #[test]
    fn real_dmarc_reports_parse_into_rows() {
        for name in ["100.eml", "101.eml", "102.eml", "103.eml", "104.eml"] {
            let message = suite(&format!("mail-auth/{name}"));
            let Some(Parsed::Dmarc(rows)) = parse(&message, 1) else {
                panic!("{name} is not read as a DMARC report");
            };
            assert!(!rows.is_empty(), "{name}");
            for row in &rows {
                assert!(
                    !row.org.is_empty() && !row.domain.is_empty(),
                    "{name}: {row:?}"
                );
                assert!(row.ip.is_some() && row.count > 0, "{name}: {row:?}");
                assert!(
                    ["pass", "fail"].contains(&row.dkim.as_str()),
                    "{name}: {row:?}"
                );
            }
        }
    }

    /// OpenDMARC's XML reports, read by mail-auth's XML parser.
    #[test]
    fn opendmarc_xml_reports_give_their_rows() {
        let xml = suite("opendmarc/yeah.net_example.com_1337270400_1337356799.20120518.xml");
        let report = mail_auth::report::Report::parse_xml(&xml).expect("parses");
        let rows = dmarc_rows(&report, 7);
        assert!(!rows.is_empty());
        assert_eq!(rows[0].domain, "example.com");
        assert_eq!(rows[0].org, "yeah.net");
        assert_eq!(rows[0].received, 7);
    }

    /// A TLS report (ours, from RFC 8460's example) with one failure.
    #[test]
    fn a_tls_report_gives_its_policies_and_failures() {
        let message = suite("postern/tlsrpt-failure.eml");
        let Some(Parsed::Tls(rows)) = parse(&message, 1) else {
            panic!("not read as a TLS report");
        };
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(
            (row.domain.as_str(), row.policy.as_str()),
            ("example.org", "sts")
        );
        assert_eq!((row.successes, row.failures), (5326, 303));
        assert_eq!(row.failure_details[0].result, "certificate-expired");
        assert_eq!(row.failure_details[0].mx.as_deref(), Some("mx.example.org"));
    }

    /// mail-auth's failure reports: the rows agree with mail-auth's own expected values.
    #[test]
    fn failure_reports_give_their_row() {
        for name in ["002", "003", "004", "005"] {
            let message = suite(&format!("mail-auth-arf/{name}.eml"));
            let want: serde_json::Value =
                serde_json::from_slice(&suite(&format!("mail-auth-arf/{name}.json")))
                    .expect("json");
            let Some(Parsed::Failure(row)) = parse(&message, 1) else {
                panic!("{name} is not read as a failure report");
            };
            assert_eq!(
                row.source_ip.map(|ip| ip.to_string()),
                want["source_ip"].as_str().map(str::to_string),
                "{name}"
            );
            assert_eq!(
                row.domain,
                want["reported_domain"][0].as_str().unwrap_or(""),
                "{name}"
            );
            let spelled = |v: &serde_json::Value| {
                v.as_str()
                    .unwrap_or("")
                    .to_ascii_lowercase()
                    .replace(['-', '_'], "")
            };
            assert_eq!(
                row.feedback.replace('-', ""),
                spelled(&want["feedback_type"]),
                "{name}"
            );
            assert_eq!(
                row.auth_failure.replace('-', ""),
                spelled(&want["auth_failure"]),
                "{name}"
            );
        }
    }

    /// A full file moves aside, and both are read.
    #[test]
    fn a_full_file_moves_aside_and_is_still_read() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let parsed = parse(&suite("mail-auth/100.eml"), 9).expect("a report");
        let (path, n) = keep(tmp.path(), &parsed).expect("keep");
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.set_len(MAX_FILE + 1).expect("grow");
        // Padding of NULs is one line that does not parse: skipped.
        keep(tmp.path(), &parsed).expect("keep");
        assert!(old_file(&path).exists());
        assert!(std::fs::metadata(&path).expect("new file").len() < 4096);
        let rows: Vec<DmarcRow> = read(tmp.path()).expect("read");
        assert_eq!(rows.len(), 2 * n);
    }

    /// A plain message is neither.
    #[test]
    fn other_mail_is_not_a_report() {
        assert_eq!(parse(b"Subject: hi\r\n\r\nhello\r\n", 1), None);
    }

    /// Records kept are read back; two kinds in two files.
    #[test]
    fn kept_records_are_read_back() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let parsed = parse(&suite("mail-auth/100.eml"), 9).expect("a report");
        let (path, n) = keep(tmp.path(), &parsed).expect("keep");
        assert!(path.ends_with("reports/dmarc.jsonl"));
        let rows: Vec<DmarcRow> = read(tmp.path()).expect("read");
        assert_eq!(rows.len(), n);
        assert_eq!(Parsed::Dmarc(rows), parsed);
        assert!(read::<TlsRow>(tmp.path()).expect("read").is_empty());
    }
}
