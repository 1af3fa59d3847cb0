//! Activation quantization, bit-identical to candle's `BlockQ8K::from_float` (ggml's
//! `quantize_row_q8_K`, with round-half-away-from-zero) and `BlockQ8_0::from_float`.
//!
//! The values are the same as in ggml's `block_q8_K` / `block_q8_0`, but stored as separate
//! arrays (all `qs` of a token contiguous and 64-byte aligned in the caller's buffer; `d` as
//! f32; `bsums`) so the kernels can load them with aligned full-width loads. For q8_0 the scale
//! `d` is rounded to f16 and stored back as f32, as ggml stores it in the block.

use half::f16;

use super::formats::{QK8_0, QK_K};
use super::Isa;

/// q8_K activations of one token: `cols` quantized values, one `d` per 256 and 16 `bsums`
/// (sums of 16 consecutive values) per 256.
#[derive(Clone, Copy)]
pub struct Q8KRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub bsums: &'a [i16],
    /// Sums of each 32 values (8 per block); filled for the AVX-512 q4_K kernel, else empty.
    pub pairs: &'a [i16],
    /// Whether `qs` is in the AVX-512 q4_K order (see [`permute_q4k`]).
    pub q4k_order: bool,
}

/// Reorders each 128-value half of every 256-block from runs of 32 `[r0, r1, r2, r3]` to
/// `[r0, r2, r1, r3]`, so that one 64-byte load of activations lines up with the low (or high)
/// nibbles of a 64-byte load of q4_K weights. Its own inverse.
pub fn permute_q4k(qs: &mut [i8]) {
    for half in qs.chunks_exact_mut(128) {
        let (a, b) = half.split_at_mut(64);
        a[32..64].swap_with_slice(&mut b[0..32]);
    }
}

/// Sums of 32 values per sub-block from the q8_K `bsums`.
pub fn pair_sums(bsums: &[i16], pairs: &mut [i16]) {
    for (p, b) in pairs.iter_mut().zip(bsums.chunks_exact(2)) {
        *p = b[0] + b[1];
    }
}

/// q8_0 activations of one token: `cols` values and one f16-rounded `d` per 32.
#[derive(Clone, Copy)]
pub struct Q80Row<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
}

/// Rounds half away from zero, exactly like `f32::round` (what candle's quantizers use).
#[inline(always)]
fn round_away(v: f32) -> f32 {
    v.round()
}

/// Scalar reference, equal to candle's `BlockQ8K::from_float`.
pub fn quantize_q8k_scalar(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
    let nb = x.len() / QK_K;
    assert!(x.len() == nb * QK_K && qs.len() == x.len() && d.len() == nb && bsums.len() == nb * 16);
    for b in 0..nb {
        let xs = &x[b * QK_K..(b + 1) * QK_K];
        let q = &mut qs[b * QK_K..(b + 1) * QK_K];
        let mut max = 0f32;
        let mut amax = 0f32;
        for &v in xs {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            d[b] = 0.0;
            q.fill(0);
            bsums[b * 16..b * 16 + 16].fill(0);
            continue;
        }
        let iscale = -127f32 / max;
        for (o, &v) in q.iter_mut().zip(xs) {
            *o = round_away(iscale * v).clamp(-128.0, 127.0) as i8;
        }
        for j in 0..16 {
            bsums[b * 16 + j] = q[j * 16..j * 16 + 16].iter().map(|&v| v as i32).sum::<i32>() as i16;
        }
        d[b] = 1.0 / iscale;
    }
}

/// Scalar reference, equal to candle's `BlockQ8_0::from_float` (d rounded to f16).
pub fn quantize_q8_0_scalar(x: &[f32], qs: &mut [i8], d: &mut [f32]) {
    let nb = x.len() / QK8_0;
    assert!(x.len() == nb * QK8_0 && qs.len() == x.len() && d.len() == nb);
    for b in 0..nb {
        let xs = &x[b * QK8_0..(b + 1) * QK8_0];
        let amax = xs.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let dd = amax / 127.0;
        let id = if dd != 0.0 { 1.0 / dd } else { 0.0 };
        d[b] = f16::from_f32(dd).to_f32();
        for (o, &v) in qs[b * QK8_0..(b + 1) * QK8_0].iter_mut().zip(xs) {
            *o = round_away(v * id) as i8;
        }
    }
}

pub fn quantize_q8k(isa: Isa, x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) {
        let nb = x.len() / QK_K;
        assert!(x.len() == nb * QK_K && qs.len() == x.len() && d.len() == nb && bsums.len() == nb * 16);
        // SAFETY: AVX2/FMA availability is part of `Isa::Avx2`/`Avx512`, which callers only
        // pass after `Isa::is_available`; lengths checked above.
        unsafe { x86::quantize_q8k_avx2(x, qs, d, bsums) };
        return;
    }
    let _ = isa;
    quantize_q8k_scalar(x, qs, d, bsums)
}

pub fn quantize_q8_0(isa: Isa, x: &[f32], qs: &mut [i8], d: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) {
        let nb = x.len() / QK8_0;
        assert!(x.len() == nb * QK8_0 && qs.len() == x.len() && d.len() == nb);
        // SAFETY: as above.
        unsafe { x86::quantize_q8_0_avx2(x, qs, d) };
        return;
    }
    let _ = isa;
    quantize_q8_0_scalar(x, qs, d)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// round-half-away-from-zero of 8 floats, exactly `f32::round`: t = trunc(v); the fraction
    /// v - t is exact, and if |v - t| >= 0.5 the result moves one away from zero.
    #[inline(always)]
    unsafe fn round_away8(v: __m256) -> __m256 {
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        let frac = _mm256_sub_ps(v, t);
        let sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0));
        let absf = _mm256_andnot_ps(_mm256_set1_ps(-0.0), frac);
        let ge = _mm256_cmp_ps::<_CMP_GE_OQ>(absf, _mm256_set1_ps(0.5));
        let one = _mm256_or_ps(_mm256_set1_ps(1.0), sign);
        _mm256_add_ps(t, _mm256_and_ps(ge, one))
    }

    #[cfg(test)]
    #[target_feature(enable = "avx2")]
    pub unsafe fn round_away8_pub(v: __m256) -> __m256 {
        round_away8(v)
    }

    #[inline(always)]
    unsafe fn hmax8(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
        _mm_cvtss_f32(m)
    }

    /// Packs 32 i32 values (4 vectors, already in -128..=127) into 32 i8 in order.
    #[inline(always)]
    unsafe fn pack32(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        let ab = _mm256_packs_epi32(a, b); // a0-3 b0-3 a4-7 b4-7 (i16)
        let cd = _mm256_packs_epi32(c, d);
        let abcd = _mm256_packs_epi16(ab, cd); // a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7
        _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize_q8k_avx2(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
        let nb = x.len() / QK_K;
        let absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        for b in 0..nb {
            let xp = x.as_ptr().add(b * QK_K);
            let mut m = _mm256_setzero_ps();
            for i in 0..QK_K / 8 {
                m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(xp.add(i * 8)), absmask));
            }
            let amax = hmax8(m);
            let q = qs.as_mut_ptr().add(b * QK_K);
            if amax == 0.0 || amax.is_nan() {
                // NaN input: fall back to the scalar code for identical behaviour.
                if amax.is_nan() {
                    quantize_q8k_scalar(
                        &x[b * QK_K..(b + 1) * QK_K],
                        &mut qs[b * QK_K..(b + 1) * QK_K],
                        &mut d[b..b + 1],
                        &mut bsums[b * 16..b * 16 + 16],
                    );
                    continue;
                }
                d[b] = 0.0;
                std::ptr::write_bytes(q, 0, QK_K);
                bsums[b * 16..b * 16 + 16].fill(0);
                continue;
            }
            // The first value whose magnitude is amax gives the sign (scalar: strict `<`).
            let mut max = 0f32;
            for i in 0..QK_K {
                let v = *xp.add(i);
                if v.abs() == amax {
                    max = v;
                    break;
                }
            }
            let iscale = -127f32 / max;
            let vs = _mm256_set1_ps(iscale);
            let lo = _mm256_set1_ps(-128.0);
            let hi = _mm256_set1_ps(127.0);
            for g in 0..QK_K / 32 {
                let mut v = [_mm256_setzero_si256(); 4];
                for (k, vk) in v.iter_mut().enumerate() {
                    let f = _mm256_mul_ps(vs, _mm256_loadu_ps(xp.add(g * 32 + k * 8)));
                    let r = _mm256_min_ps(_mm256_max_ps(round_away8(f), lo), hi);
                    *vk = _mm256_cvttps_epi32(r);
                }
                let packed = pack32(v[0], v[1], v[2], v[3]);
                _mm256_storeu_si256(q.add(g * 32) as *mut __m256i, packed);
                // bsums of the two 16-value halves
                let w = _mm256_maddubs_epi16(_mm256_set1_epi8(1), packed); // pairs, i16
                let s = _mm256_madd_epi16(w, _mm256_set1_epi16(1)); // quads, i32 x8
                                                                    // s: [q0-3, q4-7, q8-11, q12-15 | q16-19, ...]
                let s = _mm256_hadd_epi32(s, s); // [s01, s23, s01, s23 | s45, s67, ..]
                let s = _mm256_hadd_epi32(s, s); // [sum0-15 x4 | sum16-31 x4]
                bsums[b * 16 + g * 2] = _mm256_extract_epi32::<0>(s) as i16;
                bsums[b * 16 + g * 2 + 1] = _mm256_extract_epi32::<4>(s) as i16;
            }
            d[b] = 1.0 / iscale;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_q8_0_avx2(x: &[f32], qs: &mut [i8], d: &mut [f32]) {
        let nb = x.len() / QK8_0;
        let absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        for b in 0..nb {
            let xp = x.as_ptr().add(b * QK8_0);
            let v0 = _mm256_loadu_ps(xp);
            let v1 = _mm256_loadu_ps(xp.add(8));
            let v2 = _mm256_loadu_ps(xp.add(16));
            let v3 = _mm256_loadu_ps(xp.add(24));
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_and_ps(v0, absmask), _mm256_and_ps(v1, absmask)),
                _mm256_max_ps(_mm256_and_ps(v2, absmask), _mm256_and_ps(v3, absmask)),
            );
            let amax = hmax8(m);
            if amax.is_nan() {
                quantize_q8_0_scalar(
                    &x[b * QK8_0..(b + 1) * QK8_0],
                    &mut qs[b * QK8_0..(b + 1) * QK8_0],
                    &mut d[b..b + 1],
                );
                continue;
            }
            let dd = amax / 127.0;
            let id = if dd != 0.0 { 1.0 / dd } else { 0.0 };
            d[b] = f16::from_f32(dd).to_f32();
            let vid = _mm256_set1_ps(id);
            // `as i8` saturates; values are within -127..=127 here (|x * id| <= ~127).
            let lo = _mm256_set1_ps(-128.0);
            let hi = _mm256_set1_ps(127.0);
            let cv = |v: __m256| {
                _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(round_away8(_mm256_mul_ps(v, vid)), lo), hi))
            };
            let packed = pack32(cv(v0), cv(v1), cv(v2), cv(v3));
            _mm256_storeu_si256(qs.as_mut_ptr().add(b * QK8_0) as *mut __m256i, packed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{BlockQ8K, BlockQ8_0};
    use candle_core::quantized::GgmlType;

    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    fn inputs() -> Vec<Vec<f32>> {
        let mut r = rng(7);
        let mut v = Vec::new();
        for scale in [1.0f32, 1e-3, 300.0] {
            v.push((0..QK_K * 4).map(|_| r() * scale).collect::<Vec<_>>());
        }
        // ties and edge values: exact .5 multiples after scaling, zeros, repeated +-max
        let mut t: Vec<f32> = (0..QK_K * 2).map(|i| ((i as f32) - 256.0) * 0.5).collect();
        t[3] = 127.0;
        t[4] = -127.0;
        v.push(t);
        let mut z = vec![0f32; QK_K * 2];
        z[300] = -2.5;
        z[301] = 2.5;
        v.push(z);
        v
    }

    #[test]
    fn q8k_matches_candle_all_isas() {
        for x in inputs() {
            let nb = x.len() / QK_K;
            let mut cand = vec![BlockQ8K::zeros(); nb];
            BlockQ8K::from_float(&x, &mut cand);
            // candle's BlockQ8K is repr(C) { d: f32, qs: [i8; 256], bsums: [i16; 16] } (292 B)
            let bytes = unsafe { std::slice::from_raw_parts(cand.as_ptr() as *const u8, nb * 292) };
            for isa in Isa::available() {
                let mut qs = vec![0i8; x.len()];
                let mut d = vec![0f32; nb];
                let mut bs = vec![0i16; nb * 16];
                quantize_q8k(isa, &x, &mut qs, &mut d, &mut bs);
                for b in 0..nb {
                    let blk = &bytes[b * 292..(b + 1) * 292];
                    assert_eq!(d[b].to_le_bytes(), blk[0..4], "{isa:?} d block {b}");
                    for i in 0..QK_K {
                        assert_eq!(qs[b * QK_K + i] as u8, blk[4 + i], "{isa:?} q {b} {i}");
                    }
                    for j in 0..16 {
                        assert_eq!(bs[b * 16 + j].to_le_bytes(), blk[260 + 2 * j..262 + 2 * j], "{isa:?} bsum");
                    }
                }
            }
        }
    }

    #[test]
    fn q8_0_matches_candle_all_isas() {
        for x in inputs() {
            let nb = x.len() / QK8_0;
            let mut cand = vec![BlockQ8_0::zeros(); nb];
            BlockQ8_0::from_float(&x, &mut cand);
            let bytes = unsafe { std::slice::from_raw_parts(cand.as_ptr() as *const u8, nb * 34) };
            for isa in Isa::available() {
                let mut qs = vec![0i8; x.len()];
                let mut d = vec![0f32; nb];
                quantize_q8_0(isa, &x, &mut qs, &mut d);
                for b in 0..nb {
                    let blk = &bytes[b * 34..(b + 1) * 34];
                    assert_eq!(d[b], f16::from_le_bytes([blk[0], blk[1]]).to_f32(), "{isa:?} d {b}");
                    for i in 0..QK8_0 {
                        assert_eq!(qs[b * QK8_0 + i] as u8, blk[2 + i], "{isa:?} q {b} {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn round_away_matches_std() {
        #[cfg(target_arch = "x86_64")]
        if Isa::Avx2.is_available() {
            use std::arch::x86_64::*;
            let mut vals: Vec<f32> = vec![0.5, -0.5, 1.5, -1.5, 2.5, 0.49999997, -0.49999997, 126.5, -127.5, 0.0, -0.0];
            let mut r = rng(3);
            vals.extend((0..10000).map(|_| r() * 130.0));
            vals.extend((0..1000).map(|i| (i as f32 - 500.0) * 0.25));
            for v in vals.chunks(8) {
                if v.len() < 8 {
                    break;
                }
                let mut o = [0f32; 8];
                unsafe {
                    #[target_feature(enable = "avx2")]
                    unsafe fn go(v: &[f32], o: &mut [f32; 8]) {
                        _mm256_storeu_ps(o.as_mut_ptr(), super::x86::round_away8_pub(_mm256_loadu_ps(v.as_ptr())));
                    }
                    go(v, &mut o);
                }
                for i in 0..8 {
                    assert_eq!(o[i], v[i].round(), "{}", v[i]);
                }
            }
        }
    }
}
