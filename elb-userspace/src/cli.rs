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
    /// Run the load balancer until SIGINT or SIGTERM. The XDP data plane
    /// keeps forwarding after elb exits; the next elb adopts it.
    Run(Box<RunArgs>),
    /// Detach the XDP program and remove the pinned maps a stopped elb left
    /// (this drops established L4 flows).
    Teardown(TeardownArgs),
    /// Show a running elb's listeners, upstreams with server health, L4
    /// services and XDP attachments. Exit status: 0 all is well, 1 an
    /// upstream fails open (no healthy server), 2 elb is not running, 3 the
    /// status could not be read.
    Status(StatusArgs),
    /// Look AWS up as elb sees it (the SDK's standard chain: environment,
    /// shared files, instance metadata; AWS_ENDPOINT_URL honoured) and
    /// print JSON: what the ASG discovery provider and the ELB API get.
    #[command(subcommand)]
    Aws(AwsCommand),
}

#[derive(Debug, Subcommand)]
pub enum AwsCommand {
    /// An Auto Scaling group's instances that are InService and Healthy,
    /// with their private addresses and zones.
    AsgInstances {
        #[arg(long, value_name = "NAME")]
        group: String,
        /// Overrides the chain's region.
        #[arg(long)]
        region: Option<String>,
    },
    /// EC2 instances by ID: private addresses, zone, state.
    Ec2Instances {
        #[arg(required = true, value_name = "INSTANCE_ID")]
        ids: Vec<String>,
        /// Overrides the chain's region.
        #[arg(long)]
        region: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Name of the balancer.
    #[arg(long, env = "ELBNAME", default_value = "ELB", value_parser = validate_elb_name)]
    pub name: String,

    /// The run directory of that elb (`elb run --run-dir`): it records its
    /// admin address there.
    #[arg(long, default_value = "/run/elb", value_name = "DIR")]
    pub run_dir: PathBuf,

    /// Ask the admin API at this address instead of the recorded one.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,

    /// The admin token, if elb runs with --admin-token.
    #[arg(
        long,
        env = "ELB_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Where the BPF filesystem is (read when elb is not running).
    #[arg(long, default_value = "/sys/fs/bpf", value_name = "DIR")]
    pub bpffs: PathBuf,

    /// Print the status document (`/__erulb__/status.json`) instead.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TeardownArgs {
    /// Name of the balancer to tear down.
    #[arg(long, env = "ELBNAME", default_value = "ELB", value_parser = validate_elb_name)]
    pub name: String,

    /// Where the BPF filesystem is.
    #[arg(long, default_value = "/sys/fs/bpf", value_name = "DIR")]
    pub bpffs: PathBuf,

    /// Directory of the instance lock (the elb must not be running).
    #[arg(long, default_value = "/run/elb", value_name = "DIR")]
    pub run_dir: PathBuf,
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

    #[command(flatten)]
    pub etcd_access: crate::store::etcd_access::EtcdAccessArgs,

    /// With --etcd: the TTL of the lease under which one elb node leads the
    /// discovery providers; a killed leader is replaced within it (whole
    /// seconds, at least 2).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = crate::discovery::leader::parse_lease_ttl)]
    pub discovery_lease_ttl: Duration,

    /// statsd server (UDP) for per-domain request metrics.
    #[arg(long, env = "STATSD", value_name = "HOST:PORT")]
    pub statsd: Option<String>,

    /// Also serve Prometheus metrics on `http://ADDR/metrics` (plain HTTP,
    /// the admin API's access rules). They are always on the admin API at
    /// `/__erulb__/metrics`.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Also serve the AWS Classic ELB API (Query API, SigV4) on ADDR (plain
    /// HTTP). Off by default; needs --aws-api-credentials. Load balancers
    /// it creates listen on this address's IP.
    #[arg(
        long = "aws-api",
        value_name = "ADDR",
        requires = "aws_api_credentials"
    )]
    pub aws_api: Option<SocketAddr>,

    /// The keys the AWS ELB API accepts: an AWS shared-credentials file
    /// (`[profile]` sections with `aws_access_key_id` and
    /// `aws_secret_access_key`; every profile counts).
    #[arg(
        long = "aws-api-credentials",
        value_name = "FILE",
        requires = "aws_api"
    )]
    pub aws_api_credentials: Option<std::path::PathBuf>,

    /// Access log: a line per request to this file (appended; reopened on
    /// SIGUSR1, for logrotate), or `-` for standard output. Off by default.
    #[arg(long, value_name = "PATH|-")]
    pub access_log: Option<String>,

    /// The access log's line format.
    #[arg(long, value_enum, default_value = "combined", requires = "access_log")]
    pub access_log_format: crate::access_log::Format,

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

    /// This node's availability zone: with `cross_zone: false` in a
    /// policy, servers with `zone=` this zone are preferred.
    #[arg(long, env = "ELB_ZONE", value_name = "ZONE", value_parser = parse_zone)]
    pub zone: Option<String>,

    /// Upstream connect timeout (for a `tls` server, the TLS handshake has
    /// as long again).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// CA certificates (PEM) that `tls` upstream servers and `HTTPS:`
    /// health checks are verified against, instead of the system's.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,

    /// Time an upstream has to answer with response headers (504 after).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// On SIGTERM (or SIGINT), or when a new elb took over, the longest
    /// elb waits for in-flight requests after it stopped accepting; a
    /// (second) signal exits at once.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Time a client has to send its request head; 408 after, once it has
    /// sent part of one (an idle connection is closed without an answer).
    /// Also the longest a keep-alive connection may idle between requests.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Longest wait for the next piece of a request body from the client
    /// (408 after; the upstream is not blamed).
    #[arg(long, default_value = "60s", value_parser = parse_nonzero_duration)]
    pub client_body_timeout: Duration,

    /// Largest request head, in bytes: the request line, every header line
    /// and the empty line that ends the head, each counted with its CRLF
    /// (and any empty lines before the request line). A head of exactly
    /// BYTES is accepted, one byte more gets 431, however the client splits
    /// its writes. Chunked trailers have the same limit.
    #[arg(long, default_value_t = 64 << 10, value_name = "BYTES", value_parser = clap::value_parser!(usize))]
    pub max_header_bytes: usize,

    /// Most request headers accepted.
    #[arg(long, default_value_t = 100)]
    pub max_headers: usize,

    /// Most open client connections, all listeners together; beyond it a
    /// new connection is answered 503 and closed. Default: half of the
    /// file descriptors left after a reserve of 512 (elb raises its soft
    /// fd limit to the hard one at start).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<std::num::NonZeroUsize>,

    /// Most open connections to one upstream server, idle ones included;
    /// a request that would need one more gets another server, or 503.
    /// 0: no per-server cap (all servers together still stay within the
    /// file descriptors left after --max-connections).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_server_connections: usize,

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

    /// Entries of the XDP connection table, two per flow (the kernel
    /// allocates them all at start). Flows live here once their handshake
    /// is complete; a flood of new flows cannot evict them.
    #[arg(long, default_value_t = elb_common::l4::MAX_FLOW_ENTRIES, value_name = "ENTRIES", value_parser = parse_table_size)]
    pub conn_table_size: u32,

    /// Entries of the XDP embryonic table, two per flow: new flows live
    /// here until their handshake is complete (a SYN flood churns only
    /// this table).
    #[arg(long, default_value_t = elb_common::l4::EMBRYO_ENTRIES, value_name = "ENTRIES", value_parser = parse_table_size)]
    pub embryonic_table_size: u32,

    /// Which data plane serves L4 services: `xdp` (needs --xdp-iface; a
    /// failure to attach is fatal), `userspace` (a TCP/UDP proxy binding
    /// each VIP locally; not with --xdp-iface), or `auto` (XDP when
    /// --xdp-iface is given and attaching works, else userspace).
    #[arg(long, value_enum, default_value_t = L4Dataplane::Auto)]
    pub l4_dataplane: L4Dataplane,

    /// Source ports XDP's full NAT allocates from, `LO-HI`, per (server,
    /// SNAT address). Must be clear of the host's ephemeral ports
    /// (net.ipv4.ip_local_port_range) unless reserved
    /// (net.ipv4.ip_local_reserved_ports). Default: the largest run of
    /// ports from 1024 up that the host never hands out (1024-32767 with
    /// Linux's default ephemeral range).
    #[arg(long, value_name = "LO-HI", value_parser = crate::l4::port_range::parse_nat_ports)]
    pub nat_ports: Option<elb_common::nat::NatPorts>,

    /// Where the BPF filesystem is (mounted there if it is not).
    #[arg(long, default_value = "/sys/fs/bpf", value_name = "DIR")]
    pub bpffs: PathBuf,

    /// Directory for the lock file that keeps one elb per name on a host,
    /// and the takeover socket `<name>.sock`.
    #[arg(long, default_value = "/run/elb", value_name = "DIR")]
    pub run_dir: PathBuf,

    /// Take over from the running elb of this --name (zero-downtime
    /// restart or upgrade): receive its listening sockets, start serving,
    /// then let it drain and exit. If this elb fails before serving, the
    /// running one serves on untouched. With no elb running, start as
    /// usual.
    #[arg(long)]
    pub takeover: bool,

    /// Run in the background; return once serving (exit status 0) or
    /// failed (1). For systemd's ExecReload (see dist/elb.service).
    #[arg(long)]
    pub detach: bool,
}

/// `--l4-dataplane`: which data plane serves L4 services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum L4Dataplane {
    /// XDP when --xdp-iface is given and attaching works, else userspace.
    #[default]
    Auto,
    /// XDP only: failing to attach stops elb.
    Xdp,
    /// The userspace TCP/UDP proxy.
    Userspace,
}

/// What `--l4-dataplane` and `--xdp-iface` together ask for at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Start {
    /// Attach XDP; a failure is fatal.
    XdpRequired,
    /// Attach XDP; on failure serve L4 services in userspace.
    XdpOrUserspace,
    /// Userspace from the start; `requested`: by --l4-dataplane userspace
    /// rather than for want of --xdp-iface.
    Userspace { requested: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum L4DataplaneUsage {
    #[error("--l4-dataplane xdp needs at least one --xdp-iface to attach to")]
    XdpWithoutInterface,
    #[error(
        "--l4-dataplane userspace cannot be combined with --xdp-iface (the userspace data \
         plane attaches no XDP program): drop one of them, or use --l4-dataplane auto"
    )]
    UserspaceWithInterface,
}

impl RunArgs {
    /// Checks `--l4-dataplane` against `--xdp-iface`.
    pub fn l4_start(&self) -> Result<L4Start, L4DataplaneUsage> {
        match (self.l4_dataplane, self.xdp_ifaces.is_empty()) {
            (L4Dataplane::Xdp, true) => Err(L4DataplaneUsage::XdpWithoutInterface),
            (L4Dataplane::Xdp, false) => Ok(L4Start::XdpRequired),
            (L4Dataplane::Userspace, false) => Err(L4DataplaneUsage::UserspaceWithInterface),
            (L4Dataplane::Userspace, true) => Ok(L4Start::Userspace { requested: true }),
            (L4Dataplane::Auto, false) => Ok(L4Start::XdpOrUserspace),
            (L4Dataplane::Auto, true) => Ok(L4Start::Userspace { requested: false }),
        }
    }

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

/// A duration that must be more than zero (a zero timeout fails at once).
pub fn parse_nonzero_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!("{text:?} must be more than zero"));
    }
    Ok(duration)
}

fn parse_table_size(text: &str) -> Result<u32, String> {
    use elb_common::l4::{MAX_TABLE_ENTRIES, MIN_TABLE_ENTRIES};
    let size: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of entries"))?;
    if !(MIN_TABLE_ENTRIES..=MAX_TABLE_ENTRIES).contains(&size) {
        return Err(format!(
            "{size} entries: a table holds {MIN_TABLE_ENTRIES} to {MAX_TABLE_ENTRIES}"
        ));
    }
    Ok(size)
}

fn parse_zone(text: &str) -> Result<String, String> {
    crate::config::zones::validate_zone_name(text)?;
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sizes_are_bounded_numbers() {
        assert_eq!(parse_table_size("4096"), Ok(4096));
        assert!(parse_table_size("1023").unwrap_err().contains("1024 to"));
        assert!(parse_table_size("many").unwrap_err().contains("\"many\""));
        assert!(parse_table_size(&(1u64 << 27).to_string()).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_client_body_timeout_must_be_more_than_zero() {
        assert_eq!(parse_nonzero_duration("1s"), Ok(Duration::from_secs(1)));
        let zero = parse_nonzero_duration("0s").expect_err("zero");
        assert!(zero.contains("more than zero"), "{zero}");
        let parsed = |extra: &[&str]| {
            let mut args = vec!["elb", "run"];
            args.extend_from_slice(extra);
            match Cli::try_parse_from(args).expect("parse").command {
                Command::Run(args) => args.client_body_timeout,
                _ => panic!("expected run"),
            }
        };
        assert_eq!(parsed(&[]), Duration::from_secs(60));
        assert_eq!(
            parsed(&["--client-body-timeout", "250ms"]),
            Duration::from_millis(250)
        );
        assert!(Cli::try_parse_from(["elb", "run", "--client-body-timeout", "0"]).is_err());
    }

    fn l4_start(args: &[&str]) -> Result<L4Start, L4DataplaneUsage> {
        let cli = Cli::try_parse_from(args).expect("parse");
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        args.l4_start()
    }

    #[test]
    fn l4_dataplane_choices() {
        use L4Start::*;
        assert_eq!(
            l4_start(&["elb", "run"]),
            Ok(Userspace { requested: false })
        );
        assert_eq!(
            l4_start(&["elb", "run", "--xdp-iface", "eth0"]),
            Ok(XdpOrUserspace)
        );
        assert_eq!(
            l4_start(&["elb", "run", "--xdp-iface", "eth0", "--l4-dataplane", "xdp"]),
            Ok(XdpRequired)
        );
        assert_eq!(
            l4_start(&["elb", "run", "--l4-dataplane", "userspace"]),
            Ok(Userspace { requested: true })
        );
        assert_eq!(
            l4_start(&["elb", "run", "--l4-dataplane", "xdp"]),
            Err(L4DataplaneUsage::XdpWithoutInterface)
        );
        let conflict = l4_start(&[
            "elb",
            "run",
            "--l4-dataplane",
            "userspace",
            "--xdp-iface",
            "eth0",
        ]);
        assert_eq!(conflict, Err(L4DataplaneUsage::UserspaceWithInterface));
        let message = L4DataplaneUsage::UserspaceWithInterface.to_string();
        assert!(message.contains("--xdp-iface") && message.contains("userspace"));
        assert!(Cli::try_parse_from(["elb", "run", "--l4-dataplane", "ebpf"]).is_err());
    }

    #[test]
    fn run_defaults_match_eru() {
        let cli = Cli::try_parse_from(["elb", "run"]).expect("parse");
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(args.listen, [SocketAddr::from(([0, 0, 0, 0], 80))]);
        assert_eq!(args.state_file(), PathBuf::from("/var/lib/elb/ELB.json"));
    }
}
