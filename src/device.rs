//! Choosing where the model runs and in which precision.

use candle_core::{DType, Device};

use crate::error::{Error, Result};

/// Parses `f32|f16|bf16`.
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(Error::Request(format!("unknown dtype `{other}` (expected f32, f16 or bf16)"))),
    }
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "other",
    }
}

/// The device asked for, or the CPU with the reason when it cannot be had (a CUDA build on a
/// machine without a GPU keeps working).
pub fn select_device(name: &str) -> Result<(Device, Option<String>)> {
    match name {
        "cpu" => Ok((Device::Cpu, None)),
        "cuda" => {
            if !cfg!(feature = "cuda") {
                return Ok((Device::Cpu, Some("this build has no CUDA support (build with --features cuda)".into())));
            }
            match Device::new_cuda(0) {
                Ok(d) => Ok((d, None)),
                Err(e) => Ok((Device::Cpu, Some(format!("CUDA is not available: {e}")))),
            }
        }
        "metal" => {
            if !cfg!(feature = "metal") {
                return Ok((Device::Cpu, Some("this build has no Metal support (build with --features metal)".into())));
            }
            match Device::new_metal(0) {
                Ok(d) => Ok((d, None)),
                Err(e) => Ok((Device::Cpu, Some(format!("Metal is not available: {e}")))),
            }
        }
        other => Err(Error::Request(format!("unknown device `{other}` (expected cpu, cuda or metal)"))),
    }
}

/// The precision to run in: bf16 on the CPU becomes f16, since candle has no bf16 matrix kernel
/// for the CPU (every product would widen both operands to f32: about 30x slower than f16, see
/// TOOLCHAIN notes). Returns the note to show when it changed.
pub fn effective_dtype(device: &Device, requested: DType) -> (DType, Option<String>) {
    if device.is_cpu() && requested == DType::BF16 {
        return (
            DType::F16,
            Some("bf16 runs as f16 on the CPU (no fast bf16 kernel there; f16 is about 30x faster)".into()),
        );
    }
    (requested, None)
}

pub fn device_name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}
