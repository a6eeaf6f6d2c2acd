//! The L4 end-to-end scenario, run against either data plane: a client
//! namespace and three server namespaces reach the LB namespace over
//! separate veth links; real TCP connections and UDP datagrams to a VIP
//! are balanced by elb, through its XDP program (driver mode on veth) or
//! its userspace fallback (the VIP on the LB namespace's `lo`).
//!
//! Checksum offload is turned off on the client and server ends: veth hands
//! locally generated packets over with only a partial checksum, which a
//! real NIC would complete but XDP forwarding does not.
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use elb_common::{counters::IPPROTO_TCP, maglev::DEFAULT_TABLE_SIZE};
use elb_userspace::{
    l4::plan::plan_service,
    upstream::{Server, parse_params},
};

use crate::{
    elb_process::ElbProcess,
    netns::{NetNs, unique_name, veth_pair},
};

pub const VIP: &str = "10.99.0.1";
pub const VIP6: &str = "fd99::1";
pub const CLIENT: &str = "10.50.0.2";
/// New connections of the weight check.
pub const CONNECTIONS: usize = 3000;
/// `{"msg":"OK"}`: what every successful admin write answers.
pub const OK: &str = r#"{"msg":"OK"}"#;

/// Which data plane elb runs the scenario on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dataplane {
    /// `--l4-dataplane xdp` on the LB's veth ends: a failure to attach is
    /// fatal, so the test cannot pass on the fallback by accident.
    Xdp,
    /// `--l4-dataplane userspace`, the VIP a local address.
    Userspace,
}

impl Dataplane {
    /// What elb logs when this data plane is active.
    pub fn log_line(self) -> &'static str {
        match self {
            Self::Xdp => "L4 data plane: xdp",
            Self::Userspace => "L4 data plane: userspace",
        }
    }

    /// The `"dataplane"` of `/__erulb__/stats`.
    pub fn stats_name(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::Userspace => "userspace",
        }
    }
}

/// A server answering each line on a TCP connection, and each UDP
/// datagram, with its name.
pub struct IdServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl IdServer {
    pub fn start(ns: &NetNs, addr: SocketAddr, name: &'static str) -> Self {
        let (tcp, udp) = ns
            .enter(move || {
                let tcp = TcpListener::bind(addr).expect("bind tcp");
                let udp = UdpSocket::bind(addr).expect("bind udp");
                (tcp, udp)
            })
            .expect("enter server namespace");
        tcp.set_nonblocking(true).expect("nonblocking");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("udp timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let tcp_thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((stream, _)) => {
                            std::thread::spawn(move || answer_lines(stream, name));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        let udp_thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(name.as_bytes(), peer);
                    }
                }
            })
        };
        Self {
            stop,
            threads: vec![tcp_thread, udp_thread],
        }
    }
}

impl Drop for IdServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The port each server's [`HealthListener`] listens on (`TCP:9000`).
pub const HEALTH_PORT: u16 = 9000;

/// A TCP port that accepts connections and closes them: the target of a
/// `TCP:<port>` health check, beside the [`IdServer`] so the check can be
/// failed (drop it: connects are refused) while the server keeps serving.
pub struct HealthListener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HealthListener {
    /// Listens on `addr` in `ns` (std sets SO_REUSEADDR, so a listener can
    /// be started again on the same address at once).
    pub fn start(ns: &NetNs, addr: SocketAddr) -> Self {
        let listener = ns
            .enter(move || TcpListener::bind(addr).expect("bind the health port"))
            .expect("enter server namespace");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if listener.accept().is_err() {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                // The listener closes here: new checks are refused.
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HealthListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer_lines(stream: TcpStream, name: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    for line in BufReader::new(stream).lines() {
        if line.is_err() || writer.write_all(format!("{name}\n").as_bytes()).is_err() {
            return;
        }
    }
}

/// A connection from the client namespace to the VIP.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    /// The client's end, as the LB sees it (no NAT on the way).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.writer.local_addr()
    }

    /// Asks the server its name.
    pub fn ask(&mut self) -> std::io::Result<String> {
        self.writer.write_all(b"who\n")?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if line.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim().to_owned())
    }

    /// How long `ask` waits for the answer.
    pub fn set_answer_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        self.writer.set_read_timeout(Some(timeout))
    }

    /// Segments this end has retransmitted so far (`TCP_INFO`'s
    /// `tcpi_total_retrans`): what TCP did to recover lost frames.
    pub fn retransmissions(&self) -> std::io::Result<u32> {
        use std::os::fd::AsRawFd;
        // SAFETY: `tcp_info` is plain integers; all zeros is a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `info`, for
        // the socket this descriptor names.
        let rc = unsafe {
            libc::getsockopt(
                self.writer.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(info.tcpi_total_retrans)
    }

    /// Closes with a reset (linger 0) rather than a FIN.
    pub fn reset(self) -> std::io::Result<()> {
        socket2::SockRef::from(&self.writer).set_linger(Some(Duration::ZERO))
    }
}

/// A new TCP connection from the client namespace to the VIP, port 80.
pub fn connect(client: &NetNs) -> std::io::Result<Conn> {
    connect_to(
        client,
        SocketAddr::from((VIP.parse::<std::net::Ipv4Addr>().expect("vip"), 80)),
    )
}

/// A new TCP connection from the client namespace to `addr`.
pub fn connect_to(client: &NetNs, addr: SocketAddr) -> std::io::Result<Conn> {
    let stream = client
        .enter(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .map_err(std::io::Error::other)??;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(Conn {
        writer: stream.try_clone()?,
        reader: BufReader::new(stream),
    })
}

/// The namespaces: the client (10.50.0.2), the LB, and servers s1..s3
/// (10.6<i>.0.2), each on its own veth link to the LB.
pub struct Net {
    pub client: NetNs,
    pub lb: NetNs,
    pub servers: Vec<NetNs>,
    /// The LB's ends of the links (where XDP attaches).
    pub lb_ifaces: Vec<String>,
}

fn ethtool(ns: &NetNs, dev: &str, args: &[&str]) {
    let mut full = vec!["-K", dev];
    full.extend_from_slice(args);
    ns.exec("ethtool", &full).expect("ethtool");
}

/// Builds the namespaces. For the userspace data plane the VIP is a local
/// address of the LB (on `lo`), as that mode needs.
pub fn network(dataplane: Dataplane) -> Net {
    let client = NetNs::new("e4c").expect("client ns");
    let lb = NetNs::new("e4l").expect("lb ns");
    let link = veth_pair(
        &client,
        &["10.50.0.2/24", "fd50::2/64"],
        &lb,
        &["10.50.0.1/24", "fd50::1/64"],
    )
    .expect("veth");
    ethtool(&client, &link.a, &["tx", "off"]);
    ethtool(&client, &link.a, &["gro", "on"]);
    client
        .ip(&["route", "add", "10.99.0.0/24", "via", "10.50.0.1"])
        .expect("client route");
    client
        .ip(&["-6", "route", "add", "fd99::/64", "via", "fd50::1"])
        .expect("client IPv6 route");
    let mut lb_ifaces = vec![link.b];
    let mut servers = Vec::new();
    for i in 1..=3 {
        let ns = NetNs::new("e4s").expect("server ns");
        let link = veth_pair(
            &ns,
            &[&format!("10.6{i}.0.2/24"), &format!("fd6{i}::2/64")],
            &lb,
            &[&format!("10.6{i}.0.1/24"), &format!("fd6{i}::1/64")],
        )
        .expect("veth");
        ethtool(&ns, &link.a, &["tx", "off"]);
        ethtool(&ns, &link.a, &["gro", "on"]);
        ns.ip(&["route", "add", "default", "via", &format!("10.6{i}.0.1")])
            .expect("server route");
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("fd6{i}::1"),
        ])
        .expect("server IPv6 route");
        lb_ifaces.push(link.b);
        servers.push(ns);
    }
    lb.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .expect("forwarding");
    lb.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])
        .expect("IPv6 forwarding");
    if dataplane == Dataplane::Userspace {
        lb.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])
            .expect("VIP on lo");
        lb.ip(&["addr", "add", &format!("{VIP6}/128"), "dev", "lo", "nodad"])
            .expect("IPv6 VIP on lo");
    }
    Net {
        client,
        lb,
        servers,
        lb_ifaces,
    }
}

/// An admin API request from inside the LB namespace; returns the body.
pub fn admin(lb: &NetNs, port: u16, method: &str, endpoint: &str, body: &str) -> String {
    let url = format!("http://127.0.0.1:{port}/__erulb__/{endpoint}");
    let out = lb
        .exec("curl", &["-sS", "-X", method, &url, "-d", body])
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `GET /__erulb__/stats`, parsed.
pub fn stats(lb: &NetNs, port: u16) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{port}/__erulb__/stats");
    let out = lb.exec("curl", &["-sS", &url]).expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stats are not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The server (`s1`..`s3`) each new connection to the VIP should reach
/// with these weights: elb's own planning and flow hash, which both data
/// planes use.
pub fn expected_picks(weights: &[(u8, u32)]) -> impl Fn(SocketAddr) -> String {
    let servers: Vec<Server> = weights
        .iter()
        .map(|(i, w)| {
            Server::new(
                format!("10.6{i}.0.2:8080"),
                parse_params(&format!("weight={w}")).expect("params"),
            )
        })
        .collect();
    let vip: SocketAddr = format!("{VIP}:80").parse().expect("vip");
    let (plan, _) = plan_service(vip, &servers, DEFAULT_TABLE_SIZE);
    let plan = plan.expect("table").expect("servers");
    move |client| {
        let server = plan.pick(client, vip, IPPROTO_TCP).expect("a server");
        // 10.6<i>.0.2 is s<i>.
        match server.addr.ip() {
            std::net::IpAddr::V4(ip) => format!("s{}", ip.octets()[1] - 60),
            other => panic!("unexpected server {other}"),
        }
    }
}

/// The upstream `web` with servers `10.6<i>.0.2:8080` of these weights.
pub fn upstream_doc(weights: &[(u8, u32)]) -> String {
    let servers: Vec<String> = weights
        .iter()
        .map(|(i, w)| format!(r#""10.6{i}.0.2:8080": "weight={w}""#))
        .collect();
    format!(r#"{{"web": {{{}}}}}"#, servers.join(", "))
}

/// Everything one run of the scenario needs. Fields drop in order: elb
/// first, then the servers, then the namespaces.
pub struct E2e {
    pub elb: ElbProcess,
    pub servers: Vec<IdServer>,
    pub net: Net,
    pub dataplane: Dataplane,
    pub name: String,
    pub port: u16,
    pub run_dir: tempfile::TempDir,
}

impl E2e {
    /// The network, the three servers and elb on `dataplane`.
    pub fn start(dataplane: Dataplane) -> Self {
        Self::start_with(dataplane, &[])
    }

    /// [`E2e::start`], elb with `extra` flags (not kept for restarts).
    pub fn start_with(dataplane: Dataplane, extra: &[&str]) -> Self {
        let net = network(dataplane);
        let servers = ["s1", "s2", "s3"]
            .iter()
            .enumerate()
            .flat_map(|(i, name)| {
                let v4: SocketAddr = format!("10.6{}.0.2:8080", i + 1).parse().expect("addr");
                let v6: SocketAddr = format!("[fd6{}::2]:8080", i + 1).parse().expect("addr");
                [
                    IdServer::start(&net.servers[i], v4, name),
                    IdServer::start(&net.servers[i], v6, name),
                ]
            })
            .collect();
        let run_dir = tempfile::tempdir().expect("run dir");
        let port = crate::ports::free_port();
        let name = unique_name("E");
        let elb = start_elb(&net, &name, run_dir.path(), port, dataplane, extra);
        Self {
            elb,
            servers,
            net,
            dataplane,
            name,
            port,
            run_dir,
        }
    }

    /// Starts another elb with the same name, state and arguments (for a
    /// restart, once the running one is stopped).
    pub fn start_elb(&self) -> ElbProcess {
        self.start_elb_with(&[])
    }

    /// [`E2e::start_elb`] with `extra` flags (e.g. `--takeover`, with the
    /// running one still up).
    pub fn start_elb_with(&self, extra: &[&str]) -> ElbProcess {
        start_elb(
            &self.net,
            &self.name,
            self.run_dir.path(),
            self.port,
            self.dataplane,
            extra,
        )
    }

    pub fn admin(&self, method: &str, endpoint: &str, body: &str) -> String {
        admin(&self.net.lb, self.port, method, endpoint, body)
    }

    pub fn stats(&self) -> serde_json::Value {
        stats(&self.net.lb, self.port)
    }

    /// Waits until a new connection gets an answer (both data planes apply
    /// a change within a few hundred milliseconds).
    /// Whether the client namespace gets an HTTP answer from elb's HTTP
    /// listener (any status: the admin API refuses non-local clients).
    pub fn http_listener_answers_client(&self) -> bool {
        let addr = SocketAddr::from(([10, 50, 0, 1], self.port));
        let answer = connect_to(&self.net.client, addr).and_then(|mut conn| {
            conn.writer.write_all(
                b"GET /__erulb__/service HTTP/1.1\r\nHost: elb\r\nConnection: close\r\n\r\n",
            )?;
            let mut status = String::new();
            conn.reader.read_line(&mut status)?;
            Ok(status)
        });
        matches!(answer, Ok(status) if status.starts_with("HTTP/1.1 "))
    }

    pub fn wait_serving(&self) {
        let mut last = None;
        for _ in 0..20 {
            match connect(&self.net.client).and_then(|mut c| c.ask()) {
                Ok(_) => return,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the VIP never answered ({last:?})\n{}\nelb log:\n{}",
            self.diagnostics(),
            self.elb.log()
        );
    }

    /// What the LB namespace looks like, for a failure message.
    pub fn diagnostics(&self) -> String {
        let lb = &self.net.lb;
        let text = |out: anyhow::Result<std::process::Output>| match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => format!("({e})"),
        };
        let neigh = text(lb.ip(&["neigh"]));
        let specific = match self.dataplane {
            Dataplane::Xdp => {
                let pin = format!("/sys/fs/bpf/elb/{}/elb_glob_stats", self.name);
                format!(
                    "XDP stats: {}",
                    text(lb.exec("bpftool", &["map", "dump", "pinned", &pin]))
                )
            }
            Dataplane::Userspace => format!(
                "sockets: {}\naddresses: {}",
                text(lb.exec("ss", &["-tuan"])),
                text(lb.ip(&["-br", "addr"]))
            ),
        };
        format!("neigh: {neigh}\n{specific}")
    }
}

fn start_elb(
    net: &Net,
    name: &str,
    run_dir: &Path,
    port: u16,
    dataplane: Dataplane,
    extra: &[&str],
) -> ElbProcess {
    let run_dir = run_dir.to_str().expect("utf-8");
    // All addresses: the client namespace reaches the HTTP listener too
    // (through the LB's 10.50.0.1), for the deny-list check.
    let listen = format!("0.0.0.0:{port}");
    let state = format!("{run_dir}/{name}.json");
    let mut args = vec![
        "run",
        "--name",
        name,
        "--run-dir",
        run_dir,
        "--state-file",
        &state,
        "--listen",
        &listen,
    ];
    match dataplane {
        Dataplane::Xdp => {
            args.extend(["--l4-dataplane", "xdp", "--xdp-mode", "driver"]);
            for iface in &net.lb_ifaces {
                args.extend(["--xdp-iface", iface.as_str()]);
            }
        }
        Dataplane::Userspace => args.extend(["--l4-dataplane", "userspace"]),
    }
    args.extend_from_slice(extra);
    let mut elb = ElbProcess::spawn(&args, Some(&net.lb)).expect("spawn elb");
    let lb = &net.lb;
    elb.wait_until(Duration::from_secs(15), || {
        lb.exec(
            "curl",
            &["-sf", &format!("http://127.0.0.1:{port}/__erulb__/service")],
        )
        .is_ok()
    })
    .expect("elb serves its admin API");
    elb
}

/// What the scenario saw, for the data-plane-specific checks after it.
#[derive(Debug, Default)]
pub struct Outcome {
    /// New connections per server (s1, s2, s3) in the weight check.
    pub counts: [usize; 3],
    /// Connections the scenario opened through the VIP, all steps.
    pub connections: usize,
}

/// The scenario both data planes pass:
///
/// 1. 3,000 new connections split 1:2:3 within ±5 %, every one answered;
/// 2. long-lived connections survive a weight change; then `midway` runs
///    with them still open, and they answer from the same server after
///    it (the XDP test restarts elb there; the fallback has nothing to
///    restart: its flows end with the process);
/// 3. removing s3 leaves the connections to s1 and s2 intact, and no new
///    connection reaches s3;
/// 4. UDP is answered from the VIP;
/// 5. the deny-list blocks the client; lifting it lets it back in.
pub fn scenario(e2e: &mut E2e, midway: impl FnOnce(&mut E2e)) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome::default();
    e2e.elb
        .wait_for_log(Duration::from_secs(5), e2e.dataplane.log_line())
        .expect("elb names its L4 data plane");
    assert_eq!(
        e2e.admin("PUT", "upstream", &upstream_doc(&[(1, 1), (2, 2), (3, 3)])),
        OK
    );
    let services = format!(
        r#"{{"web": {{"vip": "{VIP}:80", "proto": "tcp", "upstream": "web"}}, "dns": {{"vip": "{VIP}:8080", "proto": "udp", "upstream": "web"}}}}"#
    );
    assert_eq!(e2e.admin("PUT", "service", &services), OK);
    e2e.wait_serving();

    // 1. Weights 1:2:3 over 3,000 new connections, every one answered,
    //    each by the server elb's Maglev plan and flow hash name for it.
    let expected = expected_picks(&[(1, 1), (2, 2), (3, 3)]);
    let mut unexpected = Vec::new();
    for n in 0..CONNECTIONS {
        let (client, answer) = connect(&e2e.net.client)
            .and_then(|mut c| Ok((c.local_addr()?, c.ask()?)))
            .unwrap_or_else(|e| panic!("connection {n} failed: {e}\n{}", e2e.elb.log()));
        outcome.counts[server_index(&answer)] += 1;
        let want = expected(client);
        if answer != want {
            unexpected.push((client, answer, want));
        }
    }
    assert!(
        unexpected.is_empty(),
        "{} of {CONNECTIONS} connections did not reach the planned server (client, got, planned): {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(10)]
    );
    outcome.connections += CONNECTIONS;
    let counts = outcome.counts;
    for (i, count) in counts.iter().enumerate() {
        let share = *count as f64 / CONNECTIONS as f64;
        let want = (i + 1) as f64 / 6.0;
        assert!(
            (share - want).abs() <= 0.05,
            "server s{} got {share:.3} of connections, weight share {want:.3} ({counts:?})",
            i + 1
        );
    }
    eprintln!(
        "{:?}: {CONNECTIONS} connections split {counts:?} in {:?}",
        e2e.dataplane,
        started.elapsed()
    );

    // 2. Long-lived connections survive a weight change (and `midway`).
    let mut long_lived: Vec<(Conn, String)> = (0..30)
        .map(|_| {
            let mut conn = connect(&e2e.net.client).expect("connect");
            let server = conn.ask().expect("first answer");
            (conn, server)
        })
        .collect();
    outcome.connections += long_lived.len();
    assert_eq!(
        e2e.admin("PUT", "upstream", &upstream_doc(&[(1, 5), (2, 1), (3, 1)])),
        OK
    );
    std::thread::sleep(Duration::from_millis(500));
    for (conn, server) in &mut long_lived {
        assert_eq!(&conn.ask().expect("after weight change"), server);
    }
    midway(e2e);
    for (conn, server) in &mut long_lived {
        assert_eq!(&conn.ask().expect("after the midway step"), server);
    }

    // 3. Removing s3 leaves every connection to s1 and s2 intact; no new
    //    connection reaches s3.
    assert_eq!(
        e2e.admin("PUT", "upstream", &upstream_doc(&[(1, 1), (2, 1)])),
        OK
    );
    std::thread::sleep(Duration::from_millis(500));
    for (conn, server) in long_lived.iter_mut().filter(|(_, s)| s != "s3") {
        assert_eq!(&conn.ask().expect("after removing s3"), server);
    }
    for _ in 0..50 {
        let answer = connect(&e2e.net.client)
            .and_then(|mut c| c.ask())
            .expect("new connection");
        assert_ne!(answer, "s3", "a removed server got a new connection");
    }
    outcome.connections += 50;
    drop(long_lived);

    // 4. UDP: answered through the VIP (the reply comes from the VIP).
    let udp = e2e
        .net
        .client
        .enter(|| UdpSocket::bind(format!("{CLIENT}:0")).expect("udp bind"))
        .expect("enter client");
    udp.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let vip_udp: SocketAddr = format!("{VIP}:8080").parse().expect("vip");
    udp.send_to(b"who", vip_udp).expect("send");
    let mut buf = [0u8; 16];
    let (len, from) = udp
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no UDP answer: {e}\n{}", e2e.elb.log()));
    assert_eq!(from, vip_udp);
    assert!(matches!(&buf[..len], b"s1" | b"s2"), "{:?}", &buf[..len]);

    // 5. The deny-list blocks the client, at the VIP and at the HTTP
    //    listener; lifting it lets it back in.
    assert!(
        e2e.http_listener_answers_client(),
        "HTTP listener unreachable"
    );
    assert_eq!(e2e.admin("PUT", "acl", &format!(r#"["{CLIENT}/32"]"#)), OK);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        connect(&e2e.net.client).and_then(|mut c| c.ask()).is_err(),
        "denied client got through"
    );
    assert!(
        !e2e.http_listener_answers_client(),
        "denied client got an answer from the HTTP listener"
    );
    assert_eq!(
        e2e.admin("DELETE", "acl", &format!(r#"["{CLIENT}/32"]"#)),
        OK
    );
    e2e.wait_serving();
    assert!(
        e2e.http_listener_answers_client(),
        "HTTP listener after the ACL"
    );
    eprintln!(
        "{:?}: scenario done in {:?}",
        e2e.dataplane,
        started.elapsed()
    );
    outcome
}

/// The client port every connection of [`port_reuse_step`] comes from:
/// below the client's ephemeral range, so no other connection takes it.
pub const REUSED_CLIENT_PORT: u16 = 31_000;

/// A client reusing its source port: `count` connections in a row from
/// [`REUSED_CLIENT_PORT`] to the VIP, each reset by the client when done
/// (so neither side keeps a TIME_WAIT that would refuse the next). Every
/// one must be answered, all by the same server; returns that server.
pub fn port_reuse_step(e2e: &E2e, count: usize) -> String {
    let local: SocketAddr = format!("{CLIENT}:{REUSED_CLIENT_PORT}")
        .parse()
        .expect("client addr");
    let vip: SocketAddr = format!("{VIP}:80").parse().expect("vip");
    let mut answers = Vec::with_capacity(count);
    for n in 0..count {
        let answer = connect_from(&e2e.net.client, local, vip)
            .and_then(|mut conn| {
                let answer = conn.ask()?;
                conn.reset()?;
                Ok(answer)
            })
            .unwrap_or_else(|e| {
                panic!("reused-port connection {n} failed: {e}\n{}", e2e.elb.log())
            });
        answers.push(answer);
    }
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "one client port went to several servers: {answers:?}"
    );
    answers.swap_remove(0)
}

/// A new TCP connection from `local` in the client namespace to `addr`.
fn connect_from(client: &NetNs, local: SocketAddr, addr: SocketAddr) -> std::io::Result<Conn> {
    let stream = client
        .enter(move || -> std::io::Result<TcpStream> {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(local),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.set_reuse_address(true)?;
            socket.bind(&local.into())?;
            socket.connect_timeout(&addr.into(), Duration::from_secs(2))?;
            Ok(socket.into())
        })
        .map_err(std::io::Error::other)??;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(Conn {
        writer: stream.try_clone()?,
        reader: BufReader::new(stream),
    })
}

/// IPv6: a TCP and a UDP service on an IPv6 VIP over IPv6 servers s1 and
/// s2 (weights 1:1); every one of 200 new connections is answered, both
/// servers get a share, and a datagram is answered from the VIP.
pub fn ipv6_step(e2e: &E2e) {
    let upstream = r#"{"web6": {"[fd61::2]:8080": "weight=1", "[fd62::2]:8080": "weight=1"}}"#;
    assert_eq!(e2e.admin("PUT", "upstream", upstream), OK);
    let services = format!(
        r#"{{"web6": {{"vip": "[{VIP6}]:80", "proto": "tcp", "upstream": "web6"}}, "dns6": {{"vip": "[{VIP6}]:8080", "proto": "udp", "upstream": "web6"}}}}"#
    );
    assert_eq!(e2e.admin("PUT", "service", &services), OK);
    let vip: SocketAddr = format!("[{VIP6}]:80").parse().expect("vip");
    let mut answered = None;
    for _ in 0..20 {
        match connect_to(&e2e.net.client, vip).and_then(|mut c| c.ask()) {
            Ok(answer) => {
                answered = Some(answer);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    assert!(
        answered.is_some(),
        "the IPv6 VIP never answered\n{}\n{}",
        e2e.diagnostics(),
        e2e.elb.log()
    );
    let mut counts = [0usize; 3];
    for n in 0..200 {
        let answer = connect_to(&e2e.net.client, vip)
            .and_then(|mut c| c.ask())
            .unwrap_or_else(|e| panic!("IPv6 connection {n} failed: {e}\n{}", e2e.elb.log()));
        counts[server_index(&answer)] += 1;
    }
    assert!(
        counts[0] >= 60 && counts[1] >= 60 && counts[2] == 0,
        "IPv6 split {counts:?}, weights 1:1 over s1 and s2"
    );

    let udp = e2e
        .net
        .client
        .enter(|| UdpSocket::bind("[fd50::2]:0").expect("udp bind"))
        .expect("enter client");
    udp.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let vip_udp: SocketAddr = format!("[{VIP6}]:8080").parse().expect("vip");
    udp.send_to(b"who", vip_udp).expect("send");
    let mut buf = [0u8; 16];
    let (len, from) = udp
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no IPv6 UDP answer: {e}\n{}", e2e.elb.log()));
    assert_eq!(from, vip_udp);
    assert!(matches!(&buf[..len], b"s1" | b"s2"), "{:?}", &buf[..len]);
}

pub fn server_index(answer: &str) -> usize {
    match answer {
        "s1" => 0,
        "s2" => 1,
        "s3" => 2,
        other => panic!("unexpected answer {other:?}"),
    }
}

/// An XDP program on the client's end of its link while this lives (the
/// object's drop detaches it). veth queues an XDP_TX frame for its peer
/// but wakes the peer only if that has an XDP program of its own
/// (`veth_xdp_flush` checks the peer's `xdp_prog`; GRO is not enough): an
/// RST from elb would otherwise wait there until the next redirected
/// frame. A NIC's wire has no such peer. elb's own program serves: with
/// maps of its own, all empty, it passes everything.
pub fn client_xdp(client: &NetNs) -> aya::Ebpf {
    let dev = crate::flood::only_link(client).expect("the client's link");
    client
        .enter(move || -> anyhow::Result<aya::Ebpf> {
            let mut ebpf = aya::Ebpf::load(elb_userspace::EBPF_OBJECT)?;
            let program: &mut aya::programs::Xdp = ebpf
                .program_mut(elb_common::maps::XDP_PROGRAM)
                .ok_or_else(|| anyhow::anyhow!("no XDP program"))?
                .try_into()?;
            program.load()?;
            let dev = std::ffi::CString::new(dev)?;
            program.attach(dev.as_c_str(), aya::programs::XdpMode::Driver)?;
            Ok(ebpf)
        })
        .expect("client namespace")
        .expect("an XDP program on the client's link")
}
