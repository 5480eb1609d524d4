//! glibc's allocator settings for heavy tensor work.
//!
//! libtorch's CPU tensors come from glibc `malloc`. With glibc's defaults, every freed
//! activation larger than the mmap threshold is returned to the kernel at once, so each batch
//! page-faults its activations afresh: `xray eval` of 872 Kermany images with MobileNetV2 spent
//! more time in the kernel than in the network (44 s wall, 52 s sys). The thresholds can only be
//! raised past 32 MiB through `GLIBC_TUNABLES`, which glibc reads at process start, so heavy
//! commands re-execute themselves once with it set (12 s wall, 1.5 s sys for the same eval).

/// The tunables set for heavy commands: keep freed memory in the heap.
pub const MALLOC_TUNABLES: &str =
    "glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=2147483647";

/// Re-executes the current process with [`MALLOC_TUNABLES`] unless `GLIBC_TUNABLES` is already
/// set (by the user or by an earlier re-exec). Returns only if no re-exec happened.
pub fn reexec_with_malloc_tunables() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("GLIBC_TUNABLES").is_some() {
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
            .env("GLIBC_TUNABLES", MALLOC_TUNABLES)
            .exec();
    }
}
