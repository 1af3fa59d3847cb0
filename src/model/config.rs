//! The two config.json files a user has on disk, read with serde.
//!
//! Defaults equal those of the transformers config classes the checkpoints were written with, so a
//! config.json that leaves a value at its default (transformers only writes what differs) still
//! loads with the right number.

use std::path::Path;

use candle_nn::Activation;
use serde::Deserialize;

use crate::error::{Error, Result};

/// `config.json` of the Ziya-BLIP2 repo: vision tower, Q-Former, query tokens, chat roles.
#[derive(Debug, Clone, Deserialize)]
pub struct VisionRepoConfig {
    pub vision_config: VisionConfig,
    pub qformer_config: QFormerConfig,
    #[serde(default = "default_num_query_tokens")]
    pub num_query_tokens: usize,
    #[serde(default = "default_human_name")]
    pub human_name: String,
    #[serde(default = "default_assistant_name")]
    pub assistant_name: String,
    #[serde(default)]
    pub prompt_prefix: String,
}

fn default_num_query_tokens() -> usize {
    32
}
fn default_human_name() -> String {
    "<human>".into()
}
fn default_assistant_name() -> String {
    "<bot>".into()
}

/// EVA ViT-g/14 as configured by `Blip2VisionConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "d_1408")]
    pub hidden_size: usize,
    #[serde(default = "d_6144")]
    pub intermediate_size: usize,
    #[serde(default = "d_39")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_16")]
    pub num_attention_heads: usize,
    #[serde(default = "d_224")]
    pub image_size: usize,
    #[serde(default = "d_14")]
    pub patch_size: usize,
    #[serde(default = "d_1e6")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_true")]
    pub qkv_bias: bool,
    #[serde(default)]
    pub hidden_act: Activation,
}

/// The BERT-like Q-Former as configured by `Blip2QFormerConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct QFormerConfig {
    #[serde(default = "d_768")]
    pub hidden_size: usize,
    #[serde(default = "d_3072")]
    pub intermediate_size: usize,
    #[serde(default = "d_12")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_12")]
    pub num_attention_heads: usize,
    #[serde(default = "d_1408")]
    pub encoder_hidden_size: usize,
    #[serde(default = "d_2")]
    pub cross_attention_frequency: usize,
    #[serde(default = "d_1e12")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub hidden_act: Activation,
}

/// A LLaMA `config.json` (Ziya-LLaMA-13B or any LLaMA-architecture folder).
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    #[serde(default = "d_4096")]
    pub hidden_size: usize,
    #[serde(default = "d_11008")]
    pub intermediate_size: usize,
    #[serde(default = "d_32000")]
    pub vocab_size: usize,
    #[serde(default = "d_32")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_32")]
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "d_1e6")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "d_2048")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_1")]
    pub bos_token_id: u32,
    #[serde(default)]
    pub eos_token_id: Option<EosTokenId>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "d_silu")]
    pub hidden_act: Activation,
    /// Present in some LLaMA configs; only `null` is supported (Ziya uses plain RoPE).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
}

/// `eos_token_id` is an int in older configs and a list in newer ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EosTokenId {
    One(u32),
    Many(Vec<u32>),
}

impl LlamaConfig {
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            None => vec![2],
            Some(EosTokenId::One(id)) => vec![*id],
            Some(EosTokenId::Many(ids)) => ids.clone(),
        }
    }

    /// Checks the numbers the network's shapes depend on, so that a broken config is reported by
    /// name instead of surfacing as a shape error deep in a matmul, and that none is absurd
    /// (every size has an upper bound far above any real LLaMA, so no product of them overflows
    /// and nothing is allocated on the strength of a typo or a hostile file).
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::Config { path: path.to_path_buf(), msg });
        check_bounds(
            path,
            &[
                ("hidden_size", self.hidden_size, MAX_WIDTH),
                ("intermediate_size", self.intermediate_size, MAX_FFN),
                ("vocab_size", self.vocab_size, MAX_VOCAB),
                ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
                ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
                ("num_key_value_heads", self.num_kv_heads(), MAX_HEADS),
                ("max_position_embeddings", self.max_position_embeddings, MAX_POSITIONS),
            ],
        )?;
        check_eps(path, "rms_norm_eps", self.rms_norm_eps)?;
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("rope_theta {} must be a positive number", self.rope_theta));
        }
        if self.hidden_size == 0 || self.intermediate_size == 0 {
            return bad("hidden_size and intermediate_size must be positive".into());
        }
        if self.bos_token_id as usize >= self.vocab_size {
            return bad(format!(
                "bos_token_id {} is outside the vocabulary ({} tokens)",
                self.bos_token_id, self.vocab_size
            ));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!("head dimension {} must be even for rotary embeddings", self.head_dim()));
        }
        let kv = self.num_kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {kv}",
                self.num_attention_heads
            ));
        }
        if self.vocab_size == 0 || self.num_hidden_layers == 0 || self.max_position_embeddings == 0 {
            return bad("vocab_size, num_hidden_layers and max_position_embeddings must be positive".into());
        }
        if let Some(s) = &self.rope_scaling {
            if !s.is_null() {
                return bad(format!("rope_scaling {s} is not supported (only plain RoPE)"));
            }
        }
        Ok(())
    }
}

impl VisionRepoConfig {
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::Config { path: path.to_path_buf(), msg });
        let v = &self.vision_config;
        let q = &self.qformer_config;
        check_bounds(
            path,
            &[
                ("vision_config.hidden_size", v.hidden_size, MAX_WIDTH),
                ("vision_config.intermediate_size", v.intermediate_size, MAX_FFN),
                ("vision_config.num_hidden_layers", v.num_hidden_layers, MAX_LAYERS),
                ("vision_config.num_attention_heads", v.num_attention_heads, MAX_HEADS),
                ("qformer_config.hidden_size", q.hidden_size, MAX_WIDTH),
                ("qformer_config.intermediate_size", q.intermediate_size, MAX_FFN),
                ("qformer_config.num_hidden_layers", q.num_hidden_layers, MAX_LAYERS),
                ("qformer_config.num_attention_heads", q.num_attention_heads, MAX_HEADS),
                ("num_query_tokens", self.num_query_tokens, MAX_QUERY_TOKENS),
            ],
        )?;
        check_eps(path, "vision_config.layer_norm_eps", v.layer_norm_eps)?;
        check_eps(path, "qformer_config.layer_norm_eps", q.layer_norm_eps)?;
        if v.hidden_size == 0 || v.intermediate_size == 0 || q.hidden_size == 0 || q.intermediate_size == 0 {
            return bad("vision_config and qformer_config sizes must be positive".into());
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return bad(format!(
                "vision_config.hidden_size {} is not a multiple of num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if v.patch_size == 0 || v.image_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return bad(format!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if v.image_size > 4096 {
            return bad(format!("vision_config.image_size {} is implausibly large", v.image_size));
        }
        if q.num_attention_heads == 0 || !q.hidden_size.is_multiple_of(q.num_attention_heads) {
            return bad(format!(
                "qformer_config.hidden_size {} is not a multiple of num_attention_heads {}",
                q.hidden_size, q.num_attention_heads
            ));
        }
        if q.cross_attention_frequency == 0 {
            return bad("qformer_config.cross_attention_frequency must be at least 1".into());
        }
        if q.encoder_hidden_size != v.hidden_size {
            return bad(format!(
                "qformer_config.encoder_hidden_size {} differs from vision_config.hidden_size {}",
                q.encoder_hidden_size, v.hidden_size
            ));
        }
        if self.num_query_tokens == 0 {
            return bad("num_query_tokens must be at least 1".into());
        }
        Ok(())
    }
}

/// Upper bounds for config values: each far above any real model (Ziya-LLaMA-13B: width 5120,
/// FFN 13824, 39424 tokens, 40 layers and heads, 2048 positions), and small enough that sizes
/// multiplied together stay far from overflow.
pub const MAX_WIDTH: usize = 65_536;
pub const MAX_FFN: usize = 1 << 18;
pub const MAX_VOCAB: usize = 1 << 20;
pub const MAX_LAYERS: usize = 1024;
pub const MAX_HEADS: usize = 1024;
pub const MAX_POSITIONS: usize = 1 << 20;
pub const MAX_QUERY_TOKENS: usize = 4096;

fn check_bounds(path: &Path, values: &[(&str, usize, usize)]) -> Result<()> {
    for &(name, value, max) in values {
        if value > max {
            return Err(Error::Config {
                path: path.to_path_buf(),
                msg: format!("{name} {value} is implausibly large (at most {max} is accepted)"),
            });
        }
    }
    Ok(())
}

fn check_eps(path: &Path, name: &str, eps: f64) -> Result<()> {
    if !(eps.is_finite() && eps > 0.0 && eps < 1.0) {
        return Err(Error::Config { path: path.to_path_buf(), msg: format!("{name} {eps} must be between 0 and 1") });
    }
    Ok(())
}

/// The largest config.json read (real ones are a few kilobytes).
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Reads and parses a config.json, naming the file in every error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_text_limited(path, MAX_CONFIG_BYTES)?;
    serde_json::from_str(&text).map_err(|e| Error::Config { path: path.to_path_buf(), msg: e.to_string() })
}

fn d_1408() -> usize {
    1408
}
fn d_6144() -> usize {
    6144
}
fn d_39() -> usize {
    39
}
fn d_16() -> usize {
    16
}
fn d_224() -> usize {
    224
}
fn d_14() -> usize {
    14
}
fn d_1e6() -> f64 {
    1e-6
}
fn d_1e12() -> f64 {
    1e-12
}
fn d_true() -> bool {
    true
}
fn d_768() -> usize {
    768
}
fn d_3072() -> usize {
    3072
}
fn d_12() -> usize {
    12
}
fn d_2() -> usize {
    2
}
fn d_4096() -> usize {
    4096
}
fn d_11008() -> usize {
    11008
}
fn d_32000() -> usize {
    32000
}
fn d_32() -> usize {
    32
}
fn d_2048() -> usize {
    2048
}
fn d_1() -> u32 {
    1
}
fn d_rope_theta() -> f64 {
    10000.0
}
fn d_silu() -> Activation {
    Activation::Silu
}

/// A small text file (config, index, tokenizer): a regular file of at most `max` bytes, read
/// without trusting its size (it may grow, or be a device that never ends).
pub fn read_text_limited(path: &Path, max: u64) -> Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::Config { path: path.to_path_buf(), msg };
    if !meta.is_file() {
        return Err(bad("is not a regular file".into()));
    }
    if meta.len() > max {
        return Err(bad(format!("is {} bytes; at most {max} are read from a file like this", meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(bad(format!("grew past {max} bytes while it was read")));
    }
    String::from_utf8(bytes).map_err(|e| bad(format!("is not UTF-8 text (byte {})", e.utf8_error().valid_up_to())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama(json: &str) -> Result<()> {
        let cfg: LlamaConfig = serde_json::from_str(json).unwrap();
        cfg.validate(Path::new("llm/config.json"))
    }

    #[test]
    fn absurd_llama_values_are_refused_with_the_number() {
        assert!(llama("{}").is_ok(), "LLaMA-7B defaults");
        for (json, want) in [
            (r#"{"num_hidden_layers": 1000000000}"#, "num_hidden_layers 1000000000 is implausibly large"),
            (r#"{"max_position_embeddings": 2305843009213693952}"#, "max_position_embeddings 2305843009213693952"),
            (r#"{"hidden_size": 1099511627776, "num_attention_heads": 1}"#, "hidden_size 1099511627776"),
            (r#"{"vocab_size": 18446744073709551615}"#, "vocab_size 18446744073709551615"),
            (r#"{"num_key_value_heads": 100000}"#, "num_key_value_heads 100000"),
            (r#"{"rms_norm_eps": -1.0}"#, "rms_norm_eps -1"),
            (r#"{"rope_theta": 0.0}"#, "rope_theta 0"),
            (r#"{"bos_token_id": 40000}"#, "bos_token_id 40000 is outside the vocabulary"),
            (r#"{"intermediate_size": 0}"#, "must be positive"),
        ] {
            let err = llama(json).unwrap_err().to_string();
            assert!(err.contains(want) && err.contains("llm/config.json"), "{json}: {err}");
        }
    }

    #[test]
    fn absurd_vision_values_are_refused_with_the_number() {
        let vision = |json: &str| -> Result<()> {
            let cfg: VisionRepoConfig = serde_json::from_str(json).unwrap();
            cfg.validate(Path::new("vision/config.json"))
        };
        assert!(vision(r#"{"vision_config": {}, "qformer_config": {}}"#).is_ok());
        for (json, want) in [
            (
                r#"{"vision_config": {"num_hidden_layers": 5000}, "qformer_config": {}}"#,
                "vision_config.num_hidden_layers 5000",
            ),
            (
                r#"{"vision_config": {}, "qformer_config": {"intermediate_size": 99999999}}"#,
                "qformer_config.intermediate_size 99999999",
            ),
            (r#"{"vision_config": {}, "qformer_config": {}, "num_query_tokens": 100000}"#, "num_query_tokens 100000"),
            (r#"{"vision_config": {"layer_norm_eps": 2.0}, "qformer_config": {}}"#, "vision_config.layer_norm_eps 2"),
        ] {
            let err = vision(json).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
    }
}
