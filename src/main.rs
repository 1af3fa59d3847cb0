use clap::Parser;
use ziya_visual::cli::Cli;

fn main() {
    ziya_visual::engine::quiet_engine_panics();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => exit_on_bad_arguments(e),
    };
    let result = match &cli.command {
        Some(command) => ziya_visual::cli::run(command),
        None => {
            let options = ziya_visual::ui::AppOptions {
                model: cli.model.overrides(),
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

/// Help and version print as clap lays them out; a bad argument is one `error:` line naming it
/// (the same shape as every other error), without clap's usage block.
fn exit_on_bad_arguments(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let rendered = e.render().to_string();
    let line = rendered.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
    eprintln!("error: {}", line.trim_start_matches("error: ").trim());
    std::process::exit(2);
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
