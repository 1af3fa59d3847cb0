use clap::Parser;
use ziya_visual::cli::{run_ask, Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Ask(args)) => run_ask(args),
        Some(Command::Export { session, html, markdown }) => {
            ziya_visual::cli::run_export(session, html.as_deref(), markdown.as_deref())
        }
        Some(Command::Quantize { llm_model, llm_base, quant, out }) => {
            ziya_visual::cli::run_quantize(llm_model, llm_base.as_deref(), *quant, out)
        }
        Some(Command::MergeDelta { base, delta, out }) => ziya_visual::cli::run_merge_delta(base, delta, out),
        Some(Command::Plan { vision_model, llm_model, dtype, quant, device, prompt, context }) => {
            ziya_visual::cli::run_plan(vision_model, llm_model, dtype, *quant, device, *prompt, *context)
        }
        Some(Command::MakeRandomModel { preset, out, seed }) => ziya_visual::model::random::write(out, *preset, *seed)
            .map(|(v, l)| {
                println!("{}\n{}", v.display(), l.display());
            }),
        None => {
            let options = ziya_visual::ui::AppOptions {
                vision_model: cli.vision_model.clone(),
                llm_model: cli.llm_model.clone().or_else(|| cli.llm_delta.clone()),
                llm_base: cli.llm_base.clone(),
                device: cli.device.clone(),
                dtype: cli.dtype.clone(),
                quant: cli.quant,
                demo: cli.demo,
                session: cli.session.clone(),
                ..Default::default()
            };
            ziya_visual::ui::run(options).map_err(|e| ziya_visual::Error::Request(e.to_string()))
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The CUDA runtime's registration entry points, defined here (the binary's own object is always
/// linked, so nvcc-compiled constructors bind to these) and forwarded to libcudart when it can be
/// opened. This keeps a CUDA build startable where there is no CUDA: see
/// `ziya_visual::device::cuda_libs`.
#[cfg(feature = "cuda")]
mod cuda_registration {
    use std::ffi::{c_char, c_int, c_void};
    use ziya_visual::device::cuda_libs::runtime;

    /// Handed out instead of a real handle when there is no CUDA runtime.
    static mut NO_RUNTIME_HANDLE: *mut c_void = std::ptr::null_mut();

    #[no_mangle]
    pub unsafe extern "C" fn __cudaRegisterFatBinary(fat_cubin: *mut c_void) -> *mut *mut c_void {
        match runtime() {
            Some(rt) => (rt.register_fat_binary)(fat_cubin),
            None => std::ptr::addr_of_mut!(NO_RUNTIME_HANDLE),
        }
    }

    #[no_mangle]
    pub unsafe extern "C" fn __cudaRegisterFatBinaryEnd(handle: *mut *mut c_void) {
        if let Some(rt) = runtime() {
            (rt.register_fat_binary_end)(handle)
        }
    }

    #[no_mangle]
    pub unsafe extern "C" fn __cudaUnregisterFatBinary(handle: *mut *mut c_void) {
        if let Some(rt) = runtime() {
            (rt.unregister_fat_binary)(handle)
        }
    }

    #[no_mangle]
    #[allow(clippy::too_many_arguments)]
    pub unsafe extern "C" fn __cudaRegisterFunction(
        handle: *mut *mut c_void,
        host_fun: *const c_char,
        device_fun: *mut c_char,
        device_name: *const c_char,
        thread_limit: c_int,
        tid: *mut c_void,
        bid: *mut c_void,
        b_dim: *mut c_void,
        g_dim: *mut c_void,
        w_size: *mut c_int,
    ) {
        if let Some(rt) = runtime() {
            (rt.register_function)(
                handle,
                host_fun,
                device_fun,
                device_name,
                thread_limit,
                tid,
                bid,
                b_dim,
                g_dim,
                w_size,
            )
        }
    }

    #[no_mangle]
    #[allow(clippy::too_many_arguments)]
    pub unsafe extern "C" fn __cudaRegisterVar(
        handle: *mut *mut c_void,
        host_var: *mut c_char,
        device_address: *mut c_char,
        device_name: *const c_char,
        ext: c_int,
        size: usize,
        constant: c_int,
        global: c_int,
    ) {
        if let Some(rt) = runtime() {
            (rt.register_var)(handle, host_var, device_address, device_name, ext, size, constant, global)
        }
    }
}
