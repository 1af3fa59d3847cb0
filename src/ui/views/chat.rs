//! The conversation: each turn's images, question and answer, the question being edited in
//! place, the answer being generated, and versions of a turn.

use std::collections::HashMap;

use egui::{Color32, RichText, ScrollArea, Ui, Vec2};

use crate::session::{Turn, TurnId, TurnStats};
use crate::ui::app::{Media, Thumb};
use crate::ui::i18n::fill;
use crate::ui::state::{AppState, Intent};

const THUMB_IN_CHAT: f32 = 120.0;
pub(super) const THUMB_IN_COMPOSER: f32 = 72.0;

/// Draws thumbnails already asked for (a spinner while one is still being decoded); a click on
/// one shows it large.
fn draw_thumbnails(
    ui: &mut Ui,
    state: &AppState,
    thumbs: &HashMap<String, Thumb>,
    hashes: &[String],
    size: f32,
    intents: &mut Vec<Intent>,
) {
    if hashes.is_empty() {
        return;
    }
    ui.horizontal_wrapped(|ui| {
        for hash in hashes {
            draw_thumbnail(ui, state, thumbs, hash, size, intents);
        }
    });
}

fn draw_thumbnail(
    ui: &mut Ui,
    state: &AppState,
    thumbs: &HashMap<String, Thumb>,
    hash: &str,
    size: f32,
    intents: &mut Vec<Intent>,
) {
    let tr = state.tr();
    let name = state.session.images.get(hash).map(|i| i.name.as_str()).unwrap_or_default();
    match thumbs.get(hash) {
        Some(Thumb::Ready(tex)) => {
            let [w, h] = tex.size();
            let scale = size / w.max(h) as f32;
            let image =
                egui::Image::new((tex.id(), Vec2::new(w as f32 * scale, h as f32 * scale))).sense(egui::Sense::click());
            if ui.add(image).on_hover_text(name).on_hover_cursor(egui::CursorIcon::ZoomIn).clicked() {
                intents.push(Intent::ViewImage(Some(hash.to_string())));
            }
        }
        Some(Thumb::Failed(why)) => {
            ui.label(
                RichText::new(format!("⚠ {}", fill(tr.image_missing, &[&name]))).color(Color32::from_rgb(230, 140, 20)),
            )
            .on_hover_text(why);
        }
        _ => {
            ui.add_sized([size, size * 0.75], egui::Spinner::new());
        }
    }
}

/// The image being looked at, large, in a window of its own.
pub(super) fn image_viewer(ctx: &egui::Context, state: &AppState, media: &Media, intents: &mut Vec<Intent>) {
    let Some(hash) = &state.viewing else { return };
    let name = state.session.images.get(hash).map(|i| i.name.clone()).unwrap_or_default();
    let mut open = true;
    egui::Window::new(name)
        .id(egui::Id::unique("image-viewer"))
        .collapsible(false)
        .open(&mut open)
        .default_size([820.0, 640.0])
        .show(ctx, |ui| match media.large.as_ref().filter(|(h, _)| h == hash).map(|(_, t)| t) {
            Some(Thumb::Ready(tex)) => {
                ui.add(egui::Image::new(tex).max_size(ui.available_size()).maintain_aspect_ratio(true));
            }
            Some(Thumb::Failed(why)) => {
                ui.label(why);
            }
            _ => {
                ui.spinner();
            }
        });
    if !open || ctx.input(|i| i.key_pressed(egui::Key::Escape)) {
        intents.push(Intent::ViewImage(None));
    }
}

fn bubble(ui: &mut Ui, user: bool, add: impl FnOnce(&mut Ui)) {
    let fill = if user { ui.visuals().faint_bg_color } else { ui.visuals().extreme_bg_color };
    egui::Frame::new().fill(fill).corner_radius(8.0).inner_margin(10.0).show(ui, |ui| {
        ui.set_width(ui.available_width());
        add(ui);
    });
}

fn version_switcher(ui: &mut Ui, state: &AppState, turn: &Turn, intents: &mut Vec<Intent>) {
    let (index, count) = state.session.version_of(turn.id);
    if count < 2 {
        return;
    }
    let siblings: Vec<TurnId> = state.session.children(turn.parent).iter().map(|t| t.id).collect();
    let busy = state.is_busy();
    if ui.add_enabled(!busy && index > 0, egui::Button::new("‹").small()).clicked() {
        intents.push(Intent::SwitchVersion(siblings[index - 1]));
    }
    ui.label(format!("{}/{}", index + 1, count));
    if ui.add_enabled(!busy && index + 1 < count, egui::Button::new("›").small()).clicked() {
        intents.push(Intent::SwitchVersion(siblings[index + 1]));
    }
}

pub(super) fn chat(
    ui: &mut Ui,
    state: &AppState,
    media: &Media,
    markdown: &mut egui_commonmark::CommonMarkCache,
    intents: &mut Vec<Intent>,
) {
    let tr = state.tr();
    let ready = state.is_ready();
    let busy = state.is_busy();
    let thumbs = &media.thumbs;
    let path = state.session.active_path();
    ScrollArea::vertical().auto_shrink([false, false]).stick_to_bottom(true).show(ui, |ui| {
        ui.set_width(ui.available_width());
        if path.is_empty() && state.pending.is_none() {
            ui.add_space(40.0);
            ui.vertical_centered(|ui| {
                ui.label(RichText::new(tr.composer_hint).weak());
            });
        }
        let view_start = state.session.view_start();
        // A new version of a turn (an edit or a regeneration) is drawn in place of the old one
        // from its first token: the turns after its parent on the old branch are hidden.
        let shown = match &state.pending {
            Some(p) => match p.parent {
                Some(parent) => path.iter().position(|t| t.id == parent).map_or(path.len(), |i| i + 1),
                None => 0,
            },
            None => path.len(),
        };
        for (i, turn) in path[..shown].iter().enumerate() {
            if i == view_start && i > 0 {
                hidden_turns_divider(ui, tr.earlier_turns_hidden);
            }
            // The question.
            if state.editing.as_ref().is_some_and(|e| e.turn == turn.id) {
                bubble(ui, true, |ui| edit_box(ui, state, thumbs, intents));
            } else {
                bubble(ui, true, |ui| {
                    draw_thumbnails(ui, state, thumbs, &turn.images, THUMB_IN_CHAT, intents);
                    ui.label(displayable(&turn.query));
                    ui.horizontal(|ui| {
                        if ui.add_enabled(!busy, egui::Button::new(tr.edit).small()).clicked() {
                            intents.push(Intent::StartEdit(turn.id));
                        }
                        if ui.add_enabled(!busy, egui::Button::new(tr.delete).small()).clicked() {
                            intents.push(Intent::DeleteTurn(turn.id));
                        }
                    });
                });
            }
            ui.add_space(4.0);
            // The answer.
            bubble(ui, false, |ui| {
                egui_commonmark::CommonMarkViewer::new().show(ui, markdown, &displayable(&turn.answer));
                if turn.stats.as_ref().is_some_and(TurnStats::was_stopped) {
                    ui.label(RichText::new(tr.stopped).weak().italics());
                }
                // Wrapping: at the narrowest window nothing is cut off.
                ui.horizontal_wrapped(|ui| {
                    if ui.button(tr.copy).clicked() {
                        intents.push(Intent::Copy(turn.answer.clone()));
                    }
                    let regenerate = ui.add_enabled(!busy && ready, egui::Button::new(tr.regenerate));
                    let same = state.prefs.sampling.is_deterministic();
                    if regenerate.on_hover_text(if same { tr.regenerate_same } else { "" }).clicked() {
                        intents.push(Intent::Regenerate(turn.id));
                    }
                    if same
                        && ui
                            .add_enabled(!busy && ready, egui::Button::new(tr.more_varied).small())
                            .on_hover_text(tr.more_varied_hint)
                            .clicked()
                    {
                        intents.push(Intent::RegenerateVaried(turn.id));
                    }
                    version_switcher(ui, state, turn, intents);
                    if let Some(stats) = &turn.stats {
                        let tps = stats.tokens_per_second().map(|t| format!(" · {t:.1} tok/s")).unwrap_or_default();
                        ui.label(RichText::new(format!("{} tokens{tps}", stats.generated_tokens)).small().weak());
                    }
                });
            });
            ui.add_space(10.0);
        }
        // The answer being generated.
        if let Some(p) = &state.pending {
            let hashes: Vec<String> = p.images.iter().map(|i| i.hash.clone()).collect();
            let versions = state.session.children(p.parent).len();
            bubble(ui, true, |ui| {
                draw_thumbnails(ui, state, thumbs, &hashes, THUMB_IN_CHAT, intents);
                ui.label(displayable(&p.query));
                if versions > 0 {
                    // The new version, as the switcher will show it once it is done.
                    ui.label(RichText::new(format!("‹ {0}/{0} ›", versions + 1)).small().weak());
                }
            });
            ui.add_space(4.0);
            bubble(ui, false, |ui| {
                if p.answer.is_empty() {
                    ui.horizontal(|ui| {
                        ui.spinner();
                        ui.label(RichText::new(tr.thinking).weak());
                    });
                } else {
                    egui_commonmark::CommonMarkViewer::new().show(ui, markdown, &displayable(&p.answer));
                }
            });
        }
    });
}

/// A thin line with a label above the first turn the model still sees.
fn hidden_turns_divider(ui: &mut Ui, text: &str) {
    ui.add_space(4.0);
    ui.horizontal(|ui| {
        let w = (ui.available_width() - 320.0).max(20.0) / 2.0;
        ui.add_sized([w, 8.0], egui::Separator::default().horizontal());
        ui.label(RichText::new(text).small().weak());
        ui.add_sized([w, 8.0], egui::Separator::default().horizontal());
    });
    ui.add_space(4.0);
}

/// The question being edited, in place of its bubble (its images were asked for with the turn's).
fn edit_box(ui: &mut Ui, state: &AppState, thumbs: &HashMap<String, Thumb>, intents: &mut Vec<Intent>) {
    let tr = state.tr();
    let Some(edit) = &state.editing else { return };
    // One wrapping row (however many images, none spills under the side panel).
    ui.horizontal_wrapped(|ui| {
        for (i, hash) in edit.images.iter().enumerate() {
            ui.vertical(|ui| {
                draw_thumbnail(ui, state, thumbs, hash, THUMB_IN_COMPOSER, intents);
                if ui.small_button("×").clicked() {
                    intents.push(Intent::RemoveEditImage(i));
                }
            });
        }
    });
    let mut text = edit.text.clone();
    if ui.add(egui::TextEdit::multiline(&mut text).desired_rows(2).desired_width(f32::INFINITY)).changed() {
        intents.push(Intent::SetEditText(text));
    }
    ui.horizontal(|ui| {
        let ok = !state.is_busy() && state.is_ready() && !edit.text.trim().is_empty();
        if ui.add_enabled(ok, egui::Button::new(tr.save_edit)).clicked() {
            intents.push(Intent::SubmitEdit);
        }
        if ui.button(tr.cancel).clicked() {
            intents.push(Intent::CancelEdit);
        }
    });
}

/// Text as it is drawn: control characters (which a model can emit through byte-fallback tokens)
/// are dropped and U+FFFD, which no bundled font has, is drawn as □. The stored answer, what is
/// copied and what is exported stay exactly as generated.
pub fn displayable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c == '\u{FFFD}' || (c.is_control() && c != '\n' && c != '\t')) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .filter_map(|c| match c {
            '\u{FFFD}' => Some('□'),
            '\n' | '\t' => Some(c),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}
