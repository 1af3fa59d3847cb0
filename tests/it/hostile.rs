//! Hostile inputs through the real binary (issue 9): images whose headers lie, sessions whose
//! images lie outside their folder, untrusted Markdown and titles in exports, outputs pointed at
//! their own inputs, absurd configs and arguments, saves through planted links, pickle bombs,
//! broken GGUF and safetensors headers; and the app with the worst of them dropped on it.
//!
//! Every command runs under a 3 GiB address-space limit and a 60 s clock. A refusal must be a
//! normal exit with status 1, exactly one `error:` line naming the file, setting or image at
//! fault, no panic and no signal; and nothing outside the place the command writes to may be
//! created or changed. The hostile files are made here, byte by byte.
//!
//! A panic inside the engine thread cannot be provoked from outside on purpose; the engine's own
//! test (`engine::tests::a_panic_in_the_model_fails_that_request_and_the_engine_keeps_serving`)
//! injects one and checks that the request fails by name and the next one is answered.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;
use ziya_visual::chat::ImageData;
use ziya_visual::session::{ImageStorage, NewTurn, Session};

use crate::common::{bin, copy_dir, llm_dir, root, vision_dir};

const ADDRESS_SPACE: u64 = 3 << 30;
const TIME_LIMIT: Duration = Duration::from_secs(60);

/// Runs `cmd` under the address-space limit, killing it (and failing) after the time limit.
fn run(mut cmd: Command) -> Output {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: ADDRESS_SPACE, rlim_max: ADDRESS_SPACE };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.env("RUST_BACKTRACE", "0").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the binary starts");
    let pipe = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = pipe(Box::new(child.stdout.take().unwrap()));
    let err = pipe(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} ran longer than {TIME_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// Checks a refusal and returns its error line, which must contain each of `names`.
fn refused(out: &Output, names: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.signal().is_none(), "killed by signal {:?}:\n{stderr}", out.status.signal());
    assert_eq!(out.status.code(), Some(1), "exit status; stderr:\n{stderr}");
    for bad in ["panicked", "memory allocation of", "RUST_BACKTRACE", "attempt to"] {
        assert!(!stderr.contains(bad), "stderr mentions `{bad}`:\n{stderr}");
    }
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line:\n{stderr}");
    for n in names {
        assert!(errors[0].contains(n), "the error names `{n}`: {}", errors[0]);
    }
    errors[0].to_string()
}

fn succeeded(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "failed ({:?}):\n{stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Every file under `dir` with the hash of its contents (links by their target).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(p.clone(), format!("-> {}", std::fs::read_link(&p).unwrap().display()));
            } else if meta.is_dir() {
                out.insert(p.clone(), "dir".into());
                stack.push(p);
            } else {
                out.insert(p.clone(), format!("{:x}", sha2::Sha256::digest(std::fs::read(&p).unwrap())));
            }
        }
    }
    out
}

fn ask_image(image: &Path) -> Output {
    let mut c = bin();
    c.arg("ask").arg("--vision-model").arg(vision_dir()).arg("--llm-model").arg(llm_dir());
    c.arg("--image").arg(image).args(["--temperature", "0", "--max-new-tokens", "2", "--json", "what is this?"]);
    run(c)
}

/// `ask` with one hostile image: refused, naming the file and `why`, nothing written.
fn image_refused(name: &str, bytes: &[u8], why: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let before = snapshot(dir.path());
    let mut names = vec![name];
    names.extend_from_slice(why);
    let line = refused(&ask_image(&path), &names);
    assert_eq!(snapshot(dir.path()), before);
    line
}

// ---- images ----------------------------------------------------------------------------------

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn encode(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn small_rgb() -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([x as u8 * 16, y as u8 * 16, 99])
    }))
}

/// A 1 KB TIFF whose only strip is "100000×100000" 8-bit grey.
fn huge_tiff() -> Vec<u8> {
    let mut b = b"II*\0".to_vec();
    b.extend_from_slice(&8u32.to_le_bytes());
    let entries: [(u16, u16, u32); 9] = [
        (256, 4, 100_000),       // ImageWidth, LONG
        (257, 4, 100_000),       // ImageLength
        (258, 3, 8),             // BitsPerSample, SHORT
        (259, 3, 1),             // Compression: none
        (262, 3, 1),             // BlackIsZero
        (273, 4, 200),           // StripOffsets
        (277, 3, 1),             // SamplesPerPixel
        (278, 4, 100_000),       // RowsPerStrip
        (279, 4, 1_000_000_000), // StripByteCounts
    ];
    b.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, ty, value) in entries {
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        if ty == 3 {
            b.extend_from_slice(&(value as u16).to_le_bytes());
            b.extend_from_slice(&[0, 0]);
        } else {
            b.extend_from_slice(&value.to_le_bytes());
        }
    }
    b.extend_from_slice(&0u32.to_le_bytes());
    b.resize(1024, 0x55);
    b
}

/// A 35-byte GIF with a 65535×65535 logical screen and frame.
fn huge_gif() -> Vec<u8> {
    let mut b = b"GIF89a".to_vec();
    b.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x80, 0, 0]); // screen, global table of 2 colours
    b.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    b.extend_from_slice(&[0x2C, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0]); // image descriptor
    b.extend_from_slice(&[0x02, 0x02, 0x44, 0x01, 0x00, 0x3B]);
    assert_eq!(b.len(), 35);
    b
}

/// A real JPEG whose frame header is changed to claim 65500×65500.
fn huge_jpeg() -> Vec<u8> {
    let mut b = encode(small_rgb(), image::ImageFormat::Jpeg);
    let sof = b.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline JPEG");
    b[sof + 5..sof + 7].copy_from_slice(&65500u16.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&65500u16.to_be_bytes());
    b
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(kind);
    c.extend_from_slice(data);
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    c.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    c
}

/// A real 1×1 PNG whose header (with a valid checksum) claims 100000×100000.
fn huge_png() -> Vec<u8> {
    let small = encode(image::DynamicImage::ImageRgb8(image::RgbImage::new(1, 1)), image::ImageFormat::Png);
    let mut ihdr = small[16..29].to_vec();
    ihdr[0..4].copy_from_slice(&100_000u32.to_be_bytes());
    ihdr[4..8].copy_from_slice(&100_000u32.to_be_bytes());
    let mut b = small[..8].to_vec();
    b.extend(png_chunk(b"IHDR", &ihdr));
    b.extend_from_slice(&small[33..]);
    b
}

/// A 58-byte BMP claiming 100000×100000 24-bit pixels.
fn huge_bmp() -> Vec<u8> {
    let mut b = b"BM".to_vec();
    b.extend_from_slice(&58u32.to_le_bytes());
    b.extend_from_slice(&[0, 0, 0, 0]);
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&100_000i32.to_le_bytes());
    b.extend_from_slice(&100_000i32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0; 24]);
    b.extend_from_slice(&[1, 2, 3, 0]);
    b
}

/// An extended WebP: VP8X canvas `w`×`h`, then a chunk `kind` that claims `claimed` bytes.
fn webp(w: u32, h: u32, kind: &[u8; 4], claimed: u32) -> Vec<u8> {
    let mut vp8x = vec![0x08, 0, 0, 0]; // EXIF flag
    vp8x.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
    vp8x.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
    let mut body = b"WEBP".to_vec();
    body.extend_from_slice(b"VP8X");
    body.extend_from_slice(&10u32.to_le_bytes());
    body.extend_from_slice(&vp8x);
    body.extend_from_slice(kind);
    body.extend_from_slice(&claimed.to_le_bytes());
    body.extend_from_slice(b"Exif\0\0II*\0");
    let mut b = b"RIFF".to_vec();
    b.extend_from_slice(&(body.len() as u32).to_le_bytes());
    b.extend(body);
    b
}

#[test]
fn a_tiff_claiming_100000_squared_is_refused_before_decoding() {
    let line = image_refused("huge.tiff", &huge_tiff(), &["100000×100000"]);
    assert!(line.contains("million pixels"), "{line}");
}

#[test]
fn a_35_byte_gif_with_a_65535_squared_screen_is_refused() {
    image_refused("screen.gif", &huge_gif(), &["65535×65535"]);
}

#[test]
fn a_jpeg_whose_frame_header_says_65500_squared_is_refused() {
    image_refused("frame.jpg", &huge_jpeg(), &["65500×65500"]);
}

#[test]
fn a_png_and_a_bmp_claiming_100000_squared_are_refused() {
    image_refused("huge.png", &huge_png(), &["100000×100000"]);
    image_refused("huge.bmp", &huge_bmp(), &["huge.bmp"]);
}

#[test]
fn webp_chunks_and_canvases_beyond_the_file_are_refused() {
    // An EXIF chunk claiming 4 GB in a 60-byte file (read for the orientation).
    image_refused("exif.webp", &webp(16, 16, b"EXIF", 0xFFFF_FFF0), &["claims 4294967280 bytes"]);
    // A canvas of 2^24 × 2^24 (the WebP decoder itself refuses it).
    image_refused("canvas.webp", &webp(1 << 24, 1 << 24, b"EXIF", 10), &["too large"]);
}

#[test]
fn an_image_that_is_a_device_or_enormous_is_not_read() {
    refused(&ask_image(Path::new("/dev/zero")), &["/dev/zero", "not a regular file"]);
    let dir = tempfile::tempdir().unwrap();
    let sparse = dir.path().join("sparse.png");
    std::fs::File::create(&sparse).unwrap().set_len(600 << 20).unwrap();
    refused(&ask_image(&sparse), &["sparse.png", "images of up to"]);
}

/// A 1×1 PNG carrying an ICC profile and a zTXt chunk that each inflate to 256 MiB: the
/// metadata budget keeps them from being inflated whole, and the image itself is fine.
#[test]
fn png_metadata_bombs_do_not_take_the_memory() {
    let mut out = Vec::new();
    {
        let mut info = png::Info::with_size(1, 1);
        info.color_type = png::ColorType::Rgb;
        info.bit_depth = png::BitDepth::Eight;
        let zeros = vec![0u8; 256 << 20];
        info.icc_profile = Some(zeros.into());
        let mut enc = png::Encoder::with_info(&mut out, info).unwrap();
        enc.add_ztxt_chunk("Comment".into(), "a".repeat(256 << 20)).unwrap();
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[1, 2, 3]).unwrap();
    }
    assert!(out.len() < 4 << 20, "a bomb: {} bytes", out.len());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.png");
    std::fs::write(&path, &out).unwrap();
    // (Within run()'s 60 s clock, as every command here.)
    succeeded(&ask_image(&path));
}

#[test]
fn sixteen_bit_and_animated_images_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let deep = image::ImageBuffer::<image::Rgba<u16>, _>::from_fn(40, 30, |x, y| {
        image::Rgba([x as u16 * 1500, y as u16 * 2000, 40_000, 50_000])
    });
    let path = dir.path().join("deep.png");
    std::fs::write(&path, encode(image::DynamicImage::ImageRgba16(deep), image::ImageFormat::Png)).unwrap();
    succeeded(&ask_image(&path));

    // 300 frames: only the first is decoded.
    let mut gif = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut gif);
        let frames = (0..300u32)
            .map(|i| image::Frame::new(image::RgbaImage::from_pixel(32, 32, image::Rgba([i as u8, 0, 0, 255]))));
        enc.encode_frames(frames).unwrap();
    }
    let path = dir.path().join("animated.gif");
    std::fs::write(&path, gif).unwrap();
    succeeded(&ask_image(&path));
}

/// An 8000×8000 photo-like JPEG still decodes (within the limits and the address space).
#[test]
fn an_8000_by_8000_jpeg_still_works() {
    // Gradients with some noise, row by row (this test code is not optimised).
    let (w, h) = (8000usize, 8000usize);
    let mut row = vec![0u8; w * 3];
    let mut raw = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let n = ((x as u32).wrapping_mul(2_654_435_761) ^ (y as u32).wrapping_mul(40_503)) >> 28;
            px.copy_from_slice(&[(x / 32) as u8 ^ n as u8, (y / 32) as u8, ((x + y) / 64) as u8]);
        }
        raw.extend_from_slice(&row);
    }
    let img = image::RgbImage::from_raw(w as u32, h as u32, raw).unwrap();
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 80).encode_image(&img).unwrap();
    drop(img);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("photo.jpg");
    std::fs::write(&path, bytes).unwrap();
    succeeded(&ask_image(&path));
}

// ---- sessions --------------------------------------------------------------------------------

fn session_with(images: Vec<ImageData>, title: &str, answer: &str) -> Session {
    let mut s = Session::new();
    s.push_turn(NewTurn { images, query: "q".into(), answer: answer.into(), ..Default::default() });
    s.title = title.into();
    s
}

fn ask_session(session: &Path) -> Output {
    let mut c = bin();
    c.arg("ask").arg("--vision-model").arg(vision_dir()).arg("--llm-model").arg(llm_dir());
    c.arg("--session").arg(session).args(["--temperature", "0", "--max-new-tokens", "2", "--json", "and now?"]);
    run(c)
}

#[test]
fn a_hostile_image_embedded_in_a_session_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    session_with(vec![ImageData::new("screen.gif", huge_gif())], "t", "a").save(&path, ImageStorage::Embedded).unwrap();
    let before = snapshot(dir.path());
    refused(&ask_session(&path), &["screen.gif", "65535×65535"]);
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn session_images_outside_the_sessions_folder_are_not_read() {
    let outer = tempfile::tempdir().unwrap();
    let secret = encode(small_rgb(), image::ImageFormat::Png);
    std::fs::write(outer.path().join("secret.png"), &secret).unwrap();
    let dir = outer.path().join("sessions");
    std::fs::create_dir(&dir).unwrap();
    let hash = format!("{:x}", sha2::Sha256::digest(&secret));
    std::fs::create_dir(dir.join("s.images")).unwrap();
    std::os::unix::fs::symlink(outer.path().join("secret.png"), dir.join("s.images/link.png")).unwrap();
    std::os::unix::fs::symlink(outer.path(), dir.join("out.images")).unwrap();
    let abs = outer.path().join("secret.png").display().to_string();
    for file in [
        "../secret.png",
        abs.as_str(),
        "s.images/link.png",
        "s.images/../../secret.png",
        "out.images/secret.png",
        "/dev/zero",
        "s.images/../../../../../../../dev/zero",
    ] {
        let json = serde_json::json!({
            "format": "ziya-visual-session", "version": 2, "title": "t",
            "images": {hash.clone(): {"name": "secret.png", "mime": "image/png", "size": secret.len(), "file": file}},
            "turns": [{"id": 0, "parent": null, "images": [hash.clone()], "query": "q", "answer": "a"}],
            "active_leaf": 0
        });
        let path = dir.join("s.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let line = refused(&ask_session(&path), &["secret.png"]);
        assert!(line.contains("not a file in the session's images folder"), "{file}: {line}");
    }
}

#[test]
fn a_session_file_that_is_not_a_file_or_too_big_is_refused() {
    refused(&ask_session(Path::new("/dev/zero")), &["/dev/zero", "not a regular file"]);
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.json");
    std::fs::File::create(&big).unwrap().set_len((1 << 30) + 1).unwrap();
    refused(&ask_session(&big), &["big.json", "more than a session file may be"]);
}

// ---- exports ---------------------------------------------------------------------------------

fn export(session: &Path, flag: &str, target: &Path, force: bool) -> Output {
    let mut c = bin();
    c.arg("export").arg("--session").arg(session).arg(flag).arg(target);
    if force {
        c.arg("--force");
    }
    run(c)
}

#[test]
fn a_title_of_dot_dot_exports_inside_the_chosen_folder() {
    let outer = tempfile::tempdir().unwrap();
    std::fs::write(outer.path().join("conversation.md"), "precious").unwrap();
    let session = outer.path().join("s.json");
    for (i, title) in ["..", ".", "/", "CON", &"長".repeat(200)].into_iter().enumerate() {
        let exports = outer.path().join(format!("exports{i}"));
        std::fs::create_dir(&exports).unwrap();
        session_with(vec![], title, "x").save(&session, ImageStorage::Beside).unwrap();
        let before = snapshot(outer.path());
        let out = export(&session, "--markdown", &exports, false);
        succeeded(&out);
        let written = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert_eq!(written.parent().unwrap().parent().unwrap(), exports, "{title:?}: {}", written.display());
        // Only the new export appeared; nothing else changed.
        let after = snapshot(outer.path());
        for (p, h) in &before {
            assert_eq!(after.get(p), Some(h), "{title:?} changed {}", p.display());
        }
        assert!(after.keys().filter(|p| !before.contains_key(*p)).all(|p| p.starts_with(&exports)));
    }
    assert_eq!(std::fs::read_to_string(outer.path().join("conversation.md")).unwrap(), "precious");
}

#[test]
fn exports_do_not_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    session_with(vec![], "same title", "first").save(&a, ImageStorage::Beside).unwrap();
    session_with(vec![], "same title", "second").save(&b, ImageStorage::Beside).unwrap();
    let exports = dir.path().join("out");
    std::fs::create_dir(&exports).unwrap();
    succeeded(&export(&a, "--markdown", &exports, false));
    let md = exports.join("same title/conversation.md");
    let before = snapshot(dir.path());
    refused(&export(&b, "--markdown", &exports, false), &["conversation.md", "already exists", "--force"]);
    assert_eq!(snapshot(dir.path()), before, "the first export is intact");
    succeeded(&export(&b, "--markdown", &exports, true));
    assert!(std::fs::read_to_string(&md).unwrap().contains("second"));

    let html = dir.path().join("story.html");
    std::fs::write(&html, "mine").unwrap();
    refused(&export(&a, "--html", &html, false), &["story.html", "already exists"]);
    assert_eq!(std::fs::read_to_string(&html).unwrap(), "mine");
    succeeded(&export(&a, "--html", &html, true));
}

#[test]
fn exporting_onto_the_session_file_is_refused_even_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("story.json");
    session_with(vec![ImageData::new("a.png", encode(small_rgb(), image::ImageFormat::Png))], "t", "a")
        .save(&session, ImageStorage::Beside)
        .unwrap();
    let before = snapshot(dir.path());
    refused(&export(&session, "--html", &session, true), &["story.json", "session file"]);
    let image = std::fs::read_dir(dir.path().join("story.images")).unwrap().next().unwrap().unwrap().path();
    refused(&export(&session, "--html", &image, true), &["session file"]);
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn html_exports_have_no_live_dangerous_links_and_load_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("s.json");
    let answer = "[a](javascript:alert(1)) <javascript:alert(2)> [b](jav&#x61;script:alert(3)) [c][r] \
                  [d](data:text/html,<script>alert(4)</script>) ![e](http://tracker.example/p.png) \
                  ![f](//cdn.example/x.png) [ok](https://example.com)\n\n[r]: javascript:alert(5)\n";
    session_with(vec![], "<script>alert(6)</script>", answer).save(&session, ImageStorage::Beside).unwrap();
    let html_path = dir.path().join("out.html");
    succeeded(&export(&session, "--html", &html_path, false));
    let html = std::fs::read_to_string(&html_path).unwrap();
    let lower = html.to_ascii_lowercase();
    assert!(!lower.contains("<script"), "no script tag");
    assert!(!lower.contains("href=\"javascript") && !lower.contains("href=\"data") && !lower.contains("href=\"//"));
    assert!(!lower.contains("src=\"http") && !lower.contains("src=\"//"), "nothing loads from elsewhere");
    assert!(html.contains("href=\"https://example.com\""));
    assert!(html.contains("Content-Security-Policy"));
}

// ---- merge-delta and quantize ----------------------------------------------------------------

#[test]
fn merge_delta_refuses_an_output_that_is_or_touches_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let delta = dir.path().join("delta");
    copy_dir(&root().join("tests/fixtures/delta/llama-base"), &base);
    copy_dir(&root().join("tests/fixtures/delta/ziya-delta"), &delta);
    let before = snapshot(dir.path());
    let merge = |out: &Path| {
        let mut c = bin();
        c.arg("merge-delta").arg("--base").arg(&base).arg("--delta").arg(&delta).arg("--out").arg(out);
        run(c)
    };
    refused(&merge(&delta), &["--out", "is the delta folder"]);
    refused(&merge(&base), &["--out", "is the base folder"]);
    refused(&merge(&delta.join("merged")), &["lies inside the delta folder"]);
    refused(&merge(dir.path()), &["contains the base folder"]);
    refused(&merge(&dir.path().join("x/../delta/.")), &["is the delta folder"]);
    assert_eq!(snapshot(dir.path()), before, "the inputs are intact");

    // A good output: built beside and renamed into place, nothing left over.
    let out = dir.path().join("merged");
    succeeded(&merge(&out));
    assert!(out.join("config.json").is_file());
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "no temporary folder left: {names:?}");
    // Merging again into the now non-empty folder is refused, leaving it alone.
    let merged = snapshot(&out);
    refused(&merge(&out), &["already exists"]);
    assert_eq!(snapshot(&out), merged);
}

#[test]
fn quantize_refuses_to_write_over_an_input_file() {
    let dir = tempfile::tempdir().unwrap();
    let llm = dir.path().join("llm");
    copy_dir(&llm_dir(), &llm);
    let before = snapshot(dir.path());
    for victim in ["config.json", "pytorch_model-00001-of-00003.bin", "tokenizer.json"] {
        let mut c = bin();
        c.arg("quantize").arg("--llm-model").arg(&llm).args(["--quant", "q8_0", "--out"]).arg(llm.join(victim));
        refused(&run(c), &[victim, "would replace"]);
    }
    let mut c = bin();
    c.arg("quantize").arg("--llm-model").arg(&llm).args(["--quant", "q8_0", "--out"]).arg(&llm);
    refused(&run(c), &["--out"]);
    assert_eq!(snapshot(dir.path()), before);
}

// ---- configs ---------------------------------------------------------------------------------

fn plan(vision: &Path, llm: &Path, extra: &[&str]) -> Output {
    let mut c = bin();
    c.arg("plan").arg("--vision-model").arg(vision).arg("--llm-model").arg(llm).args(extra);
    run(c)
}

/// A copy of the tiny model's config.json with `key` set to `value`, in a fresh folder.
fn config_with(dir: &Path, which: &str, path: &[&str], value: serde_json::Value) -> PathBuf {
    let folder = dir.join(which);
    std::fs::create_dir_all(&folder).unwrap();
    let src = if which.starts_with("vision") { vision_dir() } else { llm_dir() };
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let mut at = &mut cfg;
    for k in &path[..path.len() - 1] {
        at = &mut at[*k];
    }
    at[path[path.len() - 1]] = value;
    std::fs::write(folder.join("config.json"), cfg.to_string()).unwrap();
    folder
}

#[test]
fn absurd_config_values_are_refused_with_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value, shown) in [
        ("num_hidden_layers", serde_json::json!(1_000_000_000u64), "num_hidden_layers 1000000000"),
        ("max_position_embeddings", serde_json::json!(1u64 << 61), "max_position_embeddings 2305843009213693952"),
        ("hidden_size", serde_json::json!(1u64 << 40), "hidden_size 1099511627776"),
        ("vocab_size", serde_json::json!(u64::MAX), "vocab_size 18446744073709551615"),
        ("rms_norm_eps", serde_json::json!(0.0), "rms_norm_eps 0"),
    ] {
        let llm = config_with(dir.path(), &format!("llm-{key}"), &[key], value);
        refused(&plan(&vision_dir(), &llm, &[]), &["config.json", shown]);
    }
    let vision =
        config_with(dir.path(), "vision", &["vision_config", "num_hidden_layers"], serde_json::json!(1u64 << 40));
    refused(&plan(&vision, &llm_dir(), &[]), &["config.json", "vision_config.num_hidden_layers 1099511627776"]);
    let vision = config_with(dir.path(), "vision2", &["num_query_tokens"], serde_json::json!(1u64 << 40));
    refused(&plan(&vision, &llm_dir(), &[]), &["config.json", "num_query_tokens 1099511627776"]);
    refused(
        &plan(&vision_dir(), &llm_dir(), &["--context", "2305843009213693952"]),
        &["--context 2305843009213693952"],
    );
    refused(&plan(&vision_dir(), &llm_dir(), &["--prompt", "2305843009213693952"]), &["--prompt"]);
}

// ---- checkpoints -----------------------------------------------------------------------------

/// An LLM folder: the tiny model's config and tokenizer, and `file` as its weights.
fn llm_with_weights(dir: &Path, file: &str, bytes: &[u8]) -> PathBuf {
    let llm = dir.join("llm");
    std::fs::create_dir_all(&llm).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::copy(llm_dir().join(f), llm.join(f)).unwrap();
    }
    std::fs::write(llm.join(file), bytes).unwrap();
    llm
}

fn ask_llm(llm: &Path) -> Output {
    let mut c = bin();
    c.arg("ask").arg("--vision-model").arg(vision_dir()).arg("--llm-model").arg(llm);
    c.args(["--temperature", "0", "--max-new-tokens", "2", "--json", "hi"]);
    run(c)
}

fn torch_zip(pickle: &[u8], storage: &[u8]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut out);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pickle).unwrap();
    z.start_file("archive/data/0", opts).unwrap();
    z.write_all(storage).unwrap();
    z.finish().unwrap();
    out.into_inner()
}

fn pickle_str(s: &str) -> Vec<u8> {
    let mut b = vec![b'X'];
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
    b
}

/// A 300-byte state dict whose one value fetches and pairs the same object 40 times: 2^40
/// objects for a reader that copies what it fetches.
#[test]
fn a_pickle_bomb_is_refused_without_growing() {
    let mut p = vec![0x80, 2, b'}', b'q', 1, b'('];
    p.extend(pickle_str("model.embed_tokens.weight"));
    p.extend_from_slice(&[b']', b'q', 0]);
    for _ in 0..40 {
        p.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
    }
    p.extend_from_slice(b"u.");
    assert!(p.len() < 400);
    let dir = tempfile::tempdir().unwrap();
    let llm = llm_with_weights(dir.path(), "pytorch_model.bin", &torch_zip(&p, &[0; 64]));
    let t = Instant::now();
    refused(&ask_llm(&llm), &["llm", "no tensors"]);
    assert!(t.elapsed() < Duration::from_secs(30));
}

/// A tensor record whose shape reaches far past its 64-byte storage.
#[test]
fn a_pickled_tensor_larger_than_its_storage_is_refused() {
    let mut p = vec![0x80, 2, b'}', b'('];
    p.extend(pickle_str("model.embed_tokens.weight"));
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.extend_from_slice(b"(");
    p.extend(pickle_str("storage"));
    p.extend_from_slice(b"ctorch\nFloatStorage\n");
    p.extend(pickle_str("0"));
    p.extend(pickle_str("cpu"));
    p.extend_from_slice(&[b'J', 16, 0, 0, 0, b't', b'Q']); // storage of 16 floats
    p.extend_from_slice(&[b'K', 0]); // offset
    p.extend_from_slice(&[b'J', 0, 0, 1, 0, b'J', 0, 0, 1, 0, 0x86]); // shape 65536 × 65536
    p.extend_from_slice(&[b'J', 0, 0, 1, 0, b'K', 1, 0x86]); // stride
    p.extend_from_slice(&[0x89, b'N', b't', b'R', b'u', b'.']);
    let dir = tempfile::tempdir().unwrap();
    let llm = llm_with_weights(dir.path(), "pytorch_model.bin", &torch_zip(&p, &[0; 64]));
    refused(&ask_llm(&llm), &["pytorch_model.bin", "model.embed_tokens.weight", "storage of 16"]);
}

/// A GGUF v3 file: `kv` metadata (already encoded), one F32 tensor of 32 values at `offset`.
fn gguf(kv: &[(String, Vec<u8>)], dims: &[u64], offset: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&(kv.len() as u64 + 1).to_le_bytes());
    let string = |s: &str| {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    };
    let cfg = std::fs::read_to_string(llm_dir().join("config.json")).unwrap();
    b.extend(string("ziya.config_json"));
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend(string(&cfg));
    for (k, v) in kv {
        b.extend(string(k));
        b.extend_from_slice(v);
    }
    b.extend(string("x"));
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&0u32.to_le_bytes()); // F32
    b.extend_from_slice(&offset.to_le_bytes());
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend_from_slice(&[0u8; 128]);
    b
}

fn u32_value(v: u32) -> Vec<u8> {
    let mut b = 4u32.to_le_bytes().to_vec();
    b.extend_from_slice(&v.to_le_bytes());
    b
}

#[test]
fn gguf_headers_with_alignment_0_or_bad_tensors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("align0.gguf", gguf(&[("general.alignment".into(), u32_value(0))], &[32], 0), "general.alignment 0"),
        ("offset.gguf", gguf(&[], &[32], 1 << 40), "past the end of the file"),
        ("dims.gguf", gguf(&[], &[1 << 32, 1 << 32, 1 << 32], 0), "dimensions multiply"),
        (
            "count.gguf",
            {
                let mut g = gguf(&[], &[32], 0);
                g[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
                g
            },
            "tensors",
        ),
    ];
    for (name, bytes, why) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        refused(&plan(&vision_dir(), &path, &[]), &[name, why]);
    }
}

/// A safetensors header for the given tensors: (name, dtype, shape, offsets).
fn safetensors(tensors: &[(&str, &str, Vec<u64>, [u64; 2])], data: usize) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    for (name, dtype, shape, offsets) in tensors {
        header.insert(name.to_string(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": offsets}));
    }
    let h = serde_json::Value::Object(header).to_string();
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(h.as_bytes());
    b.extend(std::iter::repeat_n(0u8, data));
    b
}

#[test]
fn safetensors_with_bad_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut huge_len = safetensors(&[("a", "F32", vec![2], [0, 8])], 8);
    huge_len[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("header length", huge_len, "the header claims 4611686018427387904 bytes"),
        (
            "offsets past the end",
            safetensors(&[("a", "F32", vec![1 << 20], [0, 4 << 20])], 16),
            "claims bytes 0..4194304",
        ),
        (
            // Offsets that add up past 2^64 (an unchecked sum in the safetensors crate).
            "offsets overflowing",
            safetensors(
                &[("a", "U8", vec![1 << 63], [0, 1 << 63]), ("b", "U8", vec![(1 << 63) - 1], [1 << 63, u64::MAX])],
                0,
            ),
            "claims bytes",
        ),
        ("shape overflowing", safetensors(&[("a", "F64", vec![1 << 40, 1 << 40], [0, 8])], 8), "overflows"),
    ];
    for (i, (what, bytes, why)) in cases.into_iter().enumerate() {
        let llm = llm_with_weights(&dir.path().join(i.to_string()), "model.safetensors", &bytes);
        let line = refused(&ask_llm(&llm), &["model.safetensors", why]);
        assert!(!line.is_empty(), "{what}");
    }
}

#[test]
fn an_enormous_tokenizer_file_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let llm = dir.path().join("llm");
    std::fs::create_dir(&llm).unwrap();
    std::fs::copy(llm_dir().join("config.json"), llm.join("config.json")).unwrap();
    std::fs::File::create(llm.join("tokenizer.json")).unwrap().set_len(65 << 20).unwrap();
    refused(&ask_llm(&llm), &["tokenizer.json", "tokenizer files of up to"]);
}

// ---- fuzz seeds --------------------------------------------------------------------------------

/// Writes the committed seed corpus of `fuzz/` (small valid and hostile inputs for each target):
/// `cargo test --test hostile write_fuzz_seeds -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let corpus = root().join("fuzz/corpus");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    };
    // Images: each format small and valid, 16-bit, animated, with EXIF; and the hostile ones.
    use image::ImageFormat as F;
    let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(8, 6, |x, y| {
        image::Rgba([x as u8 * 30, y as u8 * 40, 200, if x == 0 { 0 } else { 255 }])
    }));
    for (name, format) in [("png", F::Png), ("gif", F::Gif), ("webp", F::WebP), ("bmp", F::Bmp), ("tiff", F::Tiff)] {
        put("image_decode", name, &encode(rgba.clone(), format));
    }
    put("image_decode", "jpg", &encode(small_rgb(), F::Jpeg));
    put("image_decode", "exif.jpg", &std::fs::read(root().join("tests/fixtures/images/exif_rotated.jpg")).unwrap());
    put("image_decode", "palette.png", &std::fs::read(root().join("tests/fixtures/images/palette.png")).unwrap());
    put("image_decode", "small.jpg", &std::fs::read(root().join("tests/fixtures/images/small.jpg")).unwrap());
    let deep = image::DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(5, 4, |x, y| {
        image::Rgb([x as u16 * 9000, y as u16 * 9000, 7])
    }));
    put("image_decode", "16bit.png", &encode(deep.clone(), F::Png));
    put("image_decode", "16bit.tiff", &encode(deep, F::Tiff));
    put("image_decode", "gray.png", &encode(image::DynamicImage::ImageLuma8(image::GrayImage::new(3, 3)), F::Png));
    let mut gif = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut gif);
        enc.encode_frames(
            (0..3u8).map(|i| image::Frame::new(image::RgbaImage::from_pixel(4, 4, image::Rgba([i * 80, 0, 0, 255])))),
        )
        .unwrap();
    }
    put("image_decode", "animated.gif", &gif);
    put("image_decode", "huge.tiff", &huge_tiff());
    put("image_decode", "huge.gif", &huge_gif());
    put("image_decode", "huge.jpg", &huge_jpeg());
    put("image_decode", "huge.png", &huge_png());
    put("image_decode", "huge.bmp", &huge_bmp());
    put("image_decode", "exif.webp", &webp(16, 16, b"EXIF", 0xFFFF_FFF0));

    // Sessions: the v1 fixture, a v2 session with an embedded image and one with a file image, and
    // entries pointing outside the folder (see the fuzz target's fixture).
    put("session_load", "v1.json", &std::fs::read(root().join("tests/fixtures/sessions/v1-three-turns.json")).unwrap());
    const PNG: &[u8] = &[
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53, 0xde, 0x00, 0x00, 0x00,
        0x0c, 0x49, 0x44, 0x41, 0x54, 0x08, 0xd7, 0x63, 0xf8, 0xcf, 0xc0, 0x00, 0x00, 0x03, 0x01, 0x01, 0x00, 0x18,
        0xdd, 0x8d, 0xb0, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ];
    assert!(image::load_from_memory(PNG).is_ok());
    let dir = tempfile::tempdir().unwrap();
    let mut s = session_with(vec![ImageData::new("one.png", PNG.to_vec())], "title", "**bold** [x](https://e.com)");
    s.push_turn(NewTurn { query: "second".into(), answer: "two".into(), ..Default::default() });
    s.add_turn(Some(0), NewTurn { query: "edited".into(), answer: "other".into(), ..Default::default() });
    s.save(&dir.path().join("s.json"), ImageStorage::Embedded).unwrap();
    put("session_load", "embedded.json", &std::fs::read(dir.path().join("s.json")).unwrap());
    s.save(&dir.path().join("s.json"), ImageStorage::Beside).unwrap();
    let beside = std::fs::read_to_string(dir.path().join("s.json")).unwrap();
    put("session_load", "beside.json", beside.as_bytes());
    let mut secret = PNG.to_vec();
    secret.extend_from_slice(b"secret");
    let secret_hash = format!("{:x}", sha2::Sha256::digest(&secret));
    let png_hash = format!("{:x}", sha2::Sha256::digest(PNG));
    for (name, file) in [("dotdot", "../secret.png"), ("link", "s.images/link.png"), ("abs", "/etc/passwd")] {
        put(
            "session_load",
            &format!("{name}.json"),
            beside.replace(&png_hash, &secret_hash).replace(&format!("s.images/{secret_hash}.png"), file).as_bytes(),
        );
    }

    // GGUF: a real file from candle's writer with our metadata, and the hostile ones.
    let cfg = std::fs::read_to_string(llm_dir().join("config.json")).unwrap();
    let tok = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"a":0,"b":1,"[UNK]":2},"unk_token":"[UNK]"}}"#;
    let mut g = std::io::Cursor::new(Vec::new());
    {
        use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
        let t = candle_core::Tensor::arange(0f32, 256., &candle_core::Device::Cpu).unwrap().reshape((1, 256)).unwrap();
        let q8 = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        let f16 = QTensor::quantize(&t.reshape((16, 16)).unwrap(), GgmlDType::F16).unwrap();
        let meta = [
            ("general.architecture", gguf_file::Value::String("ziya-llama".into())),
            ("general.alignment", gguf_file::Value::U32(32)),
            ("ziya.config_json", gguf_file::Value::String(cfg)),
            ("ziya.tokenizer_json", gguf_file::Value::String(tok.into())),
            ("ints", gguf_file::Value::Array(vec![gguf_file::Value::I32(1), gguf_file::Value::I32(2)])),
        ];
        let meta: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        gguf_file::write(&mut g, &meta, &[("a", &q8), ("b", &f16)]).unwrap();
    }
    put("gguf_header", "valid.gguf", g.get_ref());
    put("gguf_header", "align0.gguf", &gguf(&[("general.alignment".into(), u32_value(0))], &[32], 0));
    put("gguf_header", "offset.gguf", &gguf(&[], &[32], 1 << 40));
    put("gguf_header", "dims.gguf", &gguf(&[], &[1 << 32, 1 << 32, 1 << 32], 0));

    // safetensors: a small valid file and the hostile headers.
    put(
        "safetensors_header",
        "small",
        &safetensors(&[("a", "F32", vec![2, 2], [0, 16]), ("b", "F16", vec![3], [16, 22])], 22),
    );
    put(
        "safetensors_header",
        "overflowing",
        &safetensors(
            &[("a", "U8", vec![1 << 63], [0, 1 << 63]), ("b", "U8", vec![(1 << 63) - 1], [1 << 63, u64::MAX])],
            0,
        ),
    );

    // Pickles (mode byte 0: wrapped in a checkpoint zip; 1: a whole file).
    let real = std::fs::read(llm_dir().join("pytorch_model-00003-of-00003.bin")).unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&real)).unwrap();
    let name = zip.file_names().map(|n| n.unwrap().into_owned()).find(|n| n.ends_with("data.pkl")).unwrap();
    let mut pkl = Vec::new();
    zip.by_name(&name).unwrap().read_to_end(&mut pkl).unwrap();
    put("pickle", "tiny-llm.pkl", &[&[0u8][..], &pkl].concat());
    let mut p = vec![0x80, 2, b'}', b'('];
    p.extend(pickle_str("w"));
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    p.extend(pickle_str("storage"));
    p.extend_from_slice(b"ctorch\nFloatStorage\n");
    p.extend(pickle_str("0"));
    p.extend(pickle_str("cpu"));
    p.extend_from_slice(&[
        b'K', 16, b't', b'Q', b'K', 0, b'K', 4, b'K', 4, 0x86, b'K', 4, b'K', 1, 0x86, 0x89, b'N', b't', b'R', b'u',
        b'.',
    ]);
    put("pickle", "one-tensor.pkl", &[&[0u8][..], &p].concat());
    put("pickle", "one-tensor.zip", &[&[1u8][..], &torch_zip(&p, &[0; 64])].concat());

    // Markdown answers (answer \x01 query \x01 title \x01 image name).
    for (i, md) in [
        "# h\n\n**b** _i_ ~~s~~ `c`\n\n```rust\nfn x() {}\n```\n\n| a | b |\n|:-|-:|\n| 1 | 2 |\n\n1. x\n2. y\n\n> q\n",
        "[a](javascript:alert(1)) <javascript:x> [b](jav&#x61;script:y) [c][r] ![i](http://t/x.png) <a@b.c>\n\n[r]: data:text/html,x\n",
        "<script>alert(1)</script><img src=x onerror=alert(2)>\u{1}q<b>\u{1}..\u{1}\"><svg onload=x>.png",
        "[![img](https://a/b.png)](https://c/) [x](<java\nscript:y>) [y]( javascript:z )\u{1}\u{1}CON\u{1}a",
    ]
    .iter()
    .enumerate()
    {
        put("export_html", &format!("md{i}"), md.as_bytes());
    }
}

// ---- arguments and saves ----------------------------------------------------------------------

fn ask_args(extra: &[&str], query: &str) -> Command {
    let mut c = bin();
    c.arg("ask").arg("--vision-model").arg(vision_dir()).arg("--llm-model").arg(llm_dir());
    c.args(["--temperature", "0"]).args(extra).arg(query);
    c
}

#[test]
fn absurd_numbers_and_too_long_prompts_are_refused_before_the_model_loads() {
    // u64::MAX new tokens: no overflow, the numbers in the refusal.
    let line = refused(&run(ask_args(&["--max-new-tokens", "18446744073709551615"], "hi")), &["18446744073709551615"]);
    assert!(line.contains("context"), "{line}");
    // A prompt too long for the context is refused from the configs and the tokenizer alone:
    // with the weights unreadable, the refusal is still about the length.
    let dir = tempfile::tempdir().unwrap();
    let llm = dir.path().join("llm");
    copy_dir(&llm_dir(), &llm);
    for e in std::fs::read_dir(&llm).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors" || x == "bin") {
            std::fs::write(&p, b"not weights").unwrap();
        }
    }
    let mut c = bin();
    c.arg("ask").arg("--vision-model").arg(vision_dir()).arg("--llm-model").arg(&llm);
    c.args(["--temperature", "0", "--max-new-tokens", "4"]).arg("long ".repeat(5000));
    let line = refused(&run(c), &["context"]);
    assert!(!line.contains("safetensors") && !line.contains("not weights"), "{line}");
    // plan with a prompt longer than any context returns at once.
    refused(
        &run({
            let mut c = bin();
            c.arg("plan").arg("--vision-model").arg(vision_dir()).arg("--llm-model").arg(llm_dir());
            c.args(["--prompt", "18446744073709551615"]);
            c
        }),
        &["--prompt"],
    );
}

#[test]
fn a_session_that_cannot_be_saved_is_refused_before_answering() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("missing-folder/s.json");
    let out = run(ask_args(&["--max-new-tokens", "2", "--json", "--save-session", nowhere.to_str().unwrap()], "q"));
    refused(&out, &["missing-folder"]);
    assert!(out.stdout.is_empty(), "nothing generated for a save that cannot happen");
    // A folder or a device is never replaced by a save.
    for target in [dir.path().to_path_buf(), PathBuf::from("/dev/null")] {
        let out = run(ask_args(&["--max-new-tokens", "2", "--save-session", target.to_str().unwrap()], "q"));
        refused(&out, &[target.to_str().unwrap()]);
    }
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
}

#[test]
fn a_save_through_a_planted_link_does_not_touch_what_it_points_to() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let victim = elsewhere.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    // Links where the old, predictable temporary names would be, and the target itself a link.
    for pid in 0..200u32 {
        let _ = symlink(&victim, dir.path().join(format!(".s.json.tmp-{pid}")));
    }
    symlink(&victim, dir.path().join("s.json")).unwrap();
    let before = snapshot(elsewhere.path());
    let s = dir.path().join("s.json");
    succeeded(&run(ask_args(&["--max-new-tokens", "2", "--save-session", s.to_str().unwrap()], "q")));
    assert_eq!(snapshot(elsewhere.path()), before, "the file the links point to is untouched");
    assert!(Session::load(&s).is_ok(), "the session was written in place of the link");
}

// ---- the app -----------------------------------------------------------------------------------

/// The worst of the files above, dropped on the window at once: lying image headers, a device, a
/// sparse 600 MB "photo", a session over the size limit and sessions whose images are hostile or
/// lie outside their folder. Each is refused by name in a notice, nothing takes the memory, and
/// the app still answers a question afterwards.
#[test]
fn the_app_stays_up_when_the_worst_files_are_dropped_on_it() {
    use crate::common::app::*;
    use crate::common::greedy;
    use egui_kittest::kittest::Queryable;
    use ziya_visual::ui::messages::Message;

    let data = tempfile::tempdir().unwrap();
    let drop_dir = tempfile::tempdir().unwrap();
    let put = |name: &str, bytes: &[u8]| {
        let p = drop_dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let mut files = vec![
        put("huge.tiff", &huge_tiff()),
        put("screen.gif", &huge_gif()),
        put("frame.jpg", &huge_jpeg()),
        put("huge.png", &huge_png()),
        put("huge.bmp", &huge_bmp()),
        put("exif.webp", &webp(16, 16, b"EXIF", 0xFFFF_FFF0)),
        PathBuf::from("/dev/zero"),
    ];
    let sparse = drop_dir.path().join("sparse.png");
    std::fs::File::create(&sparse).unwrap().set_len(600 << 20).unwrap();
    files.push(sparse);

    // Sessions: one too big to read, one whose image lies outside its folder, one embedding the
    // GIF that claims 65535×65535.
    let big = drop_dir.path().join("big.json");
    std::fs::File::create(&big).unwrap().set_len((1 << 30) + 1).unwrap();
    let secret = encode(small_rgb(), image::ImageFormat::Png);
    std::fs::write(drop_dir.path().join("secret.png"), &secret).unwrap();
    let hash = format!("{:x}", sha2::Sha256::digest(&secret));
    let outside = serde_json::json!({
        "format": "ziya-visual-session", "version": 2, "title": "outside",
        "images": {hash.clone(): {"name": "secret.png", "mime": "image/png", "size": secret.len(), "file": "../secret.png"}},
        "turns": [{"id": 0, "parent": null, "images": [hash], "query": "q", "answer": "a"}],
        "active_leaf": 0
    });
    let outside_file = put("outside.json", outside.to_string().as_bytes());
    let embedded = drop_dir.path().join("embedded.json");
    session_with(vec![ImageData::new("screen.gif", huge_gif())], "embedded", "a")
        .save(&embedded, ImageStorage::Embedded)
        .unwrap();
    let sessions = [big, outside_file, embedded];
    let before = snapshot(drop_dir.path());

    let mut h = harness(options(data.path(), greedy(4), true));
    wait_ready(&mut h);
    // (The window keeps the latest five notices: the files go in a few at a time.)
    for batch in files.chunks(4) {
        h.state_mut().state.notices.clear();
        drop_files(&mut h, batch);
        step_until(&mut h, "every dropped image to be answered", |a| a.state.composer.attachments.is_empty());
        h.step();
        let notices: Vec<Message> = h.state().state.notices.iter().map(|n| n.message.clone()).collect();
        for path in batch {
            let name = path.file_name().unwrap().to_string_lossy();
            assert!(
                notices.iter().any(|m| matches!(m, Message::ImageRefused { name: n, .. } if *n == name)),
                "{name} refused by name: {notices:?}"
            );
        }
    }
    h.state_mut().state.notices.clear();
    drop_files(&mut h, &sessions);
    for _ in 0..3 {
        h.step();
    }
    let shown: Vec<String> = h.state().state.notices.iter().map(|n| n.message.text(h.state().state.tr())).collect();
    assert!(shown.iter().any(|t| t.contains("big.json") && t.contains("more than a session file may be")), "{shown:?}");
    assert!(shown.iter().any(|t| t.contains("not a file in the session's images folder")), "{shown:?}");
    // The sessions that could be read are listed (their hostile images as unavailable).
    assert!(h.state().state.sessions.iter().any(|(_, s)| s.title == "embedded"), "the embedded session opened");
    assert_eq!(snapshot(drop_dir.path()), before, "nothing where the files came from changed");

    // Still answering: a new conversation, a question, an answer.
    h.state_mut().apply(ziya_visual::ui::state::Intent::NewChat);
    type_and_enter(&mut h, "still there?");
    step_until(&mut h, "the answer", |a| a.state.pending.is_none() && !a.state.session.turns.is_empty());
    assert!(!h.state().state.session.turns[0].answer.is_empty());
    assert!(h.query_all_by_label("still there?").count() >= 1, "the question is shown");
}
