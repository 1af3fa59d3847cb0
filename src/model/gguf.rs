//! `ziya-visual quantize`: the LLM quantized once into a single GGUF file that starts fast and
//! carries its config.json and tokenizer. Tensors keep their transformers names (this is a
//! ziya-visual file, architecture `ziya-llama`, not a llama.cpp one, whose q/k weights are
//! permuted for interleaved rotary embeddings). Linear weights are stored in the chosen block
//! format (with the q8_0/dense fallback of `Quant::for_rows`), embeddings in float16 and norms in
//! float32.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device};

use super::layers::Quant;
use super::shapes::llm_tensors;
use super::weights::{Checkpoint, LoadCounter};
use crate::error::{Error, Result};

pub const CONFIG_KEY: &str = "ziya.config_json";
pub const TOKENIZER_KEY: &str = "ziya.tokenizer_json";
pub const QUANT_KEY: &str = "ziya.quantization";

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
        Err(_) => crate::tokenizer::ChatTokenizer::from_dir(llm_dir)?.to_json()?,
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
        let linear = shape.len() == 2 && (name.ends_with("_proj.weight") || name == "lm_head.weight");
        let format = match linear.then(|| quant.for_rows(shape[1])).flatten() {
            Some(q) => q.ggml(),
            None if name.contains("norm") => GgmlDType::F32,
            None => GgmlDType::F16,
        };
        tensors.push((name.clone(), QTensor::quantize(&t, format)?));
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
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("model.gguf"),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = std::io::BufWriter::new(file);
        gguf_file::write(&mut w, &metadata, &refs)?;
        let file = w.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|_| out.to_path_buf())
}
