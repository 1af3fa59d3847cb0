#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

//! Batched (prefill) path for quantized weights, AVX-512 VNNI.
//!
//! For many tokens the per-row dot-product kernels spend most of their work applying per
//! sub-block scales inside each dot product. Here, a group of 16 weight rows is unpacked, one
//! 256-column chunk at a time, into a small per-thread scratch tile in VNNI layout
//! (`[k/4][16 rows][4 bytes]`, unsigned bytes) with per-(sub-block, row) float scales; the tile is
//! then used for every token: one `vpdpbusd` multiplies 16 rows x 4 columns by 4 broadcast
//! activation bytes, and scales apply as 16-lane vectors. The weights themselves are not copied:
//! the scratch tile is a few KB, rebuilt per chunk and reused for all tokens (so the unpacking
//! cost is divided by the token count).
//!
//! Per sub-block `s` (32 values for q4_K/q8_0, 16 for q6_K), row `r`, token `t`:
//! * q4_K: `acc += yd_t * ((d sc)_r * dot(u, y) - (dmin m)_r * ysum_t)`
//! * q6_K: `acc += (d sc)_r * yd_t * (dot(u, y) - 32 * ysum_t)` (u = q + 32, unsigned)
//! * q8_0: `acc += dw_r * yd_t * (dot(u, y) - 128 * ysum_t)` (u = q + 128, unsigned)
//!
//! with the integer parts exact, as in ggml.

use std::cell::RefCell;

use super::formats::{unpack_q4k_scales, CpuWeight, Format, QK8_0, QK_K};
use super::pool::{self, SendPtr};

/// Rows per group (the lanes of one zmm).
pub const GROUP: usize = 16;
/// Columns per scratch chunk.
pub const CHUNK: usize = 256;
/// Token tile held in registers.
const MT: usize = 8;

/// Per-token activation data for the batched kernels (one entry per token).
#[derive(Clone, Copy)]
pub struct BatchAct<'a> {
    /// Quantized values (natural order), `cols` bytes.
    pub qs: &'a [i8],
    /// Per sub-block: the activation scale `yd`.
    pub yd: &'a [f32],
    /// Per sub-block (q4_K): `sum(y)` (the integer sum as f32).
    pub ys: &'a [f32],
    /// Per sub-block (q6_K, q8_0): `offset * sum(y)` (exact integer).
    pub yi: &'a [i32],
}

/// Values per sub-block for a format.
pub fn sub_size(f: Format) -> usize {
    match f {
        Format::Q6K => 16,
        _ => 32,
    }
}

#[repr(C, align(64))]
struct Tile {
    /// `[CHUNK/4][GROUP][4]` unsigned values.
    qs: [u8; CHUNK * GROUP],
    /// `[sub][GROUP]` row scales.
    s: [f32; (CHUNK / 16) * GROUP],
    /// `[sub][GROUP]` q4_K min coefficients.
    m: [f32; (CHUNK / 16) * GROUP],
}

thread_local! {
    static TILE: RefCell<Option<Box<Tile>>> = const { RefCell::new(None) };
    static ACC: RefCell<Vec<Acc>> = const { RefCell::new(Vec::new()) };
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Acc([f32; GROUP]);

/// Whether the batched path handles this weight / token count on this ISA.
pub fn applies(isa: super::Isa, w: &CpuWeight, n: usize) -> bool {
    isa == super::Isa::Avx512 && w.format().is_quantized() && n >= threshold(w.format())
}

/// Token count from which the batched path beats the per-row kernels.
pub fn threshold(_f: Format) -> usize {
    static T: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *T.get_or_init(|| std::env::var("ZIYA_KERNELS_BATCH_MIN").ok().and_then(|s| s.parse().ok()).unwrap_or(12))
}

/// `out[t * rows + r]` for all rows and `acts.len()` tokens, over the pool.
pub(crate) fn matmul(w: &CpuWeight, acts: &[BatchAct], pool: &pool::Pool, out: SendPtr<f32>) {
    let rows = w.rows();
    let groups = rows.div_ceil(GROUP);
    let threads = pool.n_threads();
    // a few groups per claim; each thread starts in its own contiguous slab
    let per = groups.div_ceil(threads);
    let slabs = pool::Slabs::new(groups, threads, per.clamp(1, 4), 1);
    pool.run(|tid| {
        slabs.for_each(tid, |gr| {
            for g in gr {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `applies` requires Isa::Avx512, which the driver checked is available.
                unsafe {
                    x86::group(w, g * GROUP, acts, out)
                };
                #[cfg(not(target_arch = "x86_64"))]
                {
                    let _ = (g, acts, out);
                    unreachable!("batched path is x86-64 only");
                }
            }
        })
    });
}

/// Builds the per-sub-block activation arrays from q8_K activations (q4_K / q6_K weights).
pub fn prep_q8k(f: Format, d: &[f32], bsums: &[i16], yd: &mut [f32], ys: &mut [f32], yi: &mut [i32]) {
    match f {
        Format::Q4K => {
            for s in 0..yd.len() {
                let dd = d[s / 8];
                let sum = bsums[2 * s] as i32 + bsums[2 * s + 1] as i32;
                yd[s] = dd;
                ys[s] = sum as f32;
                yi[s] = 0;
            }
        }
        Format::Q6K => {
            for s in 0..yd.len() {
                yd[s] = d[s / 16];
                ys[s] = 0.0;
                yi[s] = 32 * bsums[s] as i32;
            }
        }
        _ => unreachable!(),
    }
}

/// Per-sub-block arrays from q8_0 activations.
pub fn prep_q8_0(qs: &[i8], d: &[f32], yd: &mut [f32], ys: &mut [f32], yi: &mut [i32]) {
    for s in 0..yd.len() {
        yd[s] = d[s];
        ys[s] = 0.0;
        yi[s] = 128 * qs[s * QK8_0..(s + 1) * QK8_0].iter().map(|&v| v as i32).sum::<i32>();
    }
}

/// Unpacks a q6_K block into its 256 unsigned values (0..=63), natural order.
#[inline(always)]
fn q6k_values(blk: &[u8]) -> [u8; QK_K] {
    super::q6k::unpack_q6k(blk)
}

/// Fills `tile` with rows `r0..r0 + GROUP` (missing rows zero) for columns
/// `c0..c0 + ck` (portable reference; the AVX-512 path uses `x86::pack`).
fn pack_scalar(w: &CpuWeight, r0: usize, c0: usize, ck: usize, tile: &mut Tile) {
    let rows = w.rows();
    let sub = sub_size(w.format());
    let nsub = ck / sub;
    let mut vals = [0u8; CHUNK];
    for i in 0..GROUP {
        let r = r0 + i;
        if r >= rows {
            for s in 0..nsub {
                tile.s[s * GROUP + i] = 0.0;
                tile.m[s * GROUP + i] = 0.0;
            }
            for g in 0..ck / 4 {
                tile.qs[(g * GROUP + i) * 4..(g * GROUP + i) * 4 + 4].fill(0);
            }
            continue;
        }
        let row = w.row(r);
        match w.format() {
            Format::Q4K => {
                let blk = &row[(c0 / QK_K) * 144..(c0 / QK_K + 1) * 144];
                let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                let dmin = half::f16::from_le_bytes([blk[2], blk[3]]).to_f32();
                let sm = unpack_q4k_scales(blk[4..16].try_into().unwrap());
                for s in 0..8 {
                    tile.s[s * GROUP + i] = d * sm[s] as f32;
                    tile.m[s * GROUP + i] = dmin * sm[8 + s] as f32;
                }
                let qs = &blk[16..144];
                for j in 0..4 {
                    for l in 0..32 {
                        let q = qs[32 * j + l];
                        vals[64 * j + l] = q & 0xF;
                        vals[64 * j + 32 + l] = q >> 4;
                    }
                }
            }
            Format::Q6K => {
                let blk = &row[(c0 / QK_K) * 210..(c0 / QK_K + 1) * 210];
                let d = half::f16::from_le_bytes([blk[208], blk[209]]).to_f32();
                for s in 0..16 {
                    tile.s[s * GROUP + i] = d * blk[192 + s] as i8 as f32;
                    tile.m[s * GROUP + i] = 0.0;
                }
                vals = q6k_values(blk);
            }
            Format::Q8_0 => {
                for s in 0..nsub {
                    let b = c0 / QK8_0 + s;
                    let blk = &row[b * 34..(b + 1) * 34];
                    tile.s[s * GROUP + i] = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    tile.m[s * GROUP + i] = 0.0;
                    for l in 0..QK8_0 {
                        vals[s * QK8_0 + l] = (blk[2 + l] as i8 as i16 + 128) as u8;
                    }
                }
            }
            _ => unreachable!(),
        }
        // transpose into [k/4][row][4]
        for g in 0..ck / 4 {
            let o = (g * GROUP + i) * 4;
            tile.qs[o..o + 4].copy_from_slice(&vals[4 * g..4 * g + 4]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// One group of 16 rows for all tokens.
    pub unsafe fn group(w: &CpuWeight, r0: usize, acts: &[BatchAct], out: SendPtr<f32>) {
        let n = acts.len();
        let cols = w.cols();
        let rows = w.rows();
        let sub = sub_size(w.format());
        TILE.with(|tc| {
            ACC.with(|ac| {
                let mut tc = tc.borrow_mut();
                let tile = tc.get_or_insert_with(|| {
                    // SAFETY: Tile is plain bytes/floats; zeroed is a valid value.
                    unsafe { Box::new(std::mem::zeroed()) }
                });
                let mut acc = ac.borrow_mut();
                acc.clear();
                acc.resize(n, Acc([0.0; GROUP]));
                let mut c0 = 0;
                while c0 < cols {
                    let ck = (cols - c0).min(CHUNK);
                    if ck.is_multiple_of(64) {
                        pack(w, r0, c0, ck, &mut *tile);
                    } else {
                        pack_scalar(w, r0, c0, ck, tile);
                    }
                    let s0 = c0 / sub;
                    let nsub = ck / sub;
                    let mut t = 0;
                    while t < n {
                        let k = (n - t).min(MT);
                        let a = &acts[t..t + k];
                        let accp = acc[t..t + k].as_mut_ptr();
                        if w.format() == Format::Q6K {
                            dispatch_n!(k, tile_k4, tile, a, c0, s0, nsub, accp);
                        } else if w.format() == Format::Q4K {
                            dispatch_n!(k, tile_k8_mins, tile, a, c0, s0, nsub, accp);
                        } else {
                            dispatch_n!(k, tile_k8_off, tile, a, c0, s0, nsub, accp);
                        }
                        t += k;
                    }
                    c0 += ck;
                }
                let valid = (rows - r0).min(GROUP);
                for (t, a) in acc.iter().enumerate() {
                    std::ptr::copy_nonoverlapping(a.0.as_ptr(), out.0.add(t * rows + r0), valid);
                }
            })
        });
    }

    /// Row scales into the tile (scalar: 8-16 values per row).
    #[inline(always)]
    fn scales(w: &CpuWeight, row: &[u8], i: usize, c0: usize, ck: usize, tile: &mut Tile) {
        match w.format() {
            Format::Q4K => {
                let blk = &row[(c0 / QK_K) * 144..];
                let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                let dmin = half::f16::from_le_bytes([blk[2], blk[3]]).to_f32();
                let sm = unpack_q4k_scales(blk[4..16].try_into().unwrap());
                for s in 0..8 {
                    tile.s[s * GROUP + i] = d * sm[s] as f32;
                    tile.m[s * GROUP + i] = dmin * sm[8 + s] as f32;
                }
            }
            Format::Q6K => {
                let blk = &row[(c0 / QK_K) * 210..];
                let d = half::f16::from_le_bytes([blk[208], blk[209]]).to_f32();
                for s in 0..16 {
                    tile.s[s * GROUP + i] = d * blk[192 + s] as i8 as f32;
                }
            }
            _ => {
                for s in 0..ck / QK8_0 {
                    let b = (c0 / QK8_0 + s) * 34;
                    tile.s[s * GROUP + i] = half::f16::from_le_bytes([row[b], row[b + 1]]).to_f32();
                }
            }
        }
    }

    /// The 64 unsigned values of columns `c0 + 64c .. c0 + 64c + 64` of one row, natural order.
    #[inline(always)]
    unsafe fn values64(f: Format, row: *const u8, c0: usize, c: usize) -> __m512i {
        let m4 = _mm512_set1_epi8(0x0F);
        match f {
            Format::Q4K => {
                // chunk c of the block: low nibbles are values 64c..+32, high nibbles 64c+32..+64
                let blk = row.add((c0 / QK_K) * 144);
                let raw = _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(16 + 32 * c) as *const __m256i));
                let shift = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(4));
                _mm512_and_si512(_mm512_srlv_epi16(raw, shift), m4)
            }
            Format::Q6K => {
                let blk = row.add((c0 / QK_K) * 210);
                let h = c / 2;
                let ql = _mm512_loadu_si512(blk.add(64 * h) as *const _);
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(128 + 32 * h) as *const __m256i));
                let m3 = _mm512_set1_epi8(0x03);
                if c.is_multiple_of(2) {
                    let sh = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(2));
                    _mm512_or_si512(
                        _mm512_and_si512(ql, m4),
                        _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srlv_epi16(qh, sh), m3)),
                    )
                } else {
                    let sh = _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(6));
                    _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                        _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srlv_epi16(qh, sh), m3)),
                    )
                }
            }
            _ => {
                // two q8_0 blocks, +128 as unsigned
                let b = row.add((c0 / QK8_0 + 2 * c) * 34);
                let v = _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_loadu_si256(b.add(2) as *const __m256i)),
                    _mm256_loadu_si256(b.add(36) as *const __m256i),
                );
                _mm512_xor_si512(v, _mm512_set1_epi8(-128))
            }
        }
    }

    /// 16x16 transpose of 32-bit elements: afterwards `r[c]` holds element `c` of every input.
    #[inline(always)]
    unsafe fn transpose16(r: &mut [__m512i; 16]) {
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        for i in 0..4 {
            r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
            r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
            r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
            r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
        }
        for i in 0..2 {
            for j in 0..4 {
                t[8 * i + j] = _mm512_shuffle_i32x4::<0x88>(r[8 * i + j], r[8 * i + j + 4]);
                t[8 * i + j + 4] = _mm512_shuffle_i32x4::<0xdd>(r[8 * i + j], r[8 * i + j + 4]);
            }
        }
        for j in 0..8 {
            r[j] = _mm512_shuffle_i32x4::<0x88>(t[j], t[j + 8]);
            r[j + 8] = _mm512_shuffle_i32x4::<0xdd>(t[j], t[j + 8]);
        }
    }

    /// AVX-512 version of `pack_scalar` (ck a multiple of 64).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub unsafe fn pack(w: &CpuWeight, r0: usize, c0: usize, ck: usize, tile: &mut Tile) {
        let rows = w.rows();
        let f = w.format();
        let sub = sub_size(f);
        let valid = rows.saturating_sub(r0).min(GROUP);
        for i in 0..GROUP {
            if i < valid {
                scales(w, w.row(r0 + i), i, c0, ck, tile);
            } else {
                for s in 0..ck / sub {
                    tile.s[s * GROUP + i] = 0.0;
                }
            }
        }
        if f == Format::Q4K {
            for i in 0..GROUP {
                if i >= valid {
                    for s in 0..8 {
                        tile.m[s * GROUP + i] = 0.0;
                    }
                }
            }
        }
        let base = w.bytes().as_ptr();
        let rb = w.row_bytes();
        for c in 0..ck / 64 {
            let mut r = [_mm512_setzero_si512(); 16];
            for (i, ri) in r.iter_mut().enumerate().take(valid) {
                *ri = values64(f, base.add((r0 + i) * rb), c0, c);
            }
            transpose16(&mut r);
            for (g, rg) in r.iter().enumerate() {
                _mm512_store_si512(tile.qs.as_mut_ptr().add((16 * c + g) * 64) as *mut _, *rg);
            }
        }
    }

    #[inline(always)]
    unsafe fn bcast4(p: *const i8) -> __m512i {
        _mm512_set1_epi32((p as *const i32).read_unaligned())
    }

    /// q4_K: 8 k4-groups per sub-block, float min correction. The chunk is one q8_K block, so
    /// the activation scale `yd` is applied once per chunk.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn tile_k8_mins<const N: usize>(
        tile: &Tile,
        a: &[BatchAct],
        c0: usize,
        s0: usize,
        nsub: usize,
        acc: *mut Acc,
    ) {
        let qp: [*const i8; N] = std::array::from_fn(|t| a[t].qs.as_ptr().add(c0));
        let mut bacc = [_mm512_setzero_ps(); N];
        for s in 0..nsub {
            let mut is = [_mm512_setzero_si512(); N];
            for g in 0..8 {
                let k4 = s * 8 + g;
                let wv = _mm512_load_si512(tile.qs.as_ptr().add(k4 * 64) as *const _);
                for t in 0..N {
                    is[t] = _mm512_dpbusd_epi32(is[t], wv, bcast4(qp[t].add(k4 * 4)));
                }
            }
            let sv = _mm512_load_ps(tile.s.as_ptr().add(s * GROUP));
            let mv = _mm512_load_ps(tile.m.as_ptr().add(s * GROUP));
            for t in 0..N {
                let ys = *a[t].ys.get_unchecked(s0 + s);
                bacc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[t]), sv, bacc[t]);
                bacc[t] = _mm512_fnmadd_ps(mv, _mm512_set1_ps(ys), bacc[t]);
            }
        }
        for t in 0..N {
            let p = (*acc.add(t)).0.as_mut_ptr();
            let yd = *a[t].yd.get_unchecked(s0);
            _mm512_store_ps(p, _mm512_fmadd_ps(bacc[t], _mm512_set1_ps(yd), _mm512_load_ps(p)));
        }
    }

    /// q8_0: 8 k4-groups per sub-block, exact integer offset correction.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn tile_k8_off<const N: usize>(
        tile: &Tile,
        a: &[BatchAct],
        c0: usize,
        s0: usize,
        nsub: usize,
        acc: *mut Acc,
    ) {
        let mut av: [__m512; N] = std::array::from_fn(|t| _mm512_load_ps((*acc.add(t)).0.as_ptr()));
        let qp: [*const i8; N] = std::array::from_fn(|t| a[t].qs.as_ptr().add(c0));
        for s in 0..nsub {
            let mut is = [_mm512_setzero_si512(); N];
            for g in 0..8 {
                let k4 = s * 8 + g;
                let wv = _mm512_load_si512(tile.qs.as_ptr().add(k4 * 64) as *const _);
                for t in 0..N {
                    is[t] = _mm512_dpbusd_epi32(is[t], wv, bcast4(qp[t].add(k4 * 4)));
                }
            }
            let sv = _mm512_load_ps(tile.s.as_ptr().add(s * GROUP));
            for t in 0..N {
                let yd = *a[t].yd.get_unchecked(s0 + s);
                let yi = *a[t].yi.get_unchecked(s0 + s);
                let c = _mm512_sub_epi32(is[t], _mm512_set1_epi32(yi));
                av[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), _mm512_mul_ps(sv, _mm512_set1_ps(yd)), av[t]);
            }
        }
        for t in 0..N {
            _mm512_store_ps((*acc.add(t)).0.as_mut_ptr(), av[t]);
        }
    }

    /// q6_K: 4 k4-groups per sub-block (16 values), exact integer offset correction; one q8_K
    /// block per chunk, so `yd` is applied once per chunk.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn tile_k4<const N: usize>(tile: &Tile, a: &[BatchAct], c0: usize, s0: usize, nsub: usize, acc: *mut Acc) {
        let qp: [*const i8; N] = std::array::from_fn(|t| a[t].qs.as_ptr().add(c0));
        let mut bacc = [_mm512_setzero_ps(); N];
        for s in 0..nsub {
            let mut is = [_mm512_setzero_si512(); N];
            for g in 0..4 {
                let k4 = s * 4 + g;
                let wv = _mm512_load_si512(tile.qs.as_ptr().add(k4 * 64) as *const _);
                for t in 0..N {
                    is[t] = _mm512_dpbusd_epi32(is[t], wv, bcast4(qp[t].add(k4 * 4)));
                }
            }
            let sv = _mm512_load_ps(tile.s.as_ptr().add(s * GROUP));
            for t in 0..N {
                let yi = *a[t].yi.get_unchecked(s0 + s);
                let c = _mm512_sub_epi32(is[t], _mm512_set1_epi32(yi));
                bacc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), sv, bacc[t]);
            }
        }
        for t in 0..N {
            let p = (*acc.add(t)).0.as_mut_ptr();
            let yd = *a[t].yd.get_unchecked(s0);
            _mm512_store_ps(p, _mm512_fmadd_ps(bacc[t], _mm512_set1_ps(yd), _mm512_load_ps(p)));
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn simd_pack_matches_scalar() {
        if !super::super::Isa::Avx512.is_available() {
            return;
        }
        let mut s = 7u64;
        for f in [Format::Q4K, Format::Q6K, Format::Q8_0] {
            for rows in [16usize, 21, 5] {
                let cols = 512;
                let data: Vec<f32> = (0..rows * cols)
                    .map(|_| {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        (s >> 40) as f32 / 16777216.0 - 0.5
                    })
                    .collect();
                let w = CpuWeight::from_f32(f, rows, cols, &data).unwrap();
                for r0 in (0..rows).step_by(GROUP) {
                    for c0 in [0usize, 256] {
                        let mut a: Box<Tile> = unsafe { Box::new(std::mem::zeroed()) };
                        let mut b: Box<Tile> = unsafe { Box::new(std::mem::zeroed()) };
                        pack_scalar(&w, r0, c0, CHUNK, &mut a);
                        unsafe { x86::pack(&w, r0, c0, CHUNK, &mut b) };
                        assert!(a.qs == b.qs, "{f:?} rows {rows} r0 {r0} c0 {c0} qs");
                        let ns = CHUNK / sub_size(f);
                        assert_eq!(a.s[..ns * GROUP], b.s[..ns * GROUP], "{f:?} scales");
                        if f == Format::Q4K {
                            assert_eq!(a.m[..ns * GROUP], b.m[..ns * GROUP], "{f:?} mins");
                        }
                    }
                }
            }
        }
    }
}
