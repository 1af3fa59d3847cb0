//! Long stories: once a conversation outgrows the context, the oldest turns leave the model's
//! view by the rule of `chat::context_window`, and every turn is still answered — token for
//! token as HF transformers answers on the same trimmed layout (tests/fixtures/make_fixtures.py
//! implements the rule independently).

use egui_kittest::kittest::Queryable;
use ziya_visual::chat::ChatTurn;

use crate::common::app::*;
use crate::common::*;

#[test]
fn a_twelve_turn_story_is_answered_on_the_reference_windows() {
    let story = &cases().long_story;
    assert_eq!(story.turns.len(), 12);
    let mut p = tiny();
    assert_eq!(p.context_length(), story.context);
    let mut history: Vec<ChatTurn> = Vec::new();
    for (i, turn) in story.turns.iter().enumerate() {
        let mut turns = history.clone();
        turns.push(turn.asked());
        // One pipeline for the whole story: between trims the cached prefix is reused.
        let g = p.generate(&turns, &greedy(story.max_new_tokens), &mut |_| true).unwrap();
        assert_eq!(g.context_start, turn.context_start, "turn {i}: first turn in view");
        assert_eq!(g.prompt_tokens, turn.prompt_tokens, "turn {i}: window positions");
        assert_eq!(g.token_ids, turn.token_ids, "turn {i}: greedy ids");
        let window = ziya_visual::chat::Prompt::build(&p.template, &p.tokenizer, &turns[g.context_start..]).unwrap();
        assert_eq!(window.pieces, turn.pieces(), "turn {i}: the window's layout");
        history.push(turn.answered());
    }
    let starts: Vec<usize> = story.turns.iter().map(|t| t.context_start).collect();
    assert!(starts.windows(2).filter(|w| w[1] > w[0]).count() >= 2, "the story is trimmed at least twice: {starts:?}");
}

#[test]
fn ask_continues_the_apps_long_story_with_the_same_window_and_ids() {
    let story = &cases().long_story;
    let data = tempfile::tempdir().unwrap();
    let mut h = harness(options(data.path(), greedy(story.max_new_tokens), true));
    wait_ready(&mut h);
    // The app answers the first seven turns (past the first trim, at turn 5).
    for (i, turn) in story.turns[..7].iter().enumerate() {
        drop_files(&mut h, &turn.image_paths());
        step_until(&mut h, "the attachment", |a| a.state.composer.attachments.iter().all(|x| x.image.is_some()));
        type_and_enter(&mut h, &turn.query);
        step_until(&mut h, "the answer", |a| a.state.pending.is_none());
        let answered = h.state().state.session.active_path()[i].clone();
        assert_eq!(answered.token_ids, turn.token_ids, "app, turn {i}");
        assert_eq!(answered.context_start, Some(turn.context_start), "app, turn {i}");
    }
    // The chat marks where the model's view begins (turn 5 of 7: turns 1-4 left it), and the
    // meter counts from there: the window's positions plus the new tokens reserved.
    assert_eq!(h.state().state.session.view_start(), 4);
    h.get_by_label("Earlier turns are no longer seen by the model");
    step_until(&mut h, "the context meter", |a| a.state.measure.is_some_and(|m| m.key == a.state.measure_key));
    let m = h.state().state.measure.unwrap();
    assert_eq!(m.window_start, 4);
    assert_eq!(m.context, 512);
    h.get_by_label(&format!("Context {} / 512", m.prompt + story.max_new_tokens));
    // Typing the next question moves the meter (it is measured with the question in it).
    h.ctx.memory_mut(|mem| mem.request_focus(egui::Id::unique(ziya_visual::ui::COMPOSER_ID)));
    h.step();
    h.event(egui::Event::Text(story.turns[7].query.clone()));
    step_until(&mut h, "the meter to count the question", |a| {
        a.state.measure.is_some_and(|x| x.key == a.state.measure_key && x.prompt > m.prompt)
    });
    h.state_mut().apply(ziya_visual::ui::state::Intent::SetComposerText(String::new()));

    // Exports mark the same point.
    let out = tempfile::tempdir().unwrap();
    let md = ziya_visual::export::write_markdown(&h.state().state.session, out.path(), &Default::default()).unwrap();
    let md = std::fs::read_to_string(md).unwrap();
    let (before, after) = md.split_once("Earlier turns are no longer seen by the model").expect("marked");
    assert!(before.contains("## 4.") && !before.contains("## 5.") && after.contains("## 5."), "{md}");
    let html = ziya_visual::export::render_html(&h.state().state.session);
    let at = html.find("hidden-turns\">").expect("marked in HTML");
    assert!(html[..at].matches("class=\"turn\"").count() == 4);

    let id = h.state().state.session_id.clone().expect("autosaved");
    let file = data.path().join("sessions").join(format!("{id}.json"));
    // Every turn is still in the transcript: nothing is deleted when turns leave the view.
    let saved = ziya_visual::session::Session::load(&file).unwrap();
    assert_eq!(saved.active_path().len(), 7);

    // `ask --session` on the app's file answers turn 8 from the window the app recorded.
    let turn = &story.turns[7];
    let j = Ask::new().turn(turn).arg("--session").arg(&file).json(&turn.query);
    assert_eq!(j["context_start"].as_u64().unwrap() as usize, turn.context_start);
    assert_eq!(j["prompt_tokens"].as_u64().unwrap() as usize, turn.prompt_tokens, "the window only");
    assert_eq!(ids(&j["token_ids"]), turn.token_ids);
}
