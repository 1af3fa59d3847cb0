//! `ZiyaApp`: owns the engine, the image workers, the session store and the UI state, and is the
//! one place intents are acted on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use egui::TextureHandle;

use crate::chat::ImageData;
use crate::engine::{Command, Engine, LoadRequest};
use crate::sampling::SamplingParams;
use crate::session::{Session, TurnId};
use crate::store::{SessionEntry, SessionStore};
use crate::ui::i18n::{fill, Lang};
use crate::ui::images::{ImageJob, ImageResult, ImageWorker};
use crate::ui::state::{AppState, Attachment, Editing, Intent, ModelStatus, NoticeKind, Pending, Prefs};
use crate::ui::views;

/// How the window starts (from the command line or a test).
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// Where sessions, the demo model and settings live; the platform's data folder by default.
    pub data_dir: Option<PathBuf>,
    /// Load these folders at start (overrides the remembered ones).
    pub vision_model: Option<PathBuf>,
    pub llm_model: Option<PathBuf>,
    /// With `llm_model` the published delta: Meta's LLaMA base to merge it with.
    pub llm_base: Option<PathBuf>,
    pub device: Option<String>,
    pub dtype: Option<String>,
    pub quant: Option<crate::model::layers::Quant>,
    /// Load the built-in demo model at start.
    pub demo: bool,
    /// Open this session file at start.
    pub session: Option<PathBuf>,
    pub lang: Option<Lang>,
    /// Generation settings to use instead of the remembered ones (tests).
    pub sampling: Option<SamplingParams>,
    /// Ignore remembered settings and sessions' last-opened state (tests).
    pub fresh: bool,
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

pub enum Thumb {
    Pending,
    Ready(TextureHandle),
    Failed(String),
}

/// Answers of the file dialogs, which run on their own threads.
enum Picked {
    Images(Vec<PathBuf>),
    VisionDir(PathBuf),
    LlmDir(PathBuf),
    LlmBaseDir(PathBuf),
    SessionFile(PathBuf),
    SaveAs(PathBuf),
    ExportMarkdown(PathBuf),
    ExportHtml(PathBuf),
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
    images: ImageWorker,
    store: Option<SessionStore>,
    pub sessions: Vec<(String, SessionEntry)>,
    pub thumbs: HashMap<String, Thumb>,
    pub attachment_thumbs: HashMap<u64, TextureHandle>,
    picked_tx: Sender<Picked>,
    picked_rx: Receiver<Picked>,
    pub markdown: egui_commonmark::CommonMarkCache,
    pub frame_stats: FrameStats,
    data_dir: PathBuf,
    ctx: egui::Context,
    /// Keys of attachments whose results are still expected (a removed one is ignored).
    waiting: std::collections::HashSet<u64>,
    /// Where `ZIYA_VISUAL_FRAME_LOG` asks the frame statistics to be written at exit.
    frame_log: Option<PathBuf>,
    /// Memory estimates for the model panel's choices, for the folders/precision/device they
    /// were made for (recomputed only when those change: two small config files are read).
    pub plans: Option<(PlanKey, PlanRows, Option<u64>)>,
}

/// Per quantization choice ("" for none): its estimate, or why there is none.
pub type PlanRows = Vec<(String, Result<crate::model::plan::Plan, String>)>;

#[derive(Debug, Clone, PartialEq)]
pub struct PlanKey {
    vision: String,
    llm: String,
    dtype: String,
    device: String,
    /// With "published delta" ticked: the base it is merged with (merging takes memory too).
    llm_base: Option<String>,
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
        if let Some(d) = &options.device {
            prefs.device = d.clone();
        }
        if let Some(d) = &options.dtype {
            prefs.dtype = d.clone();
        }
        if let Some(q) = options.quant {
            prefs.quant = q.name().into();
        }
        let waker_ctx = ctx.clone();
        let engine = Engine::spawn(Box::new(move || waker_ctx.request_repaint()));
        let waker_ctx = ctx.clone();
        let tr = prefs.lang.unwrap_or_else(Lang::from_system).tr();
        let images = ImageWorker::spawn(2, Arc::new(move || waker_ctx.request_repaint()), tr);
        let (picked_tx, picked_rx) = crossbeam_channel::unbounded();
        let data_dir = options.data_dir.clone().unwrap_or_else(default_data_dir);
        let mut app = Self {
            state: AppState::new(prefs),
            engine,
            images,
            store: None,
            sessions: Vec::new(),
            thumbs: HashMap::new(),
            attachment_thumbs: HashMap::new(),
            picked_tx,
            picked_rx,
            markdown: Default::default(),
            frame_stats: FrameStats::default(),
            data_dir: data_dir.clone(),
            ctx,
            waiting: Default::default(),
            frame_log: std::env::var_os("ZIYA_VISUAL_FRAME_LOG").map(PathBuf::from),
            plans: None,
        };
        match SessionStore::open(&data_dir.join("sessions")) {
            Ok(store) => app.store = Some(store),
            Err(e) => app.state.notify(NoticeKind::Error, format!("{e} — conversations will not be saved")),
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
        } else if let (Some(v), Some(l)) = (&options.vision_model, &options.llm_model) {
            app.state.prefs.vision_dir = v.display().to_string();
            app.state.prefs.llm_dir = l.display().to_string();
            app.state.prefs.use_delta = options.llm_base.is_some();
            if let Some(b) = &options.llm_base {
                app.state.prefs.llm_base_dir = b.display().to_string();
            }
            app.apply(Intent::LoadModel);
        }
        app
    }

    pub fn data_dir(&self) -> &PathBuf {
        &self.data_dir
    }

    fn refresh_sessions(&mut self) {
        self.sessions = self.store.as_ref().map(|s| s.list()).unwrap_or_default();
    }

    /// Brings in what the engine, the image workers and the dialogs have sent.
    fn pump(&mut self) {
        while let Some(event) = self.engine.try_recv() {
            if self.state.on_engine_event(event) {
                self.autosave();
            }
        }
        while let Some(result) = self.images.try_recv() {
            match result {
                ImageResult::Attached { key, image, thumb } => {
                    if self.waiting.remove(&key) {
                        let tex = self.ctx.load_texture(format!("attachment-{key}"), thumb, Default::default());
                        self.attachment_thumbs.insert(key, tex);
                        if let Some(a) = self.state.composer.attachments.iter_mut().find(|a| a.key == key) {
                            a.name = image.name.clone();
                            a.image = Some(image);
                        }
                    }
                }
                ImageResult::Refused { key, message } => {
                    self.waiting.remove(&key);
                    self.state.composer.attachments.retain(|a| a.key != key);
                    self.state.notify(NoticeKind::Error, message);
                }
                ImageResult::Thumbnail { hash, thumb } => {
                    let t = match thumb {
                        Ok(img) => {
                            Thumb::Ready(self.ctx.load_texture(format!("thumb-{hash}"), img, Default::default()))
                        }
                        Err(e) => Thumb::Failed(e),
                    };
                    self.thumbs.insert(hash, t);
                }
            }
        }
        while let Ok(picked) = self.picked_rx.try_recv() {
            match picked {
                Picked::Images(paths) => self.apply(Intent::AddFiles(paths)),
                Picked::VisionDir(p) => self.state.prefs.vision_dir = p.display().to_string(),
                Picked::LlmDir(p) => self.state.prefs.llm_dir = p.display().to_string(),
                Picked::LlmBaseDir(p) => self.state.prefs.llm_base_dir = p.display().to_string(),
                Picked::SessionFile(p) => self.apply(Intent::OpenSessionFile(p)),
                Picked::SaveAs(p) => self.save_as(&p),
                Picked::ExportMarkdown(p) => self.export(&p, false),
                Picked::ExportHtml(p) => self.export(&p, true),
            }
        }
    }

    /// Estimates for no quantization, q8_0, q6k and q4k with the panel's folders and precision.
    pub fn refresh_plans(&mut self) {
        let p = &self.state.prefs;
        let key = PlanKey {
            vision: p.vision_dir.trim().to_string(),
            llm: p.llm_dir.trim().to_string(),
            dtype: p.dtype.clone(),
            device: p.device.clone(),
            llm_base: p.use_delta.then(|| p.llm_base_dir.trim().to_string()),
        };
        if key.vision.is_empty() || key.llm.is_empty() || self.plans.as_ref().is_some_and(|(k, _, _)| *k == key) {
            return;
        }
        let on_gpu = key.device != "cpu";
        let device = candle_core::Device::Cpu;
        let dtype = crate::device::parse_dtype(&key.dtype).unwrap_or(candle_core::DType::F32);
        let dtype = if on_gpu { dtype } else { crate::device::effective_dtype(&device, dtype).0 };
        let spec = crate::model::ModelSpec {
            vision_dir: PathBuf::from(&key.vision),
            llm_dir: PathBuf::from(&key.llm),
            dtype,
            device,
            quant: None,
            llm_base: key.llm_base.as_ref().map(PathBuf::from),
        };
        // The folders are read once for all four rows (this runs on the UI thread).
        let inputs = crate::inference::PlanInputs::read(&spec).map_err(|e| e.to_string());
        let rows = [
            None,
            Some(crate::model::layers::Quant::Q8_0),
            Some(crate::model::layers::Quant::Q6K),
            Some(crate::model::layers::Quant::Q4K),
        ]
        .into_iter()
        .map(|quant| {
            let plan = inputs.as_ref().map_err(Clone::clone).map(|i| {
                let ctx = i.llm.max_position_embeddings;
                i.plan(
                    &crate::model::ModelSpec { quant, ..spec.clone() },
                    crate::model::plan::PREFILL_CHUNK.min(ctx),
                    ctx,
                )
            });
            (quant.map(|q| q.name().to_string()).unwrap_or_default(), plan)
        })
        .collect();
        // Free GPU memory is only known once a GPU is opened; the CPU's is read here.
        let free = if on_gpu { None } else { crate::model::plan::available_ram() };
        self.plans = Some((key, rows, free));
    }

    /// Asks a worker for the thumbnail of a conversation image, once.
    pub fn request_thumb(&mut self, hash: &str) {
        if self.thumbs.contains_key(hash) {
            return;
        }
        match self.state.session.images.get(hash) {
            Some(img) => match &img.bytes {
                Some(bytes) => {
                    self.images.submit(ImageJob::Thumbnail {
                        hash: hash.to_string(),
                        name: img.name.clone(),
                        bytes: bytes.clone(),
                    });
                    self.thumbs.insert(hash.to_string(), Thumb::Pending);
                }
                None => {
                    let why = img.problem.clone().unwrap_or_default();
                    self.thumbs.insert(hash.to_string(), Thumb::Failed(why));
                }
            },
            None => {
                // An image of the answer being generated: its bytes are in the pending turn.
                let bytes = self
                    .state
                    .pending
                    .iter()
                    .flat_map(|p| &p.images)
                    .find(|i| i.hash == hash)
                    .map(|i| (i.name.clone(), i.bytes.clone()));
                if let Some((name, bytes)) = bytes {
                    self.images.submit(ImageJob::Thumbnail { hash: hash.to_string(), name, bytes });
                    self.thumbs.insert(hash.to_string(), Thumb::Pending);
                }
            }
        }
    }

    /// Saves the conversation in the store (after each finished turn and each edit).
    fn autosave(&mut self) {
        if self.state.session.turns.is_empty() {
            return;
        }
        let Some(store) = self.store.as_mut() else { return };
        let id = match &self.state.session_id {
            Some(id) => id.clone(),
            None => {
                let id = store.new_id();
                self.state.session_id = Some(id.clone());
                id
            }
        };
        if let Some(ModelStatus::Ready(m)) = Some(&self.state.model) {
            self.state.session.model = Some(crate::session::ModelInfo {
                vision_model: m.request.vision_dir.display().to_string(),
                llm_model: m.request.llm_dir.display().to_string(),
                dtype: m.dtype.clone(),
                device: m.device.clone(),
            });
        }
        self.state.session.settings = Some(self.state.prefs.sampling.clone());
        let result = store.save(&id, &self.state.session).and_then(|_| store.set_last_opened(Some(&id)));
        if let Err(e) = result {
            // The conversation stays in memory; the next save tries again.
            self.state.notify(NoticeKind::Error, format!("{e}"));
        }
        self.refresh_sessions();
    }

    fn pick(&self, make: impl FnOnce() -> Option<Picked> + Send + 'static) {
        let tx = self.picked_tx.clone();
        let ctx = self.ctx.clone();
        // File dialogs block the thread that opens them; never the UI thread.
        std::thread::spawn(move || {
            if let Some(p) = make() {
                let _ = tx.send(p);
                ctx.request_repaint();
            }
        });
    }

    fn start_generation(&mut self, parent: Option<TurnId>, query: String, images: Vec<ImageData>) {
        let turns = match self.state.session.chat_turns_after(parent, &query, &images) {
            Ok(t) => t,
            Err(e) => {
                self.state.notify(NoticeKind::Error, e.to_string());
                return;
            }
        };
        let id = self.state.new_request_id();
        let settings = self.state.prefs.sampling.clone();
        self.engine.send(Command::Generate { id, turns, params: settings.clone() });
        self.state.pending = Some(Pending {
            id,
            parent,
            images,
            query,
            answer: String::new(),
            settings,
            started: Instant::now(),
            session_id: self.state.session_id.clone(),
        });
    }

    fn switch_session(&mut self, session: Session, id: Option<String>) {
        self.state.session = session;
        self.state.session_id = id;
        self.state.editing = None;
        self.thumbs.clear();
        for p in self.state.session.image_problems() {
            self.state.notify(NoticeKind::Error, p);
        }
        if let Some(store) = self.store.as_mut() {
            let _ = store.set_last_opened(self.state.session_id.as_deref());
        }
    }

    /// Acts on one intent: the one place state changes in response to the user.
    pub fn apply(&mut self, intent: Intent) {
        let tr = self.state.tr();
        match intent {
            Intent::Send => {
                if self.state.send_blocker().is_some() {
                    return;
                }
                let query = std::mem::take(&mut self.state.composer.text).trim_end().to_string();
                let attachments = std::mem::take(&mut self.state.composer.attachments);
                // The composer's thumbnails become the chat's: the images are not decoded again.
                for a in &attachments {
                    if let (Some(img), Some(tex)) = (&a.image, self.attachment_thumbs.remove(&a.key)) {
                        self.thumbs.entry(img.hash.clone()).or_insert(Thumb::Ready(tex));
                    }
                }
                let images: Vec<ImageData> = attachments.into_iter().filter_map(|a| a.image).collect();
                self.attachment_thumbs.clear();
                self.start_generation(self.state.session.active_leaf, query, images);
            }
            Intent::Stop => {
                if let Some(p) = &self.state.pending {
                    self.engine.send(Command::Cancel { id: p.id });
                }
            }
            Intent::Regenerate(turn) => {
                if self.state.is_busy() || self.state.send_blocker() == Some(tr.why_no_model) {
                    return;
                }
                let Some(t) = self.state.session.turn(turn).cloned() else { return };
                match self.state.session.turn_images(&t) {
                    Ok(images) => self.start_generation(t.parent, t.query, images),
                    Err(e) => self.state.notify(NoticeKind::Error, e.to_string()),
                }
            }
            Intent::StartEdit(turn) => {
                if let Some(t) = self.state.session.turn(turn) {
                    self.state.editing = Some(Editing { turn, text: t.query.clone(), images: t.images.clone() });
                }
            }
            Intent::CancelEdit => self.state.editing = None,
            Intent::SubmitEdit => {
                if self.state.is_busy() || !matches!(self.state.model, ModelStatus::Ready(_)) {
                    self.state.notify(NoticeKind::Error, tr.why_no_model);
                    return;
                }
                let Some(edit) = self.state.editing.take() else { return };
                let Some(t) = self.state.session.turn(edit.turn).cloned() else { return };
                let mut kept = t.clone();
                kept.images = edit.images;
                match self.state.session.turn_images(&kept) {
                    Ok(images) => self.start_generation(t.parent, edit.text.trim_end().to_string(), images),
                    Err(e) => self.state.notify(NoticeKind::Error, e.to_string()),
                }
            }
            Intent::DeleteTurn(turn) => {
                if !self.state.is_busy() {
                    self.state.session.delete_turn(turn);
                    self.autosave();
                }
            }
            Intent::SwitchVersion(turn) => {
                if !self.state.is_busy() {
                    self.state.session.switch_to(turn);
                    self.autosave();
                }
            }
            Intent::AddFiles(paths) => {
                for path in paths {
                    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
                        self.apply(Intent::OpenSessionFile(path));
                        continue;
                    }
                    let key = self.state.new_key();
                    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    self.state.composer.attachments.push(Attachment { key, name, image: None });
                    self.waiting.insert(key);
                    self.images.submit(ImageJob::File { key, path });
                }
            }
            Intent::PasteImage(image) => {
                let key = self.state.new_key();
                let name = format!("pasted-{key}.png");
                self.state.composer.attachments.push(Attachment { key, name: name.clone(), image: None });
                self.waiting.insert(key);
                self.images.submit(ImageJob::Pasted { key, name, image });
            }
            Intent::RemoveAttachment(key) => {
                self.waiting.remove(&key);
                self.attachment_thumbs.remove(&key);
                self.state.composer.attachments.retain(|a| a.key != key);
            }
            Intent::PickImages => self.pick(|| {
                rfd::FileDialog::new()
                    .add_filter("images", &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"])
                    .pick_files()
                    .map(Picked::Images)
            }),
            Intent::PickVisionDir => self.pick(|| rfd::FileDialog::new().pick_folder().map(Picked::VisionDir)),
            Intent::PickLlmDir => self.pick(|| rfd::FileDialog::new().pick_folder().map(Picked::LlmDir)),
            Intent::PickLlmGguf => self.pick(|| {
                rfd::FileDialog::new()
                    .add_filter("GGUF (ziya-visual quantize)", &["gguf"])
                    .pick_file()
                    .map(Picked::LlmDir)
            }),
            Intent::PickLlmBaseDir => self.pick(|| rfd::FileDialog::new().pick_folder().map(Picked::LlmBaseDir)),
            Intent::LoadModel => {
                let p = &self.state.prefs;
                let req = LoadRequest {
                    vision_dir: PathBuf::from(p.vision_dir.trim()),
                    llm_dir: PathBuf::from(p.llm_dir.trim()),
                    device: p.device.clone(),
                    dtype: p.dtype.clone(),
                    quant: crate::model::layers::Quant::parse(&p.quant),
                    llm_base: (p.use_delta && !p.llm_base_dir.trim().is_empty())
                        .then(|| PathBuf::from(p.llm_base_dir.trim())),
                };
                self.state.model = ModelStatus::Loading { done: 0, total: 0 };
                self.engine.send(Command::Load(req));
            }
            Intent::UseDemoModel => match crate::demo::install(&self.data_dir.join("demo-model")) {
                Ok((vision, llm)) => {
                    self.state.prefs.vision_dir = vision.display().to_string();
                    self.state.prefs.llm_dir = llm.display().to_string();
                    self.state.prefs.dtype = "f32".into();
                    self.apply(Intent::LoadModel);
                }
                Err(e) => self.state.notify(NoticeKind::Error, e.to_string()),
            },
            Intent::CancelLoad => self.engine.cancel_load(),
            Intent::UnloadModel => {
                if !self.state.is_busy() {
                    self.engine.send(Command::Unload);
                }
            }
            Intent::NewChat => {
                if !self.state.is_busy() {
                    self.switch_session(Session::new(), None);
                }
            }
            Intent::OpenSession(id) => {
                if self.state.is_busy() || self.state.session_id.as_deref() == Some(id.as_str()) {
                    return;
                }
                let loaded = self.store.as_mut().map(|s| s.load(&id));
                match loaded {
                    Some(Ok(session)) => self.switch_session(session, Some(id)),
                    Some(Err(e)) => self.state.notify(NoticeKind::Error, e.to_string()),
                    None => {}
                }
                self.refresh_sessions();
            }
            Intent::DeleteSession(id) => {
                if self.state.session_id.as_deref() == Some(id.as_str()) {
                    if self.state.is_busy() {
                        return;
                    }
                    self.switch_session(Session::new(), None);
                }
                if let Some(Err(e)) = self.store.as_mut().map(|s| s.delete(&id)) {
                    self.state.notify(NoticeKind::Error, e.to_string());
                }
                self.refresh_sessions();
            }
            Intent::StartRename(id) => {
                let title =
                    self.sessions.iter().find(|(i, _)| *i == id).map(|(_, e)| e.title.clone()).unwrap_or_default();
                self.state.renaming = Some((id, title));
            }
            Intent::RenameSession(id, title) => {
                self.state.renaming = None;
                let title = title.trim().to_string();
                if title.is_empty() {
                    return;
                }
                if self.state.session_id.as_deref() == Some(id.as_str()) {
                    self.state.session.title = title;
                    self.autosave();
                } else if let Some(store) = self.store.as_mut() {
                    let result = store.load(&id).and_then(|mut s| {
                        s.title = title;
                        store.save(&id, &s)
                    });
                    if let Err(e) = result {
                        self.state.notify(NoticeKind::Error, e.to_string());
                    }
                    self.refresh_sessions();
                }
            }
            Intent::OpenSessionFile(path) => {
                if self.state.is_busy() {
                    return;
                }
                match Session::load(&path) {
                    Ok(mut session) => {
                        // A copy goes into the store, so it is listed, autosaved and never
                        // written back to a file the user keeps elsewhere.
                        session.migrated_from = None;
                        self.switch_session(session, None);
                        self.autosave();
                    }
                    Err(e) => self.state.notify(NoticeKind::Error, e.to_string()),
                }
            }
            Intent::PickSessionFile => self
                .pick(|| rfd::FileDialog::new().add_filter("session", &["json"]).pick_file().map(Picked::SessionFile)),
            Intent::SaveAs => {
                let name = format!("{}.json", crate::export::file_stem_from(&self.state.session.title));
                self.pick(move || {
                    rfd::FileDialog::new()
                        .set_file_name(name)
                        .add_filter("session", &["json"])
                        .save_file()
                        .map(Picked::SaveAs)
                })
            }
            Intent::ExportMarkdown => {
                let name = crate::export::file_stem_from(&self.state.session.title);
                self.pick(move || rfd::FileDialog::new().set_file_name(name).pick_folder().map(Picked::ExportMarkdown))
            }
            Intent::ExportHtml => {
                let name = format!("{}.html", crate::export::file_stem_from(&self.state.session.title));
                self.pick(move || {
                    rfd::FileDialog::new()
                        .set_file_name(name)
                        .add_filter("HTML", &["html"])
                        .save_file()
                        .map(Picked::ExportHtml)
                })
            }
            Intent::Copy(text) => self.ctx.copy_text(text),
            Intent::SetLang(lang) => {
                self.state.lang = lang;
                self.state.prefs.lang = Some(lang);
            }
            Intent::DismissNotice(i) => {
                if i < self.state.notices.len() {
                    self.state.notices.remove(i);
                }
            }
            Intent::ToggleSidePanel => self.state.prefs.show_side_panel = !self.state.prefs.show_side_panel,
        }
    }

    fn save_as(&mut self, path: &std::path::Path) {
        let tr = self.state.tr();
        match self.state.session.save(path, crate::session::ImageStorage::Beside) {
            Ok(()) => self.state.notify(NoticeKind::Info, fill(tr.saved_to, &[&path.display()])),
            Err(e) => self.state.notify(NoticeKind::Error, e.to_string()),
        }
    }

    fn export(&mut self, path: &std::path::Path, html: bool) {
        let tr = self.state.tr();
        let result = if html {
            crate::export::write_html(&self.state.session, path)
        } else {
            crate::export::write_markdown(&self.state.session, path)
        };
        match result {
            Ok(written) => self.state.notify(NoticeKind::Info, fill(tr.saved_to, &[&written.display()])),
            Err(e) => self.state.notify(NoticeKind::Error, e.to_string()),
        }
    }

    /// Files dropped on the window, images pasted, Esc to stop.
    fn collect_input(&mut self, ctx: &egui::Context, intents: &mut Vec<Intent>) {
        let (dropped, pasted, escape) = ctx.input(|i| {
            let dropped: Vec<PathBuf> = i.raw.dropped_files.iter().map(|f| f.path().to_path_buf()).collect();
            let pasted: Vec<Arc<egui::ColorImage>> = i
                .events
                .iter()
                .filter_map(|e| match e {
                    egui::Event::PasteImage(img) => Some(img.clone()),
                    _ => None,
                })
                .collect();
            (dropped, pasted, i.key_pressed(egui::Key::Escape))
        });
        if !dropped.is_empty() {
            intents.push(Intent::AddFiles(dropped));
        }
        intents.extend(pasted.into_iter().map(Intent::PasteImage));
        if escape && self.state.is_busy() {
            intents.push(Intent::Stop);
        }
        // Ctrl+Q quits through the normal close path (an answer in flight is stopped and saved).
        if ctx.input(|i| i.modifiers.command && i.key_pressed(egui::Key::Q)) {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
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
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.pump();
        if self.frame_log.is_some() {
            // Kept only when asked for: every busy frame adds one entry.
            self.frame_stats.tick(self.state.is_loading(), self.state.is_busy());
        }
        let mut intents = Vec::new();
        self.collect_input(&ctx, &mut intents);
        views::show(ui, self, &mut intents);
        for intent in intents {
            self.apply(intent);
        }
        if self.state.is_loading() || self.state.is_busy() {
            // Keep drawing (the progress bar, the elapsed time) even between engine events.
            ctx.request_repaint_after(Duration::from_millis(100));
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
                    if self.state.on_engine_event(ev) {
                        self.autosave();
                    }
                }
            }
        }
        self.engine.shutdown();
        self.write_frame_log();
    }
}
