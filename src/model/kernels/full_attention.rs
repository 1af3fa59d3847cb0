//! Attention of many queries at once: unmasked for the encoders (the ViT's self-attention over
//! its image tokens, the Q-Former's self- and cross-attention) and causal for the LLM's prefill
//! (query i at position `offset + i` sees keys `0 ..= offset + i`, read in place from the KV
//! cache, f16 or f32, grouped-query heads allowed). Per (batch, head):
//! `out = softmax(q kᵀ · scale) v`, the scores scaled after the product and normalised in f32
//! before the product with `v`, as transformers' eager attention does.
//!
//! q, k and v are read in place ([`Rows`]: a row stride, a head stride and a column offset, so
//! the thirds of a fused qkv projection and the cache's `[kv_heads][capacity][hd]` buffers need
//! no copies) and the result is written with the heads merged, `(batch · tq, heads · hd)`, as
//! the output projection takes it. candle's path copied q, k and v into head-major tensors, ran its batched gemm on AVX2
//! (its kernels have no AVX-512) with one thread per head product, a softmax calling libm's
//! `expf`, and a copy to merge the heads: 0.4 s of ViT-g's 3.4 s image step for 2 % of its
//! arithmetic.
//!
//! AVX-512 only ([`applies`]; candle's attention runs elsewhere). The (batch, head) pairs are
//! split over the kernel pool; a thread transposes its head's K into `[hd][tk]` and pads V's
//! rows to whole vectors (both in L2 for hundreds of keys), then for every 4 queries computes
//! the 4 x tk scores (4 queries x 4 key vectors per step: 16 FMAs per 8 loads), their softmax,
//! and the 4 x hd product with V (4 queries x up to 6 vectors of V: 24 FMAs per 10 loads).

use std::cell::RefCell;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape};
use half::f16;

use super::pool::{self, SendPtr};
use super::Isa;

/// Queries per register tile.
const QT: usize = 4;
/// Widest head the kernel takes (8 vectors of 16).
pub const MAX_HEAD_DIM: usize = 128;

/// The elements behind [`Rows`]: queries are f32, keys and values f32 or f16 (a KV cache).
#[derive(Clone, Copy)]
pub enum Elems<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl Elems<'_> {
    fn len(&self) -> usize {
        match self {
            Elems::F32(d) => d.len(),
            Elems::F16(d) => d.len(),
        }
    }
}

/// One of q, k, v: token `n` (batch-major: `b * t + i`), head `h`, element `c` is
/// `data[n * stride + h * head_stride + offset + c]`.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub data: Elems<'a>,
    pub stride: usize,
    pub head_stride: usize,
    pub offset: usize,
}

impl<'a> Rows<'a> {
    /// Token-major rows of all heads side by side (a projection's output).
    pub fn token_major(data: &'a [f32], stride: usize, head_dim: usize) -> Self {
        Rows { data: Elems::F32(data), stride, head_stride: head_dim, offset: 0 }
    }
}

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    /// Queries per batch item.
    pub tq: usize,
    /// Keys (and values) per batch item.
    pub tk: usize,
    pub heads: usize,
    /// Heads of k and v (grouped-query attention: head h reads kv head h / (heads / kv_heads)).
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Causal: query i sees keys `0 ..= offset + i` (None: every key).
    pub causal_offset: Option<usize>,
}

/// Whether [`full_attention`] runs these sizes with `isa`.
pub fn applies(isa: Isa, head_dim: usize) -> bool {
    isa == Isa::Avx512 && isa.is_available() && (1..=MAX_HEAD_DIM).contains(&head_dim)
}

impl Rows<'_> {
    /// Checks that `tokens` rows of `heads` heads of `hd` values lie inside the data.
    fn check(&self, what: &str, tokens: usize, heads: usize, hd: usize) -> Result<()> {
        let need = match (tokens.checked_sub(1), heads.checked_sub(1)) {
            (Some(t), Some(h)) => t
                .checked_mul(self.stride)
                .and_then(|x| x.checked_add(h.checked_mul(self.head_stride)?))
                .and_then(|x| x.checked_add(self.offset + hd)),
            _ => Some(0),
        };
        if need.is_none_or(|n| n > self.data.len()) {
            bail!(
                "attention: {what} ({tokens} rows of {heads} heads of {hd} at strides {}/{}) lies outside its data",
                self.stride,
                self.head_stride
            )
        }
        Ok(())
    }

    /// Index of token `n`, head `h`, element 0.
    #[inline(always)]
    fn at(&self, n: usize, h: usize) -> usize {
        n * self.stride + h * self.head_stride + self.offset
    }
}

/// `out[(b * tq + i) * heads * hd + h * hd + c]` = attention of query `i` of batch item `b`,
/// head `h`, over that item's `tk` keys, on every thread of `pool`. Refuses sizes the data do
/// not hold and an ISA or head size [`applies`] rejects.
#[allow(clippy::too_many_arguments)]
pub fn full_attention(
    isa: Isa,
    pool: &pool::Pool,
    q: Rows,
    k: Rows,
    v: Rows,
    dims: Dims,
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    let Dims { batch, tq, tk, heads, kv_heads, head_dim: hd, .. } = dims;
    if !applies(isa, hd) {
        bail!("attention: no kernel for head size {hd} with {isa:?}")
    }
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        bail!("attention: {heads} query heads cannot share {kv_heads} key/value heads")
    }
    let Elems::F32(_) = q.data else { bail!("attention: queries must be f32") };
    let width = heads * hd;
    q.check("q", batch * tq, heads, hd)?;
    k.check("k", batch * tk, kv_heads, hd)?;
    v.check("v", batch * tk, kv_heads, hd)?;
    if out.len() != batch * tq * width {
        bail!("attention: output holds {} values, not {}", out.len(), batch * tq * width)
    }
    if tk == 0 || tq == 0 || batch == 0 || heads == 0 {
        out.fill(0.0);
        return Ok(());
    }
    let dst = SendPtr(out.as_mut_ptr());
    let slabs = pool::Slabs::new(batch * heads, pool.n_threads(), 1, 1);
    pool.run(|tid| {
        slabs.for_each(tid, |jobs| {
            for bh in jobs {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `applies` checked that this CPU has AVX-512; the rows of q, k, v were
                // checked against their data above, `out` holds batch x tq x width values, and
                // each (batch, head) pair writes only its own columns of its own rows.
                unsafe {
                    x86::head(q, k, v, dims, bh / heads, bh % heads, scale, dst.ptr())
                };
                #[cfg(not(target_arch = "x86_64"))]
                {
                    let _ = (bh, &q, &k, &v, scale, &dst);
                    unreachable!("full attention is x86-64 only");
                }
            }
        })
    });
    Ok(())
}

/// A thread's scratch, reused across heads and calls: K transposed, V padded, 4 rows of scores.
#[derive(Default)]
struct Scratch {
    kt: Vec<f32>,
    vp: Vec<f32>,
    s: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Zeros standing in for the queries past the last in a 4-query tile.
    static ZEROS: [f32; MAX_HEAD_DIM] = [0.0; MAX_HEAD_DIM];

    /// e^x for x <= 0 (scores after subtracting their maximum): Cephes' range reduction
    /// x = n ln 2 + r and its degree-6 polynomial, as the decode attention's `exp256`.
    #[inline(always)]
    unsafe fn exp512(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.3));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.398_199_9e-3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.333_452e-3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166_579_6e-2));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666_666_5e-1));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5));
        let r2 = _mm512_mul_ps(r, r);
        let y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
        let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)));
        _mm512_mul_ps(y, _mm512_castsi512_ps(e))
    }

    /// Mask of the first `n` (<= 16) lanes.
    #[inline(always)]
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xFFFF
        } else {
            (1u16 << n) - 1
        }
    }

    /// Scores of the 4 queries `qp` against key vectors `0..NV` of `kt` (`[hd][tkp]`, from
    /// column `j0`), scaled, into `s[r * tkp + j0 ..]`.
    #[inline(always)]
    unsafe fn scores<const NV: usize>(
        qp: [*const f32; QT],
        kt: *const f32,
        tkp: usize,
        hd: usize,
        j0: usize,
        scale: __m512,
        s: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; QT];
        for c in 0..hd {
            let row = kt.add(c * tkp + j0);
            let kv: [__m512; NV] = std::array::from_fn(|u| _mm512_loadu_ps(row.add(16 * u)));
            for r in 0..QT {
                let qb = _mm512_set1_ps(*qp[r].add(c));
                for u in 0..NV {
                    acc[r][u] = _mm512_fmadd_ps(kv[u], qb, acc[r][u]);
                }
            }
        }
        for r in 0..QT {
            for u in 0..NV {
                _mm512_storeu_ps(s.add(r * tkp + j0 + 16 * u), _mm512_mul_ps(acc[r][u], scale));
            }
        }
    }

    /// Softmax over `s[..tk]` in place.
    #[inline(always)]
    unsafe fn softmax(s: *mut f32, tk: usize) {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut j = 0;
        while j < tk {
            let x = _mm512_maskz_loadu_ps(lanes(tk - j), s.add(j));
            m = _mm512_mask_max_ps(m, lanes(tk - j), m, x);
            j += 16;
        }
        let m = _mm512_set1_ps(_mm512_reduce_max_ps(m));
        let mut sum = _mm512_setzero_ps();
        j = 0;
        while j < tk {
            let k = lanes(tk - j);
            let e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s.add(j)), m));
            _mm512_mask_storeu_ps(s.add(j), k, e);
            sum = _mm512_mask_add_ps(sum, k, sum, e);
            j += 16;
        }
        let sum = _mm512_set1_ps(_mm512_reduce_add_ps(sum));
        j = 0;
        while j < tk {
            let k = lanes(tk - j);
            _mm512_mask_storeu_ps(s.add(j), k, _mm512_div_ps(_mm512_maskz_loadu_ps(k, s.add(j)), sum));
            j += 16;
        }
    }

    /// `out rows += P · V` for vectors `u0 .. u0 + NV` of the head: the 4 probability rows
    /// `s` (stride `tkp`) against `vp` (`[tk][hdp]`), stored to the `rows` real queries' output
    /// rows `o[r]`, the last vector masked to the head's `hd` columns.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn pv<const NV: usize>(
        s: *const f32,
        tkp: usize,
        vp: *const f32,
        hdp: usize,
        tk: usize,
        u0: usize,
        hd: usize,
        o: [*mut f32; QT],
        rows: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; QT];
        for j in 0..tk {
            let row = vp.add(j * hdp + 16 * u0);
            let vv: [__m512; NV] = std::array::from_fn(|u| _mm512_loadu_ps(row.add(16 * u)));
            for r in 0..QT {
                let pb = _mm512_set1_ps(*s.add(r * tkp + j));
                for u in 0..NV {
                    acc[r][u] = _mm512_fmadd_ps(vv[u], pb, acc[r][u]);
                }
            }
        }
        for r in 0..rows {
            for u in 0..NV {
                let c = 16 * (u0 + u);
                _mm512_mask_storeu_ps(o[r].add(c), lanes(hd - c), acc[r][u]);
            }
        }
    }

    /// Keys `first .. first + used` of kv head `g` transposed into `kt` (`[hd][tkp]`, zero
    /// where no key is written), 16 keys x 16 columns at a time through registers: one element
    /// at a time, with a store 1 KB away from the last, this was a sixth of the attention.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn keys_transposed(
        d: &[f32],
        k: Rows,
        first: usize,
        g: usize,
        used: usize,
        hd: usize,
        tkp: usize,
        kt: &mut [f32],
    ) {
        assert!(hd <= MAX_HEAD_DIM && used <= tkp && kt.len() >= hd * tkp);
        let mut j0 = 0;
        while j0 < used {
            let nj = (used - j0).min(16);
            let rows: [&[f32]; 16] = std::array::from_fn(|i| {
                if i < nj {
                    let ki = k.at(first + j0 + i, g);
                    &d[ki..ki + hd]
                } else {
                    &ZEROS[..hd]
                }
            });
            let mut c0 = 0;
            while c0 < hd {
                let w = (hd - c0).min(16);
                let mut r: [__m512; 16] =
                    std::array::from_fn(|i| _mm512_maskz_loadu_ps(lanes(w), rows[i].as_ptr().add(c0)));
                super::super::dense::batched::x86b::transpose16(&mut r);
                for (c, rc) in r.iter().enumerate().take(w) {
                    // (c0 + c) * tkp + j0 + 16 <= hd * tkp: j0 is a multiple of 16 below tkp.
                    _mm512_storeu_ps(kt.as_mut_ptr().add((c0 + c) * tkp + j0), *rc);
                }
                c0 += 16;
            }
            j0 += 16;
        }
    }

    /// Attention of batch item `b`, head `h`; writes that head's columns of the item's rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn head(q: Rows, k: Rows, v: Rows, dims: Dims, b: usize, h: usize, scale: f32, out: *mut f32) {
        let Dims { tq, tk, heads, kv_heads, head_dim: hd, causal_offset, .. } = dims;
        let g = h / (heads / kv_heads);
        let Elems::F32(qd) = q.data else { unreachable!("full_attention checked that q is f32") };
        let tkp = tk.next_multiple_of(16);
        let hdp = hd.next_multiple_of(16);
        let width = heads * hd;
        SCRATCH.with(|scratch| {
            let Scratch { kt, vp, s } = &mut *scratch.borrow_mut();
            kt.clear();
            kt.resize(hd * tkp, 0.0);
            vp.clear();
            vp.resize(tk * hdp, 0.0);
            s.clear();
            s.resize(QT * tkp, 0.0);
            // Keys past the last query's causal limit are never read.
            let used = causal_offset.map_or(tk, |o| (o + tq).min(tk));
            match k.data {
                Elems::F32(d) => keys_transposed(d, k, b * tk, g, used, hd, tkp, kt),
                Elems::F16(d) => {
                    for j in 0..used {
                        let ki = k.at(b * tk + j, g);
                        d[ki..ki + hd].iter().enumerate().for_each(|(c, x)| kt[c * tkp + j] = x.to_f32());
                    }
                }
            }
            for j in 0..used {
                let vi = v.at(b * tk + j, g);
                let row = &mut vp[j * hdp..j * hdp + hd];
                match v.data {
                    Elems::F32(d) => row.copy_from_slice(&d[vi..vi + hd]),
                    Elems::F16(d) => row.iter_mut().zip(&d[vi..vi + hd]).for_each(|(o, x)| *o = x.to_f32()),
                }
            }
            let scale = _mm512_set1_ps(scale);
            let kv_vectors = tkp / 16;
            let hd_vectors = hdp / 16;
            let mut i0 = 0;
            while i0 < tq {
                let rows = (tq - i0).min(QT);
                let qp: [*const f32; QT] = std::array::from_fn(|r| {
                    if r < rows {
                        qd.as_ptr().add(q.at(b * tq + i0 + r, h))
                    } else {
                        ZEROS.as_ptr()
                    }
                });
                // Keys row r sees: all, or up to its causal limit; the tile reads up to its
                // last row's.
                let limit = |r: usize| causal_offset.map_or(tk, |o| (o + i0 + r + 1).min(tk));
                let last = limit(rows - 1);
                let kv_vectors = kv_vectors.min(last.div_ceil(16));
                let mut u = 0;
                while u < kv_vectors {
                    let nv = (kv_vectors - u).min(4);
                    let args = (qp, kt.as_ptr(), tkp, hd, 16 * u, scale, s.as_mut_ptr());
                    match nv {
                        4 => scores::<4>(args.0, args.1, args.2, args.3, args.4, args.5, args.6),
                        3 => scores::<3>(args.0, args.1, args.2, args.3, args.4, args.5, args.6),
                        2 => scores::<2>(args.0, args.1, args.2, args.3, args.4, args.5, args.6),
                        _ => scores::<1>(args.0, args.1, args.2, args.3, args.4, args.5, args.6),
                    }
                    u += nv;
                }
                for r in 0..rows {
                    let row = s.as_mut_ptr().add(r * tkp);
                    softmax(row, limit(r));
                    // Masked keys weigh nothing in the product with V.
                    std::ptr::write_bytes(row.add(limit(r)), 0, last - limit(r));
                }
                // Rows past the last query keep their scores; pv reads them but stores
                // nothing for them.
                let o: [*mut f32; QT] =
                    std::array::from_fn(|r| out.add((b * tq + i0 + r.min(rows - 1)) * width + h * hd));
                let mut u = 0;
                while u < hd_vectors {
                    let nv = (hd_vectors - u).min(6);
                    let (sp, vpp) = (s.as_ptr(), vp.as_ptr());
                    match nv {
                        6 => pv::<6>(sp, tkp, vpp, hdp, last, u, hd, o, rows),
                        5 => pv::<5>(sp, tkp, vpp, hdp, last, u, hd, o, rows),
                        4 => pv::<4>(sp, tkp, vpp, hdp, last, u, hd, o, rows),
                        3 => pv::<3>(sp, tkp, vpp, hdp, last, u, hd, o, rows),
                        2 => pv::<2>(sp, tkp, vpp, hdp, last, u, hd, o, rows),
                        _ => pv::<1>(sp, tkp, vpp, hdp, last, u, hd, o, rows),
                    }
                    u += nv;
                }
                i0 += rows;
            }
        });
    }
}

/// Attention over three f32 CPU tensors q (b, tq, heads · hd), k and v (b, tk, heads · hd) whose
/// last dimension is contiguous (narrowed thirds of a fused qkv projection qualify):
/// `q.apply_op3_no_bwd(&k, &v, &FullAttention { heads, scale })` → (b, tq, heads · hd).
#[derive(Clone, Copy, Debug)]
pub struct FullAttention {
    pub heads: usize,
    pub scale: f32,
}

/// The rows of a (b, t, width) tensor as [`Rows`], or why not.
fn rows_of<'a>(what: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<(Rows<'a>, (usize, usize, usize))> {
    let CpuStorage::F32(data) = storage else { bail!("attention: {what} must be f32") };
    let (b, t, w) = layout.shape().dims3()?;
    let st = layout.stride();
    // Token n = b * t + i sits `stride` values after token n - 1.
    let stride = if t > 1 {
        st[1]
    } else if b > 1 {
        st[0]
    } else {
        w
    };
    // The last dimension contiguous, (b, t) one run of evenly spaced rows that do not overlap.
    if (w > 1 && st[2] != 1) || (t > 1 && b > 1 && st[0] != t * st[1]) || (b * t > 1 && stride < w) {
        bail!("attention: {what} has strides {st:?}; its rows must be evenly spaced and contiguous")
    }
    let data = data.get(layout.start_offset()..).unwrap_or(&[]);
    Ok((Rows { data: Elems::F32(data), stride, head_stride: 0, offset: 0 }, (b, t, w)))
}

impl CustomOp3 for FullAttention {
    fn name(&self) -> &'static str {
        "ziya-full-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, (b, tq, w)) = rows_of("q", s1, l1)?;
        let (k, kd) = rows_of("k", s2, l2)?;
        let (v, vd) = rows_of("v", s3, l3)?;
        if kd != vd || kd.0 != b || kd.2 != w || self.heads == 0 || !w.is_multiple_of(self.heads) {
            bail!("attention: q {:?}, k {kd:?}, v {vd:?} do not fit {} heads", (b, tq, w), self.heads)
        }
        let hd = w / self.heads;
        // Heads side by side in each row.
        let (mut q, mut k, mut v) = (q, k, v);
        (q.head_stride, k.head_stride, v.head_stride) = (hd, hd, hd);
        let dims =
            Dims { batch: b, tq, tk: kd.1, heads: self.heads, kv_heads: self.heads, head_dim: hd, causal_offset: None };
        let mut out = vec![0f32; b * tq * w];
        full_attention(Isa::detect(), pool::global(), q, k, v, dims, self.scale, &mut out)?;
        Ok((CpuStorage::F32(out), Shape::from((b, tq, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    /// candle's attention on head-major copies, as the models ran before this kernel.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Tensor {
        let split = |x: &Tensor| {
            let (b, t, w) = x.dims3().unwrap();
            x.reshape((b, t, heads, w / heads)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
        };
        let (q, k, v) = (split(q), split(k), split(v));
        let scores = (q.matmul(&k.t().unwrap()).unwrap().to_dtype(DType::F32).unwrap() * scale).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        let o = p.matmul(&v).unwrap();
        let (b, h, t, hd) = o.dims4().unwrap();
        o.transpose(1, 2).unwrap().reshape((b, t, h * hd)).unwrap()
    }

    fn random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn matches_candles_attention_on_fused_and_separate_inputs() {
        if !applies(Isa::Avx512, 64) {
            eprintln!("no AVX-512 here: the full-attention kernel is not used on this CPU");
            return;
        }
        let dev = Device::Cpu;
        // (batch, tq, tk, heads, hd): ViT-g's shape, odd lengths, every vector-count tail of
        // the scores (tk 1..) and of V (hd 8 .. 128), fewer queries than a tile.
        for (i, &(b, tq, tk, heads, hd)) in [
            (1, 257, 257, 2, 88),
            (2, 17, 17, 3, 64),
            (1, 1, 1, 1, 8),
            (2, 5, 33, 2, 40),
            (1, 32, 257, 1, 128),
            (1, 3, 70, 2, 100),
        ]
        .iter()
        .enumerate()
        {
            let w = heads * hd;
            let scale = (hd as f64).powf(-0.5);
            let op = FullAttention { heads, scale: scale as f32 };
            // fused self-attention: q, k, v are thirds of one (b, t, 3w) tensor
            if tq == tk {
                let qkv = Tensor::from_vec(random(b * tq * 3 * w, i as u32 + 1), (b, tq, 3 * w), &dev).unwrap();
                let (q, k, v) =
                    (qkv.narrow(2, 0, w).unwrap(), qkv.narrow(2, w, w).unwrap(), qkv.narrow(2, 2 * w, w).unwrap());
                let ours = q.apply_op3_no_bwd(&k, &v, &op).unwrap();
                let want = reference(&q, &k, &v, heads, scale);
                let diff = (ours - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff < 2e-5, "fused {b}x{tq}x{tk} {heads}x{hd}: max diff {diff}");
            }
            // cross-attention from separate tensors
            let q = Tensor::from_vec(random(b * tq * w, 10 + i as u32), (b, tq, w), &dev).unwrap();
            let k = Tensor::from_vec(random(b * tk * w, 20 + i as u32), (b, tk, w), &dev).unwrap();
            let v = Tensor::from_vec(random(b * tk * w, 30 + i as u32), (b, tk, w), &dev).unwrap();
            let ours = q.apply_op3_no_bwd(&k, &v, &op).unwrap();
            let want = reference(&q, &k, &v, heads, scale);
            let diff = (ours - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 2e-5, "separate {b}x{tq}x{tk} {heads}x{hd}: max diff {diff}");
        }
    }

    #[test]
    fn causal_prefill_over_a_cache_matches_candles_masked_attention() {
        if !applies(Isa::Avx512, 64) {
            eprintln!("no AVX-512 here: the full-attention kernel is not used on this CPU");
            return;
        }
        let dev = Device::Cpu;
        // (heads, kv_heads, n new queries, offset of cached positions, capacity, hd): a first
        // prompt, a turn after cached positions, grouped-query heads, tiles and vectors cut short.
        for (i, &(heads, kv_heads, n, offset, cap, hd)) in
            [(2, 2, 37, 0, 64, 64), (3, 3, 5, 40, 50, 88), (4, 2, 18, 7, 32, 16), (1, 1, 2, 0, 2, 8)].iter().enumerate()
        {
            let len = offset + n;
            let scale = (hd as f64).powf(-0.5);
            let q = Tensor::from_vec(random(heads * n * hd, 40 + i as u32), (1, heads, n, hd), &dev).unwrap();
            let kbuf = random(kv_heads * cap * hd, 50 + i as u32);
            let vbuf = random(kv_heads * cap * hd, 60 + i as u32);
            for kv_f16 in [false, true] {
                let to_t = |b: &[f32]| {
                    let t = Tensor::from_vec(b.to_vec(), (1, kv_heads, cap, hd), &dev).unwrap();
                    if kv_f16 {
                        t.to_dtype(DType::F16).unwrap()
                    } else {
                        t
                    }
                };
                let (kt, vt) = (to_t(&kbuf), to_t(&vbuf));
                // candle: the valid positions in f32, heads repeated, the additive causal mask
                let rep = heads / kv_heads;
                let valid = |t: &Tensor| {
                    let t = t.narrow(2, 0, len).unwrap().to_dtype(DType::F32).unwrap();
                    candle_transformers::utils::repeat_kv(t, rep).unwrap().contiguous().unwrap()
                };
                let mask: Vec<f32> = (0..n)
                    .flat_map(|a| (0..len).map(move |j| if j > offset + a { f32::NEG_INFINITY } else { 0.0 }))
                    .collect();
                let mask = Tensor::from_vec(mask, (n, len), &dev).unwrap();
                let scores = (q.matmul(&valid(&kt).t().unwrap()).unwrap() * scale).unwrap();
                let p = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask).unwrap()).unwrap();
                let want = p.matmul(&valid(&vt)).unwrap().transpose(1, 2).unwrap().reshape((1, n, heads * hd)).unwrap();
                let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();

                let qv = q.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let (k16, v16): (Vec<f16>, Vec<f16>) = (
                    kbuf.iter().map(|&x| f16::from_f32(x)).collect(),
                    vbuf.iter().map(|&x| f16::from_f32(x)).collect(),
                );
                let (kd, vd) =
                    if kv_f16 { (Elems::F16(&k16), Elems::F16(&v16)) } else { (Elems::F32(&kbuf), Elems::F32(&vbuf)) };
                let rows = |data, head_stride| Rows { data, stride: hd, head_stride, offset: 0 };
                let dims =
                    Dims { batch: 1, tq: n, tk: len, heads, kv_heads, head_dim: hd, causal_offset: Some(offset) };
                let mut out = vec![0f32; n * heads * hd];
                let (qr, kr, vr) = (rows(Elems::F32(&qv), n * hd), rows(kd, cap * hd), rows(vd, cap * hd));
                full_attention(Isa::Avx512, pool::global(), qr, kr, vr, dims, scale as f32, &mut out).unwrap();
                let diff = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(diff < 2e-5, "{heads}/{kv_heads} heads, {n} after {offset}, f16 kv {kv_f16}: max diff {diff}");
            }
        }
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let dev = Device::Cpu;
        let t = |shape: (usize, usize, usize)| Tensor::zeros(shape, DType::F32, &dev).unwrap();
        let op = FullAttention { heads: 3, scale: 1.0 };
        // width not a multiple of the heads, mismatched k and v, a strided last dimension
        assert!(t((1, 4, 8)).apply_op3_no_bwd(&t((1, 4, 8)), &t((1, 4, 8)), &op).is_err());
        let op = FullAttention { heads: 2, scale: 1.0 };
        assert!(t((1, 4, 8)).apply_op3_no_bwd(&t((1, 5, 8)), &t((1, 4, 8)), &op).is_err());
        let tr = t((1, 8, 4)).transpose(1, 2).unwrap();
        assert!(tr.apply_op3_no_bwd(&t((1, 4, 8)), &t((1, 4, 8)), &op).is_err());
        // a head wider than the kernel takes
        let op = FullAttention { heads: 1, scale: 1.0 };
        let wide = t((1, 2, MAX_HEAD_DIM + 16));
        assert!(wide.apply_op3_no_bwd(&wide, &wide, &op).is_err());
        // rows that run past the data
        let data = [0f32; 10];
        let rows = Rows::token_major(&data, 4, 2);
        assert!(rows.check("q", 3, 2, 2).is_err());
        assert!(rows.check("q", 2, 2, 2).is_ok());
    }
}
