//! Image dimensions and thumbnails (the `image` crate with only the codecs of the
//! accepted image types). Decoding is bounded by [`image::Limits`]: a small file that
//! claims huge dimensions (a decompression bomb) is refused before any pixel buffer is
//! allocated. Runs on the blocking pool (CPU work).

use std::io::Cursor;

use image::{ImageFormat, ImageReader, Limits};

/// Longest side of a thumbnail, in pixels.
pub const THUMB_MAX: u32 = 256;
/// Widest or tallest image decoded.
pub const MAX_SIDE: u32 = 12_000;
/// Most bytes the decoder may allocate (a 40-megapixel RGBA image).
pub const MAX_ALLOC: u64 = 160 * 1024 * 1024;
/// JPEG quality of thumbnails.
const QUALITY: u8 = 80;

/// An image's dimensions and its thumbnail.
#[derive(Debug, Clone)]
pub struct Thumbnailed {
    /// Width of the image.
    pub width: u32,
    /// Height of the image.
    pub height: u32,
    /// The thumbnail, JPEG.
    pub jpeg: Vec<u8>,
    /// Thumbnail width.
    pub thumb_width: u32,
    /// Thumbnail height.
    pub thumb_height: u32,
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    limits
}

fn format_of(mime: &str) -> Option<ImageFormat> {
    Some(match mime {
        "image/jpeg" => ImageFormat::Jpeg,
        "image/png" => ImageFormat::Png,
        "image/gif" => ImageFormat::Gif,
        "image/webp" => ImageFormat::WebP,
        _ => return None,
    })
}

/// Decodes an image of type `mime` (bounded by the limits above) and makes its
/// thumbnail: at most [`THUMB_MAX`] pixels on its longest side, aspect kept, never
/// larger than the image. `Err` says why it could not be decoded.
pub fn make(bytes: &[u8], mime: &str) -> Result<Thumbnailed, String> {
    let format = format_of(mime).ok_or_else(|| format!("{mime} is not a decoded image type"))?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits());
    let image = reader
        .decode()
        .map_err(|e| format!("the image could not be decoded: {e}"))?;
    let (width, height) = (image.width(), image.height());
    let thumb = if width <= THUMB_MAX && height <= THUMB_MAX {
        image
    } else {
        image.thumbnail(THUMB_MAX, THUMB_MAX)
    };
    let rgb = thumb.to_rgb8();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, QUALITY)
        .encode_image(&rgb)
        .map_err(|e| format!("the thumbnail could not be encoded: {e}"))?;
    Ok(Thumbnailed {
        width,
        height,
        jpeg,
        thumb_width: rgb.width(),
        thumb_height: rgb.height(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn thumbnails_keep_the_aspect_and_never_grow() {
        let t = make(&png(600, 300), "image/png").unwrap();
        assert_eq!((t.width, t.height), (600, 300));
        assert_eq!((t.thumb_width, t.thumb_height), (256, 128));
        let back = image::load_from_memory_with_format(&t.jpeg, ImageFormat::Jpeg).unwrap();
        assert_eq!((back.width(), back.height()), (256, 128));
        let small = make(&png(40, 20), "image/png").unwrap();
        assert_eq!((small.thumb_width, small.thumb_height), (40, 20));
    }

    #[test]
    fn images_past_the_limits_are_refused_before_decoding() {
        // A valid PNG wider than any decoded image: its header alone refuses it.
        let wide = make(&png(MAX_SIDE + 1, 1), "image/png").unwrap_err();
        assert!(wide.to_lowercase().contains("limit"), "{wide}");
        assert!(make(b"\x89PNG\r\n\x1a\nnot really", "image/png").is_err());
    }
}
