//! How much memory a model needs, worked out from the two config.json files before anything is
//! loaded: weights in their running precision (or quantized), the KV cache for the context, the
//! largest activations of one step, what loading itself needs on top for a moment, and the
//! program. Compared with the free memory of the device, so a model that will not fit is refused
//! with the numbers instead of failing halfway through loading.

use candle_core::{DType, Device};
use serde::Serialize;

use super::config::{LlamaConfig, VisionRepoConfig};
use super::layers::{cpu_attention_in_place, Quant};
use super::llama::CACHE_STEP;
use super::shapes::{llm_tensors, projection_tensors, vision_tensors};
use crate::device::KvPrecision;
use crate::error::{FitOption, NoFit};

/// What the program itself takes besides the model (code, tokenizer, thread pools and their
/// scratch, allocator slack, an image): `ask` on the tiny checkpoint peaks at 29 MB, but after
/// loading a 13B-shaped model the process holds about 200 MB besides its weights (measured with
/// scripts/bench-memory.sh, whose 40-layer extrapolation sat 1-3 % above a plan that counted
/// 64 MB here). (The window's own memory is already in use when it plans, so free memory has
/// accounted for it.)
pub const RUNTIME_BYTES: u64 = 256 << 20;

/// Prompts are prefilled in chunks of at most this many positions, bounding activations.
pub const PREFILL_CHUNK: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Where {
    Cpu,
    Gpu,
}

/// The precision the weights are stored in on disk (config.json's `torch_dtype`).
pub fn stored_dtype(torch_dtype: Option<&str>, default: DType) -> DType {
    match torch_dtype {
        Some("float16") => DType::F16,
        Some("bfloat16") => DType::BF16,
        Some("float32") => DType::F32,
        _ => default,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub vision_weights: u64,
    pub llm_weights: u64,
    pub kv_cache: u64,
    pub activations: u64,
    /// Extra memory while the largest tensor is being read and converted or quantized.
    pub loading: u64,
    pub runtime: u64,
    /// Peak: the weights, plus the larger of loading's extra and what running adds.
    pub total: u64,
    /// Positions the KV cache is sized for.
    pub context: usize,
}

/// The inputs of a plan.
pub struct PlanRequest<'a> {
    pub vision: &'a VisionRepoConfig,
    pub llm: &'a LlamaConfig,
    pub dtype: DType,
    pub quant: Option<Quant>,
    /// Precision of the files (f32 vision repo and f16 LLM for the real Ziya checkpoints).
    pub vision_file_dtype: DType,
    pub llm_file_dtype: DType,
    /// Prompt positions prefilled, and total positions (prompt + new tokens).
    pub prompt: usize,
    pub context: usize,
    /// Whether the model runs on the CPU. Quantized weights are held once there, in their GGUF
    /// block layout (our kernels read them as they are: no repacked copy to count), and the
    /// embedding table is quantized too.
    pub on_cpu: bool,
    /// The KV cache's precision on the CPU (a GPU keeps the model's).
    pub kv: KvPrecision,
    /// The LLM is a published delta merged with its base while loading.
    pub delta: bool,
}

/// Product of sizes; saturates instead of overflowing, so an absurd request comes out as an
/// absurd (refused) plan rather than a wrapped small one. (Configs are bounded by
/// `LlamaConfig::validate`, under which nothing here comes near overflow.)
fn mul(factors: &[u64]) -> u64 {
    factors.iter().fold(1u64, |a, &f| a.saturating_mul(f))
}

fn elems(shape: &[usize]) -> u64 {
    mul(&shape.iter().map(|&d| d as u64).collect::<Vec<_>>())
}

/// KV-cache buffer capacity after prefilling `prompt` positions and decoding up to `context`.
fn cache_capacity(prompt: usize, context: usize) -> usize {
    let mut cap = 0usize;
    let grow = |need: usize, cap: &mut usize| {
        if need > *cap {
            *cap = need.checked_next_multiple_of(CACHE_STEP).unwrap_or(usize::MAX).max(cap.saturating_mul(2));
        }
    };
    let mut filled = 0;
    while filled < prompt {
        filled = filled.saturating_add(PREFILL_CHUNK).min(prompt);
        grow(filled, &mut cap);
        // The chunks that end within the capacity change nothing: skip them.
        filled += (cap.min(prompt) - filled) / PREFILL_CHUNK * PREFILL_CHUNK;
    }
    while filled < context {
        filled = (filled + 1).max(cap.min(context));
        grow(filled, &mut cap);
    }
    cap
}

pub fn estimate(r: &PlanRequest<'_>) -> Plan {
    // A prompt cannot be longer than the context it is part of.
    let r = &PlanRequest { prompt: r.prompt.min(r.context), ..*r };
    let dsize = r.dtype.size_in_bytes() as u64;
    // Vision repo: everything in the running dtype except LayerNorms, kept in f32; on the CPU in
    // f16 only the linear layers' (2-D) weights are f16 and the rest, activations too, is f32.
    let vision_f32_compute = r.on_cpu && r.dtype == DType::F16;
    let vsize = if vision_f32_compute { 4 } else { dsize };
    let mut vision = vision_tensors(r.vision);
    vision.extend(projection_tensors(r.vision, r.llm.hidden_size));
    let vision_weights: u64 = vision
        .iter()
        .map(|(n, s)| {
            let size = if n.contains("norm") {
                4
            } else if s.len() == 2 {
                dsize
            } else {
                vsize
            };
            mul(&[elems(s), size])
        })
        .fold(0, u64::saturating_add);

    // LLM: linear layers quantized when asked, and on the CPU the embedding table too (a GPU
    // keeps its dense lookup); norms in f32.
    let linear = |n: &str| {
        n.ends_with("_proj.weight") || n == "lm_head.weight" || (r.on_cpu && n == "model.embed_tokens.weight")
    };
    let mut llm_weights = 0u64;
    let mut loading = 0u64;
    for (name, shape) in llm_tensors(r.llm) {
        let e = elems(&shape);
        // Beyond the final weight, loading holds the tensor as read (file precision) while it is
        // converted, and when quantizing also its f32 copy.
        let mut file = mul(&[e, r.llm_file_dtype.size_in_bytes() as u64]);
        if r.delta && !super::delta::taken_from_delta(&name) {
            // Base and delta as read, both widened to f32, and their sum.
            file = mul(&[2, file]).saturating_add(mul(&[3, e, 4]));
        }
        let (bytes, transient) = if name.contains("norm") {
            (mul(&[e, 4]), file)
        } else if let (Some(q), true) = (r.quant.and_then(|q| q.for_rows(shape[1])), linear(&name)) {
            (q.bytes(e), file.saturating_add(mul(&[e, 4])))
        } else {
            (mul(&[e, dsize]), file)
        };
        llm_weights = llm_weights.saturating_add(bytes);
        loading = loading.max(transient);
    }
    for (_, shape) in &vision {
        loading = loading.max(mul(&[elems(shape), r.vision_file_dtype.size_in_bytes() as u64]));
    }
    // RoPE tables (cos and sin for every position).
    llm_weights =
        llm_weights.saturating_add(mul(&[r.llm.max_position_embeddings as u64, r.llm.head_dim() as u64, dsize]));

    let cfg = r.llm;
    let kv_width = mul(&[cfg.num_kv_heads() as u64, cfg.head_dim() as u64]);
    // On the CPU the cache is reserved for the whole model context at once but only the
    // positions written become resident; a GPU's buffers grow in steps, and a growing layer holds
    // its old buffer next to the new one for a moment.
    let cap = if r.on_cpu { r.context } else { cache_capacity(r.prompt, r.context) } as u64;
    let kv_size = r.kv.dtype(r.dtype, r.on_cpu).size_in_bytes() as u64;
    let per_layer = mul(&[2, cap, kv_width, kv_size]);
    let old_cap = if !r.on_cpu && cap > CACHE_STEP as u64 { cap / 2 } else { 0 };
    let kv_cache =
        mul(&[per_layer, cfg.num_hidden_layers as u64]).saturating_add(mul(&[2, old_cap, kv_width, kv_size]));

    // Largest live activations of one step: a prefill chunk through one LLM layer (f32 scores
    // and their softmax, the MLP's three intermediates, q/k/v/out and the residual stream), or
    // the vision tower on one image — whichever is larger — plus the f32 logits.
    let n = r.prompt.clamp(1, PREFILL_CHUNK) as u64;
    let keys = r.context.max(1) as u64;
    let heads = cfg.num_attention_heads as u64;
    // candle's attention (GPUs, f16 activations, CPUs without AVX-512) makes (heads, chunk,
    // keys) f32 scores, counted four times: it keeps two alive at once, and peak RSS measured on
    // 2- and 4-layer 13B-shaped models prefilling 1988 positions (scripts/bench-memory.sh) sat
    // 0.3-0.4 GB above an estimate that counted two; and keys and values repeated for grouped
    // heads. Our CPU kernel reads the cache in place and writes the merged heads: one more
    // (chunk, hidden) f32 buffer.
    let in_place = r.on_cpu && cpu_attention_in_place(r.dtype, cfg.head_dim());
    let attention = if in_place {
        mul(&[n, cfg.hidden_size as u64, 4])
    } else {
        mul(&[4, heads, n, keys, 4]).saturating_add(mul(&[2, keys, kv_width, dsize]))
    };
    let llm_act =
        [attention, mul(&[3, n, cfg.intermediate_size as u64, dsize]), mul(&[6, n, cfg.hidden_size as u64, dsize])]
            .into_iter()
            .fold(0, u64::saturating_add);
    let v = &r.vision.vision_config;
    let side = (v.image_size / v.patch_size.max(1)) as u64;
    let tokens = mul(&[side, side]).saturating_add(1);
    let vheads = v.num_attention_heads.max(1);
    let vision_in_place = r.on_cpu && cpu_attention_in_place(DType::F32, v.hidden_size / vheads) && vsize == 4;
    let vision_act = [
        if vision_in_place { 0 } else { mul(&[2, vheads as u64, tokens, tokens, 4]) },
        mul(&[2, tokens, v.intermediate_size as u64, vsize]),
        mul(&[6, tokens, v.hidden_size as u64, vsize]),
        mul(&[tokens, 3, v.patch_size as u64, v.patch_size as u64, vsize]),
    ]
    .into_iter()
    .fold(0, u64::saturating_add);
    let activations = llm_act.max(vision_act).saturating_add(mul(&[cfg.vocab_size as u64, 4, 2]));

    let runtime = RUNTIME_BYTES;
    // Loading's extra is gone before anything runs; running adds the cache and activations. The
    // peak is the weights plus the larger of the two.
    let total = [runtime, vision_weights, llm_weights, loading.max(kv_cache.saturating_add(activations))]
        .into_iter()
        .fold(0, u64::saturating_add);
    Plan { vision_weights, llm_weights, kv_cache, activations, loading, runtime, total, context: r.context }
}

/// Memory free for a model on `device`: available RAM on the CPU, free memory on a GPU; never
/// more than `ZIYA_VISUAL_MEMORY_LIMIT` bytes when that is set (to plan for a smaller machine).
pub fn available_bytes(device: &Device) -> Option<u64> {
    let limit = std::env::var("ZIYA_VISUAL_MEMORY_LIMIT").ok().and_then(|v| v.parse::<u64>().ok());
    match (device_free(device), limit) {
        (Some(free), Some(l)) => Some(free.min(l)),
        (free, l) => free.or(l),
    }
}

fn device_free(device: &Device) -> Option<u64> {
    match device {
        Device::Cpu => available_ram(),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let ctx = d.cuda_stream().context().clone();
            ctx.bind_to_thread().ok()?;
            candle_core::cuda_backend::cudarc::driver::result::mem_get_info().ok().map(|(free, _)| free as u64)
        }
        _ => None,
    }
}

/// `MemAvailable` from /proc/meminfo (Linux): free memory plus what the kernel can reclaim.
pub fn available_ram() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn gib(b: u64) -> String {
    format!("{:.2} GB", b as f64 / 1e9)
}

/// Checks a plan against free memory. When it does not fit, the refusal carries the numbers
/// and every smaller choice that would fit: the same precision with a stronger quantization,
/// then (from f32) half precision with each.
pub fn check_fits(plan: &Plan, available: Option<u64>, r: &PlanRequest<'_>) -> Result<(), NoFit> {
    let Some(free) = available else { return Ok(()) };
    if std::env::var_os("ZIYA_VISUAL_SKIP_MEMORY_CHECK").is_some() || plan.total <= free {
        return Ok(());
    }
    let smaller_quant = |q: Quant| r.quant.is_none_or(|cur| q.bytes(1 << 20) < cur.bytes(1 << 20));
    let mut candidates: Vec<(DType, Option<Quant>)> =
        Quant::ALL.into_iter().filter(|q| smaller_quant(*q)).map(|q| (r.dtype, Some(q))).collect();
    if r.dtype == DType::F32 {
        candidates.push((DType::F16, r.quant));
        candidates.extend(Quant::ALL.into_iter().filter(|q| smaller_quant(*q)).map(|q| (DType::F16, Some(q))));
    }
    let mut fits: Vec<FitOption> = candidates
        .into_iter()
        .map(|(dtype, quant)| FitOption { dtype, quant, total: estimate(&PlanRequest { dtype, quant, ..*r }).total })
        .filter(|o| o.total <= free)
        .collect();
    fits.dedup_by_key(|o| (o.dtype, o.quant));
    let breakdown = format!(
        "weights {} vision + {} LLM, KV cache {} for {} positions, activations {}, loading {}, program {}",
        gib(plan.vision_weights),
        gib(plan.llm_weights),
        gib(plan.kv_cache),
        plan.context,
        gib(plan.activations),
        gib(plan.loading),
        gib(plan.runtime)
    );
    Err(NoFit { needed: plan.total, free, breakdown, fits })
}

impl Clone for PlanRequest<'_> {
    fn clone(&self) -> Self {
        *self
    }
}
impl Copy for PlanRequest<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ziya() -> (VisionRepoConfig, LlamaConfig) {
        let v: VisionRepoConfig =
            serde_json::from_str(r#"{"vision_config": {}, "qformer_config": {}, "num_query_tokens": 32}"#).unwrap();
        let l: LlamaConfig = serde_json::from_str(
            r#"{"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                "num_attention_heads": 40, "vocab_size": 39424, "max_position_embeddings": 2048}"#,
        )
        .unwrap();
        (v, l)
    }

    fn plan(dtype: DType, quant: Option<Quant>) -> Plan {
        let (v, l) = ziya();
        estimate(&PlanRequest {
            vision: &v,
            llm: &l,
            dtype,
            quant,
            vision_file_dtype: DType::F32,
            llm_file_dtype: DType::F16,
            prompt: 2048,
            context: 2048,
            on_cpu: false,
            kv: KvPrecision::F16,
            delta: false,
        })
    }

    #[test]
    fn ziya_13b_sizes_match_the_model_card_arithmetic() {
        // ZIYA_FACTS: LLaMA-13B f16 ≈ 26 GB, 8-bit ≈ 13.8, 4-bit ≈ 7.4; vision + Q-Former f16 ≈ 2.2.
        let f16 = plan(DType::F16, None);
        assert!((25.5e9..27.0e9).contains(&(f16.llm_weights as f64)), "{}", gib(f16.llm_weights));
        assert!((2.0e9..2.4e9).contains(&(f16.vision_weights as f64)), "{}", gib(f16.vision_weights));
        let q8 = plan(DType::F16, Some(Quant::Q8_0));
        assert!((13.0e9..14.5e9).contains(&(q8.llm_weights as f64)), "{}", gib(q8.llm_weights));
        let q4 = plan(DType::F16, Some(Quant::Q4K));
        assert!((7.0e9..8.2e9).contains(&(q4.llm_weights as f64)), "{}", gib(q4.llm_weights));
        // KV cache for 2048 positions in f16: 40 layers × 2 × 2048 × 5120 × 2 bytes ≈ 1.68 GB.
        assert!((1.6e9..2.2e9).contains(&(f16.kv_cache as f64)), "{}", gib(f16.kv_cache));
    }

    #[test]
    fn too_big_is_refused_with_a_quantization_that_fits() {
        let (v, l) = ziya();
        let r = PlanRequest {
            vision: &v,
            llm: &l,
            dtype: DType::F16,
            quant: None,
            vision_file_dtype: DType::F32,
            llm_file_dtype: DType::F16,
            prompt: 512,
            context: 2048,
            on_cpu: false,
            kv: KvPrecision::F16,
            delta: false,
        };
        let p = estimate(&r);
        // f16 Ziya-13B needs ~30 GB at full context; q4k brings it to ~12.6 GB on a GPU (f16
        // vision tower, f16 KV cache for 2048 positions, candle's dense embedding table).
        let err = check_fits(&p, Some(13_000_000_000), &r).unwrap_err().to_string();
        assert!(err.contains("only 13.00 GB is free") && err.contains("--quant q4k"), "{err}");
        let err = check_fits(&p, Some(8_000_000_000), &r).unwrap_err().to_string();
        assert!(err.contains("no quantization makes it fit"), "{err}");
        assert!(check_fits(&p, Some(p.total + 1), &r).is_ok());
    }

    #[test]
    fn every_choice_offered_fits_and_f32_is_offered_half_precision_too() {
        // The refusal that said "even f16 with --quant q4k needs about 21.73 GB" while 23.43 GB
        // were free: such a choice fits and must be offered.
        let (v, l) = ziya();
        let r = PlanRequest {
            vision: &v,
            llm: &l,
            dtype: DType::F32,
            quant: None,
            vision_file_dtype: DType::F32,
            llm_file_dtype: DType::F16,
            prompt: 512,
            context: 2048,
            on_cpu: true,
            kv: KvPrecision::F16,
            delta: false,
        };
        let p = estimate(&r);
        let free = estimate(&PlanRequest { dtype: DType::F16, quant: Some(Quant::Q4K), ..r }).total + 1;
        let err = check_fits(&p, Some(free), &r).unwrap_err();
        assert!(!err.fits.is_empty());
        assert!(err.fits.iter().all(|o| o.total <= free), "{:?}", err.fits);
        assert!(err.fits.iter().any(|o| o.dtype == DType::F16 && o.quant == Some(Quant::Q4K)));
        assert!(err.to_string().contains("it needs about"), "{err}");
    }

    #[test]
    fn ziya_13b_fits_consumer_ram_on_the_cpu_in_q4k_and_q8_0() {
        // Issue 11's memory targets at the full 2048 context with the vision tower in f16:
        // q4k at most 12.5 GB, q8_0 at most 19 GB (candle's repacked copies made them 22 and 33).
        let (v, l) = ziya();
        let plan = |quant| {
            estimate(&PlanRequest {
                vision: &v,
                llm: &l,
                dtype: DType::F16,
                quant: Some(quant),
                vision_file_dtype: DType::F32,
                llm_file_dtype: DType::F16,
                prompt: 512,
                context: 2048,
                on_cpu: true,
                kv: KvPrecision::F16,
                delta: false,
            })
            .total
        };
        let (q4k, q8_0) = (plan(Quant::Q4K), plan(Quant::Q8_0));
        eprintln!("Ziya-13B on the CPU, 2048 positions, vision f16: q4k {}, q8_0 {}", gib(q4k), gib(q8_0));
        assert!(q4k <= 12_500_000_000, "q4k plans {}", gib(q4k));
        assert!(q8_0 <= 19_000_000_000, "q8_0 plans {}", gib(q8_0));
    }

    #[test]
    fn the_cpu_keeps_its_kv_cache_in_f16_unless_f32_is_asked_for_an_f32_model() {
        let (v, l) = ziya();
        let r = |dtype, on_cpu, kv| PlanRequest {
            vision: &v,
            llm: &l,
            dtype,
            quant: Some(Quant::Q4K),
            vision_file_dtype: DType::F32,
            llm_file_dtype: DType::F16,
            prompt: 512,
            context: 2048,
            on_cpu,
            kv,
            delta: false,
        };
        let f16 = estimate(&r(DType::F32, true, KvPrecision::F16)).kv_cache;
        assert_eq!(estimate(&r(DType::F32, true, KvPrecision::F32)).kv_cache, 2 * f16);
        // f32 is only for an f32 model; a GPU keeps the model's precision.
        assert_eq!(estimate(&r(DType::F16, true, KvPrecision::F32)).kv_cache, f16);
        // (A GPU's cache also grows: its last step holds the old half-size buffer of one layer.)
        let growth = (2 * 1024 * l.num_kv_heads() * l.head_dim() * 4) as u64;
        assert_eq!(estimate(&r(DType::F32, false, KvPrecision::F16)).kv_cache, 2 * f16 + growth);
        // The CPU's is made for the context at once: exactly 2048 positions of every layer.
        assert_eq!(f16, (2 * 2048 * l.num_kv_heads() * l.head_dim() * 2 * l.num_hidden_layers) as u64);
        // Quantized weights on the CPU are counted once (no repacked copy), and the embedding
        // table is quantized there too.
        let cpu = estimate(&r(DType::F32, true, KvPrecision::F16));
        let gpu = estimate(&r(DType::F32, false, KvPrecision::F16));
        let table = (l.vocab_size * l.hidden_size) as u64;
        assert_eq!(gpu.llm_weights - cpu.llm_weights, table * 4 - Quant::Q4K.bytes(table));
    }

    #[test]
    fn a_cpu_prefill_on_our_attention_kernel_is_planned_without_score_buffers() {
        let (v, l) = ziya();
        let r = |dtype, on_cpu| PlanRequest {
            vision: &v,
            llm: &l,
            dtype,
            quant: Some(Quant::Q4K),
            vision_file_dtype: DType::F32,
            llm_file_dtype: DType::F16,
            prompt: 512,
            context: 2048,
            on_cpu,
            kv: KvPrecision::F16,
            delta: false,
        };
        let (cpu, gpu) = (estimate(&r(DType::F32, true)).activations, estimate(&r(DType::F32, false)).activations);
        // candle's attention: four (heads, 512, 2048) f32 score buffers and the keys and values
        // repeated per head; our kernel: one (512, hidden) f32 output.
        let scores = (4 * l.num_attention_heads * 512 * 2048 * 4) as u64;
        let repeated = (2 * 2048 * l.num_kv_heads() * l.head_dim() * 4) as u64;
        let out = (512 * l.hidden_size * 4) as u64;
        if cpu_attention_in_place(DType::F32, l.head_dim()) {
            assert_eq!(gpu - cpu, scores + repeated - out);
        } else {
            assert_eq!(cpu, gpu, "without the kernel the CPU runs candle's attention too");
        }
        // f16 activations run candle's attention on the CPU as well.
        assert_eq!(estimate(&r(DType::F16, true)).activations, estimate(&r(DType::F16, false)).activations);
    }

    #[test]
    fn kv_capacity_follows_the_cache_growth() {
        assert_eq!(cache_capacity(10, 26), 256);
        assert_eq!(cache_capacity(300, 316), 512);
        assert_eq!(cache_capacity(100, 1500), 2048);
        assert_eq!(cache_capacity(1200, 1200), 2048); // chunks of 512 → 512, 1024, 2048
    }

    #[test]
    fn absurd_requests_saturate_instead_of_wrapping() {
        let (v, mut l) = ziya();
        l.max_position_embeddings = usize::MAX / 2;
        let p = estimate(&PlanRequest {
            vision: &v,
            llm: &l,
            dtype: DType::F32,
            quant: None,
            vision_file_dtype: DType::F32,
            llm_file_dtype: DType::F16,
            prompt: usize::MAX,
            context: usize::MAX,
            on_cpu: true,
            delta: true,
            kv: KvPrecision::F32,
        });
        assert_eq!(p.total, u64::MAX);
        assert!(check_fits(
            &p,
            Some(1 << 40),
            &PlanRequest {
                vision: &v,
                llm: &l,
                dtype: DType::F16,
                quant: None,
                vision_file_dtype: DType::F32,
                llm_file_dtype: DType::F16,
                prompt: 1,
                context: 1,
                on_cpu: true,
                delta: false,
                kv: KvPrecision::F16,
            }
        )
        .is_err());
        assert_eq!(cache_capacity(usize::MAX, usize::MAX), usize::MAX);
    }
}
