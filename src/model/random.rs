//! Random-weight checkpoints of any size in the real on-disk layout, for benchmarks and memory
//! measurements where the tiny committed fixture is too small to show anything (a "medium" model
//! that loads in seconds and decodes at a human-visible pace; a Ziya-13B-shaped one for GPUs).
//! The values are deterministic but meaningless; parity is tested on the committed fixture.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use super::config::{LlamaConfig, VisionRepoConfig};
use super::shapes::{llm_tensors, projection_tensors, vision_tensors, TensorList};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// ViT-B-sized tower, full Q-Former, 8-layer 2048-wide LLaMA (about 0.8 + 1.1 GB).
    Medium,
    /// The real Ziya-Visual shapes: EVA ViT-g, full Q-Former, LLaMA-13B (about 4.4 + 26 GB).
    Ziya13b,
}

fn configs(preset: Preset) -> (serde_json::Value, serde_json::Value) {
    let (vision, llm) = match preset {
        Preset::Medium => (
            json!({"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "image_size": 224, "patch_size": 14, "layer_norm_eps": 1e-6, "qkv_bias": true, "hidden_act": "gelu"}),
            // 5632 = 22 × 256, so every format (k-quants need rows of multiples of 256) applies
            // as it does to LLaMA-13B's 5120 and 13824.
            json!({"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 8, "num_attention_heads": 16}),
        ),
        Preset::Ziya13b => (
            json!({"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39, "num_attention_heads": 16,
                   "image_size": 224, "patch_size": 14, "layer_norm_eps": 1e-6, "qkv_bias": true, "hidden_act": "gelu"}),
            json!({"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40}),
        ),
    };
    let encoder = vision["hidden_size"].clone();
    let vision_repo = json!({
        "_comment": "RANDOM weights written by `ziya-visual make-random-model`: for measurements only; answers are noise.",
        "architectures": ["ZiyaBlip2ForCausalLM"], "model_type": "blip-2", "num_query_tokens": 32,
        "human_name": "<human>", "assistant_name": "<bot>", "prompt_prefix": "",
        "vision_config": vision,
        "qformer_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "encoder_hidden_size": encoder, "cross_attention_frequency": 2,
            "layer_norm_eps": 1e-12, "hidden_act": "gelu"},
    });
    let mut llm_cfg = json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 39424,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "hidden_act": "silu", "bos_token_id": 1,
        "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": false, "torch_dtype": "float16"});
    for (k, v) in llm.as_object().into_iter().flatten() {
        llm_cfg[k] = v.clone();
    }
    (vision_repo, llm_cfg)
}

/// Deterministic pseudo-normal values (sum of four uniforms) scaled by `std`.
struct Values(u64);

impl Values {
    fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }
    fn fill(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let s: f32 = (0..4).map(|_| self.next_u32() as f32 / u32::MAX as f32).sum();
                (s - 2.0) * std * 1.732
            })
            .collect()
    }
}

fn tensor_for(name: &str, shape: &[usize], values: &mut Values, dtype: DType) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let data = if name.ends_with("layernorm.weight")
        || name.ends_with("LayerNorm.weight")
        || name.contains("layer_norm")
        || name.contains("post_layernorm") && name.ends_with("weight")
        || name.ends_with("norm.weight")
    {
        if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            vec![1.0; n]
        }
    } else if name.ends_with("bias") {
        values.fill(n, 0.01)
    } else {
        values.fill(n, 0.02)
    };
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype)?)
}

/// Writes tensors as safetensors shards of at most `shard_bytes`, with an index when sharded.
fn write_shards(dir: &Path, list: &TensorList, dtype: DType, seed: u64, shard_bytes: usize) -> Result<()> {
    let mut values = Values(seed | 1);
    let mut shards: Vec<Vec<&(String, Vec<usize>)>> = vec![Vec::new()];
    let mut size = 0usize;
    for entry in list {
        let bytes = entry.1.iter().product::<usize>() * dtype.size_in_bytes();
        if size + bytes > shard_bytes && !shards.last().is_some_and(|s| s.is_empty()) {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        if let Some(s) = shards.last_mut() {
            s.push(entry);
        }
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file =
            if n == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{n:05}.safetensors", i + 1) };
        let mut tensors = HashMap::new();
        for (name, shape) in shard {
            tensors.insert(name.clone(), tensor_for(name, shape, &mut values, dtype)?);
            weight_map.insert(name.clone(), json!(file));
        }
        candle_core::safetensors::save(&tensors, dir.join(&file))?;
    }
    if n > 1 {
        let index = json!({"metadata": {}, "weight_map": weight_map});
        let path = dir.join("model.safetensors.index.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&index).unwrap_or_default())
            .map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// Writes `<out>/vision` (f32, like the real repo) and `<out>/llm` (f16 shards, like the real
/// LLM) with the demo's tokenizer. Returns the two folders.
pub fn write(out: &Path, preset: Preset, seed: u64) -> Result<(PathBuf, PathBuf)> {
    write_parts(out, preset, seed, true)
}

/// [`write`], or with `llm: false` only the vision folder (and the LLM's config.json, so the pair's
/// shapes stay on record): the vision tower of the real shapes without 26 GB of LLM.
pub fn write_parts(out: &Path, preset: Preset, seed: u64, llm: bool) -> Result<(PathBuf, PathBuf)> {
    let (vjson, ljson) = configs(preset);
    let vision_dir = out.join("vision");
    let llm_dir = out.join("llm");
    for d in [&vision_dir, &llm_dir] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let write_json = |path: PathBuf, v: &serde_json::Value| {
        std::fs::write(&path, serde_json::to_vec_pretty(v).unwrap_or_default()).map_err(|e| Error::io(&path, e))
    };
    write_json(vision_dir.join("config.json"), &vjson)?;
    write_json(llm_dir.join("config.json"), &ljson)?;
    let vcfg: VisionRepoConfig = serde_json::from_value(vjson).map_err(|e| Error::Request(e.to_string()))?;
    let lcfg: LlamaConfig = serde_json::from_value(ljson).map_err(|e| Error::Request(e.to_string()))?;
    let mut vision = vision_tensors(&vcfg);
    vision.extend(projection_tensors(&vcfg, lcfg.hidden_size));
    write_shards(&vision_dir, &vision, DType::F32, seed, usize::MAX)?;
    if !llm {
        return Ok((vision_dir, llm_dir));
    }
    write_shards(&llm_dir, &llm_tensors(&lcfg), DType::F16, seed.wrapping_add(1), 2 << 30)?;
    // The tiny checkpoint's tokenizer: random weights make any text noise anyway.
    for (name, bytes) in crate::assets::tiny_tokenizer_files() {
        crate::fs::write_atomic(&llm_dir.join(name), bytes)?;
    }
    Ok((vision_dir, llm_dir))
}
