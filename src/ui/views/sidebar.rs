//! The saved conversations, newest first; only the rows in view are laid out.

use egui::{Key, RichText, ScrollArea, Ui, Vec2};

use crate::ui::i18n::fill;
use crate::ui::state::{AppState, Intent};

pub(super) fn sidebar(ui: &mut Ui, state: &AppState, intents: &mut Vec<Intent>) {
    let tr = state.tr();
    ui.heading(tr.conversations);
    ui.separator();
    if state.sessions.is_empty() {
        ui.label(RichText::new(tr.no_conversations).weak());
        return;
    }
    let mut filter = state.sidebar_filter.clone();
    if ui.add(egui::TextEdit::singleline(&mut filter).hint_text(tr.search).desired_width(f32::INFINITY)).changed() {
        intents.push(Intent::SetSidebarFilter(filter));
    }
    let needle = state.sidebar_filter.trim().to_lowercase();
    let shown: Vec<&(String, crate::store::SessionEntry)> =
        state.sessions.iter().filter(|(_, e)| needle.is_empty() || e.title.to_lowercase().contains(&needle)).collect();
    if shown.is_empty() {
        ui.label(RichText::new(tr.no_matches).weak());
        return;
    }
    let busy = state.is_busy();
    let row_height = 46.0;
    // Only the visible rows are laid out, so hundreds of conversations cost nothing per frame.
    ScrollArea::vertical().auto_shrink([false, false]).show_rows(ui, row_height, shown.len(), |ui, range| {
        for (id, entry) in shown[range].iter().copied() {
            let selected = state.session_id.as_deref() == Some(id.as_str());
            let title = if entry.problem.is_some() { format!("⚠ {}", entry.title) } else { entry.title.clone() };
            let count = if entry.image_count == 1 { tr.image_count_one } else { tr.images_count };
            let subtitle = format!("{} · {}", local_time(entry.updated_at), fill(count, &[&entry.image_count]));
            ui.allocate_ui(Vec2::new(ui.available_width(), row_height), |ui| {
                ui.vertical(|ui| {
                    if let Some((rid, text)) = state.renaming.as_ref().filter(|(rid, _)| rid == id) {
                        let mut edited = text.clone();
                        let r = ui.add(egui::TextEdit::singleline(&mut edited).desired_width(f32::INFINITY));
                        r.request_focus();
                        if r.changed() {
                            intents.push(Intent::SetRenameText(edited.clone()));
                        }
                        if ui.input(|i| i.key_pressed(Key::Enter)) {
                            intents.push(Intent::RenameSession(rid.clone(), edited));
                        } else if ui.input(|i| i.key_pressed(Key::Escape)) || r.lost_focus() {
                            intents.push(Intent::RenameSession(rid.clone(), String::new()));
                        }
                        ui.label(RichText::new(&subtitle).small().weak());
                        return;
                    }
                    let r = ui.add_enabled(
                        !busy && entry.problem.is_none(),
                        egui::Button::selectable(selected, RichText::new(title).strong()).truncate(),
                    );
                    let r = match &entry.problem {
                        Some(p) => r.on_disabled_hover_text(p),
                        None => r,
                    };
                    if r.double_clicked() {
                        intents.push(Intent::StartRename(id.clone()));
                    } else if r.clicked() {
                        intents.push(Intent::OpenSession(id.clone()));
                    }
                    r.context_menu(|ui| {
                        if ui.button(tr.rename).clicked() {
                            intents.push(Intent::StartRename(id.clone()));
                            ui.close();
                        }
                        if ui.button(tr.delete).clicked() {
                            intents.push(Intent::DeleteSession(id.clone()));
                            ui.close();
                        }
                    });
                    ui.label(RichText::new(subtitle).small().weak());
                });
            });
        }
    });
}

/// A unix time in the system's time zone, as the sidebar shows it.
fn local_time(unix: u64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_opt(unix as i64, 0) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => t.format("%Y-%m-%d %H:%M").to_string(),
        chrono::LocalResult::None => crate::export::format_date(unix),
    }
}
