//! Conversations on disk: the transcript format shared by `ask --session` and the app.
//!
//! A session is one versioned JSON file. Images are identified by the SHA-256 of their bytes and
//! stored once each, either beside the JSON in a `<name>.images/` folder (`<hash>.<ext>`) or
//! embedded as base64 — never as a path into the user's photo folders, so a session survives the
//! originals being moved or deleted. Every write is atomic: a temporary file in the same folder
//! is written, flushed to disk and renamed over the old one, so an interrupted save leaves the
//! previous file intact.
//!
//! Turns form a tree: editing a question or regenerating an answer adds a sibling version of
//! that turn, and `active_leaf` names the last turn of the conversation being shown; the
//! conversation is the path from the root to it.
//!
//! ```json
//! {
//!   "format": "ziya-visual-session", "version": 2,
//!   "title": "…", "created_at": 1764050000, "updated_at": 1764050100,
//!   "model": {"vision_model": "…", "llm_model": "…", "dtype": "f32", "device": "cpu"},
//!   "settings": {"max_new_tokens": 128, "temperature": 0.7, "top_p": 0.1, …},
//!   "images": {"<sha256>": {"name": "cat.jpg", "mime": "image/jpeg", "size": 12345,
//!                           "file": "story.images/<sha256>.jpg"}},
//!   "turns": [{"id": 0, "parent": null, "images": ["<sha256>"], "query": "…", "answer": "…",
//!              "token_ids": [...], "created_at": 1764050100, "settings": {…}, "stats": {...}}],
//!   "active_leaf": 0
//! }
//! ```
//!
//! Version 1 (issue 2's linear list of turns without ids) is read and migrated; saving over an
//! older file first keeps it as `<name>.v1.bak`.

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
pub const VERSION: u32 = 2;

/// Identifies a turn within its session.
pub type TurnId = u64;

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

impl TurnStats {
    /// Whether the answer was stopped early by the user.
    pub fn was_stopped(&self) -> bool {
        self.stop == StopReason::Cancelled
    }

    /// Decode speed, as `Generation::tokens_per_second` gives it while answering.
    pub fn tokens_per_second(&self) -> Option<f64> {
        (self.timings.decode_s > 0.0 && self.generated_tokens > 1)
            .then(|| (self.generated_tokens - 1) as f64 / self.timings.decode_s)
    }
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
    /// Absent in version 1, where turns are a plain list.
    #[serde(default)]
    id: Option<TurnId>,
    #[serde(default)]
    parent: Option<TurnId>,
    images: Vec<String>,
    query: String,
    answer: String,
    #[serde(default)]
    token_ids: Vec<u32>,
    #[serde(default)]
    created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settings: Option<SamplingParams>,
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
    #[serde(default)]
    active_leaf: Option<TurnId>,
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
    pub id: TurnId,
    /// The turn this one follows; `None` for a first turn.
    pub parent: Option<TurnId>,
    /// Content hashes, in the order the images were given.
    pub images: Vec<String>,
    pub query: String,
    pub answer: String,
    pub token_ids: Vec<u32>,
    pub created_at: u64,
    /// The settings this answer was generated with.
    pub settings: Option<SamplingParams>,
    pub stats: Option<TurnStats>,
}

/// What a new turn consists of before it has an id and a place in the tree.
#[derive(Debug, Clone, Default)]
pub struct NewTurn {
    pub images: Vec<ImageData>,
    pub query: String,
    pub answer: String,
    pub token_ids: Vec<u32>,
    pub settings: Option<SamplingParams>,
    pub stats: Option<TurnStats>,
}

#[derive(Debug, Clone, Default)]
pub struct Session {
    pub title: String,
    pub created_at: u64,
    pub updated_at: u64,
    pub model: Option<ModelInfo>,
    pub settings: Option<SamplingParams>,
    /// Every turn of every branch, in the order they were made.
    pub turns: Vec<Turn>,
    /// The last turn of the conversation being shown.
    pub active_leaf: Option<TurnId>,
    pub images: BTreeMap<String, SessionImage>,
    /// The format version the file was read from, when older than [`VERSION`].
    pub migrated_from: Option<u32>,
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

    /// Appends a finished turn after the active leaf; the title defaults to the first question.
    pub fn push_turn(&mut self, turn: NewTurn) -> TurnId {
        self.add_turn(self.active_leaf, turn)
    }

    /// Adds a turn after `parent` (a new version of the turns already there, if any) and makes it
    /// the active leaf.
    pub fn add_turn(&mut self, parent: Option<TurnId>, turn: NewTurn) -> TurnId {
        let hashes = turn.images.iter().map(|i| self.add_image(i)).collect();
        if self.title.is_empty() {
            self.title = title_from(&turn.query);
        }
        let id = self.turns.iter().map(|t| t.id + 1).max().unwrap_or(0);
        let now = now_unix();
        self.turns.push(Turn {
            id,
            parent,
            images: hashes,
            query: turn.query,
            answer: turn.answer,
            token_ids: turn.token_ids,
            created_at: now,
            settings: turn.settings,
            stats: turn.stats,
        });
        self.active_leaf = Some(id);
        self.updated_at = now;
        id
    }

    pub fn turn(&self, id: TurnId) -> Option<&Turn> {
        self.turns.iter().find(|t| t.id == id)
    }

    /// The turns that follow `parent`, oldest first: the versions of that position.
    pub fn children(&self, parent: Option<TurnId>) -> Vec<&Turn> {
        self.turns.iter().filter(|t| t.parent == parent).collect()
    }

    /// The conversation being shown: root to active leaf.
    pub fn active_path(&self) -> Vec<&Turn> {
        let mut path = Vec::new();
        let mut cur = self.active_leaf.and_then(|id| self.turn(id));
        while let Some(t) = cur {
            path.push(t);
            cur = t.parent.and_then(|p| self.turn(p));
            if path.len() > self.turns.len() {
                break; // a cycle in a hand-edited file; show what we have
            }
        }
        path.reverse();
        path
    }

    /// Which version of its position `id` is (0-based) and how many there are.
    pub fn version_of(&self, id: TurnId) -> (usize, usize) {
        let Some(t) = self.turn(id) else { return (0, 0) };
        let siblings = self.children(t.parent);
        (siblings.iter().position(|s| s.id == id).unwrap_or(0), siblings.len())
    }

    /// Shows version `id`: the active leaf becomes the newest turn at the end of its branch.
    pub fn switch_to(&mut self, id: TurnId) {
        if self.turn(id).is_none() {
            return;
        }
        let mut leaf = id;
        while let Some(newest) = self.children(Some(leaf)).last() {
            leaf = newest.id;
        }
        self.active_leaf = Some(leaf);
    }

    /// Removes turn `id`; the turns after it stay, now following its parent.
    pub fn delete_turn(&mut self, id: TurnId) {
        let Some(turn) = self.turn(id).cloned() else { return };
        for t in &mut self.turns {
            if t.parent == Some(id) {
                t.parent = turn.parent;
            }
        }
        self.turns.retain(|t| t.id != id);
        if self.active_leaf == Some(id) {
            self.active_leaf = turn.parent;
            // Prefer continuing into what followed the deleted turn, if anything did.
            if let Some(next) = self.children(turn.parent).last().map(|t| t.id) {
                self.switch_to(next);
            }
        }
        self.drop_unused_images();
        self.updated_at = now_unix();
    }

    /// Forgets images no turn refers to any more.
    fn drop_unused_images(&mut self) {
        let used: std::collections::HashSet<&String> = self.turns.iter().flat_map(|t| &t.images).collect();
        let unused: Vec<String> = self.images.keys().filter(|h| !used.contains(h)).cloned().collect();
        for h in unused {
            self.images.remove(&h);
        }
    }

    /// The images of a turn, as the pipeline takes them.
    pub fn turn_images(&self, turn: &Turn) -> Result<Vec<ImageData>> {
        turn.images
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
            .collect()
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

    /// The active conversation as the model pipeline takes it, followed by a new question.
    /// Fails, naming the image, when a stored image is gone: the conversation could not be
    /// reproduced without it.
    pub fn chat_turns(&self, query: &str, images: &[ImageData]) -> Result<Vec<ChatTurn>> {
        self.chat_turns_after(self.active_leaf, query, images)
    }

    /// The conversation up to and including `parent`, followed by a new question (for a new
    /// version of the turn after `parent`).
    pub fn chat_turns_after(&self, parent: Option<TurnId>, query: &str, images: &[ImageData]) -> Result<Vec<ChatTurn>> {
        let mut chain = Vec::new();
        let mut cur = parent.and_then(|id| self.turn(id));
        while let Some(t) = cur {
            chain.push(t);
            cur = t.parent.and_then(|p| self.turn(p));
            if chain.len() > self.turns.len() {
                return Err(Error::Request("the session's turns form a cycle".into()));
            }
        }
        chain.reverse();
        let mut out = Vec::with_capacity(chain.len() + 1);
        for turn in chain {
            out.push(ChatTurn {
                images: self.turn_images(turn)?,
                query: turn.query.clone(),
                answer: Some(turn.answer.clone()),
            });
        }
        out.push(ChatTurn { images: images.to_vec(), query: query.to_string(), answer: None });
        Ok(out)
    }

    /// Parses a session file's JSON and checks its format and version.
    fn read_file(path: &Path) -> Result<(SessionFile, u64)> {
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
        Ok((file, version))
    }

    /// Title, last update, number of turns shown and of images, without reading the images.
    pub fn load_summary(path: &Path) -> Result<(String, u64, usize, usize)> {
        let (file, version) = Self::read_file(path)?;
        let turns = if version == 1 {
            file.turns.len()
        } else {
            // Length of the active path.
            let parents: std::collections::HashMap<TurnId, Option<TurnId>> =
                file.turns.iter().filter_map(|t| Some((t.id?, t.parent))).collect();
            let mut n = 0;
            let mut cur = file.active_leaf;
            while let Some(id) = cur {
                n += 1;
                cur = parents.get(&id).copied().flatten();
                if n > parents.len() {
                    break;
                }
            }
            n
        };
        Ok((file.title, file.updated_at, turns, file.images.len()))
    }

    /// Reads a session file. A file from a newer format version is refused (and left untouched).
    pub fn load(path: &Path) -> Result<Self> {
        let err = |msg: String| Error::Session { path: path.to_path_buf(), msg };
        let (file, version) = Self::read_file(path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut images = BTreeMap::new();
        for (hash, entry) in &file.images {
            images.insert(hash.clone(), read_image(dir, hash, entry));
        }
        let linear = version == 1;
        let mut turns: Vec<Turn> = Vec::with_capacity(file.turns.len());
        for (i, t) in file.turns.into_iter().enumerate() {
            // Version 1 is a plain list: each turn follows the one before.
            let (id, parent) = if linear {
                (i as TurnId, i.checked_sub(1).map(|p| p as TurnId))
            } else {
                (t.id.ok_or_else(|| err(format!("turn {i} has no id")))?, t.parent)
            };
            turns.push(Turn {
                id,
                parent,
                images: t.images,
                query: t.query,
                answer: t.answer,
                token_ids: t.token_ids,
                created_at: t.created_at,
                settings: t.settings.or_else(|| if linear { file.settings.clone() } else { None }),
                stats: t.stats,
            });
        }
        let active_leaf = if linear { turns.last().map(|t| t.id) } else { file.active_leaf };
        let mut ids = std::collections::HashSet::new();
        for t in &turns {
            if !ids.insert(t.id) {
                return Err(err(format!("two turns have id {}", t.id)));
            }
        }
        if let Some(bad) = turns.iter().find(|t| t.parent.is_some_and(|p| !ids.contains(&p))) {
            return Err(err(format!("turn {} follows turn {:?}, which does not exist", bad.id, bad.parent)));
        }
        if active_leaf.is_some_and(|a| !ids.contains(&a)) {
            return Err(err(format!("the active turn {active_leaf:?} does not exist")));
        }
        Ok(Self {
            title: file.title,
            created_at: file.created_at,
            updated_at: file.updated_at,
            model: file.model,
            settings: file.settings,
            turns,
            active_leaf,
            images,
            migrated_from: (version < VERSION as u64).then_some(version as u32),
        })
    }

    /// Writes the session atomically; images go beside it or inside it as `storage` says.
    /// Images whose bytes are unavailable keep their entry so nothing is silently dropped.
    pub fn save(&self, path: &Path, storage: ImageStorage) -> Result<()> {
        backup_if_older(path)?;
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
                    id: Some(t.id),
                    parent: t.parent,
                    images: t.images.clone(),
                    query: t.query.clone(),
                    answer: t.answer.clone(),
                    token_ids: t.token_ids.clone(),
                    created_at: t.created_at,
                    settings: t.settings.clone(),
                    stats: t.stats.clone(),
                })
                .collect(),
            active_leaf: self.active_leaf,
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::Session { path: path.to_path_buf(), msg: format!("cannot serialise: {e}") })?;
        write_atomic(path, &json)
    }
}

/// Before a session file of an older format version is overwritten, keep it as
/// `<name>.v<N>.bak` (once: an existing backup is never replaced).
fn backup_if_older(path: &Path) -> Result<()> {
    /// Just the fields that say what a file is (the rest is skipped, not built into a tree).
    #[derive(Deserialize)]
    struct Head {
        format: String,
        version: u64,
    }
    let Ok(bytes) = std::fs::read(path) else { return Ok(()) };
    let version = match serde_json::from_slice::<Head>(&bytes) {
        Ok(head) if head.format == FORMAT && head.version < VERSION as u64 => head.version,
        _ => return Ok(()),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("session.json");
    let backup = path.with_file_name(format!("{name}.v{version}.bak"));
    if !backup.exists() {
        write_atomic(&backup, &bytes)?;
    }
    Ok(())
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
    use std::path::PathBuf;

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
        let turn = |images: Vec<ImageData>, q: &str, a: &str, ids: Vec<u32>| NewTurn {
            images,
            query: q.into(),
            answer: a.into(),
            token_ids: ids,
            settings: Some(SamplingParams { temperature: 0.0, ..Default::default() }),
            stats: None,
        };
        let first = s.push_turn(turn(
            vec![a.clone(), b],
            "第一个问题 \u{0007} 🐱\n",
            "答案\t\"quoted\"\u{0000}",
            vec![5, 6, 7],
        ));
        s.push_turn(turn(vec![], "text only", "ok", vec![8]));
        s.push_turn(turn(vec![a], "same image again", "yes", vec![]));
        // A second version of the second turn, then back to the first branch.
        s.add_turn(Some(first), turn(vec![], "edited question", "another answer", vec![9]));
        s.switch_to(1);
        s
    }

    fn assert_same(a: &Session, b: &Session) {
        assert_eq!(a.title, b.title);
        assert_eq!(a.turns, b.turns);
        assert_eq!(a.active_leaf, b.active_leaf);
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
        assert_eq!(loaded.turns.len(), 4);
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
    fn branches_switch_and_delete() {
        let s = sample_session();
        let path: Vec<&str> = s.active_path().iter().map(|t| t.query.as_str()).collect();
        assert_eq!(path, ["第一个问题 \u{0007} 🐱\n", "text only", "same image again"]);
        assert_eq!(s.version_of(1), (0, 2));
        assert_eq!(s.version_of(3), (1, 2));
        let mut s2 = s.clone();
        s2.switch_to(3);
        assert_eq!(s2.active_path().len(), 2);
        assert_eq!(s2.active_path()[1].query, "edited question");
        // The model sees the branch being shown.
        let turns = s2.chat_turns("next", &[]).unwrap();
        assert_eq!(turns[1].answer.as_deref(), Some("another answer"));
        // Deleting the middle turn keeps what followed it.
        let mut s3 = s.clone();
        s3.delete_turn(1);
        let path: Vec<&str> = s3.active_path().iter().map(|t| t.query.as_str()).collect();
        assert_eq!(path, ["第一个问题 \u{0007} 🐱\n", "same image again"]);
        assert_eq!(s3.version_of(2), (0, 2), "the kept turn now sits beside the other version");
        // Deleting the only turn with an image drops the image.
        let mut s4 = Session::new();
        s4.push_turn(NewTurn {
            images: vec![ImageData::new("x.png", png([9, 9, 9]))],
            query: "q".into(),
            ..Default::default()
        });
        s4.delete_turn(0);
        assert!(s4.images.is_empty() && s4.active_path().is_empty());
    }

    #[test]
    fn version_1_files_migrate_and_are_backed_up_before_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sessions");
        std::fs::copy(fixtures.join("v1-three-turns.json"), dir.path().join("old.json")).unwrap();
        let images = dir.path().join("old.images");
        std::fs::create_dir(&images).unwrap();
        for e in std::fs::read_dir(fixtures.join("v1-three-turns.images")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), images.join(e.file_name())).unwrap();
        }
        let text = std::fs::read_to_string(dir.path().join("old.json")).unwrap();
        std::fs::write(dir.path().join("old.json"), text.replace("v1-three-turns.images/", "old.images/")).unwrap();
        let original = std::fs::read(dir.path().join("old.json")).unwrap();

        let s = Session::load(&dir.path().join("old.json")).unwrap();
        assert_eq!(s.migrated_from, Some(1));
        assert_eq!(s.active_path().len(), 3);
        assert!(s.image_problems().is_empty());
        assert_eq!(s.turns[2].parent, Some(1));
        assert!(s.turns[0].settings.is_some(), "v1 session settings carried to its turns");

        s.save(&dir.path().join("old.json"), ImageStorage::Beside).unwrap();
        assert_eq!(std::fs::read(dir.path().join("old.json.v1.bak")).unwrap(), original, "original kept");
        let again = Session::load(&dir.path().join("old.json")).unwrap();
        assert_eq!(again.migrated_from, None);
        assert_eq!(again.turns, s.turns);
    }

    #[test]
    fn titles_come_from_the_first_line() {
        assert_eq!(title_from("\n  hello world \nmore"), "hello world");
        assert_eq!(title_from(""), "Untitled");
        assert_eq!(title_from(&"长".repeat(70)).chars().count(), 61);
    }
}
