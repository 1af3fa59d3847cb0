//! Reading checkpoints as users have them on disk: one file or index-sharded, safetensors
//! (memory-mapped) or PyTorch zip pickles (read tensor by tensor, never the whole file at once).
//!
//! The network is built through [`Weights`], a prefixed view in the manner of candle's
//! `VarBuilder`, whose errors name the file and the tensor; the checkpoint counts the bytes it hands
//! out so the app can show load progress.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};

use crate::error::{Error, Result};

/// Bytes of tensor data read so far out of the total, shared with whoever shows progress; setting
/// `cancel` makes the next tensor read fail with [`Error::Cancelled`].
#[derive(Debug, Default)]
pub struct LoadCounter {
    pub done: AtomicU64,
    pub total: AtomicU64,
    pub cancel: std::sync::atomic::AtomicBool,
}

impl LoadCounter {
    pub fn add_total(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> (u64, u64) {
        (self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed))
    }
}

enum WeightFile {
    Safetensors(MappedSafetensors),
    /// A PyTorch zip checkpoint's tensor table (see [`super::pickle`]).
    Pth(HashMap<String, super::pickle::PthInfo>),
    /// A GGUF written by `ziya-visual quantize`: quantized tensors load as they are.
    Gguf(candle_core::quantized::gguf_file::Content),
}

/// A memory-mapped safetensors file. Each tensor is copied out of the mapping and its pages are
/// then handed back to the kernel, so a loaded file stops counting against the process.
struct MappedSafetensors {
    mmap: memmap2::Mmap,
    data_start: usize,
    infos: HashMap<String, safetensors::tensor::TensorInfo>,
}

impl MappedSafetensors {
    fn open(path: &Path) -> std::result::Result<Self, String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        // SAFETY: the mapping is read-only; a file changed underneath us while loading could give
        // wrong values but not memory unsafety beyond what mmap always implies.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| e.to_string())?;
        check_safetensors_header(&mmap)?;
        let (n, metadata) = safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| match e {
            safetensors::SafeTensorError::MetadataIncompleteBuffer => {
                "the file is truncated (its data is shorter than its header says: an incomplete download or copy?)"
                    .to_string()
            }
            other => other.to_string(),
        })?;
        let data_start = 8 + n;
        let infos: HashMap<String, safetensors::tensor::TensorInfo> =
            metadata.tensors().into_iter().map(|(k, v)| (k, v.clone())).collect();
        if let Some((name, _)) = infos.iter().find(|(_, i)| data_start + i.data_offsets.1 > mmap.len()) {
            return Err(format!("the file is truncated (tensor `{name}` extends past its end)"));
        }
        Ok(Self { mmap, data_start, infos })
    }

    fn load(&self, name: &str) -> std::result::Result<Tensor, String> {
        use candle_core::safetensors::Load;
        let info = self.infos.get(name).ok_or("tensor not in file")?;
        let (start, end) = (self.data_start + info.data_offsets.0, self.data_start + info.data_offsets.1);
        let bytes = self.mmap.get(start..end).ok_or("tensor data outside the file")?;
        let view =
            safetensors::tensor::TensorView::new(info.dtype, info.shape.clone(), bytes).map_err(|e| e.to_string())?;
        let tensor = view.load(&Device::Cpu).map_err(|e| e.to_string())?;
        #[cfg(unix)]
        // SAFETY: the mapping is private and read-only; dropped pages are re-read from the file
        // if ever touched again, so no data the program sees changes.
        unsafe {
            let _ = self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start);
        }
        Ok(tensor)
    }
}

/// The most a safetensors header may be (the safetensors crate's own limit).
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// Checks a safetensors header against the file before the safetensors crate reads it: the
/// header length inside the file, and every tensor's byte range inside the data and its shape's
/// product without overflow (the crate adds and multiplies these unchecked in places).
pub fn check_safetensors_header(b: &[u8]) -> std::result::Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(default)]
        data_offsets: Option<(u64, u64)>,
        #[serde(default)]
        shape: Option<Vec<u64>>,
    }
    let n = u64::from_le_bytes(
        b.get(..8).ok_or("the file is shorter than a safetensors header")?.try_into().map_err(|_| "bad header")?,
    );
    if n > MAX_SAFETENSORS_HEADER {
        return Err(format!("the header claims {n} bytes (at most {MAX_SAFETENSORS_HEADER})"));
    }
    let data_len = (b.len() as u64).checked_sub(8 + n).ok_or_else(|| {
        format!("the header claims {n} bytes but the file has {} (truncated: an incomplete download or copy?)", b.len())
    })?;
    let header = std::str::from_utf8(&b[8..8 + n as usize]).map_err(|_| "the header is not UTF-8 text")?;
    let entries: HashMap<String, Raw> =
        serde_json::from_str(header).map_err(|e| format!("the header is not valid: {e}"))?;
    for (name, e) in &entries {
        if name == "__metadata__" {
            continue;
        }
        let (start, end) = e.data_offsets.ok_or_else(|| format!("tensor `{name}` has no data_offsets"))?;
        if start > end || end > data_len {
            return Err(format!(
                "tensor `{name}` claims bytes {start}..{end} but the data is {data_len} bytes (truncated file?)"
            ));
        }
        let shape = e.shape.as_deref().unwrap_or(&[]);
        shape
            .iter()
            .try_fold(8u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("tensor `{name}`: its shape {shape:?} overflows"))?;
    }
    Ok(())
}

struct Entry {
    file: usize,
    shape: Shape,
    dtype: DType,
    bytes: u64,
    /// The block format of a quantized tensor (GGUF).
    quantized: Option<candle_core::quantized::GgmlDType>,
}

/// All tensors of one model folder, wherever they live.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<(PathBuf, WeightFile)>,
    entries: HashMap<String, Entry>,
    counter: Arc<LoadCounter>,
    /// Set for a published delta: tensors load as base + delta.
    base: Option<Arc<Checkpoint>>,
}

/// The weight layouts we look for, in order of preference (safetensors first: it can be mapped).
const LAYOUTS: [&str; 4] =
    ["model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin"];

impl Checkpoint {
    /// Finds the weight files of a model folder and reads their tensor tables (not the data).
    pub fn open_dir(dir: &Path, counter: Arc<LoadCounter>) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::checkpoint(dir, "is not a folder"));
        }
        let layout = LAYOUTS.iter().map(|name| dir.join(name)).find(|p| p.is_file()).ok_or_else(|| {
            Error::checkpoint(dir, format!("no weights found: expected one of {}", LAYOUTS.join(", ")))
        })?;
        let name = layout.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let files = if name.ends_with(".index.json") { shards_from_index(&layout)? } else { vec![layout] };
        Self::open_files(dir, &files, counter)
    }

    /// A model folder, or a `.gguf` file written by `ziya-visual quantize`.
    pub fn open(path: &Path, counter: Arc<LoadCounter>) -> Result<Self> {
        if is_gguf(path) {
            let dir = path.parent().unwrap_or(Path::new("."));
            Self::open_files(dir, &[path.to_path_buf()], counter)
        } else {
            Self::open_dir(path, counter)
        }
    }

    /// Opens an explicit list of weight files (safetensors, GGUF or PyTorch pickles, by extension).
    pub fn open_files(dir: &Path, paths: &[PathBuf], counter: Arc<LoadCounter>) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for path in paths {
            let idx = files.len();
            let is_safetensors = path.extension().and_then(|e| e.to_str()) == Some("safetensors");
            let file = if is_gguf(path) {
                let content = read_gguf(path)?;
                for (name, info) in &content.tensor_infos {
                    use candle_core::quantized::GgmlDType as G;
                    let elems = info.shape.elem_count() as u64;
                    let bytes = elems / info.ggml_dtype.block_size() as u64 * info.ggml_dtype.type_size() as u64;
                    let (dtype, quantized) = match info.ggml_dtype {
                        G::F32 => (DType::F32, None),
                        G::F16 => (DType::F16, None),
                        G::BF16 => (DType::BF16, None),
                        q => (DType::F32, Some(q)),
                    };
                    entries
                        .insert(name.clone(), Entry { file: idx, shape: info.shape.clone(), dtype, bytes, quantized });
                }
                WeightFile::Gguf(content)
            } else if is_safetensors {
                let st = MappedSafetensors::open(path)
                    .map_err(|e| Error::checkpoint(path, format!("not a readable safetensors file: {e}")))?;
                for (name, info) in &st.infos {
                    let shape = Shape::from(info.shape.clone());
                    let bytes = (info.data_offsets.1 - info.data_offsets.0) as u64;
                    entries.insert(
                        name.clone(),
                        Entry { file: idx, shape, dtype: st_dtype(info.dtype), bytes, quantized: None },
                    );
                }
                WeightFile::Safetensors(st)
            } else {
                let pth = super::pickle::read_infos(path)
                    .map_err(|e| Error::checkpoint(path, format!("not a readable PyTorch checkpoint: {e}")))?;
                for (name, info) in &pth {
                    let shape = Shape::from(info.shape.clone());
                    let bytes = info.byte_len() as u64;
                    entries.insert(name.clone(), Entry { file: idx, shape, dtype: info.dtype, bytes, quantized: None });
                }
                WeightFile::Pth(pth)
            };
            files.push((path.clone(), file));
        }
        if entries.is_empty() {
            return Err(Error::checkpoint(dir, "the weight files hold no tensors"));
        }
        Ok(Self { dir: dir.to_path_buf(), files, entries, counter, base: None })
    }

    /// The published Ziya delta in `delta_dir` over Meta's LLaMA in `base_dir`: every tensor
    /// loads as base + delta (rounded to the delta's precision, as Fengshenbang's apply_delta.py
    /// adds float16 parameters), except the embeddings, the LM head and rotary tables, which
    /// are the delta's own (the vocabulary grew from 32000 to 39424).
    pub fn open_delta(base_dir: &Path, delta_dir: &Path, counter: Arc<LoadCounter>) -> Result<Self> {
        let base = Checkpoint::open_dir(base_dir, counter.clone())?;
        let mut delta = Checkpoint::open_dir(delta_dir, counter)?;
        for name in delta.sorted_names() {
            if crate::model::delta::taken_from_delta(&name) {
                continue;
            }
            let d = &delta.entries[&name];
            match base.entries.get(&name) {
                None => {
                    return Err(Error::checkpoint(
                        base_dir,
                        format!(
                            "tensor `{name}` of the delta is missing from the base (is this Meta's LLaMA-13B in HF format?)"
                        ),
                    ))
                }
                Some(b) if b.shape != d.shape => {
                    return Err(Error::checkpoint(
                        base_dir,
                        format!(
                            "tensor `{name}` has shape {:?} in the base but {:?} in the delta (the delta was made from another model)",
                            b.shape.dims(),
                            d.shape.dims()
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        delta.base = Some(Arc::new(base));
        Ok(delta)
    }

    pub fn base(&self) -> Option<&Arc<Checkpoint>> {
        self.base.as_ref()
    }

    /// The stored precision of a tensor.
    pub fn stored_dtype(&self, name: &str) -> Option<DType> {
        self.entries.get(name).map(|e| e.dtype)
    }

    /// Tensor names, sorted.
    pub fn sorted_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.entries.keys().cloned().collect();
        v.sort();
        v
    }

    /// Calls `f` with the stored bytes of a tensor a piece at a time (little-endian, row-major)
    /// without holding the whole tensor: for merging checkpoints larger than memory.
    pub fn for_each_chunk(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        const CHUNK: usize = 4 << 20;
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| Error::checkpoint(&self.dir, format!("tensor `{name}` is missing from the weight files")))?;
        let (path, file) = &self.files[entry.file];
        let wrap = |e: String| Error::checkpoint(path, format!("reading tensor `{name}`: {e}"));
        match file {
            WeightFile::Safetensors(st) => {
                let info = st.infos.get(name).ok_or_else(|| wrap("not in file".into()))?;
                let (start, end) = (st.data_start + info.data_offsets.0, st.data_start + info.data_offsets.1);
                let bytes = st.mmap.get(start..end).ok_or_else(|| wrap("data outside the file".into()))?;
                for piece in bytes.chunks(CHUNK) {
                    f(piece)?;
                }
                #[cfg(unix)]
                // SAFETY: see MappedSafetensors::load.
                unsafe {
                    let _ = st.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start);
                }
                Ok(())
            }
            WeightFile::Gguf(_) => {
                let bytes = tensor_bytes(&self.load_raw(name)?)?;
                for piece in bytes.chunks(CHUNK) {
                    f(piece)?;
                }
                Ok(())
            }
            WeightFile::Pth(pth) => {
                let info = pth.get(name).ok_or_else(|| wrap("not in file".into()))?;
                if info.fortran {
                    // Rare (transposed storage): read it whole.
                    let bytes = tensor_bytes(&self.load_raw(name)?)?;
                    for piece in bytes.chunks(CHUNK) {
                        f(piece)?;
                    }
                    return Ok(());
                }
                let mut left = info.byte_len();
                let mut buf = vec![0u8; CHUNK.min(left.max(1))];
                let mut failure = None;
                super::pickle::open_data(path, info, &mut |entry| {
                    while left > 0 {
                        let n = left.min(buf.len());
                        entry.read_exact(&mut buf[..n]).map_err(|e| format!("the file is truncated? {e}"))?;
                        if let Err(e) = f(&buf[..n]) {
                            failure = Some(e);
                            return Ok(());
                        }
                        left -= n;
                    }
                    Ok(())
                })
                .map_err(wrap)?;
                failure.map_or(Ok(()), Err)
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&Shape> {
        self.entries.get(name).map(|e| &e.shape)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    /// Total bytes of tensor data stored under names starting with `prefix` (a delta's base
    /// included, since loading reads both).
    pub fn bytes_with_prefix(&self, prefix: &str) -> u64 {
        let own: u64 = self.entries.iter().filter(|(n, _)| n.starts_with(prefix)).map(|(_, e)| e.bytes).sum();
        own + self.base.as_ref().map_or(0, |b| b.bytes_with_prefix(prefix))
    }

    pub fn counter(&self) -> &Arc<LoadCounter> {
        &self.counter
    }

    /// Reads one tensor, converted to `dtype` on `device` (merged with the base, for a delta).
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let path = self.entries.get(name).map(|e| self.files[e.file].0.clone()).unwrap_or_else(|| self.dir.clone());
        let wrap = |e: candle_core::Error| Error::checkpoint(&path, format!("reading tensor `{name}`: {e}"));
        let tensor = match &self.base {
            Some(base) if !crate::model::delta::taken_from_delta(name) => {
                // As apply_delta.py: the base in the delta's precision, plus the delta, rounded
                // to that precision.
                let delta = self.load_raw(name)?;
                let stored = delta.dtype();
                let base = base.load_raw(name)?.to_dtype(stored).map_err(wrap)?;
                (base.to_dtype(DType::F32).map_err(wrap)? + delta.to_dtype(DType::F32).map_err(wrap)?)
                    .and_then(|t| t.to_dtype(stored))
                    .map_err(wrap)?
            }
            _ => self.load_raw(name)?,
        };
        // Convert on the CPU before moving: a 16-bit tensor then crosses to the GPU at half size
        // and an f32 checkpoint loaded as f16 never holds two f32 copies on the device.
        tensor.to_dtype(dtype).map_err(wrap)?.to_device(device).map_err(wrap)
    }

    /// One tensor as stored, on the CPU.
    fn load_raw(&self, name: &str) -> Result<Tensor> {
        if self.counter.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| Error::checkpoint(&self.dir, format!("tensor `{name}` is missing from the weight files")))?;
        let (path, file) = &self.files[entry.file];
        let wrap = |e: candle_core::Error| Error::checkpoint(path, format!("reading tensor `{name}`: {e}"));
        let tensor = match file {
            WeightFile::Safetensors(st) => {
                st.load(name).map_err(|e| Error::checkpoint(path, format!("reading tensor `{name}`: {e}")))?
            }
            WeightFile::Pth(pth) => {
                let info = pth
                    .get(name)
                    .ok_or_else(|| Error::checkpoint(path, format!("tensor `{name}` vanished from the file")))?;
                super::pickle::load(path, info)
                    .map_err(|e| Error::checkpoint(path, format!("reading tensor `{name}`: {e}")))?
            }
            WeightFile::Gguf(content) => {
                let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
                let q = content.tensor(&mut f, name, &Device::Cpu).map_err(wrap)?;
                q.dequantize(&Device::Cpu).map_err(wrap)?.to_dtype(entry.dtype).map_err(wrap)?
            }
        };
        self.counter.done.fetch_add(entry.bytes, Ordering::Relaxed);
        Ok(tensor)
    }

    /// A tensor stored quantized (in a GGUF file), as is; `None` for tensors stored as floats.
    pub fn load_quantized(
        &self,
        name: &str,
        shape: &Shape,
        device: &Device,
    ) -> Result<Option<candle_core::quantized::QTensor>> {
        let Some(entry) = self.entries.get(name).filter(|e| e.quantized.is_some()) else { return Ok(None) };
        let (path, file) = &self.files[entry.file];
        let WeightFile::Gguf(content) = file else { return Ok(None) };
        if &entry.shape != shape {
            return Err(Error::checkpoint(
                path,
                format!("tensor `{name}` has shape {:?} but the config implies {:?}", entry.shape.dims(), shape.dims()),
            ));
        }
        if self.counter.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let q = content
            .tensor(&mut f, name, device)
            .map_err(|e| Error::checkpoint(path, format!("reading tensor `{name}`: {e}")))?;
        self.counter.done.fetch_add(entry.bytes, Ordering::Relaxed);
        Ok(Some(q))
    }

    /// The block format of the first quantized tensor (a GGUF's quantization).
    pub fn quantization(&self) -> Option<candle_core::quantized::GgmlDType> {
        self.entries.values().find_map(|e| e.quantized)
    }

    /// Reads one tensor and checks its shape against what the config implies.
    pub fn load_shaped(&self, name: &str, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor> {
        if let Some(entry) = self.entries.get(name) {
            if &entry.shape != shape {
                let (path, _) = &self.files[entry.file];
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "tensor `{name}` has shape {:?} but config.json implies {:?} (is this the right model folder?)",
                        entry.shape.dims(),
                        shape.dims()
                    ),
                ));
            }
        }
        self.load(name, dtype, device)
    }
}

/// Whether `path` is a GGUF file.
pub fn is_gguf(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The header (metadata and tensor table) of a GGUF file.
/// The header is checked first (see [`crate::model::gguf::check_header`]): candle trusts it.
pub fn read_gguf(path: &Path) -> Result<candle_core::quantized::gguf_file::Content> {
    let mut f = std::io::BufReader::new(std::fs::File::open(path).map_err(|e| Error::io(path, e))?);
    crate::model::gguf::check_header(&mut f)
        .map_err(|e| Error::checkpoint(path, format!("not a readable GGUF file: {e}")))?;
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    candle_core::quantized::gguf_file::Content::read(&mut f)
        .map_err(|e| Error::checkpoint(path, format!("not a readable GGUF file: {e}")))
}

/// A string from a GGUF's metadata.
pub fn gguf_string(content: &candle_core::quantized::gguf_file::Content, key: &str) -> Option<String> {
    match content.metadata.get(key)? {
        candle_core::quantized::gguf_file::Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn st_dtype(d: safetensors::Dtype) -> DType {
    match d {
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        safetensors::Dtype::F64 => DType::F64,
        safetensors::Dtype::U8 => DType::U8,
        safetensors::Dtype::U32 => DType::U32,
        safetensors::Dtype::I64 => DType::I64,
        _ => DType::F32,
    }
}

/// The raw little-endian bytes of a CPU tensor.
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F16 => t.to_vec1::<half::f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => t.to_vec1::<half::bf16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F32 => t.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        other => return Err(Error::Request(format!("cannot stream tensors of type {other:?}"))),
    })
}

/// Lists the shard files an index.json refers to, checking each one exists.
fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = crate::model::config::read_text_limited(index, 64 << 20)?;
    let parsed: Index =
        serde_json::from_str(&text).map_err(|e| Error::checkpoint(index, format!("not a valid weight index: {e}")))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut names: Vec<&String> = parsed.weight_map.values().collect();
    names.sort();
    names.dedup();
    let mut files = Vec::with_capacity(names.len());
    let root = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    for name in names {
        // Shards live in the model's folder: a name that leads elsewhere is refused.
        let rel = Path::new(name);
        let inside = rel.components().all(|c| matches!(c, std::path::Component::Normal(_)))
            && rel.components().next().is_some()
            && dir.join(rel).canonicalize().map_or(true, |p| p.starts_with(&root));
        if !inside {
            return Err(Error::checkpoint(index, format!("shard `{name}` is not a file inside the model's folder")));
        }
        let path = dir.join(name);
        if !path.is_file() {
            return Err(Error::checkpoint(&path, format!("shard listed in {} is missing", index.display())));
        }
        files.push(path);
    }
    if files.is_empty() {
        return Err(Error::checkpoint(index, "the index lists no weight files"));
    }
    Ok(files)
}

/// A view of a checkpoint under a name prefix, handing out tensors in one dtype on one device.
#[derive(Clone)]
pub struct Weights {
    ckpt: Arc<Checkpoint>,
    prefix: String,
    pub dtype: DType,
    pub device: Device,
    /// Where set, the precision linear layers' weights are held in while everything else (and
    /// the computation) is in `dtype`: f16 weights computed in f32 on the CPU.
    linear_dtype: Option<DType>,
}

impl Weights {
    pub fn new(ckpt: Arc<Checkpoint>, dtype: DType, device: &Device) -> Self {
        Self { ckpt, prefix: String::new(), dtype, device: device.clone(), linear_dtype: None }
    }

    /// The same view holding linear layers' weights in `dtype` (see [`Weights::linear_weight`]).
    pub fn with_linear_dtype(&self, dtype: DType) -> Self {
        Self { linear_dtype: Some(dtype), ..self.clone() }
    }

    /// A linear layer's weight: in the view's linear precision where one is set, else in `dtype`.
    pub fn linear_weight(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        let dtype = self.linear_dtype.unwrap_or(self.dtype);
        self.ckpt.load_shaped(&self.path(name), &shape.into(), dtype, &self.device)
    }

    /// The view one level down, e.g. `vb.pp("encoder").pp(3)`.
    pub fn pp(&self, part: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() { part.to_string() } else { format!("{}.{part}", self.prefix) };
        Self { prefix, ..self.clone() }
    }

    /// The same view handing out another dtype (norms kept in f32, say).
    pub fn with_dtype(&self, dtype: DType) -> Self {
        Self { dtype, ..self.clone() }
    }

    /// The same view handing out tensors in `dtype` on the CPU (for quantizing).
    pub fn on_cpu(&self, dtype: DType) -> Self {
        Self { dtype, device: Device::Cpu, ..self.clone() }
    }

    /// The tensor as stored in quantized form (GGUF), if it is; checks the shape.
    pub fn get_quantized(
        &self,
        shape: impl Into<Shape>,
        name: &str,
    ) -> Result<Option<candle_core::quantized::QTensor>> {
        self.ckpt.load_quantized(&self.path(name), &shape.into(), &self.device)
    }

    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.ckpt.contains(&self.path(name))
    }

    /// The tensor `name` with the shape the config implies.
    pub fn get(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        self.ckpt.load_shaped(&self.path(name), &shape.into(), self.dtype, &self.device)
    }

    pub fn checkpoint(&self) -> &Arc<Checkpoint> {
        &self.ckpt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(header: &str, data: usize) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.resize(b.len() + data, 0);
        b
    }

    #[test]
    fn safetensors_headers_are_checked_against_the_file() {
        check_safetensors_header(&st(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"x":"y"}}"#,
            8,
        ))
        .unwrap();
        for (b, want) in [
            (st(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, 4), "claims bytes 0..8"),
            (st(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#, 8), "claims bytes 8..0"),
            (
                st(
                    r#"{"a":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,9223372036854775808]},
                   "b":{"dtype":"U8","shape":[9223372036854775807],"data_offsets":[9223372036854775808,18446744073709551615]}}"#,
                    0,
                ),
                "claims bytes",
            ),
            (st(r#"{"a":{"dtype":"F64","shape":[1099511627776,1099511627776],"data_offsets":[0,8]}}"#, 8), "overflows"),
            (st(r#"{"a":{"dtype":"F32","shape":[2]}}"#, 8), "no data_offsets"),
            (st(r#"{"a":"#, 8), "not valid"),
            (vec![1, 2, 3], "shorter"),
        ] {
            let err = check_safetensors_header(&b).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
        let mut long = st("{}", 0);
        long[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(check_safetensors_header(&long).unwrap_err().contains("the header claims 4611686018427387904"));
        long[..8].copy_from_slice(&1000u64.to_le_bytes());
        assert!(check_safetensors_header(&long).unwrap_err().contains("truncated"));
    }

    #[test]
    fn shards_named_outside_the_folder_are_refused() {
        let outer = tempfile::tempdir().unwrap();
        let dir = outer.path().join("llm");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(outer.path().join("elsewhere.bin"), b"x").unwrap();
        for name in ["../elsewhere.bin", "/etc/passwd", "a/../../elsewhere.bin"] {
            let index = dir.join("pytorch_model.bin.index.json");
            std::fs::write(&index, format!(r#"{{"weight_map": {{"w": "{name}"}}}}"#)).unwrap();
            let err = shards_from_index(&index).unwrap_err().to_string();
            assert!(err.contains("not a file inside the model's folder"), "{name}: {err}");
        }
    }
}
