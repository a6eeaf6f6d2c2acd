//! Command-line interface of the `elb` binary.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{cidr::Cidr, dataplane::AttachMode, names::validate_elb_name};

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
    Run(Box<RunArgs>),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name of this balancer: etcd key prefix (`/<name>/...`), statsd metric
    /// prefix, and the bpffs directory `<bpffs>/elb/<name>/`.
    #[arg(long, env = "ELBNAME", default_value = "ELB", value_parser = validate_elb_name)]
    pub name: String,

    /// HTTP listener address (repeatable).
    #[arg(long = "listen", value_name = "ADDR", default_values_t = [SocketAddr::from(([0, 0, 0, 0], 80))])]
    pub listen: Vec<SocketAddr>,

    /// etcd endpoints: `IP:PORT`, `http://IP:PORT`, or a comma-separated
    /// list. Without it, elb uses the embedded store (--state-file).
    #[arg(long, env = "ETCD", value_name = "ENDPOINTS")]
    pub etcd: Option<String>,

    /// statsd server (UDP) for per-domain request metrics.
    #[arg(long, env = "STATSD", value_name = "HOST:PORT")]
    pub statsd: Option<String>,

    /// The embedded store's file (default /var/lib/elb/<name>.json); with
    /// etcd, the local snapshot of etcd's state (default
    /// /var/lib/elb/<name>.etcd-snapshot.json).
    #[arg(long, value_name = "PATH")]
    pub state_file: Option<PathBuf>,

    /// Also allow admin API clients from this network (repeatable);
    /// loopback is always allowed.
    #[arg(long = "admin-allow", value_name = "CIDR")]
    pub admin_allow: Vec<Cidr>,

    /// Require `Authorization: Bearer <TOKEN>` on the admin API.
    #[arg(
        long,
        env = "ELB_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Largest admin API request body.
    #[arg(long, default_value_t = 8 << 20, value_name = "BYTES")]
    pub admin_max_body: usize,

    /// Upstream connect timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Time an upstream has to answer with response headers (504 after).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// Time a client has to send its request headers.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Largest request head (request line plus headers).
    #[arg(long, default_value_t = 64 << 10, value_name = "BYTES", value_parser = clap::value_parser!(usize))]
    pub max_header_bytes: usize,

    /// Most request headers accepted.
    #[arg(long, default_value_t = 100)]
    pub max_headers: usize,

    /// HTTP worker threads, each with its own event loop (default: one per
    /// CPU).
    #[arg(long, value_name = "N")]
    pub workers: Option<std::num::NonZeroUsize>,

    /// Attach the XDP program to this interface (repeatable).
    #[arg(long = "xdp-iface", value_name = "IFACE")]
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

impl RunArgs {
    /// The state file for the store in use (see --state-file).
    pub fn state_file(&self) -> PathBuf {
        self.state_file.clone().unwrap_or_else(|| {
            let file = if self.etcd.is_some() {
                format!("{}.etcd-snapshot.json", self.name)
            } else {
                format!("{}.json", self.name)
            };
            PathBuf::from("/var/lib/elb").join(file)
        })
    }
}

/// `10s`, `500ms`, `1m`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 10s or 500ms: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn run_defaults_match_eru() {
        let cli = Cli::try_parse_from(["elb", "run"]).expect("parse");
        let Command::Run(args) = cli.command;
        assert_eq!(args.listen, [SocketAddr::from(([0, 0, 0, 0], 80))]);
        assert_eq!(args.state_file(), PathBuf::from("/var/lib/elb/ELB.json"));
    }
}
