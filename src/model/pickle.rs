//! PyTorch checkpoints (`pytorch_model.bin`: a zip with a pickled state dict and one entry per
//! storage), read without trusting them.
//!
//! candle's reader clones every object the pickle fetches from its memo, so a few hundred bytes
//! that fetch and pair the same object over and over grow exponentially; it indexes tuples
//! without checking their length and allocates tensors by the shape the pickle claims. This one
//! shares fetched objects (copy on write, as candle's snapshot semantics need), counts every
//! object it makes against a budget proportional to the pickle's length, limits nesting, and
//! accepts a tensor only when its storage entry really holds the bytes its shape and strides
//! reach.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};

/// The largest pickle read (the state dict of a 13B shard is about 30 KB).
pub const MAX_PICKLE_BYTES: u64 = 16 << 20;
/// The deepest nesting of tuples, lists and dicts accepted (a state dict needs about 6).
const MAX_DEPTH: u32 = 100;
/// The most dimensions a tensor may have.
const MAX_DIMS: usize = 8;
/// The largest expansion deflate can achieve: a compressed entry cannot honestly hold more.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// What the pickle says about one tensor, checked against the zip.
#[derive(Debug, Clone)]
pub struct PthInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Stored in reverse (column-major) order; read reversed and transposed, as candle does.
    pub fortran: bool,
    /// First element, in elements, within the storage.
    pub offset: usize,
    /// The zip entry holding the storage.
    pub entry: String,
}

impl PthInfo {
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn byte_len(&self) -> usize {
        self.elem_count() * self.dtype.size_in_bytes()
    }
}

#[derive(Debug, Clone)]
enum Obj {
    Mark,
    None,
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Class(Rc<(String, String)>),
    Tuple(Rc<Node>),
    List(Rc<Node>),
    /// Key/value pairs, flattened.
    Dict(Rc<Node>),
    /// Callable and arguments.
    Reduce(Rc<Node>),
    /// Object and state.
    Build(Rc<Node>),
    PersistentLoad(Rc<Node>),
}

#[derive(Debug, Clone, Default)]
struct Node {
    depth: u32,
    items: Vec<Obj>,
}

impl Obj {
    fn depth(&self) -> u32 {
        match self {
            Obj::Tuple(n) | Obj::List(n) | Obj::Dict(n) | Obj::Reduce(n) | Obj::Build(n) | Obj::PersistentLoad(n) => {
                n.depth
            }
            _ => 0,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Obj::Str(s) => Some(s),
            _ => None,
        }
    }
    fn as_int(&self) -> Option<i64> {
        match self {
            Obj::Int(i) => Some(*i),
            _ => None,
        }
    }
    fn as_tuple(&self) -> Option<&[Obj]> {
        match self {
            Obj::Tuple(n) => Some(&n.items),
            _ => None,
        }
    }
    /// The two parts of a REDUCE or BUILD.
    fn pair(n: &Node) -> (&Obj, &Obj) {
        (&n.items[0], &n.items[1])
    }
    fn as_class(&self) -> Option<(&str, &str)> {
        match self {
            Obj::Class(c) => Some((&c.0, &c.1)),
            _ => None,
        }
    }
}

/// The pickle machine, limited to the opcodes PyTorch state dicts use (those candle reads).
struct Machine<'a> {
    data: &'a [u8],
    at: usize,
    stack: Vec<Obj>,
    memo: HashMap<u32, Obj>,
    /// Objects (and copied slots) that may still be made.
    budget: u64,
}

type R<T> = std::result::Result<T, String>;

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, at: 0, stack: Vec::new(), memo: HashMap::new(), budget: 2 * data.len() as u64 + 65_536 }
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end =
            self.at.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| {
                format!("the pickle ends early (needs {n} bytes at {} of {})", self.at, self.data.len())
            })?;
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> R<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> R<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn line(&mut self) -> R<String> {
        let rest = &self.data[self.at..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("the pickle ends inside a name")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.at += n + 1;
        Ok(s)
    }

    fn spend(&mut self, n: usize) -> R<()> {
        self.budget = self.budget.checked_sub(n as u64).ok_or_else(|| {
            format!(
                "the pickle makes far more objects than its {} bytes can describe (a decompression bomb?)",
                self.data.len()
            )
        })?;
        Ok(())
    }
    fn push(&mut self, o: Obj) -> R<()> {
        self.spend(1)?;
        if o.depth() > MAX_DEPTH {
            return Err(format!("the pickle nests objects more than {MAX_DEPTH} deep"));
        }
        self.stack.push(o);
        Ok(())
    }
    fn pop(&mut self) -> R<Obj> {
        match self.stack.pop() {
            Some(Obj::Mark) | None => Err("the pickle pops from an empty stack".into()),
            Some(o) => Ok(o),
        }
    }
    fn pop_to_mark(&mut self) -> R<Vec<Obj>> {
        let i = self.stack.iter().rposition(|o| matches!(o, Obj::Mark)).ok_or("the pickle has no mark to pop to")?;
        let items = self.stack.split_off(i + 1);
        self.stack.pop();
        Ok(items)
    }
    fn node(items: Vec<Obj>) -> Rc<Node> {
        let depth = 1 + items.iter().map(Obj::depth).max().unwrap_or(0);
        Rc::new(Node { depth, items })
    }
    /// The list or dict on top of the stack, unshared (copying it if the memo holds it too).
    fn top_container(&mut self, dict: bool) -> R<&mut Node> {
        let shared_len = match self.stack.last() {
            Some(Obj::List(n)) if !dict => (Rc::strong_count(n) > 1).then_some(n.items.len()),
            Some(Obj::Dict(n)) if dict => (Rc::strong_count(n) > 1).then_some(n.items.len()),
            _ => {
                return Err(format!(
                    "the pickle adds items to something that is not a {}",
                    if dict { "dict" } else { "list" }
                ))
            }
        };
        if let Some(len) = shared_len {
            self.spend(len)?;
        }
        match self.stack.last_mut() {
            Some(Obj::List(n)) | Some(Obj::Dict(n)) => Ok(Rc::make_mut(n)),
            _ => Err("the pickle's stack changed".into()),
        }
    }
    fn extend_top(&mut self, dict: bool, items: Vec<Obj>) -> R<()> {
        let depth = 1 + items.iter().map(Obj::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(format!("the pickle nests objects more than {MAX_DEPTH} deep"));
        }
        self.spend(items.len())?;
        let n = self.top_container(dict)?;
        n.depth = n.depth.max(depth);
        n.items.extend(items);
        Ok(())
    }

    /// Runs to the STOP opcode; returns the object on top.
    fn run(mut self) -> R<Obj> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Obj::Class(Rc::new((module, name))))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Obj::Int(v as i64))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Obj::Int(v as i64))?;
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Obj::Int(v as i64))?;
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes.
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(format!("the pickle holds a {n}-byte integer"));
                    }
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(Obj::Int(v))?;
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Obj::Float)?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    let s = std::str::from_utf8(b).map_err(|_| "the pickle holds a string that is not UTF-8")?;
                    self.push(Obj::Str(s.into()))?;
                }
                b'Q' => {
                    let id = self.pop()?;
                    self.push(Obj::PersistentLoad(Self::node(vec![id])))?;
                }
                b'(' => self.push(Obj::Mark)?,
                b't' => {
                    let items = self.pop_to_mark()?;
                    self.push(Obj::Tuple(Self::node(items)))?;
                }
                b')' => self.push(Obj::Tuple(Self::node(Vec::new())))?,
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n || self.stack[self.stack.len() - n..].iter().any(|o| matches!(o, Obj::Mark))
                    {
                        return Err("the pickle makes a tuple of missing items".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Obj::Tuple(Self::node(items)))?;
                }
                0x88 => self.push(Obj::Bool)?,
                0x89 => self.push(Obj::Bool)?,
                b'N' => self.push(Obj::None)?,
                b']' => self.push(Obj::List(Self::node(Vec::new())))?,
                b'}' => self.push(Obj::Dict(Self::node(Vec::new())))?,
                b'd' => {
                    let items = self.pop_to_mark()?;
                    if !items.len().is_multiple_of(2) {
                        return Err("the pickle makes a dict of an odd number of items".into());
                    }
                    self.push(Obj::Dict(Self::node(items)))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_top(false, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_to_mark()?;
                    self.extend_top(false, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_top(true, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_to_mark()?;
                    if !items.len().is_multiple_of(2) {
                        return Err("the pickle sets an odd number of dict items".into());
                    }
                    self.extend_top(true, items)?;
                }
                b'R' | 0x81 => {
                    // REDUCE / NEWOBJ: callable and arguments; OrderedDict() is a dict.
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let dict = op == b'R'
                        && matches!(callable.as_class(), Some(("collections", "OrderedDict" | "defaultdict")));
                    if dict {
                        self.push(Obj::Dict(Self::node(Vec::new())))?;
                    } else {
                        self.push(Obj::Reduce(Self::node(vec![callable, args])))?;
                    }
                }
                b'b' => {
                    let args = self.pop()?;
                    let obj = self.pop()?;
                    match (obj, args) {
                        (Obj::Dict(mut d), Obj::Dict(a)) => {
                            self.spend(a.items.len() + if Rc::strong_count(&d) > 1 { d.items.len() } else { 0 })?;
                            let n = Rc::make_mut(&mut d);
                            n.depth = n.depth.max(a.depth);
                            n.items.extend(a.items.iter().cloned());
                            self.push(Obj::Dict(d))?;
                        }
                        (obj, args) => self.push(Obj::Build(Self::node(vec![obj, args])))?,
                    }
                }
                b'h' | b'j' => {
                    let id = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                    let o = self
                        .memo
                        .get(&id)
                        .cloned()
                        .ok_or_else(|| format!("the pickle fetches memo {id}, which it never stored"))?;
                    self.push(o)?;
                }
                b'q' | b'r' => {
                    let id = if op == b'q' { self.u8()? as u32 } else { self.u32()? };
                    let top = self.stack.last().cloned().ok_or("the pickle stores from an empty stack")?;
                    self.spend(1)?;
                    self.memo.insert(id, top);
                }
                b'.' => return self.pop(),
                other => return Err(format!("the pickle uses opcode {other:#04x}, which checkpoints do not")),
            }
        }
    }
}

/// A tensor as the pickle describes it, before it is checked against the zip.
struct TensorRecord {
    dtype: DType,
    shape: Vec<usize>,
    stride: Vec<usize>,
    offset: usize,
    /// The storage's key (its entry is `<archive>/data/<key>`).
    key: String,
    /// The storage's length in elements.
    storage_elems: usize,
}

/// The tensor a state-dict value describes, or `None` for values that are not tensors.
fn tensor_of(value: &Obj) -> R<Option<TensorRecord>> {
    let Obj::Reduce(r) = value else { return Ok(None) };
    let (mut callable, mut args) = Obj::pair(r);
    // Parameters and tensor subclasses wrap the plain rebuild.
    match callable.as_class() {
        Some(("torch._utils", "_rebuild_parameter")) => {
            let Some(Obj::Reduce(x)) = args.as_tuple().and_then(|a| a.first()) else { return Ok(None) };
            (callable, args) = Obj::pair(x);
        }
        Some(("torch._tensor", "_rebuild_from_type_v2")) => {
            let a = args.as_tuple().ok_or("_rebuild_from_type_v2 without arguments")?;
            let (Some(f), Some(x)) = (a.first(), a.get(2)) else {
                return Err("_rebuild_from_type_v2 with too few arguments".into());
            };
            (callable, args) = (f, x);
        }
        _ => {}
    }
    if callable.as_class() != Some(("torch._utils", "_rebuild_tensor_v2")) {
        return Ok(None);
    }
    let a = args.as_tuple().ok_or("_rebuild_tensor_v2 without arguments")?;
    if a.len() < 4 {
        return Err(format!("_rebuild_tensor_v2 with {} arguments (expected at least 4)", a.len()));
    }
    let Obj::PersistentLoad(storage) = &a[0] else { return Err("a tensor without a storage".into()) };
    let st = storage.items[0].as_tuple().ok_or("a storage that is not a tuple")?;
    if st.len() < 5 {
        return Err("a storage record with too few fields".into());
    }
    let (_, class) = st[1].as_class().ok_or("a storage without a type")?;
    let dtype = match class {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "ByteStorage" => DType::U8,
        "LongStorage" => DType::I64,
        other => return Err(format!("storage type {other} is not supported")),
    };
    let key = st[2].as_str().ok_or("a storage without a key")?.to_string();
    let storage_elems = st[4].as_int().and_then(|v| usize::try_from(v).ok()).ok_or("a storage with a bad size")?;
    let offset = a[1].as_int().and_then(|v| usize::try_from(v).ok()).ok_or("a tensor with a bad offset")?;
    let ints = |o: &Obj, what: &str| -> R<Vec<usize>> {
        let t = o.as_tuple().ok_or_else(|| format!("a tensor {what} that is not a tuple"))?;
        if t.len() > MAX_DIMS {
            return Err(format!("a tensor {what} with {} dimensions (at most {MAX_DIMS})", t.len()));
        }
        t.iter()
            .map(|v| {
                v.as_int()
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(|| format!("a tensor {what} with a bad value"))
            })
            .collect()
    };
    let shape = ints(&a[2], "shape")?;
    let stride = ints(&a[3], "stride")?;
    if stride.len() != shape.len() {
        return Err("a tensor whose shape and stride differ in length".into());
    }
    Ok(Some(TensorRecord { dtype, shape, stride, offset, key, storage_elems }))
}

fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expect = 1usize;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d > 1 && s != expect {
            return false;
        }
        expect = expect.saturating_mul(d);
    }
    true
}

/// Reads the tensor table of a PyTorch zip checkpoint. Errors are messages for the file.
pub fn read_infos(path: &Path) -> R<HashMap<String, PthInfo>> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| format!("not a zip archive: {e}"))?;
    let pickles: Vec<String> =
        zip.file_names().filter_map(|n| n.ok()).filter(|n| n.ends_with("data.pkl")).map(|n| n.into_owned()).collect();
    if pickles.is_empty() {
        return Err("the archive has no data.pkl (not a PyTorch checkpoint)".into());
    }
    let mut infos = HashMap::new();
    for pkl in pickles {
        let dir = pkl.strip_suffix(".pkl").unwrap_or(&pkl).to_string();
        let data = {
            let entry = zip.by_name(&pkl).map_err(|e| format!("{pkl}: {e}"))?;
            if entry.size() > MAX_PICKLE_BYTES {
                return Err(format!("{pkl} is {} bytes; at most {MAX_PICKLE_BYTES} are read", entry.size()));
            }
            let mut data = Vec::with_capacity(entry.size() as usize);
            entry.take(MAX_PICKLE_BYTES + 1).read_to_end(&mut data).map_err(|e| format!("{pkl}: {e}"))?;
            if data.len() as u64 > MAX_PICKLE_BYTES {
                return Err(format!("{pkl} is larger than {MAX_PICKLE_BYTES} bytes"));
            }
            data
        };
        let root = Machine::new(&data).run().map_err(|e| format!("{pkl}: {e}"))?;
        // A TorchScript module's state, or the state dict itself.
        let root = match &root {
            Obj::Build(b) => match Obj::pair(b).0 {
                Obj::Reduce(r) if Obj::pair(r).0.as_class() == Some(("__torch__", "Module")) => Obj::pair(r).1.clone(),
                _ => continue,
            },
            other => other.clone(),
        };
        let Obj::Dict(items) = root else { continue };
        for kv in items.items.chunks_exact(2) {
            let Some(name) = kv[0].as_str() else { continue };
            let Some(TensorRecord { dtype, shape, stride, offset, key, storage_elems }) =
                tensor_of(&kv[1]).map_err(|e| format!("tensor `{name}`: {e}"))?
            else {
                continue;
            };
            let bad = |msg: String| format!("tensor `{name}`: {msg}");
            let fortran = !is_contiguous(&shape, &stride) && {
                let (rs, rt): (Vec<usize>, Vec<usize>) =
                    (shape.iter().rev().copied().collect(), stride.iter().rev().copied().collect());
                is_contiguous(&rs, &rt)
            };
            if !fortran && !is_contiguous(&shape, &stride) {
                return Err(bad(format!("its layout (shape {shape:?}, stride {stride:?}) is not contiguous")));
            }
            let elems = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad("its shape overflows".into()))?;
            // The last element the tensor reaches must lie inside its storage.
            if elems > 0 {
                let last = shape
                    .iter()
                    .zip(&stride)
                    .try_fold(offset, |a, (&d, &s)| a.checked_add((d - 1).checked_mul(s)?))
                    .ok_or_else(|| bad("its extent overflows".into()))?;
                if last >= storage_elems {
                    return Err(bad(format!(
                        "it reaches element {last} of a storage of {storage_elems} (shape {shape:?}, offset {offset})"
                    )));
                }
            }
            let storage_bytes = (storage_elems as u64)
                .checked_mul(dtype.size_in_bytes() as u64)
                .ok_or_else(|| bad("its storage size overflows".into()))?;
            let entry = format!("{dir}/{key}");
            let z = zip.by_name(&entry).map_err(|e| bad(format!("its storage {entry}: {e}")))?;
            let holds = match z.compression() {
                zip::CompressionMethod::Stored => z.size().min(z.compressed_size()),
                _ => z.size().min(z.compressed_size().saturating_mul(MAX_DEFLATE_RATIO)),
            };
            if storage_bytes > holds {
                return Err(bad(format!(
                    "its storage {entry} should hold {storage_bytes} bytes but holds {holds} (truncated file?)"
                )));
            }
            infos.insert(name.to_string(), PthInfo { dtype, shape, fortran, offset, entry });
        }
    }
    Ok(infos)
}

/// Opens `info`'s storage positioned at its first element.
pub fn open_data(path: &Path, info: &PthInfo, f: &mut dyn FnMut(&mut dyn Read) -> R<()>) -> R<()> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| e.to_string())?;
    let mut entry = zip.by_name(&info.entry).map_err(|e| e.to_string())?;
    let skip = (info.offset * info.dtype.size_in_bytes()) as u64;
    let skipped = std::io::copy(&mut (&mut entry).take(skip), &mut std::io::sink()).map_err(|e| e.to_string())?;
    if skipped != skip {
        return Err("the storage is shorter than its tensor (truncated file?)".into());
    }
    f(&mut entry)
}

/// Reads one tensor (its bytes checked to exist when the table was read).
pub fn load(path: &Path, info: &PthInfo) -> R<Tensor> {
    fn read_vec<T: Clone + Default>(r: &mut dyn Read, n: usize) -> R<Vec<T>> {
        let mut v = vec![T::default(); n];
        // SAFETY: T is one of the plain numeric types below (every bit pattern valid); the
        // slice covers exactly the vector's initialised elements.
        let bytes = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, n * std::mem::size_of::<T>()) };
        r.read_exact(bytes).map_err(|_| "the storage is shorter than its tensor (truncated file?)".to_string())?;
        Ok(v)
    }
    let n = info.elem_count();
    let dims: Vec<usize> = if info.fortran { info.shape.iter().rev().copied().collect() } else { info.shape.clone() };
    let mut out = None;
    open_data(path, info, &mut |r| {
        let t = match info.dtype {
            DType::F32 => Tensor::from_vec(read_vec::<f32>(r, n)?, dims.as_slice(), &Device::Cpu),
            DType::F64 => Tensor::from_vec(read_vec::<f64>(r, n)?, dims.as_slice(), &Device::Cpu),
            DType::F16 => Tensor::from_vec(read_vec::<half::f16>(r, n)?, dims.as_slice(), &Device::Cpu),
            DType::BF16 => Tensor::from_vec(read_vec::<half::bf16>(r, n)?, dims.as_slice(), &Device::Cpu),
            DType::U8 => Tensor::from_vec(read_vec::<u8>(r, n)?, dims.as_slice(), &Device::Cpu),
            DType::I64 => Tensor::from_vec(read_vec::<i64>(r, n)?, dims.as_slice(), &Device::Cpu),
            other => return Err(format!("cannot read tensors of type {other:?}")),
        };
        out = Some(t.map_err(|e| e.to_string())?);
        Ok(())
    })?;
    let t = out.ok_or("no data")?;
    #[cfg(target_endian = "big")]
    compile_error!("checkpoints are little-endian; reading them on a big-endian machine needs byte swapping");
    if info.fortran && info.shape.len() > 1 {
        let perm: Vec<usize> = (0..info.shape.len()).rev().collect();
        return t.permute(perm).map_err(|e| e.to_string());
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: &[u8]) -> R<Obj> {
        Machine::new(p).run()
    }

    #[test]
    fn memo_fetches_share_instead_of_copying() {
        // x = []; then 40 times: x = (x, x) through the memo. candle's reader copies on every
        // fetch: 2^40 objects. Shared, it is 40 small tuples.
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..40 {
            p.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        p.push(b'.');
        assert!(matches!(run(&p), Ok(Obj::Tuple(_))));
    }

    #[test]
    fn growing_a_shared_list_over_and_over_hits_the_budget() {
        // A list of 1000 items stored in the memo, then fetched and appended to many times: each
        // append copies the list (snapshot semantics). The budget stops it.
        let mut p = vec![b']', b'('];
        for _ in 0..1000 {
            p.extend_from_slice(&[b'K', 1]);
        }
        p.extend_from_slice(&[b'e', b'q', 0]);
        for _ in 0..2000 {
            p.extend_from_slice(&[b'h', 0, b'K', 1, b'a']);
        }
        p.push(b'.');
        let err = run(&p).map(|_| ()).unwrap_err();
        assert!(err.contains("bomb"), "{err}");
    }

    #[test]
    fn deep_nesting_and_bad_opcodes_are_errors() {
        let mut p = vec![b')'];
        p.extend(std::iter::repeat_n(0x85, 200_000));
        p.push(b'.');
        assert!(run(&p).map(|_| ()).unwrap_err().contains("deep"));
        assert!(run(b"\x85.").is_err(), "tuple of nothing");
        assert!(run(b"(t\x86.").is_err(), "tuple across a mark");
        assert!(run(b"X\xff\xff\xff\xff").unwrap_err().contains("ends early"));
        assert!(run(b"\x8a\xffabc").unwrap_err().contains("ends early"));
        assert!(run(b"\x8a\x09123456789.").is_err());
        assert!(run(b"h\x05.").unwrap_err().contains("memo 5"));
        assert!(run(b"K\x01a.").is_err(), "append to an int");
        assert!(run(b"").is_err());
        assert!(run(b"i").is_err());
    }

    #[test]
    fn long1_is_twos_complement() {
        let Ok(Obj::Int(v)) = run(b"\x8a\x02\xff\xff.") else { panic!() };
        assert_eq!(v, -1);
        let Ok(Obj::Int(v)) = run(b"\x8a\x02\xff\x7f.") else { panic!() };
        assert_eq!(v, 32767);
        let Ok(Obj::Int(v)) = run(b"\x8a\x00.") else { panic!() };
        assert_eq!(v, 0);
    }

    #[test]
    fn tensor_records_are_checked() {
        let storage = |size: i64| {
            Obj::PersistentLoad(Machine::node(vec![Obj::Tuple(Machine::node(vec![
                Obj::Str("storage".into()),
                Obj::Class(Rc::new(("torch".into(), "FloatStorage".into()))),
                Obj::Str("0".into()),
                Obj::Str("cpu".into()),
                Obj::Int(size),
            ]))]))
        };
        let ints = |v: &[i64]| Obj::Tuple(Machine::node(v.iter().map(|&i| Obj::Int(i)).collect()));
        let rebuild = |args: Vec<Obj>| {
            Obj::Reduce(Machine::node(vec![
                Obj::Class(Rc::new(("torch._utils".into(), "_rebuild_tensor_v2".into()))),
                Obj::Tuple(Machine::node(args)),
            ]))
        };
        let ok = tensor_of(&rebuild(vec![storage(6), Obj::Int(0), ints(&[2, 3]), ints(&[3, 1])])).unwrap().unwrap();
        assert_eq!((ok.shape, ok.stride, ok.storage_elems), (vec![2, 3], vec![3, 1], 6));
        assert!(tensor_of(&rebuild(vec![storage(6), Obj::Int(0)])).is_err(), "too few arguments");
        assert!(tensor_of(&rebuild(vec![storage(6), Obj::Int(-1), ints(&[2]), ints(&[1])])).is_err());
        assert!(tensor_of(&rebuild(vec![storage(6), Obj::Int(0), ints(&[2, 3]), ints(&[1])])).is_err());
        assert!(tensor_of(&rebuild(vec![storage(6), Obj::Int(0), ints(&[1; 9]), ints(&[1; 9])])).is_err());
        assert!(
            is_contiguous(&[2, 3], &[3, 1]) && !is_contiguous(&[2, 3], &[1, 2]) && is_contiguous(&[1, 5], &[99, 1])
        );
    }
}
