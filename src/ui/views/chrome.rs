//! The window's frame: the top bar, the status bar, notices and the drop overlay.

use egui::{Align, Color32, Layout, RichText, Ui, Vec2};

use super::{human_bytes, is_demo_loaded, progress_text};
use crate::ui::i18n::fill;
use crate::ui::state::{AppState, Intent, NoticeKind};

pub(super) fn top_bar(ui: &mut Ui, state: &AppState, intents: &mut Vec<Intent>) {
    let tr = state.tr();
    ui.horizontal(|ui| {
        ui.heading("Ziya-Visual");
        ui.separator();
        let busy = state.is_busy();
        if ui.add_enabled(!busy, egui::Button::new(format!("＋ {}", tr.new_chat))).clicked() {
            intents.push(Intent::NewChat);
        }
        ui.menu_button("≡", |ui| {
            if ui.add_enabled(!busy, egui::Button::new(tr.open_session)).clicked() {
                intents.push(Intent::PickSessionFile);
            }
            let has_turns = !state.session.turns.is_empty();
            if ui.add_enabled(has_turns, egui::Button::new(tr.save_as)).clicked() {
                intents.push(Intent::SaveAs);
            }
            if ui.add_enabled(has_turns, egui::Button::new(tr.export_markdown)).clicked() {
                intents.push(Intent::ExportMarkdown);
            }
            if ui.add_enabled(has_turns, egui::Button::new(tr.export_html)).clicked() {
                intents.push(Intent::ExportHtml);
            }
        });
        ui.with_layout(Layout::right_to_left(Align::Center), |ui| {
            if ui.selectable_label(state.prefs.show_side_panel, tr.show_panel).clicked() {
                intents.push(Intent::ToggleSidePanel);
            }
            if is_demo_loaded(state) {
                ui.label(RichText::new(tr.demo_badge).color(Color32::from_rgb(230, 140, 20)).strong());
            }
        });
    });
}

pub(super) fn status_bar(ui: &mut Ui, state: &AppState) {
    let tr = state.tr();
    ui.horizontal(|ui| {
        if let Some((done, total)) = state.model.loading {
            ui.label(fill(tr.loading, &[&progress_text(done, total)]));
        } else if let Some(m) = &state.model.loaded {
            let name =
                m.choice.llm.main_path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            ui.label(format!("{name} · {} · {}", m.device, m.precision_label()));
            ui.label(format!("· {} {}", tr.memory, human_bytes(m.planned_bytes)));
            for note in &m.device_notes {
                let note = crate::ui::messages::device_note(note, tr);
                ui.label(RichText::new(format!("· {note}")).color(Color32::from_rgb(230, 140, 20)));
            }
        } else {
            ui.label(tr.no_model);
        }
        if let Some(speed) = state.last_speed {
            ui.separator();
            ui.label(format!("{speed:.1} tokens/s"));
        }
    });
}

/// Notices, in the lower right above the composer (not over the bar's buttons); they go by
/// themselves after a while (`Notice::lifetime`), Undo offers with them.
pub(super) fn notices(ctx: &egui::Context, state: &AppState, intents: &mut Vec<Intent>) {
    if state.notices.is_empty() {
        return;
    }
    let tr = state.tr();
    egui::Area::new(egui::Id::unique("notices"))
        .anchor(egui::Align2::RIGHT_BOTTOM, Vec2::new(-16.0, -150.0))
        .order(egui::Order::Foreground)
        .show(ctx, |ui| {
            for (i, n) in state.notices.iter().enumerate() {
                let (bg, fg) = match n.kind {
                    NoticeKind::Error => (Color32::from_rgb(90, 25, 25), Color32::from_rgb(255, 225, 225)),
                    NoticeKind::Info => (Color32::from_rgb(25, 60, 35), Color32::from_rgb(225, 255, 230)),
                };
                egui::Frame::new().fill(bg).corner_radius(6.0).inner_margin(8.0).show(ui, |ui| {
                    ui.set_max_width(440.0);
                    ui.horizontal_wrapped(|ui| {
                        ui.label(RichText::new(n.message.text(tr)).color(fg));
                        if let Some(key) = n.undo {
                            if ui.button(RichText::new(tr.undo).strong()).clicked() {
                                intents.push(Intent::Undo(key));
                            }
                        }
                        if let Some(r) = &n.replace {
                            if ui.button(RichText::new(tr.replace).strong()).clicked() {
                                intents.push(Intent::ReplaceExport(r.clone()));
                                intents.push(Intent::DismissNotice(i));
                            }
                        }
                        if ui.small_button("×").on_hover_text(tr.dismiss).clicked() {
                            intents.push(Intent::DismissNotice(i));
                        }
                    });
                });
                ui.add_space(4.0);
            }
        });
}

pub(super) fn drop_overlay(ctx: &egui::Context, state: &AppState) {
    let hovering = ctx.input(|i| !i.raw.hovered_files.is_empty());
    if !hovering {
        return;
    }
    let rect = ctx.content_rect();
    let painter = ctx.layer_painter(egui::LayerId::new(egui::Order::Foreground, egui::Id::unique("drop_overlay")));
    painter.rect_filled(rect, 0.0, Color32::from_black_alpha(170));
    painter.rect_stroke(rect.shrink(12.0), 12.0, egui::Stroke::new(3.0, Color32::LIGHT_BLUE), egui::StrokeKind::Inside);
    painter.text(
        rect.center(),
        egui::Align2::CENTER_CENTER,
        state.tr().drop_here.to_string(),
        egui::FontId::proportional(28.0),
        Color32::WHITE,
    );
}
