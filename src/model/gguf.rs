//! `ziya-visual quantize`: the LLM quantized once into a single GGUF file that starts fast and
//! carries its config.json and tokenizer. Tensors keep their transformers names (this is a
//! ziya-visual file, architecture `ziya-llama`, not a llama.cpp one, whose q/k weights are
//! permuted for interleaved rotary embeddings). Linear weights and the embedding table are stored
//! in the chosen block format (with the q8_0/dense fallback of `Quant::for_rows`), norms in
//! float32. (Files written before the embeddings were quantized hold them in float16 and still
//! load.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device};

use super::config::LlamaConfig;
use super::layers::{quantize_f32, Quant};
use super::shapes::llm_tensors;
use super::weights::{gguf_string, read_gguf, Checkpoint, LoadCounter};
use crate::error::{Error, Result};
use crate::tokenizer::ChatTokenizer;

pub const CONFIG_KEY: &str = "ziya.config_json";
pub const TOKENIZER_KEY: &str = "ziya.tokenizer_json";
pub const QUANT_KEY: &str = "ziya.quantization";

/// What a GGUF written by `quantize` carries besides its tensors, read from its header.
pub struct GgufHeader {
    pub path: PathBuf,
    /// The LLM's config.json text.
    pub config_json: Option<String>,
    /// tokenizer.json text.
    pub tokenizer_json: Option<String>,
    /// The block format its linear layers were quantized to.
    pub quant: Option<Quant>,
}

impl GgufHeader {
    pub fn read(path: &Path) -> Result<Self> {
        let content = read_gguf(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            config_json: gguf_string(&content, CONFIG_KEY),
            tokenizer_json: gguf_string(&content, TOKENIZER_KEY),
            quant: gguf_string(&content, QUANT_KEY).and_then(|q| Quant::parse(&q)),
        })
    }

    /// The LLM config it carries.
    pub fn llm_config(&self) -> Result<LlamaConfig> {
        let text = self.config_json.as_deref().ok_or_else(|| Error::Config {
            path: self.path.clone(),
            msg: "this GGUF has no embedded config.json (only files written by `ziya-visual quantize` are supported)"
                .into(),
        })?;
        let cfg: LlamaConfig =
            serde_json::from_str(text).map_err(|e| Error::Config { path: self.path.clone(), msg: e.to_string() })?;
        cfg.validate(&self.path)?;
        Ok(cfg)
    }

    /// The tokenizer it carries, else the one in the folder beside it.
    pub fn tokenizer(&self) -> Result<ChatTokenizer> {
        match &self.tokenizer_json {
            Some(json) => ChatTokenizer::from_json_str(json, &self.path),
            None => ChatTokenizer::from_dir(self.path.parent().unwrap_or(Path::new("."))),
        }
    }
}

/// Quantizes the LLM in `llm_dir` (or the delta in `llm_dir` over `base`) into `out`.
pub fn quantize_to_gguf(
    llm_dir: &Path,
    base: Option<&Path>,
    quant: Quant,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PathBuf> {
    let cfg = super::read_llm_config(llm_dir)?;
    let counter = Arc::new(LoadCounter::default());
    let ckpt = match base {
        Some(b) => Checkpoint::open_delta(b, llm_dir, counter)?,
        None => Checkpoint::open(llm_dir, counter)?,
    };
    let config_json = std::fs::read_to_string(llm_dir.join("config.json")).map_err(|e| Error::io(llm_dir, e))?;
    // The tokenizer as tokenizer.json text (converted from tokenizer.model when that is all there is).
    let tokenizer_json = match std::fs::read_to_string(llm_dir.join("tokenizer.json")) {
        Ok(t) => t,
        Err(_) => ChatTokenizer::from_dir(llm_dir)?.to_json()?,
    };
    let list = llm_tensors(&cfg);
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(list.len());
    for (i, (name, shape)) in list.iter().enumerate() {
        if !ckpt.contains(name) {
            if name == "lm_head.weight" {
                continue; // tied to the embeddings
            }
            return Err(Error::checkpoint(llm_dir, format!("tensor `{name}` is missing")));
        }
        let t = ckpt.load_shaped(name, &shape.as_slice().into(), DType::F32, &Device::Cpu)?;
        // The linear layers, the LM head and the embedding table (as llama.cpp does).
        let quantized = shape.len() == 2
            && (name.ends_with("_proj.weight") || name == "lm_head.weight" || name == "model.embed_tokens.weight");
        let qt = match quantized.then(|| quant.for_rows(shape[1])).flatten() {
            // Rows over every core; the same bytes as `QTensor::quantize`.
            Some(q) => quantize_f32(&t, q)?.to_qtensor()?,
            None if name.contains("norm") => QTensor::quantize(&t, GgmlDType::F32)?,
            None => QTensor::quantize(&t, GgmlDType::F16)?,
        };
        tensors.push((name.clone(), qt));
        progress(i + 1, list.len());
    }
    let meta_values = [
        ("general.architecture", gguf_file::Value::String("ziya-llama".into())),
        ("general.name", gguf_file::Value::String(format!("{} ({})", llm_dir.display(), quant.name()))),
        (QUANT_KEY, gguf_file::Value::String(quant.name().into())),
        (CONFIG_KEY, gguf_file::Value::String(config_json)),
        (TOKENIZER_KEY, gguf_file::Value::String(tokenizer_json)),
    ];
    let metadata: Vec<(&str, &gguf_file::Value)> = meta_values.iter().map(|(k, v)| (*k, v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut w = crate::fs::AtomicFile::create(out)?;
    gguf_file::write(&mut w, &metadata, &refs)?;
    w.commit()?;
    Ok(out.to_path_buf())
}
