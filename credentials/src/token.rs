//! Device tokens: JWTs signed with HS256 under the server's secret, carrying the device
//! and tenant ids and an expiry.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::secret::MAX_CREDENTIAL_LEN;

/// Longest device token looked at; a longer one is invalid without being decoded.
pub const MAX_TOKEN_LEN: usize = MAX_CREDENTIAL_LEN;

/// Claims of a device token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceClaims {
    /// Device id.
    pub sub: String,
    /// Tenant id.
    pub tid: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
}

/// Why a device token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Well signed, but its `exp` has come.
    #[error("device token expired")]
    Expired,
    /// Malformed, signed with another key or algorithm, or missing a claim.
    #[error("invalid device token")]
    Invalid,
}

/// A token could not be signed (never expected with an HMAC key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token: {0}")]
pub struct IssueError(String);

/// Signing and verification keys for device tokens.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenKeys {
    /// Keys from a shared secret.
    pub fn new(secret: &str) -> Self {
        // Pinned to HS256: a token naming any other algorithm (`none`, RS256 with the
        // secret as a "public key", …) is refused before its signature is looked at.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Expiry is checked by `verify_at` against the caller's clock, in milliseconds.
        validation.validate_exp = false;
        TokenKeys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Signs a token for a device.
    pub fn issue(&self, claims: &DeviceClaims) -> Result<String, IssueError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| IssueError(e.to_string()))
    }

    /// Verifies a token's signature and expiry against the system clock.
    pub fn verify(&self, token: &str) -> Result<DeviceClaims, TokenError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self.verify_at(token, now_ms)
    }

    /// Verifies a token's signature and expiry at `now_ms` (Unix milliseconds).
    pub fn verify_at(&self, token: &str, now_ms: i64) -> Result<DeviceClaims, TokenError> {
        if !looks_like_jwt(token) {
            return Err(TokenError::Invalid);
        }
        let claims = jsonwebtoken::decode::<DeviceClaims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|_| TokenError::Invalid)?;
        // JWT `exp` has whole seconds; a token is expired from the first millisecond of
        // its `exp` second, as the live connection is closed then.
        if i128::from(claims.exp) * 1000 <= i128::from(now_ms) {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Cheap shape check before any decoding: bounded length, three base64url parts.
fn looks_like_jwt(token: &str) -> bool {
    token.len() <= MAX_TOKEN_LEN
        && token.bytes().filter(|&b| b == b'.').count() == 2
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const NOW_S: u64 = 1_800_000_000;
    const NOW_MS: i64 = NOW_S as i64 * 1000;

    fn claims(exp: u64) -> DeviceClaims {
        DeviceClaims {
            sub: "d_1".into(),
            tid: "t_1".into(),
            exp,
            iat: NOW_S,
        }
    }

    fn b64(s: &str) -> String {
        // Minimal base64url (no padding) for hand-made tokens.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = s.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn issue_then_verify_round_trips() {
        let keys = TokenKeys::new("secret");
        let token = keys.issue(&claims(NOW_S + 3600)).unwrap();
        assert_eq!(keys.verify_at(&token, NOW_MS), Ok(claims(NOW_S + 3600)));
        // And with the system clock, for a token that expires in an hour from now.
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let live = keys.issue(&claims(now_s + 3600)).unwrap();
        assert_eq!(keys.verify(&live).unwrap().exp, now_s + 3600);
    }

    #[test]
    fn expired_from_the_first_millisecond_of_exp() {
        let keys = TokenKeys::new("secret");
        let token = keys.issue(&claims(NOW_S)).unwrap();
        assert!(keys.verify_at(&token, NOW_MS - 1).is_ok());
        assert_eq!(keys.verify_at(&token, NOW_MS), Err(TokenError::Expired));
        assert_eq!(
            keys.verify_at(&token, NOW_MS + 999),
            Err(TokenError::Expired)
        );
        assert_eq!(keys.verify_at(&token, i64::MAX), Err(TokenError::Expired));
        let far = keys.issue(&claims(u64::MAX)).unwrap();
        assert!(keys.verify_at(&far, i64::MAX).is_ok());
        assert_eq!(TokenError::Expired.to_string(), "device token expired");
        assert_eq!(TokenError::Invalid.to_string(), "invalid device token");
    }

    #[test]
    fn another_key_or_a_tampered_token_is_invalid() {
        let keys = TokenKeys::new("secret");
        let forged = TokenKeys::new("other").issue(&claims(NOW_S + 60)).unwrap();
        assert_eq!(keys.verify_at(&forged, NOW_MS), Err(TokenError::Invalid));
        let token = keys.issue(&claims(NOW_S + 60)).unwrap();
        let (head, sig) = token.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        let tampered = format!("{head}.{flipped}{}", &sig[1..]);
        assert_eq!(keys.verify_at(&tampered, NOW_MS), Err(TokenError::Invalid));
        // A different payload under the original signature.
        let (_, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let other_payload = b64(r#"{"sub":"d_2","tid":"t_1","exp":1900000000,"iat":0}"#);
        let swapped = format!(
            "{}.{other_payload}.{sig}",
            b64(r#"{"alg":"HS256","typ":"JWT"}"#)
        );
        assert_eq!(keys.verify_at(&swapped, NOW_MS), Err(TokenError::Invalid));
    }

    #[test]
    fn other_algorithms_are_refused() {
        let keys = TokenKeys::new("secret");
        let payload = b64(r#"{"sub":"d_1","tid":"t_1","exp":1900000000,"iat":0}"#);
        let token = keys.issue(&claims(NOW_S + 60)).unwrap();
        let sig = token.rsplit_once('.').unwrap().1;
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"RS256","typ":"JWT"}"#,
            r#"{"alg":"HS512","typ":"JWT"}"#,
            r#"{"alg":"ES256"}"#,
            r#"{"typ":"JWT"}"#,
        ] {
            let h = b64(header);
            for t in [
                format!("{h}.{payload}."),
                format!("{h}.{payload}"),
                format!("{h}.{payload}.{sig}"),
            ] {
                assert_eq!(
                    keys.verify_at(&t, NOW_MS),
                    Err(TokenError::Invalid),
                    "{header}: {t}"
                );
            }
        }
        // An HS512 token made with the same secret is refused too.
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims(NOW_S + 60),
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(keys.verify_at(&hs512, NOW_MS), Err(TokenError::Invalid));
    }

    #[test]
    fn missing_claims_are_invalid() {
        let secret = EncodingKey::from_secret(b"secret");
        let keys = TokenKeys::new("secret");
        for body in [
            serde_json::json!({"tid":"t_1","exp":NOW_S + 60,"iat":0}),
            serde_json::json!({"sub":"d_1","tid":"t_1","iat":0}),
            serde_json::json!({"sub":"d_1","tid":"t_1","exp":"soon","iat":0}),
            serde_json::json!({"sub":"d_1","tid":"t_1","exp":-1,"iat":0}),
            serde_json::json!({"sub":1,"tid":"t_1","exp":NOW_S + 60,"iat":0}),
        ] {
            let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &body, &secret).unwrap();
            assert_eq!(
                keys.verify_at(&t, NOW_MS),
                Err(TokenError::Invalid),
                "{body}"
            );
        }
    }

    #[test]
    fn malformed_and_oversized_tokens_are_invalid() {
        let keys = TokenKeys::new("secret");
        let token = keys.issue(&claims(NOW_S + 60)).unwrap();
        for cut in [0, 1, 10, token.len() / 2, token.len() - 1] {
            assert_eq!(
                keys.verify_at(&token[..cut], NOW_MS),
                Err(TokenError::Invalid),
                "{cut}"
            );
        }
        for bad in [
            "", ".", "..", "...", "a.b.c", "garbage", "a.b.c.d", " ", "é.é.é",
        ] {
            assert_eq!(
                keys.verify_at(bad, NOW_MS),
                Err(TokenError::Invalid),
                "{bad:?}"
            );
        }
        assert_eq!(
            keys.verify_at(&format!(" {token}"), NOW_MS),
            Err(TokenError::Invalid)
        );
        // A well-formed token padded past the limit is refused unread.
        let (head, rest) = token.split_once('.').unwrap();
        let padded = format!("{head}{}.{rest}", "A".repeat(MAX_TOKEN_LEN));
        assert_eq!(keys.verify_at(&padded, NOW_MS), Err(TokenError::Invalid));
        let huge = format!("{}.{}.{}", "A".repeat(1 << 20), "A".repeat(1 << 20), "A");
        assert_eq!(keys.verify_at(&huge, NOW_MS), Err(TokenError::Invalid));
    }
}
