//! ziya-visual: talk about photos with the Ziya-Visual multimodal model (BLIP-2 vision +
//! Q-Former + projection feeding Ziya-LLaMA), natively, with streaming answers.
//!
//! Layers point one way, from the bottom:
//! - leaves: `error`, `fs`, `assets`, `generation`, `sampling`, `preprocess`, `tokenizer`, `device`,
//!   `quant`;
//! - `model/`: the networks, checkpoints, the memory planner and the model choice (knows
//!   nothing of sessions, files of the app, the CLI or the window);
//! - `chat` (the prompt layout), `inference` (answering a conversation), `engine` (the thread
//!   that owns the model; one handle serves the window, `ask` and the server);
//! - `session/`, `store`, `export`: conversations on disk;
//! - front ends: `cli`, `ui/`, `server/` (the OpenAI-compatible endpoint).

pub mod assets;
pub mod chat;
pub mod cli;
pub mod demo;
pub mod device;
pub mod engine;
pub mod error;
pub mod export;
pub mod fs;
pub mod generation;
pub mod inference;
pub mod llm_bench;
pub mod model;
pub mod panics;
pub mod paths;
pub mod preprocess;
pub mod quant;
pub mod sampling;
pub mod server;
pub mod session;
pub mod store;
pub mod tokenizer;
pub mod ui;

pub use error::{Error, Result};
