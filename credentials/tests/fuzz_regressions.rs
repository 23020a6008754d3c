//! Replays the `credentials` fuzz target's seed corpus (`fuzz/corpus/credentials/`) and
//! every crash ever found (`fuzz/regressions/credentials/`) through the fuzz target's own
//! checks, on the stable toolchain; plus named hostile inputs.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use switchboard_credentials::fuzzing::{self, FUZZ_NOW_MS, FUZZ_SECRET};
use switchboard_credentials::{DeviceClaims, TokenError, TokenKeys};

const TARGET: &str = "credentials";

/// Every file under `fuzz/<kind>/<target>/`, except dotfiles such as `.gitkeep`.
fn inputs(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(TARGET);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
    files
}

fn replay(files: &[PathBuf]) {
    for file in files {
        let data = std::fs::read(file).unwrap();
        if let Err(panic) = std::panic::catch_unwind(|| fuzzing::credentials(&data)) {
            std::panic::resume_unwind(Box::new(format!(
                "{} failed: {:?}",
                file.display(),
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
            )));
        }
    }
}

#[test]
fn seed_corpus_replays() {
    let files = inputs("corpus");
    assert!(files.len() >= 5, "seed corpus is missing: {files:?}");
    replay(&files);
}

#[test]
fn regressions_replay() {
    replay(&inputs("regressions"));
}

#[test]
fn seed_corpus_has_a_token_that_verifies() {
    // Otherwise the fuzzer never reaches the "verified" checks.
    let keys = TokenKeys::new(FUZZ_SECRET);
    let verified = inputs("corpus")
        .iter()
        .filter_map(|f| String::from_utf8(std::fs::read(f).unwrap()).ok())
        .filter(|t| keys.verify_at(t.trim_end(), FUZZ_NOW_MS).is_ok())
        .count();
    assert!(verified >= 1, "no seed token verifies with FUZZ_SECRET");
}

#[test]
fn hostile_inputs_are_refused_without_panicking() {
    let keys = TokenKeys::new(FUZZ_SECRET);
    let huge = "A".repeat(10 << 20);
    let nested = format!("{}.{}.x", "W".repeat(100_000), "W".repeat(100_000));
    for (what, input) in [
        ("empty", String::new()),
        ("10 MiB of base64", huge.clone()),
        ("10 MiB bearer", format!("Bearer {huge}")),
        ("oversized parts", nested),
        ("dots only", ".".repeat(10_000)),
        ("NUL bytes", "\0.\0.\0".into()),
    ] {
        assert_eq!(
            fuzzing::check_token(&keys, &input),
            Err(TokenError::Invalid),
            "{what}"
        );
        assert_eq!(fuzzing::check_bearer(&input), None, "{what}");
        assert_eq!(fuzzing::check_api_key(&input), None, "{what}");
        fuzzing::credentials(input.as_bytes());
    }
    // Invalid UTF-8 goes through the lossy path.
    fuzzing::credentials(&[0xff, 0xfe, b'.', 0xc3, b'.', 0x80]);
}

#[test]
fn seed_generator_matches_the_checked_in_token() {
    // The valid seed was made like this; regenerate it with
    // `cargo test -p switchboard-credentials -- --ignored print_seed_token`.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/credentials/token-valid");
    let checked_in = std::fs::read_to_string(file).unwrap();
    assert_eq!(checked_in.trim_end(), seed_token());
}

fn seed_token() -> String {
    let now_s = (FUZZ_NOW_MS / 1000) as u64;
    TokenKeys::new(FUZZ_SECRET)
        .issue(&DeviceClaims {
            sub: "d_01hseed".into(),
            tid: "t_01hseed".into(),
            exp: now_s + 3600,
            iat: now_s,
        })
        .unwrap()
}

#[test]
#[ignore = "prints the valid seed token for fuzz/corpus/credentials/"]
fn print_seed_token() {
    println!("{}", seed_token());
}
