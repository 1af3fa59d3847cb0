//! Batched (prefill) dense path, AVX-512: blocks of up to 8 x 32 weight rows x 256 columns are
//! widened to f32 and transposed into per-thread panels `[k][32 rows]` (kept in L2), then every
//! token tile of 12 passes over all panels of the block and accumulates
//! `acc[rows] += W[k][rows] * x[t][k]` (rows in the 16 lanes, x broadcast): 24 FMAs per 14
//! loads, the shape of a GEMM micro-kernel. The activations are packed once per product, each
//! token tile's 256-column chunk side by side, so that every block reads them in place. Used
//! from [`BATCH_MIN`] tokens on, and for any token count on weights laid out as panels once at
//! load (`to_panels`, the encoders' f32 weights), which it reads in place. The last column
//! chunk's tiles store their sums from the registers through the product's [`Epilogue`].

use super::super::{pool, Epilogue};
use super::*;

/// Token count from which this path is used (overridable with `ZIYA_KERNELS_DENSE_BATCH_MIN`).
pub fn threshold() -> usize {
    static T: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        std::env::var("ZIYA_KERNELS_DENSE_BATCH_MIN").ok().and_then(|s| s.parse().ok()).unwrap_or(BATCH_MIN)
    })
}

/// A weight laid out as panels ([`to_panels`]) takes this path for any token count.
pub fn applies(isa: Isa, w: &CpuWeight, n: usize) -> bool {
    isa == Isa::Avx512 && matches!(w.format(), Format::F16 | Format::F32) && (n >= threshold() || w.is_panels())
}

/// `w` (f32, by rows) laid out as this kernel's panels, which it then reads in place instead
/// of widening and transposing every block of 32 rows x 256 columns into L2 per product (6 %
/// of the medium image step, and its prefetches 3 %): for each group of 32 rows (missing rows
/// zero), each column as one 32-float vector, columns in order, so that a block's 256-column
/// chunk is the 32 KB panel `pack` would have written. None for other formats or a weight
/// already in panels. For weights that only ever meet batches (the encoders'): the
/// one-token kernels cannot read this layout.
pub fn to_panels(w: &CpuWeight, pool: &pool::Pool) -> Option<CpuWeight> {
    if w.format() != Format::F32 || w.is_panels() {
        return None;
    }
    let (rows, cols) = (w.rows(), w.cols());
    let groups = rows.div_ceil(GR);
    let mut bytes = super::super::formats::AlignedBytes::zeroed(groups * cols * GR * 4);
    let dst = SendPtr(bytes.as_mut_slice().as_mut_ptr() as *mut f32);
    let src = w.bytes();
    let slabs = pool::Slabs::new(groups, pool.n_threads(), 1, 1);
    pool.run(|tid| {
        slabs.for_each(tid, |gr| {
            for g in gr {
                for j in 0..GR.min(rows - g * GR) {
                    let row = &src[(g * GR + j) * cols * 4..(g * GR + j + 1) * cols * 4];
                    for (c, v) in row.chunks_exact(4).enumerate() {
                        let v = f32::from_le_bytes([v[0], v[1], v[2], v[3]]);
                        // SAFETY: (g * cols + c) * GR + j < groups * cols * GR, the buffer's
                        // length in floats; each group is written by the one thread that
                        // claims it.
                        unsafe { *dst.ptr().add((g * cols + c) * GR + j) = v };
                    }
                }
            }
        })
    });
    Some(CpuWeight::from_panels(rows, cols, bytes))
}

/// `out = epi(x Wᵀ)`: the epilogue (bias, GELU, residual) is applied as each tile is stored.
pub(crate) fn matmul(w: &CpuWeight, x: &[f32], n: usize, epi: &Epilogue, pool: &pool::Pool, out: SendPtr<f32>) {
    assert_eq!(x.len(), n * w.cols());
    assert!(epi.bias.is_none_or(|b| b.len() == w.rows()), "bias length differs from the rows");
    assert!(epi.residual.is_none_or(|r| r.len() == n * w.rows()), "residual length differs from the output's");
    let store = Store {
        out: out.0,
        rows: w.rows(),
        bias: epi.bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
        gelu: epi.gelu,
        residual: epi.residual.map_or(std::ptr::null(), <[f32]>::as_ptr),
    };
    PACKED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            matmul_packed(w, x, n, store, pool, &mut buf);
            // Kept for the next product unless it is big (a 13B prefill chunk's MLP input).
            if buf.len() > KEEP_PACKED {
                *buf = Vec::new();
            }
        }
        // A product inside a product on this thread (not done today) packs into its own.
        Err(_) => matmul_packed(w, x, n, store, pool, &mut Vec::new()),
    })
}

/// Floats of packed activations a thread keeps between products (8 MB: ViT-g's largest).
const KEEP_PACKED: usize = 2 << 20;

thread_local! {
    /// The calling thread's packed activations, reused: allocating and faulting in a fresh
    /// buffer per product showed up as page clearing in the image step's profile.
    static PACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where a product's results go (n x `rows`) and what is done to them on the way: the
/// [`Epilogue`] as raw pointers (null for no bias, no residual), shared by the workers.
#[derive(Clone, Copy)]
struct Store {
    out: *mut f32,
    rows: usize,
    bias: *const f32,
    gelu: bool,
    residual: *const f32,
}

// SAFETY: the workers write disjoint parts of `out` (each row group of each token belongs to
// the one block that claims it) and only read `bias` and `residual`, which outlive the run.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

fn matmul_packed(w: &CpuWeight, x: &[f32], n: usize, store: Store, pool: &pool::Pool, packed: &mut Vec<f32>) {
    pack_tokens(x, n, w.cols(), pool, packed);
    let xp = SendPtr(packed.as_mut_ptr());
    let groups = w.rows().div_ceil(GR);
    let threads = pool.n_threads();
    let per = groups.div_ceil(threads);
    // Up to MB groups per claimed chunk, and at least two chunks per thread so that a
    // thread slowed by another process can be helped out; the chunks shrink toward the end
    // of each slab, so the thread that runs out first waits for a small one.
    let slabs = pool::Slabs::guided(groups, threads, per.div_ceil(2).clamp(1, MB), 1);
    pool.run(|tid| {
        slabs.for_each(tid, |gr| {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `applies` requires Isa::Avx512 (checked available by the driver);
            // `xp` holds the n tokens packed by `pack_tokens` for w.cols() columns; out (and
            // the residual) cover n x rows, the bias rows (driver, asserted in `matmul`); gr
            // holds at most MB groups (the chunk size).
            unsafe {
                x86b::block(w, gr.start * GR, gr.len(), xp, n, &store)
            };
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (gr, &xp, n, &store);
                unreachable!("dense batched path is x86-64 only");
            }
        })
    });
}

/// Offset of token tile `ti`'s chunk `ci` in the packed activations of a product with
/// `chunks` column chunks: each (tile, chunk) holds NT rows of KC floats.
#[inline(always)]
fn packed_at(ti: usize, ci: usize, chunks: usize) -> usize {
    (ti * chunks + ci) * NT * KC
}

/// `x` (n x cols) rearranged into `packed` so that a token tile's chunk is NT x KC
/// contiguous floats: read in place, rows 5120 or 6144 floats apart fall on the same L1
/// sets, and copying them per block cost a tenth of the ViT-g image step. Padding (the last
/// tile's missing tokens, the last chunk's missing columns) is never read: a tile of m
/// tokens reads m rows, a chunk of kc columns kc values. Split over the pool by token tiles.
fn pack_tokens(x: &[f32], n: usize, cols: usize, pool: &pool::Pool, packed: &mut Vec<f32>) {
    let chunks = cols.div_ceil(KC);
    let tiles = n.div_ceil(NT);
    let len = tiles * chunks * NT * KC;
    if packed.len() < len {
        packed.resize(len, 0.0);
    }
    let dst = SendPtr(packed.as_mut_ptr());
    let slabs = pool::Slabs::new(tiles, pool.n_threads(), 1, 1);
    pool.run(|tid| {
        slabs.for_each(tid, |tr| {
            for ti in tr {
                for i in 0..NT.min(n - ti * NT) {
                    let row = &x[(ti * NT + i) * cols..(ti * NT + i + 1) * cols];
                    for (ci, part) in row.chunks(KC).enumerate() {
                        let at = packed_at(ti, ci, chunks) + i * KC;
                        // SAFETY: each (tile, chunk, token) range lies inside `packed`
                        // (tiles x chunks x NT x KC floats, part.len() <= KC) and belongs
                        // to this tile alone, which one thread claims.
                        unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), dst.ptr().add(at), part.len()) };
                    }
                }
            }
        })
    });
}

/// Rows per register tile (two 16-lane vectors).
const GR: usize = 32;
/// Columns per packed panel: a 32 x 256 f32 panel is 32 KB.
const KC: usize = 256;
/// Row groups per block: MB panels (256 KB) stay in L2 while every token tile passes over
/// them, so each token tile's activations (6 x KC, from L1) are reused by MB x 32 rows
/// instead of 32 — the activations of long prompts no longer stream from L3 per 32 rows.
const MB: usize = 8;
/// Tokens per register tile (12 x 2 accumulators, 2 weight vectors, a broadcast: 27 of the
/// 32 zmm registers).
const NT: usize = 12;

/// `$f::<m>(..)` for a token tile of `m` <= NT tokens (NT only but at the end).
#[cfg(target_arch = "x86_64")]
macro_rules! dispatch_tile {
    ($n:expr, $f:ident, $($args:expr),*) => {
        match $n {
            12 => $f::<12>($($args),*),
            11 => $f::<11>($($args),*),
            10 => $f::<10>($($args),*),
            9 => $f::<9>($($args),*),
            8 => $f::<8>($($args),*),
            7 => $f::<7>($($args),*),
            6 => $f::<6>($($args),*),
            5 => $f::<5>($($args),*),
            4 => $f::<4>($($args),*),
            3 => $f::<3>($($args),*),
            2 => $f::<2>($($args),*),
            1 => $f::<1>($($args),*),
            _ => unreachable!("token tiles hold 1 to NT = 12 tokens"),
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86b {
    use super::*;
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct Z([f32; 16]);

    thread_local! {
        static SCRATCH: RefCell<Scratch> = const {
            RefCell::new(Scratch { pack: Vec::new(), acc: Vec::new() })
        };
    }

    /// A thread's working memory, reused across calls: the block's packed panels and its
    /// accumulators for all tokens.
    struct Scratch {
        pack: Vec<Z>,
        acc: Vec<Z>,
    }

    /// 16x16 transpose of f32 (see batched::x86::transpose16 for the derivation); also the
    /// encoders' attention's, for their keys.
    #[inline(always)]
    pub(crate) unsafe fn transpose16(r: &mut [__m512; 16]) {
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        for i in 0..4 {
            r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 2])));
            r[4 * i + 1] =
                _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 2])));
            r[4 * i + 2] =
                _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3])));
            r[4 * i + 3] =
                _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3])));
        }
        for i in 0..2 {
            for j in 0..4 {
                t[8 * i + j] = _mm512_shuffle_f32x4::<0x88>(r[8 * i + j], r[8 * i + j + 4]);
                t[8 * i + j + 4] = _mm512_shuffle_f32x4::<0xdd>(r[8 * i + j], r[8 * i + j + 4]);
            }
        }
        for j in 0..8 {
            r[j] = _mm512_shuffle_f32x4::<0x88>(t[j], t[j + 8]);
            r[j + 8] = _mm512_shuffle_f32x4::<0xdd>(t[j], t[j + 8]);
        }
    }

    /// Packs rows r0..r0+32 (missing rows zero), columns c0..c0+kc, into `p[k * 2 + half]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn pack(w: &CpuWeight, r0: usize, c0: usize, kc: usize, p: &mut [Z]) {
        let rows = w.rows();
        let base = w.bytes().as_ptr();
        let rb = w.row_bytes();
        let f16w = w.format() == Format::F16;
        for half in 0..2 {
            let mut kb = 0;
            while kb < kc {
                let width = (kc - kb).min(16);
                let mask: u16 = if width == 16 { 0xFFFF } else { (1u16 << width) - 1 };
                let mut r = [_mm512_setzero_ps(); 16];
                for (i, ri) in r.iter_mut().enumerate() {
                    let row = r0 + half * 16 + i;
                    if row >= rows {
                        continue;
                    }
                    let rp = base.add(row * rb);
                    *ri = if f16w {
                        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, rp.add(2 * (c0 + kb)) as *const i16))
                    } else {
                        _mm512_maskz_loadu_ps(mask, rp.add(4 * (c0 + kb)) as *const f32)
                    };
                }
                transpose16(&mut r);
                for (j, rj) in r.iter().enumerate().take(width) {
                    _mm512_store_ps(p[(kb + j) * 2 + half].0.as_mut_ptr(), *rj);
                }
                kb += 16;
            }
        }
    }

    /// The accumulators of a tile over one column chunk, or of the last chunk's tile: then
    /// its results go to `out` (tokens `t0 ..`, rows `rg .. rg + 32`), through the epilogue.
    #[derive(Clone, Copy)]
    enum Dest<'a> {
        Acc,
        Out { store: &'a Store, t0: usize, rg: usize },
    }

    /// `acc` (+)= the token tile `xp` times the panel `p` over `kc` columns; `first`: the
    /// accumulators start from zero; `dest`: where the sums go.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn tile<const N: usize>(p: *const Z, kc: usize, xp: [*const f32; N], acc: *mut Z, first: bool, dest: Dest) {
        // The first column chunk starts from zero: the accumulators need no clearing.
        let load = |i: usize| if first { _mm512_setzero_ps() } else { _mm512_load_ps((*acc.add(i)).0.as_ptr()) };
        let mut a0: [__m512; N] = std::array::from_fn(|t| load(2 * t));
        let mut a1: [__m512; N] = std::array::from_fn(|t| load(2 * t + 1));
        for k in 0..kc {
            let w0 = _mm512_load_ps((*p.add(2 * k)).0.as_ptr());
            let w1 = _mm512_load_ps((*p.add(2 * k + 1)).0.as_ptr());
            for t in 0..N {
                let xb = _mm512_set1_ps(*xp[t].add(k));
                a0[t] = _mm512_fmadd_ps(w0, xb, a0[t]);
                a1[t] = _mm512_fmadd_ps(w1, xb, a1[t]);
            }
        }
        match dest {
            Dest::Acc => {
                for t in 0..N {
                    _mm512_store_ps((*acc.add(2 * t)).0.as_mut_ptr(), a0[t]);
                    _mm512_store_ps((*acc.add(2 * t + 1)).0.as_mut_ptr(), a1[t]);
                }
            }
            Dest::Out { store, t0, rg } => store_tile(store, t0, rg, &a0, &a1),
        }
    }

    /// The sums of rows `rg .. rg + 32` (fewer at the last group: masked) for tokens `t0 ..
    /// t0 + N`, through the epilogue into `out`: straight from the registers, where copying
    /// them out of the accumulators afterwards was 3.6 % of the ViT-g image step, and the
    /// GELU and the residual while the values are in L1.
    #[inline(always)]
    unsafe fn store_tile<const N: usize>(s: &Store, t0: usize, rg: usize, a0: &[__m512; N], a1: &[__m512; N]) {
        let valid = (s.rows - rg).min(GR);
        let mask = |lanes: usize| -> u16 {
            if lanes >= 16 {
                0xFFFF
            } else {
                (1u16 << lanes) - 1
            }
        };
        let (m0, m1) = (mask(valid), mask(valid.saturating_sub(16)));
        let bias = (!s.bias.is_null())
            .then(|| (_mm512_maskz_loadu_ps(m0, s.bias.add(rg)), _mm512_maskz_loadu_ps(m1, s.bias.add(rg + 16))));
        for t in 0..N {
            let at = (t0 + t) * s.rows + rg;
            let dst = s.out.add(at);
            let (mut v0, mut v1) = (a0[t], a1[t]);
            if let Some((b0, b1)) = bias {
                v0 = _mm512_add_ps(v0, b0);
                v1 = _mm512_add_ps(v1, b1);
            }
            if s.gelu {
                // The scalar GELU, vectorised here: the same bits as the GELU op's.
                let mut buf = [Z([0.0; 16]); 2];
                _mm512_store_ps(buf[0].0.as_mut_ptr(), v0);
                _mm512_store_ps(buf[1].0.as_mut_ptr(), v1);
                let vals = std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut f32, GR);
                super::super::super::activation::gelu_in_place(vals);
                v0 = _mm512_load_ps(buf[0].0.as_ptr());
                v1 = _mm512_load_ps(buf[1].0.as_ptr());
            }
            if !s.residual.is_null() {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, s.residual.add(at)));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, s.residual.add(at + 16)));
            }
            _mm512_mask_storeu_ps(dst, m0, v0);
            _mm512_mask_storeu_ps(dst.add(16), m1, v1);
        }
    }

    /// Weight lines still to prefetch: `left` lines from row start `at`, `off` bytes in.
    /// `at` is formed with `wrapping_add`: after the last block the "next block" starts past
    /// the last row (nothing is then prefetched, `left` is 0), and `add` beyond the
    /// allocation would be undefined behaviour even unused. Every line prefetched starts
    /// inside the weight's bytes (a prefetch would not fault anyway).
    struct Prefetch {
        left: usize,
        at: *const u8,
        off: usize,
        line_bytes: usize,
        row_bytes: usize,
    }

    impl Prefetch {
        /// Prefetches the next `count` lines into L2 (counters, not a division per line).
        #[inline(always)]
        unsafe fn issue(&mut self, count: usize) {
            for _ in 0..count.min(self.left) {
                _mm_prefetch::<_MM_HINT_T1>(self.at.wrapping_add(self.off) as *const i8);
                self.off += 64;
                if self.off >= self.line_bytes {
                    self.off = 0;
                    self.at = self.at.wrapping_add(self.row_bytes);
                }
            }
            self.left -= count.min(self.left);
        }
    }

    /// Runs the `N`-token tile (tokens from `t0`) over every panel of the block (group g's
    /// at `p + g * gstride`, rows from `r0 + 32 g`), prefetching `per_panel` lines of the
    /// next weights after each; `last`: the last column chunk, whose sums go to the output.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tiles<const N: usize>(
        (p, gstride): (*const Z, usize),
        kc: usize,
        xp: [*const f32; N],
        acc: *mut Z,
        (ng, n): (usize, usize),
        pf: &mut Prefetch,
        per_panel: usize,
        (first, last): (bool, bool),
        (store, t0, r0): (&Store, usize, usize),
    ) {
        for g in 0..ng {
            let dest = if last { Dest::Out { store, t0, rg: r0 + g * GR } } else { Dest::Acc };
            tile::<N>(p.add(g * gstride), kc, xp, acc.add(g * 2 * n), first, dest);
            pf.issue(per_panel);
        }
    }

    /// `out` for rows `r0 .. r0 + 32 * ng` (`ng` <= MB) and all `n` tokens, whose
    /// activations `xp` are packed by `pack_tokens`.
    pub(super) unsafe fn block(w: &CpuWeight, r0: usize, ng: usize, xp: SendPtr<f32>, n: usize, store: &Store) {
        let cols = w.cols();
        let rows = w.rows();
        SCRATCH.with(|scratch| {
            let Scratch { pack: p, acc } = &mut *scratch.borrow_mut();
            if p.len() < 2 * KC * MB {
                p.resize(2 * KC * MB, Z([0.0; 16]));
            }
            // acc[(g * n + t) * 2 + half]: group g's 32 rows for token t (set by the first
            // column chunk, so not cleared here; the last one writes the output instead).
            if acc.len() < 2 * n * ng {
                acc.resize(2 * n * ng, Z([0.0; 16]));
            }
            let chunks = cols.div_ceil(KC);
            let elem = w.format().row_bytes(1); // bytes per weight (f16 or f32)
            let panels = w.is_panels();
            let mut c0 = 0;
            while c0 < cols {
                let kc = (cols - c0).min(KC);
                // Group g's panel of this chunk: in the weight itself when it is laid out
                // as panels (32 floats, two Z, per column), else packed here.
                let panel = if panels {
                    ((w.bytes().as_ptr() as *const Z).add(((r0 / GR) * cols + c0) * 2), cols * 2)
                } else {
                    for g in 0..ng {
                        pack(w, r0 + g * GR, c0, kc, &mut p[g * 2 * KC..(g + 1) * 2 * KC]);
                    }
                    (p.as_ptr(), 2 * KC)
                };
                // The weights the next chunk reads (the next columns of this block,
                // or the first of the next block, which this thread most likely
                // claims next) are prefetched into L2 while the tiles run, spread
                // over the token tiles: packing (or the tiles, reading panels in
                // place) then read L2, not memory.
                let (nr0, nc0) = if c0 + kc < cols { (r0, c0 + kc) } else { (r0 + ng * GR, 0) };
                let next_kc = (cols - nc0).min(KC);
                // What the next chunk reads, as "units" (rows of the weight, or groups of
                // its panels) of `line_bytes` each, `unit_stride` apart.
                let (units, line_bytes, start, unit_stride) = if panels {
                    let groups = rows.div_ceil(GR);
                    let ng_next = groups.saturating_sub(nr0 / GR).min(ng);
                    (ng_next, next_kc * GR * 4, ((nr0 / GR) * cols + nc0) * GR * 4, cols * GR * 4)
                } else {
                    let nrows = rows.saturating_sub(nr0).min(ng * GR);
                    (nrows, next_kc * elem, nr0 * w.row_bytes() + nc0 * elem, w.row_bytes())
                };
                let lines_per_unit = line_bytes.div_ceil(64);
                let lines = units * lines_per_unit;
                // Spread over the token tiles and, within a tile, over its panels:
                // a burst of prefetches fills the line-fill buffers and stalls.
                let per_panel = lines.div_ceil(n.div_ceil(NT) * ng);
                let mut pf = Prefetch {
                    left: lines,
                    at: w.bytes().as_ptr().wrapping_add(start),
                    off: 0,
                    line_bytes: lines_per_unit * 64,
                    row_bytes: unit_stride,
                };
                let mut t = 0;
                while t < n {
                    let m = (n - t).min(NT);
                    let accp = acc.as_mut_ptr().add(2 * t);
                    let xb = xp.0.add(packed_at(t / NT, c0 / KC, chunks)) as *const f32;
                    let xt = |i: usize| xb.add(i * KC);
                    let (first, last) = (c0 == 0, c0 + kc == cols);
                    dispatch_tile!(
                        m,
                        tiles,
                        panel,
                        kc,
                        std::array::from_fn(xt),
                        accp,
                        (ng, n),
                        &mut pf,
                        per_panel,
                        (first, last),
                        (store, t, r0)
                    );
                    t += m;
                }
                c0 += kc;
            }
        });
    }
}
