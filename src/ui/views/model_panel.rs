//! The model panel: what is loaded, the two folders, device, precision and quantization with
//! the memory each choice needs, and Load.

use std::path::PathBuf;

use egui::{Color32, RichText, Ui};

use super::{human_bytes, progress_text};
use crate::device::{DeviceKind, Precision};
use crate::model::choice::LlmSource;
use crate::model::layers::Quant;
use crate::ui::i18n::fill;
use crate::ui::state::{AppState, Intent};

const WARN: Color32 = Color32::from_rgb(230, 140, 20);

/// A one-line path field: edits a copy and emits `make(path)` when it changes.
fn path_field(ui: &mut Ui, value: &std::path::Path, label: egui::Id, make: fn(PathBuf) -> Intent) -> Option<Intent> {
    let mut text = value.display().to_string();
    let r = ui.add(egui::TextEdit::singleline(&mut text).desired_width(f32::INFINITY)).labelled_by(label);
    r.changed().then(|| make(PathBuf::from(text)))
}

pub(super) fn model_panel(ui: &mut Ui, state: &AppState, intents: &mut Vec<Intent>) {
    let tr = state.tr();
    ui.heading(tr.model);
    let loading = state.is_loading();
    if let Some(m) = &state.model.loaded {
        egui::Frame::group(ui.style()).show(ui, |ui| {
            ui.label(RichText::new(format!("✓ {} · {}", m.device, m.precision_label())).strong());
            ui.label(RichText::new(m.choice.vision.display().to_string()).small());
            ui.label(RichText::new(m.choice.llm.describe()).small());
            ui.label(
                RichText::new(format!(
                    "{} {} · {:.1} s · ctx {}",
                    tr.memory,
                    human_bytes(m.planned_bytes),
                    m.load_s,
                    m.context_length
                ))
                .small(),
            );
            for note in &m.device_notes {
                ui.colored_label(WARN, crate::ui::messages::device_note(note, tr));
            }
            if crate::demo::is_demo(&m.choice.vision) {
                ui.colored_label(WARN, tr.demo_warning);
            }
            if ui.add_enabled(!state.is_busy() && !loading, egui::Button::new(tr.unload)).clicked() {
                intents.push(Intent::UnloadModel);
            }
        });
    }
    if let Some(msg) = &state.model.load_error {
        egui::Frame::group(ui.style()).fill(Color32::from_rgb(80, 20, 20)).show(ui, |ui| {
            ui.colored_label(Color32::from_rgb(255, 170, 170), RichText::new(tr.load_failed).strong());
            let text = crate::ui::messages::problem(msg, tr);
            ui.label(RichText::new(text).color(Color32::from_rgb(255, 220, 220)));
            // A model that does not fit: the choices that would, one click each.
            if let crate::error::Problem::DoesNotFit(n) = msg {
                ui.horizontal_wrapped(|ui| {
                    for o in n.fits.iter().take(3) {
                        if ui.button(crate::ui::messages::fit_option(o, tr)).clicked() {
                            intents.push(Intent::UseFit(*o));
                        }
                    }
                });
            }
        });
    }
    let choice = &state.prefs.model;
    let unconfigured = choice.vision.as_os_str().is_empty() && choice.llm.main_path().as_os_str().is_empty();
    if unconfigured && state.model.loaded.is_none() {
        ui.label(tr.where_models_come_from);
        ui.add_space(4.0);
        if ui.add_enabled(!loading, egui::Button::new(RichText::new(format!("▶ {}", tr.try_demo)).strong())).clicked()
        {
            intents.push(Intent::UseDemoModel);
        }
        ui.colored_label(WARN, tr.demo_warning);
        ui.separator();
    }
    ui.add_enabled_ui(!loading, |ui| {
        let label = ui.label(tr.vision_folder);
        ui.horizontal(|ui| {
            if ui.button(tr.browse).clicked() {
                intents.push(Intent::PickVisionDir);
            }
            intents.extend(path_field(ui, &choice.vision, label.id, Intent::SetVisionPath));
        });
        let delta = matches!(choice.llm, LlmSource::Delta { .. });
        let label = ui.label(if delta { tr.delta_folder } else { tr.llm_folder });
        ui.horizontal(|ui| {
            if ui.button(tr.browse).clicked() {
                intents.push(Intent::PickLlmDir);
            }
            if !delta && ui.button("GGUF…").on_hover_text(tr.gguf_hint).clicked() {
                intents.push(Intent::PickLlmGguf);
            }
            intents.extend(path_field(ui, choice.llm.main_path(), label.id, Intent::SetLlmPath));
        });
        let mut use_delta = delta;
        if ui.checkbox(&mut use_delta, tr.use_delta).changed() {
            intents.push(Intent::SetUseDelta(use_delta));
        }
        if let LlmSource::Delta { base, .. } = &choice.llm {
            let label = ui.label(tr.base_folder);
            ui.horizontal(|ui| {
                if ui.button(tr.browse).clicked() {
                    intents.push(Intent::PickLlmBaseDir);
                }
                intents.extend(path_field(ui, base, label.id, Intent::SetBasePath));
            });
        }
        ui.horizontal(|ui| {
            let label = ui.label(tr.device);
            // Only what this build can run on (a CPU-only build offers the CPU alone).
            let offered = crate::ui::messages::offered_devices();
            let mut device = choice.device;
            if offered.len() > 1 {
                egui::ComboBox::from_id_salt("device")
                    .selected_text(device.name())
                    .show_ui(ui, |ui| {
                        for d in offered {
                            ui.selectable_value(&mut device, d, d.name());
                        }
                    })
                    .response
                    .labelled_by(label.id);
            } else {
                ui.label(DeviceKind::Cpu.label()).on_hover_text(tr.cpu_only_build);
                device = DeviceKind::Cpu;
            }
            if device != choice.device {
                intents.push(Intent::SetDevice(device));
            }
            let label = ui.label(tr.precision);
            let mut precision = choice.precision;
            egui::ComboBox::from_id_salt("dtype")
                .selected_text(precision.name())
                .show_ui(ui, |ui| {
                    for p in Precision::ALL {
                        ui.selectable_value(&mut precision, p, p.name());
                    }
                })
                .response
                .labelled_by(label.id);
            if precision != choice.precision {
                intents.push(Intent::SetPrecision(precision));
            }
        });
        // The estimates shown are for the choice on screen only (a stale set is not shown).
        let plans = state.plans.as_ref().filter(|p| &p.choice == choice);
        let label_for = |q: Option<Quant>| {
            let name = q.map_or(tr.no_quantization, Quant::name);
            match plans.and_then(|p| p.total(q)) {
                Some(b) => format!("{name} (≈ {})", human_bytes(b)),
                None => name.to_string(),
            }
        };
        let mut quant = choice.quant;
        ui.horizontal(|ui| {
            let label = ui.label(tr.quantization);
            egui::ComboBox::from_id_salt("quant")
                .selected_text(label_for(quant))
                .show_ui(ui, |ui| {
                    for q in std::iter::once(None).chain(Quant::ALL.into_iter().map(Some)) {
                        ui.selectable_value(&mut quant, q, label_for(q));
                    }
                })
                .response
                .labelled_by(label.id);
        });
        if quant != choice.quant {
            intents.push(Intent::SetQuant(quant));
        }
        if choice.quant.is_some() && !matches!(choice.llm, LlmSource::Gguf(_)) {
            ui.label(RichText::new(tr.quantize_once_hint).small().color(ui.visuals().weak_text_color()));
        }
        if let Some(p) = plans {
            match &p.rows {
                Ok(rows) => {
                    if let Some((_, plan)) = rows.iter().find(|(q, _)| *q == choice.quant) {
                        let text = match p.free {
                            Some(f) => fill(tr.memory_estimate_free, &[&human_bytes(plan.total), &human_bytes(f)]),
                            None => fill(tr.memory_estimate, &[&human_bytes(plan.total)]),
                        };
                        let fits = p.free.is_none_or(|f| plan.total <= f);
                        let color = if fits { ui.visuals().weak_text_color() } else { Color32::from_rgb(230, 90, 60) };
                        ui.label(RichText::new(text).small().color(color)).on_hover_text(format!(
                            "weights {} + {}, KV cache {} ({} positions), activations {}, loading {}",
                            human_bytes(plan.vision_weights),
                            human_bytes(plan.llm_weights),
                            human_bytes(plan.kv_cache),
                            plan.context,
                            human_bytes(plan.activations),
                            human_bytes(plan.loading)
                        ));
                    }
                }
                Err(e) => {
                    ui.colored_label(WARN, RichText::new(e).small());
                }
            }
        }
    });
    let can_load = choice.is_complete() && !loading && !state.is_busy();
    ui.horizontal(|ui| {
        if ui.add_enabled(can_load, egui::Button::new(tr.load)).clicked() {
            intents.push(Intent::LoadModel);
        }
        // The demo stays one click away, whatever was tried before.
        if !unconfigured
            && ui
                .add_enabled(!loading && !state.is_busy(), egui::Button::new(tr.demo_model).small())
                .on_hover_text(tr.demo_warning)
                .clicked()
        {
            intents.push(Intent::UseDemoModel);
        }
        if loading && ui.button(tr.cancel).clicked() {
            intents.push(Intent::CancelLoad);
        }
    });
    if let Some((done, total)) = state.model.loading {
        let frac = if total > 0 { done as f32 / total as f32 } else { 0.0 };
        ui.add(egui::ProgressBar::new(frac).show_percentage().animate(true));
        ui.label(RichText::new(progress_text(done, total)).small());
    }
}
