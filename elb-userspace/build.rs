//! Locates the eBPF object that `cargo xtask build-ebpf` produces, so the
//! daemon can embed it. A missing object is a build error with instructions,
//! not a runtime surprise.
use std::{env, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=ELB_EBPF_OBJECT");
    let object = match env::var_os("ELB_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest_dir = PathBuf::from(
                env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
            );
            manifest_dir.join("../target/ebpf/elb.bpf.o")
        }
    };
    println!("cargo::rerun-if-changed={}", object.display());
    if !object.is_file() {
        panic!(
            "\n\nthe eBPF object {} does not exist.\n\
             Build it first with:\n\n    cargo xtask build-ebpf\n\n\
             (or point ELB_EBPF_OBJECT at a built object)\n",
            object.display()
        );
    }
    println!("cargo::rustc-env=ELB_EBPF_OBJECT_PATH={}", object.display());
}
