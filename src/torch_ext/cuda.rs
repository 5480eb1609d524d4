//! The CUDA driver, reached without linking it: whether a CUDA device can be used (loading
//! libtorch's CUDA half on demand) and how much memory it has. Every `unsafe` of xray outside
//! the C++ shim's declarations is here.

use crate::progress;

/// Whether a CUDA device can be used, loading libtorch's CUDA half on first call when the machine
/// has an NVIDIA driver.
///
/// The linker drops `libtorch_cuda.so` from the binary (rustc links with `--as-needed` and no
/// symbol of it is referenced), and without it libtorch reports no CUDA device even on a GPU
/// machine. Loading it eagerly would cost every CPU-only start (cold `predict`) a large library,
/// so it is opened here, and only where the driver (`libcuda.so.1`) is present. The library is
/// found through the binary's rpath or LD_LIBRARY_PATH, like `libtorch_cpu.so`.
pub fn cuda_available() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        // SAFETY: dlopen with constant, NUL-terminated names; the handles are kept for the life
        // of the process (never closed), as libtorch's CUDA hooks register themselves globally.
        let has_driver = unsafe {
            !libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY | libc::RTLD_GLOBAL).is_null()
        };
        if has_driver {
            // SAFETY: as above.
            let loaded = unsafe {
                !libc::dlopen(c"libtorch_cuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL)
                    .is_null()
            };
            if !loaded {
                // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next
                // dl* call on this thread.
                let why = unsafe {
                    let e = libc::dlerror();
                    if e.is_null() {
                        String::from("unknown reason")
                    } else {
                        std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
                    }
                };
                progress::note(&format!(
                    "CUDA driver found but libtorch_cuda.so could not be loaded ({why}); using the CPU"
                ));
            }
        }
        tch::Cuda::is_available()
    })
}

/// Total memory of CUDA device 0 in bytes, read from the driver (`cuDeviceTotalMem_v2` in
/// `libcuda.so.1`, which [`cuda_available`] has loaded); `None` without a driver or a device.
pub fn cuda_total_memory() -> Option<u64> {
    if !cuda_available() {
        return None;
    }
    type Init = unsafe extern "C" fn(u32) -> i32;
    type DeviceGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type TotalMem = unsafe extern "C" fn(*mut usize, i32) -> i32;
    // SAFETY: the driver library is already loaded (RTLD_NOLOAD only finds it); the symbols
    // have the driver API's documented signatures, and every out-pointer is a local.
    unsafe {
        let lib = libc::dlopen(
            c"libcuda.so.1".as_ptr(),
            libc::RTLD_LAZY | libc::RTLD_NOLOAD,
        );
        if lib.is_null() {
            return None;
        }
        let init = libc::dlsym(lib, c"cuInit".as_ptr());
        let get = libc::dlsym(lib, c"cuDeviceGet".as_ptr());
        let total = libc::dlsym(lib, c"cuDeviceTotalMem_v2".as_ptr());
        if init.is_null() || get.is_null() || total.is_null() {
            return None;
        }
        let (init, get, total): (Init, DeviceGet, TotalMem) = (
            std::mem::transmute::<*mut libc::c_void, Init>(init),
            std::mem::transmute::<*mut libc::c_void, DeviceGet>(get),
            std::mem::transmute::<*mut libc::c_void, TotalMem>(total),
        );
        let mut device = 0i32;
        let mut bytes = 0usize;
        (init(0) == 0 && get(&mut device, 0) == 0 && total(&mut bytes, device) == 0)
            .then_some(bytes as u64)
    }
}
