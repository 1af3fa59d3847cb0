//! candle glue: [`CpuMatMul`] is a `CustomOp1`, so a CPU tensor `xs` of shape (..., cols) in
//! f32, f16 or bf16 becomes `xs · Wᵀ` of shape (..., rows) in the same dtype through
//! `xs.apply_op1_no_bwd(&op)`, reading the (contiguous) input storage in place (no copy for f32).
//! [`CpuMatMul::plus`] is the same product with a residual added as it is written
//! (`xs.apply_op2_no_bwd(&residual, &op.plus())`, f32).

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape};
use half::{bf16, f16};

use super::formats::CpuWeight;
use super::Epilogue;

/// `y = x Wᵀ (+ b)`, then GELU if asked, on CPU tensors with this crate's kernels.
#[derive(Clone, Debug)]
pub struct CpuMatMul {
    weight: Arc<CpuWeight>,
    bias: Option<Arc<[f32]>>,
    gelu: bool,
}

impl CpuMatMul {
    pub fn new(w: CpuWeight) -> Self {
        Self::from_shared(Arc::new(w))
    }

    /// `y = x Wᵀ + b`, the bias (one value per weight row) added as the results are written
    /// instead of in a pass of its own.
    pub fn with_bias(w: CpuWeight, bias: Vec<f32>) -> Result<Self> {
        if bias.len() != w.rows() {
            bail!("cpu matmul: bias has {} values but the weight {} rows", bias.len(), w.rows())
        }
        Ok(Self { bias: Some(bias.into()), ..Self::new(w) })
    }

    /// An op on a weight shared with another owner (no bias).
    pub fn from_shared(w: Arc<CpuWeight>) -> Self {
        Self { weight: w, bias: None, gelu: false }
    }

    /// The same product followed by the exact GELU, applied as the results are written (on f32
    /// activations; f16 and bf16 ones are rounded first and refused here, see `cpu_fwd`).
    pub fn then_gelu(self) -> Self {
        Self { gelu: true, ..self }
    }

    /// This op with a residual added to its results as they are written:
    /// `xs.apply_op2_no_bwd(&residual, &op.plus())` is `residual + op(xs)` (f32 only).
    pub fn plus(&self) -> PlusResidual<'_> {
        PlusResidual(self)
    }

    pub fn weight(&self) -> &CpuWeight {
        &self.weight
    }

    /// The same op with an f32 weight laid out as the batched kernel's panels, for a layer that
    /// only ever meets batches of tokens (the encoders'); unchanged where that layout does not
    /// apply (other formats, a CPU without AVX-512, a shared weight).
    pub fn for_batches(self) -> Self {
        if super::Isa::detect() != super::Isa::Avx512 {
            return self;
        }
        let Self { weight, bias, gelu } = self;
        let weight = match Arc::try_unwrap(weight) {
            Ok(w) => match super::dense::batched::to_panels(&w, super::pool::global()) {
                Some(p) => Arc::new(p),
                None => Arc::new(w),
            },
            Err(shared) => shared,
        };
        Self { weight, bias, gelu }
    }

    /// (n, output dims) for an input layout, or why the input does not fit.
    fn shapes(&self, layout: &Layout) -> Result<(usize, Vec<usize>)> {
        let dims = layout.shape().dims();
        let Some(&k) = dims.last() else { bail!("cpu matmul: scalar input") };
        if k != self.weight.cols() {
            bail!("cpu matmul: input last dim {k} but weight has {} cols", self.weight.cols())
        }
        if !layout.is_contiguous() {
            bail!("cpu matmul: input must be contiguous (call .contiguous() first)")
        }
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.weight.rows();
        }
        Ok((layout.shape().elem_count() / k.max(1), out_dims))
    }

    fn run(&self, x: &[f32], n: usize, residual: Option<&[f32]>) -> Result<Vec<f32>> {
        let epi = Epilogue { bias: self.bias.as_deref(), gelu: self.gelu, residual };
        super::matmul_epilogue_vec(super::Isa::detect(), super::pool::global(), &self.weight, x, n, &epi)
    }
}

impl CustomOp1 for CpuMatMul {
    fn name(&self) -> &'static str {
        "ziya-cpu-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, out_dims) = self.shapes(layout)?;
        let k = self.weight.cols();
        let start = layout.start_offset();
        let input = |len: usize| match start.checked_add(len) {
            Some(end) => Ok(start..end),
            None => bail!("cpu matmul: the layout lies outside its storage"),
        };
        match storage {
            CpuStorage::F32(v) => {
                let out = self.run(&v[input(n * k)?], n, None)?;
                Ok((CpuStorage::F32(out), Shape::from(out_dims)))
            }
            // Half-precision activations round the product before the activation does its
            // own arithmetic (candle's GELU in that dtype): fusing it would skip that rounding.
            CpuStorage::F16(_) | CpuStorage::BF16(_) if self.gelu => {
                bail!("cpu matmul: the fused GELU takes f32 activations")
            }
            CpuStorage::F16(v) => {
                let x: Vec<f32> = v[input(n * k)?].iter().map(|h| h.to_f32()).collect();
                let out = self.run(&x, n, None)?;
                Ok((CpuStorage::F16(out.iter().map(|&f| f16::from_f32(f)).collect()), Shape::from(out_dims)))
            }
            CpuStorage::BF16(v) => {
                let x: Vec<f32> = v[input(n * k)?].iter().map(|h| h.to_f32()).collect();
                let out = self.run(&x, n, None)?;
                Ok((CpuStorage::BF16(out.iter().map(|&f| bf16::from_f32(f)).collect()), Shape::from(out_dims)))
            }
            _ => bail!("cpu matmul: input must be f32, f16 or bf16"),
        }
    }
}

/// `residual + op(xs)` on f32 CPU tensors, the residual added as the product is written
/// ([`CpuMatMul::plus`]): the encoders' skip connections without a pass (and a buffer) of
/// their own. The same bits as adding afterwards: one f32 addition per value either way.
pub struct PlusResidual<'a>(&'a CpuMatMul);

impl CustomOp2 for PlusResidual<'_> {
    fn name(&self) -> &'static str {
        "ziya-cpu-matmul-plus"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, out_dims) = self.0.shapes(l1)?;
        if l2.shape().dims() != out_dims.as_slice() {
            bail!("cpu matmul: residual {:?} differs from the output {out_dims:?}", l2.shape())
        }
        if !l2.is_contiguous() {
            bail!("cpu matmul: residual must be contiguous (call .contiguous() first)")
        }
        let (CpuStorage::F32(x), CpuStorage::F32(r)) = (s1, s2) else {
            bail!("cpu matmul: the fused residual takes f32 input and residual")
        };
        let k = self.0.weight.cols();
        let rows = self.0.weight.rows();
        let (xs, rs) = (l1.start_offset(), l2.start_offset());
        let (Some(x), Some(r)) = (x.get(xs..xs + n * k), r.get(rs..rs + n * rows)) else {
            bail!("cpu matmul: the layout lies outside its storage")
        };
        let out = self.0.run(x, n, Some(r))?;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}
