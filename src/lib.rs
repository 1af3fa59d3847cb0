//! ziya-visual: talk about photos with the Ziya-Visual multimodal model (BLIP-2 vision +
//! Q-Former + projection feeding Ziya-LLaMA), natively, with streaming answers.

pub mod chat;
pub mod cli;
pub mod demo;
pub mod device;
pub mod engine;
pub mod error;
pub mod export;
pub mod inference;
pub mod model;
pub mod preprocess;
pub mod sampling;
pub mod session;
pub mod store;
pub mod tokenizer;
pub mod ui;

pub use error::{Error, Result};
