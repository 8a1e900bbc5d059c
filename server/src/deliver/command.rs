//! Delivery into a command: `[mailboxes]` entries with `command = "..."`, and pipe aliases
//! (`user: | command args` in an aliases file).
//!
//! # The command line
//! No shell runs it. The line is split into words at spaces and tabs; single quotes
//! (`'a b'`) and double quotes (`"a b"`, where `\"` and `\\` stand for `"` and `\`) group a
//! word with its spaces. Nothing else is special: no `$VARIABLES`, globs, redirections or
//! pipes. The first word is the program: an absolute path, or a bare name looked up in
//! `/usr/bin` and `/bin` only (so `| procmail -d bob` in an aliases file written for chasquid
//! still works); a relative path (`bin/x`) is refused. `| /usr/bin/procmail -d bob` runs
//! procmail with two arguments; an alias that needs a shell
//! says so: `| /bin/sh -c 'exec /usr/bin/foo > /var/log/foo'`.
//!
//! After the split, each word gets its substitutions: `%from%` (the envelope sender without
//! angle brackets; `MAILER-DAEMON` for the null sender, as Postfix's pipe(8) does), `%to%`
//! (the recipient, or the alias for a pipe alias), `%to_user%` and `%to_domain%` (its two
//! halves). Substituting after splitting is what makes this safer than `sh -c`: the sender is
//! chosen by whoever sends the mail, and here it can only ever become (part of) one argument,
//! never shell syntax or more arguments. (It may still begin with `-`: put `%from%` after an
//! option that takes it as its value, e.g. `-f %from%`.)
//!
//! # Running it
//! The environment is cleared except for `PATH=/usr/bin:/bin`, `SENDER` and `RECIPIENT` (as
//! `%from%` and `%to%`); the working directory is `/`. The message, trace fields first, is
//! written to its standard input with Unix line ends (each CRLF becomes LF, see [`ToLf`]), as
//! delivery agents such as procmail and maildrop expect. The command runs in its own process
//! group; when the time limit passes, the whole group is killed. What it prints (standard
//! output and error, the first [`OUTPUT_KEPT`] bytes) goes into the log and the bounce.
//!
//! # Results, by exit status ([sysexits.h](https://man.freebsd.org/cgi/man.cgi?sysexits))
//! - 0: delivered.
//! - 75 (`EX_TEMPFAIL`): deferred, tried again later.
//! - any other status: failed for good (bounced).
//! - killed by a signal, the time limit, or a program that cannot be started: deferred (a
//!   broken configuration must not bounce mail).

use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;
use std::time::Duration;

use async_io::Timer;
use futures_lite::future;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use smol::process::{Child, Command};

use super::Delivery;

/// How much of a command's output is kept for the log and the bounce.
pub const OUTPUT_KEPT: usize = 512;

/// `EX_TEMPFAIL` of sysexits.h: a temporary failure, try again later.
pub const EX_TEMPFAIL: i32 = 75;

/// How long the output is still read after the command exited (a child it left behind may
/// hold the pipe open).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// A command line split into words ([module docs](self)), substitutions not yet made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    words: Vec<String>,
}

/// What the substitutions stand for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Substitutions {
    /// `%from%`: the envelope sender, without angle brackets (empty for `<>`).
    pub from: String,
    /// `%to_user%`.
    pub to_user: String,
    /// `%to_domain%`.
    pub to_domain: String,
}

impl Substitutions {
    /// From the queued reverse path and the recipient's halves (`%from%` is the sender's
    /// address without brackets, empty for `<>`).
    pub fn new(
        reverse_path: &proto_core::ReversePath,
        to_user: &str,
        to_domain: &str,
    ) -> Substitutions {
        let from = match reverse_path {
            proto_core::ReversePath::Mailbox(m) => m.to_string(),
            _ => String::new(),
        };
        Substitutions {
            from,
            to_user: to_user.to_string(),
            to_domain: to_domain.to_string(),
        }
    }

    fn sender(&self) -> &str {
        if self.from.is_empty() {
            "MAILER-DAEMON"
        } else {
            &self.from
        }
    }

    fn to(&self) -> String {
        format!("{}@{}", self.to_user, self.to_domain)
    }
}

/// Why a command line does not split into a program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandLineError {
    /// A quote is not closed.
    #[error("unclosed quote ({0})")]
    UnclosedQuote(char),
    /// A control character (a line break, say).
    #[error("control character {0:?} in the command line")]
    Control(char),
    /// Nothing at all.
    #[error("the command line is empty")]
    Empty,
    /// The program is `''`.
    #[error("the program name is empty")]
    EmptyProgram,
    /// The program is a relative path.
    #[error(
        "the program {0:?} is a relative path (give an absolute path, or a bare name found in /usr/bin or /bin)"
    )]
    RelativePath(String),
}

impl CommandLine {
    /// Splits `text` into words (see the [module docs](self)).
    pub fn parse(text: &str) -> Result<CommandLine, CommandLineError> {
        let mut words = Vec::new();
        let mut word = String::new();
        let mut in_word = false;
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                ' ' | '\t' => {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                }
                '\'' => {
                    in_word = true;
                    loop {
                        match chars.next() {
                            Some('\'') => break,
                            Some(c) => word.push(c),
                            None => return Err(CommandLineError::UnclosedQuote('\'')),
                        }
                    }
                }
                '"' => {
                    in_word = true;
                    loop {
                        match chars.next() {
                            Some('"') => break,
                            Some('\\') => match chars.next() {
                                Some(c @ ('"' | '\\')) => word.push(c),
                                Some(c) => {
                                    word.push('\\');
                                    word.push(c);
                                }
                                None => return Err(CommandLineError::UnclosedQuote('"')),
                            },
                            Some(c) => word.push(c),
                            None => return Err(CommandLineError::UnclosedQuote('"')),
                        }
                    }
                }
                c if c.is_control() => {
                    return Err(CommandLineError::Control(c));
                }
                c => {
                    in_word = true;
                    word.push(c);
                }
            }
        }
        if in_word {
            words.push(word);
        }
        match words.first() {
            None => Err(CommandLineError::Empty),
            Some(program) if !program.starts_with('/') && program.contains('/') => {
                Err(CommandLineError::RelativePath(program.clone()))
            }
            Some(program) if program.is_empty() => Err(CommandLineError::EmptyProgram),
            Some(_) => Ok(CommandLine { words }),
        }
    }

    /// The words, as split.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// The words with the substitutions made.
    pub fn argv(&self, s: &Substitutions) -> Vec<String> {
        let to = s.to();
        self.words
            .iter()
            .map(|w| {
                w.replace("%from%", s.sender())
                    .replace("%to_user%", &s.to_user)
                    .replace("%to_domain%", &s.to_domain)
                    .replace("%to%", &to)
            })
            .collect()
    }
}

impl std::fmt::Display for CommandLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.words().join(" "))
    }
}

/// Runs `line` for one recipient with `message` on its standard input, for at most `timeout`.
pub async fn deliver(
    line: &CommandLine,
    subs: &Substitutions,
    message: impl AsyncRead + Unpin,
    timeout: Duration,
) -> Delivery {
    let argv = line.argv(subs);
    let mut std_command = std::process::Command::new(&argv[0]);
    std_command
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("SENDER", subs.sender())
        .env("RECIPIENT", subs.to())
        .current_dir("/")
        .process_group(0);
    let mut command = Command::from(std_command);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return Delivery::Deferred(format!("cannot run {}: {e}", argv[0])),
    };
    let pid = child.id();
    let run = run(&mut child, message);
    let limit = async {
        Timer::after(timeout).await;
        None
    };
    match future::or(async { Some(run.await) }, limit).await {
        Some(Ok((status, output))) => result_of(status, &output),
        Some(Err(e)) => {
            kill_group(pid);
            Delivery::Deferred(format!("{}: {e}", argv[0]))
        }
        None => {
            kill_group(pid);
            let _ = child.status().await;
            Delivery::Deferred(format!(
                "{}: no result within {} s (killed)",
                argv[0],
                timeout.as_secs()
            ))
        }
    }
}

/// Feeds the message, collects the output and waits for the exit status.
async fn run(
    child: &mut Child,
    mut message: impl AsyncRead + Unpin,
) -> io::Result<(std::process::ExitStatus, Vec<u8>)> {
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let feed = async {
        if let Some(stdin) = stdin.as_mut() {
            // A command may exit without reading everything (EPIPE): its status decides.
            let _ = futures_lite::io::copy(&mut message, &mut *stdin).await;
            let _ = stdin.close().await;
        }
        drop(stdin);
    };
    let output = std::cell::RefCell::new(Vec::new());
    let mut outputs = Box::pin(future::zip(
        keep_output(stdout, &output),
        keep_output(stderr, &output),
    ));
    let mut main = Box::pin(future::zip(feed, child.status()));
    enum Step {
        Status(io::Result<std::process::ExitStatus>),
        OutputEnded,
    }
    let first = future::or(async { Step::Status(main.as_mut().await.1) }, async {
        outputs.as_mut().await;
        Step::OutputEnded
    })
    .await;
    let status = match first {
        Step::Status(status) => {
            // The output ends when every holder of the pipes is gone: a child the command
            // left running may hold them, so the rest gets OUTPUT_GRACE.
            future::or(async { outputs.as_mut().await }, async {
                Timer::after(OUTPUT_GRACE).await;
                ((), ())
            })
            .await;
            status
        }
        Step::OutputEnded => main.as_mut().await.1,
    };
    drop(outputs);
    let status = status?;
    let output = output.into_inner();
    Ok((status, output))
}

/// Reads `pipe` to its end, appending to `kept` while it holds less than [`OUTPUT_KEPT`].
async fn keep_output(
    pipe: Option<impl futures_lite::AsyncRead + Unpin>,
    kept: &std::cell::RefCell<Vec<u8>>,
) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut k = kept.borrow_mut();
                    let room = OUTPUT_KEPT.saturating_sub(k.len());
                    k.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
    };
    read_all.await;
}

/// Kills the process group `pid` leads (the command and whatever it started).
fn kill_group(pid: u32) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

/// The delivery result for an exit status, with the command's output in the text.
fn result_of(status: std::process::ExitStatus, output: &[u8]) -> Delivery {
    let said: String = String::from_utf8_lossy(output)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let said = said.trim();
    let with_output = |what: String| {
        if said.is_empty() {
            what
        } else {
            format!("{what}: {said}")
        }
    };
    match (status.code(), status.signal()) {
        (Some(0), _) => Delivery::Delivered(
            crate::log::Fields::new().text("command", with_output("exit status 0".into())),
        ),
        (Some(EX_TEMPFAIL), _) => {
            Delivery::Deferred(with_output("exit status 75 (temporary failure)".into()))
        }
        (Some(code), _) => Delivery::Failed(with_output(format!("exit status {code}"))),
        (None, Some(signal)) => {
            Delivery::Deferred(with_output(format!("killed by signal {signal}")))
        }
        (None, None) => Delivery::Deferred(with_output("ended without a status".into())),
    }
}

/// A reader that turns every CRLF of what `inner` reads into LF (a bare CR stays), whatever
/// the read boundaries.
#[derive(Debug)]
pub struct ToLf<R> {
    inner: R,
    /// Converted bytes not yet handed out, from `pos` on.
    out: Vec<u8>,
    pos: usize,
    /// A CR ended the previous read: whether it starts a CRLF is not known yet.
    pending_cr: bool,
    done: bool,
}

impl<R: std::io::Read> ToLf<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> ToLf<R> {
        ToLf {
            inner,
            out: Vec::new(),
            pos: 0,
            pending_cr: false,
            done: false,
        }
    }
}

impl<R: std::io::Read> std::io::Read for ToLf<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.out.len() || buf.is_empty() {
                let n = buf.len().min(self.out.len() - self.pos);
                buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            self.out.clear();
            self.pos = 0;
            let mut raw = [0u8; 8192];
            let n = self.inner.read(&mut raw)?;
            if n == 0 {
                self.done = true;
                if std::mem::take(&mut self.pending_cr) {
                    self.out.push(b'\r');
                }
                continue;
            }
            for &b in &raw[..n] {
                if std::mem::take(&mut self.pending_cr) && b != b'\n' {
                    self.out.push(b'\r');
                }
                if b == b'\r' {
                    self.pending_cr = true;
                } else {
                    self.out.push(b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_becomes_lf_across_any_split() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"a\r\nb\r\n", b"a\nb\n"),
            (b"a\rb\n\r", b"a\rb\n\r"),
            (b"\r\r\n\r", b"\r\n\r"),
            (b"\r\n\r\n", b"\n\n"),
        ];
        for &(input, want) in cases {
            for size in 1..=input.len().max(1) {
                // An inner reader that hands out `size` bytes at a time.
                struct Small<'a>(&'a [u8], usize);
                impl std::io::Read for Small<'_> {
                    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                        let n = self.1.min(buf.len()).min(self.0.len());
                        buf[..n].copy_from_slice(&self.0[..n]);
                        self.0 = &self.0[n..];
                        Ok(n)
                    }
                }
                for out_size in [1, 2, 64] {
                    let mut r = ToLf::new(Small(input, size));
                    let mut got = Vec::new();
                    let mut buf = vec![0u8; out_size];
                    loop {
                        let n = std::io::Read::read(&mut r, &mut buf).expect("read");
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    assert_eq!(
                        got,
                        want,
                        "input {:?} in pieces of {size}, reads of {out_size}",
                        String::from_utf8_lossy(input)
                    );
                }
            }
        }
    }

    #[test]
    fn splitting_table() {
        let cases: &[(&str, Result<&[&str], &str>)] = &[
            (
                "/usr/bin/procmail -d bob",
                Ok(&["/usr/bin/procmail", "-d", "bob"]),
            ),
            ("  /bin/x\t a  ", Ok(&["/bin/x", "a"])),
            (
                "/bin/sh -c 'cat > /tmp/a b'",
                Ok(&["/bin/sh", "-c", "cat > /tmp/a b"]),
            ),
            (
                r#"/bin/echo "a \"q\" \\ \n" x"y"z"#,
                Ok(&["/bin/echo", r#"a "q" \ \n"#, "xyz"]),
            ),
            ("/bin/echo '' \"\"", Ok(&["/bin/echo", "", ""])),
            (
                "/bin/echo $HOME *; ls",
                Ok(&["/bin/echo", "$HOME", "*;", "ls"]),
            ),
            ("", Err("empty")),
            ("   ", Err("empty")),
            ("procmail -d bob", Ok(&["procmail", "-d", "bob"])),
            ("bin/procmail -d bob", Err("relative path")),
            ("'' -d bob", Err("program name is empty")),
            ("/bin/echo 'open", Err("unclosed quote")),
            ("/bin/echo \"open", Err("unclosed quote")),
            ("/bin/echo a\nb", Err("control character")),
        ];
        for (input, want) in cases {
            let got = CommandLine::parse(input);
            match (want, &got) {
                (Ok(words), Ok(line)) => assert_eq!(line.words(), *words, "input {input:?}"),
                (Err(part), Err(why)) => {
                    assert!(why.to_string().contains(part), "input {input:?}: {why}")
                }
                _ => panic!("input {input:?}: got {got:?}"),
            }
        }
    }

    fn path(text: &str) -> proto_core::ReversePath {
        proto_core::ReversePath::parse(text).expect("a reverse path")
    }

    #[test]
    fn substitutions_stay_inside_their_word() {
        let line = CommandLine::parse("/bin/x -f %from% --to=%to% %to_user% %to_domain% %other%")
            .expect("parses");
        let s = Substitutions::new(&path("<\"evil; rm -rf / \"@x.test>"), "bob", "example.org");
        assert_eq!(
            line.argv(&s),
            [
                "/bin/x",
                "-f",
                "\"evil; rm -rf / \"@x.test",
                "--to=bob@example.org",
                "bob",
                "example.org",
                "%other%"
            ]
        );
        let null = Substitutions::new(&path("<>"), "bob", "example.org");
        assert_eq!(line.argv(&null)[2], "MAILER-DAEMON");
    }

    fn run_sh(script: &str, message: &[u8], timeout: Duration) -> Delivery {
        let line = CommandLine {
            words: vec!["/bin/sh".into(), "-c".into(), script.into()],
        };
        let subs = Substitutions::new(&path("<s@client.test>"), "bob", "example.org");
        smol::block_on(deliver(&line, &subs, message, timeout))
    }

    #[test]
    fn exit_statuses_map_per_sysexits() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = tmp.path().join("out");
        let script = format!("cat > '{}'", out.display());
        let message = b"Subject: t\r\n\r\nhello\r\n";
        assert_eq!(
            run_sh(&script, message, Duration::from_secs(30)),
            Delivery::Delivered(crate::log::Fields::new().text("command", "exit status 0"))
        );
        assert_eq!(std::fs::read(&out).expect("written"), message);
        assert_eq!(
            run_sh(
                "echo 'mailbox busy' >&2; exit 75",
                b"x",
                Duration::from_secs(30)
            ),
            Delivery::Deferred("exit status 75 (temporary failure): mailbox busy".into())
        );
        assert_eq!(
            run_sh("echo no such user; exit 67", b"x", Duration::from_secs(30)),
            Delivery::Failed("exit status 67: no such user".into())
        );
        assert_eq!(
            run_sh("exit 1", b"x", Duration::from_secs(30)),
            Delivery::Failed("exit status 1".into())
        );
        assert_eq!(
            run_sh("kill -9 $$", b"x", Duration::from_secs(30)),
            Delivery::Deferred("killed by signal 9".into())
        );
        // A command that does not read its input: its status decides.
        let big = vec![b'x'; 1 << 20];
        assert_eq!(
            run_sh("exit 0", &big, Duration::from_secs(30)),
            Delivery::Delivered(crate::log::Fields::new().text("command", "exit status 0"))
        );
    }

    #[test]
    fn the_time_limit_kills_the_whole_group() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pid_file = tmp.path().join("pid");
        // A child in the background holds the pipes; it must go with the command.
        let script = format!(
            "sh -c 'echo $$ > {0}; exec sleep 600' & while [ ! -s {0} ]; do sleep 0.05; done; sleep 600",
            pid_file.display()
        );
        match run_sh(&script, b"x", Duration::from_secs(3)) {
            Delivery::Deferred(why) => assert!(why.contains("no result within"), "{why}"),
            other => panic!("{other:?}"),
        }
        let pid = std::fs::read_to_string(&pid_file).expect("the child started");
        let stat = format!("/proc/{}/stat", pid.trim());
        // SIGKILL was sent to the group before deliver returned; wait (bounded) for it to land.
        let dead = (0..500).any(|_| {
            let gone = match std::fs::read_to_string(&stat) {
                Err(_) => true,
                // A zombie waiting for its new parent to reap it is dead too.
                Ok(s) => s
                    .rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')),
            };
            if !gone {
                std::thread::sleep(Duration::from_millis(20));
            }
            gone
        });
        assert!(dead, "the background child survived: {stat}");
    }

    #[test]
    fn a_bare_name_is_found_in_usr_bin_or_bin() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = tmp.path().join("out");
        let line = CommandLine::parse(&format!("sh -c 'cat > \"$1\"' sh {}", out.display()))
            .expect("parses");
        let subs = Substitutions::new(&path("<>"), "bob", "example.org");
        let got = smol::block_on(deliver(
            &line,
            &subs,
            &b"a\r\nb\r\n"[..],
            Duration::from_secs(30),
        ));
        assert_eq!(
            got,
            Delivery::Delivered(crate::log::Fields::new().text("command", "exit status 0"))
        );
        assert_eq!(std::fs::read(&out).expect("written"), b"a\r\nb\r\n");
    }

    #[test]
    fn a_program_that_cannot_start_defers() {
        let line = CommandLine::parse("/nonexistent/mda -x").expect("parses");
        let subs = Substitutions::new(&path("<>"), "bob", "example.org");
        match smol::block_on(deliver(&line, &subs, &b"x"[..], Duration::from_secs(5))) {
            Delivery::Deferred(why) => {
                assert!(why.contains("cannot run /nonexistent/mda"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn substitutions_and_environment_reach_the_command() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = tmp.path().join("args");
        let line = CommandLine::parse(&format!(
            "/bin/sh -c 'printf \"%s|\" \"$@\" \"$SENDER\" \"$RECIPIENT\" \"$HOME\" > {}' sh %from% %to% %to_user% %to_domain%",
            out.display()
        ))
        .expect("parses");
        let subs = Substitutions::new(&path("<s@client.test>"), "bob", "example.org");
        let got = smol::block_on(deliver(&line, &subs, &b"x"[..], Duration::from_secs(30)));
        assert_eq!(
            got,
            Delivery::Delivered(crate::log::Fields::new().text("command", "exit status 0"))
        );
        assert_eq!(
            std::fs::read_to_string(&out).expect("args"),
            "s@client.test|bob@example.org|bob|example.org|s@client.test|bob@example.org||"
        );
    }
}
