//! Established flows survive a SYN flood (issue 16): real TCP connections
//! through elb's XDP data plane in namespaces, while a raw-socket
//! generator floods the VIP with SYNs from over a million distinct spoofed
//! source address/port pairs. The connection table is small
//! (`--conn-table-size 16384`), so a flood that could evict from it would
//! evict the established flows many times over; new flows live in the
//! embryonic table (`--embryonic-table-size 4096`) until their handshake
//! completes, and only that table churns (every 51 ms at the flood's
//! rate). The flood is paced at 40,000 SYNs/s, well below what this 2-core
//! machine forwards (about 65,000/s: the servers answer every SYN with a
//! SYN cookie). Paced at 100,000/s, it ran at that ceiling with both cores
//! saturated: established exchanges waited up to 3.8 s with nothing
//! retransmitted, a run had time for 2 rounds only, and new handshakes
//! took longer than the churning table keeps their entries.
use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use elb_tests::{
    flood::{SynFlood, mac_of, only_link},
    l4_e2e::{Conn, Dataplane, E2e, OK, VIP, connect, upstream_doc},
    netns::NetNs,
    require_root_and_bpf,
};

const ESTABLISHED: usize = 200;
/// Clients making new connections during the flood, side by side.
const NEW_CONNECTION_CLIENTS: usize = 4;
/// Distinct source address/port pairs of the flood: 16 ports × a /16.
const FLOOD_FRAMES: u64 = 16 * 65_536;
/// SYNs per second of the flood.
const FLOOD_RATE: u64 = 40_000;
/// How long an established connection's exchange may take during the
/// flood: slow is not broken. The bound covers five losses of the same
/// segment in a row (TCP resends after 200 ms at least, doubling each
/// time); a flow the data plane had lost gets a reset, another server's
/// answer, or silence. At 40,000 SYNs/s the slowest exchange took 0.2 to
/// 0.7 s here; at the old 100,000/s one passed the old 2 s bound in CI and
/// the run failed, though that flow answered in the rounds after.
const ESTABLISHED_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn established_connections_survive_a_syn_flood_from_a_million_sources() {
    require_root_and_bpf!();
    let mut e2e = E2e::start_with(
        Dataplane::Xdp,
        &[
            "--conn-table-size",
            "16384",
            "--embryonic-table-size",
            "4096",
        ],
    );
    e2e.elb
        .wait_for_log(Duration::from_secs(5), Dataplane::Xdp.log_line())
        .expect("elb on XDP");
    assert_eq!(
        e2e.admin("PUT", "upstream", &upstream_doc(&[(1, 1), (2, 1), (3, 1)])),
        OK
    );
    let service = format!(r#"{{"web": {{"vip": "{VIP}:80", "proto": "tcp", "upstream": "web"}}}}"#);
    assert_eq!(e2e.admin("PUT", "service", &service), OK);
    e2e.wait_serving();
    // The servers answer the spoofed SYNs (SYN-ACKs, as SYN cookies once
    // their queues are full); elb sends those to the client's namespace,
    // which drops them.
    e2e.net
        .lb
        .ip(&["route", "add", "10.200.0.0/16", "via", "10.50.0.2"])
        .expect("route to the spoofed sources");

    let mut established: Vec<(Conn, String)> = (0..ESTABLISHED)
        .map(|n| {
            let mut conn = connect(&e2e.net.client)
                .unwrap_or_else(|e| panic!("connection {n}: {e}\n{}", e2e.elb.log()));
            let server = conn.ask().expect("first answer");
            conn.set_answer_timeout(ESTABLISHED_ANSWER_TIMEOUT)
                .expect("answer timeout");
            (conn, server)
        })
        .collect();

    let client_link = only_link(&e2e.net.client).expect("client link");
    let flood = SynFlood {
        src_mac: mac_of(&e2e.net.client, &client_link).expect("client MAC"),
        dst_mac: mac_of(&e2e.net.lb, &e2e.net.lb_ifaces[0]).expect("LB MAC"),
        interface: client_link,
        source_base: Ipv4Addr::new(10, 200, 0, 0),
        target: SocketAddrV4::new(VIP.parse().expect("VIP"), 80),
        count: FLOOD_FRAMES,
        max_time: Duration::from_secs(90),
        rate: FLOOD_RATE,
    };
    let misses = |e2e: &E2e| {
        e2e.stats()["global"]["flow_misses"]
            .as_u64()
            .expect("flow_misses")
    };
    let misses_before = misses(&e2e);

    let flooding = AtomicBool::new(true);
    let (new_ok, new_failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let failures = Mutex::new(Vec::new());
    let mut broken = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut rounds = 0;
    let report = std::thread::scope(|scope| {
        let flooder = scope.spawn(|| {
            let report = flood.run(&e2e.net.client);
            flooding.store(false, Ordering::Relaxed);
            report
        });
        // Legitimate new connections during the flood, from a few clients
        // one after another each.
        for _ in 0..NEW_CONNECTION_CLIENTS {
            scope.spawn(|| {
                while flooding.load(Ordering::Relaxed) {
                    match new_connection(&e2e.net.client) {
                        Ok(()) => {
                            new_ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => {
                            new_failed.fetch_add(1, Ordering::Relaxed);
                            failures.lock().expect("failures").push(error.to_string());
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
        // Every established connection exchanges data every second, and
        // once more after the flood.
        loop {
            let round = Instant::now();
            let last = !flooding.load(Ordering::Relaxed);
            for (n, (conn, server)) in established.iter_mut().enumerate() {
                let asked = Instant::now();
                match conn.ask() {
                    Ok(answer) if &answer == server => slowest = slowest.max(asked.elapsed()),
                    outcome => broken.push((rounds, n, format!("{outcome:?}"))),
                }
            }
            rounds += 1;
            if last {
                break;
            }
            std::thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
        }
        flooder.join().expect("flood thread")
    });
    let report = report.expect("the flood ran");
    let flood_misses = misses(&e2e) - misses_before;
    let (new_ok, new_failed) = (new_ok.into_inner(), new_failed.into_inner());
    let stats = e2e.stats();
    let retransmitted: u32 = established
        .iter()
        .map(|(conn, _)| conn.retransmissions().expect("TCP_INFO"))
        .sum();
    eprintln!(
        "flood: {} SYNs from distinct sources in {:.1} s ({:.0}/s, {} refused by the socket and resent), \
         {flood_misses} new flows in XDP; {rounds} rounds of {ESTABLISHED} established connections, \
         {} broken, slowest exchange {:.0} ms, {retransmitted} segments retransmitted by their clients; \
         new connections during the flood: {new_ok} ok, {new_failed} failed {:?}; XDP: {}",
        report.sent,
        report.elapsed.as_secs_f64(),
        report.rate(),
        report.refused,
        broken.len(),
        slowest.as_secs_f64() * 1000.0,
        failures.lock().expect("failures"),
        stats["global"]
    );

    assert_eq!(report.sent, FLOOD_FRAMES, "the whole flood was sent");
    assert!(
        flood_misses >= 1_000_000,
        "only {flood_misses} of the flood's {FLOOD_FRAMES} SYNs reached XDP as new flows"
    );
    assert!(rounds >= 3, "the flood lasted {rounds} rounds only");
    assert!(
        broken.is_empty(),
        "{} established exchanges failed (round, connection, outcome): {:?}\n{}",
        broken.len(),
        &broken[..broken.len().min(10)],
        e2e.elb.log()
    );
    let attempts = new_ok + new_failed;
    assert!(attempts >= 20, "only {attempts} new connections were tried");
    assert!(
        new_ok * 10 >= attempts * 9,
        "{new_failed} of {attempts} new connections failed during the flood: {:?}",
        failures.into_inner().expect("failures")
    );
}

/// A legitimate client's new connection: connect, one question, one
/// answer. The timeouts leave room for TCP's own SYN retransmissions (1 s,
/// then 2 s more), as a real client's connect would: under a flood that
/// fills the links, a frame may be lost before it reaches elb.
fn new_connection(client: &NetNs) -> std::io::Result<()> {
    let vip = SocketAddr::from((VIP.parse::<Ipv4Addr>().expect("VIP"), 80));
    let stream = client
        .enter(move || TcpStream::connect_timeout(&vip, Duration::from_secs(5)))
        .map_err(std::io::Error::other)??;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    (&stream).write_all(b"who\n")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    if line.trim().is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}
