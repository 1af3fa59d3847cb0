//! Decode attention: one query token (all heads) against the first `len` positions of a
//! preallocated KV cache laid out `[kv_heads][capacity][head_dim]` (f16 or f32), read in place.
//!
//! `out[h] = softmax(q[h] . K[g(h), :len]^T * scale) . V[g(h), :len]` with `g(h) = h / (heads /
//! kv_heads)` (grouped-query attention; LLaMA-13B has kv_heads == heads). Scores, softmax and
//! the weighted sum are f32. Heads are split over the kernel pool (contiguous ranges, so each
//! thread reads contiguous K/V slabs).

use half::f16;

use candle_core::{bail, Result};

use super::pool::{self, SendPtr};
use super::Isa;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDType {
    F16,
    F32,
}

/// The cache's element data.
#[derive(Clone, Copy)]
pub enum KvData<'a> {
    F16(&'a [f16]),
    F32(&'a [f32]),
}

/// One layer's K or V buffer: `[kv_heads][capacity][head_dim]`, row-major.
#[derive(Clone, Copy)]
pub struct KvView<'a> {
    pub data: KvData<'a>,
    pub kv_heads: usize,
    pub capacity: usize,
    pub head_dim: usize,
}

impl<'a> KvView<'a> {
    pub fn f16(data: &'a [f16], kv_heads: usize, capacity: usize, head_dim: usize) -> Self {
        Self { data: KvData::F16(data), kv_heads, capacity, head_dim }
    }
    pub fn f32(data: &'a [f32], kv_heads: usize, capacity: usize, head_dim: usize) -> Self {
        Self { data: KvData::F32(data), kv_heads, capacity, head_dim }
    }
    pub fn dtype(&self) -> KvDType {
        match self.data {
            KvData::F16(_) => KvDType::F16,
            KvData::F32(_) => KvDType::F32,
        }
    }
    fn len(&self) -> usize {
        match self.data {
            KvData::F16(d) => d.len(),
            KvData::F32(d) => d.len(),
        }
    }
    /// Element pointer of position 0 of kv head `g`, and the element size.
    fn head_ptr(&self, g: usize) -> (*const u8, usize) {
        let off = g * self.capacity * self.head_dim;
        match self.data {
            KvData::F16(d) => (d[off..].as_ptr() as *const u8, 2),
            KvData::F32(d) => (d[off..].as_ptr() as *const u8, 4),
        }
    }
}

/// `out` (heads x head_dim) for query `q` (heads x head_dim) over the first `len` positions.
pub fn attention_decode(
    q: &[f32],
    heads: usize,
    k: &KvView,
    v: &KvView,
    len: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    attention_decode_isa(Isa::detect(), pool::global(), q, heads, k, v, len, scale, out)
}

#[allow(clippy::too_many_arguments)]
pub fn attention_decode_isa(
    isa: Isa,
    pool: &pool::Pool,
    q: &[f32],
    heads: usize,
    k: &KvView,
    v: &KvView,
    len: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    if !isa.is_available() {
        bail!("{isa:?} is not available on this CPU")
    }
    let hd = k.head_dim;
    if k.kv_heads != v.kv_heads || k.capacity != v.capacity || v.head_dim != hd || k.dtype() != v.dtype() {
        bail!("attention: K and V views differ")
    }
    if k.kv_heads == 0 || heads == 0 || !heads.is_multiple_of(k.kv_heads) {
        bail!("attention: {heads} heads not a multiple of {} kv heads", k.kv_heads)
    }
    if k.len() < k.kv_heads * k.capacity * hd || v.len() < v.kv_heads * v.capacity * hd {
        bail!("attention: cache buffers smaller than kv_heads x capacity x head_dim")
    }
    if len == 0 || len > k.capacity {
        bail!("attention: len {len} must be in 1..={}", k.capacity)
    }
    if q.len() != heads * hd || out.len() != heads * hd {
        bail!("attention: q/out must be heads x head_dim = {}", heads * hd)
    }
    let group = heads / k.kv_heads;
    let outp = SendPtr(out.as_mut_ptr());
    let threads = pool.n_threads().min(heads);
    pool.run(|tid| {
        if tid >= threads {
            return;
        }
        let hs = pool::split(heads, threads, tid, 1);
        if hs.is_empty() {
            return;
        }
        let mut scores = vec![0f32; len];
        for h in hs {
            let g = h / group;
            let (kp, es) = k.head_ptr(g);
            let (vp, _) = v.head_ptr(g);
            let qh = &q[h * hd..(h + 1) * hd];
            // SAFETY: head h's output row is written by this part only; `out` has heads x hd.
            let oh = unsafe { std::slice::from_raw_parts_mut(outp.ptr().add(h * hd), hd) };
            // SAFETY: kp/vp point at `capacity * hd >= len * hd` elements of size `es` (checked).
            unsafe { head(isa, qh, kp, vp, es, len, scale, &mut scores, oh) };
        }
    });
    Ok(())
}

/// # Safety
/// `kp`/`vp` must point to at least `len * q.len()` elements of size `es` (2: f16, 4: f32), and
/// `isa` must be available.
#[allow(clippy::too_many_arguments)]
unsafe fn head(
    isa: Isa,
    q: &[f32],
    kp: *const u8,
    vp: *const u8,
    es: usize,
    len: usize,
    scale: f32,
    s: &mut [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && q.len().is_multiple_of(16) {
        return x86::head_avx512(q, kp, vp, es, len, scale, s, out);
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) && q.len().is_multiple_of(8) {
        return x86::head_avx2(q, kp, vp, es, len, scale, s, out);
    }
    let _ = isa;
    head_scalar(q, kp, vp, es, len, scale, s, out)
}

#[inline(always)]
unsafe fn elem(p: *const u8, es: usize, i: usize) -> f32 {
    if es == 2 {
        f16::from_bits((p as *const u16).add(i).read_unaligned()).to_f32()
    } else {
        (p as *const f32).add(i).read_unaligned()
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn head_scalar(
    q: &[f32],
    kp: *const u8,
    vp: *const u8,
    es: usize,
    len: usize,
    scale: f32,
    s: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    let mut max = f32::NEG_INFINITY;
    for (j, sj) in s[..len].iter_mut().enumerate() {
        let mut acc = 0f32;
        for (i, &qi) in q.iter().enumerate() {
            acc += qi * elem(kp, es, j * hd + i);
        }
        *sj = acc * scale;
        max = max.max(*sj);
    }
    let mut sum = 0f32;
    for sj in s[..len].iter_mut() {
        *sj = (*sj - max).exp();
        sum += *sj;
    }
    out.fill(0.0);
    for (j, &p) in s[..len].iter().enumerate() {
        for (i, o) in out.iter_mut().enumerate() {
            *o += p * elem(vp, es, j * hd + i);
        }
    }
    let inv = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::x86util::*;
    use std::arch::x86_64::*;

    /// exp(x) for x <= 0 (softmax after max subtraction): Cephes-style range reduction
    /// x = n ln2 + r and a degree-6 polynomial; relative error ~2 ulp; x < -87.3 gives 0.
    #[inline(always)]
    unsafe fn exp256(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.3));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        // r = x - n ln2 in two steps (Cody-Waite)
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666_666_5e-1));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        let r2 = _mm256_mul_ps(r, r);
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(e))
    }

    /// Softmax numerators in place over s[..len]; returns their sum. `max` is the maximum.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn softmax_exp(s: &mut [f32], max: f32) -> f32 {
        let len = s.len();
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut j = 0;
        while j + 8 <= len {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s.as_ptr().add(j)), m));
            _mm256_storeu_ps(s.as_mut_ptr().add(j), e);
            acc = _mm256_add_ps(acc, e);
            j += 8;
        }
        let mut sum = hsum256(acc);
        if j < len {
            let mut tmp = [f32::NEG_INFINITY; 8];
            tmp[..len - j].copy_from_slice(&s[j..]);
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(tmp.as_ptr()), m));
            _mm256_storeu_ps(tmp.as_mut_ptr(), e);
            for (i, v) in tmp[..len - j].iter().enumerate() {
                s[j + i] = *v;
                sum += *v;
            }
        }
        sum
    }

    #[inline(always)]
    unsafe fn load16(p: *const u8, es: usize, i: usize) -> __m512 {
        if es == 2 {
            _mm512_cvtph_ps(_mm256_loadu_si256((p as *const u16).add(i) as *const __m256i))
        } else {
            _mm512_loadu_ps((p as *const f32).add(i))
        }
    }

    #[inline(always)]
    unsafe fn load8(p: *const u8, es: usize, i: usize) -> __m256 {
        if es == 2 {
            _mm256_cvtph_ps(_mm_loadu_si128((p as *const u16).add(i) as *const __m128i))
        } else {
            _mm256_loadu_ps((p as *const f32).add(i))
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub unsafe fn head_avx512(
        q: &[f32],
        kp: *const u8,
        vp: *const u8,
        es: usize,
        len: usize,
        scale: f32,
        s: &mut [f32],
        out: &mut [f32],
    ) {
        let hd = q.len();
        match hd {
            64 => head_avx512_c::<4>(q, kp, vp, es, len, scale, s, out),
            128 => head_avx512_c::<8>(q, kp, vp, es, len, scale, s, out),
            _ => head_avx512_any(q, kp, vp, es, len, scale, s, out),
        }
    }

    /// head_dim = 16 * C with q and the output accumulators held in registers.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn head_avx512_c<const C: usize>(
        q: &[f32],
        kp: *const u8,
        vp: *const u8,
        es: usize,
        len: usize,
        scale: f32,
        s: &mut [f32],
        out: &mut [f32],
    ) {
        let hd = 16 * C;
        let qv: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(q.as_ptr().add(16 * c)));
        let mut max = f32::NEG_INFINITY;
        // 4 positions at a time: independent FMA chains
        let mut j = 0;
        while j + 4 <= len {
            let mut a = [_mm512_setzero_ps(); 4];
            for c in 0..C {
                for (u, au) in a.iter_mut().enumerate() {
                    *au = _mm512_fmadd_ps(qv[c], load16(kp, es, (j + u) * hd + 16 * c), *au);
                }
            }
            for (u, au) in a.iter().enumerate() {
                let v = _mm512_reduce_add_ps(*au) * scale;
                s[j + u] = v;
                max = max.max(v);
            }
            j += 4;
        }
        while j < len {
            let mut a = _mm512_setzero_ps();
            for c in 0..C {
                a = _mm512_fmadd_ps(qv[c], load16(kp, es, j * hd + 16 * c), a);
            }
            let v = _mm512_reduce_add_ps(a) * scale;
            s[j] = v;
            max = max.max(v);
            j += 1;
        }
        let sum = softmax_exp(&mut s[..len], max);
        let mut o = [_mm512_setzero_ps(); C];
        for (j, &p) in s[..len].iter().enumerate() {
            let pv = _mm512_set1_ps(p);
            for c in 0..C {
                o[c] = _mm512_fmadd_ps(pv, load16(vp, es, j * hd + 16 * c), o[c]);
            }
        }
        let inv = _mm512_set1_ps(1.0 / sum);
        for c in 0..C {
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), _mm512_mul_ps(o[c], inv));
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn head_avx512_any(
        q: &[f32],
        kp: *const u8,
        vp: *const u8,
        es: usize,
        len: usize,
        scale: f32,
        s: &mut [f32],
        out: &mut [f32],
    ) {
        let hd = q.len();
        let mut max = f32::NEG_INFINITY;
        for j in 0..len {
            let mut a = _mm512_setzero_ps();
            for c in (0..hd).step_by(16) {
                a = _mm512_fmadd_ps(_mm512_loadu_ps(q.as_ptr().add(c)), load16(kp, es, j * hd + c), a);
            }
            let v = _mm512_reduce_add_ps(a) * scale;
            s[j] = v;
            max = max.max(v);
        }
        let sum = softmax_exp(&mut s[..len], max);
        out.fill(0.0);
        for (j, &p) in s[..len].iter().enumerate() {
            let pv = _mm512_set1_ps(p);
            for c in (0..hd).step_by(16) {
                let o = out.as_mut_ptr().add(c);
                _mm512_storeu_ps(o, _mm512_fmadd_ps(pv, load16(vp, es, j * hd + c), _mm512_loadu_ps(o)));
            }
        }
        let inv = 1.0 / sum;
        for o in out.iter_mut() {
            *o *= inv;
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn head_avx2(
        q: &[f32],
        kp: *const u8,
        vp: *const u8,
        es: usize,
        len: usize,
        scale: f32,
        s: &mut [f32],
        out: &mut [f32],
    ) {
        let hd = q.len();
        let mut max = f32::NEG_INFINITY;
        for j in 0..len {
            let mut a0 = _mm256_setzero_ps();
            let mut a1 = _mm256_setzero_ps();
            let mut c = 0;
            while c + 16 <= hd {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(c)), load8(kp, es, j * hd + c), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(c + 8)), load8(kp, es, j * hd + c + 8), a1);
                c += 16;
            }
            if c < hd {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(c)), load8(kp, es, j * hd + c), a0);
            }
            let v = hsum256(_mm256_add_ps(a0, a1)) * scale;
            s[j] = v;
            max = max.max(v);
        }
        let sum = softmax_exp(&mut s[..len], max);
        out.fill(0.0);
        for (j, &p) in s[..len].iter().enumerate() {
            let pv = _mm256_set1_ps(p);
            for c in (0..hd).step_by(8) {
                let o = out.as_mut_ptr().add(c);
                _mm256_storeu_ps(o, _mm256_fmadd_ps(pv, load8(vp, es, j * hd + c), _mm256_loadu_ps(o)));
            }
        }
        let inv = 1.0 / sum;
        for o in out.iter_mut() {
            *o *= inv;
        }
    }
}
