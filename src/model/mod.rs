//! Ziya-Visual: BLIP-2 vision tower + Q-Former + language projection (the vision repo) feeding a
//! LLaMA decoder (the LLM repo). One file per network part, candle style.

pub mod choice;
pub mod config;
pub mod delta;
pub mod files;
pub mod gguf;
pub mod kernels;
pub mod layers;
pub mod llama;
pub mod pickle;
pub mod plan;
pub mod qformer;
pub mod random;
pub mod shapes;
pub mod vision;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};

use crate::error::{Error, Result};
use config::{read_json, LlamaConfig, VisionRepoConfig};
use layers::{Linear, Quant};
use llama::Llama;
use qformer::QFormer;
use vision::VisionModel;
use weights::{Checkpoint, LoadCounter, Weights};

pub struct ZiyaVisual {
    vision: VisionModel,
    qformer: QFormer,
    query_tokens: Tensor,
    projection: Linear,
    pub llm: Llama,
    pub vision_config: VisionRepoConfig,
    dtype: DType,
    /// What the vision side computes in (f32 on the CPU when `dtype` is f16).
    vision_dtype: DType,
    device: Device,
}

/// Reads the vision repo's config.json, with a pointed message when the folder is the LLM's.
pub fn read_vision_config(dir: &Path) -> Result<VisionRepoConfig> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(Error::Config { path, msg: "missing: the vision folder needs its config.json".into() });
    }
    let value: serde_json::Value = read_json(&path)?;
    if value.get("vision_config").is_none() {
        let hint = if value.get("model_type").and_then(|m| m.as_str()) == Some("llama") {
            " (this is a LLaMA config: the two folders look swapped)"
        } else {
            ""
        };
        return Err(Error::Config { path, msg: format!("no `vision_config`: not a Ziya-BLIP2 vision folder{hint}") });
    }
    let cfg: VisionRepoConfig =
        serde_json::from_value(value).map_err(|e| Error::Config { path: path.clone(), msg: e.to_string() })?;
    cfg.validate(&path)?;
    Ok(cfg)
}

/// Reads the LLM folder's config.json (or the one a `.gguf` from `ziya-visual quantize` carries).
pub fn read_llm_config(dir: &Path) -> Result<LlamaConfig> {
    if weights::is_gguf(dir) {
        return gguf::GgufHeader::read(dir)?.llm_config();
    }
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(Error::Config { path, msg: "missing: the LLM folder needs its config.json".into() });
    }
    let value: serde_json::Value = read_json(&path)?;
    if value.get("vision_config").is_some() {
        return Err(Error::Config {
            path,
            msg: "this is the Ziya-BLIP2 vision config, not a LLaMA one: the two folders look swapped".into(),
        });
    }
    if let Some(mt) = value.get("model_type").and_then(|m| m.as_str()) {
        if mt != "llama" {
            return Err(Error::Config { path, msg: format!("model_type `{mt}` is not supported (expected llama)") });
        }
    }
    let cfg: LlamaConfig =
        serde_json::from_value(value).map_err(|e| Error::Config { path: path.clone(), msg: e.to_string() })?;
    cfg.validate(&path)?;
    Ok(cfg)
}

impl ZiyaVisual {
    /// Builds the model from open checkpoints (vision repo, LLM) where `place` says, the LLM's
    /// linear layers quantized to `quant` when given (a GGUF's already are).
    pub fn from_checkpoints(
        (vision_config, llm_config): (VisionRepoConfig, LlamaConfig),
        (vckpt, lckpt): (Arc<Checkpoint>, Arc<Checkpoint>),
        place: &crate::device::Placement,
        quant: Option<Quant>,
        counter: &LoadCounter,
    ) -> Result<Self> {
        let (dtype, device) = (place.dtype, &place.device);
        if !vckpt.contains("vision_model.embeddings.class_embedding") {
            return Err(Error::checkpoint(
                vckpt.dir(),
                "no `vision_model.embeddings.class_embedding`: not a Ziya-BLIP2 vision checkpoint",
            ));
        }
        // Progress counts bytes read; tensors the network never asks for (the Q-Former's text
        // path) are why `done` may stop short of `total` until the caller marks the load finished.
        counter.add_total(vckpt.bytes_with_prefix(""));
        counter.add_total(lckpt.bytes_with_prefix(""));
        // On the CPU an f16 vision side holds its linear weights in f16 (half the memory) and
        // computes in f32: candle's f16 operations on the CPU (the attention products above all)
        // and the conversions around every kernel call made f16 images 1.4x slower than f32.
        let vision_dtype = if device.is_cpu() && dtype == DType::F16 { DType::F32 } else { dtype };
        let mut vw = Weights::new(vckpt, vision_dtype, device);
        if vision_dtype != dtype {
            vw = vw.with_linear_dtype(dtype);
        }
        let vision = VisionModel::load(&vw.pp("vision_model"), &vision_config.vision_config)?;
        let q = &vision_config.qformer_config;
        let qformer = QFormer::load(&vw.pp("qformer"), q)?;
        let query_tokens = vw.get((1, vision_config.num_query_tokens, q.hidden_size), "query_tokens")?;
        let projection =
            Linear::load(&vw.pp("language_projection"), q.hidden_size, llm_config.hidden_size, true)?.for_batches();
        let lw = Weights::new(lckpt, dtype, device);
        let llm = Llama::load(&lw, &llm_config, quant)?;
        Ok(Self {
            vision,
            qformer,
            query_tokens,
            projection,
            llm,
            vision_config,
            dtype,
            vision_dtype,
            device: device.clone(),
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn image_size(&self) -> usize {
        self.vision_config.vision_config.image_size
    }

    /// Vision tower output (b, 1 + patches, vision hidden) for pixel values (b, 3, s, s).
    pub fn vision_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(self.vision.forward(&pixel_values.to_dtype(self.vision_dtype)?.to_device(&self.device)?)?)
    }

    /// Q-Former output (b, num_query_tokens, qformer hidden) for vision features.
    pub fn qformer_output(&self, features: &Tensor) -> Result<Tensor> {
        let b = features.dim(0)?;
        let (_, q, d) = self.query_tokens.dims3()?;
        let queries = self.query_tokens.expand((b, q, d))?.contiguous()?;
        Ok(self.qformer.forward(&queries, features)?)
    }

    /// The language projection of Q-Former outputs: (b, num_query_tokens, llm hidden).
    pub fn project(&self, qformer_out: &Tensor) -> Result<Tensor> {
        Ok(self.projection.forward(qformer_out)?)
    }

    /// The LLM input embeddings of a batch of images: vision → Q-Former → projection.
    pub fn image_embeddings(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.project(&self.qformer_output(&self.vision_features(pixel_values)?)?)
    }
}
