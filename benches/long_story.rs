//! Time to first token of every turn of a 24-turn story (one new image per turn, 60-token
//! answers) through one engine, as the app runs it: once the story outgrows the context the
//! oldest turns leave the window (chat::context_window), and the turns after a trim must reuse
//! the KV cache again. Prints the series for the tiny checkpoint and the medium random model.
//! Run: `cargo bench --bench long_story` (ZIYA_BENCH_MODELS=tiny to skip the medium model).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ziya_visual::chat::{ChatTurn, ImageData};
use ziya_visual::engine::{Command, Engine, Event};
use ziya_visual::model::choice::ModelChoice;
use ziya_visual::sampling::SamplingParams;

const TURNS: usize = 24;
const ANSWER: usize = 60;

/// A 320×240 picture of its own for each turn (gradients and a moving block).
fn picture(turn: usize) -> ImageData {
    let img = image::RgbImage::from_fn(320, 240, |x, y| {
        let block = (x / 40 + y / 40 + turn as u32).is_multiple_of(5);
        let t = turn as u32 * 37;
        if block {
            image::Rgb([255 - (t % 200) as u8, 40, (t % 255) as u8])
        } else {
            image::Rgb([((x + t) % 256) as u8, ((y * 2 + t) % 256) as u8, ((x + y) % 256) as u8])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("encoding a PNG in memory");
    ImageData::new(format!("story-{turn:02}.png"), out.into_inner())
}

fn medium() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-models/medium");
    if !root.join("llm/config.json").exists() {
        eprintln!("writing the medium random model to {} (once)…", root.display());
        ziya_visual::model::random::write(&root, ziya_visual::model::random::Preset::Medium, 1).unwrap();
    }
    (root.join("vision"), root.join("llm"))
}

fn run(name: &str, choice: ModelChoice) {
    let mut engine = Engine::spawn(Box::new(|| {}));
    engine.send(Command::Load(choice));
    loop {
        match engine.recv() {
            Some(Event::Loaded(s)) => {
                println!("{name}: context {}, {} positions per image", s.context_length, s.query_tokens);
                break;
            }
            Some(Event::LoadFailed(f)) => panic!("{name}: {}", f.message),
            _ => {}
        }
    }
    let params = SamplingParams { temperature: 0.0, max_new_tokens: ANSWER, ignore_eos: true, ..Default::default() };
    let mut history: Vec<ChatTurn> = Vec::new();
    let mut ttft = Vec::new();
    println!("turn  window  prompt  reused  first token");
    for turn in 0..TURNS {
        let mut turns = history.clone();
        turns.push(ChatTurn::question(format!("第{}张图：接着讲这个故事。", turn + 1), vec![picture(turn)]));
        let started = Instant::now();
        engine.send(Command::Generate { id: turn as u64, turns: turns.clone(), params: params.clone() });
        let mut first: Option<Duration> = None;
        let g = loop {
            match engine.recv() {
                Some(Event::Token { .. }) => {
                    first.get_or_insert_with(|| started.elapsed());
                }
                Some(Event::Finished { generation, .. }) => break generation,
                Some(Event::Failed { failure, .. }) => panic!("{name} turn {turn}: {}", failure.message),
                _ => {}
            }
        };
        let first = first.unwrap_or_else(|| started.elapsed()).as_secs_f64();
        println!(
            "{:>4}  {:>6}  {:>6}  {:>6}  {:>8.3} s",
            turn + 1,
            format!("{}-", g.context_start + 1),
            g.prompt_tokens,
            g.reused_tokens,
            first
        );
        ttft.push(first);
        let mut answered = turns.pop().unwrap();
        answered.answer = Some(g.text);
        answered.context_start = g.context_start;
        history.push(answered);
    }
    println!(
        "{name}: turn {TURNS} first token {:.3} s = {:.2}× turn 2's ({:.3} s)\n",
        ttft[TURNS - 1],
        ttft[TURNS - 1] / ttft[1],
        ttft[1]
    );
    engine.shutdown();
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-ziya");
    run("tiny", ModelChoice::folders(root.join("vision"), root.join("llm")));
    if std::env::var("ZIYA_BENCH_MODELS").as_deref() != Ok("tiny") {
        let (vision, llm) = medium();
        run("medium (f32)", ModelChoice::folders(vision, llm));
    }
}
