//! What one answer produced: its text and ids, why it stopped and how long each phase took. A
//! leaf module shared by the pipeline, the engine, the session tree and the front ends; the
//! session file and the `ask --json` output keep their own serialised shapes of it, so changing
//! these types cannot silently change a file format.

/// Seconds spent in each phase of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub load_s: f64,
    pub image_s: f64,
    pub prefill_s: f64,
    pub decode_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Positions in the prompt (of the turns the model saw): text tokens plus num_query_tokens
    /// per image.
    pub prompt_tokens: usize,
    /// Index of the first turn the model saw (earlier ones had left its context).
    pub context_start: usize,
    /// Of those, positions whose keys and values were reused from the previous prompt.
    pub reused_tokens: usize,
    pub stop: StopReason,
    pub timings: Timings,
}

impl Generation {
    /// An answer that never started (cancelled while queued).
    pub fn cancelled_before_start() -> Self {
        Self {
            text: String::new(),
            token_ids: Vec::new(),
            prompt_tokens: 0,
            context_start: 0,
            reused_tokens: 0,
            stop: StopReason::Cancelled,
            timings: Timings::default(),
        }
    }

    pub fn generated_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// Decode speed in tokens per second, when there was decoding to time.
    pub fn tokens_per_second(&self) -> Option<f64> {
        tokens_per_second(self.token_ids.len(), self.timings.decode_s)
    }
}

/// Decode speed: the first token comes from the prefill, so `n` tokens took `n - 1` steps.
pub fn tokens_per_second(generated: usize, decode_s: f64) -> Option<f64> {
    (decode_s > 0.0 && generated > 1).then(|| (generated - 1) as f64 / decode_s)
}
