//! End to end: `elb run --xdp-iface` in a network namespace, real TCP and UDP
//! from a client namespace, counters read through the pinned maps, bpftool
//! inspection, hand-over to a restarted elb, and `elb teardown`. Plus the
//! operator-facing start-up errors.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    time::Duration,
};

use elb_common::counters::ProtoCounter;
use elb_tests::{
    elb_process::{ElbProcess, elb_teardown},
    netns::{NetNs, run, unique_name, veth_pair},
    require_root_and_bpf,
};
use elb_userspace::dataplane::{pin_dir, pinned_proto_stats};

const TCP_CONNECTIONS: usize = 5;
const UDP_V4_DATAGRAMS: u64 = 7;
const UDP_V6_DATAGRAMS: u64 = 4;

struct Topology {
    lb: NetNs,
    client: NetNs,
    lb_iface: String,
}

fn topology() -> Topology {
    let lb = NetNs::new("elblb").expect("lb namespace");
    let client = NetNs::new("elbcl").expect("client namespace");
    let veth = veth_pair(
        &lb,
        &["10.77.0.1/24", "fd77::1/64"],
        &client,
        &["10.77.0.2/24", "fd77::2/64"],
    )
    .expect("veth pair");
    Topology {
        lb,
        client,
        lb_iface: veth.a,
    }
}

/// `elb run` attaching to `iface`, with its lock and state in `run_dir`;
/// `extra` goes last.
fn run_args(name: &str, iface: &str, run_dir: &Path, listen: &str, extra: &[&str]) -> Vec<String> {
    let run_dir = run_dir.to_str().expect("utf-8 path");
    let state = format!("{run_dir}/state.json");
    [
        "run",
        "--name",
        name,
        "--xdp-iface",
        iface,
        "--run-dir",
        run_dir,
        "--state-file",
        &state,
        "--listen",
        listen,
    ]
    .iter()
    .chain(extra)
    .map(|a| (*a).to_owned())
    .collect()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Removed on drop, also when the test fails.
fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn start_elb(t: &Topology, name: &str, run_dir: &Path) -> ElbProcess {
    let mut elb = ElbProcess::spawn(
        &strs(&run_args(
            name,
            &t.lb_iface,
            run_dir,
            "127.0.0.1:0",
            &["--xdp-mode", "driver"],
        )),
        Some(&t.lb),
    )
    .expect("spawn elb");
    // The data plane starts before the "elb running" line; a restarted elb
    // finds the previous program still attached, so bpftool cannot tell.
    elb.wait_for_log(Duration::from_secs(10), "elb running")
        .expect("elb attaches its program");
    elb
}

/// Opens listeners in the LB namespace, then drives real traffic from the
/// client namespace through the veth the program is attached to.
fn send_traffic(t: &Topology) {
    let listeners =
        t.lb.enter(|| {
            let tcp = TcpListener::bind("10.77.0.1:7000").expect("tcp listen");
            let udp4 = UdpSocket::bind("10.77.0.1:7001").expect("udp4 bind");
            let udp6 = UdpSocket::bind("[fd77::1]:7001").expect("udp6 bind");
            (tcp, udp4, udp6)
        })
        .expect("enter lb namespace");
    let (tcp, udp4, udp6) = listeners;
    let server = std::thread::spawn(move || {
        for _ in 0..TCP_CONNECTIONS {
            let (mut conn, _) = tcp.accept().expect("accept");
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).expect("read");
            conn.write_all(&buf).expect("echo");
        }
    });
    t.client
        .enter(|| {
            for _ in 0..TCP_CONNECTIONS {
                let addr: SocketAddr = "10.77.0.1:7000".parse().expect("addr");
                let mut conn =
                    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
                conn.write_all(b"hello").expect("send");
                let mut buf = [0u8; 5];
                conn.read_exact(&mut buf).expect("echo back");
                assert_eq!(&buf, b"hello");
            }
            let udp4 = UdpSocket::bind("10.77.0.2:0").expect("client udp4");
            for _ in 0..UDP_V4_DATAGRAMS {
                udp4.send_to(b"datagram", "10.77.0.1:7001")
                    .expect("send udp4");
            }
            let udp6 = UdpSocket::bind("[fd77::2]:0").expect("client udp6");
            for _ in 0..UDP_V6_DATAGRAMS {
                udp6.send_to(b"datagram", "[fd77::1]:7001")
                    .expect("send udp6");
            }
        })
        .expect("enter client namespace");
    server.join().expect("tcp server");
    // Every datagram arrived, so each one crossed the XDP hook.
    for (socket, count) in [(&udp4, UDP_V4_DATAGRAMS), (&udp6, UDP_V6_DATAGRAMS)] {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        for _ in 0..count {
            let mut buf = [0u8; 16];
            socket.recv_from(&mut buf).expect("datagram delivered");
        }
    }
}

#[test]
fn counts_real_traffic_and_is_inspectable_with_bpftool() {
    require_root_and_bpf!();
    let t = topology();
    let run_dir = temp_dir();
    let run_dir = run_dir.path();
    let name = unique_name("T");
    let pins = pin_dir(Path::new("/sys/fs/bpf"), &name);
    let mut elb = start_elb(&t, &name, run_dir);

    // bpftool net shows our program attached in driver mode.
    let prog_id =
        attached_prog_id(&t).unwrap_or_else(|| panic!("no driver-mode XDP on {}", t.lb_iface));
    let prog = run("bpftool", &["prog", "show", "id", &prog_id]).expect("bpftool prog");
    assert!(
        String::from_utf8_lossy(&prog.stdout).contains("name elb_xdp"),
        "attached program is not elb's"
    );

    send_traffic(&t);

    let stats = pinned_proto_stats(&pins).expect("read pinned counters");
    let packets = |slot| {
        stats
            .iter()
            .find(|(s, _)| *s == slot)
            .map(|(_, c)| c.packets)
            .expect("slot present")
    };
    assert_eq!(packets(ProtoCounter::Ipv4Udp), UDP_V4_DATAGRAMS);
    assert_eq!(packets(ProtoCounter::Ipv6Udp), UDP_V6_DATAGRAMS);
    // SYN, the ACK, the data segment and at least one more per connection.
    assert!(
        packets(ProtoCounter::Ipv4Tcp) >= 4 * TCP_CONNECTIONS as u64,
        "ipv4_tcp = {}",
        packets(ProtoCounter::Ipv4Tcp)
    );
    assert_eq!(packets(ProtoCounter::Malformed), 0);

    // bpftool prints the counter struct by field name (BTF).
    let dump = run(
        "bpftool",
        &[
            "map",
            "dump",
            "pinned",
            pins.join("elb_proto_stats").to_str().expect("utf-8"),
        ],
    )
    .expect("bpftool map dump");
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("\"packets\": ") && dump.contains("\"bytes\": "),
        "bpftool did not print named fields:\n{dump}"
    );

    // SIGTERM: clean exit; the program stays attached and the pins stay.
    let status = elb.stop().expect("stop elb");
    assert!(status.success(), "elb exited with {status}:\n{}", elb.log());
    assert!(
        elb.log().contains("keeps forwarding"),
        "no hand-over message:\n{}",
        elb.log()
    );
    assert_eq!(attached_prog_id(&t).as_deref(), Some(prog_id.as_str()));
    assert!(pins.join("links").join(&t.lb_iface).exists());
    let packets_before = packets(ProtoCounter::Ipv4Udp);

    // A new elb adopts the maps (the counters carry on) and swaps its own
    // program into the pinned link.
    let mut elb = start_elb(&t, &name, run_dir);
    assert!(
        elb.log().contains("adopted the pinned maps"),
        "{}",
        elb.log()
    );
    let new_prog = attached_prog_id(&t).expect("still attached");
    assert_ne!(
        new_prog, prog_id,
        "the new elb's program was not swapped in"
    );
    send_traffic(&t);
    let stats = pinned_proto_stats(&pins).expect("read pinned counters");
    let udp = stats
        .iter()
        .find(|(s, _)| *s == ProtoCounter::Ipv4Udp)
        .map(|(_, c)| c.packets);
    assert_eq!(udp, Some(packets_before + UDP_V4_DATAGRAMS));

    // Teardown is refused while elb runs, and removes everything after.
    let teardown_args = [
        "--name",
        name.as_str(),
        "--run-dir",
        run_dir.to_str().expect("utf-8"),
    ];
    let refused = elb_teardown(&teardown_args).expect_err("teardown while running");
    assert!(
        format!("{refused:#}").contains("already running"),
        "{refused:#}"
    );
    elb.stop().expect("stop elb");
    let out = elb_teardown(&teardown_args).expect("teardown");
    assert!(out.contains("XDP program detached"), "{out}");
    assert_eq!(
        attached_prog_id(&t),
        None,
        "program still attached after teardown"
    );
    assert!(!pins.exists(), "pins left behind at {}", pins.display());
    let out = elb_teardown(&teardown_args).expect("second teardown");
    assert!(out.contains("nothing to tear down"), "{out}");
}

/// The id of the driver-mode XDP program on the LB interface.
fn attached_prog_id(t: &Topology) -> Option<String> {
    let net =
        t.lb.exec("bpftool", &["net", "show", "dev", &t.lb_iface])
            .expect("bpftool net");
    String::from_utf8_lossy(&net.stdout)
        .lines()
        .find(|l| l.contains(&t.lb_iface) && l.contains("driver"))
        .and_then(|l| l.split("id ").nth(1))
        .map(|id| id.trim().to_owned())
}

/// Runs elb expecting it to fail at start-up; returns its output.
fn failed_start(args: &[&str], netns: Option<&NetNs>) -> String {
    let mut elb = ElbProcess::spawn(args, netns).expect("spawn elb");
    let status = elb.wait_exit(Duration::from_secs(10)).expect("elb exits");
    let log = elb.log();
    assert_eq!(status.code(), Some(1), "exit status {status}:\n{log}");
    assert!(
        !log.contains("panicked") && !log.contains("backtrace"),
        "{log}"
    );
    log
}

#[test]
fn unknown_interface_is_a_clear_error() {
    require_root_and_bpf!();
    let run_dir = temp_dir();
    let run_dir = run_dir.path();
    let name = unique_name("T");
    let log = failed_start(
        &strs(&run_args(&name, "no-such-if0", run_dir, "127.0.0.1:0", &[])),
        None,
    );
    assert!(
        log.contains("network interface \"no-such-if0\" does not exist"),
        "{log}"
    );
}

#[test]
fn ephemeral_ports_overlapping_the_nat_ports_are_refused() {
    require_root_and_bpf!();
    let t = topology();
    t.lb.exec(
        "sysctl",
        &["-qw", "net.ipv4.ip_local_port_range=1024 65535"],
    )
    .expect("sysctl");
    let run_dir = temp_dir();
    let run_dir = run_dir.path();
    // No default range is left: every unprivileged port is ephemeral.
    let log = failed_start(
        &strs(&run_args(
            &unique_name("T"),
            &t.lb_iface,
            run_dir,
            "127.0.0.1:0",
            &[],
        )),
        Some(&t.lb),
    );
    assert!(
        log.contains("no unprivileged port is outside the host's ephemeral ports 1024-65535"),
        "{log}"
    );
    // A range given with --nat-ports that the host may hand out.
    let log = failed_start(
        &strs(&run_args(
            &unique_name("T"),
            &t.lb_iface,
            run_dir,
            "127.0.0.1:0",
            &["--nat-ports", "20000-32767"],
        )),
        Some(&t.lb),
    );
    assert!(
        log.contains("ephemeral ports 1024-65535")
            && log.contains("(--nat-ports)")
            && log.contains("ip_local_reserved_ports=20000-32767"),
        "{log}"
    );
}

#[test]
fn bad_name_is_rejected_before_anything_happens() {
    require_root_and_bpf!();
    let mut elb = ElbProcess::spawn(&["run", "--name", "../x", "--xdp-iface", "lo"], None)
        .expect("spawn elb");
    let status = elb.wait_exit(Duration::from_secs(10)).expect("elb exits");
    assert_eq!(status.code(), Some(2), "clap usage error");
    assert!(elb.log().contains("contains '/'"), "{}", elb.log());
}

#[test]
fn unprivileged_user_gets_a_privilege_error() {
    require_root_and_bpf!();
    let t = topology();
    let run_dir = temp_dir();
    let run_dir = run_dir.path();
    // Let the unprivileged user take the instance lock, so the BPF load is
    // what fails.
    run("chmod", &["0777", run_dir.to_str().expect("utf-8")]).expect("chmod");
    let name = unique_name("T");
    let elb = elb_tests::elb_process::elb_binary().expect("elb binary");
    let run = run_args(
        &name,
        &t.lb_iface,
        run_dir,
        "127.0.0.1:0",
        &["--l4-dataplane", "xdp"],
    );
    let mut args = vec![
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        elb.to_str().expect("utf-8"),
    ];
    args.extend(strs(&run));
    let output =
        t.lb.exec("setpriv", &args)
            .expect_err("elb must fail without privileges");
    let message = format!("{output:#}");
    assert!(
        message.contains("permission denied") && message.contains("CAP_BPF + CAP_NET_ADMIN"),
        "{message}"
    );
    assert!(
        !pin_dir(Path::new("/sys/fs/bpf"), &name)
            .join("elb_proto_stats")
            .exists()
    );
}

#[test]
fn without_privileges_auto_mode_falls_back_to_userspace_loudly() {
    require_root_and_bpf!();
    let t = topology();
    let run_dir = temp_dir();
    let run_dir = run_dir.path();
    run("chmod", &["0777", run_dir.to_str().expect("utf-8")]).expect("chmod");
    let name = unique_name("T");
    let mut elb = ElbProcess::spawn_wrapped(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ],
        &strs(&run_args(
            &name,
            &t.lb_iface,
            run_dir,
            "127.0.0.1:8080",
            &[],
        )),
        Some(&t.lb),
    )
    .expect("spawn elb");
    elb.wait_for_log(Duration::from_secs(10), "elb running")
        .expect("elb runs without XDP");
    let log = elb.log();
    assert!(
        log.contains("ERROR") && log.contains("cannot start the XDP data plane"),
        "the fallback was not loud:\n{log}"
    );
    assert!(log.contains("L4 data plane: userspace"), "{log}");
    let stats =
        t.lb.exec("curl", &["-sf", "http://127.0.0.1:8080/__erulb__/stats"])
            .expect("stats");
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats JSON");
    assert_eq!(stats["dataplane"], "userspace", "{stats}");
    assert!(
        !pin_dir(Path::new("/sys/fs/bpf"), &name).exists(),
        "pins made without privileges"
    );
}

#[test]
fn a_second_elb_with_the_same_name_is_refused() {
    require_root_and_bpf!();
    let t = topology();
    let run_dir = temp_dir();
    let run_dir = run_dir.path();
    let name = unique_name("T");
    let _first = start_elb(&t, &name, run_dir);
    let log = failed_start(
        &strs(&run_args(&name, &t.lb_iface, run_dir, "127.0.0.1:0", &[])),
        Some(&t.lb),
    );
    assert!(
        log.contains("another elb with this name is already running"),
        "{log}"
    );
}

/// The connection tables are pinned and adopted by the next elb; one
/// started with other sizes cannot adopt them, and says which flags to
/// check and how to start afresh, instead of silently dropping the flows.
#[test]
fn other_table_sizes_than_the_pinned_ones_are_a_clear_error() {
    require_root_and_bpf!();
    let t = topology();
    let run_dir = temp_dir();
    let run_dir = run_dir.path();
    let name = unique_name("T");
    let mut first = start_elb(&t, &name, run_dir);
    first.stop().expect("stop elb");
    let log = failed_start(
        &strs(&run_args(
            &name,
            &t.lb_iface,
            run_dir,
            "127.0.0.1:0",
            &[
                "--xdp-mode",
                "driver",
                "--l4-dataplane",
                "xdp",
                "--conn-table-size",
                "4096",
            ],
        )),
        Some(&t.lb),
    );
    assert!(
        log.contains("--conn-table-size or --embryonic-table-size"),
        "{log}"
    );
    assert!(
        log.contains(&format!("elb teardown --name {name}")),
        "{log}"
    );
    let teardown_args = [
        "--name",
        name.as_str(),
        "--run-dir",
        run_dir.to_str().expect("utf-8"),
    ];
    elb_teardown(&teardown_args).expect("teardown");
    // Afresh, the new size is taken.
    let mut elb = ElbProcess::spawn(
        &strs(&run_args(
            &name,
            &t.lb_iface,
            run_dir,
            "127.0.0.1:0",
            &["--xdp-mode", "driver", "--conn-table-size", "4096"],
        )),
        Some(&t.lb),
    )
    .expect("spawn elb");
    elb.wait_for_log(Duration::from_secs(10), "elb running")
        .expect("elb starts with the new size");
    let flows = format!("/sys/fs/bpf/elb/{name}/{}", elb_common::maps::FLOWS);
    let out =
        t.lb.exec("bpftool", &["-j", "map", "show", "pinned", &flows])
            .expect("bpftool");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    assert_eq!(info["max_entries"], 4096, "{info}");
    elb.stop().expect("stop elb");
    elb_teardown(&teardown_args).expect("teardown");
}
