//! Compiles the eBPF programs in `bpf/` with clang (`-target bpf`, with BTF for CO-RE and the
//! BTF-defined maps) into `$OUT_DIR/telemetry.bpf.o` (and the benchmark's `floor.bpf.o`),
//! which the crate embeds.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = manifest.join("bpf");
    let clang = std::env::var("BPF_CLANG").unwrap_or_else(|_| "clang".into());
    for name in ["telemetry", "floor"] {
        let obj = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror"])
            .arg("-I")
            .arg(&src)
            .arg("-c")
            .arg(src.join(format!("{name}.bpf.c")))
            .arg("-o")
            .arg(&obj)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{clang} failed to compile bpf/{name}.bpf.c ({s})"),
            Err(e) => panic!(
                "cannot run {clang} ({e}): the eBPF programs need clang and libbpf-dev \
                 (scripts/install installs them); BPF_CLANG names another clang"
            ),
        }
    }
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
}
