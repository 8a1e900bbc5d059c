//! The embedded default: what `serve` creates in an empty configuration directory.
//!
//! A directory without `postern.toml` gets [`DEFAULT_CONFIG`] (hostname `localhost`, loopback
//! listeners only), a self-signed certificate for `localhost` in the certbot layout
//! (`certs/localhost/fullchain.pem` and `privkey.pem`), and `domains/localhost/`, so that
//! `postern serve` works out of the box and cannot be reached from the network until edited,
//! and a `.gitignore` for what a repository of the directory must not hold ([`GITIGNORE`]).
//! State goes to the sibling `<name>-state` directory (`config::default_data_dir`).
//! Existing files are never overwritten.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::config::{ConfigError, FILE_NAME};

/// The generated `postern.toml`. It documents every key.
pub const DEFAULT_CONFIG: &str = r#"# postern.toml: the configuration of the postern SMTP server.
#
# Generated on first run. Relative paths are resolved against the directory holding this
# file. An unknown key is an error, so a misspelt key cannot silently fall back to a default.
#
# Other files in this directory:
#   certs/<name>/fullchain.pem   TLS certificate chain and key, in the layout certbot uses
#   certs/<name>/privkey.pem     (/etc/letsencrypt/live/<name>/; certs/ may be a symlink to
#                                live/ itself), or in the acme.sh layout:
#   certs/<domain>_ecc/fullchain.cer and certs/<domain>_ecc/<domain>.key (also without _ecc).
#                                A certificate is served for the names it holds (SNI,
#                                wildcards too); the one holding the hostname is the default.
#                                Renewed files are picked up without a restart.
#   domains/<domain>/            one directory per local domain: mail to it is accepted here.
#   domains/<domain>/users       the domain's users, one per line: "address password flags",
#                                the password an Argon2id PHC string or "-" (no login), the
#                                flag "receive-only" for a mailbox that cannot send; lines
#                                starting with # are comments. Edit it with `postern user`
#                                (add, remove, list, passwd, check); changes apply at once.
#                                A user also exists when <data_dir>/mail/<domain>/<user>/ does.
#                                postmaster@<domain> always takes mail (RFC 5321 4.5.1):
#                                its alias, user or the catch-all first, else its Maildir.

# This server's name: used in the greeting, the EHLO reply and Received: headers.
# certs/<hostname>/ holds the default certificate.
hostname = "localhost"

# Where mail and the queue live. Mail for alice@example.org is delivered to the Maildir
# <data_dir>/mail/example.org/alice/; the queue (messages accepted and not yet delivered)
# is the database in <data_dir>/queue/; the SRS key, the TLS memory and the MTA-STS cache
# are there too. Without this key: /var/lib/postern for /etc/postern, else the directory
# beside this one named "<this directory's name>-state" (postern-data-state), so that this
# directory can be kept in git without any of it (see .gitignore). A relative path is
# relative to this directory.
# data_dir = "/var/lib/postern"

# The largest message accepted, in bytes; advertised with SIZE (RFC 1870).
# 52428800 bytes = 50 MiB.
max_message_size = 52428800

# Bytes to keep free on the file system of data_dir: below this, new mail is refused with
# "452 4.3.1 Insufficient system storage" (and the log says so) until space is freed, so the
# queue never fills the disk and deliveries still have room. A message's SIZE= counts too.
# Without this key: twice max_message_size. 0: no reserve.
# min_free_space = 104857600

# Timeouts, in seconds: for a whole command line (a client that sends it a byte at a time
# does not get more), for the next piece of message data, and for a whole session however
# active. RFC 5321 (4.5.3.2) asks for at least 5 minutes for the first two. Inside DATA and
# BDAT the client must also keep up min_data_rate (octets per second; each octet earns
# 1/min_data_rate s more, up to data_timeout; 0: no minimum). A session that runs out of
# time gets "421 4.4.2 <hostname> Timeout". A TLS handshake (port 465, or after STARTTLS)
# gets tls_handshake_timeout.
command_timeout = 300
data_timeout = 300
min_data_rate = 500
session_timeout = 3600
tls_handshake_timeout = 20

# The most connections open at once on each kind of listener (smtp, submission and
# submissions each have their own: a flood on port 25 never takes the submission ports'
# slots; [listeners] max_connections = { smtp = 2000 } sets one kind apart), and from one
# client IP address on one kind of listener. Loopback, the networks listed in
# max_connections_per_ip_exempt (default: loopback) and [relay] trusted_networks are not
# held to the per-address limit. Connections over a limit are answered
# "421 4.7.0 <hostname> Too many connections, try later" and closed.
max_connections = 1000
max_connections_per_ip = 50
# max_connections_per_ip_exempt = ["127.0.0.0/8", "::1/128"]

# After SIGTERM, postern stops accepting and gives the connections already open this many
# seconds to finish before it exits. A message is only acknowledged (250) once it is on disk.
shutdown_grace = 30

# How often, in seconds, certs/ is checked for renewed certificates (0: never; SIGHUP
# reloads them too). New connections get the new certificate; a broken new file keeps the
# old one, and the log says which file and why.
tls_reload_interval = 5

# SIGHUP reloads this file and certs/: limits, timeouts, max_message_size, the hostname and
# the certificates apply to connections accepted afterwards; listeners and data_dir need a
# restart (the log says so). A broken file is refused, the log names its line, and the
# running configuration is kept.

# Addresses to listen on, for each role: lists of "address:port", IPv4 ("0.0.0.0:25") or
# IPv6 ("[::]:25"). An empty list, or a missing key, turns the role off.
[listeners]
# Mail exchange (port 25): accepts mail for local domains from anyone. STARTTLS is offered;
# AUTH only under TLS.
smtp = ["127.0.0.1:2525"]
# Message submission (RFC 6409, port 587): STARTTLS offered; AUTH required before MAIL.
submission = ["127.0.0.1:2587"]
# Message submission over implicit TLS (RFC 8314, port 465): AUTH required before MAIL.
submissions = ["127.0.0.1:2465"]

# Logins (AUTH PLAIN and LOGIN), checked against domains/<domain>/users.
[auth]
# Also offer AUTH on the smtp listeners (only under TLS). Users normally log in on submission.
smtp_listener = false
# Allow AUTH without TLS on listeners bound to a loopback address (127.0.0.1, ::1). For tests
# only: never turn this on for a server others use.
allow_plaintext_on_loopback = false
# Brute-force defence: failed logins are counted per client network (an IPv4 address, an
# IPv6 /64) and per user name. From this many failures of either on, each failed reply is
# delayed by failure_delay_ms milliseconds...
delay_after_failures = 3
failure_delay_ms = 2000
# ...and at this many from one network, logins from that network are refused (454 4.7.0)
# until lockout_seconds have passed since its last failure. A user is never locked out for
# everyone: guesses from elsewhere only slow them down. Failures older than that are forgotten.
lockout_after_failures = 10
lockout_seconds = 900
# The shortest password `postern user add` and `postern user passwd` accept, in characters.
min_password_length = 8

# Relaying. Without AUTH, mail is accepted only for the local domains (domains/<domain>/).
[relay]
# Networks (CIDR) whose clients may send to other domains without AUTH, e.g.
# ["192.0.2.0/24", "2001:db8::/32"]. Empty: nobody.
trusted_networks = []
# An authenticated user's message whose header From is not an address they may send as
# (see [senders]): "reject" (550 5.7.1) or "allow".
header_from = "reject"

# Metrics in the OpenMetrics text format (Prometheus) at http://<listen>/metrics: counters of
# messages, deliveries, DSNs and logins, and gauges of sessions, the queue and the
# certificate's expiry. Off without this key; loopback addresses only.
[metrics]
# listen = "127.0.0.1:9925"

# The recursive DNS resolvers asked for outbound mail and for the [checks], as
# "address:port", e.g. ["127.0.0.1:53", "[::1]:53"]. Empty: the nameserver lines of
# /etc/resolv.conf.
[dns]
nameservers = []

# Aliases (domains/<domain>/aliases) and forwarding.
[aliases]
# Characters ignored in local parts when looking up aliases and users ("j.doe" is "jdoe").
drop_characters = "."
# Characters that start a suffix ("bob+news" is "bob" when there is no "bob+news").
suffix_separators = "+"
# Forwarded mail gets an SRS sender (SRS0=...@your.domain) so that SPF passes at the next
# hop; bounces to it are accepted for this many days. The key is <data_dir>/srs.key.
srs_max_age_days = 21

# Outbound delivery: mail from authenticated users to other domains, and bounces.
[delivery]
# Which address family to try first: "ipv6" (then IPv4), "ipv4" (then IPv6), "ipv6-only"
# or "ipv4-only".
ip_preference = "ipv6"
# Source addresses for outbound connections, one per family (default: the system's choice).
# source_ipv4 = "192.0.2.10"
# source_ipv6 = "2001:db8::10"
# Connections open at once, overall and to one destination domain.
max_connections = 20
max_connections_per_domain = 4
# Seconds one connection attempt may take.
connect_timeout = 30
# Retries: the first after first_retry seconds, each later one twice as far, at most
# max_retry_interval apart; after give_up_after seconds in the queue the message bounces.
first_retry = 300
max_retry_interval = 4000
give_up_after = 432000
# Send the sender a delay warning after this many seconds (commented out: never).
# delay_warning_after = 14400
# Extra CA certificates (PEM files, relative to this directory) trusted for outbound TLS
# and MTA-STS, besides the web PKI roots.
tls_roots = []
# Look up and enforce MTA-STS policies (RFC 8461).
mta_sts = true
# The port of remote mail exchangers. Only tests and unusual setups change it.
mx_port = 25

# Static routes: where mail for a domain goes instead of its MX hosts; "*" is a smarthost
# for every other domain. A value is "host:port" or a table:
#   "example.com" = "mx.internal.example:25"
#   "*" = { host = "smtp.provider.example:587", tls = "required", user = "me",
#           password_file = "smarthost.secret" }
# tls is "opportunistic" (default), "required", "verified" (the certificate must verify for
# the host name) or "implicit" (TLS from the first byte, as on port 465).
[routes]

# How local mail is put into mailboxes, per domain or per address (an address wins over its
# domain). Without an entry: the Maildir <data_dir>/mail/<domain>/<user>/. A value is one of:
#   { lmtp = "unix:/run/dovecot/lmtp" }   an LMTP server (RFC 2033), e.g. Dovecot's, on a Unix
#   { lmtp = "127.0.0.1:24" }             socket ("unix:/path" or "/path") or at "ip:port";
#                                         the recipients of a message go in one transaction
#   { command = "/usr/bin/procmail -d %to_user%", timeout = 60 }
#                                         a program reading the message on its standard input
#   { maildir = true }                    the default, e.g. for one address of an LMTP domain
# A command line is split into words at spaces; '...' and "..." group words; no shell runs
# it (write /bin/sh -c '...' for one); the program is an absolute path or a name found in
# /usr/bin or /bin. In each word %from% (the sender; MAILER-DAEMON for <>), %to%, %to_user%
# and %to_domain% are replaced. It gets the message on its standard input with LF line
# ends, and runs with PATH=/usr/bin:/bin, SENDER and RECIPIENT set, in /, as the user
# running postern, for at most timeout seconds (default 300), then its process group is
# killed. Exit status 0 delivers; 75 (EX_TEMPFAIL), a signal, the timeout or a program that
# cannot start defer (tried again later); any other status bounces at once. An LMTP 5xx
# reply bounces at once; 4xx or no connection defers. Pipe aliases ("user: | command args"
# in domains/<domain>/aliases) run the same way, with %to% the alias. Changes here need a
# restart. Example:
#   "example.org" = { lmtp = "unix:/run/dovecot/lmtp" }
#   "bob@example.org" = { command = "/usr/bin/procmail -d %to_user%", timeout = 60 }
[mailboxes]

# Checks of mail arriving on the smtp listeners from other servers (not of authenticated
# users, nor of clients in [relay] trusted_networks): SPF (RFC 7208) of the HELO and MAIL FROM
# identities at MAIL; DKIM (RFC 6376) of every signature, the ARC chain (RFC 8617) and DMARC
# (RFC 7489) of the header From domain at the end of data. The results are added to the
# message as one Authentication-Results field (authserv-id: hostname) and a Received-SPF
# field; Authentication-Results fields claiming to come from this hostname are removed.
# (Outgoing mail of authenticated users is DKIM-signed with every key in
# domains/<domain>/dkim/<selector>.pem of the header From domain; see `postern dkim`.)
[checks]
# Run the checks at all.
enabled = true
# An SPF "fail" of the MAIL FROM identity: "reject" (550 5.7.23) or "mark".
spf_fail = "reject"
# A DMARC failure where the domain publishes p=reject: "reject" (550 5.7.1) or "mark".
dmarc_reject = "reject"
# A DMARC failure where the domain publishes p=quarantine: "mark" or "reject".
dmarc_quarantine = "mark"
# A DNS temporary error during SPF or DMARC: "accept" the message (the results say
# temperror) or "defer" it (451 4.4.3, the sender retries). Never a permanent refusal.
temperror = "accept"

# DMARC aggregate reports (the rua= of your DMARC records) and TLS reports (the rua= of
# _smtp._tls) that other receivers mail to these addresses are read and kept for
# `postern reports` (in <data_dir>/reports/); the messages are still delivered as the
# aliases say. E.g. ["dmarc@example.org", "tlsrpt@example.org"].
[reports]
addresses = []
# false: keep the reports only, without delivering them (mail to these addresses that is not
# a report is then refused with 550 5.6.0).
deliver = true

# What authenticated users may send as, besides their own address (and its +suffix forms),
# in MAIL FROM and in the header From and Sender: "user" = [domains or addresses, or "<>"
# for the null sender of bounces and auto-replies, which nobody has unless granted]. Example:
#   "alice@example.org" = ["example.net", "bob@example.org", "<>"]
[senders]
"#;

/// The `.gitignore` of a new configuration directory: what a repository of it must not
/// hold (README, "Keep the configuration in git").
pub const GITIGNORE: &str = "\
# postern: what a git repository of this directory must not hold.
# TLS certificates and their private keys: certbot or acme.sh makes them again.
certs/
# DKIM private keys: secret. Copy them by hand to a new server (their public halves are in
# DNS, and a new key needs a new record).
domains/*/dkim/*.pem
# Passwords, such as a smarthost's password_file.
*.secret
# State, when data_dir points inside this directory.
queue/
queue.damaged-*
mail/
srs.key
tls-domains
mta-sts
";

/// The `postern.toml` that `postern init` writes for a real server named `hostname`: the
/// embedded default's documented file, with that hostname and the standard ports on every
/// IPv4 and IPv6 address.
pub fn production_config(hostname: &str) -> String {
    [
        (
            "# Generated on first run.",
            "# Generated by `postern init`.".to_string(),
        ),
        (
            "hostname = \"localhost\"",
            format!("hostname = \"{hostname}\""),
        ),
        (
            "smtp = [\"127.0.0.1:2525\"]",
            "smtp = [\"0.0.0.0:25\", \"[::]:25\"]".to_string(),
        ),
        (
            "submission = [\"127.0.0.1:2587\"]",
            "submission = [\"0.0.0.0:587\", \"[::]:587\"]".to_string(),
        ),
        (
            "submissions = [\"127.0.0.1:2465\"]",
            "submissions = [\"0.0.0.0:465\", \"[::]:465\"]".to_string(),
        ),
    ]
    .into_iter()
    .fold(DEFAULT_CONFIG.to_string(), |text, (from, to)| {
        debug_assert!(text.contains(from), "{from}");
        text.replacen(from, &to, 1)
    })
}

/// The host name of the embedded default.
const DEFAULT_HOSTNAME: &str = "localhost";

/// Creates the embedded default in `dir` unless `dir` already holds a `postern.toml`.
/// Returns whether it did.
pub fn create_default(dir: &Path) -> Result<bool, ConfigError> {
    let file = dir.join(FILE_NAME);
    if file.exists() {
        return Ok(false);
    }
    let fail = |path: &Path, what: &str, e: std::io::Error| ConfigError {
        file: path.to_path_buf(),
        line: None,
        message: format!("cannot create the default {what}: {e}"),
        fix: "create the directory and make it writable, or choose another with -C DIR".into(),
    };
    fs::create_dir_all(dir).map_err(|e| fail(dir, "configuration directory", e))?;

    let domain = dir.join("domains").join(DEFAULT_HOSTNAME);
    fs::create_dir_all(&domain).map_err(|e| fail(&domain, "domain directory", e))?;

    let certs = dir.join("certs").join(DEFAULT_HOSTNAME);
    if !certs.join("fullchain.pem").exists() {
        fs::create_dir_all(&certs).map_err(|e| fail(&certs, "certificate directory", e))?;
        let (cert, key) = self_signed(DEFAULT_HOSTNAME).map_err(|e| ConfigError {
            file: certs.clone(),
            line: None,
            message: format!("cannot generate a self-signed certificate: {e}"),
            fix: "put fullchain.pem and privkey.pem for the host name there yourself".into(),
        })?;
        write_new(&certs.join("privkey.pem"), key.as_bytes(), 0o600)
            .map_err(|e| fail(&certs, "private key", e))?;
        write_new(&certs.join("fullchain.pem"), cert.as_bytes(), 0o644)
            .map_err(|e| fail(&certs, "certificate", e))?;
    }

    let ignore = dir.join(".gitignore");
    if !ignore.exists() {
        write_new(&ignore, GITIGNORE.as_bytes(), 0o644)
            .map_err(|e| fail(&ignore, ".gitignore", e))?;
    }

    // The configuration file last: its presence marks the directory as set up.
    write_new(&file, DEFAULT_CONFIG.as_bytes(), 0o644)
        .map_err(|e| fail(&file, "postern.toml", e))?;
    Ok(true)
}

/// A self-signed certificate and its key for `name`, both PEM.
pub fn self_signed(name: &str) -> Result<(String, String), rcgen::Error> {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()])?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

/// Writes a file that must not exist yet, with `mode`, and syncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn creates_a_working_default_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("postern-data");
        assert!(create_default(&dir).expect("created"));
        assert!(dir.join("domains/localhost").is_dir());
        assert!(dir.join("certs/localhost/fullchain.pem").is_file());
        let settings = Settings::load(&dir).expect("parses");
        crate::tls::certs::load(&settings).expect("certificate loads");
        // A second run keeps what is there.
        fs::write(dir.join(FILE_NAME), "hostname = \"edited\"\n").expect("edit");
        assert!(!create_default(&dir).expect("no-op"));
        assert_eq!(
            fs::read_to_string(dir.join(FILE_NAME)).expect("read"),
            "hostname = \"edited\"\n"
        );
    }
}
