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
    Pth(candle_core::pickle::PthTensors),
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

struct Entry {
    file: usize,
    shape: Shape,
    bytes: u64,
}

/// All tensors of one model folder, wherever they live.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<(PathBuf, WeightFile)>,
    entries: HashMap<String, Entry>,
    counter: Arc<LoadCounter>,
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

    /// Opens an explicit list of weight files (safetensors or PyTorch pickles, by extension).
    pub fn open_files(dir: &Path, paths: &[PathBuf], counter: Arc<LoadCounter>) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for path in paths {
            let idx = files.len();
            let is_safetensors = path.extension().and_then(|e| e.to_str()) == Some("safetensors");
            let file = if is_safetensors {
                let st = MappedSafetensors::open(path)
                    .map_err(|e| Error::checkpoint(path, format!("not a readable safetensors file: {e}")))?;
                for (name, info) in &st.infos {
                    let shape = Shape::from(info.shape.clone());
                    let bytes = (info.data_offsets.1 - info.data_offsets.0) as u64;
                    entries.insert(name.clone(), Entry { file: idx, shape, bytes });
                }
                WeightFile::Safetensors(st)
            } else {
                let pth = candle_core::pickle::PthTensors::new(path, None)
                    .map_err(|e| Error::checkpoint(path, format!("not a readable PyTorch checkpoint: {e}")))?;
                for (name, info) in pth.tensor_infos() {
                    let shape = info.layout.shape().clone();
                    let bytes = (shape.elem_count() * info.dtype.size_in_bytes()) as u64;
                    entries.insert(name.clone(), Entry { file: idx, shape, bytes });
                }
                WeightFile::Pth(pth)
            };
            files.push((path.clone(), file));
        }
        if entries.is_empty() {
            return Err(Error::checkpoint(dir, "the weight files hold no tensors"));
        }
        Ok(Self { dir: dir.to_path_buf(), files, entries, counter })
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

    /// Total bytes of tensor data stored under names starting with `prefix`.
    pub fn bytes_with_prefix(&self, prefix: &str) -> u64 {
        self.entries.iter().filter(|(n, _)| n.starts_with(prefix)).map(|(_, e)| e.bytes).sum()
    }

    pub fn counter(&self) -> &Arc<LoadCounter> {
        &self.counter
    }

    /// Reads one tensor, converted to `dtype` on `device`.
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
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
            WeightFile::Pth(pth) => pth
                .get(name)
                .map_err(wrap)?
                .ok_or_else(|| Error::checkpoint(path, format!("tensor `{name}` vanished from the file")))?,
        };
        // Convert on the CPU before moving: a 16-bit tensor then crosses to the GPU at half size
        // and an f32 checkpoint loaded as f16 never holds two f32 copies on the device.
        let tensor = tensor.to_dtype(dtype).map_err(wrap)?.to_device(device).map_err(wrap)?;
        self.counter.done.fetch_add(entry.bytes, Ordering::Relaxed);
        Ok(tensor)
    }

    /// A tensor stored quantized (in a GGUF file), as is; `None` for tensors stored as floats.
    pub fn load_quantized(
        &self,
        _name: &str,
        _shape: &Shape,
        _device: &Device,
    ) -> Result<Option<candle_core::quantized::QTensor>> {
        Ok(None)
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

/// Lists the shard files an index.json refers to, checking each one exists.
fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let parsed: Index =
        serde_json::from_str(&text).map_err(|e| Error::checkpoint(index, format!("not a valid weight index: {e}")))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut names: Vec<&String> = parsed.weight_map.values().collect();
    names.sort();
    names.dedup();
    let mut files = Vec::with_capacity(names.len());
    for name in names {
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
}

impl Weights {
    pub fn new(ckpt: Arc<Checkpoint>, dtype: DType, device: &Device) -> Self {
        Self { ckpt, prefix: String::new(), dtype, device: device.clone() }
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
