//! A tiny evaluator for the Python string expressions of chamuyero's `c ~> EXPR` lines.
//!
//! The scripts use exactly this grammar, and nothing else is accepted (anything outside it is
//! an error, never a guess):
//!
//! ```text
//! sum     = product *("+" product)        ; str + str
//! product = atom *("*" atom)              ; str * int or int * str
//! atom    = string / integer / "(" sum ")"
//! string  = "'" *char "'" / DQUOTE *char DQUOTE   ; escapes \r \n \t \\ \' \"
//! integer = 1*DIGIT
//! ```
//!
//! e.g. `'.\n'`, `'xxx\r\n.\r\n'`, `('a' * 899 + '\r\n') * 1166`, `'b' * 55 + '\r\n'`.
//! The result is the UTF-8 encoding of the string, as chamuyero writes it to the socket.

/// The largest string an expression may build (the suites need about 1 MiB).
const MAX_LEN: usize = 16 * 1024 * 1024;

/// Evaluates `src` to the bytes it denotes.
pub(crate) fn eval(src: &str) -> Result<Vec<u8>, String> {
    let tokens = tokenize(src)?;
    let mut parser = Parser { tokens, pos: 0 };
    let value = parser.sum()?;
    if parser.pos != parser.tokens.len() {
        return Err(format!(
            "unexpected {:?} after the expression",
            parser.tokens[parser.pos]
        ));
    }
    match value {
        Value::Str(s) => Ok(s),
        Value::Int(n) => Err(format!("the expression is the integer {n}, not a string")),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Str(Vec<u8>),
    Int(usize),
    Plus,
    Star,
    Open,
    Close,
}

#[derive(Debug)]
enum Value {
    Str(Vec<u8>),
    Int(usize),
}

fn tokenize(src: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = src.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            ' ' | '\t' => {}
            '+' => tokens.push(Token::Plus),
            '*' => tokens.push(Token::Star),
            '(' => tokens.push(Token::Open),
            ')' => tokens.push(Token::Close),
            '0'..='9' => {
                let mut end = i + 1;
                while let Some(&(j, d)) = chars.peek() {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    end = j + 1;
                    chars.next();
                }
                let n = src[i..end]
                    .parse()
                    .map_err(|_| format!("integer {} out of range", &src[i..end]))?;
                tokens.push(Token::Int(n));
            }
            '\'' | '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => {
                            return Err(format!(
                                "unterminated string starting at column {}",
                                i + 1
                            ));
                        }
                        Some((_, q)) if q == c => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'r')) => s.push('\r'),
                            Some((_, 'n')) => s.push('\n'),
                            Some((_, 't')) => s.push('\t'),
                            Some((_, e @ ('\\' | '\'' | '"'))) => s.push(e),
                            Some((_, e)) => return Err(format!("unsupported escape \\{e}")),
                            None => return Err("backslash at the end of the expression".into()),
                        },
                        Some((_, ch)) => s.push(ch),
                    }
                }
                tokens.push(Token::Str(s.into_bytes()));
            }
            other => {
                return Err(format!(
                    "unsupported character {other:?} at column {}",
                    i + 1
                ));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn eat(&mut self, t: &Token) -> bool {
        if self.tokens.get(self.pos) == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn sum(&mut self) -> Result<Value, String> {
        let mut left = self.product()?;
        while self.eat(&Token::Plus) {
            let right = self.product()?;
            left = match (left, right) {
                (Value::Str(mut a), Value::Str(b)) => {
                    if a.len() + b.len() > MAX_LEN {
                        return Err(format!("string longer than {MAX_LEN} bytes"));
                    }
                    a.extend_from_slice(&b);
                    Value::Str(a)
                }
                _ => return Err("`+` is only supported between two strings".into()),
            };
        }
        Ok(left)
    }

    fn product(&mut self) -> Result<Value, String> {
        let mut left = self.atom()?;
        while self.eat(&Token::Star) {
            let right = self.atom()?;
            left = match (left, right) {
                (Value::Str(s), Value::Int(n)) | (Value::Int(n), Value::Str(s)) => {
                    if s.len().saturating_mul(n) > MAX_LEN {
                        return Err(format!("string longer than {MAX_LEN} bytes"));
                    }
                    Value::Str(s.repeat(n))
                }
                _ => return Err("`*` is only supported between a string and an integer".into()),
            };
        }
        Ok(left)
    }

    fn atom(&mut self) -> Result<Value, String> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        match token {
            Some(Token::Str(s)) => Ok(Value::Str(s)),
            Some(Token::Int(n)) => Ok(Value::Int(n)),
            Some(Token::Open) => {
                let inner = self.sum()?;
                if !self.eat(&Token::Close) {
                    return Err("missing `)`".into());
                }
                Ok(inner)
            }
            Some(other) => Err(format!("unexpected {other:?}")),
            None => Err("the expression ends too early".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluates_the_scripts_expressions() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (r"'.\n'", b".\n".to_vec()),
            (r"'xxx\r\n.\r\n'", b"xxx\r\n.\r\n".to_vec()),
            (r"'xxx\n.\n'", b"xxx\n.\n".to_vec()),
            (r"'\r\n.\r\n'", b"\r\n.\r\n".to_vec()),
            (
                r"'b' * 55 + '\r\n'",
                [b"b".repeat(55), b"\r\n".to_vec()].concat(),
            ),
            (r"('a' * 3 + '\r\n') * 2", b"aaa\r\naaa\r\n".to_vec()),
            (r#""dq" + 'sq'"#, b"dqsq".to_vec()),
            (r"2 * 'ab'", b"abab".to_vec()),
            (r"'it\'s'", b"it's".to_vec()),
            ("'ñ'", "ñ".as_bytes().to_vec()),
            ("''", Vec::new()),
        ];
        for (src, want) in cases {
            assert_eq!(eval(src), Ok(want), "evaluating {src:?}");
        }
        let big = eval(r"('a' * 899 + '\r\n') * 1166").unwrap_or_default();
        assert_eq!(big.len(), 901 * 1166);
    }

    #[test]
    fn refuses_everything_else() {
        let bad = [
            "",
            "'abc",
            r"'\x41'",
            "b'abc'",
            "'a' - 'b'",
            "'a' + 1",
            "1 + 2",
            "3",
            "'a' * 'b'",
            "('a'",
            "'a')",
            "'a' 'b'",
            "len('a')",
            "'a' * 99999999999",
            "'a' * 99999999999999999999999",
        ];
        for src in bad {
            assert!(
                eval(src).is_err(),
                "{src:?} must be refused, got {:?}",
                eval(src)
            );
        }
    }
}
