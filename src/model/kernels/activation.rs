//! GELU in its exact form, `x/2 · (1 + erf(x/√2))` (HF's "gelu", the vision tower's and the
//! Q-Former's activation), on f32 CPU tensors: [`GeluErf`] is a candle `CustomOp1`.
//!
//! candle's `gelu_erf` calls libm's `erff` once per element, a branchy scalar routine: about 5 %
//! of the ViT-g image step (257 × 6144 values per layer, 40 layers). Here erf is an odd/even
//! rational function of x (Eigen's and XLA's float erf: |error| < 5e-7 on [-4, 4], and erf(±4)
//! is ±1 in f32) evaluated with plain arithmetic the compiler vectorises, compiled for AVX-512
//! and AVX2 and chosen at run time, the elements split over the kernels' pool.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape};

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

#[inline(always)]
fn gelu_slice(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = gelu(v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(x: &[f32], out: &mut [f32]) {
    gelu_slice(x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(x: &[f32], out: &mut [f32]) {
    gelu_slice(x, out)
}

/// `out[i] = gelu(x[i])` with the instructions `isa` allows (NEON and scalar use the portable
/// loop, which the compiler vectorises for the build's baseline).
pub fn gelu_isa(isa: Isa, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "gelu: input and output lengths differ");
    match isa {
        // SAFETY: `isa` comes from Isa::detect / is_available, which checked the CPU has it.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { gelu_avx512(x, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { gelu_avx2(x, out) },
        _ => gelu_slice(x, out),
    }
}

/// `out[i] = gelu(x[i])` on every thread of `pool`.
pub fn gelu_with(isa: Isa, pool: &pool::Pool, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "gelu: input and output lengths differ");
    let (n, threads) = (x.len(), pool.n_threads());
    if n < PARALLEL_FROM || threads == 1 {
        return gelu_isa(isa, x, out);
    }
    let dst = SendPtr(out.as_mut_ptr());
    pool.run(|tid| {
        let r = pool::split(n, threads, tid, 64);
        // SAFETY: the ranges of `split` are disjoint and inside `out`, which outlives the run.
        let part = unsafe { std::slice::from_raw_parts_mut(dst.ptr().add(r.start), r.len()) };
        gelu_isa(isa, &x[r], part);
    });
}

/// `gelu_erf` on a contiguous f32 CPU tensor: `xs.apply_op1_no_bwd(&GeluErf)`.
#[derive(Clone, Copy, Debug)]
pub struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "ziya-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = storage else { bail!("gelu: input must be f32") };
        if !layout.is_contiguous() {
            bail!("gelu: input must be contiguous (call .contiguous() first)")
        }
        let n = layout.shape().elem_count();
        let start = layout.start_offset();
        let Some(x) = v.get(start..start + n) else { bail!("gelu: the layout lies outside its storage") };
        let mut out = vec![0f32; n];
        gelu_with(Isa::detect(), pool::global(), x, &mut out);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
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
