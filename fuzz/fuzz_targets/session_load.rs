//! Session files from anywhere: the JSON (and the images folder beside it) through
//! `Session::load`, then what the app and the CLI do with a loaded session (export, the model's
//! view of the conversation, saving it again). Never a panic; nothing read from outside the
//! session's folder.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sha2::Digest;
use ziya_visual::session::{ImageStorage, Session};

/// A 1×1 PNG kept in the images folder under its hash (seeds refer to it).
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53, 0xde, 0x00, 0x00, 0x00, 0x0c, 0x49,
    0x44, 0x41, 0x54, 0x08, 0xd7, 0x63, 0xf8, 0xcf, 0xc0, 0x00, 0x00, 0x03, 0x01, 0x01, 0x00, 0x18, 0xdd, 0x8d, 0xb0,
    0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// Another image, kept outside the session's folder (as `../secret.png`, and linked from the
/// images folder as `s.images/link.png`): a session must never load it from there.
fn secret() -> Vec<u8> {
    let mut b = PNG.to_vec();
    b.extend_from_slice(b"secret"); // data after IEND: still a PNG, another hash
    b
}

/// A folder with `s.images/<hash>.png`, and the secret outside it.
struct Fixture {
    _root: tempfile::TempDir,
    dir: std::path::PathBuf,
    secret_hash: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sessions");
        let images = dir.join("s.images");
        std::fs::create_dir_all(&images).unwrap();
        let hash = format!("{:x}", sha2::Sha256::digest(PNG));
        std::fs::write(images.join(format!("{hash}.png")), PNG).unwrap();
        std::fs::write(root.path().join("secret.png"), secret()).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(root.path().join("secret.png"), images.join("link.png")).unwrap();
        let secret_hash = format!("{:x}", sha2::Sha256::digest(secret()));
        Fixture { _root: root, dir, secret_hash }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let path = f.dir.join("s.json");
    std::fs::write(&path, data).unwrap();
    let Ok(s) = Session::load(&path) else { return };
    if s.images.get(&f.secret_hash).is_some_and(|i| i.bytes.is_some()) {
        // Loaded, so either embedded in the file or read from outside the folder.
        let v: serde_json::Value = serde_json::from_slice(data).unwrap();
        assert!(v["images"][&f.secret_hash]["data"].is_string(), "an image outside the session's folder was read");
    }
    let _ = s.active_path();
    let _ = s.image_problems();
    let _ = s.chat_turns("next", &[]);
    for t in &s.turns {
        let _ = s.version_of(t.id);
    }
    let _ = ziya_visual::export::render_html(&s);
    let _ = ziya_visual::export::file_stem_from(&s.title);
    let mut s2 = s.clone();
    if let Some(t) = s.turns.first() {
        s2.switch_to(t.id);
        s2.delete_turn(t.id);
    }
    // Saving what was loaded writes only inside the folder.
    let out = tempfile::tempdir().unwrap();
    let saved = out.path().join("copy.json");
    s.save(&saved, ImageStorage::Beside).unwrap();
    let again = Session::load(&saved).unwrap();
    assert_eq!(again.turns.len(), s.turns.len());
    for entry in std::fs::read_dir(out.path()).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(name == "copy.json" || name == "copy.images", "{name:?}");
    }
});
