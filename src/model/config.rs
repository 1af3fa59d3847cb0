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
    /// name instead of surfacing as a shape error deep in a matmul.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::Config { path: path.to_path_buf(), msg });
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
        let q = &self.qformer_config;
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

/// Reads and parses a config.json, naming the file in every error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
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
