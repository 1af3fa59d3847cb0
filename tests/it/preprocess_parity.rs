//! Image preprocessing against transformers' BlipImageProcessor (PIL backend): the resized 8-bit
//! image within 1/255 of PIL's per pixel and channel, on odd sizes, grayscale, RGBA, palette, a
//! large and a small JPEG, and an exactly-sized image; EXIF orientation applied.

use ziya_visual::preprocess::{decode_rgb, normalize, resize_bicubic};

use crate::common::*;

#[test]
fn resized_pixels_match_pil_within_one_level() {
    let records = &cases().preprocessing;
    assert!(records.len() >= 8);
    let mut report = Vec::new();
    for rec in records {
        let file = rec.file.as_str();
        let bytes = std::fs::read(image_path(file)).unwrap();
        let rgb = decode_rgb(&bytes, file).unwrap();
        let ours = resize_bicubic(&rgb, 224, 224);
        let theirs = image::open(fixtures().join("reference").join(&rec.resized)).unwrap().to_rgb8();
        assert_eq!(ours.dimensions(), theirs.dimensions());
        let (mut max, mut differing) = (0u8, 0usize);
        for (a, b) in ours.as_raw().iter().zip(theirs.as_raw()) {
            let d = a.abs_diff(*b);
            max = max.max(d);
            differing += (d > 0) as usize;
        }
        report.push(format!("{file}: max diff {max}, {differing} of {} values differ", ours.as_raw().len()));
        assert!(max <= 1, "{file}: resized pixels differ from PIL by up to {max}/255");
        // Decoding (libjpeg-turbo for JPEG, lossless for PNG) and resampling both follow PIL's
        // code, so every fixture must come out bit-exact.
        assert_eq!(differing, 0, "{file}: must resize bit-exactly like PIL");
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn exif_orientation_is_applied() {
    // Stored 120x80 with orientation 6: displayed (and fed to the model) as 80x120.
    let bytes = std::fs::read(image_path("exif_rotated.jpg")).unwrap();
    let rgb = decode_rgb(&bytes, "exif_rotated.jpg").unwrap();
    assert_eq!(rgb.dimensions(), (80, 120));
}

#[test]
fn normalisation_matches_the_processor_output() {
    let refs = reference_tensors();
    for name in ["photo_odd", "rgba"] {
        let bytes = std::fs::read(image_path(&format!("{name}.png"))).unwrap();
        let resized = resize_bicubic(&decode_rgb(&bytes, name).unwrap(), 224, 224);
        let ours =
            candle_core::Tensor::from_vec(normalize(&resized), (3, 224, 224), &candle_core::Device::Cpu).unwrap();
        let diff = max_abs_diff(&ours, &refs[&format!("pixel_values.{name}")]);
        assert!(diff < 1e-6, "{name}: pixel values differ by {diff}");
    }
}
