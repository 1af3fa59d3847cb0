//! A session's images on disk: stored once each by content hash, beside the JSON in a
//! `<stem>.images/` folder (`<hash>.<ext>`) or embedded as base64 — never as a path into the
//! user's photo folders, so a session survives the originals being moved or deleted.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;

use crate::chat::{content_hash, ImageData};

/// An image of a session: its bytes, or why they could not be read.
#[derive(Debug, Clone)]
pub struct SessionImage {
    pub hash: String,
    pub name: String,
    pub mime: String,
    pub bytes: Option<Arc<[u8]>>,
    /// Set when the stored bytes are missing or damaged.
    pub problem: Option<String>,
}

impl SessionImage {
    pub fn from_data(img: &ImageData) -> Self {
        Self {
            hash: img.hash.clone(),
            name: img.name.clone(),
            mime: mime_of(&img.bytes).to_string(),
            bytes: Some(img.bytes.clone()),
            problem: None,
        }
    }

    pub fn data(&self) -> Option<ImageData> {
        self.bytes.as_ref().map(|b| ImageData { hash: self.hash.clone(), name: self.name.clone(), bytes: b.clone() })
    }
}

/// The MIME type of encoded image bytes (by content, not by file name).
pub fn mime_of(bytes: &[u8]) -> &'static str {
    match image::guess_format(bytes) {
        Ok(f) => f.to_mime_type(),
        Err(_) => "application/octet-stream",
    }
}

/// The file extension the session store (and exports) give an image of this type.
pub(crate) fn extension_of(mime: &str) -> &'static str {
    match mime {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "image/bmp" => "bmp",
        "image/tiff" => "tiff",
        _ => "bin",
    }
}

/// `story.json` → `story.images`.
pub fn images_dir_name(session_path: &Path) -> String {
    let stem = session_path.file_stem().and_then(|s| s.to_str()).unwrap_or("session");
    format!("{stem}.images")
}

/// Where an image's bytes are, as a session file records it.
pub(crate) enum Stored<'a> {
    /// Base64 inside the JSON.
    Embedded(&'a str),
    /// A file name relative to the session file's folder.
    File(&'a str),
    Nowhere,
}

/// The largest image a session may carry (bytes, as stored): far above any photo's, far below
/// what would strain the machine.
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;

/// Checks that `file`, as a session file records it, names a regular file directly inside an
/// images folder beside the session (`<stem>.images/<name>`, the only layout ever written) and
/// returns its path. A session file is untrusted input: absolute paths, `..`, deeper paths,
/// symlinks leading out of the folder, FIFOs and devices are refused.
pub(crate) fn image_file_path(dir: &Path, file: &str) -> Result<std::path::PathBuf, String> {
    let refuse = |why: &str| Err(format!("{file:?} is not a file in the session's images folder ({why})"));
    let mut parts = file.split('/');
    let (Some(folder), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return refuse("expected <name>.images/<file>");
    };
    let plain = |p: &str| !p.is_empty() && p != "." && p != ".." && !p.contains(['\\', '\0']) && !p.contains(':');
    if !plain(folder) || !plain(name) || !folder.ends_with(".images") {
        return refuse("expected <name>.images/<file>");
    }
    let path = dir.join(folder).join(name);
    // Symlinks are resolved and the result must still be that folder's direct child.
    let canonical = std::fs::canonicalize(&path).map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
    let folder_canonical =
        std::fs::canonicalize(dir.join(folder)).map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
    let dir_canonical = std::fs::canonicalize(dir).map_err(|e| format!("{} cannot be read: {e}", dir.display()))?;
    if canonical.parent() != Some(folder_canonical.as_path())
        || folder_canonical.parent() != Some(dir_canonical.as_path())
    {
        return refuse("it leads out of the folder");
    }
    let meta = std::fs::metadata(&canonical).map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
    if !meta.is_file() {
        return refuse("not a regular file");
    }
    if meta.len() > MAX_IMAGE_BYTES {
        return Err(format!(
            "{} is {} bytes, more than an image may be ({MAX_IMAGE_BYTES})",
            path.display(),
            meta.len()
        ));
    }
    Ok(canonical)
}

/// Reads at most `MAX_IMAGE_BYTES` (a file may grow after it was checked).
fn read_capped(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(MAX_IMAGE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_IMAGE_BYTES {
        return Err(format!("{} is larger than an image may be ({MAX_IMAGE_BYTES} bytes)", path.display()));
    }
    Ok(bytes)
}

/// Reads an image a session file refers to and checks it against its hash.
pub(crate) fn read_image(dir: &Path, hash: &str, name: &str, mime: &str, stored: Stored<'_>) -> SessionImage {
    let mut img = SessionImage {
        hash: hash.to_string(),
        name: name.to_string(),
        mime: mime.to_string(),
        bytes: None,
        problem: None,
    };
    let bytes = match stored {
        Stored::Embedded(data) if data.len() as u64 > MAX_IMAGE_BYTES / 3 * 4 + 4 => {
            Err(format!("its embedded data is larger than an image may be ({MAX_IMAGE_BYTES} bytes)"))
        }
        Stored::Embedded(data) => base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("embedded data is not base64: {e}")),
        Stored::File(file) => image_file_path(dir, file).and_then(|p| read_capped(&p)),
        Stored::Nowhere => Err("the session stores neither its bytes nor a file for it".to_string()),
    };
    match bytes {
        Ok(b) if content_hash(&b) == hash => img.bytes = Some(b.into()),
        Ok(_) => img.problem = Some("its stored bytes do not match its hash (damaged)".into()),
        Err(e) => img.problem = Some(e),
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session folder with one real image in `s.images/`, and a secret file beside it.
    fn folder() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("s.images")).unwrap();
        std::fs::write(dir.path().join("s.images/a.png"), b"image bytes").unwrap();
        std::fs::write(dir.path().join("secret.png"), b"secret").unwrap();
        (dir, content_hash(b"secret"))
    }

    #[test]
    fn only_plain_names_in_an_images_folder_are_read() {
        let (dir, _) = folder();
        assert!(image_file_path(dir.path(), "s.images/a.png").is_ok());
        for bad in [
            "../secret.png",
            "secret.png",
            "/etc/passwd",
            "s.images/../secret.png",
            "s.images/./a.png",
            "s.images/sub/a.png",
            "s.images/",
            "s.images\\..\\secret.png",
            "other/a.png",
            "/dev/zero",
        ] {
            assert!(image_file_path(dir.path(), bad).is_err(), "{bad} must be refused");
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_out_fifos_and_devices_are_refused() {
        let (dir, hash) = folder();
        let images = dir.path().join("s.images");
        std::os::unix::fs::symlink(dir.path().join("secret.png"), images.join("link.png")).unwrap();
        let err = image_file_path(dir.path(), "s.images/link.png").unwrap_err();
        assert!(err.contains("leads out"), "{err}");
        let img = read_image(dir.path(), &hash, "x", "image/png", Stored::File("s.images/link.png"));
        assert!(img.bytes.is_none() && img.problem.is_some(), "the secret is not read");
        // The images folder itself a link to elsewhere.
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("b.png"), b"b").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("t.images")).unwrap();
        assert!(image_file_path(dir.path(), "t.images/b.png").is_err());
        // A FIFO would block a reader forever; /dev/zero would never end.
        let fifo = images.join("fifo.png");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        extern "C" {
            fn mkfifo(path: *const std::ffi::c_char, mode: u32) -> i32;
        }
        assert_eq!(unsafe { mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = image_file_path(dir.path(), "s.images/fifo.png").unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        std::os::unix::fs::symlink("/dev/zero", images.join("zero.png")).unwrap();
        assert!(image_file_path(dir.path(), "s.images/zero.png").is_err());
    }
}
