//! Batched dense products (the image step and f32/f16 prefill) in GFLOP/s on this machine:
//! our kernels against candle's matmul on the same data, for the ViT-g and 13B shapes.
//! `ZIYA_GEMM_SHAPES=rows,cols,tokens;...` overrides the shapes. Run: `cargo bench --bench gemm`.
//!
//! With `ZIYA_GEMM_TORCH=<python with torch>` it also runs torch's `x @ w.T` (what HF
//! transformers runs; scripts/bench/gemm_torch.py) on each shape, interleaved with ours round by
//! round (`ZIYA_GEMM_ROUNDS`, default 3): this VM's speed drifts by 30 % within minutes, so only
//! figures taken side by side compare. Each column is the best of its rounds.

use std::time::Instant;

use candle_core::{Device, Tensor};
use ziya_visual::model::kernels::{self, CpuWeight, Format};

fn shapes() -> Vec<(usize, usize, usize)> {
    if let Ok(s) = std::env::var("ZIYA_GEMM_SHAPES") {
        return s
            .split(';')
            .filter_map(|t| {
                let v: Vec<usize> = t.split(',').filter_map(|x| x.trim().parse().ok()).collect();
                (v.len() == 3).then(|| (v[0], v[1], v[2]))
            })
            .collect();
    }
    // ViT-g/14 at 224 px: 257 tokens, hidden 1408, MLP 6144; 13B prefill chunk: 512 tokens.
    vec![
        (4224, 1408, 257),
        (1408, 1408, 257),
        (6144, 1408, 257),
        (1408, 6144, 257),
        (5120, 5120, 512),
        (13824, 5120, 512),
    ]
}

/// Best-of-`reps` seconds of `f`.
fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// torch's GFLOP/s on one shape, from scripts/bench/gemm_torch.py (None if it fails).
fn torch_gflops(python: &str, (rows, cols, n): (usize, usize, usize)) -> Option<f64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench/gemm_torch.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .env("ZIYA_GEMM_SHAPES", format!("{rows},{cols},{n}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().last()?.split_whitespace().last()?.parse().ok()
}

fn main() {
    let torch = std::env::var("ZIYA_GEMM_TORCH").ok();
    let rounds: usize = std::env::var("ZIYA_GEMM_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    println!(
        "{:>6} {:>6} {:>5}  {:>10} {:>10} {:>10} {:>10} {:>9}",
        "rows", "cols", "n", "ours f32", "ours f16", "candle f32", "torch f32", "f32/torch"
    );
    for (rows, cols, n) in shapes() {
        let w: Vec<f32> = (0..rows * cols).map(|_| rnd() * 0.05).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| rnd()).collect();
        let flops = 2.0 * (rows * cols * n) as f64;
        let reps = ((2e10 / flops) as usize).clamp(2, 20);
        let mut out = vec![0f32; n * rows];
        // Enough copies of each weight to exceed this machine's 300 MB L3, used in turn: a
        // model's weights come from memory, not from cache.
        let copies = (600 << 20) / (rows * cols * 2) + 1;
        let weights: Vec<Vec<CpuWeight>> = [Format::F32, Format::F16]
            .iter()
            .map(|&f| (0..copies).map(|_| CpuWeight::from_f32(f, rows, cols, &w).expect("weight")).collect())
            .collect();
        let wt = Tensor::from_vec(w, (rows, cols), &Device::Cpu).expect("w");
        let xt = Tensor::from_vec(x.clone(), (n, cols), &Device::Cpu).expect("x");
        // GFLOP/s, best over the rounds: ours f32, ours f16, candle, torch.
        let mut gf = [0f64; 4];
        for _ in 0..rounds {
            for (k, cws) in weights.iter().enumerate() {
                let mut next = 0;
                let s = best(reps, || {
                    next = (next + 1) % cws.len();
                    kernels::matmul(&cws[next], &x, n, &mut out).expect("matmul")
                });
                gf[k] = gf[k].max(flops / s / 1e9);
            }
            let s = best(reps, || {
                std::hint::black_box(xt.matmul(&wt.t().expect("t")).expect("mm"));
            });
            gf[2] = gf[2].max(flops / s / 1e9);
            if let Some(g) = torch.as_deref().and_then(|py| torch_gflops(py, (rows, cols, n))) {
                gf[3] = gf[3].max(g);
            }
        }
        let ratio = if gf[3] > 0.0 { format!("{:.2}", gf[0] / gf[3]) } else { "-".into() };
        println!(
            "{rows:>6} {cols:>6} {n:>5}  {:>10.1} {:>10.1} {:>10.1} {:>10.1} {ratio:>9}",
            gf[0], gf[1], gf[2], gf[3]
        );
    }
}
