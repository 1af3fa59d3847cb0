//! What the tests share: the committed fixtures' paths, one typed reader of the reference cases
//! (tests/fixtures/make_fixtures.py writes them with HF transformers), one pipeline loader, one
//! way to start `ask`, and the app-driving helpers (`app`).
#![allow(dead_code)]

pub mod app;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};

use candle_core::{Device, Tensor};
use serde::Deserialize;
use serde_json::Value;
use ziya_visual::chat::{ChatTurn, ImageData};
use ziya_visual::device::{KvPrecision, Placement, Precision};
use ziya_visual::inference::Pipeline;
use ziya_visual::model::choice::ModelChoice;
use ziya_visual::model::files::ModelFiles;
use ziya_visual::model::layers::Quant;
use ziya_visual::model::weights::LoadCounter;
use ziya_visual::sampling::SamplingParams;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
pub fn vision_dir() -> PathBuf {
    root().join("assets/tiny-ziya/vision")
}
pub fn llm_dir() -> PathBuf {
    root().join("assets/tiny-ziya/llm")
}
pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}
pub fn image_path(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}
pub fn image(name: &str) -> ImageData {
    ImageData::new(name, std::fs::read(image_path(name)).expect("fixture image"))
}

/// Greedy decoding of up to `max_new_tokens`.
pub fn greedy(max_new_tokens: usize) -> SamplingParams {
    SamplingParams { temperature: 0.0, max_new_tokens, ..Default::default() }
}

// ---- The reference cases (tests/fixtures/reference/cases.json) ----

#[derive(Debug, Deserialize)]
pub struct Cases {
    pub num_query_tokens: usize,
    /// Conversations by name, turn by turn.
    pub cases: BTreeMap<String, Vec<RefTurn>>,
    pub preprocessing: Vec<RefImage>,
    pub tokenizer: Vec<RefTokens>,
    pub delta: RefDelta,
    pub long_story: RefStory,
}

/// A story with an image in every turn, long enough that the oldest turns leave the context
/// (each turn answered on the window `chat::context_window` keeps).
#[derive(Debug, Deserialize)]
pub struct RefStory {
    pub context: usize,
    pub max_new_tokens: usize,
    pub turns: Vec<RefTurn>,
}

/// One turn of a reference conversation, answered greedily by transformers (with the earlier
/// turns' reference answers as history).
#[derive(Debug, Clone, Deserialize)]
pub struct RefTurn {
    // (The delta case records only the answer: its question is in tests/it/delta.rs.)
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub query: String,
    #[serde(default)]
    pub max_new_tokens: usize,
    /// The prompt as laid out: token pieces and image slots.
    pub prompt_pieces: Vec<RefPiece>,
    pub prompt_tokens: usize,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub stopped_at_eos: bool,
    /// The gap between the two best logits at each step (how close a greedy choice was).
    pub margins: Vec<f32>,
    /// The first turn the model saw (long stories only).
    #[serde(default)]
    pub context_start: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RefPiece {
    Tokens { tokens: Vec<u32> },
    Image { image: String },
}

#[derive(Debug, Deserialize)]
pub struct RefImage {
    pub file: String,
    pub resized: String,
}

#[derive(Debug, Deserialize)]
pub struct RefTokens {
    pub text: String,
    pub ids_with_bos: Vec<u32>,
    pub decoded: String,
}

#[derive(Debug, Deserialize)]
pub struct RefDelta {
    pub merged_sha256_f16: BTreeMap<String, String>,
    pub single: RefTurn,
}

impl RefTurn {
    pub fn image_data(&self) -> Vec<ImageData> {
        self.images.iter().map(|n| image(n)).collect()
    }
    pub fn image_paths(&self) -> Vec<PathBuf> {
        self.images.iter().map(|n| image_path(n)).collect()
    }
    /// This turn as the question being asked.
    pub fn asked(&self) -> ChatTurn {
        ChatTurn::question(self.query.clone(), self.image_data())
    }
    /// This turn with the reference's answer.
    pub fn answered(&self) -> ChatTurn {
        ChatTurn { answer: Some(self.text.clone()), context_start: self.context_start, ..self.asked() }
    }

    /// The prompt layout the reference used, with image slots numbered in order.
    pub fn pieces(&self) -> Vec<ziya_visual::chat::PromptPiece> {
        use ziya_visual::chat::PromptPiece;
        let mut image = 0;
        self.prompt_pieces
            .iter()
            .map(|piece| match piece {
                RefPiece::Tokens { tokens } => PromptPiece::Tokens(tokens.clone()),
                RefPiece::Image { .. } => {
                    image += 1;
                    PromptPiece::Image(image - 1)
                }
            })
            .collect()
    }
}

pub fn cases() -> &'static Cases {
    static CASES: OnceLock<Cases> = OnceLock::new();
    CASES.get_or_init(|| {
        let text = std::fs::read_to_string(fixtures().join("reference/cases.json")).expect("reference/cases.json");
        serde_json::from_str(&text).expect("cases.json parses")
    })
}

/// The turns of a reference conversation.
pub fn case(name: &str) -> &'static [RefTurn] {
    cases().cases.get(name).unwrap_or_else(|| panic!("no reference case {name}"))
}

/// Every turn of every reference conversation, as (label, turns up to it with the reference's
/// earlier answers, the turn): the label is how reference tensors name it (`three_turn.turn1`).
pub fn reference_turns() -> Vec<(String, Vec<ChatTurn>, &'static RefTurn)> {
    let mut out = Vec::new();
    for (name, turns) in &cases().cases {
        let mut history: Vec<ChatTurn> = Vec::new();
        for (i, t) in turns.iter().enumerate() {
            let mut all = history.clone();
            all.push(t.asked());
            out.push((format!("{name}.turn{i}"), all, t));
            history.push(t.answered());
        }
    }
    out
}

pub fn reference_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("reference/tensors.safetensors"), &Device::Cpu)
        .expect("reference/tensors.safetensors")
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

// ---- Loading a pipeline ----

/// The two folders on the CPU in `precision`, quantized as asked. In f32 the KV cache is f32 too
/// (`--dtype f32 --kv f32`, the precision the transformers reference is computed in); otherwise it
/// is the CPU's default f16.
pub fn choice(vision: &Path, llm: &Path, precision: Precision, quant: Option<Quant>) -> ModelChoice {
    let kv = if precision == Precision::F32 { KvPrecision::F32 } else { KvPrecision::F16 };
    ModelChoice { precision, quant, kv, ..ModelChoice::folders(vision, llm) }
}

pub fn pipeline(choice: &ModelChoice) -> Pipeline {
    let files = ModelFiles::read(choice).expect("the model's folders read");
    let place = Placement::cpu(choice.precision);
    Pipeline::new(files.load(&place, Arc::new(LoadCounter::default())).expect("the model loads"))
}

/// The committed tiny checkpoint in f32.
pub fn tiny() -> Pipeline {
    pipeline(&choice(&vision_dir(), &llm_dir(), Precision::F32, None))
}

// ---- The binary ----

/// The `ziya-visual` binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ziya-visual"))
}

/// `ziya-visual ask`, built up flag by flag (on the tiny checkpoint unless told otherwise).
pub struct Ask {
    cmd: Command,
    models_given: bool,
}

impl Ask {
    pub fn new() -> Self {
        let mut cmd = bin();
        cmd.arg("ask");
        Self { cmd, models_given: false }
    }

    /// These two folders instead of the tiny checkpoint.
    pub fn models(mut self, vision: &Path, llm: &Path) -> Self {
        self.cmd.arg("--vision-model").arg(vision).arg("--llm-model").arg(llm);
        self.models_given = true;
        self
    }

    /// The vision folder and LLM flags as given (e.g. `--llm-base B --llm-delta D`).
    pub fn vision_and<S: AsRef<OsStr>>(mut self, vision: &Path, llm_flags: &[S]) -> Self {
        self.cmd.arg("--vision-model").arg(vision).args(llm_flags);
        self.models_given = true;
        self
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.cmd.arg(a);
        self
    }

    pub fn args<S: AsRef<OsStr>>(mut self, a: impl IntoIterator<Item = S>) -> Self {
        self.cmd.args(a);
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    /// Greedy decoding of up to `n` tokens.
    pub fn greedy(self, n: usize) -> Self {
        self.args(["--temperature", "0", "--max-new-tokens", &n.to_string()])
    }

    pub fn image(self, path: &Path) -> Self {
        self.arg("--image").arg(path)
    }

    /// A reference turn's images and decoding settings.
    pub fn turn(self, t: &RefTurn) -> Self {
        t.image_paths().iter().fold(self.greedy(t.max_new_tokens), |a, p| a.image(p))
    }

    /// Runs with `query` as the question.
    pub fn run(mut self, query: &str) -> Output {
        if !self.models_given {
            self.cmd.arg("--vision-model").arg(vision_dir()).arg("--llm-model").arg(llm_dir());
        }
        self.cmd.arg(query).output().expect("the binary runs")
    }

    /// Runs with `--json`: the one JSON object it prints (the run must succeed).
    pub fn json(self, query: &str) -> Value {
        let out = self.arg("--json").run(query);
        assert!(out.status.success(), "ask failed: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "exactly one JSON line on stdout: {stdout:?}");
        serde_json::from_str(&stdout).expect("stdout is JSON")
    }
}

impl Default for Ask {
    fn default() -> Self {
        Self::new()
    }
}

/// `ask --json`'s token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("array of ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// The run failed with one line on stderr that names every needle, and did not panic.
pub fn fails_naming(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line on stderr: {err:?}");
    for n in needles {
        assert!(err.contains(n), "stderr {err:?} should mention {n:?}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// Copies the files of a folder (not recursive).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
