//! Command-line interface. `ziya-visual` alone opens the window; `ziya-visual ask …` answers one
//! question headlessly (tests, benchmarks and scripts drive it; its contract is fixed) through
//! the same engine the window uses; `ziya-visual serve …` answers the OpenAI API (`server/`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, FromArgMatches, Parser, Subcommand};
use serde::Serialize;

use crate::chat::{context_window, ChatTemplate, ImageData};
use crate::device::{DeviceKind, KvPrecision, Placement, Precision};
use crate::engine::{Command as EngineCommand, Engine, Event, ModelSummary};
use crate::error::{Error, Result};
use crate::generation::{Generation, Timings};
use crate::model::choice::{LlmSource, ModelChoice, ModelOverrides};
use crate::model::files::ModelFiles;
use crate::model::layers::Quant;
use crate::model::random::Preset;
use crate::sampling::SamplingParams;
use crate::session::{ImageStorage, ModelInfo, NewTurn, Session, TurnStats};

#[derive(Debug, Parser)]
#[command(name = "ziya-visual", version, about = "Talk about your photos with the Ziya-Visual model")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The model to load when the window opens; each flag given replaces the remembered one.
    #[command(flatten)]
    pub model: ModelFlags,
    /// Load the built-in demo model (tiny, random weights: its answers are noise).
    #[arg(long)]
    pub demo: bool,
    /// Open this session file in the window.
    #[arg(long)]
    pub session: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Answer one question about zero or more images, printing the answer as it is generated.
    Ask(Box<AskArgs>),
    /// Serve the OpenAI chat-completions API (POST /v1/chat/completions, GET /v1/models) on
    /// this machine, for chat UIs, scripts and editors.
    Serve(Box<ServeArgs>),
    /// Export a saved conversation as one self-contained HTML file or a Markdown folder.
    Export {
        /// The session file.
        #[arg(long)]
        session: PathBuf,
        /// Write one HTML file here (images inline).
        #[arg(long, conflicts_with = "markdown", required_unless_present = "markdown")]
        html: Option<PathBuf>,
        /// Write a folder with the .md file and its images under this folder.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Replace an existing export (otherwise an existing file is left alone).
        #[arg(long)]
        force: bool,
    },
    /// Quantize the LLM once into a GGUF file that starts fast (usable as --llm-model FILE.gguf).
    Quantize {
        #[command(flatten)]
        llm: LlmFlags,
        #[arg(long, value_parser = parse_quant)]
        quant: Quant,
        #[arg(long)]
        out: PathBuf,
    },
    /// Merge Meta's LLaMA-13B and the published Ziya delta into one safetensors folder.
    MergeDelta {
        /// Meta's LLaMA-13B in HF format.
        #[arg(long)]
        base: PathBuf,
        /// The Ziya-LLaMA-13B-v1 delta folder.
        #[arg(long)]
        delta: PathBuf,
        /// Where to write the merged folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Estimate the memory a model needs (weights, KV cache, activations, loading) as JSON.
    Plan {
        #[command(flatten)]
        model: ModelChoice,
        /// Prompt positions (text tokens + 32 per image).
        #[arg(long, default_value_t = 512)]
        prompt: usize,
        /// Total positions (prompt + new tokens); the model's context by default.
        #[arg(long)]
        context: Option<usize>,
    },
    /// Time the LLM alone (prefill, per-token decode, output head) and print one JSON line
    /// (scripts/bench-vs-llamacpp.sh runs it beside llama.cpp's llama-bench).
    #[command(hide = true)]
    BenchLlm(crate::llm_bench::LlmBenchArgs),
    /// Write a random-weight checkpoint pair in the real layout (benchmarks, memory checks).
    #[command(hide = true)]
    MakeRandomModel {
        /// medium or ziya13b.
        #[arg(long, value_parser = parse_preset)]
        preset: Preset,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write only the vision folder (the LLM folder gets its config.json alone).
        #[arg(long)]
        vision_only: bool,
    },
}

/// Where the LLM comes from, as flags: a folder or GGUF, or the published delta over its base.
#[derive(Debug, Clone, Default, Args)]
pub struct LlmFlags {
    /// The LLM: a merged Ziya-LLaMA-13B-v1 folder, or a .gguf from `ziya-visual quantize`.
    #[arg(long, conflicts_with_all = ["llm_base", "llm_delta"])]
    pub llm_model: Option<PathBuf>,
    /// Meta's LLaMA-13B (HF format): with --llm-delta, the LLM is merged while loading.
    #[arg(long, requires = "llm_delta")]
    pub llm_base: Option<PathBuf>,
    /// The published Ziya-LLaMA-13B-v1 delta folder (its config and tokenizer are used).
    #[arg(long, requires = "llm_base")]
    pub llm_delta: Option<PathBuf>,
}

impl LlmFlags {
    pub fn source(&self) -> Option<LlmSource> {
        match (&self.llm_model, &self.llm_base, &self.llm_delta) {
            (Some(m), _, _) => Some(LlmSource::from_path(m.clone())),
            (None, Some(base), Some(delta)) => Some(LlmSource::Delta { base: base.clone(), delta: delta.clone() }),
            _ => None,
        }
    }
}

/// The model flags: the command line's syntax for a [`ModelChoice`].
#[derive(Debug, Clone, Default, Args)]
pub struct ModelFlags {
    /// The vision folder (Ziya-BLIP2-14B-Visual-v1).
    #[arg(long)]
    pub vision_model: Option<PathBuf>,
    #[command(flatten)]
    pub llm: LlmFlags,
    /// cpu, cuda or metal (falls back to the CPU, saying why, when unavailable).
    #[arg(long, value_parser = parse_device)]
    pub device: Option<DeviceKind>,
    /// f32, f16 or bf16 (bf16 runs as f16 on the CPU).
    #[arg(long, value_parser = parse_precision)]
    pub dtype: Option<Precision>,
    /// Quantize the LLM's linear layers while loading: q8_0, q6k or q4k.
    #[arg(long, value_parser = parse_quant)]
    pub quant: Option<Quant>,
    /// KV cache precision on the CPU: f16 (default) or f32 (only with --dtype f32).
    #[arg(long, value_parser = parse_kv)]
    pub kv: Option<KvPrecision>,
}

impl ModelFlags {
    pub fn overrides(&self) -> ModelOverrides {
        ModelOverrides {
            vision: self.vision_model.clone(),
            llm: self.llm.source(),
            device: self.device,
            precision: self.dtype,
            quant: self.quant,
            kv: self.kv,
        }
    }
}

pub(crate) fn parse_device(s: &str) -> std::result::Result<DeviceKind, String> {
    DeviceKind::parse(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_precision(s: &str) -> std::result::Result<Precision, String> {
    Precision::parse(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_kv(s: &str) -> std::result::Result<KvPrecision, String> {
    KvPrecision::parse(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_quant(s: &str) -> std::result::Result<Quant, String> {
    Quant::parse(s).ok_or_else(|| format!("unknown quantization `{s}` (expected q8_0, q6k or q4k)"))
}

fn parse_preset(s: &str) -> std::result::Result<Preset, String> {
    match s {
        "medium" => Ok(Preset::Medium),
        "ziya13b" => Ok(Preset::Ziya13b),
        _ => Err(format!("unknown preset `{s}` (expected medium or ziya13b)")),
    }
}

// A command that needs a model takes `#[command(flatten)] model: ModelChoice`: the flags of
// `ModelFlags`, with the folders required.
impl FromArgMatches for ModelChoice {
    fn from_arg_matches(m: &clap::ArgMatches) -> std::result::Result<Self, clap::Error> {
        ModelFlags::from_arg_matches(m)?.overrides().into_choice().ok_or_else(|| {
            clap::Error::raw(
                clap::error::ErrorKind::MissingRequiredArgument,
                "give --vision-model DIR and --llm-model DIR|FILE.gguf (or --llm-base DIR --llm-delta DIR)\n",
            )
        })
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> std::result::Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for ModelChoice {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        ModelFlags::augment_args(cmd)
            .mut_arg("vision_model", |a| a.required(true))
            .mut_arg("llm_model", |a| a.required_unless_present_all(["llm_base", "llm_delta"]))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[derive(Debug, Args)]
pub struct AskArgs {
    #[command(flatten)]
    pub model: ModelChoice,
    /// An image for this question; repeat for several, in order.
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// Continue the conversation saved in this session file.
    #[arg(long)]
    pub session: Option<PathBuf>,
    /// Write the conversation, including this turn, to this session file (may equal --session).
    #[arg(long)]
    pub save_session: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0.1)]
    pub top_p: f32,
    /// 0 turns top-k off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// 1.0 turns the repetition penalty off.
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Generate exactly --max-new-tokens tokens (for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print one JSON object instead of streaming the answer.
    #[arg(long)]
    pub json: bool,
    /// The question.
    pub query: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelChoice,
    /// The address to listen on: loopback unless another is given (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port (0 picks a free one; the `listening on` line on stderr names it).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1 requests (default: $ZIYA_VISUAL_API_KEY, which
    /// keeps the key out of the process list).
    #[arg(long)]
    pub api_key: Option<String>,
}

impl ServeArgs {
    fn options(&self) -> crate::server::ServeOptions {
        let env_key = || std::env::var("ZIYA_VISUAL_API_KEY").ok().filter(|k| !k.is_empty());
        crate::server::ServeOptions {
            model: self.model.clone(),
            host: self.host.clone(),
            port: self.port,
            api_key: self.api_key.clone().or_else(env_key),
        }
    }
}

impl AskArgs {
    fn sampling(&self) -> SamplingParams {
        SamplingParams {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ignore_eos: self.ignore_eos,
        }
    }
}

/// `ask --json`'s output: its own shape (the contract), not the runtime's types.
#[derive(Serialize)]
struct AskJson<'a> {
    text: &'a str,
    token_ids: &'a [u32],
    prompt_tokens: usize,
    /// Index of the first turn the model saw (earlier turns of a long story had left its view).
    context_start: usize,
    generated_tokens: usize,
    device: &'a str,
    dtype: &'a str,
    timings: TimingsJson,
    memory: MemoryJson,
}

/// Peak resident memory by phase (Linux; null elsewhere), what scripts/bench-memory.sh holds
/// against the planner: loading peaks on a transient the run never sees, and the run on the KV
/// cache and activations, so one process-wide peak cannot check both.
#[derive(Serialize)]
struct MemoryJson {
    /// Peak while loading the model (from the start of the process).
    load_peak_bytes: Option<u64>,
    /// Peak from the end of loading to the end of the answer (weights resident included).
    run_peak_bytes: Option<u64>,
}

#[derive(Serialize)]
struct TimingsJson {
    load_s: f64,
    image_s: f64,
    prefill_s: f64,
    decode_s: f64,
}

impl From<Timings> for TimingsJson {
    fn from(t: Timings) -> Self {
        Self { load_s: t.load_s, image_s: t.image_s, prefill_s: t.prefill_s, decode_s: t.decode_s }
    }
}

/// Reads an image file given on the command line, checking that it decodes.
pub fn read_image_file(path: &Path) -> Result<ImageData> {
    let bytes = crate::preprocess::read_image_file(path)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
    // Decode once now so a bad file is reported before minutes of model loading.
    crate::preprocess::decode_rgb(&bytes, &path.display().to_string())?;
    Ok(ImageData::new(name, bytes))
}

/// Runs the subcommand; `None` opens the window (handled by the caller).
pub fn run(command: &Command) -> Result<()> {
    match command {
        Command::Ask(args) => run_ask(args),
        Command::Serve(args) => crate::server::serve(args.options()),
        Command::Export { session, html, markdown, force } => {
            run_export(session, html.as_deref(), markdown.as_deref(), *force)
        }
        Command::Quantize { llm, quant, out } => run_quantize(llm, *quant, out),
        Command::MergeDelta { base, delta, out } => run_merge_delta(base, delta, out),
        Command::Plan { model, prompt, context } => run_plan(model, *prompt, *context),
        Command::BenchLlm(args) => crate::llm_bench::run(args),
        Command::MakeRandomModel { preset, out, seed, vision_only } => {
            crate::model::random::write_parts(out, *preset, *seed, !vision_only).map(|(v, l)| {
                println!("{}\n{}", v.display(), l.display());
            })
        }
    }
}

/// `ziya-visual plan`: prints the estimate and the free memory as one JSON object.
pub fn run_plan(choice: &ModelChoice, prompt: usize, context: Option<usize>) -> Result<()> {
    let place = Placement::resolve(choice.device, choice.precision);
    let files = ModelFiles::read(choice)?;
    let max = files.context_length();
    let context = context.unwrap_or(max);
    if context == 0 || context > max {
        return Err(Error::Request(format!(
            "--context {context} is outside the model's context (1 to max_position_embeddings {max})"
        )));
    }
    if prompt > context {
        return Err(Error::Request(format!("--prompt {prompt} is longer than the context ({context} positions)")));
    }
    let plan = files.plan(&place, prompt, context);
    let free = crate::model::plan::available_bytes(&place.device);
    let out = serde_json::json!({"plan": plan, "available": free, "fits": free.is_none_or(|f| plan.total <= f)});
    println!("{out}");
    Ok(())
}

/// `ziya-visual quantize`, with a progress line on stderr.
pub fn run_quantize(llm: &LlmFlags, quant: Quant, out: &Path) -> Result<()> {
    let (dir, base) = match llm.source() {
        Some(LlmSource::Folder(d)) => (d, None),
        Some(LlmSource::Delta { base, delta }) => (delta, Some(base)),
        Some(LlmSource::Gguf(p)) => {
            return Err(Error::Request(format!("{} is already quantized: quantize a model folder", p.display())))
        }
        None => return Err(Error::Request("give --llm-model DIR, or --llm-base DIR --llm-delta DIR".into())),
    };
    let written = crate::model::gguf::quantize_to_gguf(&dir, base.as_deref(), quant, out, &mut |done, total| {
        eprint!("\rquantizing: {done}/{total} tensors   ");
    })?;
    eprintln!();
    println!("{}", written.display());
    Ok(())
}

/// `ziya-visual merge-delta`, with a progress line on stderr.
pub fn run_merge_delta(base: &Path, delta: &Path, out: &Path) -> Result<()> {
    let started = Instant::now();
    let written = crate::model::delta::merge_to_dir(base, delta, out, &mut |p| {
        let secs = started.elapsed().as_secs_f64();
        let eta = if p.bytes > 0 { secs * (p.total_bytes - p.bytes) as f64 / p.bytes as f64 } else { 0.0 };
        eprint!(
            "\rmerging: {}/{} tensors, {:.2}/{:.2} GB, {:.0} s left   ",
            p.tensors,
            p.total_tensors,
            p.bytes as f64 / 1e9,
            p.total_bytes as f64 / 1e9,
            eta
        );
    })?;
    eprintln!();
    println!("{}", written.display());
    Ok(())
}

/// `ziya-visual export`: prints the path written.
pub fn run_export(session: &Path, html: Option<&Path>, markdown: Option<&Path>, force: bool) -> Result<()> {
    let s = Session::load(session)?;
    for p in s.image_problems() {
        eprintln!("warning: {p}");
    }
    let opts = crate::export::ExportOptions { overwrite: force, session_file: Some(session.to_path_buf()) };
    let written = match (html, markdown) {
        (Some(h), _) => crate::export::write_html(&s, h, &opts)?,
        (None, Some(m)) => crate::export::write_markdown(&s, m, &opts)?,
        (None, None) => return Err(Error::Request("give --html FILE or --markdown DIR".into())),
    };
    println!("{}", written.display());
    Ok(())
}

/// Waits for the engine to finish loading; the failure's message otherwise.
fn wait_loaded(engine: &Engine) -> Result<ModelSummary> {
    loop {
        match engine.recv() {
            Some(Event::Loaded(summary)) => return Ok(*summary),
            Some(Event::LoadFailed(f)) => return Err(Error::Request(f.message)),
            Some(_) => {}
            None => return Err(Error::Request("the engine stopped".into())),
        }
    }
}

/// Waits for request `id` to end, passing its text to `on_text` as it streams in.
fn wait_answer(engine: &Engine, id: u64, on_text: &mut dyn FnMut(&str)) -> Result<Generation> {
    loop {
        match engine.recv() {
            Some(Event::Token { id: i, text }) if i == id => on_text(&text),
            Some(Event::Finished { id: i, generation }) if i == id => return Ok(generation),
            Some(Event::Failed { id: i, failure }) if i == id => return Err(Error::Request(failure.message)),
            Some(_) => {}
            None => return Err(Error::Request("the engine stopped".into())),
        }
    }
}

/// Refuses a `--save-session` target that cannot be written, before anything is generated.
fn check_writable_target(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::Request(format!("--save-session {}: is a folder, not a file", path.display())));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Error::Request(format!(
            "--save-session {}: the folder {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    Ok(())
}

pub fn run_ask(args: &AskArgs) -> Result<()> {
    let params = args.sampling();
    params.validate().map_err(Error::Request)?;
    if let Some(path) = &args.save_session {
        check_writable_target(path)?;
    }
    let images = args.images.iter().map(|p| read_image_file(p)).collect::<Result<Vec<_>>>()?;
    let mut session = match &args.session {
        Some(p) => Session::load(p)?,
        None => Session::new(),
    };
    let turns = session.chat_turns(&args.query, &images)?;

    // Size the job before loading anything heavy: the prompt's length needs only the configs
    // and the tokenizer, read once here and handed to the engine. A long story keeps only its
    // latest turns in view (chat::context_window); a question that cannot fit even alone is
    // refused now, not after minutes of loading.
    let files = ModelFiles::read(&args.model)?;
    if let (None, Some(q)) = (files.file_quant, files.choice.quant) {
        eprintln!(
            "note: quantizing the LLM to {} while loading (on every core); `ziya-visual quantize --quant {} --out \
             FILE.gguf` (with the same --llm-* flags) once, then `--llm-model FILE.gguf`, makes later starts fast",
            q.name(),
            q.name()
        );
    }
    let context = files.context_length();
    let template = ChatTemplate::from_config(&files.vision);
    let window =
        context_window(&template, &files.tokenizer, &turns, files.query_tokens(), context, params.max_new_tokens)?
            .map_err(Error::TooLong)?;
    let prompt = window.len;
    let needed = prompt.saturating_add(params.max_new_tokens);

    let mut engine = Engine::spawn(Box::new(|| {}));
    engine.send(EngineCommand::LoadFiles { files: Box::new(files), prompt, context: needed });
    let summary = wait_loaded(&engine)?;
    let load_peak_bytes = crate::llm_bench::peak_rss_bytes();
    let reset = crate::llm_bench::reset_peak_rss();
    for note in &summary.device_notes {
        eprintln!("note: {note}");
    }

    let stdout = std::io::stdout();
    let stream = !args.json;
    let mut out = stdout.lock();
    engine.send(EngineCommand::Generate { id: 1, turns, params: params.clone() });
    let mut gen = wait_answer(&engine, 1, &mut |delta| {
        if stream && !delta.is_empty() {
            // A closed pipe (`| head`) is not a reason to stop generating the session's answer.
            let _ = out.write_all(delta.as_bytes());
            let _ = out.flush();
        }
    })?;
    engine.shutdown();
    gen.timings.load_s = summary.load_s;
    if stream {
        let _ = writeln!(out);
    }
    if args.json {
        let json = AskJson {
            text: &gen.text,
            token_ids: &gen.token_ids,
            prompt_tokens: gen.prompt_tokens,
            context_start: gen.context_start,
            generated_tokens: gen.generated_tokens(),
            device: &summary.device,
            dtype: &summary.dtype,
            timings: gen.timings.into(),
            memory: MemoryJson {
                load_peak_bytes,
                run_peak_bytes: if reset { crate::llm_bench::peak_rss_bytes() } else { None },
            },
        };
        let text = serde_json::to_string(&json).map_err(|e| Error::Request(e.to_string()))?;
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    // Saved last: should the save fail, the answer is already on stdout.
    if let Some(path) = &args.save_session {
        session.push_turn(NewTurn {
            images,
            query: args.query.clone(),
            answer: gen.text.clone(),
            token_ids: gen.token_ids.clone(),
            settings: Some(params),
            stats: Some(TurnStats::of(&gen)),
            model: Some(ModelInfo::of(&summary)),
            context_start: Some(gen.context_start),
        });
        session.save(path, ImageStorage::Beside)?;
    }
    Ok(())
}
