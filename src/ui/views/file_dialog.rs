//! The file dialog inside the window (used where the system has none; see ui/file_dialog.rs):
//! the reason, a path field with Tab completion, the folder's entries, and Open / Save / Choose.

use egui::{Color32, Key, RichText, ScrollArea};

use crate::ui::file_dialog::{InWindowDialog, Purpose};
use crate::ui::i18n::fill;
use crate::ui::state::{AppState, Intent};

pub const PATH_FIELD_ID: &str = "file-dialog-path";

pub(super) fn file_dialog(ctx: &egui::Context, state: &AppState, intents: &mut Vec<Intent>) {
    let Some(d) = &state.dialog else { return };
    let tr = state.tr();
    let title = match d.purpose {
        p if p.picks_folder() => tr.dialog_title_folder,
        p if p.saves() => tr.dialog_title_save,
        _ => tr.dialog_title_open,
    };
    let mut open = true;
    egui::Window::new(title)
        .id(egui::Id::unique("file-dialog"))
        .collapsible(false)
        .resizable(true)
        .default_size([560.0, 420.0])
        .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
        .open(&mut open)
        .show(ctx, |ui| body(ui, d, state, intents));
    if !open {
        intents.push(Intent::DialogCancel);
    }
}

fn body(ui: &mut egui::Ui, d: &InWindowDialog, state: &AppState, intents: &mut Vec<Intent>) {
    let tr = state.tr();
    ui.label(RichText::new(&d.why).small().color(Color32::from_rgb(230, 140, 20)));
    ui.horizontal(|ui| {
        let up = d.dir.parent().map(|p| p.to_path_buf());
        if ui.add_enabled(up.is_some(), egui::Button::new(format!("‹ {}", tr.dialog_up))).clicked() {
            if let Some(up) = up {
                intents.push(Intent::DialogNavigate(up));
            }
        }
        ui.label(RichText::new(d.dir.display().to_string()).monospace());
    });
    // Tab completes (taken before the text box would move the focus away).
    let field = egui::Id::unique(PATH_FIELD_ID);
    let tab = ui.memory(|m| m.has_focus(field)) && ui.input_mut(|i| i.consume_key(egui::Modifiers::NONE, Key::Tab));
    if tab {
        intents.push(Intent::DialogComplete);
    }
    let label = ui.label(tr.dialog_path);
    let mut input = d.input.clone();
    let r = ui.add(egui::TextEdit::singleline(&mut input).id(field).desired_width(f32::INFINITY)).labelled_by(label.id);
    if r.changed() {
        intents.push(Intent::DialogSetInput(input));
    }
    let enter = r.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter));
    ScrollArea::vertical().max_height(260.0).auto_shrink([false, true]).show(ui, |ui| {
        for e in &d.entries {
            let path = d.dir.join(&e.name);
            let chosen = d.chosen.contains(&path);
            let text = if e.is_dir { format!("{}/", e.name) } else { e.name.clone() };
            let r = ui.selectable_label(chosen || (!e.is_dir && d.input == e.name), text);
            if e.is_dir {
                if r.clicked() {
                    intents.push(Intent::DialogNavigate(path));
                }
            } else if r.double_clicked() {
                intents.push(Intent::DialogSetInput(e.name.clone()));
                intents.push(Intent::DialogConfirm);
            } else if r.clicked() {
                if d.purpose.multiple() {
                    intents.push(Intent::DialogToggle(path));
                } else {
                    intents.push(Intent::DialogSetInput(e.name.clone()));
                }
            }
        }
    });
    if let Some(err) = &d.error {
        ui.colored_label(Color32::from_rgb(230, 90, 60), err);
    }
    ui.horizontal(|ui| {
        let confirm = match d.purpose {
            p if p.picks_folder() => tr.dialog_choose_folder,
            p if p.saves() => tr.dialog_save,
            _ => tr.dialog_open,
        };
        if ui.button(RichText::new(confirm).strong()).clicked() || enter {
            intents.push(Intent::DialogConfirm);
        }
        if ui.button(tr.cancel).clicked() {
            intents.push(Intent::DialogCancel);
        }
        if d.purpose == Purpose::Images && !d.chosen.is_empty() {
            ui.label(fill(tr.dialog_chosen, &[&d.chosen.len()]));
        }
    });
}
