//! `ziya-visual quantize`: the LLM quantized once into a single GGUF file that starts fast and
//! carries its config.json and tokenizer. Tensors keep their transformers names (this is a
//! ziya-visual file, architecture `ziya-llama`, not a llama.cpp one, whose q/k weights are
//! permuted for interleaved rotary embeddings). Linear weights and the embedding table are stored
//! in the chosen block format (with the q8_0/dense fallback of `Quant::for_rows`), norms in
//! float32. (Files written before the embeddings were quantized hold them in float16 and still
//! load.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device};

use super::config::LlamaConfig;
use super::layers::{quantize_f32, Quant};
use super::shapes::llm_tensors;
use super::weights::{gguf_string, read_gguf, Checkpoint, LoadCounter};
use crate::error::{Error, Result};
use crate::tokenizer::ChatTokenizer;

pub const CONFIG_KEY: &str = "ziya.config_json";
pub const TOKENIZER_KEY: &str = "ziya.tokenizer_json";
pub const QUANT_KEY: &str = "ziya.quantization";

/// What a GGUF written by `quantize` carries besides its tensors, read from its header.
pub struct GgufHeader {
    pub path: PathBuf,
    /// The LLM's config.json text.
    pub config_json: Option<String>,
    /// tokenizer.json text.
    pub tokenizer_json: Option<String>,
    /// The block format its linear layers were quantized to.
    pub quant: Option<Quant>,
}

impl GgufHeader {
    pub fn read(path: &Path) -> Result<Self> {
        let content = read_gguf(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            config_json: gguf_string(&content, CONFIG_KEY),
            tokenizer_json: gguf_string(&content, TOKENIZER_KEY),
            quant: gguf_string(&content, QUANT_KEY).and_then(|q| Quant::parse(&q)),
        })
    }

    /// The LLM config it carries.
    pub fn llm_config(&self) -> Result<LlamaConfig> {
        let text = self.config_json.as_deref().ok_or_else(|| Error::Config {
            path: self.path.clone(),
            msg: "this GGUF has no embedded config.json (only files written by `ziya-visual quantize` are supported)"
                .into(),
        })?;
        let cfg: LlamaConfig =
            serde_json::from_str(text).map_err(|e| Error::Config { path: self.path.clone(), msg: e.to_string() })?;
        cfg.validate(&self.path)?;
        Ok(cfg)
    }

    /// The tokenizer it carries, else the one in the folder beside it.
    pub fn tokenizer(&self) -> Result<ChatTokenizer> {
        match &self.tokenizer_json {
            Some(json) => ChatTokenizer::from_json_str(json, &self.path),
            None => ChatTokenizer::from_dir(self.path.parent().unwrap_or(Path::new("."))),
        }
    }
}

/// Refuses a `quantize --out` that would replace one of its inputs: the LLM (a folder or a
/// `.gguf`), the base, or any file inside them; or that is a folder.
fn check_quantize_out(llm: &Path, base: Option<&Path>, out: &Path) -> Result<()> {
    if out.is_dir() {
        return Err(Error::Request(format!("--out {} is a folder; give the .gguf file to write", out.display())));
    }
    let mut inputs = vec![("--llm-model", llm)];
    if let Some(b) = base {
        inputs.push(("--llm-base", b));
    }
    // A new file inside an input folder harms nothing; an existing one is an input's file.
    let exists = std::fs::symlink_metadata(out).is_ok();
    for (what, input) in inputs {
        let (Some(o), Some(i)) = (crate::paths::resolved(out), crate::paths::resolved(input)) else { continue };
        if o == i || (exists && o.starts_with(&i)) {
            return Err(Error::Request(format!(
                "--out {} would replace {} {}; nothing was written (choose another file)",
                out.display(),
                if o == i { "the input" } else { "a file of the input" },
                format_args!("{what} {}", input.display())
            )));
        }
    }
    Ok(())
}

/// Quantizes the LLM in `llm_dir` (or the delta in `llm_dir` over `base`) into `out`.
pub fn quantize_to_gguf(
    llm_dir: &Path,
    base: Option<&Path>,
    quant: Quant,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PathBuf> {
    check_quantize_out(llm_dir, base, out)?;
    let cfg = super::read_llm_config(llm_dir)?;
    let counter = Arc::new(LoadCounter::default());
    let ckpt = match base {
        Some(b) => Checkpoint::open_delta(b, llm_dir, counter)?,
        None => Checkpoint::open(llm_dir, counter)?,
    };
    let config_json = std::fs::read_to_string(llm_dir.join("config.json")).map_err(|e| Error::io(llm_dir, e))?;
    // The tokenizer as tokenizer.json text (converted from tokenizer.model when that is all there is).
    let tokenizer_json = match std::fs::read_to_string(llm_dir.join("tokenizer.json")) {
        Ok(t) => t,
        Err(_) => ChatTokenizer::from_dir(llm_dir)?.to_json()?,
    };
    let list = llm_tensors(&cfg);
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(list.len());
    for (i, (name, shape)) in list.iter().enumerate() {
        if !ckpt.contains(name) {
            if name == "lm_head.weight" {
                continue; // tied to the embeddings
            }
            return Err(Error::checkpoint(llm_dir, format!("tensor `{name}` is missing")));
        }
        let t = ckpt.load_shaped(name, &shape.as_slice().into(), DType::F32, &Device::Cpu)?;
        // The linear layers, the LM head and the embedding table (as llama.cpp does).
        let quantized = shape.len() == 2
            && (name.ends_with("_proj.weight") || name == "lm_head.weight" || name == "model.embed_tokens.weight");
        let qt = match quantized.then(|| quant.for_rows(shape[1])).flatten() {
            // Rows over every core; the same bytes as `QTensor::quantize`.
            Some(q) => quantize_f32(&t, q)?.to_qtensor()?,
            None if name.contains("norm") => QTensor::quantize(&t, GgmlDType::F32)?,
            None => QTensor::quantize(&t, GgmlDType::F16)?,
        };
        tensors.push((name.clone(), qt));
        progress(i + 1, list.len());
    }
    let meta_values = [
        ("general.architecture", gguf_file::Value::String("ziya-llama".into())),
        ("general.name", gguf_file::Value::String(format!("{} ({})", llm_dir.display(), quant.name()))),
        (QUANT_KEY, gguf_file::Value::String(quant.name().into())),
        (CONFIG_KEY, gguf_file::Value::String(config_json)),
        (TOKENIZER_KEY, gguf_file::Value::String(tokenizer_json)),
    ];
    let metadata: Vec<(&str, &gguf_file::Value)> = meta_values.iter().map(|(k, v)| (*k, v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut w = crate::fs::AtomicFile::create(out)?;
    gguf_file::write(&mut w, &metadata, &refs)?;
    w.commit()?;
    Ok(out.to_path_buf())
}

/// The most metadata values (array elements included) a GGUF header may hold: candle builds
/// each as a 32-byte value, so this bounds what the header can make it allocate (llama.cpp
/// files with a 150k-token vocabulary have about half a million).
const MAX_GGUF_VALUES: u64 = 4 << 20;
/// The most elements, string bytes or entries candle reads in one count (its own limit).
const MAX_GGUF_COUNT: u64 = 1 << 30;
/// The largest alignment accepted (llama.cpp uses 32).
const MAX_GGUF_ALIGNMENT: u64 = 1 << 20;

/// Reads a GGUF header as a stream, always knowing how much of the file is left.
struct HeaderReader<'a, R> {
    r: &'a mut R,
    pos: u64,
    file_size: u64,
    /// Lengths and counts are u64 from version 2 on, u32 before.
    wide: bool,
    /// Metadata values seen so far (array elements included).
    values: u64,
}

impl<R: std::io::Read + std::io::Seek> HeaderReader<'_, R> {
    fn bytes<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|_| format!("the header ends early (at byte {}): truncated file?", self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn len(&mut self) -> std::result::Result<u64, String> {
        if self.wide {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }
    fn left(&self) -> u64 {
        self.file_size.saturating_sub(self.pos)
    }
    /// Skips `n` bytes that must lie inside the file.
    fn skip(&mut self, n: u64, what: &str) -> std::result::Result<(), String> {
        if n > self.left() {
            return Err(format!(
                "{what} at byte {} claims {n} bytes, past the end of the file ({} bytes)",
                self.pos, self.file_size
            ));
        }
        self.r.seek(std::io::SeekFrom::Current(n as i64)).map_err(|e| e.to_string())?;
        self.pos += n;
        Ok(())
    }
    /// Size of a fixed-size metadata type, 0 for strings and arrays.
    fn fixed_size(t: u32) -> std::result::Result<u64, String> {
        Ok(match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 | 9 => 0,
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
    fn count_values(&mut self, n: u64) -> std::result::Result<(), String> {
        self.values = self.values.saturating_add(n);
        if self.values > MAX_GGUF_VALUES {
            return Err(format!("the metadata holds more than {MAX_GGUF_VALUES} values"));
        }
        Ok(())
    }
    /// Reads `n` booleans, which candle accepts only as 0 or 1.
    fn bools(&mut self, n: u64) -> std::result::Result<(), String> {
        if n > self.left() {
            return Err(format!("a metadata array at byte {} claims {n} booleans, more than the file holds", self.pos));
        }
        for _ in 0..n {
            let b = self.bytes::<1>()?[0];
            if b > 1 {
                return Err(format!("a metadata boolean at byte {} is {b} (only 0 and 1 are booleans)", self.pos - 1));
            }
        }
        Ok(())
    }

    /// Skips one metadata value of type `t`.
    fn skip_value(&mut self, t: u32, depth: usize) -> std::result::Result<(), String> {
        if depth > 64 {
            return Err("the metadata nests arrays more than 64 deep".into());
        }
        self.count_values(1)?;
        match Self::fixed_size(t)? {
            _ if t == 7 => self.bools(1),
            0 if t == 8 => {
                let len = self.len()?;
                if len > MAX_GGUF_COUNT {
                    return Err(format!(
                        "a metadata string at byte {} claims {len} bytes (at most {MAX_GGUF_COUNT})",
                        self.pos
                    ));
                }
                self.skip(len, "a metadata string")
            }
            0 => {
                let inner = self.u32()?;
                let count = self.len()?;
                let min = match Self::fixed_size(inner)? {
                    0 if inner == 8 => {
                        if self.wide {
                            8
                        } else {
                            4
                        }
                    }
                    0 => {
                        if self.wide {
                            12
                        } else {
                            8
                        }
                    }
                    n => n,
                };
                if count > MAX_GGUF_COUNT || count.saturating_mul(min) > self.left() {
                    return Err(format!(
                        "a metadata array at byte {} claims {count} elements, more than the file holds",
                        self.pos
                    ));
                }
                self.count_values(count)?;
                if inner == 7 {
                    self.bools(count)
                } else if Self::fixed_size(inner)? > 0 {
                    self.skip(count * min, "a metadata array")
                } else {
                    (0..count).try_for_each(|_| self.skip_value(inner, depth + 1))
                }
            }
            n => self.skip(n, "a metadata value"),
        }
    }
}

/// Checks a GGUF header against the file before candle reads it: magic and version, counts that
/// the file can hold, every string and array inside the file, `general.alignment` a power of two,
/// and every tensor's dimensions (at most 4, at least one element, product without overflow,
/// whole blocks), type, alignment and data range (inside the file, not overlapping another).
/// Reads the header as a stream and allocates nothing sized by it beyond one entry per tensor.
pub fn check_header<R: std::io::Read + std::io::Seek>(r: &mut R) -> std::result::Result<(), String> {
    use std::io::SeekFrom;
    let file_size = r.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    r.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut h = HeaderReader { r, pos: 0, file_size, wide: true, values: 0 };
    let magic = h.u32()?;
    if magic != 0x4655_4747 {
        return Err(format!("not a GGUF file (magic {magic:#010x})"));
    }
    let version = h.u32()?;
    if !(1..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not supported (1 to 3)"));
    }
    h.wide = version >= 2;
    let len_size = if h.wide { 8 } else { 4 };
    let tensor_count = h.len()?;
    let kv_count = h.len()?;
    if tensor_count > MAX_GGUF_COUNT || kv_count > MAX_GGUF_COUNT {
        return Err(format!("the header declares {tensor_count} tensors and {kv_count} metadata entries (at most {MAX_GGUF_COUNT} each)"));
    }
    // Each metadata entry takes at least a key length, a type and one byte; each tensor entry at
    // least a name length, a dimension count, a type and an offset.
    if kv_count.saturating_mul(len_size + 5).saturating_add(tensor_count.saturating_mul(len_size + 16)) > h.left() {
        return Err(format!(
            "the header declares {tensor_count} tensors and {kv_count} metadata entries, more than the file's {file_size} bytes can hold"
        ));
    }
    let mut alignment = candle_core::quantized::gguf_file::DEFAULT_ALIGNMENT;
    const ALIGNMENT_KEY: &[u8] = b"general.alignment";
    for _ in 0..kv_count {
        let key_len = h.len()?;
        let is_alignment = key_len == ALIGNMENT_KEY.len() as u64 && h.bytes::<17>()? == ALIGNMENT_KEY;
        if key_len != ALIGNMENT_KEY.len() as u64 {
            h.skip(key_len, "a metadata key")?;
        }
        let t = h.u32()?;
        if is_alignment && matches!(t, 0..=5) {
            // candle reads these types (signed ones when not negative) and divides by it.
            h.count_values(1)?;
            let v: i64 = match t {
                0 => h.bytes::<1>()?[0] as i64,
                1 => h.bytes::<1>()?[0] as i8 as i64,
                2 => u16::from_le_bytes(h.bytes()?) as i64,
                3 => i16::from_le_bytes(h.bytes()?) as i64,
                4 => h.u32()? as i64,
                _ => h.u32()? as i32 as i64,
            };
            if v >= 0 {
                let v = v as u64;
                if !v.is_power_of_two() || v > MAX_GGUF_ALIGNMENT {
                    return Err(format!(
                        "general.alignment {v} is not a power of two between 1 and {MAX_GGUF_ALIGNMENT}"
                    ));
                }
                alignment = v;
            }
        } else {
            h.skip_value(t, 0)?;
        }
    }
    let mut tensors = Vec::new();
    for i in 0..tensor_count {
        let name_len = h.len()?;
        h.skip(name_len, "a tensor name")?;
        let n_dims = h.u32()?;
        if n_dims > 4 {
            return Err(format!("tensor {i} has {n_dims} dimensions (at most 4)"));
        }
        let mut elems = 1u64;
        for _ in 0..n_dims {
            let d = h.len()?;
            elems = elems
                .checked_mul(d)
                .filter(|&e| e <= isize::MAX as u64)
                .ok_or_else(|| format!("tensor {i}: its dimensions multiply past what memory can hold"))?;
        }
        if elems == 0 {
            // candle views the empty buffer as blocks through a dangling, misaligned pointer.
            return Err(format!("tensor {i} has no elements (a dimension is 0)"));
        }
        let type_id = h.u32()?;
        let dtype = ggml_dtype(type_id).ok_or_else(|| format!("tensor {i} has unknown type {type_id}"))?;
        let offset = h.u64()?;
        let block = dtype.block_size() as u64;
        if !elems.is_multiple_of(block) {
            return Err(format!("tensor {i}: {elems} elements is not a whole number of {block}-element blocks"));
        }
        let size = (elems / block)
            .checked_mul(dtype.type_size() as u64)
            .ok_or_else(|| format!("tensor {i}: its size overflows"))?;
        tensors.push((i, offset, size));
    }
    let data_start = h.pos.div_ceil(alignment) * alignment;
    let mut spans = Vec::with_capacity(tensors.len());
    for (i, offset, size) in tensors {
        if !offset.is_multiple_of(alignment) {
            return Err(format!("tensor {i}: offset {offset} is not a multiple of the alignment {alignment}"));
        }
        match data_start.checked_add(offset).and_then(|s| Some((s, s.checked_add(size)?))) {
            Some((start, end)) if end <= file_size => spans.push((start, end)),
            _ => {
                return Err(format!(
                    "tensor {i}: its {size} bytes at offset {offset} lie past the end of the file ({file_size} bytes): truncated?"
                ))
            }
        }
    }
    spans.sort_unstable();
    if let Some(w) = spans.windows(2).find(|w| w[0].1 > w[1].0) {
        return Err(format!("two tensors overlap (bytes {}..{} and {}..{})", w[0].0, w[0].1, w[1].0, w[1].1));
    }
    Ok(())
}

/// The GGML block formats candle reads, by their GGUF type id.
fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A GGUF v3 header: metadata entries already encoded, then tensors (dims, type, offset).
    fn gguf(kv: &[(&str, Vec<u8>)], tensors: &[(&[u64], u32, u64)], data: usize) -> Vec<u8> {
        let s = |s: &str| [(s.len() as u64).to_le_bytes().to_vec(), s.as_bytes().to_vec()].concat();
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(kv.len() as u64).to_le_bytes());
        for (k, v) in kv {
            b.extend(s(k));
            b.extend_from_slice(v);
        }
        for (i, (dims, ty, off)) in tensors.iter().enumerate() {
            b.extend(s(&format!("t{i}")));
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| b.extend_from_slice(&d.to_le_bytes()));
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&off.to_le_bytes());
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.resize(b.len() + data, 0);
        b
    }
    fn check(b: &[u8]) -> std::result::Result<(), String> {
        check_header(&mut Cursor::new(b))
    }
    fn u32v(v: u32) -> Vec<u8> {
        [4u32.to_le_bytes(), v.to_le_bytes()].concat()
    }

    #[test]
    fn valid_headers_pass_and_candle_reads_them() {
        let b = gguf(
            &[
                ("general.alignment", u32v(32)),
                ("s", [8u32.to_le_bytes().to_vec(), 2u64.to_le_bytes().to_vec(), b"ok".to_vec()].concat()),
            ],
            &[(&[32], 0, 0), (&[64], 8, 128)],
            128 + 68,
        );
        check(&b).unwrap();
        let c = gguf_file::Content::read(&mut Cursor::new(&b)).unwrap();
        assert_eq!(c.tensor_infos.len(), 2);
    }

    #[test]
    fn broken_headers_are_refused_before_candle_reads_them() {
        for (b, want) in [
            (gguf(&[("general.alignment", u32v(0))], &[(&[32], 0, 0)], 128), "general.alignment 0"),
            (gguf(&[("general.alignment", u32v(48))], &[(&[32], 0, 0)], 128), "general.alignment 48"),
            (gguf(&[], &[(&[32], 0, 1 << 40)], 128), "past the end"),
            (gguf(&[], &[(&[32], 0, 16)], 256), "not a multiple of the alignment"),
            (gguf(&[], &[(&[32], 0, 0), (&[32], 0, 64)], 256), "overlap"),
            (gguf(&[], &[(&[1 << 32, 1 << 32, 1 << 32], 0, 0)], 128), "dimensions multiply"),
            (gguf(&[], &[(&[1, 1, 1, 1, 1], 0, 0)], 128), "5 dimensions"),
            // Found by fuzzing (gguf_header): 0 elements made candle abort (a misaligned slice).
            (gguf(&[], &[(&[1 << 32, 0, 0], 0, 0)], 128), "no elements"),
            (gguf(&[], &[(&[33], 8, 0)], 128), "blocks"),
            (gguf(&[], &[(&[32], 99, 0)], 128), "unknown type 99"),
            (gguf(&[("k", [8u32.to_le_bytes(), 99u32.to_le_bytes()].concat())], &[], 0), "past the end"),
            (
                gguf(
                    &[(
                        "k",
                        [9u32.to_le_bytes().to_vec(), 0u32.to_le_bytes().to_vec(), u64::MAX.to_le_bytes().to_vec()]
                            .concat(),
                    )],
                    &[],
                    0,
                ),
                "elements",
            ),
            (gguf(&[("k", 77u32.to_le_bytes().to_vec())], &[], 0), "unknown metadata value type 77"),
            // Found by fuzzing (gguf_header): candle refuses booleans other than 0 and 1.
            (gguf(&[("k", [7u32.to_le_bytes().to_vec(), vec![32]].concat())], &[], 0), "boolean"),
            (
                gguf(
                    &[(
                        "k",
                        [
                            9u32.to_le_bytes().to_vec(),
                            7u32.to_le_bytes().to_vec(),
                            2u64.to_le_bytes().to_vec(),
                            vec![1, 2],
                        ]
                        .concat(),
                    )],
                    &[],
                    0,
                ),
                "boolean",
            ),
            (b"GGUF\x03\0\0\0".to_vec(), "ends early"),
            (b"GGML\x03\0\0\0".to_vec(), "not a GGUF"),
        ] {
            let err = check(&b).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
        let mut counts = gguf(&[], &[(&[32], 0, 0)], 128);
        counts[8..16].copy_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(check(&counts).unwrap_err().contains("at most"));
        counts[8..16].copy_from_slice(&(1u64 << 20).to_le_bytes());
        assert!(check(&counts).unwrap_err().contains("can hold"));
    }

    #[test]
    fn deeply_nested_metadata_arrays_are_refused() {
        let mut v = Vec::new();
        for _ in 0..100 {
            v.extend_from_slice(&9u32.to_le_bytes());
            v.extend_from_slice(&1u64.to_le_bytes());
        }
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&0u64.to_le_bytes());
        let mut kv = 9u32.to_le_bytes().to_vec();
        kv.extend(v);
        let err = check(&gguf(&[("deep", kv)], &[], 64)).unwrap_err();
        assert!(err.contains("64 deep"), "{err}");
    }
}
