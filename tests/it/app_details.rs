//! The smaller things people notice in the window (issue 12, item 10), each checked through
//! egui_kittest with the real engine.

use egui::{Key, Modifiers};
use egui_kittest::kittest::{NodeT, Queryable};
use ziya_visual::session::{ImageStorage, NewTurn, Session};
use ziya_visual::ui::state::Intent;

use crate::common::app::*;
use crate::common::*;

#[test]
fn an_image_alone_is_asked_about_with_a_default_question() {
    let data = tempfile::tempdir().unwrap();
    let mut h = harness(options(data.path(), greedy(4), true));
    wait_ready(&mut h);
    drop_files(&mut h, &[image_path("rgba.png")]);
    step_until(&mut h, "the attachment", |a| a.state.composer.attachments.iter().all(|x| x.image.is_some()));
    assert!(h.state().state.send_blocker().is_none(), "an image without text can be sent");
    assert!(!h.get_by_label("▶ Send").accesskit_node().is_disabled());
    type_and_enter(&mut h, "");
    step_until(&mut h, "the answer", |a| a.state.pending.is_none() && !a.state.session.turns.is_empty());
    let turn = h.state().state.session.active_path()[0].clone();
    assert_eq!(turn.query, "Describe this picture.");
    assert_eq!(turn.images.len(), 1);
    h.step();
    h.get_by_label_contains("· 1 image"); // the sidebar's count, singular
}

#[test]
fn the_same_session_file_opened_twice_is_one_conversation() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("story.json");
    let mut s = Session::new();
    s.push_turn(NewTurn { query: "shared question".into(), answer: "an answer".into(), ..Default::default() });
    s.save(&file, ImageStorage::Beside).unwrap();
    let mut h = harness(options(data.path(), greedy(4), false));
    h.state_mut().apply(Intent::OpenSessionFile(file.clone()));
    h.state_mut().apply(Intent::NewChat);
    h.state_mut().apply(Intent::OpenSessionFile(file));
    h.step();
    assert_eq!(h.state().state.sessions.len(), 1, "recognised, not copied again");
    assert_eq!(h.state().state.session.active_path()[0].query, "shared question");
}

#[test]
fn an_answer_with_a_code_block_draws_its_copy_button() {
    // A missing glyph fails kittest: egui_commonmark's copy icon (🗐) must be covered.
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("code.json");
    let mut s = Session::new();
    s.push_turn(NewTurn {
        query: "code please".into(),
        answer: "Here:\n\n```rust\nfn main() {}\n```\n".into(),
        ..Default::default()
    });
    s.save(&file, ImageStorage::Beside).unwrap();
    let mut h = harness(options(data.path(), greedy(4), false));
    h.state_mut().apply(Intent::OpenSessionFile(file));
    for _ in 0..3 {
        h.step();
    }
    h.get_by_label_contains("Here");
    h.get_by_label("🗐"); // the code block's copy button, drawn with the bundled symbol font
}

#[test]
fn keys_new_chat_and_leave_an_edit_and_copy_says_so() {
    let data = tempfile::tempdir().unwrap();
    let mut h = harness(options(data.path(), greedy(4), true));
    wait_ready(&mut h);
    type_and_enter(&mut h, "first");
    step_until(&mut h, "the answer", |a| a.state.pending.is_none() && !a.state.session.turns.is_empty());
    h.get_by_label("Copy").click();
    h.step();
    h.step();
    h.step();
    h.get_by_label("Copied");
    h.get_by_label("Edit").click();
    h.step();
    assert!(h.state().state.editing.is_some());
    h.key_press(Key::Escape);
    h.step();
    assert!(h.state().state.editing.is_none(), "Esc leaves the edit");
    h.key_press_modifiers(Modifiers::COMMAND, Key::N);
    h.step();
    assert!(h.state().state.session.turns.is_empty(), "Ctrl+N starts a new conversation");
}

#[test]
fn the_sidebar_searches_titles_and_a_picture_opens_large() {
    let data = tempfile::tempdir().unwrap();
    let mut h = harness(options(data.path(), greedy(4), true));
    wait_ready(&mut h);
    for q in ["about the cat", "about the sea"] {
        h.state_mut().apply(Intent::NewChat);
        drop_files(&mut h, &[image_path("photo_odd.png")]);
        step_until(&mut h, "the attachment", |a| a.state.composer.attachments.iter().all(|x| x.image.is_some()));
        type_and_enter(&mut h, q);
        step_until(&mut h, "the answer", |a| a.state.pending.is_none() && !a.state.session.turns.is_empty());
    }
    h.state_mut().apply(Intent::SetSidebarFilter("SEA".into()));
    h.step();
    assert_eq!(h.query_all_by_label("about the cat").count(), 0, "filtered out of the sidebar");
    assert!(h.query_all_by_label("about the sea").count() >= 1);
    // The chat's thumbnail opens the picture large.
    let hash = h.state().state.session.active_path()[0].images[0].clone();
    step_until(&mut h, "the thumbnail", |a| {
        matches!(a.media.thumbs.get(&hash), Some(ziya_visual::ui::app::Thumb::Ready(_)))
    });
    let before = h.query_all_by_label("photo_odd.png").count();
    h.state_mut().apply(Intent::ViewImage(Some(hash.clone())));
    step_until(
        &mut h,
        "the large image",
        |a| matches!(&a.media.large, Some((h2, ziya_visual::ui::app::Thumb::Ready(tex))) if *h2 == hash && tex.size()[0] > 256),
    );
    h.step();
    assert!(h.query_all_by_label("photo_odd.png").count() > before, "the viewer window, titled with the name");
    h.key_press(Key::Escape);
    h.step();
    assert!(h.state().state.viewing.is_none(), "Esc closes it");
}
