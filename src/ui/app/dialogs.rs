//! Opening file dialogs: the system's (on a thread of its own: it blocks the thread that opens
//! it) or, where the system has none, the one inside the window; and acting on the answer.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::ZiyaApp;
use crate::ui::file_dialog::{system_dialogs, InWindowDialog, Picked, Purpose};
use crate::ui::i18n::fill;
use crate::ui::state::Intent;

/// A system dialog that answers faster than this never showed itself: rfd returns nothing when
/// it cannot open one, just as when the user cancels (and nobody cancels that fast).
const SHOWN_AT_LEAST: Duration = Duration::from_millis(250);

/// What a dialog thread reports.
pub(super) enum DialogAnswer {
    Picked(Picked),
    /// The system dialog could not be shown.
    NotShown(Purpose),
}

impl ZiyaApp {
    /// Asks the user for the file(s) or folder `purpose` needs.
    pub(super) fn pick(&mut self, purpose: Purpose) {
        let suggested = self.suggested_name(purpose);
        if self.system_dialogs.is_none() {
            self.system_dialogs =
                Some(if self.builtin_dialogs { Err("--builtin dialogs".into()) } else { system_dialogs() });
        }
        if let Some(Err(why)) = &self.system_dialogs {
            let why = fill(self.state.tr().no_system_dialog, &[why]);
            self.open_in_window(purpose, why, &suggested);
            return;
        }
        let tx = self.dialog_tx.clone();
        let ctx = self.ctx.clone();
        let start = self.dialog_dir.clone();
        std::thread::spawn(move || {
            let asked = Instant::now();
            let answer = match system_pick(purpose, start, suggested) {
                Some(paths) => Some(DialogAnswer::Picked(Picked { purpose, paths })),
                None if asked.elapsed() < SHOWN_AT_LEAST => Some(DialogAnswer::NotShown(purpose)),
                None => None, // cancelled
            };
            if let Some(a) = answer {
                let _ = tx.send(a);
                ctx.request_repaint();
            }
        });
    }

    fn open_in_window(&mut self, purpose: Purpose, why: String, suggested: &str) {
        let start = self.dialog_dir.clone().or_else(std::env::home_dir).unwrap_or_else(|| PathBuf::from("/"));
        self.state.dialog = Some(InWindowDialog::new(purpose, why, &start, suggested));
    }

    fn suggested_name(&self, purpose: Purpose) -> String {
        let stem = crate::export::file_stem_from(&self.state.session.title);
        match purpose {
            Purpose::SaveAs => format!("{stem}.json"),
            Purpose::ExportHtml => format!("{stem}.html"),
            _ => String::new(),
        }
    }

    /// Folds in what a system dialog answered.
    pub(super) fn on_dialog_answer(&mut self, answer: DialogAnswer) {
        match answer {
            DialogAnswer::Picked(p) => self.use_picked(p),
            DialogAnswer::NotShown(purpose) => {
                // Not again this session: the in-window dialog from now on.
                let why = "the system file dialog could not be shown (no xdg-desktop-portal or zenity?)".to_string();
                self.system_dialogs = Some(Err(why.clone()));
                let why = fill(self.state.tr().no_system_dialog, &[&why]);
                let suggested = self.suggested_name(purpose);
                self.open_in_window(purpose, why, &suggested);
            }
        }
    }

    /// Does what the dialog was opened for.
    pub(super) fn use_picked(&mut self, p: Picked) {
        if let Some(first) = p.paths.first() {
            let dir = if first.is_dir() && !p.purpose.picks_folder() {
                Some(first.clone())
            } else {
                first.parent().map(PathBuf::from)
            };
            self.dialog_dir = dir.or(self.dialog_dir.take());
        }
        let Some(path) = p.paths.first().cloned() else { return };
        match p.purpose {
            Purpose::Images => self.apply(Intent::AddFiles(p.paths)),
            Purpose::VisionDir => self.apply(Intent::SetVisionPath(path)),
            Purpose::LlmDir | Purpose::LlmGguf => self.apply(Intent::SetLlmPath(path)),
            Purpose::BaseDir => self.apply(Intent::SetBasePath(path)),
            Purpose::SessionFile => self.apply(Intent::OpenSessionFile(path)),
            Purpose::SaveAs => self.save_as(&path),
            Purpose::ExportMarkdown => self.export(&path, false, false),
            // The system's save dialog has asked before naming an existing file; the one in
            // the window has not, so the export's own notice asks instead.
            Purpose::ExportHtml => self.export(&path, true, matches!(self.system_dialogs, Some(Ok(_)))),
        }
    }
}

/// The system's dialog for `purpose` (blocking).
fn system_pick(purpose: Purpose, start: Option<PathBuf>, suggested: String) -> Option<Vec<PathBuf>> {
    let mut d = rfd::FileDialog::new();
    if let Some(dir) = start {
        d = d.set_directory(dir);
    }
    let exts = purpose.extensions();
    if !exts.is_empty() {
        let label = match purpose {
            Purpose::Images => "images",
            Purpose::LlmGguf => "GGUF (ziya-visual quantize)",
            Purpose::ExportHtml => "HTML",
            _ => "session",
        };
        d = d.add_filter(label, exts);
    }
    if !suggested.is_empty() {
        d = d.set_file_name(suggested);
    }
    match purpose {
        Purpose::Images => d.pick_files(),
        p if p.picks_folder() => d.pick_folder().map(|f| vec![f]),
        p if p.saves() => d.save_file().map(|f| vec![f]),
        _ => d.pick_file().map(|f| vec![f]),
    }
}
