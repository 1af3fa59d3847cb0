//! Conversations on disk: the transcript format shared by `ask --session` and the app.
//!
//! A session is one versioned JSON file. Images are identified by the SHA-256 of their bytes and
//! stored once each, either beside the JSON in a `<name>.images/` folder (`<hash>.<ext>`) or
//! embedded as base64 — never as a path into the user's photo folders, so a session survives the
//! originals being moved or deleted. Every write is atomic: a temporary file in the same folder
//! is written, flushed to disk and renamed over the old one, so an interrupted save leaves the
//! previous file intact.
//!
//! ```json
//! {
//!   "format": "ziya-visual-session", "version": 1,
//!   "title": "…", "created_at": 1764050000, "updated_at": 1764050100,
//!   "model": {"vision_model": "…", "llm_model": "…", "dtype": "f32", "device": "cpu"},
//!   "settings": {"max_new_tokens": 128, "temperature": 0.7, "top_p": 0.1, …},
//!   "images": {"<sha256>": {"name": "cat.jpg", "mime": "image/jpeg", "size": 12345,
//!                           "file": "story.images/<sha256>.jpg"}},
//!   "turns": [{"images": ["<sha256>"], "query": "…", "answer": "…", "token_ids": [...],
//!              "created_at": 1764050100, "stats": {...}}]
//! }
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::chat::{content_hash, ChatTurn, ImageData};
use crate::error::{Error, Result};
use crate::inference::{StopReason, Timings};
use crate::sampling::SamplingParams;

pub const FORMAT: &str = "ziya-visual-session";
pub const VERSION: u32 = 1;

/// The model a session was made with (for the record and for exports).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub vision_model: String,
    pub llm_model: String,
    pub dtype: String,
    pub device: String,
}

/// How one answer was produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub stop: StopReason,
    pub timings: Timings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ImageEntry {
    name: String,
    mime: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TurnRecord {
    images: Vec<String>,
    query: String,
    answer: String,
    #[serde(default)]
    token_ids: Vec<u32>,
    #[serde(default)]
    created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stats: Option<TurnStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionFile {
    format: String,
    version: u32,
    #[serde(default)]
    title: String,
    #[serde(default)]
    created_at: u64,
    #[serde(default)]
    updated_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<ModelInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settings: Option<SamplingParams>,
    #[serde(default)]
    images: BTreeMap<String, ImageEntry>,
    #[serde(default)]
    turns: Vec<TurnRecord>,
}

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

/// One finished exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// Content hashes, in the order the images were given.
    pub images: Vec<String>,
    pub query: String,
    pub answer: String,
    pub token_ids: Vec<u32>,
    pub created_at: u64,
    pub stats: Option<TurnStats>,
}

#[derive(Debug, Clone, Default)]
pub struct Session {
    pub title: String,
    pub created_at: u64,
    pub updated_at: u64,
    pub model: Option<ModelInfo>,
    pub settings: Option<SamplingParams>,
    pub turns: Vec<Turn>,
    pub images: BTreeMap<String, SessionImage>,
}

/// Where images go when a session is saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageStorage {
    /// In a `<stem>.images/` folder beside the JSON file.
    Beside,
    /// Inside the JSON as base64: one self-contained file.
    Embedded,
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The MIME type of encoded image bytes (by content, not by file name).
pub fn mime_of(bytes: &[u8]) -> &'static str {
    match image::guess_format(bytes) {
        Ok(f) => f.to_mime_type(),
        Err(_) => "application/octet-stream",
    }
}

fn extension_of(mime: &str) -> &'static str {
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

impl Session {
    pub fn new() -> Self {
        let now = now_unix();
        Self { created_at: now, updated_at: now, ..Default::default() }
    }

    /// Adds an image (deduplicated by content) and returns its hash.
    pub fn add_image(&mut self, img: &ImageData) -> String {
        self.images.entry(img.hash.clone()).or_insert_with(|| SessionImage::from_data(img));
        img.hash.clone()
    }

    /// Appends a finished turn; the title defaults to the first question.
    pub fn push_turn(
        &mut self,
        images: &[ImageData],
        query: &str,
        answer: &str,
        token_ids: &[u32],
        stats: Option<TurnStats>,
    ) {
        let hashes = images.iter().map(|i| self.add_image(i)).collect();
        if self.title.is_empty() {
            self.title = title_from(query);
        }
        let now = now_unix();
        self.turns.push(Turn {
            images: hashes,
            query: query.to_string(),
            answer: answer.to_string(),
            token_ids: token_ids.to_vec(),
            created_at: now,
            stats,
        });
        self.updated_at = now;
    }

    /// The images that cannot be used, with the reason.
    pub fn image_problems(&self) -> Vec<String> {
        self.images
            .values()
            .filter_map(|i| {
                i.problem.as_ref().map(|p| format!("image {} ({}): {p}", i.name, &i.hash[..12.min(i.hash.len())]))
            })
            .collect()
    }

    /// The turns as the model pipeline takes them, followed by a new question. Fails, naming the
    /// image, when a stored image is gone: the conversation could not be reproduced without it.
    pub fn chat_turns(&self, query: &str, images: &[ImageData]) -> Result<Vec<ChatTurn>> {
        let mut out = Vec::with_capacity(self.turns.len() + 1);
        for turn in &self.turns {
            let imgs = turn
                .images
                .iter()
                .map(|h| {
                    let img = self.images.get(h).ok_or_else(|| {
                        Error::Request(format!("the session refers to image {h}, which it does not list"))
                    })?;
                    img.data().ok_or_else(|| {
                        Error::Request(format!(
                            "image {} of this session is unavailable: {}",
                            img.name,
                            img.problem.as_deref().unwrap_or("missing")
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            out.push(ChatTurn { images: imgs, query: turn.query.clone(), answer: Some(turn.answer.clone()) });
        }
        out.push(ChatTurn { images: images.to_vec(), query: query.to_string(), answer: None });
        Ok(out)
    }

    /// Reads a session file. A file from a newer format version is refused (and left untouched).
    pub fn load(path: &Path) -> Result<Self> {
        let err = |msg: String| Error::Session { path: path.to_path_buf(), msg };
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON (corrupt?): {e}")))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(err(format!("not a ziya-visual session (no \"format\": \"{FORMAT}\")")));
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version > VERSION as u64 {
            return Err(err(format!(
                "written by a newer ziya-visual (format version {version}; this build reads up to {VERSION}); the file was left untouched"
            )));
        }
        if version == 0 {
            return Err(err("has no valid format version".into()));
        }
        let file: SessionFile = serde_json::from_value(value).map_err(|e| err(format!("malformed: {e}")))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut images = BTreeMap::new();
        for (hash, entry) in &file.images {
            images.insert(hash.clone(), read_image(dir, hash, entry));
        }
        let turns = file
            .turns
            .into_iter()
            .map(|t| Turn {
                images: t.images,
                query: t.query,
                answer: t.answer,
                token_ids: t.token_ids,
                created_at: t.created_at,
                stats: t.stats,
            })
            .collect();
        Ok(Self {
            title: file.title,
            created_at: file.created_at,
            updated_at: file.updated_at,
            model: file.model,
            settings: file.settings,
            turns,
            images,
        })
    }

    /// Writes the session atomically; images go beside it or inside it as `storage` says.
    /// Images whose bytes are unavailable keep their entry so nothing is silently dropped.
    pub fn save(&self, path: &Path, storage: ImageStorage) -> Result<()> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let images_dir_rel = images_dir_name(path);
        let mut entries = BTreeMap::new();
        for (hash, img) in &self.images {
            let mut entry = ImageEntry {
                name: img.name.clone(),
                mime: img.mime.clone(),
                size: img.bytes.as_ref().map_or(0, |b| b.len() as u64),
                file: None,
                data: None,
            };
            match (&img.bytes, storage) {
                (Some(bytes), ImageStorage::Embedded) => {
                    entry.data = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
                }
                (Some(bytes), ImageStorage::Beside) => {
                    let rel = format!("{images_dir_rel}/{hash}.{}", extension_of(&img.mime));
                    let target = dir.join(&rel);
                    // Content-addressed: an existing file of the right size is this image.
                    let present = std::fs::metadata(&target).map(|m| m.len() == bytes.len() as u64).unwrap_or(false);
                    if !present {
                        let folder = dir.join(&images_dir_rel);
                        std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
                        write_atomic(&target, bytes)?;
                    }
                    entry.file = Some(rel);
                }
                (None, _) => {
                    entry.size = 0;
                    entry.file = Some(format!("{images_dir_rel}/{hash}.{}", extension_of(&img.mime)));
                }
            }
            entries.insert(hash.clone(), entry);
        }
        let file = SessionFile {
            format: FORMAT.into(),
            version: VERSION,
            title: self.title.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            model: self.model.clone(),
            settings: self.settings.clone(),
            images: entries,
            turns: self
                .turns
                .iter()
                .map(|t| TurnRecord {
                    images: t.images.clone(),
                    query: t.query.clone(),
                    answer: t.answer.clone(),
                    token_ids: t.token_ids.clone(),
                    created_at: t.created_at,
                    stats: t.stats.clone(),
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::Session { path: path.to_path_buf(), msg: format!("cannot serialise: {e}") })?;
        write_atomic(path, &json)
    }
}

fn read_image(dir: &Path, hash: &str, entry: &ImageEntry) -> SessionImage {
    let mut img = SessionImage {
        hash: hash.to_string(),
        name: entry.name.clone(),
        mime: entry.mime.clone(),
        bytes: None,
        problem: None,
    };
    let bytes = if let Some(data) = &entry.data {
        base64::engine::general_purpose::STANDARD.decode(data).map_err(|e| format!("embedded data is not base64: {e}"))
    } else if let Some(file) = &entry.file {
        let p = dir.join(file);
        std::fs::read(&p).map_err(|e| format!("{} cannot be read: {e}", p.display()))
    } else {
        Err("the session stores neither its bytes nor a file for it".to_string())
    };
    match bytes {
        Ok(b) if content_hash(&b) == hash => img.bytes = Some(b.into()),
        Ok(_) => img.problem = Some("its stored bytes do not match its hash (damaged)".into()),
        Err(e) => img.problem = Some(e),
    }
    img
}

/// A title from the first question: its first line, at most 60 characters.
pub fn title_from(query: &str) -> String {
    let line = query.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let mut t: String = line.chars().take(60).collect();
    if line.chars().count() > 60 {
        t.push('…');
    }
    if t.is_empty() {
        "Untitled".into()
    } else {
        t
    }
}

/// Writes `bytes` to `path` so that readers see either the old file or the new one, never a mix:
/// write a temporary file beside it, flush it to disk, rename it over the target, then flush the
/// folder so the rename itself survives a power cut.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(color: [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(5, 3, image::Rgb(color));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn sample_session() -> Session {
        let a = ImageData::new("a.png", png([1, 2, 3]));
        let b = ImageData::new("b.png", png([4, 5, 6]));
        let mut s = Session::new();
        s.settings = Some(SamplingParams { seed: Some(9), ..Default::default() });
        s.push_turn(&[a.clone(), b], "第一个问题 \u{0007} 🐱\n", "答案\t\"quoted\"\u{0000}", &[5, 6, 7], None);
        s.push_turn(&[], "text only", "ok", &[8], None);
        s.push_turn(&[a], "same image again", "yes", &[], None);
        s
    }

    fn assert_same(a: &Session, b: &Session) {
        assert_eq!(a.title, b.title);
        assert_eq!(a.turns, b.turns);
        assert_eq!(a.settings, b.settings);
        assert_eq!(a.images.len(), b.images.len());
        for (h, img) in &a.images {
            let other = &b.images[h];
            assert_eq!(img.bytes, other.bytes, "bytes of {h}");
            assert_eq!(img.name, other.name);
            assert!(other.problem.is_none());
        }
    }

    #[test]
    fn round_trip_with_images_beside_and_embedded() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample_session();
        assert_eq!(s.images.len(), 2, "the repeated image is stored once");
        for storage in [ImageStorage::Beside, ImageStorage::Embedded] {
            let path = dir.path().join(format!("{storage:?}.json"));
            s.save(&path, storage).unwrap();
            assert_same(&s, &Session::load(&path).unwrap());
        }
        assert_eq!(std::fs::read_dir(dir.path().join("Beside.images")).unwrap().count(), 2);
        assert!(!dir.path().join("Embedded.images").exists());
    }

    #[test]
    fn session_survives_being_moved_with_its_images_folder() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let s = sample_session();
        s.save(&a.path().join("s.json"), ImageStorage::Beside).unwrap();
        std::fs::rename(a.path().join("s.json"), b.path().join("s.json")).unwrap();
        std::fs::rename(a.path().join("s.images"), b.path().join("s.images")).unwrap();
        assert_same(&s, &Session::load(&b.path().join("s.json")).unwrap());
    }

    #[test]
    fn newer_versions_are_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("future.json");
        let text = format!(r#"{{"format": "{FORMAT}", "version": 99, "turns": []}}"#);
        std::fs::write(&path, &text).unwrap();
        let err = Session::load(&path).unwrap_err().to_string();
        assert!(err.contains("newer") && err.contains("future.json"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn corrupt_files_are_reported_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.json");
        std::fs::write(&path, b"{\"format\": \"ziya-visual-sess").unwrap();
        let err = Session::load(&path).unwrap_err().to_string();
        assert!(err.contains("broken.json") && err.contains("corrupt"), "{err}");
    }

    #[test]
    fn a_missing_or_damaged_image_is_named_but_the_session_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let s = sample_session();
        s.save(&path, ImageStorage::Beside).unwrap();
        let mut files: Vec<_> =
            std::fs::read_dir(dir.path().join("s.images")).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        std::fs::remove_file(&files[0]).unwrap();
        std::fs::write(&files[1], b"garbage").unwrap();
        let loaded = Session::load(&path).unwrap();
        assert_eq!(loaded.turns.len(), 3);
        let problems = loaded.image_problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("cannot be read")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("damaged")), "{problems:?}");
        let err = loaded.chat_turns("next", &[]).unwrap_err().to_string();
        assert!(err.contains(".png"), "names the image: {err}");
    }

    #[test]
    fn atomic_write_replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
    }

    #[test]
    fn titles_come_from_the_first_line() {
        assert_eq!(title_from("\n  hello world \nmore"), "hello world");
        assert_eq!(title_from(""), "Untitled");
        assert_eq!(title_from(&"长".repeat(70)).chars().count(), 61);
    }
}
