//! The desktop app driven headlessly with egui_kittest: the real `ZiyaApp`, the real engine
//! thread and the committed tiny checkpoint (no mock engine). Missing glyphs fail the test, so
//! Chinese must render with the bundled font.

use std::path::PathBuf;

use egui::{Key, Modifiers};
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use ziya_visual::generation::StopReason;
use ziya_visual::model::choice::LlmSource;
use ziya_visual::sampling::SamplingParams;
use ziya_visual::ui::i18n::Lang;
use ziya_visual::ui::state::{Intent, NoticeKind};
use ziya_visual::ui::{AppOptions, ZiyaApp};

use crate::common::app::*;
use crate::common::*;

#[test]
fn dropped_images_and_enter_give_the_same_streamed_answer_as_ask() {
    let data = tempfile::tempdir().unwrap();
    let turn = &case("two_images")[0];
    let mut h = harness(options(data.path(), greedy(turn.max_new_tokens), true));
    wait_ready(&mut h);

    // Two dropped files become two thumbnails in the composer.
    let images: Vec<PathBuf> = turn.image_paths();
    drop_files(&mut h, &images);
    step_until(&mut h, "two thumbnails", |a| a.media.attachment_thumbs.len() == 2);
    assert_eq!(h.state().state.composer.attachments.len(), 2);
    assert!(h.query_all_by_label("photo_odd.png").next().is_some());
    assert!(h.query_all_by_label("rgba.png").next().is_some());

    // Shift+Enter is a new line, not a send.
    h.ctx.memory_mut(|m| m.request_focus(egui::Id::unique(ziya_visual::ui::COMPOSER_ID)));
    h.step();
    h.event(egui::Event::Text("x".into()));
    h.key_press_modifiers(Modifiers::SHIFT, Key::Enter);
    h.step();
    assert!(h.state().state.pending.is_none(), "Shift+Enter does not send");
    assert_eq!(h.state().state.composer.text, "x\n", "Shift+Enter inserts a new line");
    h.state_mut().state.composer.text.clear();
    h.step();

    // Enter sends; the answer streams into the pending bubble, then becomes a turn.
    type_and_enter(&mut h, &turn.query);
    assert!(h.state().state.pending.is_some(), "Enter sends");
    let mut partial_lengths = Vec::new();
    step_until(&mut h, "the answer", |a| {
        if let Some(p) = &a.state.pending {
            partial_lengths.push(p.answer.len());
        }
        a.state.pending.is_none()
    });
    let app = h.state();
    let path = app.state.session.active_path();
    assert_eq!(path.len(), 1);
    let answer = &path[0];
    assert_eq!(answer.query, turn.query);
    assert_eq!(answer.images.len(), 2);

    // The same turn through `ask`.
    let j = Ask::new().turn(turn).json(&turn.query);
    assert_eq!(answer.answer, j["text"].as_str().unwrap(), "the app's answer is ask's answer");
    assert_eq!(answer.token_ids, ids(&j["token_ids"]));
    assert_eq!(answer.answer, turn.text, "and the reference's");
    assert!(partial_lengths.iter().all(|&n| n <= answer.answer.len()));

    // The finished turn was autosaved.
    assert!(app.state.session_id.is_some());
    assert_eq!(app.state.sessions.len(), 1);
}

#[test]
fn stop_cancels_mid_answer_and_keeps_the_partial_turn() {
    let data = tempfile::tempdir().unwrap();
    let long = SamplingParams { temperature: 0.0, max_new_tokens: 400, ignore_eos: true, ..Default::default() };
    let mut h = harness(options(data.path(), long, true));
    wait_ready(&mut h);
    type_and_enter(&mut h, "tell me a long story");
    step_until(&mut h, "the answer to start streaming", |a| {
        a.state.pending.as_ref().is_some_and(|p| !p.answer.is_empty())
    });
    h.get_by_label("■ Stop").click();
    step_until(&mut h, "the answer to stop", |a| a.state.pending.is_none());
    let app = h.state();
    let turn = app.state.session.active_path()[0].clone();
    let stats = turn.stats.expect("stats");
    assert_eq!(stats.stop, StopReason::Cancelled);
    assert!(turn.token_ids.len() < 400, "stopped early: {} tokens", turn.token_ids.len());
    assert!(!turn.answer.is_empty());
    h.get_by_label("(stopped)");
}

#[test]
fn a_dropped_text_file_is_refused_by_name() {
    let data = tempfile::tempdir().unwrap();
    let mut h = harness(options(data.path(), greedy(4), false));
    drop_files(&mut h, &[fixtures().join("corpus.txt")]);
    step_until(&mut h, "the refusal", |a| !a.state.notices.is_empty());
    let app = h.state();
    assert!(app.state.composer.attachments.is_empty());
    let n = &app.state.notices[0];
    assert_eq!(n.kind, NoticeKind::Error);
    let text = n.message.text(app.state.tr());
    assert!(text.contains("corpus.txt") && text.contains("not a usable image"), "{text}");
    h.get_by_label_contains("corpus.txt");
}

#[test]
fn without_a_model_send_is_disabled_and_says_why_and_the_demo_is_offered() {
    let data = tempfile::tempdir().unwrap();
    let mut h = harness(options(data.path(), greedy(4), false));
    h.step();
    h.get_by_label("Load a model first (model panel on the right)");
    assert!(h.get_by_label("▶ Send").accesskit_node().is_disabled());
    // The panel explains the two folders and offers the demo, labelled as random weights.
    h.get_by_label_contains("You need two folders");
    h.get_by_label_contains("random weights");
    h.get_by_label("▶ Try the demo model").click();
    wait_ready(&mut h);
    h.get_by_label_contains("DEMO · random weights");
}

#[test]
fn the_chinese_interface_renders_without_system_cjk_fonts() {
    // kittest has no system fonts: only egui's defaults and what the app installs. A missing
    // glyph panics, so this fails if the bundled font does not cover the Chinese UI.
    let data = tempfile::tempdir().unwrap();
    let mut opts = options(data.path(), greedy(8), true);
    opts.lang = Some(Lang::Zh);
    let mut h = harness(opts);
    wait_ready(&mut h);
    h.get_by_label("▶ 发送");
    type_and_enter(&mut h, "这张图片里有什么？请讲一个故事。");
    step_until(&mut h, "the answer", |a| a.state.pending.is_none() && !a.state.session.turns.is_empty());
    // Shown in the chat and, as the conversation's title, in the sidebar.
    assert_eq!(h.query_all_by_label("这张图片里有什么？请讲一个故事。").count(), 2);
}

/// eframe's storage as the app sees it (eframe keeps it in a RON file between runs).
#[derive(Default)]
struct MemoryStorage(std::collections::HashMap<String, String>);

impl eframe::Storage for MemoryStorage {
    fn get_string(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
    fn set_string(&mut self, key: &str, value: String) {
        self.0.insert(key.into(), value);
    }
    fn remove_string(&mut self, key: &str) {
        self.0.remove(key);
    }
    fn flush(&mut self) {}
}

#[test]
fn folders_and_settings_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let sampling = SamplingParams {
        temperature: 0.3,
        top_p: 0.8,
        top_k: 7,
        max_new_tokens: 77,
        repeat_penalty: 1.1,
        seed: Some(5),
        ..greedy(1)
    };
    let mut first = options(data.path(), sampling.clone(), true);
    first.fresh = false; // eframe gives kittest no storage, so this starts from defaults
    first.lang = Some(Lang::Zh);
    first.model.quant = Some(ziya_visual::model::layers::Quant::Q8_0);
    let mut h = harness(first);
    h.step();
    let mut storage = MemoryStorage::default();
    eframe::App::save(h.state_mut(), &mut storage);
    let saved = h.state().state.prefs.clone();
    drop(h);
    assert_eq!(saved.model.vision, vision_dir());
    assert_eq!(saved.model.llm, LlmSource::Folder(llm_dir()));

    // A new start with no flags: everything comes back from storage.
    let storage: &'static MemoryStorage = Box::leak(Box::new(storage));
    let second = AppOptions { data_dir: Some(data.path().to_path_buf()), ..Default::default() };
    let mut h = Harness::builder().with_size([1200.0, 800.0]).build_eframe(move |cc| {
        cc.storage = Some(storage);
        ZiyaApp::new(cc, second)
    });
    h.step();
    let restored = &h.state().state.prefs;
    assert_eq!(restored, &saved);
    assert_eq!(restored.sampling, sampling);
    assert_eq!(restored.lang, Some(Lang::Zh));
    assert_eq!(restored.model.quant, Some(ziya_visual::model::layers::Quant::Q8_0));
    // And the window speaks the remembered language.
    h.get_by_label("▶ 发送");
}

#[test]
fn a_failed_load_keeps_the_working_model() {
    let data = tempfile::tempdir().unwrap();
    let mut h = harness(options(data.path(), greedy(4), true));
    wait_ready(&mut h);
    let loaded = h.state().state.model.loaded.clone().unwrap();
    // A folder that does not exist: refused by name, the tiny model stays.
    h.state_mut().apply(Intent::SetVisionPath("/nonexistent/vision".into()));
    h.state_mut().apply(Intent::LoadModel);
    step_until(&mut h, "the refusal", |a| a.state.model.load_error.is_some());
    assert_eq!(h.state().state.model.loaded.as_deref(), Some(&*loaded), "the working model is still loaded");
    h.get_by_label_contains("/nonexistent/vision/config.json is not usable");
    type_and_enter(&mut h, "still there?");
    step_until(&mut h, "the answer", |a| a.state.pending.is_none() && !a.state.session.turns.is_empty());
    assert_eq!(h.state().state.session.active_path()[0].token_ids.len(), 4);
}

#[test]
fn errors_are_worded_in_the_interface_language_and_follow_a_switch() {
    let data = tempfile::tempdir().unwrap();
    let mut opts = options(data.path(), greedy(4), false);
    opts.lang = Some(Lang::Zh);
    let mut h = harness(opts);
    h.step();
    drop_files(&mut h, &[fixtures().join("corpus.txt")]);
    step_until(&mut h, "the refusal", |a| !a.state.notices.is_empty());
    h.get_by_label_contains("不是可用的图片");
    // A load error: the sentence is Chinese, the file named.
    h.state_mut().apply(Intent::SetVisionPath(data.path().join("no-such-folder")));
    h.state_mut().apply(Intent::SetLlmPath(llm_dir()));
    h.state_mut().apply(Intent::LoadModel);
    step_until(&mut h, "the load error", |a| a.state.model.load_error.is_some());
    h.step();
    h.get_by_label_contains("模型配置");
    // Switching the language re-words what is shown.
    h.state_mut().apply(Intent::SetLang(Lang::En));
    h.step();
    h.get_by_label_contains("is not a usable image");
    h.get_by_label_contains("The model configuration");
}

/// An app started as the binary starts it (remembered preferences in `storage`).
fn restarted(data: &std::path::Path, storage: &'static MemoryStorage, opts: AppOptions) -> Harness<'static, ZiyaApp> {
    let opts = AppOptions { data_dir: Some(data.to_path_buf()), lang: Some(Lang::En), ..opts };
    Harness::builder().with_size([1200.0, 800.0]).build_eframe(move |cc| {
        cc.storage = Some(storage);
        ZiyaApp::new(cc, opts)
    })
}

#[test]
fn a_restart_reloads_the_last_model_and_flags_win_over_preferences() {
    use ziya_visual::device::Precision;
    let data = tempfile::tempdir().unwrap();
    let mut first = options(data.path(), greedy(4), true);
    first.fresh = false;
    let mut h = harness(first);
    wait_ready(&mut h);
    let mut storage = MemoryStorage::default();
    eframe::App::save(h.state_mut(), &mut storage);
    drop(h);
    let storage: &'static MemoryStorage = Box::leak(Box::new(storage));

    // No flags: the model comes back by itself, with the usual progress.
    let mut h = restarted(data.path(), storage, AppOptions::default());
    assert!(h.state().state.is_loading(), "loading starts at once");
    wait_ready(&mut h);
    let loaded = h.state().state.model.loaded.clone().unwrap();
    assert_eq!(loaded.choice.vision, vision_dir());
    assert_eq!(loaded.dtype, "f32");
    drop(h);

    // A flag given now wins over the remembered setting.
    let flags = ziya_visual::model::choice::ModelOverrides { precision: Some(Precision::F16), ..Default::default() };
    let mut h = restarted(data.path(), storage, AppOptions { model: flags, ..Default::default() });
    wait_ready(&mut h);
    assert_eq!(h.state().state.model.loaded.as_ref().unwrap().dtype, "f16");
    assert_eq!(h.state().state.prefs.model.precision, Precision::F16);

    // The setting turns it off.
    h.state_mut().apply(Intent::SetReloadLastModel(false));
    let mut off = MemoryStorage::default();
    eframe::App::save(h.state_mut(), &mut off);
    drop(h);
    let off: &'static MemoryStorage = Box::leak(Box::new(off));
    let mut h = restarted(data.path(), off, AppOptions::default());
    h.step();
    assert!(!h.state().state.is_loading() && h.state().state.model.loaded.is_none());
}

#[test]
fn without_a_system_file_dialog_one_opens_inside_the_window() {
    let data = tempfile::tempdir().unwrap();
    let mut opts = options(data.path(), greedy(4), true);
    opts.builtin_dialogs = true;
    let mut h = harness(opts);
    wait_ready(&mut h);

    // Attach images: the dialog says why it is not the system's, lists the images of a folder
    // (not the text file), and several can be chosen.
    h.get_by_label("＋ Attach images");
    h.state_mut().apply(Intent::PickImages);
    assert!(h.state().state.dialog.is_some(), "the in-window dialog opened");
    h.step(); // a new window is laid out, then shown
    h.step();
    h.get_by_label_contains("No system file dialog is available");
    h.state_mut().apply(Intent::DialogNavigate(image_path("")));
    h.step();
    assert!(h.query_by_label("corpus.txt").is_none());
    h.get_by_label("rgba.png");
    // (Entries are chosen by intent: kittest clicks by screen position, and the list scrolls.)
    h.state_mut().apply(Intent::DialogToggle(image_path("rgba.png")));
    h.state_mut().apply(Intent::DialogToggle(image_path("gray.png")));
    h.step();
    h.get_by_label("2 chosen");
    h.get_by_label("Open").click();
    h.step();
    step_until(&mut h, "two attachments", |a| {
        a.state.composer.attachments.iter().filter(|x| x.image.is_some()).count() == 2
    });
    assert!(h.state().state.dialog.is_none());
    type_and_enter(&mut h, "two pictures");
    step_until(&mut h, "the answer", |a| a.state.pending.is_none() && !a.state.session.turns.is_empty());

    // Export HTML: a file name typed (Tab completes folder names), Save writes it.
    std::fs::create_dir(data.path().join("exports")).unwrap();
    h.state_mut().apply(Intent::ExportHtml);
    h.step();
    h.step();
    h.state_mut().apply(Intent::DialogNavigate(data.path().to_path_buf()));
    h.ctx.memory_mut(|m| m.request_focus(egui::Id::unique(ziya_visual::ui::PATH_FIELD_ID)));
    h.step();
    h.state_mut().apply(Intent::DialogSetInput("exp".into()));
    h.step();
    h.key_press(Key::Tab);
    h.step();
    assert_eq!(h.state().state.dialog.as_ref().unwrap().dir, data.path().join("exports"), "Tab entered the folder");
    h.state_mut().apply(Intent::DialogSetInput("story.html".into()));
    h.step();
    h.get_by_label("Save").click();
    h.step();
    assert!(data.path().join("exports/story.html").is_file(), "exported where the dialog said");
    h.step();
    h.step(); // the notice area is laid out, then shown
    h.get_by_label_contains("story.html");

    // The same name again: nothing is replaced until the user says so in the notice.
    let exported = data.path().join("exports/story.html");
    std::fs::write(&exported, "an older export").unwrap();
    h.state_mut().apply(Intent::ExportHtml);
    h.step();
    h.step();
    h.state_mut().apply(Intent::DialogSetInput("story.html".into()));
    h.step();
    h.get_by_label("Save").click();
    h.step();
    h.step();
    h.step(); // the notice area grows, then settles
    h.get_by_label_contains("already exists; nothing was written");
    assert_eq!(std::fs::read_to_string(&exported).unwrap(), "an older export");
    h.get_by_label("Replace").click();
    h.step();
    h.step();
    let notes: Vec<String> = h.state().state.notices.iter().map(|n| format!("{:?}", n.message)).collect();
    assert!(
        std::fs::read_to_string(&exported).unwrap().starts_with("<!DOCTYPE html>"),
        "replaced when asked: {notes:?}"
    );
}

#[test]
fn a_model_that_does_not_fit_offers_the_choices_that_do_in_one_short_sentence() {
    use ziya_visual::model::files::ModelFiles;
    use ziya_visual::model::layers::Quant;
    // The tiny model's needs in f32 and in 4-bit; the machine has something in between.
    let files = ModelFiles::read(&ziya_visual::model::choice::ModelChoice::folders(vision_dir(), llm_dir())).unwrap();
    let ctx = files.context_length();
    let prompt = ziya_visual::model::plan::PREFILL_CHUNK.min(ctx);
    let plan = |q| files.plan_with(q, candle_core::DType::F32, true, prompt, ctx).total;
    let limit = (plan(None) + plan(Some(Quant::Q4K))) / 2;

    let data = tempfile::tempdir().unwrap();
    let mut opts = options(data.path(), greedy(4), true);
    opts.memory_limit = Some(limit);
    opts.lang = Some(Lang::Zh);
    let mut h = harness(opts);
    step_until(&mut h, "the refusal", |a| a.state.model.load_error.is_some());
    let fits = match h.state().state.model.load_error.clone() {
        Some(ziya_visual::error::Problem::DoesNotFit(n)) => n.fits,
        other => panic!("expected a memory refusal, got {other:?}"),
    };
    assert!(!fits.is_empty() && fits.iter().all(|o| o.total <= limit), "{fits:?}");
    h.step();
    // One sentence in the interface's language, and the choices as buttons.
    h.get_by_label_contains("这个模型需要约");
    let first = ziya_visual::ui::messages::fit_option(&fits[0], ziya_visual::ui::i18n::Lang::Zh.tr());
    assert!(first.starts_with("改用"), "{first}");
    h.get_by_label(&first);
    h.state_mut().apply(Intent::UseFit(fits[0]));
    wait_ready(&mut h);
    assert_eq!(h.state().state.model.loaded.as_ref().unwrap().quant, fits[0].quant);
}
