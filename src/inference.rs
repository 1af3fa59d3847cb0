//! Answering a conversation: the loaded model and tokenizer, the image embeddings computed so
//! far (by content hash), and the KV cache of the last prompt so a follow-up question only
//! computes what is new.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::chat::{
    context_window, replay_context_starts, ChatTemplate, ChatTurn, Prompt, PromptItem, PromptPiece, TooLong, Window,
};
use crate::error::{Error, Result};
use crate::generation::{Generation, StopReason, Timings};
use crate::model::files::LoadedModel;
use crate::model::llama::KvCache;
use crate::model::ZiyaVisual;
use crate::preprocess;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{ChatTokenizer, StreamDecoder};

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

impl Pipeline {
    pub fn new(loaded: LoadedModel) -> Self {
        let LoadedModel { model, tokenizer } = loaded;
        let template = ChatTemplate::from_config(&model.vision_config);
        Self {
            model,
            tokenizer,
            template,
            image_cache: HashMap::new(),
            image_cache_order: Vec::new(),
            kv: KvCache::new(),
            kv_items: Vec::new(),
        }
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

    /// Forgets the embeddings of the images of `dropped` turns that `prompt` does not use.
    fn forget_images(&mut self, dropped: &[ChatTurn], prompt: &Prompt) {
        for img in dropped.iter().flat_map(|t| &t.images) {
            if !prompt.images.iter().any(|i| i.hash == img.hash) && self.image_cache.remove(&img.hash).is_some() {
                self.image_cache_order.retain(|h| h != &img.hash);
            }
        }
    }

    /// The window the model would see answering the last of `turns` with `max_new` positions
    /// reserved (for the context meter); nothing is computed but the layout.
    pub fn measure(&self, turns: &[ChatTurn], max_new: usize) -> Result<std::result::Result<Window, TooLong>> {
        context_window(&self.template, &self.tokenizer, turns, self.query_tokens(), self.context_length(), max_new)
    }

    /// Sets the `context_start` of each answered turn as the long-story rule would have when
    /// answering it with `max_new` positions reserved (for histories that arrive without them).
    pub fn replay_context_starts(&self, turns: &mut [ChatTurn], max_new: usize) -> Result<()> {
        let (q, context) = (self.query_tokens(), self.context_length());
        replay_context_starts(&self.template, &self.tokenizer, turns, q, context, max_new)
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
        // The turns the model sees: the oldest leave its view by the long-story rule.
        let q = self.query_tokens();
        let window =
            context_window(&self.template, &self.tokenizer, turns, q, self.context_length(), params.max_new_tokens)?
                .map_err(Error::TooLong)?;
        let prompt = window.prompt;
        let items = prompt.items(q);
        // Image embeddings of turns that left the window are not needed any more.
        self.forget_images(&turns[..window.start], &prompt);

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
            // Ids the tokenizer cannot turn into text are never chosen (a random benchmark model
            // has a larger vocabulary than the tokenizer it borrows; Ziya's are the same size).
            if let Some(unknown) = logits.get_mut(self.tokenizer.vocab_size()..) {
                unknown.fill(f32::NEG_INFINITY);
            }
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
            context_start: window.start,
            reused_tokens: common,
            stop,
            timings,
        })
    }
}
