//! Compiles the kernel programs (`pyleak-ebpf`) for bpfel-unknown-none with the pinned
//! nightly and bpf-linker, and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! Set `AYA_BUILD_SKIP=1` (aya-build's own switch) to build the user side without the kernel toolchain (for example
//! to run unit tests or clippy on a machine without bpf-linker). Such a binary cannot trace: it
//! says so when asked to load its programs.
use aya_build::{Package, Toolchain};

/// The nightly that compiles the eBPF crate. It must use LLVM 22, the version bpf-linker is
/// built against (`cargo xtask setup`); later nightlies moved to LLVM 23. Keep in sync with
/// xtask's `EBPF_NIGHTLY`.
const EBPF_NIGHTLY: &str = "nightly-2026-06-25";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rustc-check-cfg=cfg(pyleak_no_ebpf)");
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // An empty object: `probes` refuses to load it with a message naming this switch.
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        std::fs::write(out.join("pyleak"), b"")?;
        println!("cargo:rustc-cfg=pyleak_no_ebpf");
        return Ok(());
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../pyleak-ebpf");
    aya_build::build_ebpf(
        [Package { name: "pyleak-ebpf", root_dir: root, ..Default::default() }],
        Toolchain::Custom(EBPF_NIGHTLY),
    )
}
