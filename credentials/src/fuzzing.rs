//! The checks of the `credentials` fuzz target (`fuzz/fuzz_targets/credentials.rs`),
//! here so that `tests/fuzz_regressions.rs` replays the corpus through the very same
//! code on the stable toolchain. Not an API: the checks panic (by design) when an
//! invariant does not hold, which is how the fuzzer learns of a bug.

use crate::{bearer, parse_api_key, secret_matches, DeviceClaims, TokenError, TokenKeys};
use crate::{API_KEY_PREFIX, MAX_CREDENTIAL_LEN, MAX_TOKEN_LEN};

/// The secret the fuzz target verifies tokens with (the seed corpus has tokens signed
/// with it, so the "verified" branch is reached).
pub const FUZZ_SECRET: &str = "switchboard-fuzz-secret";

/// The clock the fuzz target verifies at: 2027-01-15T08:00:00Z, in Unix milliseconds.
/// Seed tokens expire at `FUZZ_NOW_MS / 1000 + 3600`.
pub const FUZZ_NOW_MS: i64 = 1_800_000_000_000;

/// Runs every credential check on `data`; panics when one fails.
pub fn credentials(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let keys = TokenKeys::new(FUZZ_SECRET);
    let _ = check_token(&keys, &text);
    let _ = check_api_key(&text);
    let _ = check_bearer(&text);
    check_secret_matches(data);
    check_issue_round_trip(&keys, &text);
}

/// Verifies `token` and checks what a verified or refused token must satisfy; returns
/// the verdict for tests.
pub fn check_token(keys: &TokenKeys, token: &str) -> Result<DeviceClaims, TokenError> {
    let verdict = keys.verify_at(token, FUZZ_NOW_MS);
    match &verdict {
        Ok(claims) => {
            assert!(token.len() <= MAX_TOKEN_LEN, "oversized token verified");
            assert!(
                i128::from(claims.exp) * 1000 > i128::from(FUZZ_NOW_MS),
                "expired token verified: {claims:?}"
            );
            // Read the payload without the library's typed path: `sub` and `exp` must
            // be really there, not defaulted.
            let raw = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(token)
                .unwrap_or_else(|e| panic!("verified token does not decode: {e}"));
            assert_eq!(
                raw.claims.get("sub").and_then(|s| s.as_str()),
                Some(claims.sub.as_str()),
                "verified token without its `sub`"
            );
            assert_eq!(
                raw.claims.get("exp").and_then(|e| e.as_u64()),
                Some(claims.exp),
                "verified token without its `exp`"
            );
            assert_eq!(raw.header.alg, jsonwebtoken::Algorithm::HS256);
            // The same token must not verify under another key.
            assert_eq!(
                TokenKeys::new("another secret").verify_at(token, FUZZ_NOW_MS),
                Err(TokenError::Invalid),
                "token verifies under two keys"
            );
        }
        Err(TokenError::Expired) => {
            assert!(token.len() <= MAX_TOKEN_LEN, "oversized token decoded");
        }
        Err(TokenError::Invalid) => {}
    }
    verdict
}

/// Checks that an accepted API key has exactly the issued shape.
pub fn check_api_key(key: &str) -> Option<&str> {
    let parsed = parse_api_key(key);
    if let Some(k) = parsed {
        assert_eq!(k, key, "parse_api_key changed the key");
        let hex = k
            .strip_prefix(API_KEY_PREFIX)
            .unwrap_or_else(|| panic!("no prefix: {k:?}"));
        assert_eq!(hex.len(), 64, "{k:?}");
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{k:?}"
        );
    }
    parsed
}

/// Checks what an accepted bearer credential must satisfy.
pub fn check_bearer(header_value: &str) -> Option<&str> {
    let credential = bearer(header_value);
    if let Some(c) = credential {
        assert!(!c.is_empty() && c.len() <= MAX_CREDENTIAL_LEN, "{c:?}");
        assert_eq!(c, c.trim(), "credential keeps surrounding whitespace");
        let trimmed = header_value.trim();
        assert!(
            trimmed.len() > 6 && trimmed.as_bytes()[..6].eq_ignore_ascii_case(b"bearer"),
            "credential from a non-Bearer header: {header_value:?}"
        );
        assert!(trimmed.ends_with(c), "credential is not the header's tail");
    }
    credential
}

/// Splits `data` at its first NUL into a given and an expected secret and checks that
/// `secret_matches` is plain equality (with an empty expected secret matching nothing).
pub fn check_secret_matches(data: &[u8]) {
    let (given, expected) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let (given, expected) = (
        String::from_utf8_lossy(given),
        String::from_utf8_lossy(expected),
    );
    assert_eq!(
        secret_matches(&given, &expected),
        given == expected && !expected.is_empty(),
        "secret_matches({given:?}, {expected:?})"
    );
}

/// Issues a token whose ids are `text` and checks that it verifies to the same claims
/// (any string survives the JSON and base64 round trip).
pub fn check_issue_round_trip(keys: &TokenKeys, text: &str) {
    // Bounded so the token stays under MAX_TOKEN_LEN: base64 grows it by 4/3, and JSON
    // escaping up to 6x for control characters.
    let id: String = text.chars().take(64).collect();
    let claims = DeviceClaims {
        sub: id.clone(),
        tid: id.chars().rev().collect(),
        exp: (FUZZ_NOW_MS / 1000) as u64 + 60,
        iat: (FUZZ_NOW_MS / 1000) as u64,
    };
    let token = keys
        .issue(&claims)
        .unwrap_or_else(|e| panic!("issue failed for {claims:?}: {e}"));
    assert_eq!(keys.verify_at(&token, FUZZ_NOW_MS), Ok(claims), "{token}");
}
