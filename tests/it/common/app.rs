//! Driving the real app with egui_kittest: shared by the app test files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui::Key;
use egui_kittest::Harness;
use ziya_visual::model::choice::{LlmSource, ModelOverrides};
use ziya_visual::sampling::SamplingParams;
use ziya_visual::ui::i18n::Lang;
use ziya_visual::ui::{AppOptions, ZiyaApp, COMPOSER_ID};

use super::{llm_dir, vision_dir};

/// A file dropped on the window, as the platform hands it over.
#[derive(Debug)]
pub struct DroppedPath(pub PathBuf);

impl egui::DroppedFile for DroppedPath {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

/// An app with its data in `data`, English, no remembered settings; with the tiny checkpoint
/// loading at start when `with_model`.
pub fn options(data: &Path, sampling: SamplingParams, with_model: bool) -> AppOptions {
    AppOptions {
        data_dir: Some(data.to_path_buf()),
        model: ModelOverrides {
            vision: with_model.then(vision_dir),
            llm: with_model.then(|| LlmSource::Folder(llm_dir())),
            ..Default::default()
        },
        lang: Some(Lang::En),
        sampling: Some(sampling),
        fresh: true,
        ..Default::default()
    }
}

/// The app under kittest. A character no installed font has fails the test, so every string the
/// interface itself shows is checked against the bundled fonts.
pub fn harness(opts: AppOptions) -> Harness<'static, ZiyaApp> {
    Harness::builder().with_size([1200.0, 800.0]).build_eframe(move |cc| ZiyaApp::new(cc, opts))
}

/// The app under kittest for tests that sample answers with fresh seeds: the random-weight
/// model can then write any character at all (Arabic, symbols …), which the real app draws as
/// a box. Only the interface's own strings must have glyphs; those are checked by [`harness`].
pub fn harness_for_sampled_answers(opts: AppOptions) -> Harness<'static, ZiyaApp> {
    Harness::builder().with_size([1200.0, 800.0]).allow_missing_glyphs().build_eframe(move |cc| ZiyaApp::new(cc, opts))
}

/// Steps the app (as frames would) until `done` holds.
pub fn step_until(h: &mut Harness<'_, ZiyaApp>, what: &str, mut done: impl FnMut(&ZiyaApp) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done(h.state()) {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    h.step();
}

pub fn wait_ready(h: &mut Harness<'_, ZiyaApp>) {
    step_until(h, "the model to load", |a| {
        if let Some(e) = &a.state.model.load_error {
            panic!("load failed: {e:?}");
        }
        a.state.is_ready()
    });
}

pub fn drop_files(h: &mut Harness<'_, ZiyaApp>, files: &[PathBuf]) {
    for f in files {
        h.input_mut().dropped_files.push(Arc::new(DroppedPath(f.clone())));
    }
    h.step();
}

/// Focuses the composer, types `text` and presses Enter.
pub fn type_and_enter(h: &mut Harness<'_, ZiyaApp>, text: &str) {
    h.ctx.memory_mut(|m| m.request_focus(egui::Id::unique(COMPOSER_ID)));
    h.step();
    h.event(egui::Event::Text(text.to_string()));
    h.step();
    h.key_press(Key::Enter);
    h.step();
}
