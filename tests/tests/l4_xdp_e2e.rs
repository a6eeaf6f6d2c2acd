//! End to end through the XDP data plane: a client namespace and three
//! server namespaces reach the LB namespace over separate veth links; real
//! TCP connections and UDP datagrams to a VIP are balanced and full-NAT'd
//! by elb's XDP program (driver mode on veth).
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
    time::Duration,
};

use elb_tests::{
    elb_process::ElbProcess,
    netns::{NetNs, unique_name, veth_pair},
    require_root_and_bpf,
};

const VIP: &str = "10.99.0.1";
const CLIENT: &str = "10.50.0.2";

/// A server answering each line on a TCP connection, and each UDP
/// datagram, with its name.
struct IdServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl IdServer {
    fn start(ns: &NetNs, addr: SocketAddr, name: &'static str) -> Self {
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
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn ask(&mut self) -> std::io::Result<String> {
        self.writer.write_all(b"who\n")?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if line.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim().to_owned())
    }
}

fn connect(client: &NetNs) -> std::io::Result<Conn> {
    let stream = client
        .enter(|| {
            let addr: SocketAddr = format!("{VIP}:80").parse().expect("vip");
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        })
        .map_err(std::io::Error::other)??;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(Conn {
        writer: stream.try_clone()?,
        reader: BufReader::new(stream),
    })
}

struct Net {
    client: NetNs,
    lb: NetNs,
    servers: Vec<NetNs>,
    lb_ifaces: Vec<String>,
}

fn ethtool(ns: &NetNs, dev: &str, args: &[&str]) {
    let mut full = vec!["-K", dev];
    full.extend_from_slice(args);
    ns.exec("ethtool", &full).expect("ethtool");
}

fn network() -> Net {
    let client = NetNs::new("e4c").expect("client ns");
    let lb = NetNs::new("e4l").expect("lb ns");
    let link = veth_pair(&client, &["10.50.0.2/24"], &lb, &["10.50.0.1/24"]).expect("veth");
    ethtool(&client, &link.a, &["tx", "off"]);
    ethtool(&client, &link.a, &["gro", "on"]);
    client
        .ip(&["route", "add", "10.99.0.0/24", "via", "10.50.0.1"])
        .expect("client route");
    let mut lb_ifaces = vec![link.b];
    let mut servers = Vec::new();
    for i in 1..=3 {
        let ns = NetNs::new("e4s").expect("server ns");
        let link = veth_pair(
            &ns,
            &[&format!("10.6{i}.0.2/24")],
            &lb,
            &[&format!("10.6{i}.0.1/24")],
        )
        .expect("veth");
        ethtool(&ns, &link.a, &["tx", "off"]);
        ethtool(&ns, &link.a, &["gro", "on"]);
        ns.ip(&["route", "add", "default", "via", &format!("10.6{i}.0.1")])
            .expect("server route");
        lb_ifaces.push(link.b);
        servers.push(ns);
    }
    lb.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .expect("forwarding");
    Net {
        client,
        lb,
        servers,
        lb_ifaces,
    }
}

fn admin(lb: &NetNs, port: u16, method: &str, endpoint: &str, body: &str) -> String {
    let url = format!("http://127.0.0.1:{port}/__erulb__/{endpoint}");
    let out = lb
        .exec("curl", &["-sS", "-X", method, &url, "-d", body])
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start_elb(net: &Net, name: &str, run_dir: &Path, port: u16) -> ElbProcess {
    let run_dir = run_dir.to_str().expect("utf-8");
    let listen = format!("127.0.0.1:{port}");
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
        "--xdp-mode",
        "driver",
    ];
    for iface in &net.lb_ifaces {
        args.extend(["--xdp-iface", iface.as_str()]);
    }
    let mut elb = ElbProcess::spawn(&args, Some(&net.lb)).expect("spawn elb");
    let lb = &net.lb;
    elb.wait_until(Duration::from_secs(15), || {
        lb.exec(
            "curl",
            &["-sf", &format!("http://{listen}/__erulb__/service")],
        )
        .is_ok()
    })
    .expect("elb serves its admin API");
    elb
}

fn upstream_doc(weights: &[(u8, u32)]) -> String {
    let servers: Vec<String> = weights
        .iter()
        .map(|(i, w)| format!(r#""10.6{i}.0.2:8080": "weight={w}""#))
        .collect();
    format!(r#"{{"web": {{{}}}}}"#, servers.join(", "))
}

/// Waits until a new connection gets an answer (the sync loop applies
/// changes within 200 ms).
fn wait_serving(net: &Net, elb: &ElbProcess, name: &str) {
    let mut last = None;
    for _ in 0..10 {
        match connect(&net.client).and_then(|mut c| c.ask()) {
            Ok(_) => return,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pin = format!("/sys/fs/bpf/elb/{name}/elb_glob_stats");
    let stats = net.lb.exec("bpftool", &["map", "dump", "pinned", &pin]);
    let neigh = net
        .lb
        .ip(&["neigh"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let fwd = net
        .lb
        .exec("sysctl", &["net.ipv4.ip_forward"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    panic!(
        "the VIP never answered ({last:?})\nneigh: {neigh:?}\nforwarding: {fwd:?}\nstats: {}\nelb log:\n{}",
        stats
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default(),
        elb.log()
    );
}

#[test]
fn tcp_and_udp_through_xdp_follow_weights_survive_changes_and_obey_the_deny_list() {
    require_root_and_bpf!();
    let net = network();
    let _servers: Vec<IdServer> = ["s1", "s2", "s3"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let addr: SocketAddr = format!("10.6{}.0.2:8080", i + 1).parse().expect("addr");
            IdServer::start(&net.servers[i], addr, name)
        })
        .collect();
    let run_dir = tempfile::tempdir().expect("run dir");
    let port = elb_tests::ports::free_port();
    let name = unique_name("E");
    let mut elb = start_elb(&net, &name, run_dir.path(), port);

    let ok = r#"{"msg":"OK"}"#;
    assert_eq!(
        admin(
            &net.lb,
            port,
            "PUT",
            "upstream",
            &upstream_doc(&[(1, 1), (2, 2), (3, 3)])
        ),
        ok
    );
    let services = format!(
        r#"{{"web": {{"vip": "{VIP}:80", "proto": "tcp", "upstream": "web"}}, "dns": {{"vip": "{VIP}:8080", "proto": "udp", "upstream": "web"}}}}"#
    );
    assert_eq!(admin(&net.lb, port, "PUT", "service", &services), ok);
    wait_serving(&net, &elb, &name);

    // 1. Weights 1:2:3 over 3,000 new connections, every one answered.
    let mut counts = [0usize; 3];
    const CONNECTIONS: usize = 3000;
    for n in 0..CONNECTIONS {
        let answer = connect(&net.client)
            .and_then(|mut c| c.ask())
            .unwrap_or_else(|e| panic!("connection {n} failed: {e}\n{}", elb.log()));
        let index = match answer.as_str() {
            "s1" => 0,
            "s2" => 1,
            "s3" => 2,
            other => panic!("unexpected answer {other:?}"),
        };
        counts[index] += 1;
    }
    for (i, count) in counts.iter().enumerate() {
        let share = *count as f64 / CONNECTIONS as f64;
        let want = (i + 1) as f64 / 6.0;
        assert!(
            (share - want).abs() <= 0.05,
            "server s{} got {share:.3} of connections, weight share {want:.3} ({counts:?})",
            i + 1
        );
    }

    // 2. Long-lived connections survive a weight change, and removing s3
    //    leaves every connection to s1 and s2 intact.
    let mut long_lived: Vec<(Conn, String)> = (0..30)
        .map(|_| {
            let mut conn = connect(&net.client).expect("connect");
            let server = conn.ask().expect("first answer");
            (conn, server)
        })
        .collect();
    assert_eq!(
        admin(
            &net.lb,
            port,
            "PUT",
            "upstream",
            &upstream_doc(&[(1, 5), (2, 1), (3, 1)])
        ),
        ok
    );
    std::thread::sleep(Duration::from_millis(500));
    for (conn, server) in &mut long_lived {
        assert_eq!(&conn.ask().expect("after weight change"), server);
    }
    assert_eq!(
        admin(
            &net.lb,
            port,
            "PUT",
            "upstream",
            &upstream_doc(&[(1, 1), (2, 1)])
        ),
        ok
    );
    std::thread::sleep(Duration::from_millis(500));
    for (conn, server) in long_lived.iter_mut().filter(|(_, s)| s != "s3") {
        assert_eq!(&conn.ask().expect("after removing s3"), server);
    }
    for _ in 0..50 {
        let answer = connect(&net.client)
            .and_then(|mut c| c.ask())
            .expect("new connection");
        assert_ne!(answer, "s3", "a removed server got a new connection");
    }

    // 3. UDP: answered through the VIP (the reply comes from the VIP).
    let udp = net
        .client
        .enter(|| UdpSocket::bind("10.50.0.2:0").expect("udp bind"))
        .expect("enter client");
    udp.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let vip_udp: SocketAddr = format!("{VIP}:8080").parse().expect("vip");
    udp.send_to(b"who", vip_udp).expect("send");
    let mut buf = [0u8; 16];
    let (len, from) = udp.recv_from(&mut buf).expect("udp answer");
    assert_eq!(from, vip_udp);
    assert!(matches!(&buf[..len], b"s1" | b"s2"), "{:?}", &buf[..len]);

    // 4. The deny-list blocks the client; lifting it lets it back in.
    assert_eq!(
        admin(&net.lb, port, "PUT", "acl", &format!(r#"["{CLIENT}/32"]"#)),
        ok
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        connect(&net.client).and_then(|mut c| c.ask()).is_err(),
        "denied client got through"
    );
    assert_eq!(
        admin(
            &net.lb,
            port,
            "DELETE",
            "acl",
            &format!(r#"["{CLIENT}/32"]"#)
        ),
        ok
    );
    wait_serving(&net, &elb, &name);

    let stats = net
        .lb
        .exec(
            "bpftool",
            &[
                "map",
                "dump",
                "pinned",
                &format!("/sys/fs/bpf/elb/{name}/elb_glob_stats"),
            ],
        )
        .expect("bpftool");
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.contains("\"acl_drops\""), "{stats}");

    elb.stop().expect("stop elb");
    drop(_servers);
    let _ = (&net.servers, CLIENT);
}
