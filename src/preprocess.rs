//! Image preprocessing equal to transformers' `BlipImageProcessor` as the Ziya model card sets it
//! up: convert to RGB (transparency composited onto white, grayscale replicated), resize to
//! size×size ignoring aspect ratio with Pillow's bicubic filter, scale by 1/255, normalise with
//! the OpenAI CLIP mean and std, channels first.
//!
//! Pillow's resampler and alpha compositing are ported exactly (same fixed-point arithmetic), so
//! the resized pixels match PIL's bit for bit once the decoded pixels agree.
//!
//! JPEGs are decoded with libjpeg-turbo's own code (mozjpeg), as PIL does, so even upscaled
//! small JPEGs match; other formats decode identically in both libraries.
//!
//! One deliberate difference: the EXIF orientation of a photo is applied before anything else,
//! so a phone picture does not reach the model sideways. The reference does not do this.

use std::io::{Cursor, Read};
use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::error::{Error, Result};

pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// The most pixels one image may have (2^28: a 16384×16384 scan, a 200 MP phone photo).
pub const MAX_IMAGE_PIXELS: u64 = 1 << 28;
/// The longest side an image may have.
pub const MAX_IMAGE_SIDE: u32 = 65_535;
/// The most memory the decoder's pixel buffer of one image may take (an 8-bit RGB image of
/// [`MAX_IMAGE_PIXELS`] fits; a 16-bit RGBA one of that size does not).
pub const MAX_DECODED_BYTES: u64 = 1 << 30;
/// What the PNG decoder may allocate besides the pixels (an ICC profile or text chunk inflates
/// to at most this).
pub const MAX_PNG_METADATA_BYTES: u64 = 64 << 20;
/// The largest image file read into memory.
pub const MAX_IMAGE_FILE_BYTES: u64 = 512 << 20;

/// `12345678` → `12.3 MB` (for messages).
fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Reads an image file for decoding: a regular file of at most [`MAX_IMAGE_FILE_BYTES`]
/// (a FIFO or device would block or never end, and a huge file would be read whole).
pub fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::Image { name, msg: "is not a regular file".into() });
    }
    if meta.len() > MAX_IMAGE_FILE_BYTES {
        return Err(Error::Image {
            name,
            msg: format!("the file is {}; images of up to {} are accepted", mb(meta.len()), mb(MAX_IMAGE_FILE_BYTES)),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow while it is read: never read more than the limit.
    file.take(MAX_IMAGE_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        return Err(Error::Image { name, msg: format!("the file is larger than {}", mb(MAX_IMAGE_FILE_BYTES)) });
    }
    Ok(bytes)
}

/// Checks an image's size, as its header gives it, against what one image may use.
fn check_image_size(width: u32, height: u32, decoded_bytes: u64) -> std::result::Result<(), String> {
    let pixels = width as u64 * height as u64;
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE || pixels > MAX_IMAGE_PIXELS {
        return Err(format!(
            "its header says {width}×{height} pixels ({:.0} million); images of up to {} million pixels \
             and {MAX_IMAGE_SIDE} pixels a side are accepted",
            pixels as f64 / 1e6,
            MAX_IMAGE_PIXELS / 1_000_000
        ));
    }
    if decoded_bytes > MAX_DECODED_BYTES {
        return Err(format!(
            "its header says {width}×{height} pixels, which would take {} to decode; \
             an image may take up to {}",
            mb(decoded_bytes),
            mb(MAX_DECODED_BYTES)
        ));
    }
    Ok(())
}

/// Checks that every chunk of a RIFF (WebP) container lies inside the file, so that no chunk
/// (EXIF, ICC, frames) is read on the strength of a length the file does not hold.
fn check_riff_chunks(b: &[u8]) -> std::result::Result<(), String> {
    let le32 = |i: usize| -> Option<u64> { Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?) as u64) };
    let riff_end = le32(4).ok_or("the WebP header is truncated")?.saturating_add(8);
    if riff_end > b.len() as u64 {
        return Err(format!(
            "the WebP data ends early: its header says {riff_end} bytes, the file has {} (truncated file?)",
            b.len()
        ));
    }
    let mut at = 12u64;
    while at + 8 <= riff_end {
        let size = le32(at as usize + 4).ok_or("a WebP chunk header is truncated")?;
        let end = at + 8 + size + (size & 1);
        // The last chunk's padding byte may be missing.
        if at + 8 + size > riff_end {
            return Err(format!(
                "a WebP chunk at byte {at} claims {size} bytes, past the end of the data ({riff_end} bytes)"
            ));
        }
        at = end;
    }
    Ok(())
}

/// Decodes image bytes, applies the EXIF orientation and converts to 8-bit RGB the way
/// transformers' `convert_to_rgb` does. `name` is used in error messages.
///
/// The one way images are decoded (attached files, pasted images, thumbnails, images stored in
/// sessions, `ask --image`): the size the header claims is checked against [`MAX_IMAGE_PIXELS`],
/// [`MAX_IMAGE_SIDE`] and [`MAX_DECODED_BYTES`] before any pixel buffer exists, and the decoders
/// run with `image::Limits` for what they allocate on their own (metadata, ICC profiles, text).
pub fn decode_rgb(bytes: &[u8], name: &str) -> Result<RgbImage> {
    let err = |msg: String| Error::Image { name: name.to_string(), msg };
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        return Err(err(format!(
            "the data is {}; images of up to {} are accepted",
            mb(bytes.len() as u64),
            mb(MAX_IMAGE_FILE_BYTES)
        )));
    }
    let mut reader =
        ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| err(format!("cannot read: {e}")))?;
    let Some(format) = reader.format() else {
        return Err(err("not a supported image format (PNG, JPEG, WebP, GIF, BMP, TIFF)".into()));
    };
    if format == image::ImageFormat::WebP {
        check_riff_chunks(bytes).map_err(err)?;
    }
    let mut limits = image::Limits::default();
    // The PNG decoder applies the limit only to what it allocates itself (ICC profiles and
    // text chunks, inflated; rows): far less than the pixels need, which are checked below.
    limits.max_alloc = Some(if format == image::ImageFormat::Png { MAX_PNG_METADATA_BYTES } else { MAX_DECODED_BYTES });
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| err(decode_error(e)))?;
    let (width, height) = decoder.dimensions();
    check_image_size(width, height, decoder.total_bytes()).map_err(err)?;
    let orientation = decoder.orientation().ok();
    let is_jpeg = format == image::ImageFormat::Jpeg;
    if is_jpeg && !jpeg_is_complete(bytes) {
        return Err(err("the JPEG data ends early (truncated file: an incomplete download or copy?)".into()));
    }
    let jpeg = if is_jpeg { decode_jpeg_like_pil(bytes) } else { None };
    let img = match jpeg {
        Some(rgb) => DynamicImage::ImageRgb8(rgb),
        None => DynamicImage::from_decoder(decoder).map_err(|e| err(decode_error(e)))?,
    };
    if img.width() == 0 || img.height() == 0 {
        return Err(err("the image is empty".into()));
    }
    // Conversion is per pixel, so it commutes with the orientation; converting first turns
    // the image at its smallest (8-bit RGB) instead of copying a 16-bit or RGBA buffer.
    let mut rgb = DynamicImage::ImageRgb8(to_rgb_like_pil(img));
    if let Some(o) = orientation {
        rgb.apply_orientation(o);
    }
    Ok(rgb.into_rgb8())
}

/// The decoder's error for a user: limits in plain words.
fn decode_error(e: image::ImageError) -> String {
    match e {
        image::ImageError::Limits(l) => match l.kind() {
            image::error::LimitErrorKind::InsufficientMemory => format!(
                "decoding it would need more memory than the {} an image may use (its data claims more than it holds?)",
                mb(MAX_DECODED_BYTES)
            ),
            image::error::LimitErrorKind::DimensionError => "its dimensions are too large".into(),
            _ => format!("cannot decode: {l}"),
        },
        other => format!("cannot decode: {other}"),
    }
}

/// Decodes a JPEG to RGB with libjpeg-turbo's algorithms (via mozjpeg): islow IDCT and fancy
/// upsampling, exactly as PIL does. `None` when libjpeg cannot produce RGB (CMYK, say) or the
/// data is damaged, or its frame header gives another size than the one already checked; the
/// caller then lets the image crate's decoder try (with its limits).
fn decode_jpeg_like_pil(bytes: &[u8]) -> Option<RgbImage> {
    // mozjpeg reports libjpeg's fatal errors by unwinding (without the panic hook); keep that
    // inside this function.
    std::panic::catch_unwind(|| {
        let d = mozjpeg::Decompress::new_mem(bytes).ok()?;
        // Only the header has been read: nothing sized by it is allocated before this check.
        let (w, h) = (d.width(), d.height());
        check_image_size(u32::try_from(w).ok()?, u32::try_from(h).ok()?, w as u64 * h as u64 * 3).ok()?;
        let mut d = d.rgb().ok()?;
        let (w, h) = (d.width() as u32, d.height() as u32);
        let pixels: Vec<u8> = d.read_scanlines().ok()?;
        d.finish().ok()?;
        RgbImage::from_raw(w, h, pixels)
    })
    .ok()
    .flatten()
}

/// Whether the JPEG's data runs until its end-of-image marker. Decoders pad a truncated file with
/// grey and carry on (PIL refuses it: "image file is truncated"); walking the marker segments and
/// entropy-coded scans tells a cut-off file from a whole one. Data after the end marker (motion
/// photos append a video there) is fine; structures this walk does not understand count as
/// complete and are left to the decoder.
fn jpeg_is_complete(b: &[u8]) -> bool {
    let be16 = |i: usize| -> Option<usize> { Some(((*b.get(i)? as usize) << 8) | *b.get(i + 1)? as usize) };
    let mut i = 2; // after SOI
    loop {
        let Some(&byte) = b.get(i) else { return false };
        if byte != 0xFF {
            return true; // not a marker where one should be: malformed, not our call
        }
        // Skip fill bytes.
        let mut j = i + 1;
        while b.get(j) == Some(&0xFF) {
            j += 1;
        }
        let Some(&marker) = b.get(j) else { return false };
        i = j + 1;
        match marker {
            0xD9 => return true,            // EOI
            0x01 | 0xD0..=0xD7 => continue, // no payload
            _ => {
                let Some(len) = be16(i) else { return false };
                i += len;
                if marker == 0xDA {
                    // Entropy-coded data until the next marker (FF00 is a stuffed byte).
                    loop {
                        match (b.get(i), b.get(i + 1)) {
                            (None, _) | (Some(0xFF), None) => return false,
                            (Some(0xFF), Some(&n)) if n == 0x00 || (0xD0..=0xD7).contains(&n) => i += 2,
                            (Some(0xFF), Some(_)) => break,
                            _ => i += 1,
                        }
                    }
                }
            }
        }
    }
}

/// PIL's `convert_to_rgb` as transformers applies it: RGB stays as is; anything else goes through
/// RGBA and is alpha-composited onto opaque white with Pillow's integer arithmetic.
fn to_rgb_like_pil(img: DynamicImage) -> RgbImage {
    let rgba = match img {
        DynamicImage::ImageRgb8(rgb) => return rgb,
        // 16-bit and float images: Pillow keeps the high byte of 16-bit RGB; do the same.
        DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgb32F(_) => return img.to_rgb8(),
        DynamicImage::ImageRgba8(rgba) => rgba,
        // Grey (with or without alpha) straight to RGB: no RGBA copy four times the size.
        DynamicImage::ImageLuma8(g) => {
            return RgbImage::from_fn(g.width(), g.height(), |x, y| {
                let l = g.get_pixel(x, y).0[0];
                image::Rgb([l, l, l])
            })
        }
        DynamicImage::ImageLumaA8(g) => {
            return RgbImage::from_fn(g.width(), g.height(), |x, y| {
                let [l, a] = g.get_pixel(x, y).0;
                let c = composite_on_white(l, a);
                image::Rgb([c, c, c])
            })
        }
        other => other.to_rgba8(),
    };
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (src, dst) in rgba.pixels().zip(out.pixels_mut()) {
        let [r, g, b, a] = src.0;
        dst.0 = [composite_on_white(r, a), composite_on_white(g, a), composite_on_white(b, a)];
    }
    out
}

/// `Image.alpha_composite(white, src)` for one channel (Pillow's AlphaComposite.c, 7 extra bits).
fn composite_on_white(c: u8, a: u8) -> u8 {
    if a == 0 {
        return 255;
    }
    const PRECISION_BITS: u32 = 7;
    let (c, a) = (c as u32, a as u32);
    let blend = 255 * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let tmp = c * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS);
    let div255 = ((tmp >> 8) + tmp) >> 8;
    (div255 >> PRECISION_BITS) as u8
}

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index, and fixed-point weights (Pillow's `precompute_coeffs`
/// followed by `normalize_coeffs_8bpc`).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let support_base = 2.0; // bicubic
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = support_base * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero, then the bounds are clamped.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for (x, slot) in row.iter_mut().enumerate().take(n) {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let fixed = w * (1u32 << PRECISION_BITS) as f64;
            *slot = if w < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
        }
        bounds.push((xmin, n));
    }
    Coeffs { ksize, bounds, weights }
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// `PIL.Image.resize((w, h), BICUBIC)` on an RGB image, bit-exact: a horizontal pass over the
/// rows the vertical pass needs, then a vertical pass, each rounding to 8 bits.
pub fn resize_bicubic(img: &RgbImage, out_w: usize, out_h: usize) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    if in_w == out_w && in_h == out_h {
        return img.clone();
    }
    let src = img.as_raw();
    let horiz = precompute_coeffs(in_w, out_w);
    let vert = precompute_coeffs(in_h, out_h);
    let half = 1i64 << (PRECISION_BITS - 1);

    // Horizontal pass, only over the source rows the vertical pass reads.
    let (rows_first, rows_end) = if in_h == out_h {
        (0, in_h)
    } else {
        let first = vert.bounds[0].0;
        let (last_min, last_n) = vert.bounds[out_h - 1];
        (first, last_min + last_n)
    };
    let (mid_w, mid_rows, mid): (usize, usize, Vec<u8>) = if in_w != out_w {
        let rows = rows_end - rows_first;
        let mut mid = vec![0u8; out_w * rows * 3];
        for y in 0..rows {
            let src_row = &src[(y + rows_first) * in_w * 3..(y + rows_first + 1) * in_w * 3];
            for xx in 0..out_w {
                let (xmin, n) = horiz.bounds[xx];
                let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + n];
                let mut acc = [half; 3];
                for (x, &w) in k.iter().enumerate() {
                    let p = (xmin + x) * 3;
                    for c in 0..3 {
                        acc[c] += src_row[p + c] as i64 * w as i64;
                    }
                }
                let o = (y * out_w + xx) * 3;
                for c in 0..3 {
                    mid[o + c] = clip8(acc[c]);
                }
            }
        }
        (out_w, rows, mid)
    } else {
        (in_w, in_h, src.clone())
    };

    if in_h == out_h {
        return RgbImage::from_raw(mid_w as u32, mid_rows as u32, mid).expect("buffer size matches dimensions");
    }
    // Vertical pass; row indices are relative to the first row kept by the horizontal pass.
    let offset = if in_w != out_w { rows_first } else { 0 };
    let mut out = vec![0u8; mid_w * out_h * 3];
    for yy in 0..out_h {
        let (ymin, n) = vert.bounds[yy];
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + n];
        for xx in 0..mid_w {
            let mut acc = [half; 3];
            for (y, &w) in k.iter().enumerate() {
                let p = ((ymin - offset + y) * mid_w + xx) * 3;
                for c in 0..3 {
                    acc[c] += mid[p + c] as i64 * w as i64;
                }
            }
            let o = (yy * mid_w + xx) * 3;
            for c in 0..3 {
                out[o + c] = clip8(acc[c]);
            }
        }
    }
    RgbImage::from_raw(mid_w as u32, out_h as u32, out).expect("buffer size matches dimensions")
}

/// Channels-first normalised pixel values: `(v/255 − mean) / std`, the scaling in f64 and the
/// normalisation in f32 as transformers does it.
pub fn normalize(img: &RgbImage) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0f32; 3 * w * h];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            let scaled = (px.0[c] as f64 * (1.0 / 255.0)) as f32;
            out[c * w * h + i] = (scaled - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
    out
}

/// Image bytes → pixel values (3, size, size) on `device`.
pub fn pixel_values(bytes: &[u8], name: &str, size: usize, device: &Device) -> Result<Tensor> {
    let rgb = decode_rgb(bytes, name)?;
    let resized = resize_bicubic(&rgb, size, size);
    Ok(Tensor::from_vec(normalize(&resized), (3, size, size), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compositing_opaque_and_transparent_pixels() {
        for c in 0..=255u8 {
            assert_eq!(composite_on_white(c, 255), c, "opaque pixels are unchanged");
            assert_eq!(composite_on_white(c, 0), 255, "transparent pixels become white");
        }
        // Half-transparent black over white is mid grey.
        assert_eq!(composite_on_white(0, 128), 127);
    }

    #[test]
    fn bicubic_weights_sum_to_one_in_fixed_point() {
        for (input, output) in [(1000, 224), (224, 500), (17, 224), (3000, 7)] {
            let c = precompute_coeffs(input, output);
            for xx in 0..output {
                let (_, n) = c.bounds[xx];
                let sum: i64 = c.weights[xx * c.ksize..xx * c.ksize + n].iter().map(|&w| w as i64).sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= n as i64, "{input}->{output} at {xx}: {sum}");
            }
        }
    }

    #[test]
    fn resizing_a_flat_image_keeps_its_colour() {
        let img = RgbImage::from_pixel(333, 177, image::Rgb([10, 200, 99]));
        let out = resize_bicubic(&img, 224, 224);
        assert!(out.pixels().all(|p| p.0 == [10, 200, 99]));
    }

    fn jpeg_bytes() -> Vec<u8> {
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 128]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn truncated_jpegs_are_refused_by_name() {
        let bytes = jpeg_bytes();
        assert!(decode_rgb(&bytes, "ok.jpg").is_ok());
        for cut in [bytes.len() - 2, bytes.len() - 40, bytes.len() / 2, 400] {
            let err = decode_rgb(&bytes[..cut], "cut.jpg").unwrap_err().to_string();
            assert!(err.contains("cut.jpg"), "{err}");
        }
        // Cut inside the scan data, where decoders would pad the missing rows with grey.
        let err = decode_rgb(&bytes[..bytes.len() - 40], "cut.jpg").unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        // Data after the end marker (motion photos append a video) is not truncation.
        let mut appended = bytes.clone();
        appended.extend_from_slice(b"\x00\x00\x00\x18ftypmp42 trailing video data");
        assert!(decode_rgb(&appended, "motion.jpg").is_ok());
    }

    #[test]
    fn damaged_jpegs_fail_cleanly() {
        let mut bytes = jpeg_bytes();
        let n = bytes.len();
        for b in &mut bytes[200..n - 10] {
            *b = b.wrapping_mul(31).wrapping_add(7);
        }
        // Either a (garbled) image or an error naming the file; never a panic.
        if let Err(e) = decode_rgb(&bytes, "damaged.jpg") {
            assert!(e.to_string().contains("damaged.jpg"));
        }
        let err = decode_rgb(&bytes[..100], "header-only.jpg").unwrap_err().to_string();
        assert!(err.contains("header-only.jpg"), "{err}");
    }

    #[test]
    fn garbage_bytes_are_an_error_naming_the_file() {
        let err = decode_rgb(b"definitely not an image", "notes.txt").unwrap_err();
        assert!(err.to_string().contains("notes.txt"), "{err}");
    }

    fn encode(img: DynamicImage, format: image::ImageFormat) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn headers_claiming_more_than_the_limits_are_refused_before_decoding() {
        // A GIF whose screen and frame are 65535×65535.
        let mut gif = b"GIF89a\xff\xff\xff\xff\x80\0\0\0\0\0\xff\xff\xff".to_vec();
        gif.extend_from_slice(b"\x2c\0\0\0\0\xff\xff\xff\xff\0\x02\x02\x44\x01\0\x3b");
        let err = decode_rgb(&gif, "screen.gif").unwrap_err().to_string();
        assert!(err.contains("screen.gif") && err.contains("65535×65535"), "{err}");
        // Only the screen that large: the first frame is what is decoded (1×1).
        let mut gif = b"GIF89a\xff\xff\xff\xff\x80\0\0\0\0\0\xff\xff\xff".to_vec();
        gif.extend_from_slice(b"\x2c\0\0\0\0\x01\0\x01\0\0\x02\x02\x44\x01\0\x3b");
        assert!(decode_rgb(&gif, "screen.gif").map(|i| i.width() * i.height() <= 1).unwrap_or(true));
        // A JPEG whose frame header says 65500×65500.
        let mut jpg = jpeg_bytes();
        let sof = jpg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpg[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xDC, 0xFF, 0xDC]);
        let err = decode_rgb(&jpg, "frame.jpg").unwrap_err().to_string();
        assert!(err.contains("65500×65500"), "{err}");
        // Within the pixel count but not the decoding budget: 16-bit RGBA at 2^28 pixels.
        assert!(check_image_size(16384, 16384, 16384 * 16384 * 8).unwrap_err().contains("to decode"));
        assert!(check_image_size(8000, 8000, 8000 * 8000 * 3).is_ok());
        assert!(check_image_size(65536, 1, 65536 * 3).is_err());
    }

    #[test]
    fn webp_chunks_must_lie_inside_the_file() {
        let ok = encode(DynamicImage::ImageRgba8(image::RgbaImage::new(3, 2)), image::ImageFormat::WebP);
        assert!(check_riff_chunks(&ok).is_ok());
        assert!(decode_rgb(&ok, "ok.webp").is_ok());
        let mut long = ok.clone();
        long[16..20].copy_from_slice(&u32::MAX.to_le_bytes()); // the first chunk's size
        assert!(check_riff_chunks(&long).unwrap_err().contains("past the end"));
        let mut riff = ok.clone();
        riff[4..8].copy_from_slice(&1_000_000u32.to_le_bytes());
        let err = decode_rgb(&riff, "cut.webp").unwrap_err().to_string();
        assert!(err.contains("cut.webp") && err.contains("ends early"), "{err}");
    }

    #[test]
    fn every_format_and_16_bit_images_decode() {
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(5, 4, image::Rgba([10, 20, 30, 255])));
        for format in [
            image::ImageFormat::Png,
            image::ImageFormat::Gif,
            image::ImageFormat::WebP,
            image::ImageFormat::Bmp,
            image::ImageFormat::Tiff,
        ] {
            let img = decode_rgb(&encode(rgba.clone(), format), "x").unwrap();
            assert_eq!(img.dimensions(), (5, 4), "{format:?}");
        }
        let deep = image::ImageBuffer::<image::Rgba<u16>, _>::from_pixel(3, 2, image::Rgba([65535, 0, 0, 65535]));
        let img = decode_rgb(&encode(DynamicImage::ImageRgba16(deep), image::ImageFormat::Png), "deep.png").unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [255, 0, 0]);
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let err = read_image_file(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(err.contains("/dev/zero") && err.contains("not a regular file"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.png");
        std::fs::File::create(&big).unwrap().set_len(MAX_IMAGE_FILE_BYTES + 1).unwrap();
        let err = read_image_file(&big).unwrap_err().to_string();
        assert!(err.contains("big.png") && err.contains("images of up to"), "{err}");
    }

    #[test]
    fn grey_images_convert_as_through_rgba() {
        let la = image::GrayAlphaImage::from_fn(7, 5, |x, y| image::LumaA([(x * 37 + y) as u8, (y * 60) as u8]));
        let via_rgba = |img: DynamicImage| {
            let rgba = img.to_rgba8();
            RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
                let [r, g, b, a] = rgba.get_pixel(x, y).0;
                image::Rgb([composite_on_white(r, a), composite_on_white(g, a), composite_on_white(b, a)])
            })
        };
        let img = DynamicImage::ImageLumaA8(la.clone());
        assert_eq!(to_rgb_like_pil(img.clone()), via_rgba(img));
        let l = DynamicImage::ImageLuma8(image::GrayImage::from_fn(7, 5, |x, y| image::Luma([(x * 30 + y) as u8])));
        assert_eq!(to_rgb_like_pil(l.clone()), via_rgba(l));
    }
}
