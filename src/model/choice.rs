//! Which model to run and how: the one typed value that the command line, the window's
//! preferences and the engine all pass around. The command line's syntax for it lives in
//! `cli.rs` (no clap here); the preferences store it with serde.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::layers::Quant;
use crate::device::{DeviceKind, KvPrecision, Precision};

/// Where the language model's weights come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LlmSource {
    /// A merged Ziya-LLaMA folder (safetensors or PyTorch shards, config, tokenizer).
    Folder(PathBuf),
    /// A `.gguf` written by `ziya-visual quantize` (config and tokenizer inside).
    Gguf(PathBuf),
    /// The published Ziya delta over Meta's LLaMA base, merged while loading.
    Delta { base: PathBuf, delta: PathBuf },
}

impl LlmSource {
    /// A folder, or a `.gguf` file (by its extension; a folder named `x.gguf` is a folder).
    pub fn from_path(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) && !path.is_dir() {
            LlmSource::Gguf(path)
        } else {
            LlmSource::Folder(path)
        }
    }

    /// The folder or file whose config and tokenizer describe the model (the delta's own for a
    /// delta: its vocabulary is the one the model speaks).
    pub fn main_path(&self) -> &Path {
        match self {
            LlmSource::Folder(p) | LlmSource::Gguf(p) => p,
            LlmSource::Delta { delta, .. } => delta,
        }
    }

    /// Meta's base, for a delta.
    pub fn base(&self) -> Option<&Path> {
        match self {
            LlmSource::Delta { base, .. } => Some(base),
            _ => None,
        }
    }

    /// How a transcript names it.
    pub fn describe(&self) -> String {
        match self {
            LlmSource::Folder(p) | LlmSource::Gguf(p) => p.display().to_string(),
            LlmSource::Delta { base, delta } => format!("{} + delta {}", base.display(), delta.display()),
        }
    }

    /// Whether no path has been given yet (a fresh window).
    pub fn is_unset(&self) -> bool {
        match self {
            LlmSource::Folder(p) | LlmSource::Gguf(p) => p.as_os_str().is_empty(),
            LlmSource::Delta { base, delta } => base.as_os_str().is_empty() || delta.as_os_str().is_empty(),
        }
    }
}

impl Default for LlmSource {
    fn default() -> Self {
        LlmSource::Folder(PathBuf::new())
    }
}

/// The model folders, the device and the precision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelChoice {
    /// The Ziya-BLIP2 vision folder (vision tower, Q-Former, projection).
    pub vision: PathBuf,
    pub llm: LlmSource,
    pub device: DeviceKind,
    pub precision: Precision,
    /// Quantize the LLM's linear layers while loading.
    pub quant: Option<Quant>,
    /// The KV cache's precision on the CPU (preferences saved before it existed read as f16).
    #[serde(default)]
    pub kv: KvPrecision,
}

impl Default for ModelChoice {
    fn default() -> Self {
        Self {
            vision: PathBuf::new(),
            llm: LlmSource::default(),
            device: DeviceKind::default_for_build(),
            precision: Precision::F32,
            quant: None,
            kv: KvPrecision::default(),
        }
    }
}

impl ModelChoice {
    /// The two folders of a model in f32 on the CPU (tests, the demo).
    pub fn folders(vision: impl Into<PathBuf>, llm: impl Into<PathBuf>) -> Self {
        Self {
            vision: vision.into(),
            llm: LlmSource::from_path(llm),
            device: DeviceKind::Cpu,
            precision: Precision::F32,
            quant: None,
            kv: KvPrecision::default(),
        }
    }

    /// Whether both folders have been given.
    pub fn is_complete(&self) -> bool {
        !self.vision.as_os_str().is_empty() && !self.llm.is_unset()
    }
}

/// Parts of a [`ModelChoice`] given on the command line, each replacing the remembered one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelOverrides {
    pub vision: Option<PathBuf>,
    pub llm: Option<LlmSource>,
    pub device: Option<DeviceKind>,
    pub precision: Option<Precision>,
    pub quant: Option<Quant>,
    pub kv: Option<KvPrecision>,
}

impl ModelOverrides {
    /// Replaces what was given.
    pub fn apply(&self, choice: &mut ModelChoice) {
        if let Some(v) = &self.vision {
            choice.vision = v.clone();
        }
        if let Some(l) = &self.llm {
            choice.llm = l.clone();
        }
        if let Some(d) = self.device {
            choice.device = d;
        }
        if let Some(p) = self.precision {
            choice.precision = p;
        }
        if self.quant.is_some() {
            choice.quant = self.quant;
        }
        if let Some(kv) = self.kv {
            choice.kv = kv;
        }
    }

    /// Whether both model folders were given (the window then loads them at start).
    pub fn names_a_model(&self) -> bool {
        self.vision.is_some() && self.llm.is_some()
    }

    /// A complete choice (the CPU in f32 unless given), when both folders were given.
    pub fn into_choice(self) -> Option<ModelChoice> {
        if !self.names_a_model() {
            return None;
        }
        let mut choice = ModelChoice { device: DeviceKind::Cpu, ..Default::default() };
        self.apply(&mut choice);
        Some(choice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_files_are_told_from_folders_by_extension() {
        assert!(matches!(LlmSource::from_path("/m/ziya-q4k.gguf"), LlmSource::Gguf(_)));
        assert!(matches!(LlmSource::from_path("/m/Ziya-LLaMA-13B"), LlmSource::Folder(_)));
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("folder.gguf");
        std::fs::create_dir(&odd).unwrap();
        assert!(matches!(LlmSource::from_path(&odd), LlmSource::Folder(_)));
    }

    #[test]
    fn choices_round_trip_through_json() {
        let c = ModelChoice {
            vision: "/v".into(),
            llm: LlmSource::Delta { base: "/b".into(), delta: "/d".into() },
            device: DeviceKind::Cuda,
            precision: Precision::Bf16,
            quant: Some(Quant::Q4K),
            kv: KvPrecision::F32,
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ModelChoice>(&json).unwrap(), c);
        // Preferences saved before the KV precision existed read with the default (f16).
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        old.as_object_mut().unwrap().remove("kv");
        assert_eq!(serde_json::from_value::<ModelChoice>(old).unwrap().kv, KvPrecision::F16);
        assert_eq!(c.llm.describe(), "/b + delta /d");
        assert_eq!(c.llm.main_path(), Path::new("/d"));
    }
}
