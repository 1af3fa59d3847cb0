//! The desktop app: an egui window with drag-and-drop images and a streaming chat, talking to the
//! engine thread over channels. `state.rs` holds what is shown and the intents; `views/` draws
//! it; `app/` acts on intents and on what the engine and workers send.

pub mod app;
pub mod file_dialog;
pub mod fonts;
pub mod i18n;
pub mod images;
pub mod messages;
pub mod state;
mod views;

pub use app::{AppOptions, ZiyaApp};
pub use views::{displayable, COMPOSER_ID, PATH_FIELD_ID};

/// Opens the window (blocking until it is closed).
pub fn run(options: AppOptions) -> anyhow::Result<()> {
    // Preferences live with the conversations (ZIYA_VISUAL_DATA_DIR moves both).
    let data_dir = options.data_dir.clone().unwrap_or_else(app::default_data_dir);
    let native = eframe::NativeOptions {
        persistence_path: Some(data_dir.join("app.ron")),
        viewport: egui::ViewportBuilder::default()
            .with_title("Ziya-Visual")
            .with_inner_size([1180.0, 780.0])
            .with_min_inner_size([720.0, 480.0])
            .with_drag_and_drop(true),
        persist_window: true,
        ..Default::default()
    };
    eframe::run_native("ziya-visual", native, Box::new(move |cc| Ok(Box::new(ZiyaApp::new(cc, options)))))
        .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}
