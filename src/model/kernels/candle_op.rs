//! candle glue: [`CpuMatMul`] is a `CustomOp1`, so a CPU tensor `xs` of shape (..., cols) in
//! f32, f16 or bf16 becomes `xs · Wᵀ` of shape (..., rows) in the same dtype through
//! `xs.apply_op1_no_bwd(&op)`, reading the (contiguous) input storage in place (no copy for f32).

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape};
use half::{bf16, f16};

use super::formats::CpuWeight;

/// `y = x Wᵀ (+ b)` on CPU tensors with this crate's kernels.
#[derive(Clone, Debug)]
pub struct CpuMatMul(pub Arc<CpuWeight>, Option<Arc<[f32]>>);

impl CpuMatMul {
    pub fn new(w: CpuWeight) -> Self {
        Self(Arc::new(w), None)
    }

    /// `y = x Wᵀ + b`, the bias (one value per weight row) added as the results are written
    /// instead of in a pass of its own.
    pub fn with_bias(w: CpuWeight, bias: Vec<f32>) -> Result<Self> {
        if bias.len() != w.rows() {
            bail!("cpu matmul: bias has {} values but the weight {} rows", bias.len(), w.rows())
        }
        Ok(Self(Arc::new(w), Some(bias.into())))
    }

    /// An op on a weight shared with another owner (no bias).
    pub fn from_shared(w: Arc<CpuWeight>) -> Self {
        Self(w, None)
    }

    pub fn weight(&self) -> &CpuWeight {
        &self.0
    }

    /// The same op with an f32 weight laid out as the batched kernel's panels, for a layer that
    /// only ever meets batches of tokens (the encoders'); unchanged where that layout does not
    /// apply (other formats, a CPU without AVX-512, a shared weight).
    pub fn for_batches(self) -> Self {
        if super::Isa::detect() != super::Isa::Avx512 {
            return self;
        }
        match Arc::try_unwrap(self.0) {
            Ok(w) => match super::dense::batched::to_panels(&w, super::pool::global()) {
                Some(p) => Self(Arc::new(p), self.1),
                None => Self(Arc::new(w), self.1),
            },
            Err(shared) => Self(shared, self.1),
        }
    }
}

impl CustomOp1 for CpuMatMul {
    fn name(&self) -> &'static str {
        "ziya-cpu-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = &*self.0;
        let bias = self.1.as_deref();
        let dims = layout.shape().dims();
        let Some(&k) = dims.last() else { bail!("cpu matmul: scalar input") };
        if k != w.cols() {
            bail!("cpu matmul: input last dim {k} but weight has {} cols", w.cols())
        }
        let n = layout.shape().elem_count() / k.max(1);
        let matmul = |x: &[f32]| super::matmul_bias_vec(super::Isa::detect(), super::pool::global(), w, x, n, bias);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = w.rows();
        if !layout.is_contiguous() {
            bail!("cpu matmul: input must be contiguous (call .contiguous() first)")
        }
        let start = layout.start_offset();
        match storage {
            CpuStorage::F32(v) => {
                let out = matmul(&v[start..start + n * k])?;
                Ok((CpuStorage::F32(out), Shape::from(out_dims)))
            }
            CpuStorage::F16(v) => {
                let x: Vec<f32> = v[start..start + n * k].iter().map(|h| h.to_f32()).collect();
                let out = matmul(&x)?;
                Ok((CpuStorage::F16(out.iter().map(|&f| f16::from_f32(f)).collect()), Shape::from(out_dims)))
            }
            CpuStorage::BF16(v) => {
                let x: Vec<f32> = v[start..start + n * k].iter().map(|h| h.to_f32()).collect();
                let out = matmul(&x)?;
                Ok((CpuStorage::BF16(out.iter().map(|&f| bf16::from_f32(f)).collect()), Shape::from(out_dims)))
            }
            _ => bail!("cpu matmul: input must be f32, f16 or bf16"),
        }
    }
}
