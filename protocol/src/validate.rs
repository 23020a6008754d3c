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

/// Deepest nesting of arrays and objects a message body may have. Bodies are stored
/// and pushed as they came; recipients' JSON parsers have depth limits of their own
/// (serde_json's is 128, counting the frame around the body).
pub const MAX_BODY_DEPTH: usize = 64;

/// Longest field value an error message quotes back.
const MAX_QUOTED: usize = 64;

/// Checks a message body that already parsed as one JSON object: nesting at most
/// [`MAX_BODY_DEPTH`], and every number finite as an `f64` (a client parsing `1e400`
/// would fail or read infinity). One pass over the bytes, no recursion, no allocation.
pub fn check_body(raw: &str) -> Result<(), String> {
    let bytes = raw.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_BODY_DEPTH {
                    return Err(format!(
                        "`body` is nested deeper than {MAX_BODY_DEPTH} levels"
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < bytes.len()
                    && matches!(bytes[i + 1], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let finite = raw[start..=i].parse::<f64>().is_ok_and(|n| n.is_finite());
                if !finite {
                    return Err("`body` holds a number out of range".into());
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// An error message cut to 200 characters (a decoder's message may quote the input).
pub fn bounded(message: String) -> String {
    if message.chars().count() <= 200 {
        return message;
    }
    let mut cut: String = message.chars().take(200).collect();
    cut.push('…');
    cut
}

/// `value` as an error message quotes it: at most 64 characters, then `…`.
pub fn quoted(value: &str) -> String {
    if value.chars().count() <= MAX_QUOTED {
        return format!("{value:?}");
    }
    let cut: String = value.chars().take(MAX_QUOTED).collect();
    format!("{cut:?}…")
}

#[cfg(test)]
mod tests {
    use super::{check_body, is_e164, quoted, MAX_BODY_DEPTH};

    #[test]
    fn bodies_are_bounded_in_depth_and_numbers() {
        assert!(check_body(r#"{"a":[1,2.5,-3e10,{"b":"[[[[\"}]"}]}"#).is_ok());
        let deep = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_BODY_DEPTH),
            "]".repeat(MAX_BODY_DEPTH)
        );
        assert!(check_body(&deep).is_err());
        let ok = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_BODY_DEPTH - 1),
            "]".repeat(MAX_BODY_DEPTH - 1)
        );
        assert!(check_body(&ok).is_ok());
        assert!(check_body(r#"{"n":1e400}"#).is_err());
        assert!(check_body(&format!(r#"{{"n":{}}}"#, "9".repeat(400))).is_err());
        assert!(
            check_body(r#"{"s":"1e400"}"#).is_ok(),
            "numbers in strings are text"
        );
    }

    #[test]
    fn long_values_are_cut_when_quoted() {
        assert_eq!(quoted("abc"), "\"abc\"");
        let q = quoted(&"x".repeat(1000));
        assert!(q.len() < 80 && q.ends_with('…'), "{q}");
    }

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
