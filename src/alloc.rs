//! The process's allocator: jemalloc, for libtorch's tensors as well as Rust's data.
//!
//! libtorch's CPU tensors come from `malloc`. glibc's `malloc` served them badly both ways:
//! with its defaults, every freed activation above the mmap threshold went back to the kernel
//! at once, so each batch page-faulted its activations afresh (`xray eval` of 872 Kermany
//! images with MobileNetV2: 44 s wall, 52 s in the kernel); with those thresholds raised (what
//! xray did until now, 12 s for the same eval), freed memory stayed in glibc's heaps as
//! fragments, and MobileNetV2 training peaked at 4,888 MiB against 3,344 MiB with the
//! defaults and PyTorch's 3,544 MiB (160 Kermany images, 224 px, batch 32; BENCHMARKS.md).
//! jemalloc, linked in and answering every `malloc` of the process (`tikv-jemallocator` with
//! its unprefixed symbols), reuses freed memory by size class: with its purging turned off for
//! heavy commands the same training peaked at 2,887 MiB and ran as fast as the raised glibc
//! thresholds (8.0 against 7.5 img/s).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings for heavy commands: keep freed pages for reuse instead of returning
/// them to the kernel after a delay (returned pages are faulted in again by the next batch:
/// with purging on, the training above ran at 4.3 img/s).
pub const MALLOC_CONF: &str = "dirty_decay_ms:-1,muzzy_decay_ms:-1";

/// Re-executes the current process with [`MALLOC_CONF`] unless `MALLOC_CONF` is already set
/// (by the user or by an earlier re-exec); jemalloc reads it once, at start. Returns only if no
/// re-exec happened.
pub fn reexec_with_malloc_conf() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("MALLOC_CONF").is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
        // exec only returns on failure; then carry on with the default allocator settings.
        let _ = std::process::Command::new(&exe)
            .arg0(arg0)
            .args(args)
            .env("MALLOC_CONF", MALLOC_CONF)
            .exec();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" {
    /// jemalloc's control interface (unprefixed, as the allocator above).
    fn mallctl(
        name: *const std::ffi::c_char,
        oldp: *mut std::ffi::c_void,
        oldlenp: *mut usize,
        newp: *mut std::ffi::c_void,
        newlen: usize,
    ) -> std::ffi::c_int;
}

/// Returns the pages that freed memory holds to the kernel (jemalloc's `arena.<all>.purge`).
/// With purging off (see [`MALLOC_CONF`]) a heavy command's resident memory never shrinks, so
/// one stage's working set would stay on top of the next's: call it between stages whose
/// tensors differ (computing cached activations, then training on them). No-op elsewhere.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // MALLCTL_ARENAS_ALL is 4096.
        let name = c"arena.4096.purge";
        // SAFETY: a NUL-terminated control name that takes and returns nothing.
        unsafe {
            mallctl(
                name.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            );
        }
    }
}
