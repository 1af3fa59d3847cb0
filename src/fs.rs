//! Writing files so that an interrupted write never damages what was there: everything goes to a
//! temporary file beside the target, is flushed to disk and renamed over it, and the folder is
//! flushed so the rename itself survives a power cut. Readers see the old file or the new one,
//! never a mix.
//!
//! The temporary file is created exclusively (`O_EXCL`, never through a symlink) under an
//! unpredictable name (the `tempfile` crate), so a link planted where a predictable temp name
//! would be cannot redirect a save onto another file.

use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The folder a file lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A file being written in place of `target`: write to it, then [`AtomicFile::commit`]. Dropped
/// without committing, the temporary file is removed and the target is left as it was.
pub struct AtomicFile {
    target: PathBuf,
    writer: BufWriter<tempfile::NamedTempFile>,
}

impl AtomicFile {
    pub fn create(target: &Path) -> Result<Self> {
        // Replacing a device, FIFO or folder by renaming over it is never what a save means.
        if let Ok(meta) = std::fs::symlink_metadata(target) {
            let t = meta.file_type();
            if !(t.is_file() || t.is_symlink()) {
                return Err(Error::io(
                    target,
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "exists and is not a regular file"),
                ));
            }
        }
        let dir = parent_dir(target);
        let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp") // see `is_temporary`
            .tempfile_in(dir)
            .map_err(|e| Error::io(target, e))?;
        Ok(Self { target: target.to_path_buf(), writer: BufWriter::with_capacity(1 << 20, tmp) })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes the data to disk and renames the file over the target.
    pub fn commit(self) -> Result<()> {
        let target = self.target;
        let tmp = self.writer.into_inner().map_err(|e| Error::io(&target, e.into_error()))?;
        tmp.as_file().sync_all().map_err(|e| Error::io(&target, e))?;
        tmp.persist(&target).map_err(|e| Error::io(&target, e.error))?;
        if let Ok(d) = std::fs::File::open(parent_dir(&target)) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

impl Seek for AtomicFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.writer.seek(pos)
    }
}

/// Whether a file name is one of [`AtomicFile`]'s temporaries (left behind when a process was
/// killed mid-write; the file it was replacing is intact).
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Writes `bytes` to `path` atomically (see the module documentation).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_whole_files_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        assert_eq!(names(dir.path()), ["x.json"]);
    }

    #[test]
    fn an_abandoned_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_atomic(&path, b"old").unwrap();
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"half of the new").unwrap();
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["x.json"]);
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_symlink_cannot_redirect_the_write() {
        // The old temp name was `.NAME.tmp-PID`: a link planted under that name (or any other
        // predictable one) must not be followed.
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join("x.json");
        let planted = dir.path().join(format!(".x.json.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write_atomic(&path, b"data").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        // The target itself being a symlink: the rename replaces the link, not what it points to.
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    }

    #[test]
    fn folders_and_devices_are_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_atomic(dir.path(), b"x").unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        #[cfg(unix)]
        {
            let err = write_atomic(Path::new("/dev/null"), b"x").unwrap_err().to_string();
            assert!(err.contains("/dev/null"), "{err}");
            use std::os::unix::fs::FileTypeExt;
            assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
        }
    }
}
