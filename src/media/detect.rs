//! A file's type, from its first bytes (magic numbers, by the `infer` crate), never
//! from its name: the name and the declared `Content-Type` may only agree with the
//! bytes. Only the types of [`ACCEPTED`] are taken.

use protocol::ErrorCode;

use crate::error::ApiError;

/// How many leading bytes decide a type (enough for every type of [`ACCEPTED`]).
pub const SNIFF_BYTES: usize = 8192;

/// The accepted types: MIME type, the file name extensions that mean it, and whether
/// it is an image the server decodes (dimensions and a thumbnail).
pub const ACCEPTED: &[(&str, &[&str], bool)] = &[
    ("image/jpeg", &["jpg", "jpeg", "jpe"], true),
    ("image/png", &["png"], true),
    ("image/gif", &["gif"], true),
    ("image/webp", &["webp"], true),
    ("application/pdf", &["pdf"], false),
    ("video/mp4", &["mp4", "m4v"], false),
    ("audio/m4a", &["m4a"], false),
    ("video/webm", &["webm"], false),
    ("audio/mpeg", &["mp3"], false),
    ("audio/ogg", &["ogg", "oga", "opus"], false),
];

/// The accepted type of `head` (a file's first bytes), if it is one.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    let found = infer::get(head)?;
    ACCEPTED
        .iter()
        .find(|(mime, _, _)| *mime == found.mime_type())
        .map(|(mime, _, _)| *mime)
}

/// Whether `mime` is an image type the server decodes.
pub fn is_image(mime: &str) -> bool {
    ACCEPTED.iter().any(|(m, _, image)| *m == mime && *image)
}

/// The accepted type a file name's extension means, if any.
fn type_of_name(name: &str) -> Option<&'static str> {
    let (_, ext) = name.rsplit_once('.')?;
    let ext = ext.to_ascii_lowercase();
    ACCEPTED
        .iter()
        .find(|(_, exts, _)| exts.contains(&ext.as_str()))
        .map(|(mime, _, _)| *mime)
}

fn unsupported(message: String) -> ApiError {
    ApiError::new(
        ErrorCode::UnsupportedMediaType,
        protocol::validate::bounded(message),
    )
}

/// The type of an upload from its first bytes, checked against its declared name and
/// `Content-Type` (either may be absent; `application/octet-stream` declares nothing):
/// `415 unsupported_media_type` when the bytes are of no accepted type, or of another
/// type than declared.
pub fn check(
    head: &[u8],
    name: Option<&str>,
    content_type: Option<&str>,
) -> Result<&'static str, ApiError> {
    let Some(mime) = sniff(head) else {
        let accepted: Vec<&str> = ACCEPTED.iter().map(|(m, _, _)| *m).collect();
        return Err(unsupported(format!(
            "the file's bytes are of no accepted type ({})",
            accepted.join(", ")
        )));
    };
    if let Some(declared) = name.and_then(type_of_name) {
        if declared != mime {
            return Err(unsupported(format!(
                "the file is named as {declared} but its bytes are {mime}"
            )));
        }
    }
    let declared = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|c| !c.is_empty() && c != "application/octet-stream");
    if let Some(declared) = declared {
        if declared != mime {
            return Err(unsupported(format!(
                "Content-Type says {} but the file's bytes are {mime}",
                protocol::validate::quoted(&declared)
            )));
        }
    }
    Ok(mime)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn the_bytes_decide_and_the_name_must_agree() {
        assert_eq!(check(PNG, None, None).unwrap(), "image/png");
        assert_eq!(check(PNG, Some("a.PNG"), None).unwrap(), "image/png");
        assert_eq!(check(PNG, Some("a.bin"), None).unwrap(), "image/png");
        assert_eq!(
            check(PNG, None, Some("application/octet-stream")).unwrap(),
            "image/png"
        );
        assert_eq!(
            check(b"%PDF-1.7\n", Some("x.pdf"), None).unwrap(),
            "application/pdf"
        );
        let text = b"just some text, named like a picture";
        let e = check(text, Some("photo.png"), None).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedMediaType);
        let e = check(PNG, Some("photo.jpg"), None).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedMediaType);
        let e = check(PNG, None, Some("image/gif")).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedMediaType);
        assert!(is_image("image/webp") && !is_image("application/pdf"));
    }
}
