//! elb's AWS look-ups against a real moto: `elb aws asg-instances` and
//! `elb aws ec2-instances` run the functions the ASG discovery provider
//! (`aws::asg_instances`) and the ELB API (`aws::describe_instances`)
//! call, with the SDK pointed at moto by `AWS_ENDPOINT_URL`.
use std::process::Command;

use elb_tests::{
    elb_process::elb_binary,
    moto::{LoopbackVpc, Moto},
};
use serde_json::{Value, json};

/// `elb aws ARGS...` against `moto`: its JSON, or its error text.
fn elb_aws(moto: &Moto, args: &[&str]) -> Result<Value, String> {
    let output = Command::new(elb_binary().expect("the elb binary"))
        .arg("aws")
        .args(args)
        .envs(moto.env())
        .output()
        .expect("running elb");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())
}

fn setup() -> (Moto, LoopbackVpc) {
    let moto = Moto::start().expect("moto starts (cargo xtask setup)");
    let vpc = moto.loopback_vpc().expect("the loopback VPC");
    (moto, vpc)
}

/// The group's serving instances as moto itself lists them, sorted.
fn moto_members(moto: &Moto, group: &str) -> Vec<(String, String)> {
    let groups = moto
        .call_ok(
            "autoscaling",
            "describe_auto_scaling_groups",
            json!({"AutoScalingGroupNames": [group]}),
        )
        .expect("describe_auto_scaling_groups");
    let mut members: Vec<(String, String)> = groups["AutoScalingGroups"][0]["Instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|i| i["LifecycleState"] == "InService" && i["HealthStatus"] == "Healthy")
        .map(|i| {
            (
                i["InstanceId"].as_str().unwrap_or_default().to_owned(),
                i["AvailabilityZone"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    members.sort();
    members
}

fn members(value: &Value) -> Vec<(String, String)> {
    value
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|m| {
            let ip = m["private_ip"].as_str().expect("private_ip");
            assert!(ip.starts_with("127.0."), "a loopback address: {m}");
            (
                m["instance_id"].as_str().unwrap_or_default().to_owned(),
                m["zone"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_asg_lookup_follows_the_group_and_joins_ec2_addresses() {
    let (mut moto, vpc) = setup();
    moto.create_asg(
        "web-asg",
        &[vpc.subnet("us-east-1a"), vpc.subnet("us-east-1b")],
        2,
    )
    .expect("the group");
    let found = elb_aws(&moto, &["asg-instances", "--group", "web-asg"]).expect("lookup");
    assert_eq!(members(&found).len(), 2, "{found}");
    assert_eq!(members(&found), moto_members(&moto, "web-asg"));

    moto.set_desired_capacity("web-asg", 4).expect("scale out");
    let found = elb_aws(&moto, &["asg-instances", "--group", "web-asg"]).expect("lookup");
    assert_eq!(members(&found).len(), 4, "{found}");
    assert_eq!(members(&found), moto_members(&moto, "web-asg"));

    // An instance Auto Scaling marks Unhealthy is left out.
    let (sick, _) = moto_members(&moto, "web-asg")[0].clone();
    moto.call_ok(
        "autoscaling",
        "set_instance_health",
        json!({"InstanceId": sick, "HealthStatus": "Unhealthy"}),
    )
    .expect("set_instance_health");
    let found = elb_aws(&moto, &["asg-instances", "--group", "web-asg"]).expect("lookup");
    assert!(
        !members(&found).iter().any(|(id, _)| *id == sick),
        "{sick} is unhealthy: {found}"
    );

    moto.set_desired_capacity("web-asg", 1).expect("scale in");
    let found = elb_aws(&moto, &["asg-instances", "--group", "web-asg"]).expect("lookup");
    assert_eq!(members(&found), moto_members(&moto, "web-asg"));
    assert!(members(&found).len() <= 1, "{found}");

    // A group that does not exist is an empty answer, not an error.
    let none = elb_aws(&moto, &["asg-instances", "--group", "no-such-group"]).expect("lookup");
    assert_eq!(none, json!([]));

    // No API: an error that names the call.
    moto.stop();
    let err = elb_aws(&moto, &["asg-instances", "--group", "web-asg"]).expect_err("moto is down");
    assert!(err.contains("DescribeAutoScalingGroups"), "{err}");
}

#[test]
fn the_ec2_lookup_gives_addresses_zones_and_states() {
    let (moto, vpc) = setup();
    let ip = std::net::Ipv4Addr::new(127, 0, 1, 77);
    let id = moto
        .run_instance(vpc.subnet("us-east-1b"), ip)
        .expect("an instance");
    let found = elb_aws(&moto, &["ec2-instances", &id]).expect("lookup");
    assert_eq!(
        found,
        json!([{"instance_id": id, "private_ip": "127.0.1.77", "ipv6": null,
                "zone": "us-east-1b", "state": "running"}])
    );
    let err = elb_aws(&moto, &["ec2-instances", "i-0123456789abcdef0"]).expect_err("unknown");
    assert!(err.contains("unknown instance ID"), "{err}");
}
