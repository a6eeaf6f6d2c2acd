//! Command-line interface of the `elb` binary.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{dataplane::AttachMode, names::validate_elb_name};

#[derive(Debug, Parser)]
#[command(
    name = "elb",
    version,
    about = "eBPF/XDP-accelerated L4/L7 load balancer"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the load balancer until SIGINT or SIGTERM.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name of this balancer: etcd key prefix, metric prefix and the bpffs
    /// directory `<bpffs>/elb/<name>/` its maps are pinned in.
    #[arg(long, env = "ELBNAME", default_value = "ELB", value_parser = validate_elb_name)]
    pub name: String,

    /// Attach the XDP program to this interface (repeatable).
    #[arg(long = "xdp-iface", value_name = "IFACE", required = true)]
    pub xdp_ifaces: Vec<String>,

    /// XDP attach mode: `auto` tries driver mode and falls back to skb mode.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub xdp_mode: AttachMode,

    /// Where the BPF filesystem is (mounted there if it is not).
    #[arg(long, default_value = "/sys/fs/bpf", value_name = "DIR")]
    pub bpffs: PathBuf,

    /// Directory for the lock file that keeps one elb per name on a host.
    #[arg(long, default_value = "/run/elb", value_name = "DIR")]
    pub run_dir: PathBuf,
}
