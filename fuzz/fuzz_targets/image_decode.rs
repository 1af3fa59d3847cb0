//! Any bytes through the one image decoding entry point: an image or an error naming it, never a
//! panic, and never a buffer beyond the limits (run under an address-space limit: an allocation
//! sized by a lying header aborts the process, which libFuzzer reports as a crash).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ziya_visual::preprocess::{decode_rgb, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE};

fuzz_target!(|data: &[u8]| {
    match decode_rgb(data, "fuzz.img") {
        Ok(img) => {
            let (w, h) = img.dimensions();
            assert!(w > 0 && h > 0 && w <= MAX_IMAGE_SIDE && h <= MAX_IMAGE_SIDE);
            assert!(w as u64 * h as u64 <= MAX_IMAGE_PIXELS);
            // What the model and the thumbnails do next.
            let small = ziya_visual::preprocess::resize_bicubic(&img, 16, 16);
            assert_eq!(small.dimensions(), (16, 16));
        }
        Err(e) => assert!(e.to_string().contains("fuzz.img"), "{e}"),
    }
});
