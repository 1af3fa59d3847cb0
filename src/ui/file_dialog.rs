//! File dialogs. The system's dialog is used where there is one (rfd: xdg-desktop-portal, or
//! zenity on Linux); where there is none — a fresh Linux desktop without either, where rfd
//! silently returns nothing — the same choice is made in a dialog inside the window, which says
//! why. This module holds the in-window dialog's state and the file-system side of it
//! (listing, completion, what Open means for each purpose); `views/file_dialog.rs` draws it.

use std::path::{Path, PathBuf};

/// What a dialog is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Images,
    VisionDir,
    LlmDir,
    LlmGguf,
    BaseDir,
    SessionFile,
    SaveAs,
    ExportMarkdown,
    ExportHtml,
}

impl Purpose {
    /// A folder is chosen (not a file).
    pub fn picks_folder(self) -> bool {
        matches!(self, Purpose::VisionDir | Purpose::LlmDir | Purpose::BaseDir | Purpose::ExportMarkdown)
    }

    /// A file name is given for something to be written.
    pub fn saves(self) -> bool {
        matches!(self, Purpose::SaveAs | Purpose::ExportHtml)
    }

    /// Several files may be chosen.
    pub fn multiple(self) -> bool {
        self == Purpose::Images
    }

    /// The extensions listed (all files when empty).
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            Purpose::Images => &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"],
            Purpose::LlmGguf => &["gguf"],
            Purpose::SessionFile | Purpose::SaveAs => &["json"],
            Purpose::ExportHtml => &["html"],
            _ => &[],
        }
    }
}

/// The answer of a dialog (system or in-window).
#[derive(Debug, Clone, PartialEq)]
pub struct Picked {
    pub purpose: Purpose,
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
}

/// The dialog inside the window.
#[derive(Debug, Clone)]
pub struct InWindowDialog {
    pub purpose: Purpose,
    /// Why the system's dialog is not used (shown at the top).
    pub why: String,
    pub dir: PathBuf,
    pub entries: Vec<Entry>,
    /// The path being typed: a file or folder name in `dir`, or a whole path.
    pub input: String,
    /// Files chosen so far (several images).
    pub chosen: Vec<PathBuf>,
    /// Why the last Open did not work.
    pub error: Option<String>,
}

impl InWindowDialog {
    pub fn new(purpose: Purpose, why: String, start: &Path, suggested_name: &str) -> Self {
        let mut d = Self {
            purpose,
            why,
            dir: PathBuf::new(),
            entries: Vec::new(),
            input: if purpose.saves() { suggested_name.to_string() } else { String::new() },
            chosen: Vec::new(),
            error: None,
        };
        d.navigate(start);
        d
    }

    /// Shows `dir` (or the nearest existing folder above it).
    pub fn navigate(&mut self, dir: &Path) {
        let mut dir = dir.to_path_buf();
        while !dir.is_dir() {
            match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => dir = p.to_path_buf(),
                _ => {
                    dir = PathBuf::from("/");
                    break;
                }
            }
        }
        self.entries = list(&dir, self.purpose);
        self.dir = dir;
        self.error = None;
    }

    /// The typed input as a path (relative to the folder shown).
    pub fn typed_path(&self) -> PathBuf {
        let input = self.input.trim();
        if input.is_empty() {
            self.dir.clone()
        } else if let Some(rest) = input.strip_prefix("~/") {
            std::env::home_dir().map_or_else(|| PathBuf::from(input), |h| h.join(rest))
        } else {
            self.dir.join(input)
        }
    }

    /// Completes the typed name as far as the folder's entries agree (Tab); a unique folder
    /// is entered.
    pub fn complete(&mut self) {
        let typed = self.typed_path();
        let (dir, prefix) = if self.input.ends_with('/') || self.input.is_empty() {
            (typed.clone(), String::new())
        } else {
            let prefix = typed.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (typed.parent().map(Path::to_path_buf).unwrap_or_default(), prefix)
        };
        let names: Vec<Entry> = list(&dir, self.purpose).into_iter().filter(|e| e.name.starts_with(&prefix)).collect();
        let Some(first) = names.first() else { return };
        let common = names.iter().fold(first.name.clone(), |acc, e| {
            acc.chars().zip(e.name.chars()).take_while(|(a, b)| a == b).map(|(a, _)| a).collect()
        });
        if names.len() == 1 && first.is_dir {
            self.navigate(&dir.join(&first.name));
            self.input.clear();
        } else {
            let base = if dir == self.dir {
                PathBuf::new()
            } else {
                dir.strip_prefix(&self.dir).map(Path::to_path_buf).unwrap_or(dir)
            };
            self.input = base.join(common).to_string_lossy().into_owned();
        }
    }

    /// Adds or removes a file from the choice (several images).
    pub fn toggle(&mut self, path: PathBuf) {
        if let Some(i) = self.chosen.iter().position(|p| *p == path) {
            self.chosen.remove(i);
        } else {
            self.chosen.push(path);
        }
    }

    /// What Open (or Save, or Choose) gives, or why it cannot be given.
    pub fn answer(&self) -> Result<Picked, String> {
        let p = self.purpose;
        let typed = self.typed_path();
        let paths = if p.multiple() && !self.chosen.is_empty() {
            self.chosen.clone()
        } else if p.picks_folder() {
            if !typed.is_dir() {
                return Err(format!("{} is not a folder", typed.display()));
            }
            vec![typed]
        } else if p.saves() {
            if self.input.trim().is_empty() || typed.is_dir() {
                return Err("type a file name".into());
            }
            if !typed.parent().is_some_and(Path::is_dir) {
                return Err(format!("the folder of {} does not exist", typed.display()));
            }
            vec![typed]
        } else {
            if !typed.is_file() {
                return Err(format!("{} is not a file", typed.display()));
            }
            vec![typed]
        };
        Ok(Picked { purpose: p, paths })
    }
}

/// Folders first, then files with the purpose's extensions; hidden entries left out.
fn list(dir: &Path, purpose: Purpose) -> Vec<Entry> {
    let Ok(read) = std::fs::read_dir(dir) else { return Vec::new() };
    let exts = purpose.extensions();
    let mut entries: Vec<Entry> = read
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                return None;
            }
            let is_dir = e.path().is_dir();
            let shown = is_dir
                || (!purpose.picks_folder()
                    && (exts.is_empty()
                        || Path::new(&name)
                            .extension()
                            .is_some_and(|x| exts.iter().any(|want| x.eq_ignore_ascii_case(want)))));
            shown.then_some(Entry { name, is_dir })
        })
        .collect();
    entries.sort_by(|a, b| b.is_dir.cmp(&a.is_dir).then_with(|| a.name.to_lowercase().cmp(&b.name.to_lowercase())));
    entries
}

/// Whether the system can show file dialogs, or why not. On Linux rfd needs the
/// xdg-desktop-portal (over D-Bus) or the `zenity` program; without either it returns nothing,
/// as if the user had cancelled.
pub fn system_dialogs() -> Result<(), String> {
    if std::env::var("ZIYA_VISUAL_DIALOGS").as_deref() == Ok("builtin") {
        return Err("ZIYA_VISUAL_DIALOGS=builtin".into());
    }
    if !cfg!(target_os = "linux") {
        return Ok(());
    }
    let on_path = |prog: &str| {
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(prog).is_file()))
    };
    if on_path("zenity") {
        return Ok(());
    }
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() {
        return Err("there is no D-Bus session for xdg-desktop-portal, and zenity is not installed".into());
    }
    if on_path("dbus-send") {
        let out = std::process::Command::new("dbus-send")
            .args([
                "--session",
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.ListActivatableNames",
            ])
            .output();
        if let Ok(out) = out {
            let names = String::from_utf8_lossy(&out.stdout);
            let running = std::process::Command::new("dbus-send")
                .args([
                    "--session",
                    "--print-reply",
                    "--dest=org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus.ListNames",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            if !names.contains("org.freedesktop.portal.Desktop") && !running.contains("org.freedesktop.portal.Desktop")
            {
                return Err("xdg-desktop-portal is not available and zenity is not installed".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("photos")).unwrap();
        std::fs::create_dir(dir.path().join("models")).unwrap();
        std::fs::write(dir.path().join("photos/cat.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join("photos/car.png"), b"x").unwrap();
        std::fs::write(dir.path().join("photos/notes.txt"), b"x").unwrap();
        dir
    }

    #[test]
    fn lists_folders_first_and_only_the_files_that_fit() {
        let dir = folder();
        let mut d = InWindowDialog::new(Purpose::Images, String::new(), dir.path(), "");
        assert_eq!(d.entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["models", "photos"]);
        d.navigate(&dir.path().join("photos"));
        assert_eq!(d.entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["car.png", "cat.jpg"]);
        let folders = InWindowDialog::new(Purpose::VisionDir, String::new(), &dir.path().join("photos"), "");
        assert!(folders.entries.is_empty(), "no files when a folder is chosen");
    }

    #[test]
    fn tab_completes_names_and_enters_a_unique_folder() {
        let dir = folder();
        let mut d = InWindowDialog::new(Purpose::Images, String::new(), dir.path(), "");
        d.input = "ph".into();
        d.complete();
        assert_eq!(d.dir, dir.path().join("photos"), "a unique folder is entered");
        d.input = "c".into();
        d.complete();
        assert_eq!(d.input, "ca", "completed as far as car.png and cat.jpg agree");
        d.input = "cat".into();
        d.complete();
        assert_eq!(d.input, "cat.jpg");
        assert_eq!(d.answer().unwrap().paths, [dir.path().join("photos/cat.jpg")]);
    }

    #[test]
    fn answers_say_what_is_wrong() {
        let dir = folder();
        let mut save = InWindowDialog::new(Purpose::ExportHtml, String::new(), dir.path(), "story.html");
        assert_eq!(save.answer().unwrap().paths, [dir.path().join("story.html")]);
        save.input = "missing/x.html".into();
        assert!(save.answer().unwrap_err().contains("does not exist"));
        let mut folder_pick = InWindowDialog::new(Purpose::VisionDir, String::new(), dir.path(), "");
        folder_pick.input = "models".into();
        assert_eq!(folder_pick.answer().unwrap().paths, [dir.path().join("models")]);
        folder_pick.input = "nothing".into();
        assert!(folder_pick.answer().is_err());
    }
}
