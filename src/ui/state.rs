//! What the window shows, and the intents the views emit. Views render [`AppState`] and push
//! [`Intent`]s; `ZiyaApp::apply` (in `mod.rs`) is the one place state changes in response, and the
//! engine's events are folded in by [`AppState::on_engine_event`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::chat::ImageData;
use crate::engine::{Event, ModelSummary, RequestId};
use crate::inference::Generation;
use crate::sampling::SamplingParams;
use crate::session::{NewTurn, Session, TurnId, TurnStats};
use crate::ui::i18n::{fill, Lang, Tr};

/// Remembered across restarts (eframe storage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prefs {
    pub vision_dir: String,
    pub llm_dir: String,
    pub device: String,
    pub dtype: String,
    /// "" for none, or q8_0 / q6k / q4k.
    pub quant: String,
    /// The LLM folder is the published Ziya delta over this LLaMA base (merged while loading).
    pub use_delta: bool,
    pub llm_base_dir: String,
    pub sampling: SamplingParams,
    pub lang: Option<Lang>,
    pub show_side_panel: bool,
}

impl Default for Prefs {
    fn default() -> Self {
        Self {
            vision_dir: String::new(),
            llm_dir: String::new(),
            device: if cfg!(feature = "cuda") { "cuda".into() } else { "cpu".into() },
            dtype: "f32".into(),
            quant: String::new(),
            use_delta: false,
            llm_base_dir: String::new(),
            sampling: SamplingParams::default(),
            lang: None,
            show_side_panel: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelStatus {
    Empty,
    Loading { done: u64, total: u64 },
    Ready(Box<ModelSummary>),
    Failed(String),
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
    pub started: Instant,
    /// The session the answer belongs to; events for another session's request are dropped.
    pub session_id: Option<String>,
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
    pub text: String,
    pub at: Instant,
}

/// Everything the views emit.
#[derive(Debug, Clone)]
pub enum Intent {
    Send,
    Stop,
    Regenerate(TurnId),
    StartEdit(TurnId),
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
    LoadModel,
    UseDemoModel,
    CancelLoad,
    UnloadModel,
    NewChat,
    OpenSession(String),
    DeleteSession(String),
    StartRename(String),
    RenameSession(String, String),
    OpenSessionFile(PathBuf),
    PickSessionFile,
    SaveAs,
    ExportMarkdown,
    ExportHtml,
    Copy(String),
    SetLang(Lang),
    DismissNotice(usize),
    ToggleSidePanel,
}

pub struct AppState {
    pub lang: Lang,
    pub prefs: Prefs,
    pub model: ModelStatus,
    pub session: Session,
    /// Store id of the conversation shown; `None` until it is first saved.
    pub session_id: Option<String>,
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
}

impl AppState {
    pub fn new(prefs: Prefs) -> Self {
        Self {
            lang: prefs.lang.unwrap_or_else(Lang::from_system),
            prefs,
            model: ModelStatus::Empty,
            session: Session::new(),
            session_id: None,
            pending: None,
            composer: Composer::default(),
            editing: None,
            notices: Vec::new(),
            next_request: 1,
            next_key: 1,
            last_speed: None,
            renaming: None,
        }
    }

    pub fn tr(&self) -> &'static Tr {
        self.lang.tr()
    }

    pub fn notify(&mut self, kind: NoticeKind, text: impl Into<String>) {
        self.notices.push(Notice { kind, text: text.into(), at: Instant::now() });
        if self.notices.len() > 6 {
            self.notices.remove(0);
        }
    }

    pub fn is_loading(&self) -> bool {
        matches!(self.model, ModelStatus::Loading { .. })
    }

    pub fn is_busy(&self) -> bool {
        self.pending.is_some()
    }

    /// Why a question cannot be sent now, if it cannot.
    pub fn send_blocker(&self) -> Option<&'static str> {
        let tr = self.tr();
        match &self.model {
            ModelStatus::Loading { .. } => return Some(tr.why_loading),
            ModelStatus::Ready(_) => {}
            _ => return Some(tr.why_no_model),
        }
        if self.pending.is_some() {
            return Some(tr.why_busy);
        }
        if self.composer.attachments.iter().any(|a| a.image.is_none()) {
            return Some(tr.why_attachments_loading);
        }
        if self.composer.text.trim().is_empty() {
            return Some(tr.why_empty);
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

    /// Folds an engine event into the state. Returns `true` when the session changed and should
    /// be saved.
    pub fn on_engine_event(&mut self, event: Event) -> bool {
        match event {
            Event::LoadProgress { done, total } => {
                if self.is_loading() {
                    self.model = ModelStatus::Loading { done, total };
                }
                false
            }
            Event::Loaded(summary) => {
                self.model = ModelStatus::Ready(Box::new(summary));
                false
            }
            Event::LoadFailed(msg) => {
                self.model = ModelStatus::Failed(msg);
                false
            }
            Event::Unloaded => {
                self.model = ModelStatus::Empty;
                false
            }
            Event::Token { id, text } => {
                if let Some(p) = self.pending.as_mut().filter(|p| p.id == id) {
                    p.answer.push_str(&text);
                }
                false
            }
            Event::Finished { id, generation } => {
                if self.pending.as_ref().is_some_and(|p| p.id == id) {
                    if let Some(p) = self.pending.take() {
                        self.finish(p, generation);
                        return true;
                    }
                }
                false
            }
            Event::Failed { id, message } => {
                if let Some(p) = self.pending.take_if(|p| p.id == id) {
                    self.notify(NoticeKind::Error, fill(self.tr().answer_failed, &[&message]));
                    // Give the question back so nothing typed is lost.
                    if self.composer.text.is_empty() && self.composer.attachments.is_empty() {
                        self.composer.text = p.query;
                        for image in p.images {
                            let key = self.new_key();
                            self.composer.attachments.push(Attachment {
                                key,
                                name: image.name.clone(),
                                image: Some(image),
                            });
                        }
                    }
                }
                false
            }
        }
    }

    /// Records a finished (or stopped) answer as a turn of the conversation.
    fn finish(&mut self, p: Pending, g: Generation) {
        self.last_speed = g.tokens_per_second().or(self.last_speed);
        // A question stopped before any text keeps its turn, marked stopped: what was asked is kept.
        let stats = TurnStats {
            prompt_tokens: g.prompt_tokens,
            generated_tokens: g.generated_tokens(),
            stop: g.stop,
            timings: g.timings,
        };
        self.session.add_turn(
            p.parent,
            NewTurn {
                images: p.images,
                query: p.query,
                answer: g.text,
                token_ids: g.token_ids,
                settings: Some(p.settings),
                stats: Some(stats),
            },
        );
    }
}
