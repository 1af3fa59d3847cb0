//! Drawing: every function here takes the state (never the app), draws it and pushes intents.
//! Form fields edit a copy of their value and emit an intent when it changes; nothing here
//! changes the state or starts work.

mod chat;
mod chrome;
mod composer;
mod file_dialog;
mod model_panel;
mod settings;
mod sidebar;

use egui::{ScrollArea, Ui};

pub use chat::displayable;
pub use composer::COMPOSER_ID;
pub use file_dialog::PATH_FIELD_ID;

use crate::ui::app::Media;
use crate::ui::state::{AppState, Intent};

pub fn show(
    ui: &mut Ui,
    state: &AppState,
    media: &Media,
    markdown: &mut egui_commonmark::CommonMarkCache,
    intents: &mut Vec<Intent>,
) {
    egui::Panel::top("top_bar").show(ui, |ui| chrome::top_bar(ui, state, intents));
    egui::Panel::bottom("status_bar").show(ui, |ui| chrome::status_bar(ui, state));
    egui::Panel::bottom("composer").resizable(false).show(ui, |ui| composer::composer(ui, state, media, intents));
    egui::Panel::left("sessions").default_size(220.0).show(ui, |ui| sidebar::sidebar(ui, state, intents));
    if state.prefs.show_side_panel {
        egui::Panel::right("model_panel").default_size(330.0).show(ui, |ui| {
            ScrollArea::vertical().show(ui, |ui| {
                model_panel::model_panel(ui, state, intents);
                ui.separator();
                settings::settings_panel(ui, state, intents);
            });
        });
    }
    egui::CentralPanel::default().show(ui, |ui| chat::chat(ui, state, media, markdown, intents));
    chat::image_viewer(ui.ctx(), state, media, intents);
    file_dialog::file_dialog(ui.ctx(), state, intents);
    chrome::notices(ui.ctx(), state, intents);
    chrome::drop_overlay(ui.ctx(), state);
}

pub fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} kB", b / 1e3)
    }
}

fn progress_text(done: u64, total: u64) -> String {
    if total == 0 {
        String::new()
    } else {
        format!("{} / {}", human_bytes(done), human_bytes(total))
    }
}

/// Whether the loaded model is the built-in demo (random weights).
fn is_demo_loaded(state: &AppState) -> bool {
    state.model.loaded.as_ref().is_some_and(|m| crate::demo::is_demo(&m.choice.vision))
}
