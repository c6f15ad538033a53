//! With the `tch` feature, bake the libtorch library directory into the binary's rpath so that
//! `chatpainter` starts without `LD_LIBRARY_PATH` (a binary linked against libtorch does not start
//! at all without it, not even for the flex device). Without the feature this script does nothing.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=CHATPAINTER_TORCH_RPATH");
    if env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    // Same precedence as torch-sys: LIBTORCH_LIB names the directory holding the .so files,
    // LIBTORCH the unpacked `torch` folder. CHATPAINTER_TORCH_RPATH adds a directory for a
    // machine where libtorch lives elsewhere (e.g. the GPU machine's site-packages).
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(extra) = env::var_os("CHATPAINTER_TORCH_RPATH") {
        dirs.extend(env::split_paths(&extra));
    }
    if let Some(lib) = env::var_os("LIBTORCH_LIB") {
        dirs.push(PathBuf::from(lib));
    } else if let Some(root) = env::var_os("LIBTORCH") {
        dirs.push(PathBuf::from(root).join("lib"));
    }
    if dirs.is_empty() {
        println!(
            "cargo:warning=feature `tch` without LIBTORCH/LIBTORCH_LIB: the binary gets no rpath \
             and needs LD_LIBRARY_PATH=<torch>/lib to start"
        );
        return;
    }
    for dir in dirs {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
}
