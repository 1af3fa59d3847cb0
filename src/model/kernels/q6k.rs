//! q6_K weights x q8_K activations (ggml's `ggml_vec_dot_q6_K_q8_K`), rows x a token tile.
//!
//! Per block: `d * yd * (sum_g sc[g] * dot(u_g, y_g) - 32 * sum_g sc[g] * bsum_g)` with the
//! unsigned 6-bit values `u = q + 32`; the `-32` offset goes through the q8_K `bsums` (exact).

use std::ops::Range;

use super::formats::{CpuWeight, QK_K};
use super::pool::SendPtr;
use super::q8_act::Q8KRow;
use super::Isa;

pub const BLOCK_BYTES: usize = 210;

pub(crate) fn rows(isa: Isa, w: &CpuWeight, rows: Range<usize>, acts: &[Q8KRow], t0: usize, out: SendPtr<f32>) {
    assert!(rows.end <= w.rows());
    let nb = w.cols() / QK_K;
    for a in acts {
        assert!(a.qs.len() == w.cols() && a.d.len() == nb && a.bsums.len() == nb * 16);
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: ISA availability checked by the driver; lengths asserted above.
        Isa::Avx512 => unsafe { x86::rows_avx512(w, rows, acts, t0, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::rows_avx2(w, rows, acts, t0, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is baseline on aarch64; lengths asserted above.
        Isa::Neon => unsafe { neon::rows_neon(w, rows, acts, t0, out) },
        _ => rows_scalar(w, rows, acts, t0, out),
    }
}

pub(crate) fn rows_scalar(w: &CpuWeight, rows: Range<usize>, acts: &[Q8KRow], t0: usize, out: SendPtr<f32>) {
    let stride = w.rows();
    for r in rows {
        let row = w.row(r);
        for (t, a) in acts.iter().enumerate() {
            let v = dot_scalar(row, a);
            // SAFETY: each (row, token) has one writer; `out` sized by the driver.
            unsafe { *out.0.add((t0 + t) * stride + r) = v };
        }
    }
}

/// The 256 unsigned 6-bit values (0..=63) of a q6_K block, in weight order.
#[inline(always)]
pub fn unpack_q6k(blk: &[u8]) -> [u8; QK_K] {
    let mut v = [0u8; QK_K];
    for h in 0..2 {
        let ql = &blk[64 * h..64 * h + 64];
        let qh = &blk[128 + 32 * h..128 + 32 * h + 32];
        for l in 0..32 {
            v[128 * h + l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
            v[128 * h + l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
            v[128 * h + l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            v[128 * h + l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    v
}

pub fn dot_scalar(row: &[u8], a: &Q8KRow) -> f32 {
    let mut sum = 0f32;
    for (b, blk) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        let d = half::f16::from_le_bytes([blk[208], blk[209]]).to_f32();
        let v = unpack_q6k(blk);
        let y = &a.qs[b * QK_K..(b + 1) * QK_K];
        let bs = &a.bsums[b * 16..b * 16 + 16];
        let mut isum = 0i32;
        for g in 0..16 {
            let sc = blk[192 + g] as i8 as i32;
            let s: i32 = (0..16).map(|i| v[16 * g + i] as i32 * y[16 * g + i] as i32).sum();
            isum += sc * (s - 32 * bs[g] as i32);
        }
        sum += d * a.d[b] * isum as f32;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::x86util::*;
    use super::*;
    use std::arch::x86_64::*;

    struct Ptrs<const N: usize> {
        qs: [*const i8; N],
        d: [*const f32; N],
        bs: [*const i16; N],
    }

    fn ptrs<const N: usize>(acts: &[Q8KRow]) -> Ptrs<N> {
        Ptrs {
            qs: std::array::from_fn(|t| acts[t].qs.as_ptr()),
            d: std::array::from_fn(|t| acts[t].d.as_ptr()),
            bs: std::array::from_fn(|t| acts[t].bsums.as_ptr()),
        }
    }

    // ---------------------------------------------------------------- AVX-512 (VNNI)

    pub unsafe fn rows_avx512(w: &CpuWeight, rows: Range<usize>, acts: &[Q8KRow], t0: usize, out: SendPtr<f32>) {
        let mut t = 0;
        while t < acts.len() {
            let k = (acts.len() - t).min(8);
            dispatch_n!(k, rows_avx512_n, w, rows.clone(), &acts[t..t + k], t0 + t, out);
            t += k;
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn rows_avx512_n<const N: usize>(
        w: &CpuWeight,
        rows: Range<usize>,
        acts: &[Q8KRow],
        t0: usize,
        out: SendPtr<f32>,
    ) {
        let p = ptrs::<N>(acts);
        let nb = w.cols() / QK_K;
        let stride = w.rows();
        let base = w.bytes().as_ptr();
        let rb = w.row_bytes();
        // vpermw indices: group g (64 values) lane k (i16 = 2 values) uses scale 4g + k/8.
        let mut idx = [_mm512_setzero_si512(); 4];
        for (g, ix) in idx.iter_mut().enumerate() {
            let mut b = [0u16; 32];
            for (k, v) in b.iter_mut().enumerate() {
                *v = (4 * g + k / 8) as u16;
            }
            *ix = _mm512_loadu_si512(b.as_ptr() as *const _);
        }
        for r in rows {
            let res = dot_avx512::<N>(base.add(r * rb), nb, &p, &idx);
            for (t, v) in res.iter().enumerate() {
                *out.0.add((t0 + t) * stride + r) = *v;
            }
        }
    }

    #[inline(always)]
    unsafe fn dot_avx512<const N: usize>(row: *const u8, nb: usize, p: &Ptrs<N>, idx: &[__m512i; 4]) -> [f32; N] {
        let m4 = _mm512_set1_epi8(0x0F);
        let m3 = _mm512_set1_epi8(0x03);
        let sh02 = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(2));
        let sh46 = _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(6));
        let mut facc = [_mm512_setzero_ps(); N];
        for b in 0..nb {
            let blk = row.add(b * BLOCK_BYTES);
            let d = f16_to_f32((blk.add(208) as *const u16).read_unaligned());
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192) as *const __m128i));
            let sc512 = _mm512_zextsi256_si512(sc16);
            let mut isum = [_mm512_setzero_si512(); N];
            for h in 0..2 {
                let ql = _mm512_loadu_si512(blk.add(64 * h) as *const _);
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(128 + 32 * h) as *const __m256i));
                let w0 = _mm512_or_si512(
                    _mm512_and_si512(ql, m4),
                    _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srlv_epi16(qh, sh02), m3)),
                );
                let w1 = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                    _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srlv_epi16(qh, sh46), m3)),
                );
                let s0 = _mm512_permutexvar_epi16(idx[2 * h], sc512);
                let s1 = _mm512_permutexvar_epi16(idx[2 * h + 1], sc512);
                for t in 0..N {
                    let y = p.qs[t].add(b * QK_K + 128 * h);
                    let p0 = _mm512_maddubs_epi16(w0, _mm512_loadu_si512(y as *const _));
                    let p1 = _mm512_maddubs_epi16(w1, _mm512_loadu_si512(y.add(64) as *const _));
                    isum[t] = _mm512_dpwssd_epi32(isum[t], p0, s0);
                    isum[t] = _mm512_dpwssd_epi32(isum[t], p1, s1);
                }
            }
            for t in 0..N {
                let bs = _mm256_loadu_si256(p.bs[t].add(b * 16) as *const __m256i);
                let corr = _mm256_slli_epi32::<5>(_mm256_madd_epi16(sc16, bs));
                let is = _mm512_sub_epi32(isum[t], _mm512_zextsi256_si512(corr));
                let yd = *p.d[t].add(b);
                facc[t] = _mm512_fmadd_ps(_mm512_set1_ps(d * yd), _mm512_cvtepi32_ps(is), facc[t]);
            }
        }
        let mut res = [0f32; N];
        for t in 0..N {
            res[t] = _mm512_reduce_add_ps(facc[t]);
        }
        res
    }

    // ---------------------------------------------------------------- AVX2

    pub unsafe fn rows_avx2(w: &CpuWeight, rows: Range<usize>, acts: &[Q8KRow], t0: usize, out: SendPtr<f32>) {
        let mut t = 0;
        while t < acts.len() {
            let k = (acts.len() - t).min(4);
            dispatch_n!(k, rows_avx2_n, w, rows.clone(), &acts[t..t + k], t0 + t, out);
            t += k;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows_avx2_n<const N: usize>(
        w: &CpuWeight,
        rows: Range<usize>,
        acts: &[Q8KRow],
        t0: usize,
        out: SendPtr<f32>,
    ) {
        let p = ptrs::<N>(acts);
        let nb = w.cols() / QK_K;
        let stride = w.rows();
        let base = w.bytes().as_ptr();
        let rb = w.row_bytes();
        // ggml's get_scale_shuffle(q): bytes [2q x8, 2q+1 x8] of the 16 i8 scales.
        let mut ctrl = [_mm_setzero_si128(); 8];
        for (q, c) in ctrl.iter_mut().enumerate() {
            let mut b = [0u8; 16];
            for (k, v) in b.iter_mut().enumerate() {
                *v = (2 * q + k / 8) as u8;
            }
            *c = _mm_loadu_si128(b.as_ptr() as *const __m128i);
        }
        for r in rows {
            let res = dot_avx2::<N>(base.add(r * rb), nb, &p, &ctrl);
            for (t, v) in res.iter().enumerate() {
                *out.0.add((t0 + t) * stride + r) = *v;
            }
        }
    }

    #[inline(always)]
    unsafe fn dot_avx2<const N: usize>(row: *const u8, nb: usize, p: &Ptrs<N>, ctrl: &[__m128i; 8]) -> [f32; N] {
        let m4 = _mm256_set1_epi8(0x0F);
        let m3 = _mm256_set1_epi8(0x03);
        let mut facc = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            let blk = row.add(b * BLOCK_BYTES);
            let d = f16_to_f32((blk.add(208) as *const u16).read_unaligned());
            let sc8 = _mm_loadu_si128(blk.add(192) as *const __m128i);
            let mut isum = [_mm256_setzero_si256(); N];
            for h in 0..2 {
                let ql0 = _mm256_loadu_si256(blk.add(64 * h) as *const __m256i);
                let ql1 = _mm256_loadu_si256(blk.add(64 * h + 32) as *const __m256i);
                let qh = _mm256_loadu_si256(blk.add(128 + 32 * h) as *const __m256i);
                let v = [
                    _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m3))),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<2>(qh), m3)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                        _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<4>(qh), m3)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                        _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<6>(qh), m3)),
                    ),
                ];
                for (i, vi) in v.iter().enumerate() {
                    let q = 4 * h + i;
                    let sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, ctrl[q]));
                    for t in 0..N {
                        let y = p.qs[t].add(b * QK_K + 32 * q);
                        let pr = _mm256_maddubs_epi16(*vi, _mm256_loadu_si256(y as *const __m256i));
                        isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(pr, sc));
                    }
                }
            }
            let sc16 = _mm256_cvtepi8_epi16(sc8);
            for t in 0..N {
                let bs = _mm256_loadu_si256(p.bs[t].add(b * 16) as *const __m256i);
                let corr = _mm256_slli_epi32::<5>(_mm256_madd_epi16(sc16, bs));
                let is = _mm256_sub_epi32(isum[t], corr);
                let yd = *p.d[t].add(b);
                facc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * yd), _mm256_cvtepi32_ps(is), facc[t]);
            }
        }
        let mut res = [0f32; N];
        for t in 0..N {
            res[t] = hsum256(facc[t]);
        }
        res
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::*;
    use std::arch::aarch64::*;

    /// Exact sum of 16 u8 (0..63) x i8 products.
    #[inline(always)]
    unsafe fn dot16(w: uint8x16_t, y: int8x16_t) -> i32 {
        let w = vreinterpretq_s8_u8(w);
        let lo = vmull_s8(vget_low_s8(w), vget_low_s8(y));
        let hi = vmull_s8(vget_high_s8(w), vget_high_s8(y));
        vaddvq_s32(vpaddlq_s16(vaddq_s16(lo, hi)))
    }

    pub unsafe fn rows_neon(w: &CpuWeight, rows: Range<usize>, acts: &[Q8KRow], t0: usize, out: SendPtr<f32>) {
        let nb = w.cols() / QK_K;
        let stride = w.rows();
        for r in rows {
            let row = w.row(r);
            for (t, a) in acts.iter().enumerate() {
                let mut sum = 0f32;
                for b in 0..nb {
                    let blk = &row[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
                    let d = half::f16::from_le_bytes([blk[208], blk[209]]).to_f32();
                    let v = unpack_q6k(blk);
                    let y = a.qs.as_ptr().add(b * QK_K);
                    let bs = &a.bsums[b * 16..b * 16 + 16];
                    let mut isum = 0i32;
                    for g in 0..16 {
                        let s = dot16(vld1q_u8(v.as_ptr().add(16 * g)), vld1q_s8(y.add(16 * g)));
                        isum += blk[192 + g] as i8 as i32 * (s - 32 * bs[g] as i32);
                    }
                    sum += d * a.d[b] * isum as f32;
                }
                *out.0.add((t0 + t) * stride + r) = sum;
            }
        }
    }
}
