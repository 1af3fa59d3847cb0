//! q4_K weights x q8_K activations (ggml's `ggml_vec_dot_q4_K_q8_K`), for a range of rows and a
//! tile of up to `token_tile(isa)` tokens: each weight block is unpacked once per tile.
//!
//! Per 256-weight block: `d * yd * sum_s sc[s] * dot(q_s, y_s) - dmin * yd * sum_s m[s] * ysum_s`
//! where the integer sums are exact (as in ggml), and `ysum_s` comes from the q8_K `bsums`.

use std::ops::Range;

use super::formats::{unpack_q4k_scales, CpuWeight, QK_K};
use super::pool::SendPtr;
use super::q8_act::Q8KRow;
use super::Isa;

pub const BLOCK_BYTES: usize = 144;

pub fn token_tile(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 8,
        _ => 4,
    }
}

/// `out[(t0 + t) * w.rows() + r] = dot(W[r], acts[t])` for `r` in `rows`, `t` < `acts.len()`.
pub(crate) fn rows(isa: Isa, w: &CpuWeight, rows: Range<usize>, acts: &[Q8KRow], t0: usize, out: SendPtr<f32>) {
    assert!(rows.end <= w.rows());
    let nb = w.cols() / QK_K;
    for a in acts {
        assert!(a.qs.len() == w.cols() && a.d.len() == nb && a.bsums.len() == nb * 16);
        // The AVX-512 kernel takes activations reordered by `permute_q4k` plus 32-value sums;
        // every other kernel takes them in natural order.
        if isa == Isa::Avx512 {
            assert!(a.q4k_order && a.pairs.len() == nb * 8, "AVX-512 q4_K needs permute_q4k + pair_sums");
        } else {
            assert!(!a.q4k_order, "q4k_order activations are for the AVX-512 kernel only");
        }
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Isa::Avx512/Avx2 are only passed when available (checked by the driver);
        // row and activation lengths are asserted above; `out` covers rows x tokens (driver).
        Isa::Avx512 => unsafe { x86::rows_avx512(w, rows, acts, t0, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::rows_avx2(w, rows, acts, t0, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is baseline on aarch64; lengths asserted above.
        Isa::Neon => unsafe { neon::rows_neon(w, rows, acts, t0, out) },
        _ => rows_scalar(w, rows, acts, t0, out),
    }
}

/// Portable version: exact integer sums per block, then the same float combination.
pub(crate) fn rows_scalar(w: &CpuWeight, rows: Range<usize>, acts: &[Q8KRow], t0: usize, out: SendPtr<f32>) {
    let stride = w.rows();
    for r in rows {
        let row = w.row(r);
        for (t, a) in acts.iter().enumerate() {
            let v = dot_scalar(row, a);
            // SAFETY: the driver gives each (row, token) to exactly one caller and sized `out`.
            unsafe { *out.0.add((t0 + t) * stride + r) = v };
        }
    }
}

pub fn dot_scalar(row: &[u8], a: &Q8KRow) -> f32 {
    let mut sum = 0f32;
    for (b, blk) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        let dmin = half::f16::from_le_bytes([blk[2], blk[3]]).to_f32();
        let sm = unpack_q4k_scales(blk[4..16].try_into().unwrap());
        let qs = &blk[16..144];
        let y = &a.qs[b * QK_K..(b + 1) * QK_K];
        let mut isum = 0i32;
        for j in 0..4 {
            let mut s1 = 0i32;
            let mut s2 = 0i32;
            for l in 0..32 {
                let q = qs[32 * j + l];
                s1 += (q & 0xF) as i32 * y[64 * j + l] as i32;
                s2 += (q >> 4) as i32 * y[64 * j + 32 + l] as i32;
            }
            isum += sm[2 * j] as i32 * s1 + sm[2 * j + 1] as i32 * s2;
        }
        let bs = &a.bsums[b * 16..b * 16 + 16];
        let mut msum = 0i32;
        for s in 0..8 {
            msum += sm[8 + s] as i32 * (bs[2 * s] as i32 + bs[2 * s + 1] as i32);
        }
        let yd = a.d[b];
        sum += d * yd * isum as f32 - dmin * yd * msum as f32;
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
        pairs: [*const i16; N],
    }

    fn ptrs<const N: usize>(acts: &[Q8KRow]) -> Ptrs<N> {
        Ptrs {
            qs: std::array::from_fn(|t| acts[t].qs.as_ptr()),
            d: std::array::from_fn(|t| acts[t].d.as_ptr()),
            bs: std::array::from_fn(|t| acts[t].bsums.as_ptr()),
            pairs: std::array::from_fn(|t| acts[t].pairs.as_ptr()),
        }
    }

    #[inline(always)]
    unsafe fn d_dmin(blk: *const u8) -> (f32, f32) {
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_shuffle_ps::<1>(v, v)))
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
        // pshufb controls turning the 16 unpacked scale bytes (broadcast to every 128-bit lane)
        // into zero-extended i16 scales: the 64 weights of register k are sub-blocks (a, b) =
        // (0,2), (1,3), (4,6), (5,7) in its lower and upper 256 bits.
        let mut ctrl = [_mm512_setzero_si512(); 4];
        for (k, (sa, sb)) in [(0u8, 2u8), (1, 3), (4, 6), (5, 7)].into_iter().enumerate() {
            let mut b = [0u8; 64];
            for (i, v) in b.iter_mut().enumerate() {
                *v = if i % 2 == 1 {
                    0x80
                } else if i < 32 {
                    sa
                } else {
                    sb
                };
            }
            ctrl[k] = _mm512_loadu_si512(b.as_ptr() as *const _);
        }
        let mut r = rows.start;
        // Decode (one token): four rows at a time, four weight streams and four chains.
        if N == 1 {
            while r + 4 <= rows.end {
                let res = dot_avx512_r::<4, N>(std::array::from_fn(|i| base.add((r + i) * rb)), nb, &p, &ctrl, 4 * rb);
                for (i, row) in res.iter().enumerate() {
                    for (t, v) in row.iter().enumerate() {
                        *out.0.add((t0 + t) * stride + r + i) = *v;
                    }
                }
                r += 4;
            }
        }
        while r < rows.end {
            let res = dot_avx512_r::<1, N>([base.add(r * rb)], nb, &p, &ctrl, 0);
            for (t, v) in res[0].iter().enumerate() {
                *out.0.add((t0 + t) * stride + r) = *v;
            }
            r += 1;
        }
    }

    /// The 8 scales and 8 mins of a q4_K block as bytes `[sc0..sc7, m0..m7]` (SIMD version of
    /// `unpack_q4k_scales`; reads 16 bytes at `p`, of which the first 12 are the scales).
    #[inline(always)]
    unsafe fn scales_avx(p: *const u8) -> __m128i {
        let v = _mm_loadu_si128(p as *const __m128i); // u32 lanes [A, B, C, x]
        let acbc = _mm_shuffle_epi32::<0b10_01_10_00>(v); // [A, C, B, C]
        let lo = _mm_and_si128(
            _mm_srlv_epi32(acbc, _mm_setr_epi32(0, 0, 0, 4)),
            _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f),
        );
        let aabb = _mm_shuffle_epi32::<0b01_01_00_00>(v); // [A, A, B, B]
        let hi = _mm_and_si128(_mm_srli_epi32::<2>(aabb), _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));
        _mm_or_si128(lo, hi)
    }

    /// `R` rows against `N` tokens, the rows' blocks interleaved (R weight streams in flight and
    /// R independent chains); each row's block is unpacked once for the N tokens.
    #[inline(always)]
    unsafe fn dot_avx512_r<const R: usize, const N: usize>(
        rows: [*const u8; R],
        nb: usize,
        p: &Ptrs<N>,
        ctrl: &[__m512i; 4],
        ahead: usize,
    ) -> [[f32; N]; R] {
        let m4 = _mm512_set1_epi8(0x0F);
        let mut facc = [[_mm512_setzero_ps(); N]; R];
        let mut macc = [[_mm_setzero_ps(); N]; R];
        for b in 0..nb {
            for i in 0..R {
                let blk = rows[i].add(b * BLOCK_BYTES);
                if ahead > 0 {
                    // The same block of the row `ahead` bytes on (the next group's), so that
                    // more lines are in flight than the hardware prefetcher keeps for these
                    // short interleaved streams. `wrapping_add`: past the last group it points
                    // beyond the weights, and a prefetch there is harmless but `add` is not.
                    let next = blk.wrapping_add(ahead) as *const i8;
                    _mm_prefetch::<_MM_HINT_T0>(next);
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(64));
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(128));
                }
                let (d, dmin) = d_dmin(blk);
                let sm = scales_avx(blk.add(4));
                let smb = _mm512_broadcast_i32x4(sm);
                let mn16 = _mm_cvtepu8_epi16(_mm_srli_si128::<8>(sm));
                let raw0 = _mm512_loadu_si512(blk.add(16) as *const _);
                let raw1 = _mm512_loadu_si512(blk.add(80) as *const _);
                let wv = [
                    _mm512_and_si512(raw0, m4),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(raw0), m4),
                    _mm512_and_si512(raw1, m4),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(raw1), m4),
                ];
                let sv: [__m512i; 4] = std::array::from_fn(|k| _mm512_shuffle_epi8(smb, ctrl[k]));
                for t in 0..N {
                    let y = p.qs[t].add(b * QK_K);
                    let mut isum = _mm512_setzero_si512();
                    for k in 0..4 {
                        let pr = _mm512_maddubs_epi16(wv[k], _mm512_loadu_si512(y.add(64 * k) as *const _));
                        isum = _mm512_dpwssd_epi32(isum, pr, sv[k]);
                    }
                    let pm = _mm_madd_epi16(mn16, _mm_loadu_si128(p.pairs[t].add(b * 8) as *const __m128i));
                    let yd = *p.d[t].add(b);
                    facc[i][t] = _mm512_fmadd_ps(_mm512_set1_ps(d * yd), _mm512_cvtepi32_ps(isum), facc[i][t]);
                    macc[i][t] = _mm_fmadd_ps(_mm_set1_ps(dmin * yd), _mm_cvtepi32_ps(pm), macc[i][t]);
                }
            }
        }
        let mut res = [[0f32; N]; R];
        for i in 0..R {
            for t in 0..N {
                res[i][t] = _mm512_reduce_add_ps(facc[i][t]) - hsum128(macc[i][t]);
            }
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
        // ggml's get_scale_shuffle_k4(i): bytes [2i, 2i+1] repeated.
        let mut ctrl = [_mm256_setzero_si256(); 8];
        for (i, c) in ctrl.iter_mut().enumerate() {
            let mut b = [0u8; 32];
            for (k, v) in b.iter_mut().enumerate() {
                *v = (2 * i + (k & 1)) as u8;
            }
            *c = _mm256_loadu_si256(b.as_ptr() as *const __m256i);
        }
        for r in rows {
            let res = dot_avx2::<N>(base.add(r * rb), nb, &p, &ctrl);
            for (t, v) in res.iter().enumerate() {
                *out.0.add((t0 + t) * stride + r) = *v;
            }
        }
    }

    #[inline(always)]
    unsafe fn dot_avx2<const N: usize>(row: *const u8, nb: usize, p: &Ptrs<N>, ctrl: &[__m256i; 8]) -> [f32; N] {
        let m4 = _mm256_set1_epi8(0x0F);
        let mut facc = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            let blk = row.add(b * BLOCK_BYTES);
            let (d, dmin) = d_dmin(blk);
            let sm = unpack_q4k_scales(&*(blk.add(4) as *const [u8; 12]));
            let smv = _mm_loadu_si128(sm.as_ptr() as *const __m128i);
            let sc16 = _mm_cvtepu8_epi16(smv);
            let mn16 = _mm_cvtepu8_epi16(_mm_srli_si128::<8>(smv));
            let scb = _mm256_broadcastsi128_si256(sc16);
            let q = blk.add(16);
            let mut isum = [_mm256_setzero_si256(); N];
            for j in 0..4 {
                let sl = _mm256_shuffle_epi8(scb, ctrl[2 * j]);
                let sh = _mm256_shuffle_epi8(scb, ctrl[2 * j + 1]);
                let raw = _mm256_loadu_si256(q.add(32 * j) as *const __m256i);
                let lo = _mm256_and_si256(raw, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4);
                for t in 0..N {
                    let y = p.qs[t].add(b * QK_K + 64 * j);
                    let pl = _mm256_maddubs_epi16(lo, _mm256_loadu_si256(y as *const __m256i));
                    let ph = _mm256_maddubs_epi16(hi, _mm256_loadu_si256(y.add(32) as *const __m256i));
                    isum[t] = _mm256_add_epi32(
                        isum[t],
                        _mm256_add_epi32(_mm256_madd_epi16(pl, sl), _mm256_madd_epi16(ph, sh)),
                    );
                }
            }
            for t in 0..N {
                let bs = _mm256_loadu_si256(p.bs[t].add(b * 16) as *const __m256i);
                let q8s = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256::<1>(bs));
                let pm = _mm_madd_epi16(mn16, q8s);
                let yd = *p.d[t].add(b);
                facc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * yd), _mm256_cvtepi32_ps(isum[t]), facc[t]);
                facc[t] =
                    _mm256_fmadd_ps(_mm256_set1_ps(-dmin * yd), _mm256_zextps128_ps256(_mm_cvtepi32_ps(pm)), facc[t]);
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

    /// Sum of 16 u8 (0..15) x i8 products, widened exactly (vmull_s8 into i16, pairwise into i32).
    #[inline(always)]
    unsafe fn dot16(w: uint8x16_t, y: int8x16_t) -> int32x4_t {
        let w = vreinterpretq_s8_u8(w);
        let lo = vmull_s8(vget_low_s8(w), vget_low_s8(y));
        let hi = vmull_s8(vget_high_s8(w), vget_high_s8(y));
        vpaddlq_s16(vaddq_s16(lo, hi))
    }

    pub unsafe fn rows_neon(w: &CpuWeight, rows: Range<usize>, acts: &[Q8KRow], t0: usize, out: SendPtr<f32>) {
        let nb = w.cols() / QK_K;
        let stride = w.rows();
        let m4 = vdupq_n_u8(0x0F);
        for r in rows {
            let row = w.row(r);
            for (t, a) in acts.iter().enumerate() {
                let mut sum = 0f32;
                for b in 0..nb {
                    let blk = &row[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
                    let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    let dmin = half::f16::from_le_bytes([blk[2], blk[3]]).to_f32();
                    let sm = unpack_q4k_scales(blk[4..16].try_into().unwrap());
                    let q = blk.as_ptr().add(16);
                    let y = a.qs.as_ptr().add(b * QK_K);
                    let mut isum = 0i32;
                    for j in 0..4 {
                        let mut s1 = vdupq_n_s32(0);
                        let mut s2 = vdupq_n_s32(0);
                        for h in 0..2 {
                            let raw = vld1q_u8(q.add(32 * j + 16 * h));
                            let lo = vandq_u8(raw, m4);
                            let hi = vshrq_n_u8::<4>(raw);
                            s1 = vaddq_s32(s1, dot16(lo, vld1q_s8(y.add(64 * j + 16 * h))));
                            s2 = vaddq_s32(s2, dot16(hi, vld1q_s8(y.add(64 * j + 32 + 16 * h))));
                        }
                        isum += sm[2 * j] as i32 * vaddvq_s32(s1) + sm[2 * j + 1] as i32 * vaddvq_s32(s2);
                    }
                    let bs = &a.bsums[b * 16..b * 16 + 16];
                    let mut msum = 0i32;
                    for s in 0..8 {
                        msum += sm[8 + s] as i32 * (bs[2 * s] as i32 + bs[2 * s + 1] as i32);
                    }
                    let yd = a.d[b];
                    sum += d * yd * isum as f32 - dmin * yd * msum as f32;
                }
                *out.0.add((t0 + t) * stride + r) = sum;
            }
        }
    }
}
