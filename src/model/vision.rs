//! The EVA ViT-g vision tower of BLIP-2 (`Blip2VisionModel`): patch convolution, class token,
//! learned positions, pre-norm transformer blocks, and a final LayerNorm applied to every token
//! (the Q-Former cross-attends to all of them).

use candle_core::{Module, Result as CResult, Tensor};
use candle_nn::{Activation, Conv2d, Conv2dConfig};

use super::config::VisionConfig;
use super::layers::{encoder_attention, F32LayerNorm, Linear};
use super::weights::Weights;
use crate::error::{Error, Result};

struct Embeddings {
    patch: Conv2d,
    class_embedding: Tensor,
    position_embedding: Tensor,
}

impl Embeddings {
    fn load(w: &Weights, cfg: &VisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        let positions = (cfg.image_size / p).pow(2) + 1;
        let conv_cfg = Conv2dConfig { stride: p, ..Default::default() };
        let pw = w.pp("patch_embedding");
        let patch = Conv2d::new(pw.get((d, 3, p, p), "weight")?, Some(pw.get(d, "bias")?), conv_cfg);
        Ok(Self {
            patch,
            class_embedding: w.get((1, 1, d), "class_embedding")?,
            position_embedding: w.get((1, positions, d), "position_embedding")?,
        })
    }

    fn forward(&self, pixel_values: &Tensor) -> CResult<Tensor> {
        let patches = self.patch.forward(pixel_values)?; // (b, d, h/p, w/p)
        let patches = patches.flatten_from(2)?.transpose(1, 2)?; // (b, n, d)
        let (b, _, d) = patches.dims3()?;
        let cls = self.class_embedding.expand((b, 1, d))?;
        Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.position_embedding)
    }
}

struct Attention {
    qkv: Linear,
    projection: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn load(w: &Weights, cfg: &VisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let qkv_w = w.pp("qkv").linear_weight((3 * d, d), "weight")?;
        // The 2023 checkpoints store `q_bias` and `v_bias`; the key has no bias. Newer
        // transformers saves one `qkv.bias` (with a zero key third). Accept both.
        let qkv_b = if w.contains("qkv.bias") {
            Some(w.pp("qkv").get(3 * d, "bias")?)
        } else if w.contains("q_bias") || w.contains("v_bias") {
            let q = w.get(d, "q_bias")?;
            let v = w.get(d, "v_bias")?;
            Some(Tensor::cat(&[&q, &q.zeros_like()?, &v], 0)?)
        } else if cfg.qkv_bias {
            return Err(Error::checkpoint(
                w.checkpoint().dir(),
                format!(
                    "vision_config.qkv_bias is true but neither `{}` nor `{}`/`{}` is in the weights",
                    w.path("qkv.bias"),
                    w.path("q_bias"),
                    w.path("v_bias")
                ),
            ));
        } else {
            None
        };
        Ok(Self {
            // One (3d, d) product as the checkpoint stores it; f16 on the CPU on our kernels too.
            qkv: Linear::new(qkv_w, qkv_b)?.for_batches(),
            projection: Linear::load(&w.pp("projection"), d, d, true)?.for_batches(),
            heads: cfg.num_attention_heads,
            scale: ((d / cfg.num_attention_heads) as f64).powf(-0.5),
        })
    }

    /// `residual + attention(xs)`, the residual added as the projection writes its results.
    fn forward_plus(&self, xs: &Tensor, residual: &Tensor) -> CResult<Tensor> {
        let d = xs.dim(2)?;
        // (b, t, 3d): q, k, v are its thirds, read in place.
        let qkv = self.qkv.forward(xs)?;
        let (q, k, v) = (qkv.narrow(2, 0, d)?, qkv.narrow(2, d, d)?, qkv.narrow(2, 2 * d, d)?);
        self.projection.forward_plus(&encoder_attention(&q, &k, &v, self.heads, self.scale)?, residual)
    }
}

struct EncoderLayer {
    layer_norm1: F32LayerNorm,
    self_attn: Attention,
    layer_norm2: F32LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    fn load(w: &Weights, cfg: &VisionConfig) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            layer_norm1: F32LayerNorm::load(&w.pp("layer_norm1"), d, cfg.layer_norm_eps)?,
            self_attn: Attention::load(&w.pp("self_attn"), cfg)?,
            layer_norm2: F32LayerNorm::load(&w.pp("layer_norm2"), d, cfg.layer_norm_eps)?,
            fc1: Linear::load(&w.pp("mlp.fc1"), d, i, true)?.for_batches(),
            fc2: Linear::load(&w.pp("mlp.fc2"), i, d, true)?.for_batches(),
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor) -> CResult<Tensor> {
        let h = self.self_attn.forward_plus(&self.layer_norm1.forward(xs)?, xs)?;
        let m = self.fc1.forward_then(self.act, &self.layer_norm2.forward(&h)?)?;
        self.fc2.forward_plus(&m, &h)
    }
}

/// `Blip2VisionModel`: pixel values (b, 3, s, s) → image features (b, 1 + (s/p)², hidden).
pub struct VisionModel {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    post_layernorm: F32LayerNorm,
}

impl VisionModel {
    /// `w` points at `vision_model`.
    pub fn load(w: &Weights, cfg: &VisionConfig) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(&w.pp("encoder.layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: Embeddings::load(&w.pp("embeddings"), cfg)?,
            layers,
            post_layernorm: F32LayerNorm::load(&w.pp("post_layernorm"), cfg.hidden_size, cfg.layer_norm_eps)?,
        })
    }

    pub fn forward(&self, pixel_values: &Tensor) -> CResult<Tensor> {
        let mut xs = self.embeddings.forward(pixel_values)?;
        for layer in &self.layers {
            xs = layer.forward(&xs)?;
        }
        self.post_layernorm.forward(&xs)
    }
}
