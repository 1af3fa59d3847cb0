//! Paths and readers for the committed fixtures (see tests/fixtures/make_fixtures.py).
#![allow(dead_code)]

pub mod app;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
pub fn vision_dir() -> PathBuf {
    root().join("assets/tiny-ziya/vision")
}
pub fn llm_dir() -> PathBuf {
    root().join("assets/tiny-ziya/llm")
}
pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}
pub fn image_path(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

/// The `ziya-visual` binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ziya-visual"))
}

/// `ziya-visual ask` with these two model folders; add flags and the query.
pub fn ask_with_models(vision: &Path, llm: &Path) -> Command {
    let mut c = bin();
    c.arg("ask").arg("--vision-model").arg(vision).arg("--llm-model").arg(llm);
    c
}

/// `ziya-visual ask` on the committed tiny checkpoint.
pub fn ask_tiny() -> Command {
    ask_with_models(&vision_dir(), &llm_dir())
}

pub fn cases() -> Value {
    let text = std::fs::read_to_string(fixtures().join("reference/cases.json")).expect("reference/cases.json");
    serde_json::from_str(&text).expect("cases.json parses")
}

pub fn reference_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("reference/tensors.safetensors"), &Device::Cpu)
        .expect("reference/tensors.safetensors")
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("array of ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}
