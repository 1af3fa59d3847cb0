//! q8_0 weights x q8_0 activations (ggml's `ggml_vec_dot_q8_0_q8_0`): per 32-block
//! `dw * dy * sum(w * y)` with the integer sum exact.

use std::ops::Range;

use super::formats::{CpuWeight, QK8_0};
use super::pool::SendPtr;
use super::q8_act::Q80Row;
use super::Isa;

pub const BLOCK_BYTES: usize = 34;

pub fn token_tile(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 8,
        _ => 4,
    }
}

pub(crate) fn rows(isa: Isa, w: &CpuWeight, rows: Range<usize>, acts: &[Q80Row], t0: usize, out: SendPtr<f32>) {
    assert!(rows.end <= w.rows());
    let nb = w.cols() / QK8_0;
    for a in acts {
        assert!(a.qs.len() == w.cols() && a.d.len() == nb);
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

pub(crate) fn rows_scalar(w: &CpuWeight, rows: Range<usize>, acts: &[Q80Row], t0: usize, out: SendPtr<f32>) {
    let stride = w.rows();
    for r in rows {
        let row = w.row(r);
        for (t, a) in acts.iter().enumerate() {
            let mut sum = 0f32;
            for (b, blk) in row.chunks_exact(BLOCK_BYTES).enumerate() {
                let dw = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                let y = &a.qs[b * QK8_0..(b + 1) * QK8_0];
                let s: i32 = blk[2..].iter().zip(y).map(|(&q, &y)| q as i8 as i32 * y as i32).sum();
                sum += dw * a.d[b] * s as f32;
            }
            // SAFETY: each (row, token) has one writer; `out` sized by the driver.
            unsafe { *out.0.add((t0 + t) * stride + r) = sum };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::x86util::*;
    use super::*;
    use std::arch::x86_64::*;

    struct Ptrs<const N: usize> {
        qs: [*const i8; N],
        d: [*const f32; N],
    }

    fn ptrs<const N: usize>(acts: &[Q80Row]) -> Ptrs<N> {
        Ptrs { qs: std::array::from_fn(|t| acts[t].qs.as_ptr()), d: std::array::from_fn(|t| acts[t].d.as_ptr()) }
    }

    /// Decode (one or two tokens) goes four rows at a time: four weight streams in flight per
    /// core and four independent accumulator chains, with each token's activations and scales
    /// loaded once for the four. More tokens go one row at a time (registers run out).
    pub unsafe fn rows_avx512(w: &CpuWeight, rows: Range<usize>, acts: &[Q80Row], t0: usize, out: SendPtr<f32>) {
        let mut t = 0;
        while t < acts.len() {
            let k = (acts.len() - t).min(8);
            let a = &acts[t..t + k];
            let mut r = rows.start;
            if k <= 2 {
                while r + 4 <= rows.end {
                    match k {
                        1 => rows_avx512_rn::<4, 1>(w, r, a, t0 + t, out),
                        _ => rows_avx512_rn::<4, 2>(w, r, a, t0 + t, out),
                    }
                    r += 4;
                }
            }
            dispatch_n!(k, rows_avx512_n, w, r..rows.end, a, t0 + t, out);
            t += k;
        }
    }

    /// Rows `r0..r0 + R` against `N` tokens. Two blocks per 512-bit step: |w| (u8) x (y with w's
    /// sign) through vpdpbusd (exact integer sums), then one FMA with the two blocks' `dw * dy`
    /// spread over their 8 lanes each.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn rows_avx512_rn<const R: usize, const N: usize>(
        w: &CpuWeight,
        r0: usize,
        acts: &[Q80Row],
        t0: usize,
        out: SendPtr<f32>,
    ) {
        let p = ptrs::<N>(acts);
        let nb = w.cols() / QK8_0;
        let stride = w.rows();
        let rb = w.row_bytes();
        let rowp: [*const u8; R] = std::array::from_fn(|i| w.bytes().as_ptr().add((r0 + i) * rb));
        let zero = _mm512_setzero_si512();
        let pidx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        let mut facc = [[_mm512_setzero_ps(); N]; R];
        let mut b = 0;
        while b + 2 <= nb {
            let ys: [__m512i; N] = std::array::from_fn(|t| _mm512_loadu_si512(p.qs[t].add(b * QK8_0) as *const _));
            let dys: [__m512; N] = std::array::from_fn(|t| {
                _mm512_permutexvar_ps(
                    pidx,
                    _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd(p.d[t].add(b) as *const f64))),
                )
            });
            for i in 0..R {
                let b0 = rowp[i].add(b * BLOCK_BYTES);
                if R == 4 {
                    // These two blocks of the row four on (the next group's): more lines in
                    // flight than the hardware prefetcher keeps for short interleaved streams
                    // (see q4k). `wrapping_add`: past the last group it points beyond the
                    // weights, where a prefetch is harmless but `add` is not.
                    let next = b0.wrapping_add(4 * rb) as *const i8;
                    _mm_prefetch::<_MM_HINT_T0>(next);
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(2 * BLOCK_BYTES - 1));
                }
                let wv = _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_loadu_si256(b0.add(2) as *const __m256i)),
                    _mm256_loadu_si256(b0.add(36) as *const __m256i),
                );
                let neg = _mm512_movepi8_mask(wv);
                let aw = _mm512_abs_epi8(wv);
                let dw = _mm_cvtph_ps(_mm_insert_epi16::<1>(
                    _mm_cvtsi32_si128((b0 as *const u16).read_unaligned() as i32),
                    (b0.add(BLOCK_BYTES) as *const u16).read_unaligned() as i32,
                ));
                let dwv = _mm512_permutexvar_ps(pidx, _mm512_castps128_ps512(dw));
                for t in 0..N {
                    let sy = _mm512_mask_sub_epi8(ys[t], neg, zero, ys[t]);
                    let is = _mm512_dpbusd_epi32(zero, aw, sy);
                    facc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(dwv, dys[t]), facc[i][t]);
                }
            }
            b += 2;
        }
        for i in 0..R {
            let mut res = [0f32; N];
            for t in 0..N {
                res[t] = _mm512_reduce_add_ps(facc[i][t]);
            }
            if b < nb {
                let blk = rowp[i].add(b * BLOCK_BYTES);
                let wv = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                let aw = _mm256_abs_epi8(wv);
                let dw = f16_to_f32((blk as *const u16).read_unaligned());
                for t in 0..N {
                    let y = _mm256_loadu_si256(p.qs[t].add(b * QK8_0) as *const __m256i);
                    let is = _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, _mm256_sign_epi8(y, wv));
                    res[t] += dw * *p.d[t].add(b) * hsum256(_mm256_cvtepi32_ps(is));
                }
            }
            for (t, v) in res.iter().enumerate() {
                *out.0.add((t0 + t) * stride + r0 + i) = *v;
            }
        }
    }

    pub unsafe fn rows_avx2(w: &CpuWeight, rows: Range<usize>, acts: &[Q80Row], t0: usize, out: SendPtr<f32>) {
        let mut t = 0;
        while t < acts.len() {
            let k = (acts.len() - t).min(4);
            dispatch_n!(k, rows_avx2_n, w, rows.clone(), &acts[t..t + k], t0 + t, out);
            t += k;
        }
    }

    /// One row at a time against `N` tokens (more tokens than the four-row tiles have registers
    /// for, and the rows a four-row tile leaves over).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn rows_avx512_n<const N: usize>(
        w: &CpuWeight,
        rows: Range<usize>,
        acts: &[Q80Row],
        t0: usize,
        out: SendPtr<f32>,
    ) {
        for r in rows {
            rows_avx512_rn::<1, N>(w, r, acts, t0, out);
        }
    }

    /// ggml's AVX2 q8_0 dot: maddubs(|w|, sign(y, w)) then madd with ones.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows_avx2_n<const N: usize>(
        w: &CpuWeight,
        rows: Range<usize>,
        acts: &[Q80Row],
        t0: usize,
        out: SendPtr<f32>,
    ) {
        let p = ptrs::<N>(acts);
        let nb = w.cols() / QK8_0;
        let stride = w.rows();
        let base = w.bytes().as_ptr();
        let rb = w.row_bytes();
        let ones = _mm256_set1_epi16(1);
        for r in rows {
            let row = base.add(r * rb);
            let mut facc = [_mm256_setzero_ps(); N];
            for b in 0..nb {
                let blk = row.add(b * BLOCK_BYTES);
                let wv = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                let aw = _mm256_sign_epi8(wv, wv);
                let dw = f16_to_f32((blk as *const u16).read_unaligned());
                for t in 0..N {
                    let y = _mm256_loadu_si256(p.qs[t].add(b * QK8_0) as *const __m256i);
                    let pr = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(y, wv));
                    let is = _mm256_madd_epi16(pr, ones);
                    facc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * *p.d[t].add(b)), _mm256_cvtepi32_ps(is), facc[t]);
                }
            }
            for t in 0..N {
                *out.0.add((t0 + t) * stride + r) = hsum256(facc[t]);
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::*;
    use std::arch::aarch64::*;

    pub unsafe fn rows_neon(w: &CpuWeight, rows: Range<usize>, acts: &[Q80Row], t0: usize, out: SendPtr<f32>) {
        let nb = w.cols() / QK8_0;
        let stride = w.rows();
        for r in rows {
            let row = w.row(r);
            for (t, a) in acts.iter().enumerate() {
                let mut acc = vdupq_n_f32(0.0);
                for b in 0..nb {
                    let blk = row.as_ptr().add(b * BLOCK_BYTES);
                    let dw = half::f16::from_le_bytes([*blk, *blk.add(1)]).to_f32();
                    let y = a.qs.as_ptr().add(b * QK8_0);
                    let w0 = vld1q_s8(blk.add(2) as *const i8);
                    let w1 = vld1q_s8(blk.add(18) as *const i8);
                    let y0 = vld1q_s8(y);
                    let y1 = vld1q_s8(y.add(16));
                    let p0 = vaddq_s16(
                        vmull_s8(vget_low_s8(w0), vget_low_s8(y0)),
                        vmull_s8(vget_high_s8(w0), vget_high_s8(y0)),
                    );
                    let p1 = vaddq_s16(
                        vmull_s8(vget_low_s8(w1), vget_low_s8(y1)),
                        vmull_s8(vget_high_s8(w1), vget_high_s8(y1)),
                    );
                    let s = vaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1));
                    acc = vmlaq_n_f32(acc, vcvtq_f32_s32(s), dw * a.d[b]);
                }
                *out.0.add((t0 + t) * stride + r) = vaddvq_f32(acc);
            }
        }
    }
}
