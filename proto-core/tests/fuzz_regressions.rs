//! Replays committed fuzz inputs on stable Rust: everything under `fuzz/regressions/` and
//! chasquid's FuzzConnection corpus from conformance/suites (Go's "go test fuzz v1" format).

#![allow(clippy::unwrap_used)]

mod fuzzdriver;

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn committed_regressions_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut n = 0;
    for (target, run) in [
        ("session", fuzzdriver::run_session as fn(&[u8])),
        ("session_alphabet", |d: &[u8]| {
            fuzzdriver::run_session(&fuzzdriver::to_smtp_alphabet(d))
        }),
        ("parsers", fuzzdriver::run_parsers),
        ("rules", fuzzdriver::run_rules),
    ] {
        let dir = root.join(target);
        if !dir.exists() {
            continue;
        }
        for f in files(&dir) {
            let data = std::fs::read(&f).unwrap();
            let r = std::panic::catch_unwind(|| run(&data));
            assert!(r.is_ok(), "regression {} fails", f.display());
            n += 1;
        }
    }
    assert!(n > 0, "no regression inputs found under {}", root.display());
}

/// Decodes the single `[]byte("...")` literal of a Go fuzz corpus file.
fn go_bytes(text: &str) -> Vec<u8> {
    let start = text.find("[]byte(\"").expect("a []byte literal") + 8;
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = start;
    loop {
        match b[i] {
            b'"' => return out,
            b'\\' => {
                i += 1;
                match b[i] {
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'0' => out.push(0),
                    b'x' => {
                        out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
                        i += 2;
                    }
                    c => out.push(c),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
}

#[test]
fn chasquid_fuzz_corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../conformance/suites/smtp/chasquid/fuzz-FuzzConnection");
    let corpus = files(&dir);
    assert!(
        corpus.len() >= 10,
        "expected chasquid's corpus in {}",
        dir.display()
    );
    for f in corpus {
        let stream = go_bytes(&std::fs::read_to_string(&f).unwrap());
        for selector in [0u8, 1, 3, 0x81, 0xff] {
            let data = [&[selector][..], &stream].concat();
            let r = std::panic::catch_unwind(|| fuzzdriver::run_session(&data));
            assert!(r.is_ok(), "{} with selector {selector}", f.display());
        }
    }
}
