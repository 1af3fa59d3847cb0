//! Small building blocks shared by the three networks, loaded through [`Weights`].

use candle_core::{DType, Module, Result as CResult, Tensor};
use candle_nn::{Embedding, LayerNorm, RmsNorm};

use super::weights::Weights;
use crate::error::Result;

/// A dense layer `y = x Wᵀ + b`, weights laid out (out, in) as PyTorch stores them.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = w.get((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(w.get(out_dim, "bias")?) } else { None };
        Ok(Self::from_parts(weight, bias))
    }

    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { inner: candle_nn::Linear::new(weight, bias) }
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// Bytes the weight occupies.
    pub fn weight_bytes(&self) -> u64 {
        (self.inner.weight().elem_count() * self.inner.weight().dtype().size_in_bytes()) as u64
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> CResult<Tensor> {
        self.inner.forward(xs)
    }
}

/// LayerNorm with weight and bias. Its parameters are kept in f32 and the input is normalised in
/// f32, as PyTorch does for half-precision inputs, then cast back.
#[derive(Debug, Clone)]
pub struct F32LayerNorm(LayerNorm);

impl F32LayerNorm {
    pub fn load(w: &Weights, size: usize, eps: f64) -> Result<Self> {
        let w32 = w.with_dtype(DType::F32);
        Ok(Self(LayerNorm::new(w32.get(size, "weight")?, w32.get(size, "bias")?, eps)))
    }
}

impl Module for F32LayerNorm {
    fn forward(&self, xs: &Tensor) -> CResult<Tensor> {
        let dtype = xs.dtype();
        self.0.forward(&xs.to_dtype(DType::F32)?)?.to_dtype(dtype)
    }
}

/// LLaMA's RMSNorm, computed in f32 like the HF implementation (`hidden_states.to(torch.float32)`).
#[derive(Debug, Clone)]
pub struct F32RmsNorm(RmsNorm);

impl F32RmsNorm {
    pub fn load(w: &Weights, size: usize, eps: f64) -> Result<Self> {
        Ok(Self(RmsNorm::new(w.with_dtype(DType::F32).get(size, "weight")?, eps)))
    }
}

impl Module for F32RmsNorm {
    fn forward(&self, xs: &Tensor) -> CResult<Tensor> {
        let dtype = xs.dtype();
        self.0.forward(&xs.to_dtype(DType::F32)?)?.to_dtype(dtype)
    }
}

pub fn embedding(w: &Weights, vocab: usize, hidden: usize) -> Result<Embedding> {
    Ok(Embedding::new(w.get((vocab, hidden), "weight")?, hidden))
}

/// Scaled dot-product attention over (batch, heads, seq, head_dim) tensors. The scores are scaled
/// after the product and normalised in f32, as transformers' eager attention does.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: Option<&Tensor>) -> CResult<Tensor> {
    let dtype = q.dtype();
    let scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    probs.matmul(&v.contiguous()?)
}

/// Splits (batch, seq, heads*head_dim) into (batch, heads, seq, head_dim).
pub fn split_heads(xs: &Tensor, heads: usize) -> CResult<Tensor> {
    let (b, t, d) = xs.dims3()?;
    xs.reshape((b, t, heads, d / heads))?.transpose(1, 2)?.contiguous()
}

/// The inverse of [`split_heads`].
pub fn merge_heads(xs: &Tensor) -> CResult<Tensor> {
    let (b, h, t, hd) = xs.dims4()?;
    xs.transpose(1, 2)?.reshape((b, t, h * hd))
}

/// Index of the largest value, the first one on ties (as `torch.argmax`).
pub fn argmax(values: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}
