//! Builds the small C++ shim of `src/torch_ext` against libtorch and sets an rpath to libtorch's
//! lib folder so `target/*/xray` runs without LD_LIBRARY_PATH.
//!
//! cargo hands `DEP_TCH_LIBTORCH_LIB` only to direct dependents of `torch-sys`, which is why
//! Cargo.toml lists `torch-sys` beside `tch`. The headers are the `include` folder beside that
//! lib folder (the layout of both the PyPI wheel and the libtorch zip), compiled with the flags
//! torch-sys uses for its own C++ (C++17, the C++11 ABI unless `LIBTORCH_CXX11_ABI=0`).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=src/torch_ext/shim.cpp");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not report libtorch's lib folder (DEP_TCH_LIBTORCH_LIB)"),
    );
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    let root = lib.parent().expect("libtorch's lib folder has a parent");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("src/torch_ext/shim.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("xray_torch_ext");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
