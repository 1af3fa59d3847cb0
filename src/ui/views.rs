//! Rendering: every function here draws state and pushes intents; none changes what is shown
//! except through form fields bound to the state (text being typed, settings).

use std::collections::HashMap;

use egui::{Align, Color32, Key, Layout, RichText, ScrollArea, Ui, Vec2};

use crate::session::{Turn, TurnId, TurnStats};
use crate::ui::app::{Thumb, ZiyaApp};
use crate::ui::i18n::{fill, Lang};
use crate::ui::state::{AppState, Intent, ModelStatus, NoticeKind};

const THUMB_IN_CHAT: f32 = 120.0;
const THUMB_IN_COMPOSER: f32 = 72.0;
pub const COMPOSER_ID: &str = "composer";

pub fn show(ui: &mut Ui, app: &mut ZiyaApp, intents: &mut Vec<Intent>) {
    egui::Panel::top("top_bar").show(ui, |ui| top_bar(ui, app, intents));
    egui::Panel::bottom("status_bar").show(ui, |ui| status_bar(ui, app));
    egui::Panel::bottom("composer").resizable(false).show(ui, |ui| composer(ui, app, intents));
    egui::Panel::left("sessions").default_size(220.0).show(ui, |ui| sidebar(ui, app, intents));
    if app.state.prefs.show_side_panel {
        egui::Panel::right("model_panel").default_size(330.0).show(ui, |ui| {
            ScrollArea::vertical().show(ui, |ui| {
                model_panel(ui, app, intents);
                ui.separator();
                settings_panel(ui, app, intents);
            });
        });
    }
    egui::CentralPanel::default().show(ui, |ui| chat(ui, app, intents));
    notices(ui.ctx(), app, intents);
    drop_overlay(ui.ctx(), app);
}

fn top_bar(ui: &mut Ui, app: &ZiyaApp, intents: &mut Vec<Intent>) {
    let tr = app.state.tr();
    ui.horizontal(|ui| {
        ui.heading("Ziya-Visual");
        ui.separator();
        let busy = app.state.is_busy();
        if ui.add_enabled(!busy, egui::Button::new(format!("＋ {}", tr.new_chat))).clicked() {
            intents.push(Intent::NewChat);
        }
        ui.menu_button("≡", |ui| {
            if ui.add_enabled(!busy, egui::Button::new(tr.open_session)).clicked() {
                intents.push(Intent::PickSessionFile);
            }
            let has_turns = !app.state.session.turns.is_empty();
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
            if ui.selectable_label(app.state.prefs.show_side_panel, tr.show_panel).clicked() {
                intents.push(Intent::ToggleSidePanel);
            }
            if is_demo_loaded(app) {
                ui.label(RichText::new(tr.demo_badge).color(Color32::from_rgb(230, 140, 20)).strong());
            }
        });
    });
}

fn is_demo_loaded(app: &ZiyaApp) -> bool {
    matches!(&app.state.model, ModelStatus::Ready(m) if crate::demo::is_demo(&m.request.vision_dir))
}

fn status_bar(ui: &mut Ui, app: &ZiyaApp) {
    let tr = app.state.tr();
    ui.horizontal(|ui| {
        match &app.state.model {
            ModelStatus::Ready(m) => {
                let name = m.request.llm_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                ui.label(format!("{name} · {} · {}", m.device, m.dtype));
                if let Some(bytes) = m.memory_bytes {
                    ui.label(format!("· {} {}", tr.memory, human_bytes(bytes)));
                }
                if let Some(note) = &m.device_note {
                    ui.label(RichText::new(format!("· {note}")).color(Color32::from_rgb(230, 140, 20)));
                }
            }
            ModelStatus::Loading { done, total } => {
                ui.label(fill(tr.loading, &[&progress_text(*done, *total)]));
            }
            _ => {
                ui.label(tr.no_model);
            }
        }
        if let Some(speed) = app.state.last_speed {
            ui.separator();
            ui.label(format!("{speed:.1} tokens/s"));
        }
    });
}

fn progress_text(done: u64, total: u64) -> String {
    if total == 0 {
        String::new()
    } else {
        format!("{} / {}", human_bytes(done), human_bytes(total))
    }
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

fn sidebar(ui: &mut Ui, app: &mut ZiyaApp, intents: &mut Vec<Intent>) {
    let tr = app.state.tr();
    ui.heading(tr.conversations);
    ui.separator();
    if app.sessions.is_empty() {
        ui.label(RichText::new(tr.no_conversations).weak());
        return;
    }
    let busy = app.state.is_busy();
    let row_height = 46.0;
    // Only the visible rows are laid out, so hundreds of conversations cost nothing per frame.
    let count = app.sessions.len();
    ScrollArea::vertical().auto_shrink([false, false]).show_rows(ui, row_height, count, |ui, range| {
        let rows: Vec<_> = app.sessions[range].to_vec();
        for (id, entry) in &rows {
            let selected = app.state.session_id.as_deref() == Some(id.as_str());
            let title = if entry.problem.is_some() { format!("⚠ {}", entry.title) } else { entry.title.clone() };
            let subtitle = format!(
                "{} · {}",
                crate::export::format_date(entry.updated_at),
                fill(tr.images_count, &[&entry.image_count])
            );
            ui.allocate_ui(Vec2::new(ui.available_width(), row_height), |ui| {
                ui.vertical(|ui| {
                    if let Some((rid, text)) = app.state.renaming.as_mut().filter(|(rid, _)| rid == id) {
                        let r = ui.add(egui::TextEdit::singleline(text).desired_width(f32::INFINITY));
                        r.request_focus();
                        if ui.input(|i| i.key_pressed(Key::Enter)) {
                            intents.push(Intent::RenameSession(rid.clone(), text.clone()));
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

fn model_panel(ui: &mut Ui, app: &mut ZiyaApp, intents: &mut Vec<Intent>) {
    let tr = app.state.tr();
    ui.heading(tr.model);
    let loading = app.state.is_loading();
    let status = app.state.model.clone();
    match &status {
        ModelStatus::Ready(m) => {
            egui::Frame::group(ui.style()).show(ui, |ui| {
                ui.label(RichText::new(format!("✓ {} · {}", m.device, m.dtype)).strong());
                ui.label(RichText::new(m.request.vision_dir.display().to_string()).small());
                ui.label(RichText::new(m.request.llm_dir.display().to_string()).small());
                let mem = m.memory_bytes.map(human_bytes).unwrap_or_else(|| "?".into());
                ui.label(
                    RichText::new(format!("{} {mem} · {:.1} s · ctx {}", tr.memory, m.load_s, m.context_length))
                        .small(),
                );
                if let Some(note) = &m.device_note {
                    ui.colored_label(Color32::from_rgb(230, 140, 20), note);
                }
                if crate::demo::is_demo(&m.request.vision_dir) {
                    ui.colored_label(Color32::from_rgb(230, 140, 20), tr.demo_warning);
                }
                if ui.add_enabled(!app.state.is_busy(), egui::Button::new(tr.unload)).clicked() {
                    intents.push(Intent::UnloadModel);
                }
            });
        }
        ModelStatus::Failed(msg) => {
            egui::Frame::group(ui.style()).fill(Color32::from_rgb(80, 20, 20)).show(ui, |ui| {
                ui.colored_label(Color32::from_rgb(255, 170, 170), RichText::new(tr.load_failed).strong());
                ui.label(RichText::new(msg).color(Color32::from_rgb(255, 220, 220)));
            });
        }
        _ => {}
    }
    let unconfigured = app.state.prefs.vision_dir.is_empty() && app.state.prefs.llm_dir.is_empty();
    if unconfigured && !matches!(status, ModelStatus::Ready(_)) {
        ui.label(tr.where_models_come_from);
        ui.add_space(4.0);
        if ui.add_enabled(!loading, egui::Button::new(RichText::new(format!("▶ {}", tr.try_demo)).strong())).clicked()
        {
            intents.push(Intent::UseDemoModel);
        }
        ui.colored_label(Color32::from_rgb(230, 140, 20), tr.demo_warning);
        ui.separator();
    }
    ui.add_enabled_ui(!loading, |ui| {
        let label = ui.label(tr.vision_folder);
        ui.horizontal(|ui| {
            if ui.button(tr.browse).clicked() {
                intents.push(Intent::PickVisionDir);
            }
            ui.add(egui::TextEdit::singleline(&mut app.state.prefs.vision_dir).desired_width(f32::INFINITY))
                .labelled_by(label.id);
        });
        let label = ui.label(if app.state.prefs.use_delta { tr.delta_folder } else { tr.llm_folder });
        ui.horizontal(|ui| {
            if ui.button(tr.browse).clicked() {
                intents.push(Intent::PickLlmDir);
            }
            if !app.state.prefs.use_delta && ui.button("GGUF…").on_hover_text(tr.gguf_hint).clicked() {
                intents.push(Intent::PickLlmGguf);
            }
            ui.add(egui::TextEdit::singleline(&mut app.state.prefs.llm_dir).desired_width(f32::INFINITY))
                .labelled_by(label.id);
        });
        ui.checkbox(&mut app.state.prefs.use_delta, tr.use_delta);
        if app.state.prefs.use_delta {
            let label = ui.label(tr.base_folder);
            ui.horizontal(|ui| {
                if ui.button(tr.browse).clicked() {
                    intents.push(Intent::PickLlmBaseDir);
                }
                ui.add(egui::TextEdit::singleline(&mut app.state.prefs.llm_base_dir).desired_width(f32::INFINITY))
                    .labelled_by(label.id);
            });
        }
        ui.horizontal(|ui| {
            let label = ui.label(tr.device);
            egui::ComboBox::from_id_salt("device")
                .selected_text(app.state.prefs.device.clone())
                .show_ui(ui, |ui| {
                    for d in ["cpu", "cuda", "metal"] {
                        ui.selectable_value(&mut app.state.prefs.device, d.to_string(), d);
                    }
                })
                .response
                .labelled_by(label.id);
            let label = ui.label(tr.precision);
            egui::ComboBox::from_id_salt("dtype")
                .selected_text(app.state.prefs.dtype.clone())
                .show_ui(ui, |ui| {
                    for d in ["f32", "f16", "bf16"] {
                        ui.selectable_value(&mut app.state.prefs.dtype, d.to_string(), d);
                    }
                })
                .response
                .labelled_by(label.id);
        });
        app.refresh_plans();
        let estimate = |q: &str| -> Option<u64> {
            let (_, rows, _) = app.plans.as_ref()?;
            rows.iter().find(|(name, _)| name == q).and_then(|(_, p)| p.as_ref().ok()).map(|p| p.total)
        };
        let label_for = |q: &str, name: &str| match estimate(q) {
            Some(b) => format!("{name} (≈ {})", human_bytes(b)),
            None => name.to_string(),
        };
        let mut choice = app.state.prefs.quant.clone();
        ui.horizontal(|ui| {
            let label = ui.label(tr.quantization);
            let shown = label_for(&choice, if choice.is_empty() { tr.no_quantization } else { &choice });
            egui::ComboBox::from_id_salt("quant")
                .selected_text(shown)
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut choice, String::new(), label_for("", tr.no_quantization));
                    for q in ["q8_0", "q6k", "q4k"] {
                        ui.selectable_value(&mut choice, q.to_string(), label_for(q, q));
                    }
                })
                .response
                .labelled_by(label.id);
        });
        app.state.prefs.quant = choice;
        if let Some((_, rows, free)) = &app.plans {
            let current = &app.state.prefs.quant;
            match rows.iter().find(|(name, _)| name == current).map(|(_, p)| p) {
                Some(Ok(p)) => {
                    let text = match free {
                        Some(f) => fill(tr.memory_estimate_free, &[&human_bytes(p.total), &human_bytes(*f)]),
                        None => fill(tr.memory_estimate, &[&human_bytes(p.total)]),
                    };
                    let fits = free.is_none_or(|f| p.total <= f);
                    let color = if fits { ui.visuals().weak_text_color() } else { Color32::from_rgb(230, 90, 60) };
                    ui.label(RichText::new(text).small().color(color)).on_hover_text(format!(
                        "weights {} + {}, KV cache {} ({} positions), activations {}, repacked {}, loading {}",
                        human_bytes(p.vision_weights),
                        human_bytes(p.llm_weights),
                        human_bytes(p.kv_cache),
                        p.context,
                        human_bytes(p.activations),
                        human_bytes(p.repacked),
                        human_bytes(p.loading)
                    ));
                }
                Some(Err(e)) => {
                    ui.colored_label(Color32::from_rgb(230, 140, 20), RichText::new(e).small());
                }
                None => {}
            }
        }
    });
    let delta_ready = !app.state.prefs.use_delta || !app.state.prefs.llm_base_dir.trim().is_empty();
    let can_load = delta_ready
        && !loading
        && !app.state.is_busy()
        && !app.state.prefs.vision_dir.trim().is_empty()
        && !app.state.prefs.llm_dir.trim().is_empty();
    ui.horizontal(|ui| {
        if ui.add_enabled(can_load, egui::Button::new(tr.load)).clicked() {
            intents.push(Intent::LoadModel);
        }
        if loading && ui.button(tr.cancel).clicked() {
            intents.push(Intent::CancelLoad);
        }
    });
    if let ModelStatus::Loading { done, total } = status {
        let frac = if total > 0 { done as f32 / total as f32 } else { 0.0 };
        ui.add(egui::ProgressBar::new(frac).show_percentage().animate(true));
        ui.label(RichText::new(progress_text(done, total)).small());
    }
}

fn settings_panel(ui: &mut Ui, app: &mut ZiyaApp, intents: &mut Vec<Intent>) {
    let tr = app.state.tr();
    egui::CollapsingHeader::new(tr.settings).default_open(true).show(ui, |ui| {
        let s = &mut app.state.prefs.sampling;
        ui.add(egui::Slider::new(&mut s.temperature, 0.0..=2.0).text(tr.temperature));
        ui.add(egui::Slider::new(&mut s.top_p, 0.01..=1.0).text(tr.top_p));
        ui.add(egui::Slider::new(&mut s.top_k, 0..=200).text(tr.top_k));
        ui.add(egui::Slider::new(&mut s.max_new_tokens, 1..=2048).logarithmic(true).text(tr.max_new_tokens));
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
            *s = crate::sampling::SamplingParams::default();
        }
        ui.horizontal(|ui| {
            ui.label(tr.language);
            for (lang, label) in [(Lang::Zh, "中文"), (Lang::En, "English")] {
                if ui.selectable_label(app.state.lang == lang, label).clicked() {
                    intents.push(Intent::SetLang(lang));
                }
            }
        });
    });
}

/// Draws thumbnails already asked for (a spinner while one is still being decoded).
fn draw_thumbnails(ui: &mut Ui, state: &AppState, thumbs: &HashMap<String, Thumb>, hashes: &[String], size: f32) {
    if hashes.is_empty() {
        return;
    }
    let tr = state.tr();
    ui.horizontal_wrapped(|ui| {
        for hash in hashes {
            let name = state.session.images.get(hash).map(|i| i.name.as_str()).unwrap_or_default();
            match thumbs.get(hash) {
                Some(Thumb::Ready(tex)) => {
                    let [w, h] = tex.size();
                    let scale = size / w.max(h) as f32;
                    ui.add(egui::Image::new((tex.id(), Vec2::new(w as f32 * scale, h as f32 * scale))))
                        .on_hover_text(name);
                }
                Some(Thumb::Failed(why)) => {
                    ui.label(
                        RichText::new(format!("⚠ {}", fill(tr.image_missing, &[&name])))
                            .color(Color32::from_rgb(230, 140, 20)),
                    )
                    .on_hover_text(why);
                }
                _ => {
                    ui.add_sized([size, size * 0.75], egui::Spinner::new());
                }
            }
        }
    });
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

fn chat(ui: &mut Ui, app: &mut ZiyaApp, intents: &mut Vec<Intent>) {
    let tr = app.state.tr();
    let ready = matches!(app.state.model, ModelStatus::Ready(_));
    let busy = app.state.is_busy();
    // Thumbnails not yet asked for are asked for here, so that drawing below can borrow the
    // conversation in place (this runs every frame: nothing in it is copied).
    let path: Vec<TurnId> = app.state.session.active_path().iter().map(|t| t.id).collect();
    let unrequested: Vec<String> = {
        let session = &app.state.session;
        let path_images = path.iter().filter_map(|&id| session.turn(id)).flat_map(|t| &t.images);
        let pending_images = app.state.pending.iter().flat_map(|p| p.images.iter().map(|i| &i.hash));
        path_images.chain(pending_images).filter(|h| !app.thumbs.contains_key(*h)).cloned().collect()
    };
    for hash in &unrequested {
        app.request_thumb(hash);
    }
    let ZiyaApp { state, thumbs, markdown, .. } = app;
    ScrollArea::vertical().auto_shrink([false, false]).stick_to_bottom(true).show(ui, |ui| {
        ui.set_width(ui.available_width());
        if path.is_empty() && state.pending.is_none() {
            ui.add_space(40.0);
            ui.vertical_centered(|ui| {
                ui.label(RichText::new(tr.composer_hint).weak());
            });
        }
        for &id in &path {
            // The question.
            if state.editing.as_ref().is_some_and(|e| e.turn == id) {
                bubble(ui, true, |ui| edit_box(ui, state, thumbs, intents));
            } else if let Some(turn) = state.session.turn(id) {
                bubble(ui, true, |ui| {
                    draw_thumbnails(ui, state, thumbs, &turn.images, THUMB_IN_CHAT);
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
            let Some(turn) = state.session.turn(id) else { continue };
            bubble(ui, false, |ui| {
                egui_commonmark::CommonMarkViewer::new().show(ui, markdown, &displayable(&turn.answer));
                if turn.stats.as_ref().is_some_and(TurnStats::was_stopped) {
                    ui.label(RichText::new(tr.stopped).weak().italics());
                }
                ui.horizontal(|ui| {
                    if ui.button(tr.copy).clicked() {
                        intents.push(Intent::Copy(turn.answer.clone()));
                    }
                    if ui.add_enabled(!busy && ready, egui::Button::new(tr.regenerate)).clicked() {
                        intents.push(Intent::Regenerate(turn.id));
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
            bubble(ui, true, |ui| {
                draw_thumbnails(ui, state, thumbs, &hashes, THUMB_IN_CHAT);
                ui.label(displayable(&p.query));
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

/// The question being edited, in place of its bubble (its images were asked for with the turn's).
fn edit_box(ui: &mut Ui, state: &mut AppState, thumbs: &HashMap<String, Thumb>, intents: &mut Vec<Intent>) {
    let tr = state.tr();
    let Some(edit) = state.editing.clone() else { return };
    ui.horizontal_wrapped(|ui| {
        for (i, hash) in edit.images.iter().enumerate() {
            draw_thumbnails(ui, state, thumbs, std::slice::from_ref(hash), THUMB_IN_COMPOSER);
            if ui.small_button("×").clicked() {
                if let Some(e) = state.editing.as_mut() {
                    e.images.remove(i);
                }
            }
        }
    });
    if let Some(e) = state.editing.as_mut() {
        ui.add(egui::TextEdit::multiline(&mut e.text).desired_rows(2).desired_width(f32::INFINITY));
    }
    ui.horizontal(|ui| {
        let ok = !state.is_busy() && matches!(state.model, ModelStatus::Ready(_)) && !edit.text.trim().is_empty();
        if ui.add_enabled(ok, egui::Button::new(tr.save_edit)).clicked() {
            intents.push(Intent::SubmitEdit);
        }
        if ui.button(tr.cancel).clicked() {
            intents.push(Intent::CancelEdit);
        }
    });
}

fn composer(ui: &mut Ui, app: &mut ZiyaApp, intents: &mut Vec<Intent>) {
    let tr = app.state.tr();
    ui.add_space(6.0);
    // Attachments, removable until sent.
    if !app.state.composer.attachments.is_empty() {
        ui.horizontal_wrapped(|ui| {
            for a in &app.state.composer.attachments {
                ui.vertical(|ui| {
                    // An image given back after a failed answer has its thumbnail in the chat's.
                    let chat_thumb = a.image.as_ref().and_then(|i| match app.thumbs.get(&i.hash) {
                        Some(Thumb::Ready(tex)) => Some(tex),
                        _ => None,
                    });
                    match app.attachment_thumbs.get(&a.key).or(chat_thumb) {
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
    if focused
        && ui.input_mut(|i| match i.events.iter().position(plain_enter) {
            Some(at) => {
                i.events.remove(at);
                true
            }
            None => false,
        })
    {
        intents.push(Intent::Send);
    }
    let blocker = app.state.send_blocker();
    ui.horizontal(|ui| {
        if ui.button(format!("＋ {}", tr.attach)).clicked() {
            intents.push(Intent::PickImages);
        }
        let width = ui.available_width() - 100.0;
        ui.add(
            egui::TextEdit::multiline(&mut app.state.composer.text)
                .id(id)
                .hint_text(tr.composer_hint)
                .desired_rows(2)
                .desired_width(width.max(100.0)),
        );
        ui.vertical(|ui| {
            if app.state.is_busy() {
                if ui.button(format!("■ {}", tr.stop)).clicked() {
                    intents.push(Intent::Stop);
                }
            } else {
                let r = ui.add_enabled(blocker.is_none(), egui::Button::new(format!("▶ {}", tr.send)));
                if r.clicked() {
                    intents.push(Intent::Send);
                }
            }
        });
    });
    // Say why Send is unavailable (only when there is something to say about a model or images).
    if let Some(why) = blocker {
        if why != tr.why_empty {
            ui.label(RichText::new(why).small().color(Color32::from_rgb(230, 140, 20)));
        }
    }
    ui.add_space(4.0);
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

fn short_name(name: &str) -> String {
    if name.chars().count() > 14 {
        format!("{}…", name.chars().take(13).collect::<String>())
    } else {
        name.to_string()
    }
}

fn notices(ctx: &egui::Context, app: &ZiyaApp, intents: &mut Vec<Intent>) {
    if app.state.notices.is_empty() {
        return;
    }
    let tr = app.state.tr();
    egui::Area::new(egui::Id::unique("notices"))
        .anchor(egui::Align2::CENTER_TOP, Vec2::new(0.0, 48.0))
        .order(egui::Order::Foreground)
        .show(ctx, |ui| {
            for (i, n) in app.state.notices.iter().enumerate() {
                let (bg, fg) = match n.kind {
                    NoticeKind::Error => (Color32::from_rgb(90, 25, 25), Color32::from_rgb(255, 225, 225)),
                    NoticeKind::Info => (Color32::from_rgb(25, 60, 35), Color32::from_rgb(225, 255, 230)),
                };
                egui::Frame::new().fill(bg).corner_radius(6.0).inner_margin(8.0).show(ui, |ui| {
                    ui.set_max_width(560.0);
                    ui.horizontal(|ui| {
                        ui.label(RichText::new(&n.text).color(fg));
                        if ui.small_button(tr.dismiss).clicked() {
                            intents.push(Intent::DismissNotice(i));
                        }
                    });
                });
                ui.add_space(4.0);
            }
        });
}

fn drop_overlay(ctx: &egui::Context, app: &ZiyaApp) {
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
        app.state.tr().drop_here.to_string(),
        egui::FontId::proportional(28.0),
        Color32::WHITE,
    );
}
