//! Alias files (`domains/<domain>/aliases`) and alias resolution, without I/O.
//!
//! The format is chasquid's, so an operator can bring their files unchanged. This module parses
//! the text the caller read ([`AliasTable::parse`]) and resolves an address against the tables
//! of every local domain ([`resolve`]); whether a user exists is asked of the caller through a
//! callback. Nothing here reads a file or the clock.
//!
//! # The file
//!
//! One file per local domain, one alias per line:
//!
//! ```text
//! # A comment. Blank lines are ignored too.
//! sales: alice
//! team: alice, bob@partner.example, sales
//! archive: | /usr/local/bin/archive --all
//! backup: ops@example.net via mx1.example.net/mx2.example.net
//! *: postmaster
//! ```
//!
//! - Blank lines and lines whose first non-blank character is `#` are ignored. `#` elsewhere
//!   is not a comment (it is a valid character of a local part): `a: b # c` is an error.
//!   Blanks around the `:`, the `,` and at both ends of a line are ignored; `\n` and `\r\n`
//!   both end a line.
//! - The left side is a user of the file's domain, without `@domain` (an `@` there is an
//!   error). It is normalised as a recipient is: lower case, Unicode NFC, and the *drop
//!   characters* removed up to the first *suffix separator* (see below). So with the default
//!   options `John.Doe:` and `johndoe:` are the same key. `*` is the catch-all.
//! - The right side is either a pipe or a list of targets separated by commas:
//!   - `| command args`: the message is piped to the command. The command and its arguments
//!     are separated by blanks; there is no quoting, escaping or substitution
//!     ([`Destination::Pipe`], [`Destination::argv`]). A pipe is the only target of its line.
//!   - `address`: an address (`user@domain`) or a bare user, which means `user@<this domain>`.
//!     Empty items are skipped (`a: b,` is `a: b`).
//!   - `address via host/host`: forward to `address` through the named servers, in order,
//!     instead of the address's own MX ([`Destination::Forward`]); it is not resolved further.
//!   - A target whose user is `*` (`*@other.example`, or `*` alone) stands for the user being
//!     resolved, as given: with `*: *@other.example`, mail to `x+tag@here` goes to
//!     `x+tag@other.example`.
//!
//! # Resolution
//!
//! [`resolve`] expands an address recursively until only final destinations remain:
//!
//! 1. An address in a domain that has no table is not local: it is a [`Destination::Remote`]
//!    (addresses in local domains of other tables are resolved there too).
//! 2. The *exact* key: the local part, normalised, with drop characters removed before the
//!    first suffix separator (`John.Doe+news` is `johndoe+news`). This lets an alias with a
//!    suffix (`sales+eu:`) win over the plain one.
//! 3. Else the *clean* key: everything from the first suffix separator on removed, then the
//!    drop characters (`John.Doe+news` is `johndoe`).
//! 4. Else, when the user exists (the callback says so for the local part as given, without
//!    its suffix, or clean, tried in that order), the destination is that
//!    [`Destination::Local`] user.
//! 5. Else the catch-all `*`, when the domain has one.
//! 6. Else, for `postmaster` (clean key), the [`Destination::Local`] postmaster of the domain:
//!    every domain has one ([RFC 5321 section 4.5.1](https://www.rfc-editor.org/rfc/rfc5321#section-4.5.1)),
//!    but an alias, a user or the catch-all of that name comes first, so an operator who
//!    forwards everything (`*: me@elsewhere.example`) reads postmaster's mail there too.
//!    Postmaster reached through the domain's own catch-all (`*: postmaster`) is that
//!    mailbox too, not a loop.
//! 7. Else the address is a [`Destination::Unknown`]: the caller rejects or bounces it. Other
//!    targets of the same alias are still delivered.
//!
//! Every destination comes with the trail of [`Step`]s that led to it, so `postern alias
//! resolve` can say why. Resolution fails as a whole ([`AliasError`]) when the same alias is
//! expanded twice on one path (a loop: `a: b`, `b: a`), when the depth exceeds
//! [`AliasOptions::max_depth`], or when it fans out to more than
//! [`AliasOptions::max_destinations`] destinations (or looks at more than ten times as many
//! addresses: the work stays bounded even for files written to make it explode).
//!
//! # Where we differ from chasquid, on purpose
//!
//! - A line that cannot be understood is an error naming the line and the reason
//!   ([`AliasParseError`]); the whole file is refused (the caller keeps its previous table).
//!   chasquid refuses such files too; it also accepts `a: ,` (an alias to nothing), which we
//!   refuse, since it silently swallows mail.
//! - A key given twice: the last line wins, as in chasquid and sendmail, but the parser
//!   reports a [`AliasWarning`] so the operator hears about it.
//! - A loop is reported as a loop (with its chain) as soon as it closes, not only when the
//!   depth limit is hit; the depth limit (10, as chasquid's) still bounds long chains.
//! - A destination reached twice is delivered once (chasquid would deliver it twice).
//! - The local part of a *remote* target keeps its case: it is the remote host's to interpret
//!   (RFC 5321 section 2.4). Local users and keys are lower-cased, remote domains normalised.
//! - chasquid's resolve hooks (external programs asked at lookup time) do not exist here.

use std::collections::BTreeMap;
use std::fmt;

use unicode_normalization::UnicodeNormalization;

use crate::address::{Domain, LocalPart, Mailbox};

/// The catch-all key.
const CATCH_ALL: &str = "*";

/// The reserved mailbox every domain has (RFC 5321 section 4.5.1), as a clean key.
const POSTMASTER: &str = "postmaster";

/// How addresses are cleaned before lookup, and the limits of a resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasOptions {
    /// Characters removed from the local part before lookup (default `.`).
    pub drop_characters: String,
    /// Characters that start a suffix, removed with everything after them (default `+`).
    pub suffix_separators: String,
    /// How many alias expansions deep a resolution may go (default 10).
    pub max_depth: usize,
    /// How many destinations one resolution may produce (default 1000).
    pub max_destinations: usize,
}

/// The aliases of one domain, parsed from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasTable {
    domain: String,
    entries: BTreeMap<String, Entry>,
}

/// One alias: its targets and the line that defined it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    line: usize,
    targets: Vec<Target>,
}

/// A right-hand side item.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// An address, resolved further (its user may be `*`).
    Address(Mailbox),
    /// An address forwarded through the given servers, not resolved further.
    Forward(Mailbox, Vec<String>),
    /// A command line.
    Pipe(String),
}

/// The tables of every local domain. A domain with a table (even an empty one) is local.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AliasTables {
    tables: BTreeMap<String, AliasTable>,
}

/// A line of an aliases file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct AliasParseError {
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// Something in an aliases file that works but is probably not what was meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasWarning {
    /// The 1-based line number.
    pub line: usize,
    /// What is odd about it.
    pub reason: String,
}

/// Where a message to the resolved address goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Destination {
    /// An existing user of a local domain (the callback said so).
    Local {
        /// The user, normalised (lower case, NFC), as the callback accepted it.
        user: String,
        /// The domain, normalised (Unicode form, lower case).
        domain: String,
    },
    /// An address outside the local domains: deliver through the outbound queue.
    Remote(Mailbox),
    /// Forward to this address through these servers (tried in order), not its MX.
    Forward {
        /// The address to send to.
        address: Mailbox,
        /// Host names (or `host:port`), as written.
        via: Vec<String>,
    },
    /// Pipe the message to a command.
    Pipe {
        /// The command line as written (see [`Destination::argv`]).
        command: String,
        /// The alias that asked for it (`user@domain`), e.g. for the command's environment.
        alias: String,
    },
    /// A local address that is no alias and no user, in a domain without a catch-all.
    Unknown {
        /// The user, normalised, without drop characters and suffix.
        user: String,
        /// The domain, normalised.
        domain: String,
    },
}

/// One step of the way from the resolved address to a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The address looked at in this step (`user@domain`, as reached).
    pub address: String,
    /// What was found for it.
    pub rule: Rule,
}

/// What a [`Step`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    /// Not a local domain.
    NotLocal,
    /// The alias `key` of the domain's table, defined on `line`.
    Alias {
        /// The key that matched.
        key: String,
        /// Whether it matched only after the suffix and drop characters were removed.
        cleaned: bool,
        /// The line of the aliases file.
        line: usize,
    },
    /// No alias and no user: the domain's catch-all, defined on `line`.
    CatchAll {
        /// The line of the aliases file.
        line: usize,
    },
    /// An existing user (as named).
    User {
        /// The user name the callback accepted.
        user: String,
    },
    /// A `via` target: forwarded as is.
    Forward,
    /// A pipe target.
    Pipe,
    /// `postmaster`, with no alias, user or catch-all to take it: the domain's own mailbox.
    Postmaster,
    /// Neither alias nor user, and no catch-all.
    Unknown,
}

/// A destination and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Where the message goes.
    pub destination: Destination,
    /// The steps from the resolved address to the destination, first to last.
    pub trail: Vec<Step>,
}

/// Why an address could not be resolved. The whole resolution fails: delivering to part of an
/// alias list that loops would hide the mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AliasError {
    /// An alias expands, directly or not, to itself.
    #[error("alias loop: {}", chain.join(" -> "))]
    Loop {
        /// The addresses from the first expansion of the alias back to it.
        chain: Vec<String>,
    },
    /// More nested expansions than [`AliasOptions::max_depth`].
    #[error("aliases nested deeper than {limit}: {}", chain.join(" -> "))]
    TooDeep {
        /// The limit.
        limit: usize,
        /// The chain that went past it.
        chain: Vec<String>,
    },
    /// More destinations than [`AliasOptions::max_destinations`].
    #[error("{address} expands to more than {limit} destinations")]
    TooManyDestinations {
        /// The address being resolved.
        address: String,
        /// The limit.
        limit: usize,
    },
    /// More addresses looked at than ten times [`AliasOptions::max_destinations`]: targets
    /// repeated at every level make the work grow exponentially even when the destinations
    /// (counted once each) stay few.
    #[error("{address} expands to more than {limit} addresses")]
    TooManyExpansions {
        /// The address being resolved.
        address: String,
        /// The limit.
        limit: usize,
    },
    /// The "does this user exist" callback failed (e.g. the users file could not be read).
    #[error("cannot check whether {address} exists: {reason}")]
    Lookup {
        /// The address asked about.
        address: String,
        /// The callback's error.
        reason: String,
    },
}

/// The "does this user exist" callback: `(domain, user)`, both normalised (the domain in its
/// Unicode form, lower case; the user lower case, NFC). An `Err` fails the resolution
/// ([`AliasError::Lookup`]), so the caller can answer with a temporary error.
pub type UserExists<'a> = &'a dyn Fn(&str, &str) -> Result<bool, String>;

impl Default for AliasOptions {
    fn default() -> Self {
        AliasOptions {
            drop_characters: ".".into(),
            suffix_separators: "+".into(),
            max_depth: 10,
            max_destinations: 1000,
        }
    }
}

impl AliasOptions {
    /// The exact lookup key of a local part: normalised, drop characters removed before the
    /// first suffix separator, the suffix kept.
    pub fn exact_key(&self, local: &str) -> String {
        let local = normalize_local(local);
        let (base, suffix) = self.split_suffix(&local);
        let mut key: String = base
            .chars()
            .filter(|c| !self.drop_characters.contains(*c))
            .collect();
        key.push_str(suffix);
        key
    }

    /// The clean lookup key: normalised, suffix removed, drop characters removed.
    pub fn clean_key(&self, local: &str) -> String {
        let local = normalize_local(local);
        self.split_suffix(&local)
            .0
            .chars()
            .filter(|c| !self.drop_characters.contains(*c))
            .collect()
    }

    /// `(base, suffix)`: the suffix starts at the first suffix separator (and includes it).
    fn split_suffix<'a>(&self, local: &'a str) -> (&'a str, &'a str) {
        match local.find(|c| self.suffix_separators.contains(c)) {
            Some(i) => local.split_at(i),
            None => (local, ""),
        }
    }
}

impl AliasTable {
    /// An empty table: the domain is local and has no aliases.
    pub fn empty(domain: &str) -> AliasTable {
        AliasTable {
            domain: normalize_domain_name(domain),
            entries: BTreeMap::new(),
        }
    }

    /// Parses the text of `domain`'s aliases file. The first unusable line fails the whole
    /// file; the warnings (duplicate keys) come with the table.
    pub fn parse(
        domain: &str,
        text: &str,
        options: &AliasOptions,
    ) -> Result<(AliasTable, Vec<AliasWarning>), AliasParseError> {
        let mut table = AliasTable::empty(domain);
        let home = Domain::parse(&table.domain).map_err(|e| AliasParseError {
            line: 0,
            reason: format!("the domain {domain:?} is not a domain name: {e}"),
        })?;
        let mut warnings = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let err = |reason: String| AliasParseError { line, reason };
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let (left, right) = content
                .split_once(':')
                .ok_or_else(|| err("missing ':' (expected \"user: target, target\")".into()))?;
            let (left, right) = (left.trim(), right.trim());
            if left.is_empty() {
                return Err(err("missing the user before ':'".into()));
            }
            if right.is_empty() {
                return Err(err(format!("missing the targets after \"{left}:\"")));
            }
            let key = parse_key(left, options).map_err(err)?;
            let targets = parse_targets(right, &home).map_err(err)?;
            if let Some(previous) = table.entries.get(&key) {
                warnings.push(AliasWarning {
                    line,
                    reason: format!(
                        "{key:?} is defined again (first on line {}); this line wins",
                        previous.line
                    ),
                });
            }
            table.entries.insert(key, Entry { line, targets });
        }
        Ok((table, warnings))
    }

    /// The domain (normalised: Unicode form, lower case).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// How many aliases (keys) the table has, the catch-all included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no alias.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl AliasTables {
    /// No local domain.
    pub fn new() -> AliasTables {
        AliasTables::default()
    }

    /// Adds (or replaces) a domain's table; the domain becomes local.
    pub fn insert(&mut self, table: AliasTable) {
        self.tables.insert(table.domain.clone(), table);
    }

    /// The table of `domain` (any case, Unicode or A-label form), if it is local.
    pub fn get(&self, domain: &str) -> Option<&AliasTable> {
        self.tables.get(&normalize_domain_name(domain))
    }

    /// The tables, by normalised domain.
    pub fn iter(&self) -> impl Iterator<Item = &AliasTable> {
        self.tables.values()
    }
}

impl Destination {
    /// A pipe's command split into program and arguments (on blanks; no quoting), else `None`.
    pub fn argv(&self) -> Option<Vec<&str>> {
        match self {
            Destination::Pipe { command, .. } => Some(command.split_whitespace().collect()),
            _ => None,
        }
    }

    /// Whether a message can go there (everything but [`Destination::Unknown`]).
    pub fn is_deliverable(&self) -> bool {
        !matches!(self, Destination::Unknown { .. })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Local { user, domain } => write!(f, "local {user}@{domain}"),
            Destination::Remote(m) => write!(f, "remote {m}"),
            Destination::Forward { address, via } => {
                write!(f, "forward {address} via {}", via.join("/"))
            }
            Destination::Pipe { command, .. } => write!(f, "pipe | {command}"),
            Destination::Unknown { user, domain } => write!(f, "unknown {user}@{domain}"),
        }
    }
}

impl Step {
    /// The step in words; a line number is shown as `file:line` when `file` is given.
    pub fn describe(&self, file: Option<&str>) -> String {
        let a = &self.address;
        let at = |line: &usize| match file {
            Some(file) => format!("{file}:{line}"),
            None => format!("line {line}"),
        };
        match &self.rule {
            Rule::NotLocal => format!("{a}: not a local domain, delivered remotely"),
            Rule::Alias {
                key,
                cleaned: false,
                line,
            } => format!("{a}: alias {key:?} ({})", at(line)),
            Rule::Alias {
                key,
                cleaned: true,
                line,
            } => format!(
                "{a}: alias {key:?} once suffix and drop characters are removed ({})",
                at(line)
            ),
            Rule::CatchAll { line } => {
                format!(
                    "{a}: neither alias nor user, caught by \"*\" ({})",
                    at(line)
                )
            }
            Rule::User { user } => format!("{a}: existing user {user:?}"),
            Rule::Forward => format!("{a}: forwarded through the named servers"),
            Rule::Pipe => format!("{a}: piped to a command"),
            Rule::Postmaster => format!(
                "{a}: the reserved postmaster mailbox (no user, alias or catch-all takes it)"
            ),
            Rule::Unknown => format!("{a}: no such user, no alias, no catch-all"),
        }
    }

    /// The domain of the step's address, when it has one (the file a line number is in).
    pub fn domain(&self) -> Option<&str> {
        self.address.rsplit_once('@').map(|(_, d)| d)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(None))
    }
}

/// Resolves `address` against the `tables` of the local domains.
///
/// `exists` answers whether a user exists (see [`UserExists`]); it is asked only for local
/// addresses that are no alias. Destinations come in the order of the alias files, each once.
pub fn resolve(
    address: &Mailbox,
    tables: &AliasTables,
    exists: UserExists<'_>,
    options: &AliasOptions,
) -> Result<Vec<Resolved>, AliasError> {
    let mut resolver = Resolver {
        tables,
        exists,
        options,
        top: address.to_string(),
        out: Vec::new(),
        path: Vec::new(),
        trail: Vec::new(),
        visits: 0,
    };
    resolver.visit(address, 0)?;
    Ok(resolver.out)
}

/// The state of one resolution.
struct Resolver<'a> {
    tables: &'a AliasTables,
    exists: UserExists<'a>,
    options: &'a AliasOptions,
    /// The address being resolved, for errors.
    top: String,
    out: Vec<Resolved>,
    /// The aliases expanded on the current path: (domain, key), with the address reached.
    path: Vec<(String, String, String)>,
    /// The steps of the current path.
    trail: Vec<Step>,
    /// Addresses looked at so far.
    visits: usize,
}

impl Resolver<'_> {
    /// Resolves one address at `depth` nested expansions.
    fn visit(&mut self, address: &Mailbox, depth: usize) -> Result<(), AliasError> {
        self.visits += 1;
        let limit = self.options.max_destinations.saturating_mul(10);
        if self.visits > limit {
            return Err(AliasError::TooManyExpansions {
                address: self.top.clone(),
                limit,
            });
        }
        let shown = address.to_string();
        let Some(domain) = domain_key(address.domain()) else {
            return self.finish(shown, Rule::NotLocal, Destination::Remote(address.clone()));
        };
        let (tables, options) = (self.tables, self.options);
        let Some(table) = tables.tables.get(&domain) else {
            return self.finish(shown, Rule::NotLocal, Destination::Remote(address.clone()));
        };
        let local = address.local_part().as_str();
        let exact = options.exact_key(local);
        let clean = options.clean_key(local);
        let user = normalize_local(local);
        let shown = format!("{user}@{domain}");

        let (key, rule) = if let Some(e) = table.entries.get(&exact) {
            let rule = Rule::Alias {
                key: exact.clone(),
                cleaned: false,
                line: e.line,
            };
            (exact, rule)
        } else if let Some(e) = table.entries.get(&clean) {
            let rule = Rule::Alias {
                key: clean.clone(),
                cleaned: true,
                line: e.line,
            };
            (clean, rule)
        } else {
            let (_, suffix) = options.split_suffix(&user);
            let unsuffixed = &user[..user.len() - suffix.len()];
            let mut candidates = vec![user.as_str(), unsuffixed, clean.as_str()];
            candidates.dedup();
            for candidate in candidates.into_iter().filter(|c| !c.is_empty()) {
                let found =
                    (self.exists)(&domain, candidate).map_err(|reason| AliasError::Lookup {
                        address: format!("{candidate}@{domain}"),
                        reason,
                    })?;
                if found {
                    let dest = Destination::Local {
                        user: candidate.to_string(),
                        domain: domain.clone(),
                    };
                    let rule = Rule::User {
                        user: candidate.to_string(),
                    };
                    return self.finish(shown, rule, dest);
                }
            }
            // The catch-all once; postmaster reached through it (`*: postmaster`) is the
            // domain's own mailbox, not a loop.
            let caught = self
                .path
                .iter()
                .any(|(d, k, _)| *d == domain && k == CATCH_ALL);
            match table.entries.get(CATCH_ALL) {
                Some(e) if !(caught && clean == POSTMASTER) => {
                    (CATCH_ALL.to_string(), Rule::CatchAll { line: e.line })
                }
                _ if clean == POSTMASTER => {
                    let dest = Destination::Local {
                        user: clean,
                        domain: domain.clone(),
                    };
                    return self.finish(shown, Rule::Postmaster, dest);
                }
                _ => {
                    let dest = Destination::Unknown {
                        user: clean,
                        domain: domain.clone(),
                    };
                    return self.finish(shown, Rule::Unknown, dest);
                }
            }
        };

        // An alias: check for loops and depth, then expand its targets.
        if let Some(start) = self
            .path
            .iter()
            .position(|(d, k, _)| *d == domain && *k == key)
        {
            let mut chain: Vec<String> = self.path[start..]
                .iter()
                .map(|(_, _, a)| a.clone())
                .collect();
            chain.push(shown);
            return Err(AliasError::Loop { chain });
        }
        if depth >= self.options.max_depth {
            let mut chain: Vec<String> = self.path.iter().map(|(_, _, a)| a.clone()).collect();
            chain.push(shown);
            return Err(AliasError::TooDeep {
                limit: self.options.max_depth,
                chain,
            });
        }
        let entry = &table.entries[&key];
        let alias = format!("{key}@{domain}");
        self.path.push((domain.clone(), key, shown.clone()));
        self.trail.push(Step {
            address: shown,
            rule,
        });
        for target in &entry.targets {
            match target {
                Target::Pipe(command) => {
                    let dest = Destination::Pipe {
                        command: command.clone(),
                        alias: alias.clone(),
                    };
                    self.finish(format!("| {command}"), Rule::Pipe, dest)?;
                }
                Target::Forward(to, via) => {
                    let to = star(to, address);
                    let dest = Destination::Forward {
                        address: to.clone(),
                        via: via.clone(),
                    };
                    self.finish(to.to_string(), Rule::Forward, dest)?;
                }
                Target::Address(to) => {
                    let to = star(to, address);
                    self.visit(&to, depth + 1)?;
                }
            }
        }
        self.path.pop();
        self.trail.pop();
        Ok(())
    }

    /// Records a destination reached from the current path with a last step.
    fn finish(&mut self, address: String, rule: Rule, dest: Destination) -> Result<(), AliasError> {
        if self.out.iter().any(|r| r.destination == dest) {
            return Ok(());
        }
        if self.out.len() >= self.options.max_destinations {
            return Err(AliasError::TooManyDestinations {
                address: self.top.clone(),
                limit: self.options.max_destinations,
            });
        }
        let mut trail = self.trail.clone();
        trail.push(Step { address, rule });
        self.out.push(Resolved {
            destination: dest,
            trail,
        });
        Ok(())
    }
}

/// `to` with a `*` user replaced by the user of `from`, as given.
fn star(to: &Mailbox, from: &Mailbox) -> Mailbox {
    if to.local_part().as_str() == CATCH_ALL {
        Mailbox::new(from.local_part().clone(), to.domain().clone())
    } else {
        to.clone()
    }
}

/// Parses and normalises a left side.
fn parse_key(left: &str, options: &AliasOptions) -> Result<String, String> {
    if left == CATCH_ALL {
        return Ok(CATCH_ALL.into());
    }
    if left.contains('@') {
        return Err(format!(
            "the user {left:?} must not contain '@': the file's domain is implied"
        ));
    }
    if let Some(c) = left.chars().find(|c| c.is_whitespace() || *c == ',') {
        return Err(format!("the user {left:?} must not contain {c:?}"));
    }
    let key = options.exact_key(left);
    if key.is_empty() {
        return Err(format!(
            "the user {left:?} is empty once drop characters are removed"
        ));
    }
    LocalPart::parse(&key).map_err(|e| format!("the user {left:?} is not a local part: {e}"))?;
    Ok(key)
}

/// Parses a right side: a pipe, or a list of targets.
fn parse_targets(right: &str, home: &Domain) -> Result<Vec<Target>, String> {
    if let Some(command) = right.strip_prefix('|') {
        let command = command.trim();
        if command.is_empty() {
            return Err("the pipe has no command after '|'".into());
        }
        return Ok(vec![Target::Pipe(command.to_string())]);
    }
    let mut targets = Vec::new();
    for item in right.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item.starts_with('|') {
            return Err(format!(
                "{item:?}: a pipe must be the only target of its line"
            ));
        }
        let mut words = item.split_whitespace();
        let address = words.next().unwrap_or_default();
        let target = match (words.next(), words.next(), words.next()) {
            (None, _, _) => Target::Address(parse_target(address, home)?),
            (Some("via"), Some(hosts), None) => {
                let via: Vec<String> = hosts.split('/').map(str::to_string).collect();
                if via.iter().any(String::is_empty) {
                    return Err(format!("{item:?}: an empty server in the 'via' list"));
                }
                Target::Forward(parse_target(address, home)?, via)
            }
            (Some("via"), None, _) => {
                return Err(format!("{item:?}: no server after 'via'"));
            }
            _ => {
                return Err(format!(
                    "{item:?}: a target is one address (targets are separated by ',')"
                ));
            }
        };
        targets.push(target);
    }
    if targets.is_empty() {
        return Err("no target: only empty items after ':'".into());
    }
    Ok(targets)
}

/// Parses one target address; a bare user is in `home`.
fn parse_target(text: &str, home: &Domain) -> Result<Mailbox, String> {
    let mailbox = if text.contains('@') {
        Mailbox::parse(text)
    } else {
        LocalPart::parse(text).map(|local| Mailbox::new(local, home.clone()))
    }
    .map_err(|e| format!("{text:?} is not an address: {e}"))?;
    // Normalise the domain (so the table lookup and the output are stable); a literal stays.
    let domain = match mailbox.domain() {
        Domain::Name(_) => Domain::Name(mailbox.domain().to_unicode()),
        other => other.clone(),
    };
    Ok(Mailbox::new(mailbox.local_part().clone(), domain))
}

/// Lower case, then NFC: the normalisation of user names everywhere in postern.
fn normalize_local(local: &str) -> String {
    local.to_lowercase().nfc().collect()
}

/// A domain's table key: its Unicode form, lower case; literals are never local.
fn domain_key(domain: &Domain) -> Option<String> {
    match domain {
        Domain::Name(_) => Some(domain.to_unicode()),
        _ => None,
    }
}

/// A domain name given as text, normalised like [`domain_key`] (kept as is when it fails).
fn normalize_domain_name(domain: &str) -> String {
    match Domain::parse(domain) {
        Ok(d) => domain_key(&d).unwrap_or_else(|| domain.to_lowercase()),
        Err(_) => domain.to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(domain: &str, text: &str, options: &AliasOptions) -> AliasTable {
        AliasTable::parse(domain, text, options)
            .unwrap_or_else(|e| panic!("{text:?}: {e}"))
            .0
    }

    #[test]
    fn keys() {
        let o = AliasOptions {
            drop_characters: "._".into(),
            suffix_separators: "+-".into(),
            ..AliasOptions::default()
        };
        // (local part, exact key, clean key)
        let cases = [
            ("abc", "abc", "abc"),
            ("A.b~C", "ab~c", "ab~c"),
            ("a.b+c.d", "ab+c.d", "ab"),
            ("ab-+xy", "ab-+xy", "ab"),
            ("ab+", "ab+", "ab"),
            ("ño_ño-ña.ña", "ñoño-ña.ña", "ñoño"),
            ("+x", "+x", ""),
        ];
        for (local, exact, clean) in cases {
            let got = (o.exact_key(local), o.clean_key(local));
            assert_eq!(got, (exact.to_string(), clean.to_string()), "{local:?}");
        }
    }

    #[test]
    fn tables_normalise_domain_and_keys() {
        let o = AliasOptions::default();
        let t = table(
            "XN--BCHER-KVA.example",
            "John.Doe: x\r\n\r\n  # c\r\n*: y\n",
            &o,
        );
        assert_eq!(t.domain(), "bücher.example");
        let keys: Vec<&str> = t.entries.keys().map(String::as_str).collect();
        assert_eq!(keys, ["*", "johndoe"]);
        let targets = &t.entries["johndoe"].targets;
        assert_eq!(
            targets,
            &[Target::Address(Mailbox::new(
                LocalPart::new("x").expect("local"),
                Domain::Name("bücher.example".into())
            ))]
        );
        let mut all = AliasTables::new();
        all.insert(t);
        assert!(all.get("BÜCHER.example").is_some());
        assert!(all.get("xn--bcher-kva.example").is_some());
    }

    #[test]
    fn the_documented_example_parses() {
        let text = "# A comment. Blank lines are ignored too.\n\
                    sales: alice\n\
                    team: alice, bob@partner.example, sales\n\
                    archive: | /usr/local/bin/archive --all\n\
                    backup: ops@example.net via mx1.example.net/mx2.example.net\n\
                    *: postmaster\n";
        let t = table("example.org", text, &AliasOptions::default());
        let keys: Vec<&str> = t.entries.keys().map(String::as_str).collect();
        assert_eq!(keys, ["*", "archive", "backup", "sales", "team"]);
        assert_eq!(
            t.entries["backup"].targets,
            [Target::Forward(
                Mailbox::parse("ops@example.net").expect("address"),
                vec!["mx1.example.net".into(), "mx2.example.net".into()]
            )]
        );
    }

    #[test]
    fn parse_errors_name_the_line() {
        let o = AliasOptions::default();
        let cases = [
            ("a", 1, "missing ':'"),
            ("# c\n:b", 2, "missing the user"),
            ("a:", 1, "missing the targets"),
            ("a: ,", 1, "no target"),
            ("a: |", 1, "no command"),
            ("a@x: b", 1, "must not contain '@'"),
            ("a b: c", 1, "must not contain ' '"),
            ("a: x y z", 1, "a target is one address"),
            ("a: b # c", 1, "a target is one address"),
            ("a: b, | cmd", 1, "only target"),
            ("a: b via", 1, "no server"),
            ("a: b via x//y", 1, "empty server"),
            ("a: b@", 1, "not an address"),
            ("\n\n.: b", 3, "empty once drop characters"),
        ];
        for (text, line, reason) in cases {
            let err = AliasTable::parse("example.org", text, &o).expect_err(text);
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.reason.contains(reason), "{text:?}: {err}");
        }
    }
}
