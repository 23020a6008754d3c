//! Webhook signatures: `Switchboard-Signature: t=<unix secs>,v1=<hex HMAC-SHA256>` over
//! `"<t>.<body>"` with the endpoint's secret, and their verification (constant time).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// What every webhook endpoint secret starts with; a [`crate::random_secret`] follows.
pub const WEBHOOK_SECRET_PREFIX: &str = "whsec_";

/// A new endpoint secret (`whsec_` and 64 hex digits).
pub fn new_webhook_secret() -> String {
    format!("{WEBHOOK_SECRET_PREFIX}{}", crate::random_secret())
}

/// Hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`.
pub fn webhook_mac(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `Switchboard-Signature` header value for `body` sent at `timestamp`.
pub fn webhook_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", webhook_mac(secret, timestamp, body))
}

/// Whether `header` (a `Switchboard-Signature` value) signs `body` under `secret`, with
/// a timestamp at most `tolerance_secs` away from `now_secs` (replay protection).
pub fn verify_webhook_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> bool {
    let mut timestamp = None;
    let mut macs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = v.parse::<i64>().ok(),
            Some(("v1", v)) => macs.push(v),
            _ => {}
        }
    }
    let Some(t) = timestamp else {
        return false;
    };
    if (now_secs - t).abs() > tolerance_secs {
        return false;
    }
    let expected = webhook_mac(secret, t, body);
    macs.iter()
        .any(|m| bool::from(m.as_bytes().ct_eq(expected.as_bytes())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_a_changed_body_or_old_timestamp_does_not() {
        let secret = new_webhook_secret();
        assert!(secret.starts_with(WEBHOOK_SECRET_PREFIX));
        let sig = webhook_signature(&secret, 1_700_000_000, b"{\"a\":1}");
        assert!(sig.starts_with("t=1700000000,v1="));
        assert!(verify_webhook_signature(
            &secret,
            &sig,
            b"{\"a\":1}",
            1_700_000_010,
            300
        ));
        assert!(!verify_webhook_signature(
            &secret,
            &sig,
            b"{\"a\":2}",
            1_700_000_010,
            300
        ));
        assert!(!verify_webhook_signature(
            "whsec_other",
            &sig,
            b"{\"a\":1}",
            1_700_000_010,
            300
        ));
        assert!(!verify_webhook_signature(
            &secret,
            &sig,
            b"{\"a\":1}",
            1_700_001_000,
            300
        ));
        assert!(!verify_webhook_signature(
            &secret,
            "garbage",
            b"{\"a\":1}",
            1_700_000_010,
            300
        ));
    }

    #[test]
    fn the_mac_matches_an_independent_computation() {
        // Python: hmac.new(b"whsec_k", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
        assert_eq!(
            webhook_mac("whsec_k", 1_700_000_000, b"{\"a\":1}"),
            "a252a4340d8bbbdbac8643a2812cc7d628ad79bfba544bff054ac2fa10f795a2"
        );
    }
}
