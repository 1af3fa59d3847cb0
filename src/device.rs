//! Where the model runs and in which precision: the choices a user makes (typed, as flags,
//! preferences and engine requests carry them) and what they resolve to on this machine.

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The device asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
    Metal,
}

impl DeviceKind {
    pub const ALL: [DeviceKind; 3] = [DeviceKind::Cpu, DeviceKind::Cuda, DeviceKind::Metal];

    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Metal => "metal",
        }
    }

    /// How the device is called in sentences.
    pub fn label(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "CPU",
            DeviceKind::Cuda => "CUDA",
            DeviceKind::Metal => "Metal",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| Error::Request(format!("unknown device `{name}` (expected cpu, cuda or metal)")))
    }

    /// The device this build prefers when nothing was chosen.
    pub fn default_for_build() -> Self {
        if cfg!(feature = "cuda") {
            DeviceKind::Cuda
        } else {
            DeviceKind::Cpu
        }
    }

    /// Whether this build was compiled with support for the device.
    pub fn compiled_in(self) -> bool {
        match self {
            DeviceKind::Cpu => true,
            DeviceKind::Cuda => cfg!(feature = "cuda"),
            DeviceKind::Metal => cfg!(feature = "metal"),
        }
    }
}

/// Precision of the LLM's KV cache on the CPU: f16 by default (half the memory and of what each
/// decode step reads); f32 only with f32 weights and activations (`--dtype f32 --kv f32`). A GPU
/// keeps its cache in the model's precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvPrecision {
    #[default]
    F16,
    F32,
}

impl KvPrecision {
    pub const ALL: [KvPrecision; 2] = [KvPrecision::F16, KvPrecision::F32];

    pub fn name(self) -> &'static str {
        match self {
            KvPrecision::F16 => "f16",
            KvPrecision::F32 => "f32",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| Error::Request(format!("unknown KV cache precision `{name}` (expected f16 or f32)")))
    }

    /// The cache's dtype for a model running in `dtype`.
    pub fn dtype(self, dtype: DType, on_cpu: bool) -> DType {
        match (on_cpu, self, dtype) {
            (false, _, d) => d,
            (true, KvPrecision::F32, DType::F32) => DType::F32,
            (true, _, _) => DType::F16,
        }
    }
}

/// The precision asked for (of the networks' dense weights and activations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::Bf16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| Error::Request(format!("unknown dtype `{name}` (expected f32, f16 or bf16)")))
    }

    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// The precision that runs on `device`: bf16 on the CPU becomes f16, since candle has no bf16
    /// matrix kernel for the CPU (every product would widen both operands to f32: about 30x
    /// slower than f16, see TOOLCHAIN notes). Returns the note to show when it changed.
    pub fn effective(self, on_cpu: bool) -> (DType, Option<DeviceNote>) {
        if on_cpu && self == Precision::Bf16 {
            return (DType::F16, Some(DeviceNote::Bf16AsF16));
        }
        (self.dtype(), None)
    }
}

/// Why the device or precision in use is not the one asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceNote {
    /// The build has no support for the device asked for.
    NotInBuild(DeviceKind),
    /// The device could not be opened (no driver, no GPU, ...): the detail says why.
    Unavailable(DeviceKind, String),
    /// bf16 asked for on the CPU, where it runs as f16.
    Bf16AsF16,
}

impl std::fmt::Display for DeviceNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceNote::NotInBuild(DeviceKind::Cuda) => {
                f.write_str("this build has no CUDA support (build with --features cuda); running on the CPU")
            }
            DeviceNote::NotInBuild(d) => {
                write!(
                    f,
                    "this build has no {} support (build with --features {}); running on the CPU",
                    d.label(),
                    d.name()
                )
            }
            DeviceNote::Unavailable(d, why) => write!(f, "{} is not available: {why}; running on the CPU", d.label()),
            DeviceNote::Bf16AsF16 => {
                f.write_str("bf16 runs as f16 on the CPU (no fast bf16 kernel there; f16 is about 30x faster)")
            }
        }
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

/// A device and precision as resolved on this machine, with why they differ from the choice.
#[derive(Debug, Clone)]
pub struct Placement {
    pub device: Device,
    pub dtype: DType,
    /// Why the device or precision in use is not the one asked for (empty when they are).
    pub notes: Vec<DeviceNote>,
}

impl Placement {
    /// Opens the device asked for (falling back to the CPU, saying why) and settles the precision.
    pub fn resolve(device: DeviceKind, precision: Precision) -> Self {
        let (device, device_note) = open_device(device);
        let (dtype, dtype_note) = precision.effective(device.is_cpu());
        Self { device, dtype, notes: device_note.into_iter().chain(dtype_note).collect() }
    }

    /// The CPU in the given precision (tests, benchmarks).
    pub fn cpu(precision: Precision) -> Self {
        let (dtype, note) = precision.effective(true);
        Self { device: Device::Cpu, dtype, notes: note.into_iter().collect() }
    }
}

/// The device asked for, or the CPU with the reason when it cannot be had (a CUDA build on a
/// machine without a GPU keeps working).
pub fn open_device(kind: DeviceKind) -> (Device, Option<DeviceNote>) {
    match kind {
        DeviceKind::Cpu => (Device::Cpu, None),
        DeviceKind::Cuda => {
            if !cfg!(feature = "cuda") {
                return (Device::Cpu, Some(DeviceNote::NotInBuild(kind)));
            }
            #[cfg(feature = "cuda")]
            if let Err(missing) = cuda_libs::load() {
                return (Device::Cpu, Some(DeviceNote::Unavailable(kind, missing)));
            }
            match Device::new_cuda(0) {
                Ok(d) => (d, None),
                Err(e) => (Device::Cpu, Some(DeviceNote::Unavailable(kind, crate::error::candle_message(&e)))),
            }
        }
        DeviceKind::Metal => {
            if !cfg!(feature = "metal") {
                return (Device::Cpu, Some(DeviceNote::NotInBuild(kind)));
            }
            match Device::new_metal(0) {
                Ok(d) => (d, None),
                Err(e) => (Device::Cpu, Some(DeviceNote::Unavailable(kind, crate::error::candle_message(&e)))),
            }
        }
    }
}

/// The CUDA libraries, opened at run time.
///
/// candle links cudarc with `dynamic-linking` (cudarc refuses `dynamic-loading` alongside it),
/// which would make the driver's libcuda a load-time dependency: a CUDA build started where
/// there is no NVIDIA driver would die in the dynamic loader before `main`. scripts/build-cuda.sh
/// therefore links with lazy binding (`-C relro-level=partial`, calls through the PLT) and removes
/// the CUDA libraries from the binary's load-time dependencies; they are opened here, globally,
/// before anything calls into CUDA, so the lazy binder finds them. If one is missing, the caller
/// runs on the CPU and says which. (A binary built without the script still links them normally;
/// opening them again here is then harmless.)
#[cfg(feature = "cuda")]
pub mod cuda_libs {
    use std::sync::OnceLock;

    /// The driver's library, then (after the runtime, which `runtime` opens) the toolkit's
    /// libraries candle's CUDA backend uses, by the sonames CUDA 13 and 12 give them.
    const DRIVER: &str = "libcuda.so.1";
    const TOOLKIT: &[&[&str]] = &[
        &["libcublasLt.so.13", "libcublasLt.so.12"],
        &["libcublas.so.13", "libcublas.so.12"],
        &["libcurand.so.10"],
        &["libnvrtc.so.13", "libnvrtc.so.12"],
    ];

    use std::ffi::{c_char, c_int, c_void};

    pub type RegisterFatBinary = unsafe extern "C" fn(*mut c_void) -> *mut *mut c_void;
    pub type FatBinaryHandleFn = unsafe extern "C" fn(*mut *mut c_void);
    pub type RegisterFunction = unsafe extern "C" fn(
        *mut *mut c_void,
        *const c_char,
        *mut c_char,
        *const c_char,
        c_int,
        *mut c_void,
        *mut c_void,
        *mut c_void,
        *mut c_void,
        *mut c_int,
    );
    pub type RegisterVar =
        unsafe extern "C" fn(*mut *mut c_void, *mut c_char, *mut c_char, *const c_char, c_int, usize, c_int, c_int);

    /// The CUDA runtime's registration entry points, which code compiled by nvcc calls from
    /// static constructors before `main`. The binary defines those symbols itself (see main.rs)
    /// and forwards to these when libcudart can be opened; without it they do nothing, the
    /// kernels they register can never run, and `load` reports the runtime missing.
    pub struct Runtime {
        pub register_fat_binary: RegisterFatBinary,
        pub register_fat_binary_end: FatBinaryHandleFn,
        pub unregister_fat_binary: FatBinaryHandleFn,
        pub register_function: RegisterFunction,
        pub register_var: RegisterVar,
    }

    /// libcudart's registration functions, if it can be opened (tried once, at the first call).
    pub fn runtime() -> Option<&'static Runtime> {
        static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
        RUNTIME
            .get_or_init(|| {
                let lib = open_global(&["libcudart.so.13", "libcudart.so.12"]).ok()?;
                // SAFETY: the signatures are those of crt/host_runtime.h.
                let rt = unsafe {
                    Runtime {
                        register_fat_binary: *lib.get(b"__cudaRegisterFatBinary\0").ok()?,
                        register_fat_binary_end: *lib.get(b"__cudaRegisterFatBinaryEnd\0").ok()?,
                        unregister_fat_binary: *lib.get(b"__cudaUnregisterFatBinary\0").ok()?,
                        register_function: *lib.get(b"__cudaRegisterFunction\0").ok()?,
                        register_var: *lib.get(b"__cudaRegisterVar\0").ok()?,
                    }
                };
                std::mem::forget(lib); // the function pointers stay valid for the process
                Some(rt)
            })
            .as_ref()
    }

    /// Opens the first of `names` that can be opened, with its symbols global (so that lazily
    /// bound CUDA calls find them); the error is the last name's.
    fn open_global(names: &[&str]) -> Result<libloading::os::unix::Library, String> {
        let mut last = String::new();
        for name in names {
            // SAFETY: loading a shared library runs its initialisers; these are NVIDIA's CUDA
            // libraries, loaded as the CUDA runtime itself loads them.
            match unsafe {
                libloading::os::unix::Library::open(
                    Some(name),
                    libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                )
            } {
                Ok(lib) => return Ok(lib),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    /// Opens the CUDA libraries once; the error names the first that cannot be found.
    pub fn load() -> Result<(), String> {
        static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
        LOADED
            .get_or_init(|| {
                open_global(&[DRIVER])
                    .map(std::mem::forget)
                    .map_err(|e| format!("the NVIDIA driver's {DRIVER} cannot be loaded ({e})"))?;
                if runtime().is_none() {
                    return Err("the CUDA runtime (libcudart.so.13) cannot be loaded; add the CUDA 13 libraries to LD_LIBRARY_PATH".into());
                }
                for names in TOOLKIT {
                    // Kept open for the life of the process: CUDA calls bind to it lazily.
                    open_global(names).map(std::mem::forget).map_err(|e| {
                        format!(
                            "the CUDA library {} cannot be loaded ({e}); add the CUDA 13 libraries to LD_LIBRARY_PATH",
                            names.join(" or ")
                        )
                    })?;
                }
                Ok(())
            })
            .clone()
    }
}

pub fn device_name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}
