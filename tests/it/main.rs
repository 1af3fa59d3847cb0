//! The integration tests, in one binary so that egui and candle are linked once:
//! - `parity`, `preprocess_parity`, `precision`: the networks and preprocessing against HF
//!   transformers' outputs (tests/fixtures/make_fixtures.py);
//! - `ask_cli`, `delta`, `gguf`: the `ask`, `merge-delta` and `quantize` commands, driven as the
//!   real binary;
//! - `app_ui`, `app_sessions`, `app_details`: the window with the real engine, through
//!   egui_kittest;
//! - `long_story`: the oldest turns leave the context by a fixed rule, as the reference does;
//! - `interrupted_save`: a save killed halfway leaves the previous file intact;
//! - `hostile`: every class of hostile input (images, sessions, exports, checkpoints, configs,
//!   arguments) through the real binary, under a memory limit and a clock;
//! - `server`: `ziya-visual serve`, the OpenAI-compatible endpoint, over HTTP.

mod common;

mod app_details;
mod app_sessions;
mod app_ui;
mod ask_cli;
mod delta;
mod gguf;
mod hostile;
mod interrupted_save;
mod long_story;
mod parity;
mod precision;
mod preprocess_parity;
mod server;
