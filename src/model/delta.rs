//! Ziya-LLaMA-13B-v1 is published as a delta on Meta's LLaMA-13B. Fengshenbang's apply_delta.py
//! merges them: for every tensor, merged = base + delta (float16 models, so the sum is rounded
//! to float16), except the token embeddings, the LM head (the vocabulary grew from 32000 to
//! 39424) and the rotary tables, which are taken from the delta as they are.
//!
//! The app and `ask` apply this while loading ([`Checkpoint::open_delta`]); `merge-delta`
//! writes the merged model once as safetensors, streaming: it never holds more than one base
//! tensor and a few megabytes of delta, so a 26 GB model merges on a machine with little memory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::DType;
use serde_json::json;

use super::weights::{Checkpoint, LoadCounter};
use crate::error::{Error, Result};

/// Tensors that come from the delta as they are rather than base + delta.
pub fn taken_from_delta(name: &str) -> bool {
    name.ends_with("embed_tokens.weight") || name == "lm_head.weight" || name.ends_with("rotary_emb.inv_freq")
}

fn st_dtype_name(d: DType) -> Result<&'static str> {
    Ok(match d {
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F32 => "F32",
        other => return Err(Error::Request(format!("cannot merge tensors of type {other:?}"))),
    })
}

/// Appends `bytes` (little-endian values of type `from`) to `out` as values of type `to`.
fn convert_into(bytes: &[u8], from: DType, to: DType, out: &mut Vec<u8>) {
    if from == to {
        out.extend_from_slice(bytes);
        return;
    }
    let values: Vec<f32> = decode(bytes, from);
    encode(&values, to, out);
}

fn decode(bytes: &[u8], d: DType) -> Vec<f32> {
    match d {
        DType::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        DType::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        _ => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
    }
}

fn encode(values: &[f32], d: DType, out: &mut Vec<u8>) {
    match d {
        DType::F16 => values.iter().for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        DType::BF16 => values.iter().for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        _ => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
    }
}

/// `base` += `delta` in place, both little-endian values of type `d`, the sum rounded to `d`.
fn add_in_place(base: &mut [u8], delta: &[u8], d: DType) {
    match d {
        DType::F16 => {
            for (b, x) in base.chunks_exact_mut(2).zip(delta.chunks_exact(2)) {
                let s =
                    half::f16::from_le_bytes([b[0], b[1]]).to_f32() + half::f16::from_le_bytes([x[0], x[1]]).to_f32();
                b.copy_from_slice(&half::f16::from_f32(s).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (b, x) in base.chunks_exact_mut(2).zip(delta.chunks_exact(2)) {
                let s =
                    half::bf16::from_le_bytes([b[0], b[1]]).to_f32() + half::bf16::from_le_bytes([x[0], x[1]]).to_f32();
                b.copy_from_slice(&half::bf16::from_f32(s).to_le_bytes());
            }
        }
        _ => {
            for (b, x) in base.chunks_exact_mut(4).zip(delta.chunks_exact(4)) {
                let s = f32::from_le_bytes([b[0], b[1], b[2], b[3]]) + f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
                b.copy_from_slice(&s.to_le_bytes());
            }
        }
    }
}

/// Progress of a merge: tensors and bytes written so far, and the totals.
#[derive(Debug, Clone, Copy)]
pub struct MergeProgress {
    pub tensors: usize,
    pub total_tensors: usize,
    pub bytes: u64,
    pub total_bytes: u64,
}

/// Largest shard written, like transformers' sharded checkpoints.
const SHARD_BYTES: u64 = 4 << 30;

/// Writes base + delta as a safetensors folder in `out` (config and tokenizer files copied from
/// the delta folder). Returns the folder.
pub fn merge_to_dir(
    base_dir: &Path,
    delta_dir: &Path,
    out: &Path,
    progress: &mut dyn FnMut(MergeProgress),
) -> Result<PathBuf> {
    crate::paths::check_apart(out, "--out", &[("base folder", base_dir), ("delta folder", delta_dir)])?;
    if let Ok(mut entries) = std::fs::read_dir(out) {
        if entries.next().is_some() {
            return Err(Error::Request(format!(
                "--out {} already exists and is not empty; nothing was written (choose a new folder)",
                out.display()
            )));
        }
    } else if crate::paths::resolved(out).is_some_and(|p| p.exists()) {
        return Err(Error::Request(format!("--out {} exists and is not a folder", out.display())));
    }
    let ckpt = Checkpoint::open_delta(base_dir, delta_dir, Arc::new(LoadCounter::default()))?;
    let base = ckpt.base().cloned().ok_or_else(|| Error::Request("not a delta checkpoint".into()))?;
    // Built in a fresh folder beside `out` and renamed into place at the end: an interrupted
    // merge never leaves a half-written model under the name asked for.
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("merged");
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = write_merged(&ckpt, &base, delta_dir, &tmp, progress).and_then(|()| {
        // An empty folder already there is replaced.
        let _ = std::fs::remove_dir(out);
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|()| out.to_path_buf())
}

/// Writes the merged shards, index and copied config/tokenizer files into `out`.
fn write_merged(
    ckpt: &Checkpoint,
    base: &Checkpoint,
    delta_dir: &Path,
    out: &Path,
    progress: &mut dyn FnMut(MergeProgress),
) -> Result<()> {
    // Plan the shards: every tensor keeps the delta's name, shape and precision.
    struct Item {
        name: String,
        dtype: DType,
        shape: Vec<usize>,
        bytes: u64,
    }
    let mut items = Vec::new();
    for name in ckpt.sorted_names() {
        let dtype = ckpt.stored_dtype(&name).unwrap_or(DType::F32);
        let shape = ckpt.shape(&name).map(|s| s.dims().to_vec()).unwrap_or_default();
        let bytes = shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
        items.push(Item { name, dtype, shape, bytes });
    }
    let total_bytes: u64 = items.iter().map(|i| i.bytes).sum();
    let mut shards: Vec<Vec<&Item>> = vec![Vec::new()];
    let mut size = 0u64;
    for item in &items {
        if size + item.bytes > SHARD_BYTES && shards.last().is_some_and(|s| !s.is_empty()) {
            shards.push(Vec::new());
            size = 0;
        }
        size += item.bytes;
        if let Some(s) = shards.last_mut() {
            s.push(item);
        }
    }

    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut done = MergeProgress { tensors: 0, total_tensors: items.len(), bytes: 0, total_bytes };
    for (i, shard) in shards.iter().enumerate() {
        let file_name =
            if n == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{n:05}.safetensors", i + 1) };
        // Header first: names, types, shapes and offsets are known before any data is read.
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut offset = 0u64;
        for item in shard {
            header.insert(
                item.name.clone(),
                json!({"dtype": st_dtype_name(item.dtype)?, "shape": item.shape, "data_offsets": [offset, offset + item.bytes]}),
            );
            offset += item.bytes;
            weight_map.insert(item.name.clone(), json!(file_name));
        }
        let mut header_bytes = serde_json::to_vec(&header).map_err(|e| Error::Request(e.to_string()))?;
        while header_bytes.len() % 8 != 0 {
            header_bytes.push(b' ');
        }
        let final_path = out.join(&file_name);
        let io = |e: std::io::Error| Error::io(&final_path, e);
        let mut w = crate::fs::AtomicFile::create(&final_path)?;
        w.write_all(&(header_bytes.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&header_bytes).map_err(io)?;
        for item in shard {
            if taken_from_delta(&item.name) {
                ckpt.for_each_chunk(&item.name, &mut |c| w.write_all(c).map_err(io))?;
            } else {
                // The base tensor in the delta's precision (rounded as apply_delta.py loads the
                // base in float16), then the delta streamed in and added piece by piece.
                let base_dtype = base.stored_dtype(&item.name).unwrap_or(item.dtype);
                let mut merged = Vec::with_capacity(item.bytes as usize);
                base.for_each_chunk(&item.name, &mut |c| {
                    convert_into(c, base_dtype, item.dtype, &mut merged);
                    Ok(())
                })?;
                let mut at = 0usize;
                ckpt.for_each_chunk(&item.name, &mut |c| {
                    let end = (at + c.len()).min(merged.len());
                    let slice = &mut merged[at..end];
                    add_in_place(slice, &c[..slice.len()], item.dtype);
                    w.write_all(slice).map_err(io)?;
                    at = end;
                    Ok(())
                })?;
                if at != merged.len() {
                    return Err(Error::checkpoint(
                        delta_dir,
                        format!("tensor `{}` is shorter than its shape", item.name),
                    ));
                }
            }
            done.tensors += 1;
            done.bytes += item.bytes;
            progress(done);
        }
        w.commit()?;
    }
    if n > 1 {
        let index = json!({"metadata": {"total_size": total_bytes}, "weight_map": weight_map});
        crate::fs::write_atomic(
            &out.join("model.safetensors.index.json"),
            &serde_json::to_vec_pretty(&index).map_err(|e| Error::Request(e.to_string()))?,
        )?;
    }
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        let src = delta_dir.join(f);
        if src.is_file() {
            std::fs::copy(&src, out.join(f)).map_err(|e| Error::io(&src, e))?;
        }
    }
    Ok(())
}
