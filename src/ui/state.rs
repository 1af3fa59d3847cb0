//! What the window shows, and the intents the views emit. Views draw [`AppState`] and push
//! [`Intent`]s; `ZiyaApp::apply` (`app/commands.rs`) is the one place state changes in response,
//! and what the engine, the image workers and the planner send is folded in by `app/effects.rs`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::chat::ImageData;
use crate::device::{DeviceKind, Precision};
use crate::engine::{Measurement, ModelSummary, RequestId};
use crate::error::Problem;
use crate::model::choice::ModelChoice;
use crate::model::layers::Quant;
use crate::model::plan::Plan;
use crate::sampling::SamplingParams;
use crate::session::{Session, TurnId};
use crate::store::SessionEntry;
use crate::ui::i18n::{Lang, Tr};
use crate::ui::messages::Message;

/// Remembered across restarts (eframe storage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prefs {
    /// The model chosen in the panel.
    pub model: ModelChoice,
    /// The model that was loaded when the window last closed (loaded again at start when
    /// `reload_last_model`).
    pub last_loaded: Option<ModelChoice>,
    pub reload_last_model: bool,
    pub sampling: SamplingParams,
    pub lang: Option<Lang>,
    pub show_side_panel: bool,
}

impl Default for Prefs {
    fn default() -> Self {
        Self {
            model: ModelChoice::default(),
            last_loaded: None,
            reload_last_model: true,
            sampling: SamplingParams::default(),
            lang: None,
            show_side_panel: true,
        }
    }
}

/// The engine's model as the window knows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelState {
    /// The model that answers questions now.
    pub loaded: Option<Box<ModelSummary>>,
    /// A load under way: bytes read so far and in all.
    pub loading: Option<(u64, u64)>,
    /// Why the last load did not happen (the loaded model, if any, is still there).
    pub load_error: Option<Problem>,
}

/// An answer being generated.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: RequestId,
    /// The turn the new one will follow (`None`: a first turn).
    pub parent: Option<TurnId>,
    pub images: Vec<ImageData>,
    pub query: String,
    pub answer: String,
    pub settings: SamplingParams,
}

/// An image attached to the question being written.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub key: u64,
    pub name: String,
    /// `None` while a worker is still reading it.
    pub image: Option<ImageData>,
}

#[derive(Debug, Clone, Default)]
pub struct Composer {
    pub text: String,
    pub attachments: Vec<Attachment>,
}

/// A turn whose question is being edited.
#[derive(Debug, Clone)]
pub struct Editing {
    pub turn: TurnId,
    pub text: String,
    /// Hashes of the turn's images that are kept.
    pub images: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    Info,
    Error,
}

#[derive(Debug, Clone)]
pub struct Notice {
    pub kind: NoticeKind,
    pub message: Message,
    pub at: Instant,
    /// Set when the notice offers Undo (the key of `AppState::undo`).
    pub undo: Option<u64>,
    /// Set when the notice offers to replace an existing export.
    pub replace: Option<ReplaceExport>,
}

/// An export that found its file already there: done again with replacing allowed, if asked.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplaceExport {
    /// What the user chose (the HTML file, or the folder the Markdown export goes under).
    pub target: std::path::PathBuf,
    pub html: bool,
}

impl Notice {
    /// How long a notice stays: errors long enough to read, the rest briefly.
    pub fn lifetime(&self) -> std::time::Duration {
        std::time::Duration::from_secs(match (self.kind, self.undo) {
            (_, Some(_)) => 10,
            (NoticeKind::Error, _) => 15,
            (NoticeKind::Info, _) => 5,
        })
    }
}

/// What Undo brings back.
#[derive(Debug, Clone)]
pub enum Undo {
    /// A turn deleted from the conversation shown: the conversation as it was.
    Turn { session_id: Option<String>, before: Box<Session> },
    /// A conversation moved to the trash.
    Conversation { id: String },
}

/// Why a question cannot be sent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendBlocker {
    Loading,
    NoModel,
    Busy,
    AttachmentsLoading,
    Empty,
}

impl SendBlocker {
    pub fn text(self, tr: &Tr) -> &'static str {
        match self {
            SendBlocker::Loading => tr.why_loading,
            SendBlocker::NoModel => tr.why_no_model,
            SendBlocker::Busy => tr.why_busy,
            SendBlocker::AttachmentsLoading => tr.why_attachments_loading,
            SendBlocker::Empty => tr.why_empty,
        }
    }
}

/// The memory the panel's model needs with each quantization, worked out off the UI thread.
#[derive(Debug, Clone)]
pub struct PlanRows {
    /// The choice the rows are for.
    pub choice: ModelChoice,
    /// Per quantization (`None` first): its estimate; or why the folders cannot be read.
    pub rows: Result<Vec<(Option<Quant>, Plan)>, String>,
    /// Free memory of the device, when known.
    pub free: Option<u64>,
}

impl PlanRows {
    pub fn total(&self, quant: Option<Quant>) -> Option<u64> {
        self.rows.as_ref().ok()?.iter().find(|(q, _)| *q == quant).map(|(_, p)| p.total)
    }
}

/// Everything the views emit.
#[derive(Debug, Clone)]
pub enum Intent {
    Send,
    Stop,
    SetComposerText(String),
    /// A new answer to this turn's question, with a fresh seed.
    Regenerate(TurnId),
    /// The same, with settings that let the answer vary (for this regeneration only).
    RegenerateVaried(TurnId),
    StartEdit(TurnId),
    SetEditText(String),
    /// Drops the image at this index from the question being edited.
    RemoveEditImage(usize),
    CancelEdit,
    SubmitEdit,
    DeleteTurn(TurnId),
    SwitchVersion(TurnId),
    AddFiles(Vec<PathBuf>),
    PasteImage(Arc<egui::ColorImage>),
    RemoveAttachment(u64),
    PickImages,
    PickVisionDir,
    PickLlmDir,
    PickLlmBaseDir,
    PickLlmGguf,
    /// The in-window file dialog: show this folder, the typed path, Tab, a file (de)selected,
    /// Open/Save, Cancel.
    DialogNavigate(PathBuf),
    DialogSetInput(String),
    DialogComplete,
    DialogToggle(PathBuf),
    DialogConfirm,
    DialogCancel,
    SetVisionPath(PathBuf),
    SetLlmPath(PathBuf),
    SetUseDelta(bool),
    SetBasePath(PathBuf),
    SetDevice(DeviceKind),
    SetPrecision(Precision),
    SetQuant(Option<Quant>),
    SetSampling(SamplingParams),
    SetReloadLastModel(bool),
    LoadModel,
    /// Loads the panel's model with a precision and quantization that fit (from a refusal).
    UseFit(crate::error::FitOption),
    UseDemoModel,
    CancelLoad,
    UnloadModel,
    NewChat,
    OpenSession(String),
    DeleteSession(String),
    StartRename(String),
    SetRenameText(String),
    /// Renames a conversation (an empty title cancels).
    RenameSession(String, String),
    OpenSessionFile(PathBuf),
    PickSessionFile,
    SaveAs,
    ExportMarkdown,
    ExportHtml,
    /// Exports again, replacing what the first attempt found there.
    ReplaceExport(ReplaceExport),
    Copy(String),
    SetSidebarFilter(String),
    /// Shows a conversation image large (`None` closes it).
    ViewImage(Option<String>),
    SetLang(Lang),
    DismissNotice(usize),
    /// Brings back what the notice with this undo key removed.
    Undo(u64),
    ToggleSidePanel,
    Quit,
}

pub struct AppState {
    pub lang: Lang,
    pub prefs: Prefs,
    pub model: ModelState,
    pub session: Session,
    /// Store id of the conversation shown; `None` until it is first saved.
    pub session_id: Option<String>,
    /// The saved conversations, newest first (the sidebar).
    pub sessions: Vec<(String, SessionEntry)>,
    pub pending: Option<Pending>,
    pub composer: Composer,
    pub editing: Option<Editing>,
    pub notices: Vec<Notice>,
    pub next_request: RequestId,
    pub next_key: u64,
    /// Decode speed of the last answer.
    pub last_speed: Option<f64>,
    /// A conversation being renamed in the sidebar: its id and the title being typed.
    pub renaming: Option<(String, String)>,
    /// Memory estimates for the panel's choice (recomputed off the UI thread when it changes).
    pub plans: Option<PlanRows>,
    /// How much of the context the conversation plus the question being written takes (the
    /// engine lays it out when either changes; `measure_key` names the latest request).
    pub measure: Option<Measurement>,
    pub measure_key: u64,
    /// The last deletion, while its notice offers Undo.
    pub undo: Option<(u64, Undo)>,
    /// The file dialog inside the window, when the system has none.
    pub dialog: Option<crate::ui::file_dialog::InWindowDialog>,
    /// What the sidebar's search field holds (conversations whose title contains it are listed).
    pub sidebar_filter: String,
    /// The conversation image shown large (its hash).
    pub viewing: Option<String>,
}

impl AppState {
    pub fn new(prefs: Prefs) -> Self {
        Self {
            lang: prefs.lang.unwrap_or_else(Lang::from_system),
            prefs,
            model: ModelState::default(),
            session: Session::new(),
            session_id: None,
            sessions: Vec::new(),
            pending: None,
            composer: Composer::default(),
            editing: None,
            notices: Vec::new(),
            next_request: 1,
            next_key: 1,
            last_speed: None,
            renaming: None,
            plans: None,
            measure: None,
            measure_key: 0,
            undo: None,
            dialog: None,
            sidebar_filter: String::new(),
            viewing: None,
        }
    }

    pub fn tr(&self) -> &'static Tr {
        self.lang.tr()
    }

    pub fn notify(&mut self, kind: NoticeKind, message: Message) {
        self.push_notice(Notice { kind, message, at: Instant::now(), undo: None, replace: None });
    }

    /// A notice offering Undo for `undo` (replacing any earlier offer).
    pub fn offer_undo(&mut self, message: Message, undo: Undo) {
        let key = self.new_key();
        self.notices.retain(|n| n.undo.is_none());
        self.undo = Some((key, undo));
        self.push_notice(Notice {
            kind: NoticeKind::Info,
            message,
            at: Instant::now(),
            undo: Some(key),
            replace: None,
        });
    }

    pub fn push_notice(&mut self, notice: Notice) {
        // The same message again only refreshes the one shown.
        self.notices.retain(|n| n.message != notice.message);
        self.notices.push(notice);
        if self.notices.len() > 5 {
            self.notices.remove(0);
        }
    }

    /// Drops notices that have been shown long enough; returns when the next one expires.
    pub fn expire_notices(&mut self, now: Instant) -> Option<std::time::Duration> {
        self.notices.retain(|n| now.duration_since(n.at) < n.lifetime());
        if let Some((key, _)) = &self.undo {
            if !self.notices.iter().any(|n| n.undo == Some(*key)) {
                self.undo = None;
            }
        }
        self.notices.iter().map(|n| n.lifetime().saturating_sub(now.duration_since(n.at))).min()
    }

    pub fn is_loading(&self) -> bool {
        self.model.loading.is_some()
    }

    pub fn is_ready(&self) -> bool {
        self.model.loaded.is_some() && !self.is_loading()
    }

    pub fn is_busy(&self) -> bool {
        self.pending.is_some()
    }

    /// Why a question cannot be sent now, if it cannot.
    pub fn send_blocker(&self) -> Option<SendBlocker> {
        if self.is_loading() {
            return Some(SendBlocker::Loading);
        }
        if self.model.loaded.is_none() {
            return Some(SendBlocker::NoModel);
        }
        if self.pending.is_some() {
            return Some(SendBlocker::Busy);
        }
        if self.composer.attachments.iter().any(|a| a.image.is_none()) {
            return Some(SendBlocker::AttachmentsLoading);
        }
        // An image alone is asked about with a default question.
        if self.composer.text.trim().is_empty() && self.composer.attachments.is_empty() {
            return Some(SendBlocker::Empty);
        }
        None
    }

    pub fn new_key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    pub fn new_request_id(&mut self) -> RequestId {
        self.next_request += 1;
        self.next_request
    }
}
