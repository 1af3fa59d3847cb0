//! Acting on intents: the one place the state changes in response to the user.

use std::path::{Path, PathBuf};

use super::{Thumb, ZiyaApp};
use crate::chat::ImageData;
use crate::engine::Command;
use crate::model::choice::{LlmSource, ModelChoice};
use crate::session::{ImageStorage, Session, TurnId};
use crate::ui::file_dialog::Purpose;
use crate::ui::images::ImageJob;
use crate::ui::messages::Message;
use crate::ui::state::{Attachment, Editing, Intent, Notice, NoticeKind, Pending, ReplaceExport, Undo};

impl ZiyaApp {
    /// Acts on one intent.
    pub fn apply(&mut self, intent: Intent) {
        let tr = self.state.tr();
        match intent {
            Intent::Send => {
                if self.state.send_blocker().is_some() {
                    return;
                }
                let mut query = std::mem::take(&mut self.state.composer.text).trim_end().to_string();
                if query.trim().is_empty() {
                    query = tr.default_question.to_string();
                }
                let attachments = std::mem::take(&mut self.state.composer.attachments);
                // The composer's thumbnails become the chat's: the images are not decoded again.
                for a in &attachments {
                    if let (Some(img), Some(tex)) = (&a.image, self.media.attachment_thumbs.remove(&a.key)) {
                        self.media.thumbs.entry(img.hash.clone()).or_insert(Thumb::Ready(tex));
                    }
                }
                let images: Vec<ImageData> = attachments.into_iter().filter_map(|a| a.image).collect();
                self.media.attachment_thumbs.clear();
                self.start_generation(self.state.session.active_leaf, query, images);
            }
            Intent::Stop => {
                if let Some(p) = &self.state.pending {
                    self.engine.send(Command::Cancel { id: p.id });
                }
            }
            Intent::SetComposerText(text) => self.state.composer.text = text,
            Intent::Regenerate(turn) | Intent::RegenerateVaried(turn) => {
                if self.state.is_busy() || !self.state.is_ready() {
                    return;
                }
                let Some(t) = self.state.session.turn(turn).cloned() else { return };
                // A new answer needs a new seed (a fixed one would repeat the last answer).
                let mut settings = self.state.prefs.sampling.clone();
                if matches!(intent, Intent::RegenerateVaried(_)) {
                    settings = settings.varied();
                }
                settings.seed = Some(crate::sampling::fresh_seed());
                match self.state.session.turn_images(&t) {
                    Ok(images) => self.start_generation_with(t.parent, t.query, images, settings),
                    Err(e) => self.state.notify(NoticeKind::Error, Message::CannotContinue((&e).into())),
                }
            }
            Intent::StartEdit(turn) => {
                if let Some(t) = self.state.session.turn(turn) {
                    self.state.editing = Some(Editing { turn, text: t.query.clone(), images: t.images.clone() });
                }
            }
            Intent::SetEditText(text) => {
                if let Some(e) = self.state.editing.as_mut() {
                    e.text = text;
                }
            }
            Intent::RemoveEditImage(i) => {
                if let Some(e) = self.state.editing.as_mut().filter(|e| i < e.images.len()) {
                    e.images.remove(i);
                }
            }
            Intent::CancelEdit => self.state.editing = None,
            Intent::SubmitEdit => {
                if self.state.is_busy() || !self.state.is_ready() {
                    self.state.notify(NoticeKind::Error, Message::Plain(tr.why_no_model));
                    return;
                }
                let Some(edit) = self.state.editing.take() else { return };
                let Some(t) = self.state.session.turn(edit.turn).cloned() else { return };
                let mut kept = t.clone();
                kept.images = edit.images;
                match self.state.session.turn_images(&kept) {
                    Ok(images) => self.start_generation(t.parent, edit.text.trim_end().to_string(), images),
                    Err(e) => self.state.notify(NoticeKind::Error, Message::CannotContinue((&e).into())),
                }
            }
            Intent::DeleteTurn(turn) => {
                if !self.state.is_busy() && self.state.session.turn(turn).is_some() {
                    let before = Box::new(self.state.session.clone());
                    self.state.session.delete_turn(turn);
                    self.autosave();
                    let session_id = self.state.session_id.clone();
                    self.state.offer_undo(Message::TurnDeleted, Undo::Turn { session_id, before });
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
                self.media.attachment_thumbs.remove(&key);
                self.state.composer.attachments.retain(|a| a.key != key);
            }
            Intent::PickImages => self.pick(Purpose::Images),
            Intent::PickVisionDir => self.pick(Purpose::VisionDir),
            Intent::PickLlmDir => self.pick(Purpose::LlmDir),
            Intent::PickLlmGguf => self.pick(Purpose::LlmGguf),
            Intent::PickLlmBaseDir => self.pick(Purpose::BaseDir),
            Intent::DialogNavigate(dir) => {
                if let Some(d) = self.state.dialog.as_mut() {
                    d.navigate(&dir);
                    d.input.clear();
                }
            }
            Intent::DialogSetInput(text) => {
                if let Some(d) = self.state.dialog.as_mut() {
                    d.input = text;
                    d.error = None;
                }
            }
            Intent::DialogComplete => {
                if let Some(d) = self.state.dialog.as_mut() {
                    d.complete();
                }
            }
            Intent::DialogToggle(path) => {
                if let Some(d) = self.state.dialog.as_mut() {
                    d.toggle(path);
                }
            }
            Intent::DialogConfirm => {
                let Some(d) = self.state.dialog.as_mut() else { return };
                match d.answer() {
                    Ok(picked) => {
                        self.state.dialog = None;
                        self.use_picked(picked);
                    }
                    Err(why) => d.error = Some(why),
                }
            }
            Intent::DialogCancel => self.state.dialog = None,
            Intent::SetVisionPath(p) => self.state.prefs.model.vision = p,
            Intent::SetLlmPath(p) => {
                let llm = &mut self.state.prefs.model.llm;
                *llm = match llm {
                    LlmSource::Delta { base, .. } => LlmSource::Delta { base: base.clone(), delta: p },
                    _ => LlmSource::from_path(p),
                };
            }
            Intent::SetUseDelta(on) => {
                let llm = &mut self.state.prefs.model.llm;
                *llm = match (on, &*llm) {
                    (true, LlmSource::Folder(p) | LlmSource::Gguf(p)) => {
                        LlmSource::Delta { base: PathBuf::new(), delta: p.clone() }
                    }
                    (false, LlmSource::Delta { delta, .. }) => LlmSource::from_path(delta.clone()),
                    (_, same) => same.clone(),
                };
            }
            Intent::SetBasePath(p) => {
                if let LlmSource::Delta { base, .. } = &mut self.state.prefs.model.llm {
                    *base = p;
                }
            }
            Intent::SetDevice(d) => self.state.prefs.model.device = d,
            Intent::SetPrecision(p) => self.state.prefs.model.precision = p,
            Intent::SetQuant(q) => self.state.prefs.model.quant = q,
            Intent::SetSampling(s) => self.state.prefs.sampling = s,
            Intent::SetReloadLastModel(on) => self.state.prefs.reload_last_model = on,
            Intent::LoadModel => {
                if self.state.is_busy() || self.state.is_loading() || !self.state.prefs.model.is_complete() {
                    return;
                }
                self.state.model.loading = Some((0, 0));
                self.state.model.load_error = None;
                self.engine.send(Command::Load(trimmed(&self.state.prefs.model)));
            }
            Intent::UseFit(fit) => {
                let model = &mut self.state.prefs.model;
                if fit.dtype == candle_core::DType::F16 {
                    model.precision = crate::device::Precision::F16;
                }
                model.quant = fit.quant;
                self.apply(Intent::LoadModel);
            }
            Intent::UseDemoModel => match crate::demo::install(&self.data_dir.join("demo-model")) {
                Ok((vision, llm)) => {
                    let model = &mut self.state.prefs.model;
                    model.vision = vision;
                    model.llm = LlmSource::Folder(llm);
                    model.precision = crate::device::Precision::F32;
                    model.quant = None;
                    self.apply(Intent::LoadModel);
                }
                Err(e) => self.state.notify(NoticeKind::Error, Message::Problem((&e).into())),
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
                    Some(Err(e)) => self.state.notify(NoticeKind::Error, Message::Problem((&e).into())),
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
                let title = self.state.sessions.iter().find(|(i, _)| *i == id).map(|(_, e)| e.title.clone());
                match self.store.as_mut().map(|s| s.trash(&id)) {
                    Some(Ok(())) => self
                        .state
                        .offer_undo(Message::ConversationDeleted(title.unwrap_or_default()), Undo::Conversation { id }),
                    Some(Err(e)) => self.state.notify(NoticeKind::Error, Message::Problem((&e).into())),
                    None => {}
                }
                self.refresh_sessions();
            }
            Intent::Undo(key) => {
                let Some(undo) = self.state.undo.take_if(|(k, _)| *k == key).map(|(_, u)| u) else { return };
                self.state.notices.retain(|n| n.undo != Some(key));
                match undo {
                    Undo::Turn { session_id, before } => {
                        // Only while that conversation is still the one shown and idle.
                        if self.state.session_id == session_id && !self.state.is_busy() {
                            self.state.session = *before;
                            self.autosave();
                        }
                    }
                    Undo::Conversation { id } => {
                        if let Some(Err(e)) = self.store.as_mut().map(|s| s.restore(&id)) {
                            self.state.notify(NoticeKind::Error, Message::Problem((&e).into()));
                        }
                        self.refresh_sessions();
                    }
                }
            }
            Intent::StartRename(id) => {
                let title = self
                    .state
                    .sessions
                    .iter()
                    .find(|(i, _)| *i == id)
                    .map(|(_, e)| e.title.clone())
                    .unwrap_or_default();
                self.state.renaming = Some((id, title));
            }
            Intent::SetRenameText(text) => {
                if let Some((_, title)) = self.state.renaming.as_mut() {
                    *title = text;
                }
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
                        self.state.notify(NoticeKind::Error, Message::Problem((&e).into()));
                    }
                    self.refresh_sessions();
                }
            }
            Intent::OpenSessionFile(path) => {
                if self.state.is_busy() {
                    return;
                }
                // The same file opened again opens the copy made the first time.
                let fingerprint = std::fs::read(&path).ok().map(|b| crate::chat::content_hash(&b));
                let known = fingerprint.as_deref().and_then(|f| self.store.as_ref()?.imported(f)).map(str::to_string);
                if let Some(id) = known {
                    self.apply(Intent::OpenSession(id));
                    return;
                }
                match Session::load(&path) {
                    Ok(mut session) => {
                        // A copy goes into the store, so it is listed, autosaved and never
                        // written back to a file the user keeps elsewhere.
                        session.migrated_from = None;
                        self.switch_session(session, None);
                        self.autosave();
                        if let (Some(f), Some(id), Some(store)) =
                            (fingerprint, self.state.session_id.clone(), self.store.as_mut())
                        {
                            let _ = store.record_import(&f, &id);
                        }
                    }
                    Err(e) => self.state.notify(NoticeKind::Error, Message::Problem((&e).into())),
                }
            }
            Intent::PickSessionFile => self.pick(Purpose::SessionFile),
            Intent::SaveAs => self.pick(Purpose::SaveAs),
            Intent::ExportMarkdown => self.pick(Purpose::ExportMarkdown),
            Intent::ExportHtml => self.pick(Purpose::ExportHtml),
            Intent::ReplaceExport(r) => self.export(&r.target, r.html, true),
            Intent::Copy(text) => {
                self.ctx.copy_text(text);
                self.state.notify(NoticeKind::Info, Message::Copied);
            }
            Intent::SetSidebarFilter(text) => self.state.sidebar_filter = text,
            Intent::ViewImage(hash) => {
                if let Some(h) = &hash {
                    self.request_large_image(h);
                }
                self.state.viewing = hash;
            }
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
            // Through the normal close path: an answer in flight is stopped and saved.
            Intent::Quit => self.ctx.send_viewport_cmd(egui::ViewportCommand::Close),
        }
    }

    fn start_generation(&mut self, parent: Option<TurnId>, query: String, images: Vec<ImageData>) {
        let settings = self.state.prefs.sampling.clone();
        self.start_generation_with(parent, query, images, settings);
    }

    fn start_generation_with(
        &mut self,
        parent: Option<TurnId>,
        query: String,
        images: Vec<ImageData>,
        settings: crate::sampling::SamplingParams,
    ) {
        let turns = match self.state.session.chat_turns_after(parent, &query, &images) {
            Ok(t) => t,
            Err(e) => {
                self.state.notify(NoticeKind::Error, Message::Problem((&e).into()));
                return;
            }
        };
        let id = self.state.new_request_id();
        self.engine.send(Command::Generate { id, turns, params: settings.clone() });
        self.state.pending = Some(Pending { id, parent, images, query, answer: String::new(), settings });
    }

    pub(super) fn switch_session(&mut self, session: Session, id: Option<String>) {
        self.state.session = session;
        self.state.session_id = id;
        self.state.editing = None;
        self.media.thumbs.clear();
        let unavailable: Vec<Message> = self
            .state
            .session
            .unavailable_images()
            .map(|(i, p)| Message::ImageUnavailable { name: i.name.clone(), detail: p.to_string() })
            .collect();
        for m in unavailable {
            self.state.notify(NoticeKind::Error, m);
        }
        if let Some(store) = self.store.as_mut() {
            let _ = store.set_last_opened(self.state.session_id.as_deref());
        }
    }

    pub(super) fn save_as(&mut self, path: &Path) {
        match self.state.session.save(path, ImageStorage::Beside) {
            Ok(()) => self.state.notify(NoticeKind::Info, Message::Saved(path.to_path_buf())),
            Err(e) => self.state.notify(NoticeKind::Error, Message::Problem((&e).into())),
        }
    }

    /// Exports the conversation shown to `path` (the HTML file, or the folder the Markdown
    /// export goes under). An existing file is replaced only with `overwrite`; otherwise the
    /// notice names it and offers Replace.
    pub(super) fn export(&mut self, path: &Path, html: bool, overwrite: bool) {
        let opts = crate::export::ExportOptions {
            overwrite,
            // Never over the conversation's own file, even when asked to replace.
            session_file: self.state.session_id.as_ref().and_then(|id| self.store.as_ref().map(|s| s.path(id))),
        };
        let result = if html {
            crate::export::write_html(&self.state.session, path, &opts)
        } else {
            crate::export::write_markdown(&self.state.session, path, &opts)
        };
        match result {
            Ok(written) => self.state.notify(NoticeKind::Info, Message::Saved(written)),
            Err(crate::Error::Exists { path: existing }) => {
                let replace = Some(ReplaceExport { target: path.to_path_buf(), html });
                self.state.push_notice(Notice {
                    kind: NoticeKind::Error,
                    message: Message::ExportExists(existing),
                    at: std::time::Instant::now(),
                    undo: None,
                    replace,
                });
            }
            Err(e) => self.state.notify(NoticeKind::Error, Message::Problem((&e).into())),
        }
    }
}

/// The choice with the spaces a typed path may carry at either end removed.
fn trimmed(choice: &ModelChoice) -> ModelChoice {
    let trim = |p: &Path| PathBuf::from(p.to_string_lossy().trim());
    let llm = match &choice.llm {
        LlmSource::Folder(p) => LlmSource::Folder(trim(p)),
        LlmSource::Gguf(p) => LlmSource::Gguf(trim(p)),
        LlmSource::Delta { base, delta } => LlmSource::Delta { base: trim(base), delta: trim(delta) },
    };
    ModelChoice { vision: trim(&choice.vision), llm, ..choice.clone() }
}
