//! CPU matrix-vector / matrix-matrix kernels for ggml block formats and dense f16/f32 weights,
//! and decode attention over an f16/f32 KV cache.
//!
//! * [`CpuWeight`] holds a weight (rows = out features, cols = in features) in its GGUF byte
//!   layout, once, 64-byte aligned: no repacked second copy. Build it from GGUF bytes
//!   ([`CpuWeight::from_bytes`]), from f32 by quantizing (bit-identical to candle's
//!   `QTensor::quantize`, [`CpuWeight::from_f32`]), from a candle `QTensor`
//!   ([`CpuWeight::from_qtensor`], which copies its bytes so the QTensor can be dropped) or from a
//!   dense candle tensor ([`CpuWeight::from_tensor`]).
//! * [`matmul`] computes `out[t][r] = sum_c W[r][c] * x[t][c]` for `n` tokens (`x` is n x cols,
//!   `out` is n x rows, both row-major f32, i.e. candle's `x.matmul(&w.t())`).
//!   [`CpuMatMul`] wraps it as a candle `CustomOp1` (`xs.apply_op1_no_bwd(&op)`).
//!   [`matmul_epilogue_with`] adds an [`Epilogue`] applied as results are written (bias, exact
//!   GELU, residual: fused into the batched dense path's register tiles).
//! * [`GeluErf`], [`SiluMul`]: exact (erf) GELU and LLaMA's `silu(gate) · up` on f32 tensors,
//!   vectorised and on the pool.
//! * [`attention_decode`] is one query token against a preallocated `[kv_heads][capacity]
//!   [head_dim]` f16/f32 KV cache, read in place.
//! * [`FullAttention`]: the encoders' unmasked attention (ViT, Q-Former) on f32 tensors, q, k
//!   and v read in place from the projections, heads merged in the result (AVX-512).
//!
//! Quantized weights multiply activations quantized like ggml does (q8_K for q4_K/q6_K, q8_0
//! for q8_0; candle's own quantizers, bit for bit); f16/f32 weights multiply the f32
//! activations directly. Integer dot products are exact, as in ggml.
//!
//! Paths: for a few tokens every thread streams a contiguous slab of weight rows and computes
//! all tokens of a tile per weight block (`q4k`, `q6k`, `q8_0`, `dense`). From
//! [`batched::threshold`] tokens on (AVX-512 VNNI), quantized weights go through [`batched`]:
//! 16 rows x 256 columns at a time are unpacked into a per-thread scratch tile reused for all
//! tokens. Dense f16/f32 weights go through `dense::batched`, a GEMM blocked for L2.
//!
//! Every kernel has a portable scalar version and SIMD versions chosen at run time
//! ([`Isa::detect`]: AVX-512 VNNI, AVX2+FMA+F16C, NEON, scalar; `ZIYA_KERNELS_ISA` caps it);
//! [`matmul_isa`] / [`matmul_with`] force one (the tests run every available one).
//! Threads: [`pool::global`] (`CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else
//! `available_parallelism`).
//!
//! # Integration (ziya-visual)
//! Mounted as `crate::model::kernels` (all paths inside are `super::`-relative).
//!
//! `Linear` on CPU: keep `Arc<CpuWeight>` (or a [`CpuMatMul`]) instead of `QMatMul` for
//! quantized weights and for dense f16/f32 weights, and in `forward`:
//! ```ignore
//! let ys = xs.contiguous()?.apply_op1_no_bwd(&self.op)?; // (.., in) -> (.., out), same dtype
//! ```
//! Loading: a GGUF tensor's bytes go to `CpuWeight::from_bytes(format, rows, cols, bytes)`
//! (or `from_qtensor(&qt)` then drop `qt`); quantize-at-load uses
//! `CpuWeight::from_f32(format, rows, cols, &f32_rows)` (multi-threaded, same bytes as candle).
//! Dense f16/f32 weights at many tokens (image step, prefill) run at about 2x candle's gemm
//! and 0.8-1.2x torch's (`cargo bench --bench gemm`), so the CPU keeps no candle tensor for them.
//!
//! `KvCache` on CPU: keep per layer two buffers `[kv_heads][capacity][head_dim]` (f16 or f32,
//! preallocated to the context length or grown by copying), append new positions by writing
//! rows, and for one-token decode call
//! ```ignore
//! attention_decode(&q, heads, &KvView::f16(&k_buf, kv_heads, cap, hd),
//!                  &KvView::f16(&v_buf, kv_heads, cap, hd), len, scale, &mut out)?;
//! ```
//! with `q`/`out` as `heads x head_dim` f32 (after RoPE). Prefill (many query tokens, causal
//! mask) can keep candle's attention on tensors built from the same buffers.

// Index loops over token tiles and lanes mirror the SIMD kernels they stand beside (the scalar
// fallbacks are written lane by lane on purpose).
#![allow(clippy::needless_range_loop)]

/// Calls `$f::<N>(args)` for a run-time `N` in 1..=8 (0 does nothing).
#[allow(unused_macros)]
macro_rules! dispatch_n {
    ($n:expr, $f:ident, $($args:expr),*) => {
        match $n {
            1 => $f::<1>($($args),*),
            2 => $f::<2>($($args),*),
            3 => $f::<3>($($args),*),
            4 => $f::<4>($($args),*),
            5 => $f::<5>($($args),*),
            6 => $f::<6>($($args),*),
            7 => $f::<7>($($args),*),
            8 => $f::<8>($($args),*),
            0 => {}
            _ => unreachable!(),
        }
    };
}

pub mod activation;
pub mod attention;
pub mod batched;
pub mod candle_op;
pub mod dense;
pub mod formats;
pub mod full_attention;
pub mod pool;
pub mod q4k;
pub mod q6k;
pub mod q8_0;
pub mod q8_act;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::ops::Range;

use candle_core::{bail, Result};

pub use activation::{GeluErf, SiluMul};
pub use attention::{attention_decode, attention_decode_isa, KvDType, KvData, KvView};
pub use candle_op::CpuMatMul;
pub use candle_op::PlusResidual;
pub use formats::{CpuWeight, Format, QuantizedWeight};
pub use full_attention::FullAttention;

/// Instruction set a kernel runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, always available.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI (plus AVX2/FMA/F16C).
    Avx512,
    /// aarch64 NEON.
    Neon,
}

impl Isa {
    /// Whether this CPU can run `self`.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every ISA this CPU can run, best last.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Neon, Isa::Avx2, Isa::Avx512].into_iter().filter(|i| i.is_available()).collect()
    }

    /// The best available ISA, capped by the environment variable `ZIYA_KERNELS_ISA`
    /// (`scalar`, `avx2`, `avx512`, `neon`) when set. Cached.
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let best = *Isa::available().last().unwrap_or(&Isa::Scalar);
            match std::env::var("ZIYA_KERNELS_ISA").ok().as_deref() {
                Some("scalar") => Isa::Scalar,
                Some("avx2") if Isa::Avx2.is_available() => Isa::Avx2,
                Some("avx512") if Isa::Avx512.is_available() => Isa::Avx512,
                Some("neon") if Isa::Neon.is_available() => Isa::Neon,
                _ => best,
            }
        })
    }
}

/// `out = x · Wᵀ` for `n` tokens with the best ISA and the global pool. `x`: n x cols, `out`:
/// n x rows (row-major f32).
pub fn matmul(w: &CpuWeight, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
    matmul_isa(Isa::detect(), w, x, n, out)
}

/// [`matmul`] with a given ISA (an error if this CPU lacks it).
pub fn matmul_isa(isa: Isa, w: &CpuWeight, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
    matmul_with(isa, pool::global(), w, x, n, out)
}

/// Bytes a row chunk (the unit threads claim) should cover, and the token tile per ISA.
const CHUNK_BYTES: usize = 96 * 1024;

/// Scratch for quantized activations, reused across calls on the same thread.
struct Scratch {
    buf: Vec<A64>,
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct A64([u8; 64]);

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch { buf: Vec::new() }) };
}

impl Scratch {
    fn bytes(&mut self, len: usize) -> &mut [u8] {
        let n = len.div_ceil(64);
        if self.buf.len() < n {
            self.buf.resize(n, A64([0; 64]));
        }
        // SAFETY: A64 is 64 plain bytes; the Vec holds at least `len` of them.
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr() as *mut u8, len) }
    }
}

/// Carves `qs` (i8), `d` (f32) and `bsums` (i16) arrays out of one 64-byte aligned buffer.
/// `qs` is first (aligned), `d` follows at a multiple of 64 bytes, `bsums` after `d`.
fn carve(buf: &mut [u8], nq: usize, nd: usize, nbs: usize) -> (&mut [i8], &mut [f32], &mut [i16]) {
    let q_bytes = nq.next_multiple_of(64);
    let d_bytes = (nd * 4).next_multiple_of(64);
    assert!(buf.len() >= q_bytes + d_bytes + nbs * 2);
    assert!((buf.as_ptr() as usize).is_multiple_of(64));
    let p = buf.as_mut_ptr();
    // SAFETY: the three ranges are disjoint, in bounds (asserted), suitably aligned (64-byte
    // base, offsets multiples of 64) and every bit pattern is valid for i8/f32/i16.
    unsafe {
        (
            std::slice::from_raw_parts_mut(p as *mut i8, nq),
            std::slice::from_raw_parts_mut(p.add(q_bytes) as *mut f32, nd),
            std::slice::from_raw_parts_mut(p.add(q_bytes + d_bytes) as *mut i16, nbs),
        )
    }
}

fn scratch_len(nq: usize, nd: usize, nbs: usize) -> usize {
    nq.next_multiple_of(64) + (nd * 4).next_multiple_of(64) + nbs * 2
}

/// Rows per chunk for a weight with `row_bytes` per row, a multiple of `align`.
fn chunk_rows(row_bytes: usize, align: usize) -> usize {
    (CHUNK_BYTES / row_bytes.max(1)).max(align).next_multiple_of(align)
}

/// Runs `kernel(rows, tokens)` over every row chunk and token tile, spread over the pool.
fn run_tiles(
    pool: &pool::Pool,
    rows: usize,
    n: usize,
    row_bytes: usize,
    align: usize,
    tile: usize,
    kernel: impl Fn(Range<usize>, Range<usize>) + Sync,
) {
    let threads = pool.n_threads();
    // Few rows per thread: smaller chunks so every thread gets work.
    let mut chunk = chunk_rows(row_bytes, align);
    let per_thread = rows.div_ceil(threads);
    if chunk > per_thread {
        chunk = per_thread.max(align).next_multiple_of(align);
    }
    let slabs = pool::Slabs::new(rows, threads, chunk, align);
    pool.run(|tid| {
        slabs.for_each(tid, |r| {
            let mut t = 0;
            while t < n {
                let te = (t + tile).min(n);
                kernel(r.clone(), t..te);
                t = te;
            }
        })
    });
}

/// [`matmul`] on a given pool (benchmarks compare pools with it).
pub fn matmul_with(isa: Isa, pool: &pool::Pool, w: &CpuWeight, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
    matmul_epilogue_with(isa, pool, w, x, n, &Epilogue::default(), out)
}

/// What a product does to each result as it writes it, in this order: `+ bias[r]` (a linear
/// layer's bias), the exact GELU (HF's "gelu", the encoders' MLP), `+ residual[t][r]` (the
/// encoders' skip connections; n x rows like the output). The batched dense path applies it to
/// each register tile as the tile is stored, while the values are in registers and L1 (a pass
/// of its own over a 257 x 6144 output costs a trip to memory, and a fresh buffer); the other
/// paths in a pass over the output. Either way each value gets the same operations in the same
/// order, so the same bits.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub gelu: bool,
    pub residual: Option<&'a [f32]>,
}

impl Epilogue<'_> {
    /// An error if the bias or the residual does not fit an n x `rows` output.
    fn check(&self, rows: usize, n: usize) -> Result<()> {
        if let Some(b) = self.bias {
            if b.len() != rows {
                bail!("matmul: bias has {} values, expected {rows}", b.len())
            }
        }
        if let Some(r) = self.residual {
            if r.len() != n * rows {
                bail!("matmul: residual has {} values, expected {n} x {rows}", r.len())
            }
        }
        Ok(())
    }

    /// The epilogue as a pass over a finished n x `rows` product (the paths that do not fuse it).
    fn apply(&self, isa: Isa, pool: &pool::Pool, rows: usize, out: &mut [f32]) {
        if let Some(b) = self.bias {
            for row in out.chunks_exact_mut(rows) {
                for (o, &v) in row.iter_mut().zip(b) {
                    *o += v;
                }
            }
        }
        if self.gelu {
            activation::gelu_in_place_with(isa, pool, out);
        }
        if let Some(r) = self.residual {
            for (o, &v) in out.iter_mut().zip(r) {
                *o += v;
            }
        }
    }
}

/// [`matmul_with`] followed by `epi` on every result (fused into the batched dense path).
pub fn matmul_epilogue_with(
    isa: Isa,
    pool: &pool::Pool,
    w: &CpuWeight,
    x: &[f32],
    n: usize,
    epi: &Epilogue,
    out: &mut [f32],
) -> Result<()> {
    epi.check(w.rows(), n)?;
    if dense_batched(isa, w, n) {
        if x.len() != n * w.cols() || out.len() != n * w.rows() {
            bail!(
                "matmul: x has {} values and out {}, expected {n} x {} and {n} x {}",
                x.len(),
                out.len(),
                w.cols(),
                w.rows()
            )
        }
        dense::batched::matmul(w, x, n, epi, pool, pool::SendPtr(out.as_mut_ptr()));
        return Ok(());
    }
    matmul_plain(isa, pool, w, x, n, out)?;
    epi.apply(isa, pool, w.rows(), out);
    Ok(())
}

/// Whether `n` tokens against `w` take the batched dense path.
fn dense_batched(isa: Isa, w: &CpuWeight, n: usize) -> bool {
    matches!(w.format(), Format::F16 | Format::F32) && dense::batched::applies(isa, w, n) && isa.is_available()
}

/// [`matmul_epilogue_with`] into a new vector of n x rows. The batched dense path writes every
/// element, so its output is not cleared first (clearing it was 2 % of the image step).
pub fn matmul_epilogue_vec(
    isa: Isa,
    pool: &pool::Pool,
    w: &CpuWeight,
    x: &[f32],
    n: usize,
    epi: &Epilogue,
) -> Result<Vec<f32>> {
    let len = n * w.rows();
    if dense_batched(isa, w, n) {
        if x.len() != n * w.cols() {
            bail!("matmul: x has {} values, expected {n} x {}", x.len(), w.cols())
        }
        epi.check(w.rows(), n)?;
        let mut out = Vec::with_capacity(len);
        dense::batched::matmul(w, x, n, epi, pool, pool::SendPtr(out.as_mut_ptr()));
        // SAFETY: the batched path writes all n x rows outputs (every row group for every
        // token: the slabs cover all groups), and f32 has no invalid values.
        unsafe { out.set_len(len) };
        return Ok(out);
    }
    let mut out = vec![0f32; len];
    matmul_epilogue_with(isa, pool, w, x, n, epi, &mut out)?;
    Ok(out)
}

fn matmul_plain(isa: Isa, pool: &pool::Pool, w: &CpuWeight, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
    if !isa.is_available() {
        bail!("{isa:?} is not available on this CPU")
    }
    if w.is_panels() {
        bail!("a weight laid out as panels runs only on the batched AVX-512 path, not {isa:?}")
    }
    let (rows, cols) = (w.rows(), w.cols());
    if x.len() != n * cols {
        bail!("matmul: x has {} values, expected {n} x {cols}", x.len())
    }
    if out.len() != n * rows {
        bail!("matmul: out has {} values, expected {n} x {rows}", out.len())
    }
    if n == 0 {
        return Ok(());
    }
    let outp = pool::SendPtr(out.as_mut_ptr());
    let row_bytes = w.row_bytes();
    match w.format() {
        Format::Q4K | Format::Q6K => {
            let nb = cols / formats::QK_K;
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                let buf = s.bytes(scratch_len(n * cols, n * nb, n * nb * 16));
                let (qs, d, bs) = carve(buf, n * cols, n * nb, n * nb * 16);
                let (qp, dp, bp) =
                    (pool::SendPtr(qs.as_mut_ptr()), pool::SendPtr(d.as_mut_ptr()), pool::SendPtr(bs.as_mut_ptr()));
                quantize_tokens(pool, x, n, cols, |t, xt| {
                    // SAFETY: token t < n owns its disjoint ranges of the carved buffers, which
                    // are not otherwise borrowed until quantization returns.
                    let (qs, d, bs) = unsafe { token_slices_q8k(qp.ptr(), dp.ptr(), bp.ptr(), t, cols, nb) };
                    q8_act::quantize_q8k(isa, xt, qs, d, bs)
                });
                let mut pairs = Vec::new();
                let q4k_order = w.format() == Format::Q4K && isa == Isa::Avx512 && !batched::applies(isa, w, n);
                if q4k_order {
                    q8_act::permute_q4k(qs);
                    pairs = vec![0i16; n * nb * 8];
                    q8_act::pair_sums(bs, &mut pairs);
                }
                let (qs, d, bs) = (&*qs, &*d, &*bs);
                let acts: Vec<q8_act::Q8KRow> = (0..n)
                    .map(|t| q8_act::Q8KRow {
                        qs: &qs[t * cols..(t + 1) * cols],
                        d: &d[t * nb..(t + 1) * nb],
                        bsums: &bs[t * nb * 16..(t + 1) * nb * 16],
                        pairs: if q4k_order { &pairs[t * nb * 8..(t + 1) * nb * 8] } else { &[] },
                        q4k_order,
                    })
                    .collect();
                if batched::applies(isa, w, n) {
                    let sub = batched::sub_size(w.format());
                    let ns = cols / sub;
                    let (mut yd, mut ys, mut yi) = (vec![0f32; n * ns], vec![0f32; n * ns], vec![0i32; n * ns]);
                    for t in 0..n {
                        let r = t * ns..(t + 1) * ns;
                        batched::prep_q8k(
                            w.format(),
                            acts[t].d,
                            acts[t].bsums,
                            &mut yd[r.clone()],
                            &mut ys[r.clone()],
                            &mut yi[r],
                        );
                    }
                    let bacts: Vec<batched::BatchAct> = (0..n)
                        .map(|t| batched::BatchAct {
                            qs: acts[t].qs,
                            yd: &yd[t * ns..(t + 1) * ns],
                            ys: &ys[t * ns..(t + 1) * ns],
                            yi: &yi[t * ns..(t + 1) * ns],
                        })
                        .collect();
                    batched::matmul(w, &bacts, pool, outp);
                    return;
                }
                let tile = q4k::token_tile(isa);
                if w.format() == Format::Q4K {
                    run_tiles(pool, rows, n, row_bytes, 1, tile, |r, t| {
                        q4k::rows(isa, w, r, &acts[t.clone()], t.start, outp)
                    });
                } else {
                    run_tiles(pool, rows, n, row_bytes, 1, tile, |r, t| {
                        q6k::rows(isa, w, r, &acts[t.clone()], t.start, outp)
                    });
                }
            });
        }
        Format::Q8_0 => {
            let nb = cols / formats::QK8_0;
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                let buf = s.bytes(scratch_len(n * cols, n * nb, 0));
                let (qs, d, _) = carve(buf, n * cols, n * nb, 0);
                let (qp, dp) = (pool::SendPtr(qs.as_mut_ptr()), pool::SendPtr(d.as_mut_ptr()));
                quantize_tokens(pool, x, n, cols, |t, xt| {
                    // SAFETY: as for q8_K above.
                    let (qs, d) = unsafe {
                        (
                            std::slice::from_raw_parts_mut(qp.ptr().add(t * cols), cols),
                            std::slice::from_raw_parts_mut(dp.ptr().add(t * nb), nb),
                        )
                    };
                    q8_act::quantize_q8_0(isa, xt, qs, d)
                });
                let (qs, d) = (&*qs, &*d);
                let acts: Vec<q8_act::Q80Row> = (0..n)
                    .map(|t| q8_act::Q80Row { qs: &qs[t * cols..(t + 1) * cols], d: &d[t * nb..(t + 1) * nb] })
                    .collect();
                if batched::applies(isa, w, n) {
                    let ns = cols / formats::QK8_0;
                    let (mut yd, mut ys, mut yi) = (vec![0f32; n * ns], vec![0f32; n * ns], vec![0i32; n * ns]);
                    for t in 0..n {
                        let r = t * ns..(t + 1) * ns;
                        batched::prep_q8_0(acts[t].qs, acts[t].d, &mut yd[r.clone()], &mut ys[r.clone()], &mut yi[r]);
                    }
                    let bacts: Vec<batched::BatchAct> = (0..n)
                        .map(|t| batched::BatchAct {
                            qs: acts[t].qs,
                            yd: &yd[t * ns..(t + 1) * ns],
                            ys: &ys[t * ns..(t + 1) * ns],
                            yi: &yi[t * ns..(t + 1) * ns],
                        })
                        .collect();
                    batched::matmul(w, &bacts, pool, outp);
                    return;
                }
                let tile = q8_0::token_tile(isa);
                // AVX-512 decode works on four rows at a time: chunks start on multiples of 4.
                let align = if isa == Isa::Avx512 { 4 } else { 1 };
                run_tiles(pool, rows, n, row_bytes, align, tile, |r, t| {
                    q8_0::rows(isa, w, r, &acts[t.clone()], t.start, outp)
                });
            });
        }
        Format::F16 | Format::F32 => {
            if dense::batched::applies(isa, w, n) {
                dense::batched::matmul(w, x, n, &Epilogue::default(), pool, outp);
                return Ok(());
            }
            let (ra, tile) = dense::tiles(isa, w.format(), n);
            let xs: Vec<&[f32]> = x.chunks_exact(cols).collect();
            run_tiles(pool, rows, n, row_bytes, ra, tile, |r, t| dense::rows(isa, w, r, &xs[t.clone()], t.start, outp));
        }
    }
    Ok(())
}

/// # Safety
/// `t` must be < the number of tokens the buffers were carved for, and no other live reference
/// may cover token `t`'s ranges.
#[allow(clippy::mut_from_ref)]
unsafe fn token_slices_q8k<'a>(
    qs: *mut i8,
    d: *mut f32,
    bs: *mut i16,
    t: usize,
    cols: usize,
    nb: usize,
) -> (&'a mut [i8], &'a mut [f32], &'a mut [i16]) {
    (
        std::slice::from_raw_parts_mut(qs.add(t * cols), cols),
        std::slice::from_raw_parts_mut(d.add(t * nb), nb),
        std::slice::from_raw_parts_mut(bs.add(t * nb * 16), nb * 16),
    )
}

/// Quantizes each token's row; over the pool when there are several tokens.
fn quantize_tokens(pool: &pool::Pool, x: &[f32], n: usize, cols: usize, q: impl Fn(usize, &[f32]) + Sync) {
    if n < 4 || pool.n_threads() == 1 {
        for t in 0..n {
            q(t, &x[t * cols..(t + 1) * cols]);
        }
        return;
    }
    let threads = pool.n_threads();
    pool.run(|tid| {
        for t in pool::split(n, threads, tid, 1) {
            q(t, &x[t * cols..(t + 1) * cols]);
        }
    });
}

/// Horizontal helpers shared by the x86 kernels.
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86util {
    use std::arch::x86_64::*;

    #[inline(always)]
    pub unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    #[inline(always)]
    pub unsafe fn hsum128(s: __m128) -> f32 {
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    /// f16 bits to f32 with F16C.
    #[inline(always)]
    pub unsafe fn f16_to_f32(bits: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}
