//! The DATA reader: finds the end of message data, removes dot-stuffing, and refuses every
//! line ending that is not CRLF, and any NUL octet.
//!
//! [RFC 5321 section 4.1.1.4](https://www.rfc-editor.org/rfc/rfc5321#section-4.1.1.4):
//! > "The mail data are terminated by a line containing only a period, that is, the character
//! > sequence "\<CRLF\>.\<CRLF\>" [...] Therefore, an SMTP server MUST NOT [...] interpret [...] any
//! > other sequence as the end of mail data."
//!
//! [Section 2.3.8](https://www.rfc-editor.org/rfc/rfc5321#section-2.3.8) adds that bare CR and
//! LF "MUST NOT" be transmitted except as CRLF.
//!
//! So here a line starts only after a real CRLF (or right after the 354), and only
//! `CRLF . CRLF` ends the data. A bare CR or a bare LF anywhere marks the message as bad: it is
//! never accepted, whatever else happens, so a message cannot be "smuggled" through an
//! ambiguous terminator such as `<LF>.<LF>` or `<CR><LF>.<CR>` to a server downstream that reads
//! it differently. The reader still consumes everything up to the real terminator, so the
//! session stays in sync and nothing after a bad ending is read as a command.
//!
//! [4.5.2](https://www.rfc-editor.org/rfc/rfc5321#section-4.5.2) dot-unstuffing: "If the first
//! character is a period and there are other characters on the line, the first character is
//! deleted."
//!
//! The reader works a byte at a time with no line buffer, so its memory does not depend on line
//! or message length. Past the size or line limit it stops copying but keeps scanning.

/// Why a message that reached its terminator is refused. Ordered by precedence: a bad line
/// ending is reported over a long line, a long line over the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum DataProblem {
    /// Larger than the size limit.
    TooBig,
    /// A line longer than the text line limit.
    LineTooLong,
    /// A NUL octet: not text (RFC 5322 section 2.3 and RFC 2045 section 2.8 keep it out of
    /// 7bit and 8bit data), and a next hop that drops NULs could read the data differently.
    Nul,
    /// A CR not followed by LF, or an LF not preceded by CR.
    BareLineEnding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pos {
    /// At the start of a line: after CRLF, or at the very start of the data.
    LineStart,
    /// A `.` at the start of a line.
    Dot,
    /// `.` CR at the start of a line.
    DotCr,
    /// Inside a line.
    Mid,
    /// A CR inside a line.
    Cr,
}

/// Streaming state of one DATA body.
#[derive(Debug, Clone)]
pub(crate) struct DotReader {
    pos: Pos,
    line_len: usize,
    size: u64,
    max_size: u64,
    max_line: usize,
    problem: Option<DataProblem>,
}

/// The result of feeding bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fed {
    /// Input bytes consumed.
    pub consumed: usize,
    /// The terminator was found (and consumed).
    pub done: bool,
}

impl DotReader {
    pub(crate) fn new(max_size: u64, max_line: usize) -> DotReader {
        DotReader {
            pos: Pos::LineStart,
            line_len: 0,
            size: 0,
            max_size,
            max_line,
            problem: None,
        }
    }

    /// The worst problem seen so far.
    pub(crate) fn problem(&self) -> Option<DataProblem> {
        self.problem
    }

    fn flag(&mut self, p: DataProblem) {
        self.problem = self.problem.max(Some(p));
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        if self.problem.is_some() {
            return;
        }
        self.size += bytes.len() as u64;
        if self.size > self.max_size {
            self.flag(DataProblem::TooBig);
            return;
        }
        out.extend_from_slice(bytes);
    }

    fn count(&mut self, n: usize) {
        self.line_len += n;
        if self.line_len > self.max_line {
            self.flag(DataProblem::LineTooLong);
        }
    }

    /// Consumes input until the terminator, or until `out` holds at least `out_limit` bytes.
    /// Unstuffed message bytes are appended to `out`.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>, out_limit: usize) -> Fed {
        let mut i = 0;
        while i < input.len() {
            if out.len() >= out_limit {
                return Fed {
                    consumed: i,
                    done: false,
                };
            }
            if self.pos == Pos::Mid {
                // Fast path: copy the run up to the next CR, LF or NUL in one go.
                let run = input[i..]
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n' || b == 0)
                    .unwrap_or(input.len() - i);
                let run = run.min(out_limit.saturating_sub(out.len()).max(1));
                if run > 0 {
                    self.count(run);
                    self.emit(out, &input[i..i + run]);
                    i += run;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            self.count(1);
            match (self.pos, b) {
                (Pos::LineStart, b'.') => self.pos = Pos::Dot,
                (Pos::LineStart | Pos::Mid, b'\r') => self.pos = Pos::Cr,
                (Pos::LineStart | Pos::Mid | Pos::Dot, b'\n') => {
                    self.flag(DataProblem::BareLineEnding);
                    self.pos = Pos::Mid;
                }
                (Pos::LineStart | Pos::Mid | Pos::Dot, 0) => {
                    self.flag(DataProblem::Nul);
                    self.pos = Pos::Mid;
                }
                (Pos::LineStart | Pos::Mid, _) => {
                    self.emit(out, &[b]);
                    self.pos = Pos::Mid;
                }
                (Pos::Dot, b'\r') => self.pos = Pos::DotCr,
                (Pos::Dot, _) => {
                    // The stuffed dot is dropped; the byte after it is data.
                    self.emit(out, &[b]);
                    self.pos = Pos::Mid;
                }
                (Pos::DotCr, b'\n') => {
                    return Fed {
                        consumed: i,
                        done: true,
                    };
                }
                (Pos::DotCr, _) => {
                    // ".<CR>x": a bare CR; the CR cannot be part of the output either way.
                    self.flag(DataProblem::BareLineEnding);
                    self.pos = if b == b'\r' { Pos::Cr } else { Pos::Mid };
                }
                (Pos::Cr, b'\n') => {
                    self.emit(out, b"\r\n");
                    self.pos = Pos::LineStart;
                    self.line_len = 0;
                }
                (Pos::Cr, b'\r') => self.flag(DataProblem::BareLineEnding),
                (Pos::Cr, _) => {
                    self.flag(DataProblem::BareLineEnding);
                    self.pos = Pos::Mid;
                }
            }
        }
        Fed {
            consumed: i,
            done: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `split` bytes; returns (output, consumed-to-end, problem).
    fn run(input: &[u8], split: usize) -> (Vec<u8>, Option<usize>, Option<DataProblem>) {
        let mut r = DotReader::new(1000, 100);
        let mut out = Vec::new();
        let mut at = 0;
        while at < input.len() {
            let end = (at + split).min(input.len());
            let fed = r.feed(&input[at..end], &mut out, usize::MAX);
            at += fed.consumed;
            if fed.done {
                return (out, Some(at), r.problem());
            }
        }
        (out, None, r.problem())
    }

    #[test]
    fn terminator_unstuffing_and_smuggling_table() {
        use DataProblem::*;
        // (input, body if clean, where the data ends, problem)
        type Case = (
            &'static [u8],
            &'static [u8],
            Option<usize>,
            Option<DataProblem>,
        );
        let cases: Vec<Case> = vec![
            (b".\r\n", b"", Some(3), None),
            (b"a\r\n.\r\nNOOP\r\n", b"a\r\n", Some(6), None),
            (b"..\r\n.\r\n", b".\r\n", Some(7), None),
            (b".x\r\n..y\r\n.\r\n", b"x\r\n.y\r\n", Some(12), None),
            (b"a\r\n.\r", b"a\r\n", None, None),
            // Smuggling attempts: none of these end the data.
            (b"a\n.\nMAIL FROM:<x>\r\n", b"", None, Some(BareLineEnding)),
            (b"a\r.\rMAIL\r\n", b"", None, Some(BareLineEnding)),
            (b"a\n.\r\nMAIL\r\n", b"", None, Some(BareLineEnding)),
            (b"a\r\n.\rMAIL\r\n", b"", None, Some(BareLineEnding)),
            (b"a\r\n.\nMAIL\r\n", b"", None, Some(BareLineEnding)),
            (b"a\r\r\n.\r\n", b"", Some(7), Some(BareLineEnding)),
            // ...and the real terminator after them still ends the data, flagged.
            (b"x\n.\nNOOP\r\n.\r\n", b"", Some(13), Some(BareLineEnding)),
            (b"a\rb\r\n.\r\n", b"", Some(8), Some(BareLineEnding)),
            (b"\n.\r\n", b"", None, Some(BareLineEnding)),
            // A NUL anywhere refuses the message, the terminator after it still ends the data:
            // `<CR><LF><NUL>.<CR><LF>` is data, not an end, here and for a hop that drops NULs.
            (b"a\r\n\0.\r\nMAIL\r\n.\r\n", b"", Some(16), Some(Nul)),
            (b"a\0b\r\n.\r\n", b"", Some(8), Some(Nul)),
            (b".\0\r\n.\r\n", b"", Some(7), Some(Nul)),
            // A bare line ending is reported over a NUL.
            (b"\0\n\r\n.\r\n", b"", Some(7), Some(BareLineEnding)),
        ];
        for (input, body, end, problem) in cases {
            for split in [1, 2, 3, input.len().max(1)] {
                let (out, got_end, got_problem) = run(input, split);
                let shown = String::from_utf8_lossy(input);
                assert_eq!(got_end, end, "end of {shown:?} split {split}");
                assert_eq!(got_problem, problem, "problem of {shown:?} split {split}");
                if problem.is_none() {
                    assert_eq!(out, body, "body of {shown:?} split {split}");
                }
            }
        }
    }

    #[test]
    fn limits() {
        // The limit counts the CRLF: 98 octets of text fit a 100-octet line, 99 do not.
        let long_line = [b"a".repeat(98), b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(run(&long_line, 7).2, None);
        let too_long = [b"a".repeat(99), b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(run(&too_long, 7).2, Some(DataProblem::LineTooLong));
        let big = b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(20);
        let big = [big, b".\r\n".to_vec()].concat();
        let (out, end, problem) = run(&big, 64);
        assert_eq!(problem, Some(DataProblem::TooBig));
        assert_eq!(
            end,
            Some(big.len()),
            "consumes to the terminator past the limit"
        );
        assert!(out.len() <= 1000);
        // A bare LF after the size limit is still reported as the worse problem.
        let both = [big[..big.len() - 3].to_vec(), b".\nHELP\r\n.\r\n".to_vec()].concat();
        assert_eq!(run(&both, 5).2, Some(DataProblem::BareLineEnding));
    }

    #[test]
    fn output_limit_pauses_and_resumes() {
        let input = [b"0123456789".repeat(5), b"\r\n.\r\n".to_vec()].concat();
        let mut r = DotReader::new(1000, 1000);
        let mut out = Vec::new();
        let fed = r.feed(&input, &mut out, 8);
        assert!(!fed.done && out.len() >= 8 && fed.consumed < input.len());
        let mut all = out.clone();
        let mut at = fed.consumed;
        loop {
            out.clear();
            let fed = r.feed(&input[at..], &mut out, 8);
            at += fed.consumed;
            all.extend_from_slice(&out);
            if fed.done {
                break;
            }
        }
        assert_eq!(all, [b"0123456789".repeat(5), b"\r\n".to_vec()].concat());
    }
}
