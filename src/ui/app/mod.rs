//! `ZiyaApp`: owns the engine, the image workers, the planner, the session store and the UI
//! state. Each frame has two halves, as eframe calls them:
//! - [`eframe::App::logic`] (also called while the window is hidden): fold in what the engine,
//!   the image workers, the planner and the file dialogs sent, ask for what the state now
//!   needs (thumbnails, plans), save finished answers (`effects.rs`, `plans.rs`);
//! - [`eframe::App::ui`]: the views draw the state and emit intents, which `commands.rs` — the
//!   one place the state changes in response to the user — then acts on.

mod commands;
mod dialogs;
mod effects;
mod plans;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use egui::TextureHandle;

use crate::engine::{Command, Engine};
use crate::model::choice::ModelOverrides;
use crate::sampling::SamplingParams;
use crate::store::SessionStore;
use crate::ui::i18n::Lang;
use crate::ui::images::ImageWorker;
use crate::ui::messages::Message;
use crate::ui::state::{AppState, Intent, NoticeKind, Prefs};
use crate::ui::views;

/// How the window starts (from the command line or a test).
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// Where sessions, the demo model and settings live; the platform's data folder by default.
    pub data_dir: Option<PathBuf>,
    /// Parts of the model choice given on the command line; they replace the remembered ones,
    /// and when both folders are given the model loads at start.
    pub model: ModelOverrides,
    /// Load the built-in demo model at start.
    pub demo: bool,
    /// Open this session file at start.
    pub session: Option<PathBuf>,
    pub lang: Option<Lang>,
    /// Generation settings to use instead of the remembered ones (tests).
    pub sampling: Option<SamplingParams>,
    /// Ignore remembered settings and sessions' last-opened state (tests).
    pub fresh: bool,
    /// Use the file dialog inside the window, never the system's (tests; also
    /// `ZIYA_VISUAL_DIALOGS=builtin`).
    pub builtin_dialogs: bool,
    /// Plan models as if at most this many bytes were free (tests of the memory refusal).
    pub memory_limit: Option<u64>,
}

/// The files named by pasted text, when every line of it is a `file://` URI or an absolute path
/// of an existing file (what file managers put on the clipboard when files are copied).
fn pasted_files(text: &str) -> Option<Vec<PathBuf>> {
    let paths: Vec<PathBuf> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let path = match l.strip_prefix("file://") {
                // file://host/path: only the local host.
                Some(rest) => percent_decode(rest.strip_prefix("localhost").unwrap_or(rest))?,
                None => l.to_string(),
            };
            let path = PathBuf::from(path);
            (path.is_absolute() && path.is_file()).then_some(path)
        })
        .collect::<Option<_>>()?;
    (!paths.is_empty()).then_some(paths)
}

/// `%20` and friends in a URI path (bytes, then UTF-8).
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// The platform's data folder for ziya-visual, or `ZIYA_VISUAL_DATA_DIR` when set.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZIYA_VISUAL_DATA_DIR") {
        return PathBuf::from(dir);
    }
    directories::ProjectDirs::from("org", "ziya-visual", "ziya-visual")
        .map(|d| d.data_dir().to_path_buf())
        .unwrap_or_else(|| std::env::temp_dir().join("ziya-visual"))
}

/// The thumbnail of a conversation image, as the views draw it.
pub enum Thumb {
    Pending,
    Ready(TextureHandle),
    Failed(String),
}

/// Textures the views draw: thumbnails of the conversation's images (by hash) and of the
/// attachments of the question being written (by key).
#[derive(Default)]
pub struct Media {
    pub thumbs: HashMap<String, Thumb>,
    pub attachment_thumbs: HashMap<u64, TextureHandle>,
    /// The image shown large (its hash), once decoded at that size.
    pub large: Option<(String, Thumb)>,
}

/// Frame pacing while the app is busy (loading or answering): the UI must keep drawing.
#[derive(Default)]
pub struct FrameStats {
    last: Option<Instant>,
    /// Gaps between frames while busy, in seconds, per phase.
    pub loading: Vec<f32>,
    pub generating: Vec<f32>,
}

impl FrameStats {
    fn tick(&mut self, loading: bool, generating: bool) {
        let now = Instant::now();
        if let Some(last) = self.last {
            let gap = (now - last).as_secs_f32();
            if loading {
                self.loading.push(gap);
            } else if generating {
                self.generating.push(gap);
            }
        }
        self.last = (loading || generating).then_some(now);
    }

    pub fn summary(gaps: &[f32]) -> serde_json::Value {
        if gaps.is_empty() {
            return serde_json::json!({"frames": 0});
        }
        let mut s = gaps.to_vec();
        s.sort_by(f32::total_cmp);
        let pct = |p: f32| s[((s.len() as f32 - 1.0) * p) as usize] * 1000.0;
        let total: f32 = s.iter().sum();
        serde_json::json!({
            "frames": s.len(), "fps": s.len() as f32 / total.max(1e-6),
            "median_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0),
        })
    }
}

pub struct ZiyaApp {
    pub state: AppState,
    pub engine: Engine,
    pub media: Media,
    pub markdown: egui_commonmark::CommonMarkCache,
    pub frame_stats: FrameStats,
    images: ImageWorker,
    planner: plans::Planner,
    store: Option<SessionStore>,
    dialog_tx: Sender<dialogs::DialogAnswer>,
    dialog_rx: Receiver<dialogs::DialogAnswer>,
    /// Whether the system can show file dialogs (found out at the first one), or why not.
    system_dialogs: Option<Result<(), String>>,
    builtin_dialogs: bool,
    /// Where the last dialog was answered (the next one starts there).
    dialog_dir: Option<PathBuf>,
    data_dir: PathBuf,
    ctx: egui::Context,
    /// Keys of attachments whose results are still expected (a removed one is ignored).
    waiting: HashSet<u64>,
    /// Where `ZIYA_VISUAL_FRAME_LOG` asks the frame statistics to be written at exit.
    frame_log: Option<PathBuf>,
}

impl ZiyaApp {
    pub fn new(cc: &eframe::CreationContext<'_>, options: AppOptions) -> Self {
        let ctx = cc.egui_ctx.clone();
        crate::ui::fonts::install(&ctx);
        let mut prefs: Prefs = if options.fresh {
            Prefs::default()
        } else {
            cc.storage.and_then(|s| eframe::get_value(s, eframe::APP_KEY)).unwrap_or_default()
        };
        if let Some(l) = options.lang {
            prefs.lang = Some(l);
        }
        if let Some(s) = &options.sampling {
            prefs.sampling = s.clone();
        }
        options.model.apply(&mut prefs.model);
        let waker_ctx = ctx.clone();
        let engine = Engine::spawn_with(Box::new(move || waker_ctx.request_repaint()), options.memory_limit);
        let waker_ctx = ctx.clone();
        let images = ImageWorker::spawn(2, Arc::new(move || waker_ctx.request_repaint()));
        let waker_ctx = ctx.clone();
        let planner = plans::Planner::spawn(Arc::new(move || waker_ctx.request_repaint()));
        let (dialog_tx, dialog_rx) = crossbeam_channel::unbounded();
        let data_dir = options.data_dir.clone().unwrap_or_else(default_data_dir);
        let mut app = Self {
            state: AppState::new(prefs),
            engine,
            media: Media::default(),
            markdown: Default::default(),
            frame_stats: FrameStats::default(),
            images,
            planner,
            store: None,
            dialog_tx,
            dialog_rx,
            system_dialogs: None,
            builtin_dialogs: options.builtin_dialogs,
            dialog_dir: None,
            data_dir: data_dir.clone(),
            ctx,
            waiting: Default::default(),
            frame_log: std::env::var_os("ZIYA_VISUAL_FRAME_LOG").map(PathBuf::from),
        };
        match SessionStore::open(&data_dir.join("sessions")) {
            Ok(store) => app.store = Some(store),
            Err(e) => app.state.notify(NoticeKind::Error, Message::StoreUnavailable((&e).into())),
        }
        app.refresh_sessions();
        if let Some(path) = &options.session {
            app.apply(Intent::OpenSessionFile(path.clone()));
        } else if !options.fresh {
            if let Some(id) = app.store.as_ref().and_then(|s| s.last_opened()).map(str::to_string) {
                app.apply(Intent::OpenSession(id));
            }
        }
        if options.demo {
            app.apply(Intent::UseDemoModel);
        } else if options.model.names_a_model() {
            app.apply(Intent::LoadModel);
        } else if let Some(mut last) = app.state.prefs.last_loaded.clone().filter(|_| app.state.prefs.reload_last_model)
        {
            // Start where the user left off; flags given now still win.
            options.model.apply(&mut last);
            app.state.prefs.model = last;
            app.apply(Intent::LoadModel);
        }
        app
    }

    pub fn data_dir(&self) -> &PathBuf {
        &self.data_dir
    }

    /// Files dropped on the window, images pasted (or files copied in a file manager), and the
    /// keys that act anywhere: Esc (stop an answer, leave an edit or the image viewer), Ctrl+N,
    /// Ctrl+Q.
    fn collect_input(&self, ctx: &egui::Context, intents: &mut Vec<Intent>) {
        // Files copied in a file manager arrive as text (a text/uri-list); taken here, before
        // the text box would insert the URIs.
        let copied_files = ctx.input_mut(|i| {
            let mut files = Vec::new();
            i.events.retain(|e| match e {
                egui::Event::Paste(text) => match pasted_files(text) {
                    Some(paths) => {
                        files.extend(paths);
                        false
                    }
                    None => true,
                },
                _ => true,
            });
            files
        });
        if !copied_files.is_empty() {
            intents.push(Intent::AddFiles(copied_files));
        }
        let (dropped, pasted, escape, new_chat, quit) = ctx.input(|i| {
            let dropped: Vec<PathBuf> = i.raw.dropped_files.iter().map(|f| f.path().to_path_buf()).collect();
            let pasted: Vec<Arc<egui::ColorImage>> = i
                .events
                .iter()
                .filter_map(|e| match e {
                    egui::Event::PasteImage(img) => Some(img.clone()),
                    _ => None,
                })
                .collect();
            (
                dropped,
                pasted,
                i.key_pressed(egui::Key::Escape),
                i.modifiers.command && i.key_pressed(egui::Key::N),
                i.modifiers.command && i.key_pressed(egui::Key::Q),
            )
        });
        if !dropped.is_empty() {
            intents.push(Intent::AddFiles(dropped));
        }
        intents.extend(pasted.into_iter().map(Intent::PasteImage));
        if escape {
            if self.state.is_busy() {
                intents.push(Intent::Stop);
            } else if self.state.editing.is_some() {
                intents.push(Intent::CancelEdit);
            }
        }
        if new_chat {
            intents.push(Intent::NewChat);
        }
        if quit {
            intents.push(Intent::Quit);
        }
    }

    fn write_frame_log(&self) {
        if let Some(path) = &self.frame_log {
            let report = serde_json::json!({
                "loading": FrameStats::summary(&self.frame_stats.loading),
                "generating": FrameStats::summary(&self.frame_stats.generating),
            });
            let _ = std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap_or_default());
        }
    }
}

impl eframe::App for ZiyaApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.pump();
        self.request_thumbnails();
        self.request_plans();
        self.request_measure();
        if let Some(next) = self.state.expire_notices(Instant::now()) {
            ctx.request_repaint_after(next);
        }
        if self.state.is_loading() || self.state.is_busy() {
            // Keep drawing (the progress bar, the elapsed time) even between engine events.
            ctx.request_repaint_after(Duration::from_millis(100));
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        if self.frame_log.is_some() {
            // Kept only when asked for: every busy frame adds one entry.
            self.frame_stats.tick(self.state.is_loading(), self.state.is_busy());
        }
        let mut intents = Vec::new();
        self.collect_input(&ctx, &mut intents);
        views::show(ui, &self.state, &self.media, &mut self.markdown, &mut intents);
        for intent in intents {
            self.apply(intent);
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.state.prefs);
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        // An answer in flight is stopped and kept as it is, so closing loses nothing.
        if let Some(p) = &self.state.pending {
            self.engine.send(Command::Cancel { id: p.id });
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.state.pending.is_some() && Instant::now() < deadline {
                if let Some(ev) = self.engine.recv_timeout(Duration::from_millis(50)) {
                    self.on_engine_event(ev);
                }
            }
        }
        self.engine.shutdown();
        self.write_frame_log();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_copied_in_a_file_manager_are_recognised_in_pasted_text() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a cat.png");
        std::fs::write(&a, b"x").unwrap();
        let uri = format!("file://{}", a.display().to_string().replace(' ', "%20"));
        assert_eq!(pasted_files(&format!("{uri}\r\n")), Some(vec![a.clone()]));
        assert_eq!(pasted_files(&a.display().to_string()), Some(vec![a]));
        assert_eq!(pasted_files("just some text"), None);
        assert_eq!(pasted_files("file:///does/not/exist.png"), None);
    }
}
