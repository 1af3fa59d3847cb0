//! A LLaMA decoder (`LlamaForCausalLM`) that takes input embeddings, so image embeddings can sit
//! between text tokens, and keeps its keys and values in a [`KvCache`] owned by the caller.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result as CResult, Tensor};
use candle_nn::{Activation, Embedding};

use super::config::LlamaConfig;
use super::kernels::{self, attention_decode, full_attention, CpuMatMul, CpuWeight, Isa, KvView};
use super::layers::{
    attention, cpu_attention_in_place, embedding, gated, merge_heads, quantize_f32, F32RmsNorm, Linear, Quant,
};
use super::weights::Weights;
use crate::device::KvPrecision;
use crate::error::{Error, Result};

/// Keys and values of every layer for the positions computed so far. On the CPU each layer's
/// buffers are reserved for the model's whole context when first written (zeroed memory that the
/// OS only commits as positions are written, so a short chat costs what it holds), and are never
/// grown or copied afterwards; a GPU's buffers grow in [`CACHE_STEP`] steps. The cache can be
/// truncated, so a new prompt that starts with the cached positions only computes the rest.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
}

#[derive(Default)]
struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

/// Positions added to a GPU cache buffer at a time when it must grow (the planner sizes by it too).
pub const CACHE_STEP: usize = 256;

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        for layer in &mut self.layers {
            layer.len = layer.len.min(len);
        }
    }

    pub fn clear(&mut self) {
        self.layers.clear();
    }

    /// Positions the buffers can hold without growing (0 before the first forward pass).
    pub fn capacity(&self) -> usize {
        self.layers.first().and_then(|l| l.k.as_ref()).map_or(0, |k| k.dim(2).unwrap_or(0))
    }

    fn layer(&mut self, i: usize) -> &mut LayerCache {
        if self.layers.len() <= i {
            self.layers.resize_with(i + 1, LayerCache::default);
        }
        &mut self.layers[i]
    }
}

/// K and V buffers (1, kv_heads, capacity, head_dim) of zeros in `dtype` on the CPU, as two views
/// of one allocation. The allocation is zeroed by the allocator (`calloc`), which for buffers this
/// size maps fresh pages: they cost resident memory only once written. (candle's `zeros` writes
/// its f16 zeros, committing every page at once.)
fn cpu_kv_buffers(kv_heads: usize, capacity: usize, head_dim: usize, dtype: DType) -> CResult<(Tensor, Tensor)> {
    let shape = (2, kv_heads, capacity, head_dim);
    let n = 2 * kv_heads * capacity * head_dim;
    let both = match dtype {
        DType::F16 => {
            use half::vec::HalfBitsVecExt;
            Tensor::from_vec(vec![0u16; n].reinterpret_into::<half::f16>(), shape, &Device::Cpu)?
        }
        DType::F32 => Tensor::from_vec(vec![0f32; n], shape, &Device::Cpu)?,
        other => Tensor::zeros(shape, other, &Device::Cpu)?,
    };
    Ok((both.narrow(0, 0, 1)?, both.narrow(0, 1, 1)?))
}

impl LayerCache {
    /// Appends (1, kv_heads, n, head_dim) keys and values, stored in `dtype`; returns the whole
    /// (1, kv_heads, capacity, head_dim) buffers, of which the first [`Self::len`] positions are
    /// valid. On the CPU the buffers are made for `context` positions at once; elsewhere they grow
    /// in steps. Either way one decode step copies nothing but its own keys and values.
    fn append(&mut self, k: &Tensor, v: &Tensor, dtype: DType, context: usize) -> CResult<(Tensor, Tensor)> {
        let n = k.dim(2)?;
        let need = self.len + n;
        let same_dtype = self.k.as_ref().is_none_or(|t| t.dtype() == dtype);
        let capacity = self.k.as_ref().filter(|_| same_dtype).map_or(0, |t| t.dim(2).unwrap_or(0));
        if need > capacity {
            let (b, h, _, d) = k.dims4()?;
            let (kb, vb) = if k.device().is_cpu() && b == 1 {
                cpu_kv_buffers(h, need.max(context), d, dtype)?
            } else {
                let new_cap = need.next_multiple_of(CACHE_STEP).max(capacity * 2);
                let zeros = || Tensor::zeros((b, h, new_cap, d), dtype, k.device());
                (zeros()?, zeros()?)
            };
            for (buf, old) in [(&kb, &self.k), (&vb, &self.v)] {
                if let Some(old) = old.as_ref().filter(|_| self.len > 0) {
                    buf.slice_set(&old.narrow(2, 0, self.len)?.to_dtype(dtype)?.contiguous()?, 2, 0)?;
                }
            }
            self.k = Some(kb);
            self.v = Some(vb);
        }
        let (kb, vb) = match (&self.k, &self.v) {
            (Some(kb), Some(vb)) => (kb, vb),
            _ => candle_core::bail!("kv cache buffers missing after growth"),
        };
        kb.slice_set(&k.to_dtype(dtype)?.contiguous()?, 2, self.len)?;
        vb.slice_set(&v.to_dtype(dtype)?.contiguous()?, 2, self.len)?;
        self.len = need;
        Ok((kb.clone(), vb.clone()))
    }
}

/// One query position (1, heads, 1, head_dim) against the first `len` positions of CPU cache
/// buffers (1, kv_heads, capacity, head_dim), read where they are by the decode attention
/// kernel (grouped heads share their key/value head; nothing is repeated or copied).
fn decode_attention_cpu(q: &Tensor, kb: &Tensor, vb: &Tensor, len: usize, scale: f32) -> CResult<Tensor> {
    use candle_core::{CpuStorage, Storage};
    let (_, heads, _, hd) = q.dims4()?;
    let (_, kv_heads, cap, _) = kb.dims4()?;
    let qv: Vec<f32> = q.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; heads * hd];
    let span = kv_heads * cap * hd;
    let (ks, kl) = kb.storage_and_layout();
    let (vs, vl) = vb.storage_and_layout();
    if !kl.is_contiguous() || !vl.is_contiguous() {
        candle_core::bail!("kv cache buffers must be contiguous")
    }
    let (ko, vo) = (kl.start_offset(), vl.start_offset());
    match (&*ks, &*vs) {
        (Storage::Cpu(CpuStorage::F16(k)), Storage::Cpu(CpuStorage::F16(v))) => {
            let kv = KvView::f16(&k[ko..ko + span], kv_heads, cap, hd);
            let vv = KvView::f16(&v[vo..vo + span], kv_heads, cap, hd);
            attention_decode(&qv, heads, &kv, &vv, len, scale, &mut out)?
        }
        (Storage::Cpu(CpuStorage::F32(k)), Storage::Cpu(CpuStorage::F32(v))) => {
            let kv = KvView::f32(&k[ko..ko + span], kv_heads, cap, hd);
            let vv = KvView::f32(&v[vo..vo + span], kv_heads, cap, hd);
            attention_decode(&qv, heads, &kv, &vv, len, scale, &mut out)?
        }
        _ => candle_core::bail!("decode attention: the KV cache must be f16 or f32 on the CPU"),
    }
    drop((ks, vs));
    Tensor::from_vec(out, (1, heads, 1, hd), q.device())?.to_dtype(q.dtype())
}

/// Prefill attention on the CPU: queries (1, heads, n, head_dim) in f32 at positions `offset ..
/// offset + n`, each over the cache's positions up to its own (the first `len` of the buffers,
/// read in place in f16 or f32), on our kernel ([`full_attention`]). Returns (1, n, heads ·
/// head_dim), heads merged. None where the kernel does not apply (then candle's path runs).
fn prefill_attention_cpu(
    q: &Tensor,
    kb: &Tensor,
    vb: &Tensor,
    (offset, len): (usize, usize),
    scale: f32,
) -> CResult<Option<Tensor>> {
    use candle_core::{CpuStorage, Storage};
    use full_attention::{Dims, Elems, Rows};
    let (b, heads, n, hd) = q.dims4()?;
    let (_, kv_heads, cap, _) = kb.dims4()?;
    if b != 1 || !cpu_attention_in_place(q.dtype(), hd) {
        return Ok(None);
    }
    let isa = Isa::detect();
    let q = q.contiguous()?;
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = kb.storage_and_layout();
    let (vs, vl) = vb.storage_and_layout();
    if !kl.is_contiguous() || !vl.is_contiguous() {
        candle_core::bail!("kv cache buffers must be contiguous")
    }
    let span = kv_heads * cap * hd;
    let (qo, ko, vo) = (ql.start_offset(), kl.start_offset(), vl.start_offset());
    let Storage::Cpu(CpuStorage::F32(qd)) = &*qs else { return Ok(None) };
    fn rows(data: Elems<'_>, hd: usize, head_stride: usize) -> Rows<'_> {
        Rows { data, stride: hd, head_stride, offset: 0 }
    }
    let (kd, vd) = match (&*ks, &*vs) {
        (Storage::Cpu(CpuStorage::F16(k)), Storage::Cpu(CpuStorage::F16(v))) => {
            (Elems::F16(&k[ko..ko + span]), Elems::F16(&v[vo..vo + span]))
        }
        (Storage::Cpu(CpuStorage::F32(k)), Storage::Cpu(CpuStorage::F32(v))) => {
            (Elems::F32(&k[ko..ko + span]), Elems::F32(&v[vo..vo + span]))
        }
        _ => return Ok(None),
    };
    let dims = Dims { batch: 1, tq: n, tk: len, heads, kv_heads, head_dim: hd, causal_offset: Some(offset) };
    let mut out = vec![0f32; n * heads * hd];
    full_attention::full_attention(
        isa,
        kernels::pool::global(),
        rows(Elems::F32(&qd[qo..qo + heads * n * hd]), hd, n * hd),
        rows(kd, hd, cap * hd),
        rows(vd, hd, cap * hd),
        dims,
        scale,
        &mut out,
    )?;
    drop((qs, ks, vs));
    Ok(Some(Tensor::from_vec(out, (1, n, heads * hd), q.device())?))
}

struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Positions the model can attend over (a CPU cache is made this long at once).
    context: usize,
}

impl SelfAttention {
    fn load(w: &Weights, cfg: &LlamaConfig, q: Option<Quant>) -> Result<Self> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let kv = cfg.num_kv_heads() * hd;
        Ok(Self {
            q_proj: Linear::load_quantized(&w.pp("q_proj"), d, d, q)?,
            k_proj: Linear::load_quantized(&w.pp("k_proj"), d, kv, q)?,
            v_proj: Linear::load_quantized(&w.pp("v_proj"), d, kv, q)?,
            o_proj: Linear::load_quantized(&w.pp("o_proj"), d, d, q)?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_kv_heads(),
            head_dim: hd,
            context: cfg.max_position_embeddings,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        rope: &Rope,
        offset: usize,
        mask: Option<&CausalMask>,
        cache: &mut LayerCache,
        kv_dtype: DType,
    ) -> CResult<Tensor> {
        let (b, n, _) = xs.dims3()?;
        let shape = |t: Tensor, h: usize| -> CResult<Tensor> {
            t.reshape((b, n, h, self.head_dim))?.transpose(1, 2)?.contiguous()
        };
        let q = shape(self.q_proj.forward(xs)?, self.heads)?;
        let k = shape(self.k_proj.forward(xs)?, self.kv_heads)?;
        let v = shape(self.v_proj.forward(xs)?, self.kv_heads)?;
        let q = rope.apply(&q, offset)?;
        let k = rope.apply(&k, offset)?;
        let (kb, vb) = cache.append(&k, &v, kv_dtype, self.context)?;
        let len = cache.len;
        let scale = (self.head_dim as f64).powf(-0.5);
        let out = if n == 1 && b == 1 && xs.device().is_cpu() {
            decode_attention_cpu(&q, &kb, &vb, len, scale as f32)?
        } else if let Some(merged) = match mask {
            // Our kernel applies the causal limits itself: no mask tensor is built for it.
            Some(_) if xs.device().is_cpu() => prefill_attention_cpu(&q, &kb, &vb, (offset, len), scale as f32)?,
            _ => None,
        } {
            return self.o_proj.forward(&merged);
        } else {
            // Prefill (and GPUs): candle's attention over the valid positions, in q's dtype.
            let k = kb.narrow(2, 0, len)?.to_dtype(q.dtype())?;
            let v = vb.narrow(2, 0, len)?.to_dtype(q.dtype())?;
            let rep = self.heads / self.kv_heads;
            let k = candle_transformers::utils::repeat_kv(k, rep)?;
            let v = candle_transformers::utils::repeat_kv(v, rep)?;
            attention(&q, &k, &v, scale, mask.map(CausalMask::tensor).transpose()?)?
        };
        self.o_proj.forward(&merge_heads(&out)?)
    }
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    fn load(w: &Weights, cfg: &LlamaConfig, q: Option<Quant>) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Linear::load_quantized(&w.pp("gate_proj"), d, i, q)?,
            up_proj: Linear::load_quantized(&w.pp("up_proj"), d, i, q)?,
            down_proj: Linear::load_quantized(&w.pp("down_proj"), i, d, q)?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor) -> CResult<Tensor> {
        let (gate, up) = (self.gate_proj.forward(xs)?, self.up_proj.forward(xs)?);
        self.down_proj.forward(&gated(self.act, &gate, &up)?)
    }
}

struct DecoderLayer {
    input_layernorm: F32RmsNorm,
    self_attn: SelfAttention,
    post_attention_layernorm: F32RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn load(w: &Weights, cfg: &LlamaConfig, q: Option<Quant>) -> Result<Self> {
        let eps = cfg.rms_norm_eps;
        Ok(Self {
            input_layernorm: F32RmsNorm::load(&w.pp("input_layernorm"), cfg.hidden_size, eps)?,
            self_attn: SelfAttention::load(&w.pp("self_attn"), cfg, q)?,
            post_attention_layernorm: F32RmsNorm::load(&w.pp("post_attention_layernorm"), cfg.hidden_size, eps)?,
            mlp: Mlp::load(&w.pp("mlp"), cfg, q)?,
        })
    }
}

/// Rotary position embeddings, `rotate_half` form as HF LLaMA checkpoints expect.
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(cfg: &LlamaConfig, dtype: DType, device: &Device) -> CResult<Self> {
        let hd = cfg.head_dim();
        let max = cfg.max_position_embeddings;
        // As transformers: inv_freq in f32, positions × inv_freq in f32, then cos/sin.
        let inv_freq: Vec<f32> =
            (0..hd).step_by(2).map(|i| 1.0 / (cfg.rope_theta as f32).powf(i as f32 / hd as f32)).collect();
        let mut freqs = Vec::with_capacity(max * hd / 2);
        for p in 0..max {
            freqs.extend(inv_freq.iter().map(|f| p as f32 * f));
        }
        let freqs = Tensor::from_vec(freqs, (max, hd / 2), device)?;
        Ok(Self { cos: freqs.cos()?.to_dtype(dtype)?, sin: freqs.sin()?.to_dtype(dtype)? })
    }

    fn apply(&self, xs: &Tensor, offset: usize) -> CResult<Tensor> {
        let n = xs.dim(2)?;
        let cos = self.cos.narrow(0, offset, n)?;
        let sin = self.sin.narrow(0, offset, n)?;
        candle_nn::rotary_emb::rope(xs, &cos, &sin)
    }
}

/// The token embedding table: a tensor, or on the CPU with a quantization the table in that block
/// format (rows dequantized as they are looked up), shared with a tied LM head.
enum TokenEmbedding {
    Dense(Embedding),
    Quantized(Arc<CpuWeight>),
}

impl TokenEmbedding {
    /// Loads `embed_tokens.weight` (vocab, hidden). On the CPU it stays quantized when the file
    /// holds it so (a GGUF) and is quantized to `quant` when given. A GPU keeps a dense lookup:
    /// a GGUF's table dequantized, or with `quant` the table quantized and dequantized again, so
    /// the values are the same as on the CPU and as from a GGUF.
    fn load(w: &Weights, vocab: usize, hidden: usize, quant: Option<Quant>) -> Result<Self> {
        if w.device.is_cpu() {
            if let Some(qt) = w.get_quantized((vocab, hidden), "weight")? {
                return Ok(Self::Quantized(Arc::new(CpuWeight::from_qtensor(&qt)?)));
            }
        } else if w.checkpoint().quantization().is_some() {
            return Ok(Self::Dense(embedding(w, vocab, hidden)?));
        }
        let Some(q) = quant.and_then(|q| q.for_rows(hidden)) else {
            return Ok(Self::Dense(embedding(w, vocab, hidden)?));
        };
        let cw = quantize_f32(&w.on_cpu(DType::F32).get((vocab, hidden), "weight")?, q)?;
        if w.device.is_cpu() {
            return Ok(Self::Quantized(Arc::new(cw)));
        }
        let table = Tensor::from_vec(cw.dequantize(), (vocab, hidden), &Device::Cpu)?;
        Ok(Self::Dense(Embedding::new(table.to_dtype(w.dtype)?.to_device(&w.device)?, hidden)))
    }

    /// The LM head `x Eᵀ` for tied embeddings, sharing the table.
    fn as_head(&self) -> Linear {
        match self {
            Self::Dense(e) => Linear::from_parts(e.embeddings().clone(), None),
            Self::Quantized(cw) => Linear::Cpu { op: CpuMatMul::from_shared(cw.clone()) },
        }
    }

    /// (1, n, hidden) in `dtype` for ids already checked against the vocabulary.
    fn forward(&self, ids: &[u32], dtype: DType, device: &Device) -> CResult<Tensor> {
        match self {
            Self::Dense(e) => e.forward(&Tensor::new(ids, device)?.unsqueeze(0)?),
            Self::Quantized(cw) => {
                let hidden = cw.cols();
                let mut rows = vec![0f32; ids.len() * hidden];
                for (&id, row) in ids.iter().zip(rows.chunks_exact_mut(hidden)) {
                    cw.dequantize_row(id as usize, row);
                }
                Tensor::from_vec(rows, (1, ids.len(), hidden), device)?.to_dtype(dtype)
            }
        }
    }
}

pub struct Llama {
    embed_tokens: TokenEmbedding,
    layers: Vec<DecoderLayer>,
    norm: F32RmsNorm,
    lm_head: Linear,
    rope: Rope,
    cfg: LlamaConfig,
    device: Device,
    dtype: DType,
    /// The KV cache's dtype (see [`KvPrecision::dtype`]).
    kv_dtype: DType,
    quant: Option<Quant>,
}

impl Llama {
    /// `w` points at the checkpoint root; both `model.`-prefixed (LlamaForCausalLM) and bare
    /// (LlamaModel) tensor names are accepted. With `quant`, every linear layer (the LM head
    /// included) and the embedding table are quantized while loading; norms stay as they are.
    pub fn load(w: &Weights, cfg: &LlamaConfig, quant: Option<Quant>) -> Result<Self> {
        let m = if w.contains("model.embed_tokens.weight") { w.pp("model") } else { w.clone() };
        if !m.contains("embed_tokens.weight") {
            return Err(Error::checkpoint(
                w.checkpoint().dir(),
                "no `model.embed_tokens.weight`: this does not look like a LLaMA checkpoint",
            ));
        }
        let embed_tokens = TokenEmbedding::load(&m.pp("embed_tokens"), cfg.vocab_size, cfg.hidden_size, quant)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(&m.pp("layers").pp(i), cfg, quant))
            .collect::<Result<Vec<_>>>()?;
        let norm = F32RmsNorm::load(&m.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?;
        let lm_head = if w.contains("lm_head.weight") || !cfg.tie_word_embeddings {
            Linear::load_quantized(&w.pp("lm_head"), cfg.hidden_size, cfg.vocab_size, quant)?
        } else {
            embed_tokens.as_head()
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: Rope::new(cfg, w.dtype, &w.device)?,
            cfg: cfg.clone(),
            device: w.device.clone(),
            dtype: w.dtype,
            kv_dtype: KvPrecision::default().dtype(w.dtype, w.device.is_cpu()),
            // A GGUF carries its own quantization.
            quant: quant.or_else(|| w.checkpoint().quantization().and_then(Quant::from_ggml)),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Bytes of weights one decode step reads: every layer and the LM head (the embedding table
    /// is only indexed).
    pub fn weight_bytes_per_token(&self) -> u64 {
        let linears = self.layers.iter().flat_map(|l| {
            [
                &l.self_attn.q_proj,
                &l.self_attn.k_proj,
                &l.self_attn.v_proj,
                &l.self_attn.o_proj,
                &l.mlp.gate_proj,
                &l.mlp.up_proj,
                &l.mlp.down_proj,
            ]
        });
        linears.chain(std::iter::once(&self.lm_head)).map(|l| l.weight_bytes()).sum()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Sets the KV cache's precision (f16 on the CPU unless f32 is asked for an f32 model).
    /// Caches filled before keep working: their buffers convert when they next grow.
    pub fn set_kv(&mut self, kv: KvPrecision) {
        self.kv_dtype = kv.dtype(self.dtype, self.device.is_cpu());
    }

    pub fn kv_dtype(&self) -> DType {
        self.kv_dtype
    }

    pub fn quant(&self) -> Option<Quant> {
        self.quant
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Token embeddings (1, n, hidden) for `ids`; ids outside the vocabulary are an error.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(Error::Request(format!(
                "token id {bad} is outside the model's vocabulary of {} (tokenizer and LLM folder do not match)",
                self.cfg.vocab_size
            )));
        }
        Ok(self.embed_tokens.forward(ids, self.dtype, &self.device)?)
    }

    /// Runs `embeds` (1, n, hidden) after the positions already in `cache`, appends their keys
    /// and values to it, and returns the f32 logits of the last position.
    pub fn forward(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Vec<f32>> {
        let (_, n, _) = embeds.dims3()?;
        let offset = cache.len();
        if offset + n > self.cfg.max_position_embeddings {
            return Err(Error::Request(format!(
                "{} positions exceed the model's context of {}",
                offset + n,
                self.cfg.max_position_embeddings
            )));
        }
        let mask = (n > 1).then(|| CausalMask::new(n, offset, &self.device));
        let mut h = embeds.to_dtype(self.dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let normed = layer.input_layernorm.forward(&h)?;
            let attn =
                layer.self_attn.forward(&normed, &self.rope, offset, mask.as_ref(), cache.layer(i), self.kv_dtype)?;
            h = (h + attn)?;
            let mlp = layer.mlp.forward(&layer.post_attention_layernorm.forward(&h)?)?;
            h = (h + mlp)?;
        }
        let last = h.narrow(1, n - 1, 1)?;
        let logits = self.lm_head.forward(&self.norm.forward(&last)?)?;
        Ok(logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)
    }
}

/// The causal limits of a prefill of `n` positions after `offset`. Our CPU kernel applies them
/// itself; candle's attention (GPUs, other ISAs) needs them as an additive (n, offset + n) mask,
/// built the first time a layer asks and shared by the others. Building it for every prefill
/// cost 4 MB and a pass at 512 x 2048 that the CPU path never read.
struct CausalMask<'a> {
    n: usize,
    offset: usize,
    device: &'a Device,
    tensor: std::cell::OnceCell<Tensor>,
}

impl<'a> CausalMask<'a> {
    fn new(n: usize, offset: usize, device: &'a Device) -> Self {
        Self { n, offset, device, tensor: std::cell::OnceCell::new() }
    }

    fn tensor(&self) -> CResult<&Tensor> {
        if let Some(t) = self.tensor.get() {
            return Ok(t);
        }
        let t = causal_mask(self.n, self.offset, self.device)?;
        Ok(self.tensor.get_or_init(|| t))
    }
}

/// (n, offset + n) additive mask: query i (at position offset + i) sees keys 0..=offset + i.
fn causal_mask(n: usize, offset: usize, device: &Device) -> CResult<Tensor> {
    let total = offset + n;
    let mask: Vec<f32> =
        (0..n).flat_map(|i| (0..total).map(move |j| if j > offset + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (n, total), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::read_llm_config;
    use crate::model::weights::{Checkpoint, LoadCounter};

    fn tiny(dtype: DType) -> Llama {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-ziya/llm");
        let cfg = read_llm_config(&dir).unwrap();
        let ckpt = Arc::new(Checkpoint::open(&dir, Arc::new(LoadCounter::default())).unwrap());
        Llama::load(&Weights::new(ckpt, dtype, &Device::Cpu), &cfg, None).unwrap()
    }

    /// Address of a CPU tensor's storage (the same for views of one buffer).
    fn addr(t: &Tensor) -> usize {
        use candle_core::{CpuStorage, Storage};
        let (s, _) = t.storage_and_layout();
        match &*s {
            Storage::Cpu(CpuStorage::F32(v)) => v.as_ptr() as usize,
            Storage::Cpu(CpuStorage::F16(v)) => v.as_ptr() as usize,
            _ => unreachable!("the tiny model's cache is f32 or f16 on the CPU"),
        }
    }

    #[test]
    fn a_cpu_cache_is_made_for_the_whole_context_once_and_never_moves() {
        let llm = tiny(DType::F32);
        let context = llm.config().max_position_embeddings;
        let mut cache = KvCache::new();
        llm.forward(&llm.embed(&[5, 6, 7]).unwrap(), &mut cache).unwrap();
        assert_eq!(cache.capacity(), context);
        let first = addr(cache.layers[0].k.as_ref().unwrap());
        for id in 8..40 {
            llm.forward(&llm.embed(&[id]).unwrap(), &mut cache).unwrap();
        }
        assert_eq!(cache.len(), 35);
        assert_eq!(addr(cache.layers[0].k.as_ref().unwrap()), first, "the buffer was replaced while decoding");
        // Truncating and refilling reuses it too.
        cache.truncate(2);
        llm.forward(&llm.embed(&[9, 10]).unwrap(), &mut cache).unwrap();
        assert_eq!(addr(cache.layers[0].k.as_ref().unwrap()), first);
        // Keys and values are views of one buffer (one allocation the OS commits as written).
        let l = &cache.layers[0];
        assert_eq!(addr(l.k.as_ref().unwrap()), addr(l.v.as_ref().unwrap()));
    }

    #[test]
    fn the_causal_mask_is_built_only_for_candles_attention_and_once_per_prefill() {
        let ids: Vec<u32> = (5..12).collect();
        for dtype in [DType::F32, DType::F16] {
            let llm = tiny(dtype);
            let (n, offset) = (4, 3);
            let mut cache = KvCache::new();
            llm.forward(&llm.embed(&ids[..offset]).unwrap(), &mut cache).unwrap();
            let mask = CausalMask::new(n, offset, &Device::Cpu);
            let xs = llm.embed(&ids[offset..]).unwrap().to_dtype(dtype).unwrap();
            let mut built = Vec::new();
            for (i, layer) in llm.layers.iter().enumerate() {
                let normed = layer.input_layernorm.forward(&xs).unwrap();
                layer.self_attn.forward(&normed, &llm.rope, offset, Some(&mask), cache.layer(i), llm.kv_dtype).unwrap();
                built.push(mask.tensor.get().map(addr));
            }
            // f32 queries on an AVX-512 CPU run on our kernel, which needs no mask; f16 ones on
            // candle's attention, which builds it at the first layer and reuses it after.
            let own = cpu_attention_in_place(dtype, llm.layers[0].self_attn.head_dim);
            if own {
                assert!(built.iter().all(Option::is_none), "{dtype:?}: a mask was built for our kernel");
            } else {
                assert!(built[0].is_some(), "{dtype:?}: candle's attention ran without the mask");
                assert!(built.iter().all(|b| *b == built[0]), "{dtype:?}: the mask was rebuilt");
                let m = mask.tensor().unwrap().to_vec2::<f32>().unwrap();
                assert_eq!((m.len(), m[0].len()), (n, offset + n));
                assert!(m[1][offset + 1] == 0.0 && m[1][offset + 2] == f32::NEG_INFINITY);
            }
        }
    }

    #[test]
    fn a_cache_switched_to_another_precision_keeps_its_positions() {
        let mut llm = tiny(DType::F32);
        llm.set_kv(KvPrecision::F32);
        let ids: Vec<u32> = (5..25).collect();
        let reference = llm.forward(&llm.embed(&ids).unwrap(), &mut KvCache::new()).unwrap();
        let mut cache = KvCache::new();
        llm.forward(&llm.embed(&ids[..12]).unwrap(), &mut cache).unwrap();
        assert_eq!(cache.layers[0].k.as_ref().unwrap().dtype(), DType::F32);
        llm.set_kv(KvPrecision::F16);
        let logits = llm.forward(&llm.embed(&ids[12..]).unwrap(), &mut cache).unwrap();
        assert_eq!(cache.layers[0].k.as_ref().unwrap().dtype(), DType::F16);
        assert_eq!(cache.len(), ids.len());
        let worst = reference.iter().zip(&logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-2, "logits moved by {worst} after the switch to an f16 cache");
    }
}
