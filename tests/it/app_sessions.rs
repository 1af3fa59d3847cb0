//! Sessions through the real app (egui_kittest, real engine, tiny checkpoint): a file the app
//! writes continues under `ask --session` with the reference ids and the other way round;
//! regenerating and editing make versions the switcher moves between; a session whose image is
//! gone still opens and names it.

use std::path::{Path, PathBuf};

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use ziya_visual::sampling::SamplingParams;
use ziya_visual::ui::state::Intent;
use ziya_visual::ui::ZiyaApp;

use crate::common::app::*;
use crate::common::*;

/// The app with the tiny checkpoint loaded.
fn app(data: &Path, sampling: SamplingParams) -> Harness<'static, ZiyaApp> {
    // Regenerate draws a fresh seed, so the answers here are not reproducible text.
    let mut h = harness_for_sampled_answers(options(data, sampling, true));
    wait_ready(&mut h);
    h
}

/// Attaches `images`, types `query`, presses Enter and waits for the answer.
fn ask_in_app(h: &mut Harness<'_, ZiyaApp>, images: &[PathBuf], query: &str) {
    drop_files(h, images);
    let n = images.len();
    step_until(h, "attachments", |a| a.state.composer.attachments.iter().filter(|x| x.image.is_some()).count() == n);
    type_and_enter(h, query);
    step_until(h, "the answer", |a| a.state.pending.is_none());
}

fn turn_spec(i: usize) -> (Vec<PathBuf>, String, usize, Vec<u32>) {
    let t = &case("three_turn")[i];
    (t.image_paths(), t.query.clone(), t.max_new_tokens, t.token_ids.clone())
}

#[test]
fn app_and_ask_continue_each_others_sessions_with_the_reference_ids() {
    let data = tempfile::tempdir().unwrap();
    // Turn 1 in the app.
    let (images, query, n, want) = turn_spec(0);
    let mut h = app(data.path(), greedy(n));
    ask_in_app(&mut h, &images, &query);
    assert_eq!(h.state().state.session.active_path()[0].token_ids, want, "app, turn 1");
    let id = h.state().state.session_id.clone().expect("autosaved");
    let app_file = data.path().join("sessions").join(format!("{id}.json"));
    assert!(app_file.is_file());

    // Turn 2 through `ask --session` on the app's file.
    let (_, query, n, want) = turn_spec(1);
    let ask_file = data.path().join("from-ask.json");
    let j = Ask::new().greedy(n).arg("--session").arg(&app_file).arg("--save-session").arg(&ask_file).json(&query);
    assert_eq!(ids(&j["token_ids"]), want, "ask on the app's file, turn 2");

    // Turn 3 back in the app, on the file `ask` wrote (opened by dropping it on the window).
    let (images, query, n, want) = turn_spec(2);
    h.state_mut().state.prefs.sampling = greedy(n);
    drop_files(&mut h, std::slice::from_ref(&ask_file));
    step_until(&mut h, "the dropped session to open", |a| a.state.session.active_path().len() == 2);
    ask_in_app(&mut h, &images, &query);
    let path = h.state().state.session.active_path().iter().map(|t| t.token_ids.clone()).collect::<Vec<_>>();
    assert_eq!(path.len(), 3);
    assert_eq!(path[2], want, "app on ask's file, turn 3");
    // The opened file itself was not written to: the app keeps its own copy.
    let ask_written = ziya_visual::session::Session::load(&ask_file).unwrap();
    assert_eq!(ask_written.active_path().len(), 2);
}

#[test]
fn regenerate_and_edit_make_versions_to_switch_between() {
    let data = tempfile::tempdir().unwrap();
    let sampled = SamplingParams { temperature: 1.5, top_p: 1.0, max_new_tokens: 12, ..Default::default() };
    let mut h = app(data.path(), sampled);
    ask_in_app(&mut h, &[], "first question");
    let first = h.state().state.session.active_path()[0].clone();

    h.get_by_label("Regenerate").click();
    h.step();
    step_until(&mut h, "the regenerated answer", |a| a.state.pending.is_none() && a.state.session.turns.len() == 2);
    let second = h.state().state.session.active_path()[0].clone();
    assert_ne!(first.id, second.id);
    assert_eq!(second.query, first.query);
    h.get_by_label("2/2");
    h.get_by_label("‹").click();
    h.step(); // the click is handled at the end of this frame
    h.step(); // and shows in the next
    assert_eq!(h.state().state.session.active_path()[0].id, first.id, "back to version 1");
    h.get_by_label("1/2");

    // Editing the question makes a third version, answered anew.
    h.get_by_label("Edit").click();
    h.step();
    h.state_mut().apply(Intent::SetEditText("an edited question".into()));
    h.step();
    h.get_by_label("Save & regenerate").click();
    h.step();
    step_until(&mut h, "the edited turn", |a| a.state.pending.is_none() && a.state.session.turns.len() == 3);
    let edited = h.state().state.session.active_path()[0].clone();
    assert_eq!(edited.query, "an edited question");
    h.get_by_label("3/3");

    // All three versions are in the saved file.
    let id = h.state().state.session_id.clone().unwrap();
    let saved = ziya_visual::session::Session::load(&data.path().join("sessions").join(format!("{id}.json"))).unwrap();
    assert_eq!(saved.turns.len(), 3);
    assert_eq!(saved.active_path()[0].query, "an edited question");

    // Delete removes the turn shown.
    h.get_by_label("Delete").click();
    h.step();
    h.step();
    assert_eq!(h.state().state.session.turns.len(), 2);
}

#[test]
fn a_session_whose_image_is_gone_opens_and_names_it() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("kept.json");
    let out = Ask::new().greedy(4).image(&image_path("photo_odd.png")).arg("--save-session").arg(&file).run("q");
    assert!(out.status.success());
    std::fs::remove_dir_all(data.path().join("kept.images")).unwrap();

    let mut h = app(data.path(), greedy(4));
    h.state_mut().apply(Intent::OpenSessionFile(file));
    h.step();
    h.step();
    let app = h.state();
    assert_eq!(app.state.session.active_path().len(), 1, "the conversation opened");
    let tr = app.state.tr();
    assert!(
        app.state.notices.iter().any(|n| n.message.text(tr).contains("photo_odd.png")),
        "the missing image is named"
    );
    h.get_by_label_contains("Image photo_odd.png is missing");
}

#[test]
fn regenerate_draws_a_new_seed_and_more_varied_lets_the_answer_change() {
    let data = tempfile::tempdir().unwrap();
    // The model card's defaults: top_p 0.1 makes answers (nearly) the same whatever the seed.
    let card = SamplingParams { max_new_tokens: 24, ignore_eos: true, ..Default::default() };
    assert!(card.is_deterministic());
    let mut h = app(data.path(), card);
    ask_in_app(&mut h, &[], "tell me something");
    let first = h.state().state.session.active_path()[0].clone();

    h.get_by_label("Regenerate").click();
    h.step();
    step_until(&mut h, "the second version", |a| a.state.pending.is_none() && a.state.session.turns.len() == 2);
    let second = h.state().state.session.active_path()[0].clone();
    let seed = second.settings.as_ref().and_then(|s| s.seed).expect("a regeneration records its seed");
    assert_ne!(Some(seed), first.settings.as_ref().and_then(|s| s.seed), "a new seed");

    // "More varied" regenerates this once with temperature and top_p of at least 0.9. (The tiny
    // random model's distributions are peaked, so even then a draw can repeat the greedy answer:
    // a few tries must give a different one.)
    let mut differs = false;
    for tries in 1..=4 {
        h.get_by_label("More varied").click();
        h.step();
        step_until(&mut h, "the varied version", |a| {
            a.state.pending.is_none() && a.state.session.turns.len() == 2 + tries
        });
        let varied = h.state().state.session.active_path()[0].clone();
        let s = varied.settings.clone().unwrap();
        assert!(s.temperature >= 0.9 && s.top_p >= 0.9, "{s:?}");
        if varied.token_ids != first.token_ids {
            differs = true;
            h.get_by_label(&format!("{}/{}", 2 + tries, 2 + tries));
            break;
        }
    }
    assert!(differs, "varied regenerations give another answer");
    assert_eq!(h.state().state.prefs.sampling.top_p, 0.1, "only for those regenerations");
}

#[test]
fn a_new_version_is_shown_in_place_while_it_is_generated() {
    let data = tempfile::tempdir().unwrap();
    let mut h = app(data.path(), greedy(4));
    ask_in_app(&mut h, &[], "the first question");
    ask_in_app(&mut h, &[], "a later question");
    // (The first question is also the conversation's title in the sidebar.)
    let shown = h.query_all_by_label("the first question").count();
    // Regenerating the first turn with a long answer: while it runs, the old branch's later turn
    // is hidden and the new version sits where the old one was, numbered.
    let long = SamplingParams { temperature: 0.0, max_new_tokens: 400, ignore_eos: true, ..Default::default() };
    h.state_mut().apply(Intent::SetSampling(long));
    h.get_all_by_label("Regenerate").next().unwrap().click();
    h.step();
    step_until(&mut h, "the new version to stream", |a| a.state.pending.as_ref().is_some_and(|p| !p.answer.is_empty()));
    assert!(h.query_by_label("a later question").is_none(), "the old branch's later turn is hidden");
    h.get_by_label("‹ 2/2 ›");
    assert_eq!(h.query_all_by_label("the first question").count(), shown, "no duplicate of the question");
    h.get_by_label("■ Stop").click();
    step_until(&mut h, "the stop", |a| a.state.pending.is_none());
    h.step();
    h.get_by_label("2/2");
}

#[test]
fn deleting_a_turn_or_a_conversation_can_be_undone() {
    let data = tempfile::tempdir().unwrap();
    let mut h = app(data.path(), greedy(4));
    ask_in_app(&mut h, &[], "keep me");
    ask_in_app(&mut h, &[], "delete me");
    h.get_all_by_label("Delete").nth(1).unwrap().click();
    h.step();
    h.step();
    assert_eq!(h.state().state.session.active_path().len(), 1);
    h.step(); // a new notice area is laid out, then shown
    h.get_by_label("Turn deleted");
    h.get_by_label("Undo").click();
    h.step();
    h.step();
    let path: Vec<String> = h.state().state.session.active_path().iter().map(|t| t.query.clone()).collect();
    assert_eq!(path, ["keep me", "delete me"], "the turn is back");

    // A whole conversation goes to the trash, and comes back.
    let id = h.state().state.session_id.clone().unwrap();
    let file = data.path().join("sessions").join(format!("{id}.json"));
    h.state_mut().apply(Intent::DeleteSession(id.clone()));
    h.step();
    assert!(!file.exists() && h.state().state.sessions.is_empty());
    assert!(data.path().join("sessions/trash").join(format!("{id}.json")).is_file(), "kept in the trash");
    h.step();
    h.get_by_label("Undo").click();
    h.step();
    h.step();
    assert!(file.is_file());
    assert_eq!(h.state().state.sessions.len(), 1);
}
