//! Command-line interface. `ziya-visual` alone opens the window; `ziya-visual ask …` answers one
//! question headlessly (tests, benchmarks and scripts drive it; its contract is fixed).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::chat::ImageData;
use crate::device::{device_name, dtype_name, effective_dtype, parse_dtype, select_device};
use crate::error::{Error, Result};
use crate::inference::{Pipeline, Timings};
use crate::model::weights::LoadCounter;
use crate::model::ModelSpec;
use crate::sampling::SamplingParams;
use crate::session::{ImageStorage, ModelInfo, NewTurn, Session, TurnStats};

#[derive(Debug, Parser)]
#[command(name = "ziya-visual", version, about = "Talk about your photos with the Ziya-Visual model")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Vision model folder (Ziya-BLIP2-14B-Visual-v1) to load when the window opens.
    #[arg(long, global = false)]
    pub vision_model: Option<PathBuf>,
    /// LLM folder (Ziya-LLaMA-13B-v1, merged) to load when the window opens.
    #[arg(long)]
    pub llm_model: Option<PathBuf>,
    /// Device for the window's model: cpu, cuda or metal.
    #[arg(long)]
    pub device: Option<String>,
    /// Precision for the window's model: f32, f16 or bf16.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Quantization for the window's model: q8_0, q6k or q4k.
    #[arg(long, value_enum)]
    pub quant: Option<crate::model::layers::Quant>,
    /// Meta's LLaMA-13B base for a delta given with --llm-delta (merged while loading).
    #[arg(long, requires = "llm_delta")]
    pub llm_base: Option<PathBuf>,
    /// The published Ziya-LLaMA-13B-v1 delta folder (with --llm-base).
    #[arg(long, requires = "llm_base", conflicts_with = "llm_model")]
    pub llm_delta: Option<PathBuf>,
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
    },
    /// Quantize the LLM once into a GGUF file that starts fast (usable as --llm-model FILE.gguf).
    Quantize {
        /// The LLM folder (merged), or the delta folder with --llm-base.
        #[arg(long)]
        llm_model: PathBuf,
        /// Meta's LLaMA-13B base when --llm-model is the published delta.
        #[arg(long)]
        llm_base: Option<PathBuf>,
        #[arg(long, value_enum)]
        quant: crate::model::layers::Quant,
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
        #[arg(long)]
        vision_model: PathBuf,
        #[arg(long)]
        llm_model: PathBuf,
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[arg(long, value_enum)]
        quant: Option<crate::model::layers::Quant>,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Prompt positions (text tokens + 32 per image).
        #[arg(long, default_value_t = 512)]
        prompt: usize,
        /// Total positions (prompt + new tokens); the model's context by default.
        #[arg(long)]
        context: Option<usize>,
    },
    /// Write a random-weight checkpoint pair in the real layout (benchmarks, memory checks).
    #[command(hide = true)]
    MakeRandomModel {
        #[arg(long, value_enum)]
        preset: crate::model::random::Preset,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Debug, Args)]
pub struct AskArgs {
    /// Folder of the vision model (Ziya-BLIP2-14B-Visual-v1).
    #[arg(long)]
    pub vision_model: PathBuf,
    /// Folder of the LLaMA model (Ziya-LLaMA-13B-v1, merged with its base).
    #[arg(long, required_unless_present_all = ["llm_base", "llm_delta"], conflicts_with_all = ["llm_base", "llm_delta"])]
    pub llm_model: Option<PathBuf>,
    /// Meta's LLaMA-13B (HF format): with --llm-delta, the LLM is merged while loading.
    #[arg(long, requires = "llm_delta")]
    pub llm_base: Option<PathBuf>,
    /// The published Ziya-LLaMA-13B-v1 delta folder (its config and tokenizer are used).
    #[arg(long, requires = "llm_base")]
    pub llm_delta: Option<PathBuf>,
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
    /// f32, f16 or bf16 (bf16 runs as f16 on the CPU).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Quantize the LLM's linear layers while loading: q8_0, q6k or q4k.
    #[arg(long, value_enum)]
    pub quant: Option<crate::model::layers::Quant>,
    /// cpu, cuda or metal (falls back to the CPU, saying why, when unavailable).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Generate exactly --max-new-tokens tokens (for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print one JSON object instead of streaming the answer.
    #[arg(long)]
    pub json: bool,
    /// The question.
    pub query: String,
}

#[derive(Serialize)]
struct AskJson<'a> {
    text: &'a str,
    token_ids: &'a [u32],
    prompt_tokens: usize,
    generated_tokens: usize,
    device: &'a str,
    dtype: &'a str,
    timings: Timings,
}

/// Reads an image file given on the command line, checking that it decodes.
pub fn read_image_file(path: &std::path::Path) -> Result<ImageData> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
    // Decode once now so a bad file is reported before minutes of model loading.
    crate::preprocess::decode_rgb(&bytes, &path.display().to_string())?;
    Ok(ImageData::new(name, bytes))
}

/// `ziya-visual plan`: prints the estimate and the free memory as one JSON object.
#[allow(clippy::too_many_arguments)]
pub fn run_plan(
    vision: &std::path::Path,
    llm: &std::path::Path,
    dtype: &str,
    quant: Option<crate::model::layers::Quant>,
    device: &str,
    prompt: usize,
    context: Option<usize>,
) -> Result<()> {
    let (device, _) = select_device(device)?;
    let (dtype, _) = effective_dtype(&device, parse_dtype(dtype)?);
    let context = match context {
        Some(c) => c,
        None => crate::model::read_llm_config(llm)?.max_position_embeddings,
    };
    let spec = ModelSpec {
        vision_dir: vision.to_path_buf(),
        llm_dir: llm.to_path_buf(),
        dtype,
        device,
        quant,
        llm_base: None,
    };
    let plan = crate::inference::memory_plan(&spec, prompt, context)?;
    let free = crate::model::plan::available_bytes(&spec.device);
    let out = serde_json::json!({"plan": plan, "available": free, "fits": free.is_none_or(|f| plan.total <= f)});
    println!("{out}");
    Ok(())
}

/// `ziya-visual quantize`, with a progress line on stderr.
pub fn run_quantize(
    llm: &std::path::Path,
    base: Option<&std::path::Path>,
    quant: crate::model::layers::Quant,
    out: &std::path::Path,
) -> Result<()> {
    let written = crate::model::gguf::quantize_to_gguf(llm, base, quant, out, &mut |done, total| {
        eprint!("\rquantizing: {done}/{total} tensors   ");
    })?;
    eprintln!();
    println!("{}", written.display());
    Ok(())
}

/// `ziya-visual merge-delta`, with a progress line on stderr.
pub fn run_merge_delta(base: &std::path::Path, delta: &std::path::Path, out: &std::path::Path) -> Result<()> {
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
pub fn run_export(
    session: &std::path::Path,
    html: Option<&std::path::Path>,
    markdown: Option<&std::path::Path>,
) -> Result<()> {
    let s = Session::load(session)?;
    for p in s.image_problems() {
        eprintln!("warning: {p}");
    }
    let written = match (html, markdown) {
        (Some(h), _) => crate::export::write_html(&s, h)?,
        (None, Some(m)) => crate::export::write_markdown(&s, m)?,
        (None, None) => return Err(Error::Request("give --html FILE or --markdown DIR".into())),
    };
    println!("{}", written.display());
    Ok(())
}

pub fn run_ask(args: &AskArgs) -> Result<()> {
    let params = SamplingParams {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        repeat_penalty: args.repeat_penalty,
        seed: args.seed,
        ignore_eos: args.ignore_eos,
    };
    params.validate().map_err(Error::Request)?;
    let (device, why_not) = select_device(&args.device)?;
    if let Some(reason) = why_not {
        eprintln!("warning: {reason}; running on the CPU");
    }
    let (dtype, note) = effective_dtype(&device, parse_dtype(&args.dtype)?);
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    let images = args.images.iter().map(|p| read_image_file(p)).collect::<Result<Vec<_>>>()?;
    let mut session = match &args.session {
        Some(p) => Session::load(p)?,
        None => Session::new(),
    };
    let turns = session.chat_turns(&args.query, &images)?;

    // Size the job before loading anything heavy: the prompt's length needs only the tokenizer.
    let vision_config = crate::model::read_vision_config(&args.vision_model)?;
    let template = crate::chat::ChatTemplate::from_config(&vision_config);
    let llm_dir = args.llm_model.clone().or_else(|| args.llm_delta.clone()).unwrap_or_default();
    crate::model::read_llm_config(&llm_dir)?; // a wrong folder is named before anything else
    let tokenizer = crate::tokenizer::ChatTokenizer::from_dir(&llm_dir)?;
    let prompt = crate::chat::Prompt::build(&template, &tokenizer, &turns)?.len(vision_config.num_query_tokens);

    let t = Instant::now();
    let spec = ModelSpec {
        vision_dir: args.vision_model.clone(),
        llm_dir: llm_dir.clone(),
        dtype,
        device,
        quant: args.quant,
        llm_base: args.llm_base.clone(),
    };
    crate::inference::check_memory(&spec, prompt, prompt + args.max_new_tokens)?;
    // The folders were checked above; the tokenizer already read is the pipeline's.
    let model = crate::model::ZiyaVisual::load(&spec, Arc::new(LoadCounter::default()))?;
    let mut pipeline = Pipeline::new(model, tokenizer)?;
    let load_s = t.elapsed().as_secs_f64();

    let stdout = std::io::stdout();
    let stream = !args.json;
    let mut out = stdout.lock();
    let mut on_text = |delta: &str| {
        if stream && !delta.is_empty() {
            // A closed pipe (`| head`) is not a reason to stop generating the session's answer.
            let _ = out.write_all(delta.as_bytes());
            let _ = out.flush();
        }
        true
    };
    let mut gen = pipeline.generate(&turns, &params, &mut on_text)?;
    gen.timings.load_s = load_s;
    if stream {
        let _ = writeln!(out);
    }

    if let Some(path) = &args.save_session {
        session.model = Some(ModelInfo {
            vision_model: args.vision_model.display().to_string(),
            llm_model: match &args.llm_base {
                Some(base) => format!("{} + delta {}", base.display(), llm_dir.display()),
                None => llm_dir.display().to_string(),
            },
            dtype: dtype_name(pipeline.dtype()).into(),
            device: device_name(pipeline.device()).into(),
        });
        session.settings = Some(params.clone());
        let stats = TurnStats {
            prompt_tokens: gen.prompt_tokens,
            generated_tokens: gen.generated_tokens(),
            stop: gen.stop,
            timings: gen.timings,
        };
        session.push_turn(NewTurn {
            images: images.clone(),
            query: args.query.clone(),
            answer: gen.text.clone(),
            token_ids: gen.token_ids.clone(),
            settings: Some(params.clone()),
            stats: Some(stats),
        });
        session.save(path, ImageStorage::Beside)?;
    }

    if args.json {
        let json = AskJson {
            text: &gen.text,
            token_ids: &gen.token_ids,
            prompt_tokens: gen.prompt_tokens,
            generated_tokens: gen.generated_tokens(),
            device: device_name(pipeline.device()),
            dtype: dtype_name(pipeline.dtype()),
            timings: gen.timings,
        };
        let text = serde_json::to_string(&json).map_err(|e| Error::Request(e.to_string()))?;
        let _ = writeln!(out, "{text}");
    }
    Ok(())
}
