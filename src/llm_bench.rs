//! `ziya-visual bench-llm`: times the LLM alone — prefill of a prompt, per-token decode and the
//! output head — and prints one JSON line. It loads nothing but the LLM (no image, no tokenizer),
//! so it measures what llama.cpp's `llama-bench` measures (`-p N` and `-n N` from an empty cache):
//! `scripts/bench-vs-llamacpp.sh` runs the two side by side.
//!
//! Self-contained on purpose: it uses only the model layer (`Llama`, `KvCache`, `Checkpoint`,
//! `Weights`, `Linear`) so it can be wired into any CLI.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Module, Tensor};
use serde::Serialize;

use crate::device::{device_name, dtype_name, DeviceKind, Placement, Precision};
use crate::error::{Error, Result};
use crate::model::layers::{Linear, Quant};
use crate::model::llama::{KvCache, Llama};
use crate::model::read_llm_config;
use crate::model::weights::{Checkpoint, LoadCounter, Weights};

#[derive(Debug, Clone, clap::Args)]
pub struct LlmBenchArgs {
    /// The LLM folder (HF layout) or a `.gguf` written by `ziya-visual quantize`.
    #[arg(long)]
    pub llm_model: PathBuf,
    /// Precision of activations and unquantized weights: f32, f16 or bf16.
    #[arg(long, default_value = "f32", value_parser = crate::cli::parse_precision)]
    pub dtype: Precision,
    /// Quantize the linear layers while loading (a quantized GGUF carries its own format).
    #[arg(long, value_parser = crate::cli::parse_quant)]
    pub quant: Option<Quant>,
    #[arg(long, default_value = "cpu", value_parser = crate::cli::parse_device)]
    pub device: DeviceKind,
    /// Prompt length to prefill from an empty cache (0 skips the prefill measurement).
    #[arg(long, default_value_t = 512)]
    pub prompt: usize,
    /// Prefills to time, each from an empty cache; the median is reported (as `llama-bench -r`).
    /// On a GPU one prefill of 512 takes milliseconds and a single one is mostly noise.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub reps: u32,
    /// Tokens to decode one at a time (as `llama-bench -n`), after `--depth` positions.
    #[arg(long, default_value_t = 64)]
    pub tokens: usize,
    /// Positions already in the cache when decoding starts, prefilled untimed in the engine's
    /// chunks (as `llama-bench -d`): decode speed at a long context.
    #[arg(long, default_value_t = 0)]
    pub depth: usize,
    /// Products of the output head alone to time (0 skips it; the head is loaded a second time).
    #[arg(long, default_value_t = 20)]
    pub head_reps: usize,
    /// Compute threads (sets RAYON_NUM_THREADS before anything runs); the environment's by default.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also measure the read-bandwidth roof: the best of 3 sums of a 1 GiB buffer with `threads`
    /// threads, in GB/s.
    #[arg(long)]
    pub roof: bool,
    /// Only measure the roof (no model is loaded; --llm-model is ignored).
    #[arg(long)]
    pub roof_only: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct LlmBenchReport {
    pub model: String,
    pub layers: usize,
    pub hidden: usize,
    pub vocab: usize,
    pub device: String,
    pub dtype: String,
    pub quant: Option<String>,
    pub threads: usize,
    pub load_s: f64,
    pub prefill_tokens: usize,
    /// Prefills timed; `prefill_s` is their median.
    pub prefill_reps: u32,
    pub prefill_s: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens: usize,
    /// Positions in the cache before the first decoded token.
    pub depth: usize,
    pub decode_s: f64,
    pub ms_per_token: f64,
    /// The median of the per-token times (less sensitive to other work on the machine).
    pub ms_per_token_median: f64,
    /// Median time of one output-head product (final hidden state → vocabulary logits).
    pub head_ms: Option<f64>,
    /// Bytes of weights one decode step reads (every layer and the head).
    pub weight_bytes_per_token: u64,
    pub head_bytes: Option<u64>,
    pub read_gbps: Option<f64>,
    /// The process's peak resident memory (Linux `VmHWM`), bytes.
    pub peak_rss_bytes: Option<u64>,
}

/// The process's peak resident set (`VmHWM` in /proc/self/status), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Starts the peak resident set (`VmHWM`) over from the current one (Linux: `5` into
/// /proc/self/clear_refs), so that a later [`peak_rss_bytes`] is the peak of what ran since.
/// False where the OS has no such reset.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Deterministic token ids in `[3, vocab)` (no special tokens), so runs are repeatable.
fn token_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed | 1;
    let span = vocab.saturating_sub(3).max(1) as u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (3 + (s >> 11) % span) as u32
        })
        .collect()
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn argmax(logits: &[f32]) -> u32 {
    crate::sampling::argmax(logits).unwrap_or(0) as u32
}

/// Read bandwidth in GB/s: the best of 3 sums of a 1 GiB buffer split over `threads` threads,
/// each thread reading 1, 2, 4 or 8 parts of its share side by side (as the kernels read several
/// weight rows at once: on these VMs one sequential stream per core leaves a fifth of the
/// bandwidth unused), the best of all.
/// Integer lanes with a wrapping sum vectorise (a float fold is one dependent add per element
/// and measures add latency, not memory: about 4 GB/s per core whatever the memory does).
pub fn read_bandwidth_gbps(threads: usize) -> f64 {
    const STEP: usize = 64; // u64s read from one stream before the next (512 bytes)
    let n = 1usize << 27; // 1 GiB of u64
    let data: Vec<u64> = (0..n as u64).map(|i| i % 7).collect();
    let threads = threads.max(1);
    let sum_streams = |c: &[u64], streams: usize| -> u64 {
        let part = c.len() / streams / STEP * STEP;
        let parts: Vec<&[u64]> = (0..streams).map(|i| &c[i * part..(i + 1) * part]).collect();
        let mut acc = [0u64; STEP];
        for k in (0..part).step_by(STEP) {
            for p in &parts {
                for (a, &v) in acc.iter_mut().zip(&p[k..k + STEP]) {
                    *a = a.wrapping_add(v);
                }
            }
        }
        let tail = c[streams * part..].iter().fold(0u64, |a, &b| a.wrapping_add(b));
        acc.iter().fold(tail, |a, &b| a.wrapping_add(b))
    };
    let mut best = 0.0f64;
    for (streams, _) in [1, 2, 4, 8].into_iter().flat_map(|s| [(s, 0), (s, 1), (s, 2)]) {
        let t = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> =
                data.chunks(n.div_ceil(threads)).map(|c| s.spawn(move || sum_streams(c, streams))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.max((n * 8) as f64 / t.elapsed().as_secs_f64());
    }
    best / 1e9
}

pub fn run(args: &LlmBenchArgs) -> Result<()> {
    if let Some(t) = args.threads {
        // Before the first parallel kernel: rayon and candle read it when their pools start.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let threads = candle_core::utils::get_num_threads();
    let read_gbps = (args.roof || args.roof_only).then(|| read_bandwidth_gbps(threads));
    let report = if args.roof_only {
        LlmBenchReport { threads, read_gbps, ..Default::default() }
    } else {
        LlmBenchReport { read_gbps, ..measure(args, threads)? }
    };
    println!("{}", serde_json::to_string(&report).map_err(|e| Error::Request(e.to_string()))?);
    Ok(())
}

fn measure(args: &LlmBenchArgs, threads: usize) -> Result<LlmBenchReport> {
    let place = Placement::resolve(args.device, args.dtype);
    for note in &place.notes {
        eprintln!("note: {note}");
    }
    let (device, dtype) = (place.device.clone(), place.dtype);

    // Loading, as ZiyaVisual::load builds its LLM.
    let t = Instant::now();
    let cfg = read_llm_config(&args.llm_model)?;
    let ckpt = Arc::new(Checkpoint::open(&args.llm_model, Arc::new(LoadCounter::default()))?);
    let w = Weights::new(ckpt, dtype, &device);
    let llm = Llama::load(&w, &cfg, args.quant)?;
    let load_s = t.elapsed().as_secs_f64();
    if args.prompt + 1 > cfg.max_position_embeddings
        || args.depth.saturating_add(args.tokens) > cfg.max_position_embeddings
    {
        return Err(Error::Request(format!("the model's context is {} positions", cfg.max_position_embeddings)));
    }

    // One warm-up step (first-touch allocations, thread pools), as llama-bench warms up.
    llm.forward(&llm.embed(&token_ids(1, cfg.vocab_size, 7))?, &mut KvCache::new())?;

    // Prefill: the whole prompt in one forward from an empty cache, `reps` times.
    let (mut prefill_s, mut first) = (0.0, 3u32);
    if args.prompt > 0 {
        let ids = token_ids(args.prompt, cfg.vocab_size, 1);
        let mut times = Vec::with_capacity(args.reps as usize);
        for _ in 0..args.reps {
            let mut cache = KvCache::new();
            let t = Instant::now();
            let logits = llm.forward(&llm.embed(&ids)?, &mut cache)?;
            times.push(t.elapsed().as_secs_f64());
            first = argmax(&logits);
        }
        prefill_s = median(&mut times);
    }

    // Decode: one token at a time after `depth` positions (prefilled in the engine's chunks, not
    // timed), greedy, each step ending with its logits on the host.
    let mut cache = KvCache::new();
    let context = token_ids(args.depth, cfg.vocab_size, 2);
    for chunk in context.chunks(crate::model::plan::PREFILL_CHUNK) {
        llm.forward(&llm.embed(chunk)?, &mut cache)?;
    }
    let mut per_token = Vec::with_capacity(args.tokens);
    let mut next = first.max(3);
    let t = Instant::now();
    for _ in 0..args.tokens {
        let step = Instant::now();
        let logits = llm.forward(&llm.embed(&[next])?, &mut cache)?;
        next = argmax(&logits).max(3);
        per_token.push(step.elapsed().as_secs_f64() * 1e3);
    }
    let decode_s = t.elapsed().as_secs_f64();

    // The output head alone: the Llama API does not expose its head, so load the same tensor a
    // second time, in the same format (quantized when the layers are), and time its product.
    let (mut head_ms, mut head_bytes) = (None, None);
    if args.head_reps > 0 && w.contains("lm_head.weight") {
        let head = Linear::load_quantized(&w.pp("lm_head"), cfg.hidden_size, cfg.vocab_size, args.quant)?;
        head_bytes = Some(head.weight_bytes());
        let x = Tensor::randn(0f32, 1.0, (1, 1, cfg.hidden_size), &candle_core::Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(&device)?;
        head.forward(&x)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut times = Vec::with_capacity(args.head_reps);
        for _ in 0..args.head_reps {
            let t = Instant::now();
            let y = head.forward(&x)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            std::hint::black_box(y);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        head_ms = Some(median(&mut times));
    }

    let ms_per_token = if args.tokens > 0 { decode_s * 1e3 / args.tokens as f64 } else { 0.0 };
    Ok(LlmBenchReport {
        model: args.llm_model.display().to_string(),
        layers: cfg.num_hidden_layers,
        hidden: cfg.hidden_size,
        vocab: cfg.vocab_size,
        device: device_name(&device).into(),
        dtype: dtype_name(dtype).into(),
        quant: llm.quant().map(|q| q.name().to_string()),
        threads,
        load_s,
        prefill_tokens: args.prompt,
        prefill_reps: args.reps,
        prefill_s,
        prefill_tokens_per_s: if prefill_s > 0.0 { args.prompt as f64 / prefill_s } else { 0.0 },
        decode_tokens: args.tokens,
        depth: args.depth,
        decode_s,
        ms_per_token,
        ms_per_token_median: median(&mut per_token),
        head_ms,
        weight_bytes_per_token: llm.weight_bytes_per_token(),
        head_bytes,
        read_gbps: None,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_are_repeatable_and_skip_special_tokens() {
        let a = token_ids(100, 1000, 1);
        assert_eq!(a, token_ids(100, 1000, 1));
        assert!(a.iter().all(|&id| (3..1000).contains(&id)));
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn measures_the_tiny_fixture() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-ziya/llm");
        let args = LlmBenchArgs {
            llm_model: dir,
            dtype: Precision::F32,
            quant: None,
            device: DeviceKind::Cpu,
            prompt: 8,
            reps: 3,
            tokens: 4,
            depth: 5,
            head_reps: 2,
            threads: None,
            roof: false,
            roof_only: false,
        };
        let r = measure(&args, 1).unwrap();
        assert_eq!((r.layers, r.decode_tokens, r.prefill_tokens, r.prefill_reps, r.depth), (3, 4, 8, 3, 5));
        assert!(r.decode_s > 0.0 && r.prefill_s > 0.0 && r.head_ms.is_some());
        assert!(r.weight_bytes_per_token > r.head_bytes.unwrap());
    }
}
