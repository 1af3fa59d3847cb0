//! A model's folders read once: both configs, the precision the weights are stored in, the
//! quantization a GGUF already has, and the tokenizer. Everything that needs to know about a model
//! before its weights are loaded — the memory planner, the prompt-length check, the panel's
//! estimates — asks this, and loading starts from it, so no config is parsed twice.

use std::path::Path;
use std::sync::Arc;

use candle_core::DType;

use super::choice::{LlmSource, ModelChoice};
use super::config::{read_json, LlamaConfig, VisionRepoConfig};
use super::gguf::GgufHeader;
use super::layers::Quant;
use super::plan::{self, Plan, PlanRequest};
use super::weights::{Checkpoint, LoadCounter};
use super::{read_llm_config, read_vision_config, ZiyaVisual};
use crate::device::Placement;
use crate::error::{Error, Result};
use crate::tokenizer::ChatTokenizer;

pub struct ModelFiles {
    pub choice: ModelChoice,
    pub vision: VisionRepoConfig,
    pub llm: LlamaConfig,
    pub tokenizer: ChatTokenizer,
    /// The block format of a GGUF's linear layers (it is already quantized).
    pub file_quant: Option<Quant>,
    vision_file_dtype: DType,
    llm_file_dtype: DType,
}

impl std::fmt::Debug for ModelFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFiles").field("choice", &self.choice).finish_non_exhaustive()
    }
}

/// A loaded model and its tokenizer.
pub struct LoadedModel {
    pub model: ZiyaVisual,
    pub tokenizer: ChatTokenizer,
}

/// config.json's `torch_dtype` of a folder, if it says.
fn torch_dtype(dir: &Path) -> Option<String> {
    let v: serde_json::Value = read_json(&dir.join("config.json")).ok()?;
    v.get("torch_dtype")?.as_str().map(str::to_string)
}

impl ModelFiles {
    /// Reads the configs and the tokenizer (small files; the weights are not touched). A wrong
    /// folder is named here, before anything heavy happens.
    pub fn read(choice: &ModelChoice) -> Result<Self> {
        let vision = read_vision_config(&choice.vision)?;
        let (llm, tokenizer, file_quant, llm_torch_dtype) = match &choice.llm {
            LlmSource::Gguf(path) => {
                let header = GgufHeader::read(path)?;
                (header.llm_config()?, header.tokenizer()?, header.quant, None)
            }
            LlmSource::Folder(dir) | LlmSource::Delta { delta: dir, .. } => {
                let llm = read_llm_config(dir)?;
                (llm, ChatTokenizer::from_dir(dir)?, None, torch_dtype(dir))
            }
        };
        if let Some(base) = choice.llm.base() {
            // The base's own config is only checked: the delta's describes the merged model.
            read_llm_config(base)?;
        }
        if tokenizer.vocab_size() > llm.vocab_size {
            return Err(Error::Tokenizer {
                path: tokenizer.path().to_path_buf(),
                msg: format!(
                    "has {} tokens but the LLM's vocabulary is {}: tokenizer and weights do not belong together",
                    tokenizer.vocab_size(),
                    llm.vocab_size
                ),
            });
        }
        Ok(Self {
            vision_file_dtype: plan::stored_dtype(torch_dtype(&choice.vision).as_deref(), DType::F32),
            llm_file_dtype: plan::stored_dtype(llm_torch_dtype.as_deref(), DType::F16),
            choice: choice.clone(),
            vision,
            llm,
            tokenizer,
            file_quant,
        })
    }

    /// The quantization the LLM runs with: a GGUF's own, else the one asked for.
    pub fn quant(&self) -> Option<Quant> {
        self.file_quant.or(self.choice.quant)
    }

    pub fn context_length(&self) -> usize {
        self.llm.max_position_embeddings
    }

    /// Positions of an image in the prompt.
    pub fn query_tokens(&self) -> usize {
        self.vision.num_query_tokens
    }

    fn request(
        &self,
        quant: Option<Quant>,
        dtype: DType,
        on_cpu: bool,
        prompt: usize,
        context: usize,
    ) -> PlanRequest<'_> {
        PlanRequest {
            vision: &self.vision,
            llm: &self.llm,
            dtype,
            quant: self.file_quant.or(quant),
            vision_file_dtype: self.vision_file_dtype,
            llm_file_dtype: self.llm_file_dtype,
            // Nothing longer than the context is ever prefilled (a huge `--prompt` is sized as
            // the whole context, not looped over).
            prompt: prompt.min(context).min(self.llm.max_position_embeddings),
            context: context.min(self.llm.max_position_embeddings),
            on_cpu,
            kv: self.choice.kv,
            delta: self.choice.llm.base().is_some(),
        }
    }

    /// The memory needed with `quant` in `dtype` for a conversation of `prompt` positions growing
    /// to `context`.
    pub fn plan_with(&self, quant: Option<Quant>, dtype: DType, on_cpu: bool, prompt: usize, context: usize) -> Plan {
        plan::estimate(&self.request(quant, dtype, on_cpu, prompt, context))
    }

    /// The memory the choice needs where it is placed.
    pub fn plan(&self, place: &Placement, prompt: usize, context: usize) -> Plan {
        self.plan_with(self.choice.quant, place.dtype, place.device.is_cpu(), prompt, context)
    }

    /// The plan, or a refusal with the numbers and a quantization that would fit when it does
    /// not fit in the device's free memory.
    pub fn check(&self, place: &Placement, prompt: usize, context: usize) -> Result<Plan> {
        self.check_against(place, prompt, context, plan::available_bytes(&place.device))
    }

    /// [`Self::check`] against `available` bytes (`None`: unknown, so anything fits).
    pub fn check_against(
        &self,
        place: &Placement,
        prompt: usize,
        context: usize,
        available: Option<u64>,
    ) -> Result<Plan> {
        let request = self.request(self.choice.quant, place.dtype, place.device.is_cpu(), prompt, context);
        let plan = plan::estimate(&request);
        plan::check_fits(&plan, available, &request).map_err(|n| Error::DoesNotFit(Box::new(n)))?;
        Ok(plan)
    }

    /// Loads the weights where `place` says. `counter` receives the byte totals up front and
    /// progress as tensors load (and can cancel).
    pub fn load(self, place: &Placement, counter: Arc<LoadCounter>) -> Result<LoadedModel> {
        let vckpt = Arc::new(Checkpoint::open_dir(&self.choice.vision, counter.clone())?);
        let lckpt = Arc::new(match &self.choice.llm {
            LlmSource::Delta { base, delta } => Checkpoint::open_delta(base, delta, counter.clone())?,
            LlmSource::Folder(p) | LlmSource::Gguf(p) => Checkpoint::open(p, counter.clone())?,
        });
        let mut model =
            ZiyaVisual::from_checkpoints((self.vision, self.llm), (vckpt, lckpt), place, self.choice.quant, &counter)?;
        model.llm.set_kv(self.choice.kv);
        Ok(LoadedModel { model, tokenizer: self.tokenizer })
    }
}
