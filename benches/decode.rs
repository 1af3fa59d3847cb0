//! Decode speed on this machine as a fraction of its memory-bandwidth roof (tokens/s can be at
//! most bandwidth / bytes of weights read per token), measured in the same run. Uses the medium
//! random model (written to target/bench-models on first run) or the folders in
//! ZIYA_BENCH_VISION / ZIYA_BENCH_LLM. Run: `cargo bench --bench decode`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ziya_visual::chat::ChatTurn;
use ziya_visual::device::{Placement, Precision};
use ziya_visual::inference::Pipeline;
use ziya_visual::model::choice::ModelChoice;
use ziya_visual::model::files::ModelFiles;
use ziya_visual::model::weights::LoadCounter;
use ziya_visual::sampling::SamplingParams;

/// Read bandwidth with all cores summing a 1 GiB buffer, in bytes per second.
fn read_bandwidth() -> f64 {
    let n = 1usize << 28; // 1 GiB of f32
    let data: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let total: f32 = std::thread::scope(|s| {
            data.chunks(n / threads + 1)
                .map(|c| s.spawn(move || c.iter().fold(0f32, |a, &b| a + b)))
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum()
        });
        std::hint::black_box(total);
        best = best.max((n * 4) as f64 / t.elapsed().as_secs_f64());
    }
    best
}

fn model_dirs() -> (PathBuf, PathBuf) {
    if let (Ok(v), Ok(l)) = (std::env::var("ZIYA_BENCH_VISION"), std::env::var("ZIYA_BENCH_LLM")) {
        return (v.into(), l.into());
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-models/medium");
    if !root.join("llm/config.json").exists() {
        eprintln!("writing the medium random model to {} (once)…", root.display());
        ziya_visual::model::random::write(&root, ziya_visual::model::random::Preset::Medium, 1).unwrap();
    }
    (root.join("vision"), root.join("llm"))
}

fn main() {
    let (vision, llm) = model_dirs();
    let bw = read_bandwidth();
    println!("read bandwidth (all cores): {:.1} GB/s", bw / 1e9);
    let tokens = 32;
    let dtypes: Vec<String> = std::env::var("ZIYA_BENCH_DTYPES")
        .unwrap_or_else(|_| "f32,f16,f32+q8_0,f32+q4k".into())
        .split(',')
        .map(str::to_string)
        .collect();
    for name in dtypes {
        // "f16" or "f32+q4k" style: a precision and an optional quantization.
        let (dt, q) = name.split_once('+').unwrap_or((&name, ""));
        let choice = ModelChoice {
            precision: Precision::parse(dt).unwrap(),
            quant: ziya_visual::model::layers::Quant::parse(q),
            ..ModelChoice::folders(&vision, &llm)
        };
        let t = Instant::now();
        let files = ModelFiles::read(&choice).unwrap();
        let place = Placement::cpu(choice.precision);
        let mut p = Pipeline::new(files.load(&place, Arc::new(LoadCounter::default())).unwrap());
        let load = t.elapsed().as_secs_f64();
        let bytes = p.model.llm.weight_bytes_per_token();
        let params =
            SamplingParams { temperature: 0.0, max_new_tokens: tokens, ignore_eos: true, ..Default::default() };
        let turns = vec![ChatTurn::question("benchmark", vec![])];
        let g = p.generate(&turns, &params, &mut |_| true).unwrap();
        let tps = g.tokens_per_second().unwrap_or(0.0);
        let roof = bw / bytes as f64;
        println!(
            "{name:>5}: load {load:5.1} s, decode {tps:6.2} tok/s, weights read/token {:6.0} MB, roof {roof:6.2} tok/s -> {:4.1}% of roof",
            bytes as f64 / 1e6,
            100.0 * tps / roof
        );
    }
}
