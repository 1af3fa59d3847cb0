//! Dense f16 / f32 weights x f32 activations (FMA; f16 widened with F16C). Register tiles of
//! `R` rows x `N` tokens: each weight vector loaded (and widened) once per token tile and each
//! activation vector once per row tile. f32 accumulation.

use std::ops::Range;

use half::f16;

use super::formats::{CpuWeight, Format};
use super::pool::SendPtr;
use super::Isa;

/// (row alignment of chunks, token tile) for `isa`.
pub fn tiles(isa: Isa, _format: Format, _n: usize) -> (usize, usize) {
    match isa {
        Isa::Avx512 => (4, 4),
        Isa::Avx2 => (4, 2),
        _ => (4, 4),
    }
}

/// `out[(t0 + t) * w.rows() + r] = W[r] . xs[t]` for `r` in `rows`, `t` < `xs.len()`.
pub(crate) fn rows(isa: Isa, w: &CpuWeight, rows: Range<usize>, xs: &[&[f32]], t0: usize, out: SendPtr<f32>) {
    assert!(matches!(w.format(), Format::F16 | Format::F32) && rows.end <= w.rows());
    for x in xs {
        assert_eq!(x.len(), w.cols());
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: ISA availability checked by the driver; lengths asserted above.
        Isa::Avx512 => unsafe { x86::rows_avx512(w, rows, xs, t0, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::rows_avx2(w, rows, xs, t0, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is baseline on aarch64; lengths asserted above.
        Isa::Neon => unsafe { neon::rows_neon(w, rows, xs, t0, out) },
        _ => rows_scalar(w, rows, xs, t0, out),
    }
}

/// Widens `cols` weights of row `r` starting at `k` into `buf`.
fn widen(w: &CpuWeight, r: usize, k: usize, buf: &mut [f32]) {
    let row = w.row(r);
    match w.format() {
        Format::F16 => {
            for (i, o) in buf.iter_mut().enumerate() {
                let j = 2 * (k + i);
                *o = f16::from_le_bytes([row[j], row[j + 1]]).to_f32();
            }
        }
        _ => {
            for (i, o) in buf.iter_mut().enumerate() {
                let j = 4 * (k + i);
                *o = f32::from_le_bytes([row[j], row[j + 1], row[j + 2], row[j + 3]]);
            }
        }
    }
}

pub(crate) fn rows_scalar(w: &CpuWeight, rows: Range<usize>, xs: &[&[f32]], t0: usize, out: SendPtr<f32>) {
    const KC: usize = 256;
    let stride = w.rows();
    let cols = w.cols();
    let mut buf = [0f32; KC];
    for r in rows {
        let mut acc = vec![[0f32; 8]; xs.len()];
        let mut k = 0;
        while k < cols {
            let kc = (cols - k).min(KC);
            widen(w, r, k, &mut buf[..kc]);
            for (t, x) in xs.iter().enumerate() {
                let x = &x[k..k + kc];
                let a = &mut acc[t];
                let mut i = 0;
                while i + 8 <= kc {
                    for l in 0..8 {
                        a[l] += buf[i + l] * x[i + l];
                    }
                    i += 8;
                }
                while i < kc {
                    a[0] += buf[i] * x[i];
                    i += 1;
                }
            }
            k += kc;
        }
        for (t, a) in acc.iter().enumerate() {
            let v = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
            // SAFETY: each (row, token) has one writer; `out` sized by the driver.
            unsafe { *out.0.add((t0 + t) * stride + r) = v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::x86util::*;
    use super::*;
    use std::arch::x86_64::*;

    /// Runs `$f::<R, N, F16>` for run-time R in {1, 4} and N in 1..=4.
    macro_rules! dispatch_rn {
        ($r:expr, $n:expr, $f16:expr, $f:ident, $($args:expr),*) => {
            match ($r, $n, $f16) {
                (4, 1, true) => $f::<4, 1, true>($($args),*),
                (4, 2, true) => $f::<4, 2, true>($($args),*),
                (4, 3, true) => $f::<4, 3, true>($($args),*),
                (4, 4, true) => $f::<4, 4, true>($($args),*),
                (1, 1, true) => $f::<1, 1, true>($($args),*),
                (1, 2, true) => $f::<1, 2, true>($($args),*),
                (1, 3, true) => $f::<1, 3, true>($($args),*),
                (1, 4, true) => $f::<1, 4, true>($($args),*),
                (4, 1, false) => $f::<4, 1, false>($($args),*),
                (4, 2, false) => $f::<4, 2, false>($($args),*),
                (4, 3, false) => $f::<4, 3, false>($($args),*),
                (4, 4, false) => $f::<4, 4, false>($($args),*),
                (1, 1, false) => $f::<1, 1, false>($($args),*),
                (1, 2, false) => $f::<1, 2, false>($($args),*),
                (1, 3, false) => $f::<1, 3, false>($($args),*),
                (1, 4, false) => $f::<1, 4, false>($($args),*),
                _ => unreachable!(),
            }
        };
    }

    fn drive(
        w: &CpuWeight,
        rows: Range<usize>,
        xs: &[&[f32]],
        t0: usize,
        out: SendPtr<f32>,
        tile_n: usize,
        mut f: impl FnMut(usize, usize, usize, &[&[f32]], usize),
    ) {
        let _ = out;
        let mut t = 0;
        while t < xs.len() {
            let n = (xs.len() - t).min(tile_n);
            let mut r = rows.start;
            while r + 4 <= rows.end {
                f(4, n, r, &xs[t..t + n], t0 + t);
                r += 4;
            }
            while r < rows.end {
                f(1, n, r, &xs[t..t + n], t0 + t);
                r += 1;
            }
            t += n;
        }
        let _ = w;
    }

    pub unsafe fn rows_avx512(w: &CpuWeight, rows: Range<usize>, xs: &[&[f32]], t0: usize, out: SendPtr<f32>) {
        let f16w = w.format() == Format::F16;
        drive(w, rows, xs, t0, out, 4, |rr, n, r, xs, t| dispatch_rn!(rr, n, f16w, tile_avx512, w, r, xs, t, out));
    }

    pub unsafe fn rows_avx2(w: &CpuWeight, rows: Range<usize>, xs: &[&[f32]], t0: usize, out: SendPtr<f32>) {
        let f16w = w.format() == Format::F16;
        drive(w, rows, xs, t0, out, 2, |rr, n, r, xs, t| dispatch_rn!(rr, n, f16w, tile_avx2, w, r, xs, t, out));
    }

    #[inline(always)]
    unsafe fn load16<const F16: bool>(p: *const u8, k: usize) -> __m512 {
        if F16 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.add(2 * k) as *const __m256i))
        } else {
            _mm512_loadu_ps(p.add(4 * k) as *const f32)
        }
    }

    #[inline(always)]
    unsafe fn load8<const F16: bool>(p: *const u8, k: usize) -> __m256 {
        if F16 {
            _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * k) as *const __m128i))
        } else {
            _mm256_loadu_ps(p.add(4 * k) as *const f32)
        }
    }

    #[inline(always)]
    unsafe fn scalar_w<const F16: bool>(p: *const u8, k: usize) -> f32 {
        if F16 {
            f16_to_f32((p.add(2 * k) as *const u16).read_unaligned())
        } else {
            (p.add(4 * k) as *const f32).read_unaligned()
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn tile_avx512<const R: usize, const N: usize, const F16: bool>(
        w: &CpuWeight,
        r0: usize,
        xs: &[&[f32]],
        t0: usize,
        out: SendPtr<f32>,
    ) {
        let cols = w.cols();
        let rb = w.row_bytes();
        let base = w.bytes().as_ptr();
        let wp: [*const u8; R] = std::array::from_fn(|i| base.add((r0 + i) * rb));
        let xp: [*const f32; N] = std::array::from_fn(|t| xs[t].as_ptr());
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        let k16 = cols / 16 * 16;
        let mut k = 0;
        let ahead = 4 * rb;
        while k < k16 {
            if R == 4 && (k * if F16 { 2 } else { 4 }) % 64 == 0 {
                // The same line of the row four on (the next group's): more lines in flight
                // than the hardware prefetcher keeps for these interleaved streams (see q4k).
                // `wrapping_add`: past the last rows it points beyond the weights, where a
                // prefetch is harmless but `add` is not.
                for p in wp {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead + k * if F16 { 2 } else { 4 }) as *const i8);
                }
            }
            let wv: [__m512; R] = std::array::from_fn(|i| load16::<F16>(wp[i], k));
            for t in 0..N {
                let xv = _mm512_loadu_ps(xp[t].add(k));
                for i in 0..R {
                    acc[i][t] = _mm512_fmadd_ps(wv[i], xv, acc[i][t]);
                }
            }
            k += 16;
        }
        let stride = w.rows();
        for i in 0..R {
            for t in 0..N {
                let mut v = _mm512_reduce_add_ps(acc[i][t]);
                for kk in k16..cols {
                    v += scalar_w::<F16>(wp[i], kk) * *xp[t].add(kk);
                }
                *out.0.add((t0 + t) * stride + r0 + i) = v;
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_avx2<const R: usize, const N: usize, const F16: bool>(
        w: &CpuWeight,
        r0: usize,
        xs: &[&[f32]],
        t0: usize,
        out: SendPtr<f32>,
    ) {
        let cols = w.cols();
        let rb = w.row_bytes();
        let base = w.bytes().as_ptr();
        let wp: [*const u8; R] = std::array::from_fn(|i| base.add((r0 + i) * rb));
        let xp: [*const f32; N] = std::array::from_fn(|t| xs[t].as_ptr());
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        let k8 = cols / 8 * 8;
        let mut k = 0;
        while k < k8 {
            let wv: [__m256; R] = std::array::from_fn(|i| load8::<F16>(wp[i], k));
            for t in 0..N {
                let xv = _mm256_loadu_ps(xp[t].add(k));
                for i in 0..R {
                    acc[i][t] = _mm256_fmadd_ps(wv[i], xv, acc[i][t]);
                }
            }
            k += 8;
        }
        let stride = w.rows();
        for i in 0..R {
            for t in 0..N {
                let mut v = hsum256(acc[i][t]);
                for kk in k8..cols {
                    v += scalar_w::<F16>(wp[i], kk) * *xp[t].add(kk);
                }
                *out.0.add((t0 + t) * stride + r0 + i) = v;
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::*;
    use std::arch::aarch64::*;

    pub unsafe fn rows_neon(w: &CpuWeight, rows: Range<usize>, xs: &[&[f32]], t0: usize, out: SendPtr<f32>) {
        const KC: usize = 256;
        let stride = w.rows();
        let cols = w.cols();
        let mut buf = [0f32; KC];
        for r in rows {
            let mut acc: Vec<float32x4_t> = vec![vdupq_n_f32(0.0); xs.len()];
            let mut tail = vec![0f32; xs.len()];
            let mut k = 0;
            while k < cols {
                let kc = (cols - k).min(KC);
                widen(w, r, k, &mut buf[..kc]);
                for (t, x) in xs.iter().enumerate() {
                    let xp = x.as_ptr().add(k);
                    let mut a = acc[t];
                    let mut i = 0;
                    while i + 4 <= kc {
                        a = vfmaq_f32(a, vld1q_f32(buf.as_ptr().add(i)), vld1q_f32(xp.add(i)));
                        i += 4;
                    }
                    acc[t] = a;
                    while i < kc {
                        tail[t] += buf[i] * *xp.add(i);
                        i += 1;
                    }
                }
                k += kc;
            }
            for t in 0..xs.len() {
                *out.0.add((t0 + t) * stride + r) = vaddvq_f32(acc[t]) + tail[t];
            }
        }
    }
}

/// Batched (prefill) dense path, AVX-512 (its own file: a GEMM micro-kernel with its packing,
/// apart from the one-token kernels above).
pub mod batched;

/// Default token count for [`batched`].
pub const BATCH_MIN: usize = 24;
