//! The BLIP-2 Q-Former (`Blip2QFormerModel`) as used with query tokens only: a LayerNorm on the
//! learned queries, then post-norm BERT layers whose every `cross_attention_frequency`-th layer
//! also attends (unmasked) to the image features, and a query-path feed-forward block.

use candle_core::{Module, Result as CResult, Tensor};
use candle_nn::Activation;

use super::config::QFormerConfig;
use super::layers::{encoder_attention, F32LayerNorm, Linear};
use super::weights::Weights;
use crate::error::Result;

/// Multi-head attention plus its BERT output block: `LayerNorm(dense(attn) + input)`.
struct AttentionBlock {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    norm: F32LayerNorm,
    heads: usize,
    scale: f64,
}

impl AttentionBlock {
    /// `kv_dim` is the width of what keys and values are computed from: the Q-Former's own
    /// hidden size for self-attention, the vision width for cross-attention.
    fn load(w: &Weights, cfg: &QFormerConfig, kv_dim: usize) -> Result<Self> {
        let d = cfg.hidden_size;
        let a = w.pp("attention");
        let o = w.pp("output");
        Ok(Self {
            query: Linear::load(&a.pp("query"), d, d, true)?.for_batches(),
            key: Linear::load(&a.pp("key"), kv_dim, d, true)?.for_batches(),
            value: Linear::load(&a.pp("value"), kv_dim, d, true)?.for_batches(),
            dense: Linear::load(&o.pp("dense"), d, d, true)?.for_batches(),
            norm: F32LayerNorm::load(&o.pp("LayerNorm"), d, cfg.layer_norm_eps)?,
            heads: cfg.num_attention_heads,
            scale: ((d / cfg.num_attention_heads) as f64).powf(-0.5),
        })
    }

    fn forward(&self, hidden: &Tensor, kv_source: &Tensor) -> CResult<Tensor> {
        let q = self.query.forward(hidden)?;
        let k = self.key.forward(kv_source)?;
        let v = self.value.forward(kv_source)?;
        let ctx = encoder_attention(&q, &k, &v, self.heads, self.scale)?;
        self.norm.forward(&self.dense.forward_plus(&ctx, hidden)?)
    }
}

struct Layer {
    attention: AttentionBlock,
    crossattention: Option<AttentionBlock>,
    intermediate: Linear,
    output: Linear,
    output_norm: F32LayerNorm,
    act: Activation,
}

impl Layer {
    fn load(w: &Weights, cfg: &QFormerConfig, index: usize) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        let crossattention = if index.is_multiple_of(cfg.cross_attention_frequency) {
            Some(AttentionBlock::load(&w.pp("crossattention"), cfg, cfg.encoder_hidden_size)?)
        } else {
            None
        };
        Ok(Self {
            attention: AttentionBlock::load(&w.pp("attention"), cfg, d)?,
            crossattention,
            intermediate: Linear::load(&w.pp("intermediate_query.dense"), d, i, true)?.for_batches(),
            output: Linear::load(&w.pp("output_query.dense"), i, d, true)?.for_batches(),
            output_norm: F32LayerNorm::load(&w.pp("output_query.LayerNorm"), d, cfg.layer_norm_eps)?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, hidden: &Tensor, image: &Tensor) -> CResult<Tensor> {
        let mut h = self.attention.forward(hidden, hidden)?;
        if let Some(cross) = &self.crossattention {
            h = cross.forward(&h, image)?;
        }
        let ff = self.intermediate.forward_then(self.act, &h)?;
        self.output_norm.forward(&self.output.forward_plus(&ff, &h)?)
    }
}

/// `Blip2QFormerModel` fed with the learned query tokens.
pub struct QFormer {
    layernorm: F32LayerNorm,
    layers: Vec<Layer>,
}

impl QFormer {
    /// `w` points at `qformer`.
    pub fn load(w: &Weights, cfg: &QFormerConfig) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(&w.pp("encoder.layer").pp(i), cfg, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layernorm: F32LayerNorm::load(&w.pp("layernorm"), cfg.hidden_size, cfg.layer_norm_eps)?, layers })
    }

    /// queries (b, q, hidden), image features (b, n, vision hidden) → (b, q, hidden).
    pub fn forward(&self, queries: &Tensor, image: &Tensor) -> CResult<Tensor> {
        let mut h = self.layernorm.forward(queries)?;
        for layer in &self.layers {
            h = layer.forward(&h, image)?;
        }
        Ok(h)
    }
}
