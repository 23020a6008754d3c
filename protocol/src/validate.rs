//! Input rules shared by REST and WebSocket validation.

/// Longest client request `id` echoed back.
pub const MAX_CLIENT_ID_LEN: usize = 64;

/// Whether `s` is an E.164 phone number: `+`, a non-zero digit, then 1–14 more digits.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

#[cfg(test)]
mod tests {
    use super::is_e164;

    #[test]
    fn e164_rules() {
        assert!(is_e164("+15550001"));
        assert!(is_e164("+447911123456"));
        assert!(!is_e164("15550001"));
        assert!(!is_e164("+0555"));
        assert!(!is_e164("+1"));
        assert!(!is_e164("+1555000100000000"));
        assert!(!is_e164("+1555a"));
    }
}
