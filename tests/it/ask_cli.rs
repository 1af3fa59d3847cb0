//! The `ziya-visual ask` contract, driven as scripts and benchmarks drive it: the real binary on
//! the committed tiny checkpoints.

use std::process::Output;

use serde_json::Value;

use crate::common::*;

/// `ask` on the tiny checkpoint with these flags; the last one is the question.
fn ask(args: &[&str]) -> Output {
    let (query, flags) = args.split_last().expect("a question");
    Ask::new().args(flags).run(query)
}

/// A reference turn through `ask --json` with `extra` flags.
fn run_turn(turn: &RefTurn, extra: &[&str]) -> Value {
    Ask::new().turn(turn).args(extra).json(&turn.query)
}

#[test]
fn json_output_has_the_reference_ids_and_every_field() {
    let turn = &case("two_images")[0];
    let j = run_turn(turn, &[]);
    assert_eq!(ids(&j["token_ids"]), turn.token_ids);
    assert_eq!(j["text"], turn.text.as_str());
    assert_eq!(j["prompt_tokens"].as_u64().unwrap() as usize, turn.prompt_tokens);
    assert_eq!(j["generated_tokens"].as_u64().unwrap() as usize, turn.token_ids.len());
    assert_eq!(j["device"], "cpu");
    assert_eq!(j["dtype"], "f32");
    for t in ["load_s", "image_s", "prefill_s", "decode_s"] {
        assert!(j["timings"][t].as_f64().unwrap() >= 0.0, "timings.{t}");
    }
    // Peak memory by phase (Linux), for scripts/bench-memory.sh.
    if cfg!(target_os = "linux") {
        for m in ["load_peak_bytes", "run_peak_bytes"] {
            assert!(j["memory"][m].as_u64().unwrap() > 1 << 20, "memory.{m}: {}", j["memory"]);
        }
    }
}

#[test]
fn three_turns_through_session_files_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("story.json");
    let s = session.to_str().unwrap();
    for i in 0..3 {
        let turn = &case("three_turn")[i];
        let extra: Vec<&str> =
            if i == 0 { vec!["--save-session", s] } else { vec!["--session", s, "--save-session", s] };
        let j = run_turn(turn, &extra);
        assert_eq!(ids(&j["token_ids"]), turn.token_ids, "turn {i}");
    }
    // The session keeps its images by content hash beside the file, not as paths to the originals.
    let text = std::fs::read_to_string(&session).unwrap();
    assert!(!text.contains("tests/fixtures/images"), "no paths into the photo folder");
    assert_eq!(std::fs::read_dir(dir.path().join("story.images")).unwrap().count(), 2);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["format"], "ziya-visual-session");
    assert_eq!(v["version"], 2);
    assert_eq!(v["turns"].as_array().unwrap().len(), 3);
}

#[test]
fn streaming_prints_the_answer_text() {
    let turn = &case("single")[0];
    let out = Ask::new().turn(turn).run(&turn.query);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{}\n", turn.text));
}

#[test]
fn ignore_eos_generates_exactly_n_tokens_and_seeds_reproduce() {
    let run = |seed: &str| {
        let j = Ask::new()
            .args(["--max-new-tokens", "40", "--ignore-eos", "--temperature", "1.0", "--top-p", "0.9", "--seed", seed])
            .json("hi");
        ids(&j["token_ids"])
    };
    let a = run("7");
    assert_eq!(a.len(), 40);
    assert_eq!(a, run("7"), "same seed, same answer");
    assert_ne!(a, run("8"), "another seed, another answer");
}

#[test]
fn errors_are_one_line_and_name_the_culprit() {
    let notes = image_path("../corpus.txt");
    fails_naming(&ask(&["--image", notes.to_str().unwrap(), "q"]), &["corpus.txt"]);
    fails_naming(&ask(&["--image", "/nonexistent/cat.jpg", "q"]), &["/nonexistent/cat.jpg"]);
    fails_naming(&ask(&["--max-new-tokens", "600", "q"]), &["600", "512"]);
    fails_naming(&ask(&["--dtype", "f8", "q"]), &["f8"]);
    fails_naming(&ask(&["--top-p", "0", "q"]), &["top_p"]);
    fails_naming(&ask(&["--session", "/nonexistent/s.json", "q"]), &["/nonexistent/s.json"]);

    fails_naming(&ask_with(&llm_dir(), &vision_dir()), &["swapped"]);
}

fn ask_with(vision: &std::path::Path, llm: &std::path::Path) -> Output {
    Ask::new().models(vision, llm).run("q")
}

#[test]
fn broken_checkpoints_are_reported_by_file() {
    let dir = tempfile::tempdir().unwrap();
    let (vision, llm) = (dir.path().join("vision"), dir.path().join("llm"));
    copy_dir(&vision_dir(), &vision);
    copy_dir(&llm_dir(), &llm);

    // A truncated shard.
    let shard = llm.join("pytorch_model-00002-of-00003.bin");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    fails_naming(&ask_with(&vision, &llm), &["pytorch_model-00002-of-00003.bin"]);
    std::fs::write(&shard, &bytes).unwrap();

    // A missing shard.
    std::fs::remove_file(&shard).unwrap();
    fails_naming(&ask_with(&vision, &llm), &["pytorch_model-00002-of-00003.bin", "missing"]);
    std::fs::write(&shard, &bytes).unwrap();

    // No tokenizer at all.
    std::fs::remove_file(llm.join("tokenizer.json")).unwrap();
    std::fs::remove_file(llm.join("tokenizer.model")).unwrap();
    fails_naming(&ask_with(&vision, &llm), &["tokenizer"]);
    copy_dir(&llm_dir(), &llm);

    // A config that does not match the weights.
    let cfg = std::fs::read_to_string(llm.join("config.json")).unwrap();
    std::fs::write(llm.join("config.json"), cfg.replace("\"intermediate_size\": 512", "\"intermediate_size\": 640"))
        .unwrap();
    fails_naming(&ask_with(&vision, &llm), &["gate_proj", "shape"]);
    std::fs::write(llm.join("config.json"), &cfg).unwrap();

    // A corrupt config.
    std::fs::write(vision.join("config.json"), "{ not json").unwrap();
    fails_naming(&ask_with(&vision, &llm), &["config.json"]);

    // A vision checkpoint with a tensor missing.
    let st = dir.path().join("vision-st");
    copy_dir(&fixtures().join("layouts/vision-safetensors"), &st);
    let mut tensors = candle_core::safetensors::load(st.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    tensors.remove("vision_model.encoder.layers.1.mlp.fc1.weight").unwrap();
    candle_core::safetensors::save(&tensors, st.join("model.safetensors")).unwrap();
    fails_naming(&ask_with(&st, &llm), &["vision_model.encoder.layers.1.mlp.fc1.weight", "missing"]);
}

#[test]
fn a_version_1_session_continues_with_the_reference_ids() {
    use ziya_visual::session::{ImageStorage, Session};
    let dir = tempfile::tempdir().unwrap();
    let fixtures = fixtures().join("sessions");
    let mut s = Session::load(&fixtures.join("v1-three-turns.json")).unwrap();
    assert_eq!(s.migrated_from, Some(1));
    // Keep the first two turns, continue with the reference's third question.
    s.delete_turn(2);
    let path = dir.path().join("continued.json");
    s.save(&path, ImageStorage::Embedded).unwrap();
    let turn = &case("three_turn")[2];
    let j = run_turn(turn, &["--session", path.to_str().unwrap()]);
    assert_eq!(ids(&j["token_ids"]), turn.token_ids);
    // A file written before long stories were trimmed continues unchanged while it fits.
    assert_eq!(j["context_start"], 0);
}

#[test]
fn a_truncated_safetensors_file_is_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("vision-st");
    copy_dir(&fixtures().join("layouts/vision-safetensors"), &st);
    let file = st.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() * 2 / 3]).unwrap();
    fails_naming(&ask_with(&st, &llm_dir()), &["model.safetensors", "truncated"]);
}

fn plan_total(extra: &[&str]) -> u64 {
    let out = bin()
        .args(["plan", "--vision-model"])
        .arg(vision_dir())
        .arg("--llm-model")
        .arg(llm_dir())
        .args(extra)
        .output()
        .unwrap();
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    j["plan"]["total"].as_u64().unwrap()
}

#[test]
fn a_model_that_does_not_fit_is_refused_before_loading_with_a_quantization_that_would() {
    // Size the same request ask will make, then pretend the machine has less free memory than
    // f32 needs for it but more than q4k does.
    let prompt = Ask::new().args(["--max-new-tokens", "1"]).json("q")["prompt_tokens"].as_u64().unwrap();
    let sizes = ["--prompt".to_string(), prompt.to_string(), "--context".into(), (prompt + 400).to_string()];
    let sizes: Vec<&str> = sizes.iter().map(|s| s.as_str()).collect();
    let f32 = plan_total(&sizes);
    let q4k = plan_total(&[sizes.as_slice(), &["--quant", "q4k"]].concat());
    assert!(q4k < f32);
    let limit = (f32 + q4k) / 2;
    let run = |extra: &[&str]| Ask::new().env("ZIYA_VISUAL_MEMORY_LIMIT", limit.to_string()).args(extra).run("q");
    fails_naming(&run(&["--max-new-tokens", "400"]), &["needs about", "is free", "with --quant"]);
    let ok = run(&["--max-new-tokens", "400", "--quant", "q4k"]);
    assert!(ok.status.success(), "the suggested quantization fits: {}", String::from_utf8_lossy(&ok.stderr));
}
