//! Weight storage: ggml block formats byte-for-byte as GGUF stores them, and dense rows.
//!
//! A [`CpuWeight`] is `rows` output features by `cols` input features (PyTorch's (out, in)
//! layout); row `r` occupies bytes `r * row_bytes .. (r + 1) * row_bytes` of one 64-byte aligned
//! allocation. There is no second (repacked) copy: the kernels read these bytes directly.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use candle_core::quantized::k_quants as ck;
use candle_core::quantized::{GgmlDType, GgmlType, QTensor};
use candle_core::{bail, DType, Result, Tensor};
use half::f16;

use super::pool;

pub const QK_K: usize = 256;
pub const QK8_0: usize = 32;

/// ggml `block_q8_0`: 32 weights `d * qs[i]`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK8_0],
}

/// ggml `block_q4_K`: 256 weights in 8 sub-blocks of 32; sub-block `s` has a 6-bit scale and
/// min (packed in `scales`); weight = `d * sc[s] * q - dmin * m[s]`. `qs` holds 4 chunks of 32
/// bytes; chunk `j`'s low nibbles are weights `64j..64j+32`, its high nibbles `64j+32..64j+64`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

/// ggml `block_q6_K`: 256 weights `d * scales[i / 16] * (q - 32)`, q 6 bits: low 4 in `ql`,
/// high 2 in `qh`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);
// candle's block types must have the same sizes: quantization writes them over our bytes.
const _: () = assert!(std::mem::size_of::<ck::BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<ck::BlockQ4K>() == 144);
const _: () = assert!(std::mem::size_of::<ck::BlockQ6K>() == 210);
const _: () = assert!(std::mem::align_of::<ck::BlockQ8_0>() <= 2);
const _: () = assert!(std::mem::align_of::<ck::BlockQ4K>() <= 2);
const _: () = assert!(std::mem::align_of::<ck::BlockQ6K>() <= 2);

/// Storage format of a [`CpuWeight`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Q4K,
    Q6K,
    Q8_0,
    F16,
    F32,
}

impl Format {
    /// Weights per block.
    pub fn block_elems(self) -> usize {
        match self {
            Format::Q4K | Format::Q6K => QK_K,
            Format::Q8_0 => QK8_0,
            Format::F16 | Format::F32 => 1,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4K => 144,
            Format::Q6K => 210,
            Format::Q8_0 => 34,
            Format::F16 => 2,
            Format::F32 => 4,
        }
    }

    /// Bytes of one row of `cols` weights.
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_elems() * self.block_bytes()
    }

    pub fn ggml(self) -> GgmlDType {
        match self {
            Format::Q4K => GgmlDType::Q4K,
            Format::Q6K => GgmlDType::Q6K,
            Format::Q8_0 => GgmlDType::Q8_0,
            Format::F16 => GgmlDType::F16,
            Format::F32 => GgmlDType::F32,
        }
    }

    pub fn from_ggml(d: GgmlDType) -> Option<Self> {
        Some(match d {
            GgmlDType::Q4K => Format::Q4K,
            GgmlDType::Q6K => Format::Q6K,
            GgmlDType::Q8_0 => Format::Q8_0,
            GgmlDType::F16 => Format::F16,
            GgmlDType::F32 => Format::F32,
            _ => return None,
        })
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, Format::Q4K | Format::Q6K | Format::Q8_0)
    }
}

/// A zero-initialised, 64-byte aligned byte buffer.
pub struct AlignedBytes {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: plain owned bytes.
unsafe impl Send for AlignedBytes {}
unsafe impl Sync for AlignedBytes {}

impl AlignedBytes {
    pub const ALIGN: usize = 64;

    pub fn zeroed(len: usize) -> Self {
        if len == 0 {
            // A dangling but 64-aligned pointer; never dereferenced for a zero-length slice.
            return Self { ptr: NonNull::new(Self::ALIGN as *mut u8).unwrap(), len: 0 };
        }
        let layout = Layout::from_size_align(len, Self::ALIGN).expect("weight too large");
        // SAFETY: layout has non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(p) else { std::alloc::handle_alloc_error(layout) };
        Self { ptr, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised (zeroed or written) bytes, or len == 0.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AlignedBytes {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated in `zeroed` with this exact layout.
            unsafe { dealloc(self.ptr.as_ptr(), Layout::from_size_align_unchecked(self.len, Self::ALIGN)) }
        }
    }
}

/// An owned weight matrix for the CPU kernels.
pub struct CpuWeight {
    format: Format,
    rows: usize,
    cols: usize,
    bytes: AlignedBytes,
    /// F32 weights laid out as the batched dense kernel's panels ([`super::dense::batched`]'s
    /// `to_panels`), not by rows: only that kernel reads them.
    panels: bool,
}

/// The name the integration notes use.
pub type QuantizedWeight = CpuWeight;

impl std::fmt::Debug for CpuWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuWeight[{:?}; {}x{}]", self.format, self.rows, self.cols)
    }
}

fn check_dims(format: Format, rows: usize, cols: usize) -> Result<()> {
    if cols == 0 || rows == 0 {
        bail!("weight must have rows and cols, got {rows}x{cols}")
    }
    if !cols.is_multiple_of(format.block_elems()) {
        bail!("{format:?} needs cols divisible by {}, got {cols}", format.block_elems())
    }
    Ok(())
}

/// Quantizes `src` (rows x cols) into `dst` with candle's own `from_float`, so the bytes are
/// exactly those `QTensor::quantize` produces. Rows are split over the kernel pool.
fn quantize_rows<T: GgmlType>(src: &[f32], dst: &mut [u8], rows: usize, cols: usize) {
    let bsize = std::mem::size_of::<T>();
    let row_blocks = cols / T::BLCK_SIZE;
    let row_bytes = row_blocks * bsize;
    assert_eq!(dst.len(), rows * row_bytes);
    assert_eq!(src.len(), rows * cols);
    assert!(std::mem::align_of::<T>() <= 2 && (dst.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()));
    let dst_ptr = pool::SendPtr(dst.as_mut_ptr());
    let p = pool::global();
    let nt = p.n_threads().min(rows);
    p.run(|tid| {
        if tid >= nt {
            return;
        }
        let r = pool::split(rows, nt, tid, 1);
        if r.is_empty() {
            return;
        }
        // SAFETY: each part writes its own disjoint range of whole rows; every bit pattern is a
        // valid candle block (f16/f32/integer fields only), the size matches (asserted at
        // compile time above) and the pointer is aligned for T (checked above; row_bytes is a
        // multiple of size_of::<T>() which is a multiple of its alignment).
        let blocks: &mut [T] = unsafe {
            std::slice::from_raw_parts_mut(dst_ptr.ptr().add(r.start * row_bytes) as *mut T, r.len() * row_blocks)
        };
        T::from_float(&src[r.start * cols..r.end * cols], blocks);
    });
}

impl CpuWeight {
    /// Wraps weight bytes already in `format`'s layout (e.g. read from a GGUF file).
    pub fn from_bytes(format: Format, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        check_dims(format, rows, cols)?;
        let expect = rows * format.row_bytes(cols);
        if bytes.len() != expect {
            bail!("{format:?} {rows}x{cols} needs {expect} bytes, got {}", bytes.len())
        }
        let mut buf = AlignedBytes::zeroed(expect);
        buf.as_mut_slice().copy_from_slice(bytes);
        Ok(Self { format, rows, cols, bytes: buf, panels: false })
    }

    /// Quantizes (or, for F16/F32, converts) `data` (rows x cols f32, row-major). Quantized
    /// bytes are bit-identical to candle's `QTensor::quantize` of the same values.
    pub fn from_f32(format: Format, rows: usize, cols: usize, data: &[f32]) -> Result<Self> {
        check_dims(format, rows, cols)?;
        if data.len() != rows * cols {
            bail!("expected {} values for {rows}x{cols}, got {}", rows * cols, data.len())
        }
        let mut buf = AlignedBytes::zeroed(rows * format.row_bytes(cols));
        let dst = buf.as_mut_slice();
        match format {
            Format::Q4K => quantize_rows::<ck::BlockQ4K>(data, dst, rows, cols),
            Format::Q6K => quantize_rows::<ck::BlockQ6K>(data, dst, rows, cols),
            Format::Q8_0 => quantize_rows::<ck::BlockQ8_0>(data, dst, rows, cols),
            Format::F16 => {
                for (o, &v) in dst.chunks_exact_mut(2).zip(data) {
                    o.copy_from_slice(&f16::from_f32(v).to_le_bytes());
                }
            }
            Format::F32 => {
                for (o, &v) in dst.chunks_exact_mut(4).zip(data) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        Ok(Self { format, rows, cols, bytes: buf, panels: false })
    }

    /// Dense f16 weights.
    pub fn from_f16(rows: usize, cols: usize, data: &[f16]) -> Result<Self> {
        check_dims(Format::F16, rows, cols)?;
        if data.len() != rows * cols {
            bail!("expected {} values for {rows}x{cols}, got {}", rows * cols, data.len())
        }
        let mut buf = AlignedBytes::zeroed(rows * cols * 2);
        for (o, &v) in buf.as_mut_slice().chunks_exact_mut(2).zip(data) {
            o.copy_from_slice(&v.to_le_bytes());
        }
        Ok(Self { format: Format::F16, rows, cols, bytes: buf, panels: false })
    }

    /// Copies the bytes of a 2-D CPU `QTensor` (Q4K, Q6K, Q8_0, F16 or F32); the QTensor can be
    /// dropped afterwards.
    pub fn from_qtensor(qt: &QTensor) -> Result<Self> {
        let Some(format) = Format::from_ggml(qt.dtype()) else { bail!("unsupported quantized dtype {:?}", qt.dtype()) };
        let (rows, cols) = qt.shape().dims2()?;
        let data = qt.data()?;
        Self::from_bytes(format, rows, cols, &data)
    }

    /// A dense 2-D CPU tensor (out, in): F16 stays F16, F32 stays F32, BF16 becomes F32.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let (rows, cols) = t.dims2()?;
        let t = t.to_device(&candle_core::Device::Cpu)?;
        match t.dtype() {
            DType::F16 => Self::from_f16(rows, cols, &t.flatten_all()?.to_vec1::<f16>()?),
            DType::F32 => Self::from_f32(Format::F32, rows, cols, &t.flatten_all()?.to_vec1::<f32>()?),
            DType::BF16 => {
                Self::from_f32(Format::F32, rows, cols, &t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
            }
            d => bail!("unsupported dense dtype {d:?}"),
        }
    }

    /// A candle QTensor holding a copy of these bytes (for comparisons and fallbacks).
    pub fn to_qtensor(&self) -> Result<QTensor> {
        if self.panels {
            bail!("a weight laid out as panels has no QTensor form")
        }
        let storage = candle_core::quantized::QStorage::from_data(
            std::borrow::Cow::Borrowed(self.bytes()),
            &candle_core::Device::Cpu,
            self.format.ggml(),
        )?;
        QTensor::new(storage, (self.rows, self.cols))
    }

    /// F32 `rows` x `cols` weights already laid out as panels by the batched dense kernel.
    pub(crate) fn from_panels(rows: usize, cols: usize, bytes: AlignedBytes) -> Self {
        Self { format: Format::F32, rows, cols, bytes, panels: true }
    }

    /// Whether the bytes are the batched kernel's panels rather than rows.
    pub fn is_panels(&self) -> bool {
        self.panels
    }

    pub fn format(&self) -> Format {
        self.format
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn row_bytes(&self) -> usize {
        self.format.row_bytes(self.cols)
    }
    /// The weight bytes in the format's layout.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }
    pub fn size_in_bytes(&self) -> usize {
        self.bytes.len()
    }
    /// Bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        assert!(!self.panels, "a weight laid out as panels has no rows");
        let rb = self.row_bytes();
        &self.bytes()[r * rb..(r + 1) * rb]
    }

    /// Dequantizes row `r` into `out` (len cols), with ggml's formulas (scalar reference).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols);
        let row = self.row(r);
        match self.format {
            Format::Q4K => {
                for (b, o) in row.chunks_exact(144).zip(out.chunks_exact_mut(QK_K)) {
                    dequant_q4k(b, o)
                }
            }
            Format::Q6K => {
                for (b, o) in row.chunks_exact(210).zip(out.chunks_exact_mut(QK_K)) {
                    dequant_q6k(b, o)
                }
            }
            Format::Q8_0 => {
                for (b, o) in row.chunks_exact(34).zip(out.chunks_exact_mut(QK8_0)) {
                    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                    for (i, o) in o.iter_mut().enumerate() {
                        *o = d * (b[2 + i] as i8) as f32;
                    }
                }
            }
            Format::F16 => {
                for (b, o) in row.chunks_exact(2).zip(out.iter_mut()) {
                    *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            Format::F32 => {
                for (b, o) in row.chunks_exact(4).zip(out.iter_mut()) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
    }

    /// All rows dequantized (rows x cols).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, o) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(r, o);
        }
        out
    }
}

/// ggml's 6-bit scale/min unpack for q4_K sub-block `j`.
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The 8 scales and 8 mins of a q4_K block from its 12 packed bytes (ggml's `utmp` trick):
/// returns bytes `[sc0..sc7, m0..m7]`.
#[inline(always)]
pub fn unpack_q4k_scales(s: &[u8; 12]) -> [u8; 16] {
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let mut u = [
        u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
        u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
        0,
    ];
    u[3] = ((u[2] >> 4) & KMASK2) | (((u[1] >> 6) & KMASK3) << 4);
    let uaux = u[1] & KMASK1;
    u[1] = (u[2] & KMASK2) | (((u[0] >> 6) & KMASK3) << 4);
    u[2] = uaux;
    u[0] &= KMASK1;
    let mut out = [0u8; 16];
    for i in 0..4 {
        out[i * 4..i * 4 + 4].copy_from_slice(&u[i].to_le_bytes());
    }
    out
}

fn dequant_q4k(b: &[u8], out: &mut [f32]) {
    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
    let dmin = f16::from_le_bytes([b[2], b[3]]).to_f32();
    let scales = &b[4..16];
    let qs = &b[16..144];
    for j in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, mm1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, mm2) = (d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            let q = qs[32 * j + l];
            out[64 * j + l] = d1 * (q & 0xF) as f32 - mm1;
            out[64 * j + 32 + l] = d2 * (q >> 4) as f32 - mm2;
        }
    }
}

fn dequant_q6k(b: &[u8], out: &mut [f32]) {
    let d = f16::from_le_bytes([b[208], b[209]]).to_f32();
    for h in 0..2 {
        let ql = &b[64 * h..64 * h + 64];
        let qh = &b[128 + 32 * h..128 + 32 * h + 32];
        let sc = |i: usize| b[192 + 8 * h + i] as i8 as f32;
        let o = &mut out[128 * h..128 * h + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            o[l] = d * sc(is) * q1 as f32;
            o[l + 32] = d * sc(is + 2) * q2 as f32;
            o[l + 64] = d * sc(is + 4) * q3 as f32;
            o[l + 96] = d * sc(is + 6) * q4 as f32;
        }
    }
}
