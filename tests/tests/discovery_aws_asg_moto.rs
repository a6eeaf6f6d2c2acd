//! AWS Auto Scaling group discovery against a real **moto** server (EC2 and
//! Auto Scaling on loopback, from `cargo xtask setup`'s venv): a real elb
//! whose AWS SDK points at moto (`AWS_ENDPOINT_URL`), real backends on the
//! instances' own addresses, real HTTP end to end.
//!
//! The group's instances live in the VPC `127.0.0.0/16` (subnets
//! `127.0.0.0/24` in us-east-1a, `127.0.1.0/24` in us-east-1b), so moto
//! gives them loopback addresses. Every address is checked to be loopback
//! before elb is told about the group: nothing goes to 172.31.x.x.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use elb_tests::{
    backend::Backend,
    l7::{Cleanup, L7Builder, L7Elb, backend_doc, served_by},
    moto::{LoopbackVpc, Moto},
    ports::free_port,
};
use serde_json::{Value, json};

const HOST: &str = "web.test";
const GROUP: &str = "web-asg";
/// "Within one interval" of the documents' `1s`: the interval, plus the two AWS calls, the store
/// commit and this test's polling on a loaded debug build.
const WITHIN_ONE_INTERVAL: Duration = Duration::from_millis(2_000);

/// One `InService` member of the group, as moto describes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Member {
    id: String,
    ip: Ipv4Addr,
    zone: String,
}

/// The group's `InService` members (boto3, like any AWS client would),
/// each checked to be on loopback.
fn members(moto: &Moto) -> Vec<Member> {
    let groups = moto
        .call_ok(
            "autoscaling",
            "describe_auto_scaling_groups",
            json!({"AutoScalingGroupNames": [GROUP]}),
        )
        .expect("describe_auto_scaling_groups");
    let mut zones = BTreeMap::new();
    for instance in groups["AutoScalingGroups"][0]["Instances"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if instance["LifecycleState"] == "InService" {
            zones.insert(
                instance["InstanceId"].as_str().expect("id").to_owned(),
                instance["AvailabilityZone"]
                    .as_str()
                    .expect("zone")
                    .to_owned(),
            );
        }
    }
    if zones.is_empty() {
        return Vec::new();
    }
    let ids: Vec<&String> = zones.keys().collect();
    let described = moto
        .call_ok("ec2", "describe_instances", json!({"InstanceIds": ids}))
        .expect("describe_instances");
    let mut members = Vec::new();
    for reservation in described["Reservations"].as_array().into_iter().flatten() {
        for instance in reservation["Instances"].as_array().into_iter().flatten() {
            let id = instance["InstanceId"].as_str().expect("id").to_owned();
            let ip: Ipv4Addr = instance["PrivateIpAddress"]
                .as_str()
                .expect("private address")
                .parse()
                .expect("IPv4");
            assert!(
                ip.is_loopback(),
                "moto gave {id} the address {ip}: not loopback, the test stops here"
            );
            let zone = zones[&id].clone();
            members.push(Member { id, ip, zone });
        }
    }
    members.sort();
    members
}

/// The zone of a loopback VPC address: its subnet's.
fn subnet_zone(ip: Ipv4Addr) -> &'static str {
    match ip.octets()[2] {
        0 => "us-east-1a",
        1 => "us-east-1b",
        other => panic!("{ip} is in no subnet of the loopback VPC (third octet {other})"),
    }
}

/// moto, its loopback VPC, elb pointed at moto, and backends started on
/// the members' addresses as they appear.
struct World {
    moto: Moto,
    vpc: LoopbackVpc,
    elb: L7Elb,
    _cleanup: Cleanup,
    /// The port every member serves on (the document's `port`).
    port: u16,
    backends: BTreeMap<Ipv4Addr, Backend>,
}

impl World {
    /// A group of `desired` instances over both subnets, and elb.
    fn start(desired: u32) -> Self {
        let moto = Moto::start().expect("moto (cargo xtask setup)");
        let vpc = moto.loopback_vpc().expect("loopback VPC");
        let subnets: Vec<&str> = vpc.subnets.iter().map(|(_, id)| id.as_str()).collect();
        moto.create_asg(GROUP, &subnets, desired)
            .expect("create the group");
        let mut builder = L7Builder::new();
        for (key, value) in moto.env() {
            builder = builder.env(&key, &value);
        }
        let elb = builder.start().expect("start elb");
        let cleanup = Cleanup(elb.state_dir.clone());
        Self {
            moto,
            vpc,
            elb,
            _cleanup: cleanup,
            port: free_port(),
            backends: BTreeMap::new(),
        }
    }

    /// The members now, with a backend listening on each one's address.
    fn members(&mut self) -> Vec<Member> {
        let members = members(&self.moto);
        for member in &members {
            let port = self.port;
            self.backends.entry(member.ip).or_insert_with(|| {
                let addr = SocketAddr::new(IpAddr::V4(member.ip), port);
                Backend::start_on(&member.ip.to_string(), addr).expect("backend")
            });
        }
        members
    }

    fn backend(&self, member: &Member) -> &Backend {
        &self.backends[&member.ip]
    }

    /// The discovery document for upstream "web".
    fn doc(&self, extra: Value) -> Value {
        let mut doc = json!({"provider": "aws_asg", "group": GROUP, "region": "us-east-1",
            "port": self.port, "interval": "1s", "params": "max_fails=2"});
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            for (key, value) in extra {
                doc.insert(key.clone(), value.clone());
            }
        }
        doc
    }

    /// Points `HOST` at upstream "web" and hands "web" to the group.
    fn follow(&self, extra: Value) {
        self.elb
            .admin_ok("PUT", "domain", Some(json!({ HOST: backend_doc("web") })));
        self.elb
            .admin_ok("PUT", "discovery", Some(json!({"web": self.doc(extra)})));
    }

    /// Upstream "web": `addr -> zone`.
    fn servers(&self) -> BTreeMap<String, Option<String>> {
        let upstreams = self.elb.admin_ok("GET", "upstream", None);
        upstreams["web"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|server| {
                (
                    server["addr"].as_str().unwrap_or_default().to_owned(),
                    server["zone"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }

    /// Polls until upstream "web" is exactly `members` (addresses and
    /// zones); returns how long that took.
    fn wait_servers(&self, members: &[Member], within: Duration) -> Duration {
        let wanted: BTreeMap<String, Option<String>> = members
            .iter()
            .map(|m| {
                (
                    SocketAddr::new(IpAddr::V4(m.ip), self.port).to_string(),
                    Some(m.zone.clone()),
                )
            })
            .collect();
        let started = Instant::now();
        loop {
            let now = self.servers();
            if now == wanted {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "upstream web is {now:?}, not {wanted:?}, after {within:?}; discovery: {}",
                self.elb.admin_ok("GET", "discovery", None)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The provider's report in `GET /__erulb__/discovery`.
    fn state(&self) -> Value {
        self.elb.admin_ok("GET", "discovery", None)["web"]["state"].clone()
    }

    fn wait_state(&self, within: Duration, what: &str, check: impl Fn(&Value) -> bool) {
        let started = Instant::now();
        loop {
            let report = self.state();
            if check(&report) {
                return;
            }
            assert!(
                started.elapsed() < within,
                "{what} not within {within:?}: {report}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Who answers the next `n` requests.
    fn answered_by(&self, n: usize) -> Vec<String> {
        let mut names: Vec<String> = (0..n)
            .map(|_| served_by(&self.elb.get(HOST, "/", None)))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn detach(&self, members: &[&Member]) {
        let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        self.moto
            .call_ok(
                "autoscaling",
                "detach_instances",
                json!({"AutoScalingGroupName": GROUP, "InstanceIds": ids,
                       "ShouldDecrementDesiredCapacity": true}),
            )
            .expect("detach_instances");
    }
}

fn names(members: &[Member]) -> Vec<String> {
    let mut names: Vec<String> = members.iter().map(|m| m.ip.to_string()).collect();
    names.sort();
    names
}

#[test]
fn aws_asg_moto_upstream_follows_scaling_within_an_interval_end_to_end() {
    let mut world = World::start(2);
    let two = world.members();
    assert_eq!(two.len(), 2, "{two:?}");
    world.follow(json!({}));
    world.wait_servers(&two, Duration::from_secs(5));
    // Zones: Auto Scaling's, which are the subnets' (`wait_servers`
    // compares each server's zone= with its member's).
    for member in &two {
        assert_eq!(member.zone, subnet_zone(member.ip), "{member:?}");
    }
    let upstream = world.elb.admin_ok("GET", "upstream", None);
    assert_eq!(upstream["web"][0]["max_fails"], 2, "{upstream}");
    assert_eq!(world.answered_by(12), names(&two));

    // Scale out: a new InService member, followed within one interval.
    world
        .moto
        .set_desired_capacity(GROUP, 3)
        .expect("scale out");
    let changed = Instant::now();
    let three = world.members();
    assert_eq!(three.len(), 3, "{three:?}");
    world.wait_servers(
        &three,
        WITHIN_ONE_INTERVAL.saturating_sub(changed.elapsed()),
    );
    assert_eq!(world.answered_by(18), names(&three));

    // An instance made with a chosen address, attached to the group.
    let subnet = world.vpc.subnet("us-east-1b").to_owned();
    let chosen = Ipv4Addr::new(127, 0, 1, 50);
    let id = world
        .moto
        .run_instance(&subnet, chosen)
        .expect("run_instances");
    world
        .moto
        .call_ok(
            "autoscaling",
            "attach_instances",
            json!({"AutoScalingGroupName": GROUP, "InstanceIds": [id]}),
        )
        .expect("attach_instances");
    let changed = Instant::now();
    let four = world.members();
    assert!(
        four.iter()
            .any(|m| m.ip == chosen && m.zone == "us-east-1b"),
        "{four:?}"
    );
    world.wait_servers(&four, WITHIN_ONE_INTERVAL.saturating_sub(changed.elapsed()));
    // moto puts its own instances in the first subnet; the attached one
    // brings the second zone.
    let zones: Vec<Option<String>> = world.servers().into_values().collect();
    assert!(
        zones.contains(&Some("us-east-1a".into())) && zones.contains(&Some("us-east-1b".into())),
        "{zones:?}"
    );
    assert!(world.answered_by(24).contains(&chosen.to_string()));

    // Scale in: all but the chosen one leave.
    let leaving: Vec<&Member> = four.iter().filter(|m| m.ip != chosen).collect();
    world.detach(&leaving);
    let changed = Instant::now();
    let one = world.members();
    assert_eq!(names(&one), [chosen.to_string()]);
    world.wait_servers(&one, WITHIN_ONE_INTERVAL.saturating_sub(changed.elapsed()));
    assert_eq!(world.answered_by(6), [chosen.to_string()]);

    let report = world.state();
    assert_eq!(
        report["provider"], "aws_asg (group \"web-asg\")",
        "{report}"
    );
    assert_eq!(report["servers"], 1, "{report}");
    assert_eq!(report["ip"], "ipv4", "{report}");
    assert!(report["last_success"].is_string(), "{report}");
    assert!(report["last_error"].is_null(), "{report}");
}

#[test]
fn aws_asg_moto_removed_member_drains() {
    let mut world = World::start(2);
    world.elb.admin_ok(
        "PUT",
        "policy",
        Some(
            json!({"web": {"health_check": {"target": "HTTP/health", "interval": "200ms",
            "timeout": "100ms", "healthy_threshold": 2, "unhealthy_threshold": 2},
            "deregistration_delay": "10s"}}),
        ),
    );
    let two = world.members();
    world.follow(json!({}));
    world.wait_servers(&two, Duration::from_secs(5));
    let server_state = |member: &Member| {
        let addr = SocketAddr::new(IpAddr::V4(member.ip), world.port).to_string();
        world.elb.admin_ok("GET", "health", None)["web"]["servers"][addr]["state"]
            .as_str()
            .unwrap_or("absent")
            .to_owned()
    };
    let started = Instant::now();
    while two.iter().any(|m| server_state(m) != "healthy") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "members never healthy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (gone, stays) = (&two[0], &two[1]);
    world.detach(&[gone]);
    world.wait_servers(std::slice::from_ref(stays), Duration::from_secs(3));
    assert_eq!(server_state(gone), "draining");
    let hits = world.backend(gone).hits();
    assert_eq!(world.answered_by(6), [stays.ip.to_string()]);
    assert_eq!(
        world.backend(gone).hits(),
        hits,
        "nothing new reaches the draining member"
    );
}

#[test]
fn aws_asg_moto_errors_keep_the_list_and_a_restarted_moto_without_the_group_empties_it() {
    let mut world = World::start(1);
    let one = world.members();
    world.follow(json!({}));
    world.wait_servers(&one, Duration::from_secs(5));
    // moto gone: the calls fail, the last list stays and serves.
    world.moto.stop();
    world.wait_state(Duration::from_secs(15), "an error", |report| {
        report["failing"] == true
            && report["last_error"]["message"].as_str().is_some_and(|m| {
                m.contains("DescribeAutoScalingGroups") && m.contains("\"web-asg\"")
            })
    });
    world.wait_servers(&one, Duration::from_secs(1));
    assert_eq!(world.answered_by(3), names(&one));
    // A fresh moto (no such group): an empty answer, applied.
    world.moto.restart().expect("restart moto");
    world.wait_servers(&[], Duration::from_secs(10));
    world.wait_state(Duration::from_secs(3), "an empty success", |report| {
        report["servers"] == 0 && report["failing"] == false
    });
}

#[test]
fn aws_asg_moto_ipv6_leaves_out_members_without_an_ipv6_address() {
    let mut world = World::start(2);
    let two = world.members();
    // moto's instances here have no IPv6 address: none is a server, and
    // the report names them (no traffic is sent anywhere).
    world.follow(json!({"ip": "ipv6"}));
    world.wait_state(Duration::from_secs(5), "a result", |report| {
        report["last_success"].is_string()
    });
    assert_eq!(world.servers(), BTreeMap::new());
    let report = world.state();
    assert_eq!(report["ip"], "ipv6", "{report}");
    let mut left_out: Vec<String> = report["left_out"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|id| id.as_str().map(str::to_owned))
        .collect();
    left_out.sort();
    let ids: Vec<String> = two.iter().map(|m| m.id.clone()).collect();
    assert_eq!(left_out, ids, "{report}");
    // Back to IPv4: both are servers again.
    world.follow(json!({"ip": "ipv4"}));
    world.wait_servers(&two, Duration::from_secs(5));
}
