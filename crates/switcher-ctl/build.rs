//! Builds the eBPF object (`crates/switcher-ebpf`) and leaves it in `OUT_DIR/switcher` for
//! `include_bytes_aligned!`. Two toolchain routes, whichever is present:
//! 1. Debian's `rustc-web` with `libstd-rust-web-dev-bpf` (a prebuilt `core` for
//!    `bpfel-unknown-none`): RUSTC=/usr/bin/rustc, RUSTC_BOOTSTRAP=1.
//! 2. rustup nightly with rust-src: `cargo +nightly build -Z build-std=core`.
//!
//! Both link with `bpf-linker`. `SWITCHER_EBPF_OBJ=/path/to/object` skips the build.
//! (aya-build does route 2 only, hence this script.)

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// Debian's rustc-web; its sysroot has `core` for the BPF targets.
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
/// Where Debian's `libstd-rust-web-dev-bpf` puts the BPF `core`.
const DEBIAN_BPF_SYSROOT: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
const TARGET: &str = "bpfel-unknown-none";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().parent().unwrap().to_path_buf();
    let ebpf_dir = root.join("crates/switcher-ebpf");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("switcher");
    println!("cargo:rerun-if-env-changed=SWITCHER_EBPF_OBJ");
    if let Ok(obj) = env::var("SWITCHER_EBPF_OBJ") {
        std::fs::copy(&obj, &out).unwrap_or_else(|e| panic!("copy {obj}: {e}"));
        return;
    }
    for dir in ["crates/switcher-ebpf/src", "crates/switcher-common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for file in [
        "crates/switcher-ebpf/Cargo.toml",
        "crates/switcher-ebpf/Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let target_dir = root.join("target/bpf");
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // The outer build's settings must not leak into the BPF build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "RUSTDOC",
    ] {
        cmd.env_remove(var);
    }
    let debian = Path::new(DEBIAN_RUSTC).exists() && Path::new(DEBIAN_BPF_SYSROOT).exists();
    if debian {
        cmd.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
        cmd.arg("build");
    } else {
        cmd.args(["+nightly", "build", "-Z", "build-std=core"]);
    }
    cmd.current_dir(&ebpf_dir)
        .args(["--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running cargo for the eBPF crate: {e}"));
    if !status.success() {
        panic!(
            "building the eBPF object failed ({}); run `sudo scripts/setup` to install \
             bpf-linker and a BPF-capable rustc",
            if debian {
                "Debian rustc-web route"
            } else {
                "rustup nightly route"
            }
        );
    }
    let built = target_dir.join(TARGET).join("release/switcher");
    std::fs::copy(&built, &out).unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
}
