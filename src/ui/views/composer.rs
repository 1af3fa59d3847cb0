//! The question being written: its attachments, the text box (Enter sends, Shift+Enter is a new
//! line) and Send / Stop, with why Send is unavailable when it is.

use egui::{Color32, Key, RichText, Ui, Vec2};

use super::chat::THUMB_IN_COMPOSER;
use crate::ui::app::{Media, Thumb};
use crate::ui::state::{AppState, Intent, SendBlocker};

pub const COMPOSER_ID: &str = "composer";

pub(super) fn composer(ui: &mut Ui, state: &AppState, media: &Media, intents: &mut Vec<Intent>) {
    let tr = state.tr();
    ui.add_space(6.0);
    // Attachments, removable until sent.
    if !state.composer.attachments.is_empty() {
        ui.horizontal_wrapped(|ui| {
            for a in &state.composer.attachments {
                ui.vertical(|ui| {
                    // An image given back after a failed answer has its thumbnail in the chat's.
                    let chat_thumb = a.image.as_ref().and_then(|i| match media.thumbs.get(&i.hash) {
                        Some(Thumb::Ready(tex)) => Some(tex),
                        _ => None,
                    });
                    match media.attachment_thumbs.get(&a.key).or(chat_thumb) {
                        Some(tex) => {
                            let [w, h] = tex.size();
                            let scale = THUMB_IN_COMPOSER / w.max(h) as f32;
                            ui.add(egui::Image::new((tex.id(), Vec2::new(w as f32 * scale, h as f32 * scale))))
                                .on_hover_text(&a.name);
                        }
                        None => {
                            ui.add_sized([THUMB_IN_COMPOSER, THUMB_IN_COMPOSER * 0.75], egui::Spinner::new());
                        }
                    }
                    ui.horizontal(|ui| {
                        ui.label(RichText::new(short_name(&a.name)).small());
                        if ui.small_button("×").on_hover_text(tr.delete).clicked() {
                            intents.push(Intent::RemoveAttachment(a.key));
                        }
                    });
                });
            }
        });
    }
    let id = egui::Id::unique(COMPOSER_ID);
    // Enter sends, Shift+Enter is a new line: take Enter before the text box sees it.
    // (`consume_key` matches modifiers loosely and would take Shift+Enter too.)
    let focused = ui.memory(|m| m.has_focus(id));
    let plain_enter = |e: &egui::Event| matches!(e, egui::Event::Key { key: Key::Enter, pressed: true, modifiers, .. } if modifiers.is_none());
    let mut send = focused
        && ui.input_mut(|i| match i.events.iter().position(plain_enter) {
            Some(at) => {
                i.events.remove(at);
                true
            }
            None => false,
        });
    let blocker = state.send_blocker();
    ui.horizontal(|ui| {
        if ui.button(format!("＋ {}", tr.attach)).clicked() {
            intents.push(Intent::PickImages);
        }
        let width = ui.available_width() - 100.0;
        let mut text = state.composer.text.clone();
        let r = ui.add(
            egui::TextEdit::multiline(&mut text)
                .id(id)
                .hint_text(tr.composer_hint)
                .desired_rows(2)
                .desired_width(width.max(100.0)),
        );
        if r.changed() {
            intents.push(Intent::SetComposerText(text));
        }
        ui.vertical(|ui| {
            if state.is_busy() {
                if ui.button(format!("■ {}", tr.stop)).clicked() {
                    intents.push(Intent::Stop);
                }
            } else {
                let r = ui.add_enabled(blocker.is_none(), egui::Button::new(format!("▶ {}", tr.send)));
                send |= r.clicked();
            }
        });
    });
    // After the text's own intent, so what was typed this frame is sent too.
    if send {
        intents.push(Intent::Send);
    }
    // Say why Send is unavailable (only when there is something to say about a model or images);
    // the line is always there, so the composer does not jump when it appears.
    let why = blocker.filter(|b| *b != SendBlocker::Empty).map_or("", |b| b.text(tr));
    ui.label(RichText::new(why).small().color(Color32::from_rgb(230, 140, 20)));
    context_meter(ui, state);
    ui.add_space(4.0);
}

/// Positions the conversation the model sees plus the question being written take, with the
/// new tokens reserved, out of the model's context; and a warning when sending would move more
/// turns out of view, or cannot fit at all.
fn context_meter(ui: &mut Ui, state: &AppState) {
    let tr = state.tr();
    let Some(m) = state.measure.filter(|m| m.key == state.measure_key && state.model.loaded.is_some()) else {
        return;
    };
    let used = m.prompt.saturating_add(m.max_new);
    let frac = used as f32 / m.context.max(1) as f32;
    let warn = Color32::from_rgb(230, 140, 20);
    ui.horizontal(|ui| {
        let text = crate::ui::i18n::fill(tr.context_meter, &[&used, &m.context]);
        let color =
            if m.too_long || frac > 1.0 { Color32::from_rgb(230, 90, 60) } else { ui.visuals().weak_text_color() };
        ui.add(egui::ProgressBar::new(frac.min(1.0)).desired_width(120.0).desired_height(6.0));
        ui.label(RichText::new(text).small().color(color));
        let dropped = m.window_start.saturating_sub(state.session.view_start());
        if m.too_long {
            ui.label(RichText::new(tr.question_too_long).small().color(Color32::from_rgb(230, 90, 60)));
        } else if dropped > 0 {
            ui.label(RichText::new(crate::ui::i18n::fill(tr.will_drop_turns, &[&dropped])).small().color(warn));
        }
    });
}

fn short_name(name: &str) -> String {
    if name.chars().count() > 14 {
        format!("{}…", name.chars().take(13).collect::<String>())
    } else {
        name.to_string()
    }
}
