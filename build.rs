//! Sets an rpath to libtorch's lib folder so `target/*/xray` runs without LD_LIBRARY_PATH.
//!
//! cargo hands `DEP_TCH_LIBTORCH_LIB` only to direct dependents of `torch-sys`, which is why
//! Cargo.toml lists `torch-sys` beside `tch`.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
