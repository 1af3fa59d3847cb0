//! Choosing the next token: greedy when temperature is 0, otherwise repetition penalty →
//! temperature → top-k → top-p → a draw, in the order transformers' `generate` applies them.

use serde::{Deserialize, Serialize};

/// Generation settings. Defaults are the model card's: temperature 0.7, top_p 0.1, 128 tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// 0 turns top-k off.
    pub top_k: usize,
    /// 1.0 turns the penalty off.
    pub repeat_penalty: f32,
    /// A seed makes sampled answers reproducible; without one each answer draws a new seed.
    pub seed: Option<u64>,
    /// Generate exactly `max_new_tokens` (benchmarks).
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            temperature: 0.7,
            top_p: 0.1,
            top_k: 0,
            repeat_penalty: 1.0,
            seed: None,
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Whether these settings give the same answer every time, whatever the seed: greedy
    /// decoding, or a nucleus so small (top_p <= 0.15, or top_k = 1) that it nearly always holds
    /// one token — the model card's own defaults (top_p 0.1) are such.
    pub fn is_deterministic(&self) -> bool {
        self.temperature == 0.0 || self.top_p <= 0.15 || self.top_k == 1
    }

    /// The same settings with room to vary (for a "more varied" regeneration): temperature at
    /// least 0.9, top_p at least 0.9, no top-k cut to one.
    pub fn varied(&self) -> Self {
        Self {
            temperature: self.temperature.max(0.9),
            top_p: self.top_p.max(0.9),
            top_k: if self.top_k == 1 { 0 } else { self.top_k },
            ..self.clone()
        }
    }

    /// Rejects settings that have no meaning, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!("temperature must be 0 or more, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(format!("repeat_penalty must be positive, got {}", self.repeat_penalty));
        }
        if self.max_new_tokens == 0 {
            return Err("max_new_tokens must be at least 1".into());
        }
        Ok(())
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, and the same sequence on every platform
/// and release, which a reproducible `--seed` needs.
#[derive(Debug, Clone)]
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Self([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A seed no earlier call returned (clock, process and a counter mixed), for answers that should
/// differ from the last one (Regenerate).
pub fn fresh_seed() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Rng::new(now.as_nanos() as u64 ^ (std::process::id() as u64) << 32 ^ n.rotate_left(17)).next_u64()
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: &SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            now.as_nanos() as u64 ^ (std::process::id() as u64) << 32
        });
        Self { params: params.clone(), rng: Rng::new(seed) }
    }

    /// Picks the next token from `logits`; `generated` are the tokens of this answer so far,
    /// which the repetition penalty applies to.
    pub fn sample(&mut self, logits: &mut [f32], generated: &[u32]) -> u32 {
        let p = &self.params;
        if p.repeat_penalty != 1.0 {
            let mut seen = generated.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l < 0.0 { *l * p.repeat_penalty } else { *l / p.repeat_penalty };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits).unwrap_or(0) as u32;
        }
        let mut cands: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect();
        if cands.is_empty() {
            return 0;
        }
        // Highest first; the stable sort keeps lower ids first among equal logits.
        cands.sort_by(|a, b| b.1.total_cmp(&a.1));
        if p.top_k > 0 && p.top_k < cands.len() {
            let kth = cands[p.top_k - 1].1;
            cands.retain(|c| c.1 >= kth);
        }
        let max = cands[0].1;
        let mut probs: Vec<f64> = cands.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        // top-p: keep a token while the mass of the tokens ranked above it is below top_p.
        let mut keep = 0;
        let mut mass = 0.0;
        for &pr in &probs {
            if keep > 0 && mass >= p.top_p as f64 {
                break;
            }
            mass += pr;
            keep += 1;
        }
        let kept = &probs[..keep];
        let sum: f64 = kept.iter().sum();
        let mut u = self.rng.next_f64() * sum;
        for (i, &pr) in kept.iter().enumerate() {
            if u < pr {
                return cands[i].0;
            }
            u -= pr;
        }
        cands[keep - 1].0
    }
}

/// Index of the largest value, the first one on ties (as `torch.argmax`).
pub fn argmax(values: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: usize, seed: u64) -> SamplingParams {
        SamplingParams { temperature, top_p, top_k, seed: Some(seed), ..Default::default() }
    }

    #[test]
    fn temperature_zero_is_argmax_first_on_ties() {
        let mut s = Sampler::new(&params(0.0, 1.0, 0, 1));
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn small_top_p_keeps_only_the_top_token() {
        let mut s = Sampler::new(&params(0.7, 0.1, 0, 7));
        for _ in 0..100 {
            assert_eq!(s.sample(&mut [1.0, 2.5, 2.4, 0.0], &[]), 1);
        }
    }

    #[test]
    fn top_k_limits_the_draw() {
        let mut s = Sampler::new(&params(5.0, 1.0, 2, 3));
        for _ in 0..200 {
            let t = s.sample(&mut [1.0, 2.0, 1.9, 0.0, 1.95], &[]);
            assert!(t == 1 || t == 4, "{t}");
        }
    }

    #[test]
    fn a_seed_reproduces_the_draws_and_sampling_spreads() {
        let draw = |seed| {
            let mut s = Sampler::new(&params(1.0, 1.0, 0, seed));
            (0..64).map(|_| s.sample(&mut [0.0, 0.1, 0.2, 0.3], &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
        let d = draw(42);
        assert!((0..4).all(|t| d.contains(&t)), "all four tokens are drawn at temperature 1: {d:?}");
    }

    #[test]
    fn repetition_penalty_demotes_generated_tokens() {
        let mut s = Sampler::new(&SamplingParams { temperature: 0.0, repeat_penalty: 2.0, ..Default::default() });
        assert_eq!(s.sample(&mut [1.0, 1.5, 1.2], &[1]), 2);
    }

    #[test]
    fn invalid_settings_are_named() {
        let bad = SamplingParams { top_p: 0.0, ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("top_p"));
        let bad = SamplingParams { temperature: -1.0, ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("temperature"));
    }
}
