//! The networks' activations on f32 CPU tensors, as candle `CustomOp`s:
//! - [`GeluErf`]: GELU in its exact form, `x/2 · (1 + erf(x/√2))` (HF's "gelu", the vision
//!   tower's and the Q-Former's activation);
//! - [`SiluMul`]: LLaMA's gated MLP product `silu(gate) · up`, `silu(x) = x / (1 + e^-x)`, in one
//!   pass instead of two (and no intermediate tensor).
//!
//! candle computes both one element at a time on one thread (`unary_map` with libm's `erff` /
//! `expf`): GELU alone took about 0.8 s of the ViT-g image step's 4.7 (257 × 6144 values per
//! layer, 40 layers). Here erf is an odd/even rational function of x (Eigen's and XLA's float
//! erf: |error| < 5e-7 on [-4, 4], and erf(±4) is ±1 in f32) and exp is Cephes' `expf` (range
//! reduction by ln 2, a degree-6 polynomial, the exponent set through the bits: about 1 ulp),
//! both written as plain arithmetic the compiler vectorises, compiled for AVX-512 and AVX2 and
//! chosen at run time, the elements split over the kernels' pool.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape};

use super::pool::{self, SendPtr};
use super::Isa;

/// Numerator coefficients of x, x³, …, x¹³.
const ALPHA: [f32; 7] =
    [-1.609_603_3e-2, -2.954_6e-3, -7.349_906_4e-4, -5.692_506_2e-5, -2.101_024e-6, 2.770_681_5e-8, -2.726_142_4e-10];
/// Denominator coefficients of 1, x², …, x⁸.
const BETA: [f32; 5] = [-1.426_473_9e-2, -7.373_329_3e-3, -1.682_827e-3, -2.133_740_5e-4, -1.456_607_15e-5];

/// Below this many elements one thread does the whole tensor (waking the pool costs more).
const PARALLEL_FROM: usize = 1 << 14;

#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = ALPHA[6];
    for a in ALPHA[..6].iter().rev() {
        p = p * x2 + a;
    }
    let mut q = BETA[4];
    for b in BETA[..4].iter().rev() {
        q = q * x2 + b;
    }
    x * p / q
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Cephes' `expf`: e^x = 2^n · e^r with n = round(x / ln 2), |r| <= ln 2 / 2. Below -87 it
/// returns e^-87 (still normal; SiLU's 1 + e^-x absorbs it) and above 88 infinity (so that
/// SiLU of a large negative x is -0, as candle's, not x · e^-88).
#[inline(always)]
fn exp(x_in: f32) -> f32 {
    // Round to nearest by adding and removing 1.5 · 2^23 (no call to a rounding function).
    const ROUND: f32 = 12_582_912.0;
    let x = x_in.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    // ln 2 in two parts, so that r keeps its low bits.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4;
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = p * r + c;
    }
    let e = (p * r * r + r + 1.0) * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x_in > 88.0 {
        f32::INFINITY
    } else {
        e
    }
}

#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[inline(always)]
fn gelu_slice(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = gelu(v);
    }
}

/// `x[i] = gelu(x[i])`: the batched dense kernel's epilogue calls it on each tile's results
/// as they are stored (inlined into its AVX-512 code, vectorised there), the other paths on
/// their whole output ([`gelu_in_place_with`]). The same arithmetic as [`gelu_slice`], so the
/// same bits.
#[inline(always)]
pub(crate) fn gelu_in_place(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = gelu(*v);
    }
}

#[inline(always)]
fn silu_mul_slice(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(g).zip(u) {
        *o = silu(a) * b;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gelu_avx512(x: &[f32], out: &mut [f32]) {
        super::gelu_slice(x, out)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu_avx2(x: &[f32], out: &mut [f32]) {
        super::gelu_slice(x, out)
    }
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gelu_in_place_avx512(x: &mut [f32]) {
        super::gelu_in_place(x)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu_in_place_avx2(x: &mut [f32]) {
        super::gelu_in_place(x)
    }
    #[target_feature(enable = "avx512f")]
    pub unsafe fn silu_mul_avx512(g: &[f32], u: &[f32], out: &mut [f32]) {
        super::silu_mul_slice(g, u, out)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul_avx2(g: &[f32], u: &[f32], out: &mut [f32]) {
        super::silu_mul_slice(g, u, out)
    }
}

/// `out[i] = gelu(x[i])` with the instructions `isa` allows (NEON, scalar and an ISA this CPU
/// lacks use the portable loop, which the compiler vectorises for the build's baseline).
pub fn gelu_isa(isa: Isa, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "gelu: input and output lengths differ");
    match isa {
        // SAFETY: the guard checked that this CPU has the instructions.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_available() => unsafe { x86::gelu_avx512(x, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_available() => unsafe { x86::gelu_avx2(x, out) },
        _ => gelu_slice(x, out),
    }
}

/// `x[i] = gelu(x[i])` with the instructions `isa` allows (as [`gelu_isa`]).
pub fn gelu_in_place_isa(isa: Isa, x: &mut [f32]) {
    match isa {
        // SAFETY: the guard checked that this CPU has the instructions.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_available() => unsafe { x86::gelu_in_place_avx512(x) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_available() => unsafe { x86::gelu_in_place_avx2(x) },
        _ => gelu_in_place(x),
    }
}

/// `out[i] = silu(g[i]) · u[i]` with the instructions `isa` allows (as [`gelu_isa`]).
pub fn silu_mul_isa(isa: Isa, g: &[f32], u: &[f32], out: &mut [f32]) {
    assert!(g.len() == out.len() && u.len() == out.len(), "silu·mul: lengths differ");
    match isa {
        // SAFETY: the guard checked that this CPU has the instructions.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_available() => unsafe { x86::silu_mul_avx512(g, u, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_available() => unsafe { x86::silu_mul_avx2(g, u, out) },
        _ => silu_mul_slice(g, u, out),
    }
}

/// Runs `f(range, part of out)` over `out` split on every thread of `pool` (one thread for
/// small lengths: waking the pool costs more).
fn split_over(pool: &pool::Pool, out: &mut [f32], f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync) {
    let (n, threads) = (out.len(), pool.n_threads());
    if n < PARALLEL_FROM || threads == 1 {
        return f(0..n, out);
    }
    let dst = SendPtr(out.as_mut_ptr());
    pool.run(|tid| {
        let r = pool::split(n, threads, tid, 64);
        // SAFETY: the ranges of `split` are disjoint and inside `out`, which outlives the run.
        let part = unsafe { std::slice::from_raw_parts_mut(dst.ptr().add(r.start), r.len()) };
        f(r, part);
    });
}

/// `out[i] = gelu(x[i])` on every thread of `pool`.
pub fn gelu_with(isa: Isa, pool: &pool::Pool, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "gelu: input and output lengths differ");
    split_over(pool, out, |r, part| gelu_isa(isa, &x[r], part));
}

/// `x[i] = gelu(x[i])` on every thread of `pool`.
pub fn gelu_in_place_with(isa: Isa, pool: &pool::Pool, x: &mut [f32]) {
    split_over(pool, x, |_, part| gelu_in_place_isa(isa, part));
}

/// `out[i] = silu(g[i]) · u[i]` on every thread of `pool`.
pub fn silu_mul_with(isa: Isa, pool: &pool::Pool, g: &[f32], u: &[f32], out: &mut [f32]) {
    assert!(g.len() == out.len() && u.len() == out.len(), "silu·mul: lengths differ");
    split_over(pool, out, |r, part| silu_mul_isa(isa, &g[r.clone()], &u[r], part));
}

/// `gelu_erf` on a contiguous f32 CPU tensor: `xs.apply_op1_no_bwd(&GeluErf)`.
#[derive(Clone, Copy, Debug)]
pub struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "ziya-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("gelu", storage, layout)?;
        let mut out = vec![0f32; x.len()];
        gelu_with(Isa::detect(), pool::global(), x, &mut out);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// The contiguous f32 elements of one input, or why not.
fn contiguous_f32<'a>(op: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = storage else { bail!("{op}: input must be f32") };
    if !layout.is_contiguous() {
        bail!("{op}: input must be contiguous (call .contiguous() first)")
    }
    let start = layout.start_offset();
    match v.get(start..start + layout.shape().elem_count()) {
        Some(x) => Ok(x),
        None => bail!("{op}: the layout lies outside its storage"),
    }
}

/// `silu(gate) · up` on two contiguous f32 CPU tensors of one shape:
/// `gate.apply_op2_no_bwd(&up, &SiluMul)`.
#[derive(Clone, Copy, Debug)]
pub struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "ziya-silu-mul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!("silu·mul: gate {:?} and up {:?} differ in shape", l1.shape(), l2.shape())
        }
        let (g, u) = (contiguous_f32("silu·mul", s1, l1)?, contiguous_f32("silu·mul", s2, l2)?);
        let mut out = vec![0f32; g.len()];
        silu_mul_with(Isa::detect(), pool::global(), g, u, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Values across erf's whole range: dense near 0 where GELU bends, tails where it is x or 0,
    /// and the clamp's edges (|x/√2| = 4).
    fn inputs(n: usize) -> Vec<f32> {
        let mut s = 0x9e37_79b9_u32;
        let mut v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * 16.0
            })
            .collect();
        let edge = 4.0 * std::f32::consts::SQRT_2;
        v.extend([0.0, -0.0, 1e-30, -1e-30, edge, -edge, edge + 1e-3, -edge - 1e-3, 30.0, -30.0, 1e30, -1e30]);
        v
    }

    /// Our GELU against candle's (libm erff in f32, the reference path before this kernel), on
    /// every ISA this CPU has, at lengths that leave vector tails and on 1, 2 and 3 threads.
    #[test]
    fn matches_candles_gelu_erf() {
        for n in [1usize, 17, 1000, PARALLEL_FROM + 77, 100_003] {
            let x = inputs(n);
            let want: Vec<f32> =
                Tensor::new(x.as_slice(), &Device::Cpu).unwrap().gelu_erf().unwrap().to_vec1().unwrap();
            for isa in Isa::available() {
                for threads in [1, 2, 3] {
                    let mut got = vec![f32::NAN; x.len()];
                    gelu_with(isa, &pool::Pool::new(threads), &x, &mut got);
                    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                        // |erf error| < 5e-7, times |x|/2: 2e-6 at |x| = 8; exact in the tails.
                        let tol = 1e-6 * (1.0 + x[i].abs() * 0.5);
                        assert!(
                            (g - w).abs() <= tol,
                            "{isa:?}, {threads} threads, n {n}: gelu({}) = {g}, candle {w}",
                            x[i]
                        );
                    }
                }
            }
        }
    }

    /// silu(g) · u against candle's `silu(g) * u` (libm expf), including the clamp's edges and
    /// the far tails (e^-x overflowing to infinity in candle: the product is then ∓0).
    #[test]
    fn silu_mul_matches_candle() {
        for n in [1usize, 17, 1000, PARALLEL_FROM + 77, 100_003] {
            let g = inputs(n);
            let u: Vec<f32> = g.iter().rev().map(|v| v * 0.37 - 0.5).collect();
            let (gt, ut) =
                (Tensor::new(g.as_slice(), &Device::Cpu).unwrap(), Tensor::new(u.as_slice(), &Device::Cpu).unwrap());
            let want: Vec<f32> = (gt.silu().unwrap() * &ut).unwrap().to_vec1().unwrap();
            let extra = [87.5f32, -87.5, 88.5, -88.5, 100.0, -100.0];
            for isa in Isa::available() {
                for threads in [1, 2, 3] {
                    let mut got = vec![f32::NAN; g.len()];
                    silu_mul_with(isa, &pool::Pool::new(threads), &g, &u, &mut got);
                    for (i, (&a, &w)) in got.iter().zip(&want).enumerate() {
                        let tol = 2e-6 * w.abs().max(1e-3);
                        assert!(
                            (a - w).abs() <= tol,
                            "{isa:?}, {threads} threads, n {n}: silu({}) * {} = {a}, candle {w}",
                            g[i],
                            u[i]
                        );
                    }
                }
                let mut got = [0f32; 6];
                silu_mul_isa(isa, &extra, &[1.0; 6], &mut got);
                let want = [87.5, -0.0, 88.5, -0.0, 100.0, -0.0];
                for (a, w) in got.iter().zip(want) {
                    assert!((a - w).abs() <= 1e-4 * w.abs().max(1e-30), "{isa:?}: {got:?}");
                }
            }
        }
        let a = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        assert!(a.apply_op2_no_bwd(&b, &SiluMul).is_err(), "shapes differ");
    }

    #[test]
    fn custom_op_keeps_shape_and_reads_a_narrowed_view() {
        let x = Tensor::new(&inputs(6 * 1000)[..6000], &Device::Cpu).unwrap().reshape((6, 1000)).unwrap();
        let view = x.narrow(0, 2, 3).unwrap(); // contiguous, starting 2000 elements in
        let got = view.apply_op1_no_bwd(&GeluErf).unwrap();
        assert_eq!(got.dims(), &[3, 1000]);
        let want = view.gelu_erf().unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{diff}");
        assert!(x.to_dtype(candle_core::DType::F16).unwrap().apply_op1_no_bwd(&GeluErf).is_err());
    }
}
