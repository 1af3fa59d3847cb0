//! Answering a conversation: the loaded model and tokenizer, the image embeddings computed so
//! far (by content hash), and the KV cache of the last prompt so a follow-up question only
//! computes what is new.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::chat::{ChatTemplate, ChatTurn, Prompt, PromptItem, PromptPiece};
use crate::error::{Error, Result};
use crate::model::llama::KvCache;
use crate::model::weights::LoadCounter;
use crate::model::{ModelSpec, ZiyaVisual};
use crate::preprocess;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{ChatTokenizer, StreamDecoder};

/// Seconds spent in each phase of one answer.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Timings {
    pub load_s: f64,
    pub image_s: f64,
    pub prefill_s: f64,
    pub decode_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    MaxTokens,
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct Generation {
    /// Exactly the tokenizer's decode of `token_ids` (special tokens skipped).
    pub text: String,
    /// Generated ids, EOS excluded.
    pub token_ids: Vec<u32>,
    /// Positions in the prompt: text tokens plus num_query_tokens per image.
    pub prompt_tokens: usize,
    /// Of those, positions whose keys and values were reused from the previous prompt.
    pub reused_tokens: usize,
    pub stop: StopReason,
    pub timings: Timings,
}

impl Generation {
    pub fn generated_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// Decode speed in tokens per second, when there was decoding to time.
    pub fn tokens_per_second(&self) -> Option<f64> {
        (self.timings.decode_s > 0.0 && self.token_ids.len() > 1)
            .then(|| (self.token_ids.len() - 1) as f64 / self.timings.decode_s)
    }
}

/// Image embeddings kept for reuse; a conversation rarely has more images than this.
const IMAGE_CACHE_ENTRIES: usize = 64;

pub struct Pipeline {
    pub model: ZiyaVisual,
    pub tokenizer: ChatTokenizer,
    pub template: ChatTemplate,
    image_cache: HashMap<String, Tensor>,
    image_cache_order: Vec<String>,
    kv: KvCache,
    kv_items: Vec<PromptItem>,
}

/// What the memory planner needs from a model's folders, read once (configs, file precision,
/// and the quantization a GGUF already has).
pub struct PlanInputs {
    pub vision: crate::model::config::VisionRepoConfig,
    pub llm: crate::model::config::LlamaConfig,
    file_quant: Option<crate::model::layers::Quant>,
    vision_file_dtype: DType,
    llm_file_dtype: DType,
}

impl PlanInputs {
    pub fn read(spec: &ModelSpec) -> Result<Self> {
        use crate::model::plan::stored_dtype;
        let torch_dtype = |dir: &std::path::Path| -> Option<String> {
            let v: serde_json::Value = crate::model::config::read_json(&dir.join("config.json")).ok()?;
            v.get("torch_dtype")?.as_str().map(str::to_string)
        };
        Ok(Self {
            vision: crate::model::read_vision_config(&spec.vision_dir)?,
            llm: crate::model::read_llm_config(&spec.llm_dir)?,
            // A GGUF from `ziya-visual quantize` is already quantized.
            file_quant: gguf_quant(&spec.llm_dir),
            vision_file_dtype: stored_dtype(torch_dtype(&spec.vision_dir).as_deref(), DType::F32),
            llm_file_dtype: stored_dtype(torch_dtype(&spec.llm_dir).as_deref(), DType::F16),
        })
    }

    fn request(&self, spec: &ModelSpec, prompt: usize, context: usize) -> crate::model::plan::PlanRequest<'_> {
        crate::model::plan::PlanRequest {
            vision: &self.vision,
            llm: &self.llm,
            dtype: spec.dtype,
            quant: spec.quant.or(self.file_quant),
            vision_file_dtype: self.vision_file_dtype,
            llm_file_dtype: self.llm_file_dtype,
            prompt,
            context: context.min(self.llm.max_position_embeddings),
            on_cpu: spec.device.is_cpu(),
            delta: spec.llm_base.is_some(),
        }
    }

    /// The memory `spec` needs for a conversation of `prompt` positions growing to `context`.
    pub fn plan(&self, spec: &ModelSpec, prompt: usize, context: usize) -> crate::model::plan::Plan {
        crate::model::plan::estimate(&self.request(spec, prompt, context))
    }

    /// The plan, or a refusal with the numbers and a quantization that would fit when it does
    /// not fit in the device's free memory.
    pub fn check(&self, spec: &ModelSpec, prompt: usize, context: usize) -> Result<crate::model::plan::Plan> {
        use crate::model::plan::{available_bytes, check_fits, estimate};
        let request = self.request(spec, prompt, context);
        let plan = estimate(&request);
        check_fits(&plan, available_bytes(&spec.device), &request).map_err(Error::Request)?;
        Ok(plan)
    }
}

/// The memory `spec` needs for a conversation of `prompt` positions growing to `context`.
pub fn memory_plan(spec: &ModelSpec, prompt: usize, context: usize) -> Result<crate::model::plan::Plan> {
    Ok(PlanInputs::read(spec)?.plan(spec, prompt, context))
}

/// Refuses a model that does not fit in the device's free memory (see `PlanInputs::check`).
pub fn check_memory(spec: &ModelSpec, prompt: usize, context: usize) -> Result<crate::model::plan::Plan> {
    PlanInputs::read(spec)?.check(spec, prompt, context)
}

fn gguf_quant(path: &std::path::Path) -> Option<crate::model::layers::Quant> {
    if !crate::model::weights::is_gguf(path) {
        return None;
    }
    let content = crate::model::weights::read_gguf(path).ok()?;
    crate::model::layers::Quant::parse(&crate::model::weights::gguf_string(&content, crate::model::gguf::QUANT_KEY)?)
}

impl Pipeline {
    pub fn load(spec: &ModelSpec, counter: Arc<LoadCounter>) -> Result<Self> {
        // Cheap checks first, so a wrong folder is reported before minutes of weight loading.
        crate::model::read_vision_config(&spec.vision_dir)?;
        crate::model::read_llm_config(&spec.llm_dir)?;
        let tokenizer = ChatTokenizer::from_dir(&spec.llm_dir)?;
        let model = ZiyaVisual::load(spec, counter)?;
        Self::new(model, tokenizer)
    }

    pub fn new(model: ZiyaVisual, tokenizer: ChatTokenizer) -> Result<Self> {
        let vocab = model.llm.config().vocab_size;
        if tokenizer.vocab_size() > vocab {
            return Err(Error::Tokenizer {
                path: tokenizer.path().to_path_buf(),
                msg: format!(
                    "has {} tokens but the LLM's vocabulary is {vocab}: tokenizer and weights do not belong together",
                    tokenizer.vocab_size()
                ),
            });
        }
        let template = ChatTemplate::from_config(&model.vision_config);
        Ok(Self {
            model,
            tokenizer,
            template,
            image_cache: HashMap::new(),
            image_cache_order: Vec::new(),
            kv: KvCache::new(),
            kv_items: Vec::new(),
        })
    }

    pub fn query_tokens(&self) -> usize {
        self.model.vision_config.num_query_tokens
    }

    pub fn context_length(&self) -> usize {
        self.model.llm.config().max_position_embeddings
    }

    pub fn device(&self) -> &Device {
        self.model.device()
    }

    pub fn dtype(&self) -> DType {
        self.model.dtype()
    }

    /// Pixel values (1, 3, s, s) of an image, on the model's device.
    pub fn pixel_values(&self, bytes: &[u8], name: &str) -> Result<Tensor> {
        let size = self.model.image_size();
        Ok(preprocess::pixel_values(bytes, name, size, self.device())?.unsqueeze(0)?)
    }

    /// LLM-space embeddings (1, num_query_tokens, hidden) of an image, cached by content hash.
    pub fn image_embeddings(&mut self, hash: &str, name: &str, bytes: &[u8]) -> Result<Tensor> {
        if let Some(t) = self.image_cache.get(hash) {
            return Ok(t.clone());
        }
        let emb = self.model.image_embeddings(&self.pixel_values(bytes, name)?)?;
        if self.image_cache_order.len() >= IMAGE_CACHE_ENTRIES {
            let old = self.image_cache_order.remove(0);
            self.image_cache.remove(&old);
        }
        self.image_cache_order.push(hash.to_string());
        self.image_cache.insert(hash.to_string(), emb.clone());
        Ok(emb)
    }

    /// The whole prompt as LLM input embeddings (1, positions, hidden).
    pub fn prompt_embeddings(&mut self, prompt: &Prompt) -> Result<Tensor> {
        let mut parts = Vec::with_capacity(prompt.pieces.len());
        for piece in &prompt.pieces {
            match piece {
                PromptPiece::Tokens(ids) => parts.push(self.model.llm.embed(ids)?),
                PromptPiece::Image(i) => {
                    let img = &prompt.images[*i];
                    let emb = self.image_embeddings(&img.hash, &img.name, &img.bytes)?;
                    parts.push(emb.to_dtype(self.model.llm.dtype())?);
                }
            }
        }
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// Forgets the cached prompt (keys and values); image embeddings stay.
    pub fn reset_cache(&mut self) {
        self.kv.clear();
        self.kv_items.clear();
    }

    /// Answers the last turn of `turns` (whose `answer` is `None`). `on_text` gets each piece of
    /// text as it is decoded (possibly empty) and returns `false` to stop early.
    pub fn generate(
        &mut self,
        turns: &[ChatTurn],
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let result = self.generate_inner(turns, params, on_text);
        if result.is_err() {
            // The cache may hold a half-computed prompt; never reuse it.
            self.reset_cache();
        }
        result
    }

    fn generate_inner(
        &mut self,
        turns: &[ChatTurn],
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        params.validate().map_err(Error::Request)?;
        match turns.last() {
            Some(t) if t.answer.is_none() => {}
            _ => return Err(Error::Request("the last turn must be an unanswered question".into())),
        }
        let prompt = Prompt::build(&self.template, &self.tokenizer, turns)?;
        let q = self.query_tokens();
        let items = prompt.items(q);
        let context = self.context_length();
        if items.len() + params.max_new_tokens > context {
            return Err(Error::Request(format!(
                "the conversation needs {} positions (prompt {} + up to {} new tokens) but the model's context is {context}; \
                 start a new conversation or lower max_new_tokens",
                items.len() + params.max_new_tokens,
                items.len(),
                params.max_new_tokens
            )));
        }

        let mut timings = Timings::default();
        let t = Instant::now();
        let embeds = self.prompt_embeddings(&prompt)?;
        timings.image_s = t.elapsed().as_secs_f64();

        // Reuse the cached keys/values of the longest common prefix, but always recompute at
        // least the last position: its logits start the answer.
        let t = Instant::now();
        let common = self.kv_items.iter().zip(&items).take_while(|(a, b)| a == b).count().min(items.len() - 1);
        let common = common.min(self.kv.len());
        self.kv.truncate(common);
        self.kv_items.truncate(common);
        // Prefill in chunks: activation memory stays bounded however long the prompt is.
        let mut logits = Vec::new();
        let mut at = common;
        while at < items.len() {
            let n = (items.len() - at).min(crate::model::plan::PREFILL_CHUNK);
            logits = self.model.llm.forward(&embeds.narrow(1, at, n)?, &mut self.kv)?;
            at += n;
        }
        self.kv_items.extend_from_slice(&items[common..]);
        timings.prefill_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let eos = self.model.llm.config().eos_token_ids();
        let mut sampler = Sampler::new(params);
        let mut stream = StreamDecoder::new();
        let mut stop = StopReason::MaxTokens;
        loop {
            let id = sampler.sample(&mut logits, stream.ids());
            if !params.ignore_eos && eos.contains(&id) {
                stop = StopReason::Eos;
                break;
            }
            let delta = stream.push(&self.tokenizer, id)?;
            if !on_text(delta.as_deref().unwrap_or("")) {
                stop = StopReason::Cancelled;
                break;
            }
            if stream.ids().len() >= params.max_new_tokens {
                break;
            }
            let emb = self.model.llm.embed(&[id])?;
            logits = self.model.llm.forward(&emb, &mut self.kv)?;
            self.kv_items.push(PromptItem::Token(id));
        }
        let (rest_text, text) = stream.finish(&self.tokenizer)?;
        if !rest_text.is_empty() && stop != StopReason::Cancelled {
            on_text(&rest_text);
        }
        timings.decode_s = t.elapsed().as_secs_f64();
        Ok(Generation {
            text,
            token_ids: stream.ids().to_vec(),
            prompt_tokens: items.len(),
            reused_tokens: common,
            stop,
            timings,
        })
    }
}
