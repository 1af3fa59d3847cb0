//! What arrives from outside the UI thread — engine events, decoded images, plans, file dialog
//! answers — folded into the state, and the work the state asks for started: thumbnails of the
//! images shown, plans for the panel's choice, saving finished answers. Runs in `App::logic`,
//! so it goes on while the window is minimised.

use std::sync::Arc;

use super::{Thumb, ZiyaApp};
use crate::engine::Event;
use crate::generation::Generation;
use crate::session::{ModelInfo, NewTurn, TurnStats};
use crate::ui::images::{ImageJob, ImageResult};
use crate::ui::messages::Message;
use crate::ui::state::{Attachment, NoticeKind, Pending};

impl ZiyaApp {
    /// Brings in what the engine, the image workers, the planner and the dialogs have sent.
    pub(super) fn pump(&mut self) {
        while let Some(event) = self.engine.try_recv() {
            self.on_engine_event(event);
        }
        while let Some(result) = self.images.try_recv() {
            self.on_image(result);
        }
        while let Some(rows) = self.planner.try_recv() {
            // Only the rows for what the panel shows now are kept.
            if rows.choice == self.state.prefs.model {
                self.state.plans = Some(rows);
            }
        }
        while let Ok(answer) = self.dialog_rx.try_recv() {
            self.on_dialog_answer(answer);
        }
    }

    /// Folds an engine event into the state; a finished answer becomes a turn and is saved.
    pub(super) fn on_engine_event(&mut self, event: Event) {
        let state = &mut self.state;
        match event {
            Event::LoadProgress { done, total } => {
                if state.model.loading.is_some() {
                    state.model.loading = Some((done, total));
                }
            }
            Event::Loaded(summary) => {
                state.model.loading = None;
                state.model.load_error = None;
                state.prefs.last_loaded = Some(summary.choice.clone());
                state.model.loaded = Some(summary);
            }
            Event::LoadFailed(failure) => {
                state.model.loading = None;
                state.model.load_error = Some(failure.problem);
            }
            Event::Unloaded => {
                state.model.loaded = None;
                state.prefs.last_loaded = None;
            }
            Event::Token { id, text } => {
                if let Some(p) = state.pending.as_mut().filter(|p| p.id == id) {
                    p.answer.push_str(&text);
                }
            }
            Event::Finished { id, generation } => {
                if let Some(p) = state.pending.take_if(|p| p.id == id) {
                    self.finish(p, generation);
                    self.autosave();
                }
            }
            Event::Measured(m) => {
                if m.key == state.measure_key {
                    state.measure = Some(m);
                }
            }
            Event::Failed { id, failure } => {
                if let Some(p) = state.pending.take_if(|p| p.id == id) {
                    state.notify(NoticeKind::Error, Message::AnswerFailed(failure.problem));
                    // Give the question back so nothing typed is lost.
                    if state.composer.text.is_empty() && state.composer.attachments.is_empty() {
                        state.composer.text = p.query;
                        for image in p.images {
                            let key = state.new_key();
                            // Its thumbnail goes back with it (the chat's may be cleared, e.g. by New chat).
                            if let Some(Thumb::Ready(tex)) = self.media.thumbs.get(&image.hash) {
                                self.media.attachment_thumbs.insert(key, tex.clone());
                            }
                            state.composer.attachments.push(Attachment {
                                key,
                                name: image.name.clone(),
                                image: Some(image),
                            });
                        }
                    }
                }
            }
        }
    }

    /// Records a finished (or stopped) answer as a turn of the conversation, with the model that
    /// gave it.
    fn finish(&mut self, p: Pending, g: Generation) {
        let state = &mut self.state;
        state.last_speed = g.tokens_per_second().or(state.last_speed);
        // A question stopped before any text keeps its turn, marked stopped: what was asked is kept.
        let model = state.model.loaded.as_deref().map(ModelInfo::of);
        state.session.add_turn(
            p.parent,
            NewTurn {
                images: p.images,
                query: p.query,
                answer: g.text.clone(),
                token_ids: g.token_ids.clone(),
                settings: Some(p.settings),
                stats: Some(TurnStats::of(&g)),
                model,
                context_start: Some(g.context_start),
            },
        );
    }

    fn on_image(&mut self, result: ImageResult) {
        match result {
            ImageResult::Attached { key, image, thumb } => {
                if self.waiting.remove(&key) {
                    let tex = self.ctx.load_texture(format!("attachment-{key}"), thumb, Default::default());
                    self.media.attachment_thumbs.insert(key, tex);
                    if let Some(a) = self.state.composer.attachments.iter_mut().find(|a| a.key == key) {
                        a.name = image.name.clone();
                        a.image = Some(image);
                    }
                }
            }
            ImageResult::Refused { key, name, refusal } => {
                self.waiting.remove(&key);
                self.state.composer.attachments.retain(|a| a.key != key);
                self.state.notify(NoticeKind::Error, Message::ImageRefused { name, refusal });
            }
            ImageResult::Large { hash, image } => {
                if self.state.viewing.as_ref() == Some(&hash) {
                    let t = match image {
                        Ok(img) => {
                            Thumb::Ready(self.ctx.load_texture(format!("large-{hash}"), img, Default::default()))
                        }
                        Err(e) => Thumb::Failed(e),
                    };
                    self.media.large = Some((hash, t));
                }
            }
            ImageResult::Thumbnail { hash, thumb } => {
                let t = match thumb {
                    Ok(img) => Thumb::Ready(self.ctx.load_texture(format!("thumb-{hash}"), img, Default::default())),
                    Err(e) => Thumb::Failed(e),
                };
                self.media.thumbs.insert(hash, t);
            }
        }
    }

    /// Asks the workers for the thumbnails of the images the chat shows that it has not asked
    /// for yet (the conversation's and the answer being generated's), once each.
    pub(super) fn request_thumbnails(&mut self) {
        /// A thumbnail to make, or why there can be none.
        type Wanted = (String, Result<(String, Arc<[u8]>), String>);
        let session = &self.state.session;
        let thumbs = &self.media.thumbs;
        let mut wanted: Vec<Wanted> = Vec::new();
        let mut want = |hash: &String, source: &dyn Fn() -> Result<(String, Arc<[u8]>), String>| {
            if !thumbs.contains_key(hash) && !wanted.iter().any(|w| &w.0 == hash) {
                wanted.push((hash.clone(), source()));
            }
        };
        for turn in session.active_path() {
            for hash in &turn.images {
                want(hash, &|| match session.images.get(hash) {
                    Some(img) => match &img.bytes {
                        Some(b) => Ok((img.name.clone(), b.clone())),
                        None => Err(img.problem.clone().unwrap_or_default()),
                    },
                    None => Err("not in the session".into()),
                });
            }
        }
        for img in self.state.pending.iter().flat_map(|p| &p.images) {
            want(&img.hash, &|| Ok((img.name.clone(), img.bytes.clone())));
        }
        for (hash, source) in wanted {
            match source {
                Ok((name, bytes)) => {
                    self.images.submit(ImageJob::Thumbnail { hash: hash.clone(), name, bytes });
                    self.media.thumbs.insert(hash, Thumb::Pending);
                }
                Err(why) => {
                    self.media.thumbs.insert(hash, Thumb::Failed(why));
                }
            }
        }
    }

    /// Asks the engine how much of the context the conversation and the question being written
    /// take, when either (or the model, or max new tokens) changed.
    pub(super) fn request_measure(&mut self) {
        use std::hash::{Hash, Hasher};
        let state = &self.state;
        let Some(model) = state.model.loaded.as_ref().filter(|_| !state.is_loading()) else {
            return;
        };
        let images: Vec<_> = state.composer.attachments.iter().filter_map(|a| a.image.clone()).collect();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            state.session.active_leaf,
            state.session.turns.len(),
            &state.composer.text,
            state.prefs.sampling.max_new_tokens,
        )
            .hash(&mut h);
        images.iter().for_each(|i| i.hash.hash(&mut h));
        (model.load_s.to_bits(), &model.choice.vision).hash(&mut h);
        let key = h.finish();
        if key == state.measure_key {
            return;
        }
        self.state.measure_key = key;
        // The conversation as it would be sent (a question not yet written counts as empty).
        if let Ok(turns) = self.state.session.chat_turns(self.state.composer.text.trim_end(), &images) {
            let max_new = self.state.prefs.sampling.max_new_tokens;
            self.engine.send(crate::engine::Command::Measure { key, turns, max_new });
        }
    }

    /// Asks a worker for a conversation image at a size to look at.
    pub(super) fn request_large_image(&mut self, hash: &str) {
        if self.media.large.as_ref().is_some_and(|(h, _)| h == hash) {
            return;
        }
        let from_session = self.state.session.images.get(hash).and_then(|i| Some((i.name.clone(), i.bytes.clone()?)));
        let from_pending = || {
            self.state
                .pending
                .iter()
                .flat_map(|p| &p.images)
                .find(|i| i.hash == hash)
                .map(|i| (i.name.clone(), i.bytes.clone()))
        };
        if let Some((name, bytes)) = from_session.or_else(from_pending) {
            self.media.large = Some((hash.to_string(), Thumb::Pending));
            self.images.submit(ImageJob::Large { hash: hash.to_string(), name, bytes });
        }
    }

    /// Asks the planner for the panel's choice when it changed (the folders are read there, not
    /// on the UI thread).
    pub(super) fn request_plans(&mut self) {
        let choice = &self.state.prefs.model;
        if !choice.is_complete() || self.state.plans.as_ref().is_some_and(|p| &p.choice == choice) {
            return;
        }
        self.planner.request(choice);
    }

    pub(super) fn refresh_sessions(&mut self) {
        self.state.sessions = self.store.as_ref().map(|s| s.list()).unwrap_or_default();
    }

    /// Saves the conversation in the store (after each finished turn and each edit).
    pub(super) fn autosave(&mut self) {
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
        let result = store.save(&id, &self.state.session).and_then(|_| store.set_last_opened(Some(&id)));
        if let Err(e) = result {
            // The conversation stays in memory; the next save tries again.
            self.state.notify(NoticeKind::Error, Message::Problem((&e).into()));
        }
        self.refresh_sessions();
    }
}
