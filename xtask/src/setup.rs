//! `cargo xtask setup`: installs what a fresh machine lacks, and nothing else.
//!
//! Every requirement is probed first; only missing ones are installed, so
//! the command is idempotent and cheap to run before every build.
use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::cmd::Step;

/// Debian packages elb builds, runs or tests with.
pub const APT_PACKAGES: &[&str] = &[
    "bpftool",
    "etcd-server",
    "etcd-client",
    "iproute2",
    "ethtool",
    // etcd-client compiles its protobufs at build time; they import the
    // well-known types (google/protobuf/*.proto) that libprotobuf-dev ships.
    "protobuf-compiler",
    "libprotobuf-dev",
    // Test and benchmark peers.
    "nginx",
    "wrk",
    "curl",
    // `cargo xtask bench tls`: h2load, and openssl (s_time, the certificate).
    "nghttp2-client",
    "openssl",
    // `systemd-analyze verify` of dist/elb.service (the dist_unit test).
    "systemd",
    // Headless browser for the status page test (tests/tests/status_page.rs).
    "chromium",
    "python3-requests",
    // `cargo xtask setup` makes the AWS tests' venv (moto, boto3, awscli).
    "python3-venv",
    // `cargo xtask bench l4`'s other balancers: HAProxy in TCP mode, and
    // iptables DNAT+SNAT (iptables-nft; nft removes the NAT table after).
    "haproxy",
    "iptables",
    "nftables",
    // `cargo xtask bench l7-instructions` counts instructions with callgrind.
    "valgrind",
    // The metrics_prometheus test: promtool check metrics, and a real
    // Prometheus server scraping elb.
    "prometheus",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// The Python venv of the AWS tests: moto (a local EC2 and Auto Scaling),
/// boto3 and the AWS CLI (clients of elb's ELB API). `ELB_VENV` moves it.
pub const VENV_DEFAULT: &str = "/opt/elb-venv";
/// Pinned so every machine tests against the same moto and botocore
/// (boto3 and awscli each pin the botocore they need: these agree).
pub const VENV_PACKAGES: &[(&str, &str)] = &[
    ("moto[server]", "5.2.5"),
    ("boto3", "1.44.8"),
    ("botocore", "1.44.8"),
    ("awscli", "1.46.3"),
];

/// Where the venv is: `ELB_VENV`, else [`VENV_DEFAULT`].
pub fn venv_dir() -> PathBuf {
    std::env::var_os("ELB_VENV").map_or_else(|| PathBuf::from(VENV_DEFAULT), PathBuf::from)
}

/// Components of the eBPF toolchain: `rust-src` for `-Z build-std`, the
/// others to format and lint the eBPF crate.
const EBPF_COMPONENTS: &[&str] = &["rust-src", "clippy", "rustfmt"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    EbpfToolchain(String),
    BpfLinker,
    CargoFuzz,
    AptPackages(Vec<String>),
    PythonVenv(PathBuf),
}

impl Requirement {
    fn describe(&self) -> String {
        match self {
            Self::EbpfToolchain(channel) => {
                format!("Rust {channel} with {}", EBPF_COMPONENTS.join(", "))
            }
            Self::BpfLinker => format!("bpf-linker {BPF_LINKER_VERSION}"),
            Self::CargoFuzz => "cargo-fuzz".to_owned(),
            Self::AptPackages(packages) => format!("Debian packages {}", packages.join(" ")),
            Self::PythonVenv(dir) => format!(
                "Python venv {} with {}",
                dir.display(),
                VENV_PACKAGES
                    .iter()
                    .map(|(name, version)| format!("{name}=={version}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        }
    }
}

/// Installs everything that is missing, reporting each step.
pub fn run(root: &Path) -> Result<()> {
    let channel = ebpf_toolchain(root)?;
    report(&Requirement::EbpfToolchain(channel.clone()), || {
        install_ebpf_toolchain(&channel)
    })?;
    // bpf-linker links against the nightly's LLVM, so it comes second.
    report(&Requirement::BpfLinker, || install_bpf_linker(&channel))?;
    // `cargo xtask fuzz` and the fuzz step of `cargo xtask test`.
    report(&Requirement::CargoFuzz, install_cargo_fuzz)?;
    let missing_packages = missing_apt_packages();
    if missing_packages.is_empty() {
        eprintln!(
            "setup: Debian packages {}: already installed, skipped",
            APT_PACKAGES.join(" ")
        );
    } else {
        let requirement = Requirement::AptPackages(missing_packages.clone());
        install_apt_packages(&missing_packages)
            .with_context(|| format!("setup step failed: {}", requirement.describe()))?;
        eprintln!("setup: {}: installed", requirement.describe());
    }
    // After the Debian packages: the venv needs python3 with venv and pip.
    report(&Requirement::PythonVenv(venv_dir()), || {
        install_venv(&venv_dir())
    })?;
    eprintln!("setup: done");
    Ok(())
}

/// Runs setup only if something is missing.
pub fn ensure(root: &Path) -> Result<()> {
    let channel = ebpf_toolchain(root)?;
    let ready = is_satisfied(&Requirement::EbpfToolchain(channel))
        && is_satisfied(&Requirement::BpfLinker)
        && is_satisfied(&Requirement::CargoFuzz)
        && missing_apt_packages().is_empty()
        && is_satisfied(&Requirement::PythonVenv(venv_dir()));
    if ready { Ok(()) } else { run(root) }
}

fn report(requirement: &Requirement, install: impl FnOnce() -> Result<()>) -> Result<()> {
    if is_satisfied(requirement) {
        eprintln!(
            "setup: {}: already installed, skipped",
            requirement.describe()
        );
        return Ok(());
    }
    install().with_context(|| format!("setup step failed: {}", requirement.describe()))?;
    if !is_satisfied(requirement) {
        bail!(
            "setup step failed: {} is still missing after installing it",
            requirement.describe()
        );
    }
    eprintln!("setup: {}: installed", requirement.describe());
    Ok(())
}

fn is_satisfied(requirement: &Requirement) -> bool {
    match requirement {
        Requirement::EbpfToolchain(channel) => Step::new("rustup")
            .args(["component", "list", "--installed", "--toolchain", channel])
            .probe()
            .is_some_and(|out| {
                EBPF_COMPONENTS
                    .iter()
                    .all(|c| out.lines().any(|l| l.starts_with(c)))
            }),
        // Running it also proves its libLLVM still resolves.
        Requirement::BpfLinker => Step::new("bpf-linker")
            .args(["--version"])
            .probe()
            .is_some_and(|out| out.contains(BPF_LINKER_VERSION)),
        // `cargo fuzz --version` needs no nightly; any version will do.
        Requirement::CargoFuzz => Step::new(cargo_program())
            .args(["fuzz", "--version"])
            .probe()
            .is_some_and(|out| out.starts_with("cargo-fuzz")),
        Requirement::AptPackages(packages) => packages.iter().all(|p| apt_installed(p)),
        Requirement::PythonVenv(dir) => venv_has_pins(dir),
    }
}

/// The venv's pip reports every pinned package at its version.
fn venv_has_pins(dir: &Path) -> bool {
    let Some(freeze) = Step::new(dir.join("bin/pip")).args(["freeze"]).probe() else {
        return false;
    };
    VENV_PACKAGES.iter().all(|(name, version)| {
        let bare = name.split('[').next().unwrap_or(name);
        freeze.lines().any(|line| {
            line.split_once("==").is_some_and(|(package, installed)| {
                package.eq_ignore_ascii_case(bare) && installed == *version
            })
        })
    }) && dir.join("bin/moto_server").exists()
        && dir.join("bin/aws").exists()
}

fn install_venv(dir: &Path) -> Result<()> {
    if !dir.join("bin/pip").exists() {
        Step::new("python3")
            .args([OsStr::new("-m"), OsStr::new("venv"), dir.as_os_str()])
            .run("creating the Python venv")?;
    }
    let pins: Vec<String> = VENV_PACKAGES
        .iter()
        .map(|(name, version)| format!("{name}=={version}"))
        .collect();
    Step::new(dir.join("bin/pip"))
        .args(["install", "--disable-pip-version-check"])
        .args(&pins)
        .run("installing moto, boto3 and the AWS CLI into the venv")
}

fn cargo_program() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn install_cargo_fuzz() -> Result<()> {
    Step::new(cargo_program())
        .args(["install", "cargo-fuzz", "--locked"])
        .run("installing cargo-fuzz")
}

/// The eBPF toolchain channel, read from elb-ebpf/rust-toolchain.toml so it
/// is written down in one place.
pub fn ebpf_toolchain(root: &Path) -> Result<String> {
    toolchain_channel(&root.join("elb-ebpf/rust-toolchain.toml"))
}

/// The `channel` a rust-toolchain.toml names.
pub fn toolchain_channel(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .next()
        .with_context(|| format!("{} has no `channel = \"...\"` line", path.display()))
}

fn install_ebpf_toolchain(channel: &str) -> Result<()> {
    Step::new("rustup")
        .args(["toolchain", "install", channel, "--profile", "minimal"])
        .args(["--component", &EBPF_COMPONENTS.join(",")])
        .run("installing the eBPF toolchain")
}

/// Builds bpf-linker against the eBPF nightly's own libLLVM (Debian has no
/// LLVM of the matching version). The prefix must outlive this build: the
/// binary's rpath points into it.
fn install_bpf_linker(channel: &str) -> Result<()> {
    let sysroot = Step::new("rustc")
        .args([format!("+{channel}"), "--print".into(), "sysroot".into()])
        .probe()
        .context("cannot find the eBPF toolchain's sysroot")?;
    let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", lib_dir.display()))?;

    let prefix = llvm_prefix()?;
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let soname = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(soname)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    }
    Step::new(cargo_program())
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--locked", "--force"])
        .env("LLVM_PREFIX", &prefix)
        .run("building bpf-linker against the nightly's libLLVM")
}

/// A stable place outside the checkout and `target/`.
fn llvm_prefix() -> Result<PathBuf> {
    let data_home = match std::env::var_os("XDG_DATA_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".local/share")
        }
    };
    Ok(data_home.join("elb/rust-llvm"))
}

fn apt_installed(package: &str) -> bool {
    Step::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .probe()
        .is_some_and(|status| status.trim() == "install ok installed")
}

fn missing_apt_packages() -> Vec<String> {
    APT_PACKAGES
        .iter()
        .filter(|p| !apt_installed(p))
        .map(|p| p.to_string())
        .collect()
}

fn install_apt_packages(packages: &[String]) -> Result<()> {
    Step::new("apt-get")
        .args(["update", "-q"])
        .run("refreshing the Debian package lists")?;
    Step::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run("installing Debian packages")
}
