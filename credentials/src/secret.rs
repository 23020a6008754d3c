//! Shared secrets: generating them, hashing API keys, recognising the shape of an API
//! key and of an `Authorization: Bearer` header, and comparing the admin token.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest credential (bearer value, device token) looked at; anything longer is
/// refused unread. Real ones are far shorter: an API key is 67 bytes, a device token
/// about 250.
pub const MAX_CREDENTIAL_LEN: usize = 4096;

/// What every tenant API key starts with; 64 lowercase hex digits follow.
pub const API_KEY_PREFIX: &str = "sk_";

/// Hex digits after [`API_KEY_PREFIX`]: a [`random_secret`].
const API_KEY_HEX_LEN: usize = 64;

/// A random secret of 32 bytes, as 64 lowercase hex digits (URL- and header-safe).
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// SHA-256 of an API key, hex: what the store keeps instead of the key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// `key` when it has the shape of a tenant API key (`sk_` and 64 lowercase hex digits,
/// as `POST /admin/tenants` makes them), else `None`; so garbage is refused before any
/// cache or store lookup.
pub fn parse_api_key(key: &str) -> Option<&str> {
    let hex = key.strip_prefix(API_KEY_PREFIX)?;
    (hex.len() == API_KEY_HEX_LEN && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then_some(key)
}

/// The credential of an `Authorization` header value `Bearer <credential>`: the scheme
/// is case-insensitive (RFC 9110), surrounding whitespace is dropped, and an empty or
/// over-long ([`MAX_CREDENTIAL_LEN`]) credential is refused.
pub fn bearer(header_value: &str) -> Option<&str> {
    const SCHEME: &str = "bearer";
    // Bound the work before trimming: a header can be up to actix's 32 KiB.
    if header_value.len() > MAX_CREDENTIAL_LEN + 64 {
        return None;
    }
    let value = header_value.trim();
    let scheme = value.get(..SCHEME.len())?;
    let rest = &value[SCHEME.len()..];
    if !scheme.eq_ignore_ascii_case(SCHEME) || !rest.starts_with([' ', '\t']) {
        return None;
    }
    let credential = rest.trim();
    (!credential.is_empty() && credential.len() <= MAX_CREDENTIAL_LEN).then_some(credential)
}

/// Whether `given` equals the secret `expected`, in time that depends on neither their
/// contents nor their lengths: both are hashed to 32 bytes and the digests compared in
/// constant time. An empty `expected` (an unset secret) matches nothing.
pub fn secret_matches(given: &str, expected: &str) -> bool {
    let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let expected_digest: [u8; 32] = Sha256::digest(expected.as_bytes()).into();
    let same: bool = given[..].ct_eq(&expected_digest[..]).into();
    same && !expected.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_secrets_are_64_hex_and_differ() {
        let (a, b) = (random_secret(), random_secret());
        assert_eq!(a.len(), 64);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn hash_key_is_sha256_hex() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn api_key_shapes() {
        let key = format!("sk_{}", random_secret());
        assert_eq!(parse_api_key(&key), Some(key.as_str()));
        let hex = "0123456789abcdef".repeat(4);
        assert!(parse_api_key(&format!("sk_{hex}")).is_some());
        for bad in [
            String::new(),
            "sk_".into(),
            "sk_wrong".into(),
            hex.clone(),
            format!("SK_{hex}"),
            format!("sk_{}", hex.to_uppercase()),
            format!("sk_{}", &hex[1..]),
            format!("sk_{hex}0"),
            format!("sk_{hex} "),
            format!(" sk_{hex}"),
            format!("sk_{}g", &hex[1..]),
            format!("sk_{}é", &hex[2..]),
            format!("pk_{hex}"),
        ] {
            assert_eq!(parse_api_key(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER abc"), Some("abc"));
        assert_eq!(bearer("  Bearer   abc  "), Some("abc"));
        assert_eq!(bearer("Bearer\tabc"), Some("abc"));
        assert_eq!(bearer("Bearer a b"), Some("a b"));
        for bad in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer    ",
            "Bearerabc",
            "Basic abc",
            "Token abc",
            "abc",
            "Beare abc",
            "é",
            "Bearé abc",
        ] {
            assert_eq!(bearer(bad), None, "{bad:?}");
        }
        let longest = format!("Bearer {}", "a".repeat(MAX_CREDENTIAL_LEN));
        assert_eq!(bearer(&longest).map(str::len), Some(MAX_CREDENTIAL_LEN));
        let too_long = format!("Bearer {}", "a".repeat(MAX_CREDENTIAL_LEN + 1));
        assert_eq!(bearer(&too_long), None);
        let huge = format!("Bearer {}", "a".repeat(1 << 20));
        assert_eq!(bearer(&huge), None);
    }

    #[test]
    fn secret_matches_only_the_same_secret() {
        let secret = random_secret();
        assert!(secret_matches(&secret, &secret));
        assert!(secret_matches("s3cret", "s3cret"));
        // Same length, different content (first, middle and last byte).
        assert!(!secret_matches("x3cret", "s3cret"));
        assert!(!secret_matches("s3xret", "s3cret"));
        assert!(!secret_matches("s3crex", "s3cret"));
        // Different lengths, including a prefix and an extension.
        assert!(!secret_matches("s3cre", "s3cret"));
        assert!(!secret_matches("s3crett", "s3cret"));
        assert!(!secret_matches(&"a".repeat(10_000), "s3cret"));
        // Empty on either side.
        assert!(!secret_matches("", "s3cret"));
        assert!(!secret_matches("s3cret", ""));
        assert!(!secret_matches("", ""));
    }
}
