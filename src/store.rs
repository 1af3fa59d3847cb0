//! The app's saved conversations: one session file per conversation in the data folder, and a
//! small index (title, date, counts) so the sidebar can list hundreds of them without reading
//! every file. The index is only a cache: files it does not know are summarised on demand, and a
//! damaged session file is listed with its problem while the others load normally.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fs::write_atomic;
use crate::session::{images_dir_name, ImageStorage, Session};

/// What the sidebar shows for one saved conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEntry {
    pub title: String,
    pub updated_at: u64,
    pub turn_count: usize,
    pub image_count: usize,
    /// Size and modification time of the file the summary was made from.
    #[serde(default)]
    pub file_size: u64,
    #[serde(default)]
    pub file_mtime: u64,
    /// Why the file cannot be opened, if it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    #[serde(default)]
    last_opened: Option<String>,
    #[serde(default)]
    sessions: BTreeMap<String, SessionEntry>,
    /// Session files opened from elsewhere, by the SHA-256 of their bytes, and the id of the
    /// copy made of each (opening the same file again opens that copy).
    #[serde(default)]
    imports: BTreeMap<String, String>,
}

pub struct SessionStore {
    dir: PathBuf,
    index: Index,
}

const INDEX: &str = "index.json";
const TRASH: &str = "trash";
/// How long a deleted conversation stays in the trash.
pub const TRASH_DAYS: u64 = 7;

fn file_stamp(path: &Path) -> (u64, u64) {
    let meta = std::fs::metadata(path).ok();
    let size = meta.as_ref().map_or(0, |m| m.len());
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    (size, mtime)
}

impl SessionStore {
    /// Opens (creating) the store in `dir` and brings the index up to date with the files there.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let index = std::fs::read(dir.join(INDEX))
            .ok()
            .and_then(|b| serde_json::from_slice::<Index>(&b).ok())
            .unwrap_or_default();
        let mut store = Self { dir: dir.to_path_buf(), index };
        store.remove_stale_temporaries();
        store.empty_trash(std::time::Duration::from_secs(TRASH_DAYS * 86_400));
        store.refresh()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// A new, unused id: the creation time, readable and sortable.
    pub fn new_id(&self) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let base = format!("{}", now.as_millis());
        let mut id = base.clone();
        let mut n = 1;
        while self.path(&id).exists() || self.index.sessions.contains_key(&id) {
            id = format!("{base}-{n}");
            n += 1;
        }
        id
    }

    /// Temporary files of saves that never finished (the process was killed mid-write): the
    /// previous version of their file is intact, so they are only clutter.
    fn remove_stale_temporaries(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if crate::fs::is_temporary(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Re-reads the summaries of files that changed or are new, drops vanished ones.
    pub fn refresh(&mut self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let mut changed = false;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(id) = session_id(&path) else { continue };
            seen.insert(id.clone());
            let (size, mtime) = file_stamp(&path);
            let fresh = self.index.sessions.get(&id).is_some_and(|e| e.file_size == size && e.file_mtime == mtime);
            if !fresh {
                let summary = summarize(&path);
                self.index.sessions.insert(id, summary);
                changed = true;
            }
        }
        let before = self.index.sessions.len();
        self.index.sessions.retain(|id, _| seen.contains(id));
        changed |= before != self.index.sessions.len();
        if changed {
            self.write_index()?;
        }
        Ok(())
    }

    /// All saved conversations, newest first.
    pub fn list(&self) -> Vec<(String, SessionEntry)> {
        let mut v: Vec<_> = self.index.sessions.iter().map(|(k, e)| (k.clone(), e.clone())).collect();
        v.sort_by(|a, b| b.1.updated_at.cmp(&a.1.updated_at).then_with(|| b.0.cmp(&a.0)));
        v
    }

    pub fn len(&self) -> usize {
        self.index.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.sessions.is_empty()
    }

    pub fn entry(&self, id: &str) -> Option<&SessionEntry> {
        self.index.sessions.get(id)
    }

    pub fn load(&mut self, id: &str) -> Result<Session> {
        let session = Session::load(&self.path(id))?;
        if session.migrated_from.is_some() {
            // Rewrite in the current format now; `save` keeps the original as a backup.
            self.save(id, &session)?;
        }
        Ok(session)
    }

    /// Saves atomically and updates the index.
    pub fn save(&mut self, id: &str, session: &Session) -> Result<()> {
        let path = self.path(id);
        session.save(&path, ImageStorage::Beside)?;
        let (file_size, file_mtime) = file_stamp(&path);
        let entry = SessionEntry {
            title: session.title.clone(),
            updated_at: session.updated_at,
            turn_count: session.active_path().len(),
            image_count: session.images.len(),
            file_size,
            file_mtime,
            problem: None,
        };
        self.index.sessions.insert(id.to_string(), entry);
        self.write_index()
    }

    /// Where deleted conversations wait (for Undo, and for some days) before they are gone.
    fn trash_dir(&self) -> PathBuf {
        self.dir.join(TRASH)
    }

    /// Moves a conversation and its images to the trash (see [`Self::restore`]).
    pub fn trash(&mut self, id: &str) -> Result<()> {
        let path = self.path(id);
        let trash = self.trash_dir();
        std::fs::create_dir_all(&trash).map_err(|e| Error::io(&trash, e))?;
        let images = self.dir.join(images_dir_name(&path));
        let (to_json, to_images) = (trash.join(format!("{id}.json")), trash.join(images_dir_name(&path)));
        // An older trashed copy under the same id gives way.
        let _ = std::fs::remove_file(&to_json);
        let _ = std::fs::remove_dir_all(&to_images);
        if images.exists() {
            std::fs::rename(&images, &to_images).map_err(|e| Error::io(&images, e))?;
        }
        if path.exists() {
            std::fs::rename(&path, &to_json).map_err(|e| Error::io(&path, e))?;
            // The trash's age is the time of deletion, not of the last save.
            if let Ok(f) = std::fs::File::options().append(true).open(&to_json) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
        }
        self.forget(id)
    }

    /// Brings a trashed conversation back.
    pub fn restore(&mut self, id: &str) -> Result<()> {
        let path = self.path(id);
        let trash = self.trash_dir();
        let (from_json, from_images) = (trash.join(format!("{id}.json")), trash.join(images_dir_name(&path)));
        if !from_json.is_file() {
            return Err(Error::Session { path: from_json, msg: "is no longer in the trash".into() });
        }
        if from_images.exists() {
            let images = self.dir.join(images_dir_name(&path));
            std::fs::rename(&from_images, &images).map_err(|e| Error::io(&from_images, e))?;
        }
        std::fs::rename(&from_json, &path).map_err(|e| Error::io(&from_json, e))?;
        self.index.sessions.insert(id.to_string(), summarize(&path));
        self.write_index()
    }

    /// Removes conversations that have been in the trash longer than `age`.
    pub fn empty_trash(&self, age: std::time::Duration) {
        let Ok(entries) = std::fs::read_dir(self.trash_dir()) else { return };
        let now = std::time::SystemTime::now();
        for e in entries.flatten() {
            let path = e.path();
            let Some(id) = session_id(&path) else { continue };
            let old =
                e.metadata().and_then(|m| m.modified()).is_ok_and(|t| now.duration_since(t).unwrap_or_default() > age);
            if old {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_dir_all(self.trash_dir().join(images_dir_name(&self.path(&id))));
            }
        }
    }

    fn forget(&mut self, id: &str) -> Result<()> {
        self.index.sessions.remove(id);
        if self.index.last_opened.as_deref() == Some(id) {
            self.index.last_opened = None;
        }
        self.write_index()
    }

    /// Deletes a conversation and its images.
    pub fn delete(&mut self, id: &str) -> Result<()> {
        let path = self.path(id);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        let images = self.dir.join(images_dir_name(&path));
        if images.exists() {
            std::fs::remove_dir_all(&images).map_err(|e| Error::io(&images, e))?;
        }
        self.forget(id)
    }

    /// The copy made of a session file with these bytes, if it is still here.
    pub fn imported(&self, fingerprint: &str) -> Option<&str> {
        self.index.imports.get(fingerprint).map(String::as_str).filter(|id| self.index.sessions.contains_key(*id))
    }

    /// Remembers that the file with this fingerprint was copied in as `id`.
    pub fn record_import(&mut self, fingerprint: &str, id: &str) -> Result<()> {
        self.index.imports.retain(|_, v| self.index.sessions.contains_key(v.as_str()));
        self.index.imports.insert(fingerprint.to_string(), id.to_string());
        self.write_index()
    }

    pub fn last_opened(&self) -> Option<&str> {
        self.index.last_opened.as_deref().filter(|id| self.index.sessions.contains_key(*id))
    }

    pub fn set_last_opened(&mut self, id: Option<&str>) -> Result<()> {
        if self.index.last_opened.as_deref() != id {
            self.index.last_opened = id.map(str::to_string);
            self.write_index()?;
        }
        Ok(())
    }

    fn write_index(&self) -> Result<()> {
        let bytes = serde_json::to_vec(&self.index)
            .map_err(|e| Error::Session { path: self.dir.join(INDEX), msg: e.to_string() })?;
        write_atomic(&self.dir.join(INDEX), &bytes)
    }
}

/// `<dir>/<id>.json` → `id`, for session files (not the index, not temporaries or backups).
fn session_id(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    if name == INDEX || name.starts_with('.') || !path.is_file() {
        return None;
    }
    name.strip_suffix(".json").map(str::to_string)
}

/// The sidebar summary of a session file, or its problem.
fn summarize(path: &Path) -> SessionEntry {
    let (file_size, file_mtime) = file_stamp(path);
    match Session::load_summary(path) {
        Ok((title, updated_at, turn_count, image_count)) => {
            SessionEntry { title, updated_at, turn_count, image_count, file_size, file_mtime, problem: None }
        }
        Err(e) => SessionEntry {
            title: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            updated_at: file_mtime / 1_000_000_000,
            turn_count: 0,
            image_count: 0,
            file_size,
            file_mtime,
            problem: Some(e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::NewTurn;

    fn session(title: &str) -> Session {
        let mut s = Session::new();
        s.push_turn(NewTurn { query: title.into(), answer: "a".into(), ..Default::default() });
        s
    }

    #[test]
    fn saves_lists_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SessionStore::open(dir.path()).unwrap();
        let a = store.new_id();
        store.save(&a, &session("第一个")).unwrap();
        let b = store.new_id();
        assert_ne!(a, b);
        let mut s = session("second");
        s.updated_at += 10;
        store.save(&b, &s).unwrap();
        store.set_last_opened(Some(&b)).unwrap();

        let mut again = SessionStore::open(dir.path()).unwrap();
        let list = again.list();
        assert_eq!(list.iter().map(|(_, e)| e.title.as_str()).collect::<Vec<_>>(), ["second", "第一个"]);
        assert_eq!(again.last_opened(), Some(b.as_str()));
        assert_eq!(again.load(&a).unwrap().title, "第一个");
        again.delete(&a).unwrap();
        assert_eq!(SessionStore::open(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn trashed_conversations_come_back_and_old_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SessionStore::open(dir.path()).unwrap();
        let id = store.new_id();
        let mut s = session("kept for undo");
        s.push_turn(NewTurn {
            images: vec![crate::chat::ImageData::new("x.png", b"not decoded here".to_vec())],
            query: "with an image".into(),
            ..Default::default()
        });
        store.save(&id, &s).unwrap();
        store.trash(&id).unwrap();
        assert!(store.is_empty() && !store.path(&id).exists());
        assert!(SessionStore::open(dir.path()).unwrap().is_empty(), "the trash is not listed");
        store.restore(&id).unwrap();
        assert_eq!(store.load(&id).unwrap().turns.len(), 2);
        assert!(store.load(&id).unwrap().image_problems().is_empty(), "its images came back too");
        // Trashed again and aged past the limit: gone at the next start.
        store.trash(&id).unwrap();
        store.empty_trash(std::time::Duration::ZERO);
        assert!(store.restore(&id).is_err());
    }

    #[test]
    fn a_corrupt_file_is_listed_with_its_problem_and_the_rest_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SessionStore::open(dir.path()).unwrap();
        let good = store.new_id();
        store.save(&good, &session("fine")).unwrap();
        std::fs::write(dir.path().join("broken.json"), b"{\"format\": \"ziya").unwrap();
        let store = SessionStore::open(dir.path()).unwrap();
        let broken = store.entry("broken").unwrap();
        assert!(broken.problem.as_deref().unwrap().contains("broken.json"));
        assert!(store.entry(&good).unwrap().problem.is_none());
    }

    #[test]
    fn files_changed_behind_the_index_are_resummarised() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SessionStore::open(dir.path()).unwrap();
        let id = store.new_id();
        store.save(&id, &session("old title")).unwrap();
        // Another program (or `ask --save-session`) rewrites the file.
        let mut s = Session::load(&store.path(&id)).unwrap();
        s.title = "new title".into();
        s.push_turn(NewTurn { query: "more".into(), ..Default::default() });
        s.save(&store.path(&id), ImageStorage::Beside).unwrap();
        let store = SessionStore::open(dir.path()).unwrap();
        assert_eq!(store.entry(&id).unwrap().title, "new title");
        assert_eq!(store.entry(&id).unwrap().turn_count, 2);
    }
}
