//! Generation settings and the language.

use egui::Ui;

use crate::sampling::SamplingParams;
use crate::ui::i18n::Lang;
use crate::ui::state::{AppState, Intent};

pub(super) fn settings_panel(ui: &mut Ui, state: &AppState, intents: &mut Vec<Intent>) {
    let tr = state.tr();
    egui::CollapsingHeader::new(tr.settings).default_open(true).show(ui, |ui| {
        // The sliders edit a copy; a change becomes one intent.
        let mut s = state.prefs.sampling.clone();
        ui.add(egui::Slider::new(&mut s.temperature, 0.0..=2.0).text(tr.temperature));
        ui.add(egui::Slider::new(&mut s.top_p, 0.01..=1.0).text(tr.top_p));
        ui.add(egui::Slider::new(&mut s.top_k, 0..=200).text(tr.top_k));
        // No more new tokens than the loaded model's context holds.
        let most = state.model.loaded.as_ref().map_or(2048, |m| m.context_length).max(1);
        s.max_new_tokens = s.max_new_tokens.min(most);
        ui.add(egui::Slider::new(&mut s.max_new_tokens, 1..=most).logarithmic(true).text(tr.max_new_tokens));
        ui.add(egui::Slider::new(&mut s.repeat_penalty, 1.0..=2.0).text(tr.repeat_penalty));
        ui.horizontal(|ui| {
            let mut fixed = s.seed.is_some();
            let checkbox = ui.checkbox(&mut fixed, tr.fixed_seed);
            if checkbox.changed() {
                s.seed = fixed.then_some(42);
            }
            if let Some(seed) = s.seed.as_mut() {
                // Named by the checkbox, so screen readers announce what the number is.
                ui.add(egui::DragValue::new(seed)).labelled_by(checkbox.id);
            }
        });
        if ui.button(tr.reset_defaults).clicked() {
            s = SamplingParams::default();
        }
        if s != state.prefs.sampling {
            intents.push(Intent::SetSampling(s));
        }
        let mut reload = state.prefs.reload_last_model;
        if ui.checkbox(&mut reload, tr.reload_last_model).changed() {
            intents.push(Intent::SetReloadLastModel(reload));
        }
        ui.horizontal(|ui| {
            ui.label(tr.language);
            for (lang, label) in [(Lang::Zh, "中文"), (Lang::En, "English")] {
                if ui.selectable_label(state.lang == lang, label).clicked() {
                    intents.push(Intent::SetLang(lang));
                }
            }
        });
    });
}
