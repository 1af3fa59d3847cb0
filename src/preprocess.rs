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

use std::io::Cursor;

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::error::{Error, Result};

pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Decodes image bytes, applies the EXIF orientation and converts to 8-bit RGB the way
/// transformers' `convert_to_rgb` does. `name` is used in error messages.
pub fn decode_rgb(bytes: &[u8], name: &str) -> Result<RgbImage> {
    let err = |msg: String| Error::Image { name: name.to_string(), msg };
    let reader =
        ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| err(format!("cannot read: {e}")))?;
    let format = reader.format();
    if format.is_none() {
        return Err(err("not a supported image format (PNG, JPEG, WebP, GIF, BMP, TIFF)".into()));
    }
    let mut decoder = reader.into_decoder().map_err(|e| err(format!("cannot decode: {e}")))?;
    let orientation = decoder.orientation().ok();
    let is_jpeg = format == Some(image::ImageFormat::Jpeg);
    if is_jpeg && !jpeg_is_complete(bytes) {
        return Err(err("the JPEG data ends early (truncated file: an incomplete download or copy?)".into()));
    }
    let jpeg = if is_jpeg { decode_jpeg_like_pil(bytes) } else { None };
    let mut img = match jpeg {
        Some(rgb) => DynamicImage::ImageRgb8(rgb),
        None => DynamicImage::from_decoder(decoder).map_err(|e| err(format!("cannot decode: {e}")))?,
    };
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    if img.width() == 0 || img.height() == 0 {
        return Err(err("the image is empty".into()));
    }
    Ok(to_rgb_like_pil(img))
}

/// Decodes a JPEG to RGB with libjpeg-turbo's algorithms (via mozjpeg): islow IDCT and fancy
/// upsampling, exactly as PIL does. `None` when libjpeg cannot produce RGB (CMYK, say) or the
/// data is damaged; the caller then lets the image crate's decoder try.
fn decode_jpeg_like_pil(bytes: &[u8]) -> Option<RgbImage> {
    // mozjpeg reports libjpeg's fatal errors by unwinding (without the panic hook); keep that
    // inside this function.
    std::panic::catch_unwind(|| {
        let d = mozjpeg::Decompress::new_mem(bytes).ok()?;
        let mut d = d.rgb().ok()?;
        let (w, h) = (d.width() as u32, d.height() as u32);
        let pixels: Vec<[u8; 3]> = d.read_scanlines().ok()?;
        d.finish().ok()?;
        RgbImage::from_raw(w, h, pixels.into_iter().flatten().collect())
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
}
