//! Small building blocks shared by the three networks, loaded through [`Weights`].

use std::borrow::Cow;

use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{CpuStorage, DType, Module, Result as CResult, Storage, Tensor};
use candle_nn::{Activation, Embedding, LayerNorm, RmsNorm};

use super::kernels::{full_attention, CpuMatMul, CpuWeight, Format, FullAttention, GeluErf, Isa, SiluMul};
use super::weights::Weights;
use crate::error::Result;

pub use crate::quant::Quant;

/// A linear layer `y = x Wᵀ + b`, weights laid out (out, in) as PyTorch stores them; the weight is
/// either a plain tensor or quantized (block formats). On the CPU, quantized and f16 weights are
/// held once (quantized ones in their GGUF block layout) and multiplied by our own kernels
/// ([`super::kernels`], `Cpu`); on a GPU candle's kernels do it (`Dense`, `Quantized`).
#[derive(Debug, Clone)]
pub enum Linear {
    Dense(candle_nn::Linear),
    Quantized {
        weight: QMatMul,
        bias: Option<Tensor>,
        bytes: u64,
    },
    /// The bias, if any, lives in the op (added as the product is written).
    Cpu {
        op: CpuMatMul,
    },
}

impl Linear {
    /// A dense layer. f16 and f32 weights on the CPU go to our kernels (f32 accumulation; f16 on
    /// a 13B-shaped layer about 3x candle's speed for one token and 1.7x for a 512-token prefill,
    /// f32 decode of the medium model 2.6x, on a 2-core AVX-512 machine); bf16 weights and
    /// every GPU stay with candle.
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = w.linear_weight((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(w.get(out_dim, "bias")?) } else { None };
        Self::new(weight, bias)
    }

    /// A dense layer from a weight (out, in) already in its running dtype and device, on our
    /// kernels where [`Linear::load`] would put it.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        if weight.device().is_cpu() && matches!(weight.dtype(), DType::F16 | DType::F32) && own_cpu_kernels() {
            let cw = dense_cpu(&weight)?;
            drop(weight);
            return Self::cpu(cw, bias);
        }
        Ok(Self::from_parts(weight, bias))
    }

    /// Like [`Linear::load`], quantizing the weight when `quant` is set. The f32 copy needed for
    /// quantizing exists for one tensor at a time, on the CPU; its rows are quantized on every
    /// core.
    pub fn load_quantized(w: &Weights, in_dim: usize, out_dim: usize, quant: Option<Quant>) -> Result<Self> {
        if let Some(qt) = w.get_quantized((out_dim, in_dim), "weight")? {
            if w.device.is_cpu() && own_cpu_kernels() && Format::from_ggml(qt.dtype()).is_some_and(Format::is_quantized)
            {
                // The kernels keep their own (aligned) copy of the bytes; the QTensor goes.
                return Self::cpu(CpuWeight::from_qtensor(&qt)?, None);
            }
            let bytes = qt.storage_size_in_bytes() as u64;
            return Ok(Self::Quantized { weight: QMatMul::from_qtensor(qt)?, bias: None, bytes });
        }
        // Rows the format's blocks do not divide fall back to q8_0, or stay dense.
        let Some(q) = quant.and_then(|q| q.for_rows(in_dim)) else { return Self::load(w, in_dim, out_dim, false) };
        let full = w.on_cpu(DType::F32).get((out_dim, in_dim), "weight")?;
        let cw = quantize_f32(&full, q)?;
        drop(full);
        Self::from_cpu_weight(cw, &w.device)
    }

    /// A quantized weight made by [`quantize_f32`]: kept as it is on the CPU, uploaded as a
    /// candle `QTensor` elsewhere.
    pub fn from_cpu_weight(cw: CpuWeight, device: &candle_core::Device) -> Result<Self> {
        if device.is_cpu() && own_cpu_kernels() {
            return Self::cpu(cw, None);
        }
        let storage = QStorage::from_data(Cow::Borrowed(cw.bytes()), device, cw.format().ggml())?;
        let qt = QTensor::new(storage, (cw.rows(), cw.cols()))?;
        let bytes = qt.storage_size_in_bytes() as u64;
        Ok(Self::Quantized { weight: QMatMul::from_qtensor(qt)?, bias: None, bytes })
    }

    fn cpu(w: CpuWeight, bias: Option<Tensor>) -> Result<Self> {
        let op = match bias {
            Some(b) => CpuMatMul::with_bias(w, b.to_dtype(DType::F32)?.to_vec1::<f32>()?)?,
            None => CpuMatMul::new(w),
        };
        Ok(Self::Cpu { op })
    }

    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self::Dense(candle_nn::Linear::new(weight, bias))
    }

    /// This layer with its CPU f32 weight laid out for batches of tokens
    /// ([`CpuMatMul::for_batches`]): for the encoders' layers, which only ever see the image's
    /// tokens or the queries, never one token at a time. Other layers are returned as they are.
    pub fn for_batches(self) -> Self {
        match self {
            Self::Cpu { op } => Self::Cpu { op: op.for_batches() },
            other => other,
        }
    }

    /// `act(self(xs))`. On our CPU kernels with f32 activations the exact GELU is applied as
    /// the product writes its results (the encoders' MLP: no pass and no tensor of its own);
    /// otherwise as [`activate`] does it.
    pub fn forward_then(&self, act: Activation, xs: &Tensor) -> CResult<Tensor> {
        match self {
            Self::Cpu { op } if matches!(act, Activation::Gelu) && xs.dtype() == DType::F32 => {
                xs.contiguous()?.apply_op1_no_bwd(&op.clone().then_gelu())
            }
            _ => activate(act, &self.forward(xs)?),
        }
    }

    /// `residual + self(xs)`. On our CPU kernels with f32 tensors the residual is added as the
    /// product writes its results (the encoders' skip connections); the same bits either way.
    pub fn forward_plus(&self, xs: &Tensor, residual: &Tensor) -> CResult<Tensor> {
        match self {
            Self::Cpu { op } if xs.dtype() == DType::F32 && residual.dtype() == DType::F32 => {
                xs.contiguous()?.apply_op2_no_bwd(&residual.contiguous()?, &op.plus())
            }
            _ => residual + self.forward(xs)?,
        }
    }

    /// Bytes the weight occupies.
    pub fn weight_bytes(&self) -> u64 {
        match self {
            Self::Dense(l) => (l.weight().elem_count() * l.weight().dtype().size_in_bytes()) as u64,
            Self::Quantized { bytes, .. } => *bytes,
            Self::Cpu { op } => op.weight().size_in_bytes() as u64,
        }
    }
}

/// `act(xs)`. The exact GELU on f32 CPU tensors runs on our kernel ([`GeluErf`]: candle's is one
/// thread calling libm's `erff` per element, about 0.8 s of the ViT-g image step's 4.7); everything
/// else is candle's.
pub fn activate(act: Activation, xs: &Tensor) -> CResult<Tensor> {
    match act {
        Activation::Gelu if xs.device().is_cpu() && xs.dtype() == DType::F32 && own_cpu_kernels() => {
            xs.contiguous()?.apply_op1_no_bwd(&GeluErf)
        }
        _ => act.forward(xs),
    }
}

/// `act(gate) · up`, LLaMA's gated MLP product. SiLU on f32 CPU tensors runs fused on our kernel
/// ([`SiluMul`]: candle's `silu` is one thread calling `expf` per element, then a second pass
/// multiplies); everything else is candle's.
pub fn gated(act: Activation, gate: &Tensor, up: &Tensor) -> CResult<Tensor> {
    match act {
        Activation::Silu
            if gate.device().is_cpu()
                && gate.dtype() == DType::F32
                && up.dtype() == DType::F32
                && own_cpu_kernels() =>
        {
            gate.contiguous()?.apply_op2_no_bwd(&up.contiguous()?, &SiluMul)
        }
        _ => act.forward(gate)? * up,
    }
}

/// Whether linear layers on the CPU use our kernels: yes unless `ZIYA_VISUAL_CPU_KERNELS=candle`,
/// which keeps candle's (QMatMul with its repacked copies, candle's dense matmul) for comparing
/// the two in one binary. Read once.
pub fn own_cpu_kernels() -> bool {
    static OWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| std::env::var("ZIYA_VISUAL_CPU_KERNELS").as_deref() != Ok("candle"))
}

/// A 2-D f16 or f32 CPU tensor (out, in) as a kernel weight, copied straight from its storage.
fn dense_cpu(t: &Tensor) -> Result<CpuWeight> {
    let (rows, cols) = t.dims2()?;
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let span = layout.start_offset()..layout.start_offset() + rows * cols;
    Ok(match &*storage {
        Storage::Cpu(CpuStorage::F16(data)) => CpuWeight::from_f16(rows, cols, &data[span])?,
        Storage::Cpu(CpuStorage::F32(data)) => CpuWeight::from_f32(Format::F32, rows, cols, &data[span])?,
        _ => return Err(candle_core::Error::Msg("expected an f16 or f32 tensor on the CPU".into()).into()),
    })
}

/// Quantizes a 2-D f32 CPU tensor (out, in) to `q`, rows spread over the kernels' thread pool;
/// the bytes are those candle's `QTensor::quantize` writes.
pub fn quantize_f32(t: &Tensor, q: Quant) -> Result<CpuWeight> {
    let (rows, cols) = t.dims2()?;
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return Err(candle_core::Error::Msg("quantize: expected an f32 tensor on the CPU".into()).into());
    };
    let start = layout.start_offset();
    let format = Format::from_ggml(q.ggml()).ok_or_else(|| candle_core::Error::Msg(format!("{q:?}")))?;
    Ok(CpuWeight::from_f32(format, rows, cols, &data[start..start + rows * cols])?)
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> CResult<Tensor> {
        match self {
            Self::Dense(l) => l.forward(xs),
            Self::Quantized { weight, bias, .. } => {
                // Quantized kernels take f32 on every backend; the result goes back to the
                // activations' dtype.
                let dtype = xs.dtype();
                let ys = weight.forward(&xs.to_dtype(DType::F32)?.contiguous()?)?.to_dtype(dtype)?;
                match bias {
                    Some(b) => ys.broadcast_add(b),
                    None => Ok(ys),
                }
            }
            // f32, f16 and bf16 activations in, the same dtype out; f32 inside.
            Self::Cpu { op } => xs.contiguous()?.apply_op1_no_bwd(op),
        }
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
    // At most two (heads, queries, keys) f32 buffers alive at once (a 512-position chunk of a
    // 13B layer at 2048 keys: 168 MB each): each step's input is dropped as soon as it is used,
    // which the planner counts on.
    let mut scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?;
    if let Some(m) = mask {
        scores = scores.broadcast_add(m)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    drop(scores);
    probs.to_dtype(dtype)?.matmul(&v.contiguous()?)
}

/// Unmasked multi-head attention of the encoders (the ViT, the Q-Former) on (batch, tokens,
/// heads · head_dim) tensors, heads merged in the result. q, k and v may be views whose rows are
/// evenly spaced, such as the thirds of a fused qkv projection (`narrow` on the last
/// dimension). f32 on an AVX-512 CPU runs on our kernel ([`FullAttention`], reading the
/// projections in place); everything else splits the heads and runs [`attention`].
pub fn encoder_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> CResult<Tensor> {
    let (_, _, width) = q.dims3()?;
    let own = q.device().is_cpu()
        && [q, k, v].iter().all(|t| t.dtype() == DType::F32)
        && heads > 0
        && width.is_multiple_of(heads)
        && cpu_attention_in_place(DType::F32, width / heads);
    if own {
        return q.apply_op3_no_bwd(k, v, &FullAttention { heads, scale: scale as f32 });
    }
    let out = attention(&split_heads(q, heads)?, &split_heads(k, heads)?, &split_heads(v, heads)?, scale, None)?;
    merge_heads(&out)
}

/// Whether CPU attention in `dtype` with heads of `head_dim` runs on our kernel
/// ([`full_attention`]: f32, AVX-512, own kernels not switched off), reading q, k and v where
/// they lie. Then no (heads, queries, keys) score buffers and no f32 copies of cached keys and
/// values exist; the memory planner asks the same question.
pub fn cpu_attention_in_place(dtype: DType, head_dim: usize) -> bool {
    dtype == DType::F32 && own_cpu_kernels() && full_attention::applies(Isa::detect(), head_dim)
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

#[cfg(test)]
mod quant_tests {
    use super::*;

    #[test]
    fn k_quants_fall_back_where_their_blocks_do_not_divide_the_rows() {
        assert_eq!(Quant::Q4K.for_rows(5120), Some(Quant::Q4K));
        assert_eq!(Quant::Q4K.for_rows(5504), Some(Quant::Q8_0));
        assert_eq!(Quant::Q6K.for_rows(100), None);
        assert_eq!(Quant::Q8_0.for_rows(96), Some(Quant::Q8_0));
        assert_eq!(Quant::Q4K.bytes(256), 144);
        assert_eq!(Quant::Q8_0.bytes(32), 34);
    }
}
