//! The quantization a user can choose for the LLM's linear layers (ggml block formats). A leaf
//! module, like `device`'s choices: the engine, the planner's refusals and the front ends all
//! name it.

use candle_core::quantized::GgmlDType;

/// Weight quantization for the LLM's linear layers (ggml block formats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Quant {
    /// 8 bits per weight plus a scale per 32 (8.5 bits).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 6-bit k-quant (6.56 bits per weight).
    #[serde(rename = "q6k")]
    Q6K,
    /// 4-bit k-quant (4.5 bits per weight).
    #[serde(rename = "q4k")]
    Q4K,
}

impl Quant {
    /// Best quality first.
    pub const ALL: [Quant; 3] = [Quant::Q8_0, Quant::Q6K, Quant::Q4K];

    pub fn ggml(self) -> GgmlDType {
        match self {
            Quant::Q8_0 => GgmlDType::Q8_0,
            Quant::Q6K => GgmlDType::Q6K,
            Quant::Q4K => GgmlDType::Q4K,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Quant::Q8_0 => "q8_0",
            Quant::Q6K => "q6k",
            Quant::Q4K => "q4k",
        }
    }

    /// Bytes `elements` weights take in this format.
    pub fn bytes(self, elements: u64) -> u64 {
        let g = self.ggml();
        elements / g.block_size() as u64 * g.type_size() as u64
    }

    /// The format a weight with rows of `row_len` values gets: this one when its blocks divide
    /// the rows, else q8_0 (blocks of 32), else none (kept dense) — llama.cpp's fallback.
    pub fn for_rows(self, row_len: usize) -> Option<Quant> {
        [self, Quant::Q8_0].into_iter().find(|q| row_len.is_multiple_of(q.ggml().block_size()))
    }

    pub fn from_ggml(g: GgmlDType) -> Option<Self> {
        match g {
            GgmlDType::Q8_0 => Some(Quant::Q8_0),
            GgmlDType::Q6K => Some(Quant::Q6K),
            GgmlDType::Q4K => Some(Quant::Q4K),
            _ => None,
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|q| q.name() == name)
    }
}
