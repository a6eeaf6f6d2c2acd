//! The AWS Classic ELB API (`--aws-api`) end to end: a real elb, a real
//! moto as EC2 (instances in a loopback VPC, `127.0.0.0/16`), real
//! backends on those instances' 127.0.x.y addresses, and real AWS clients:
//! boto3 (`boto3.client("elb", endpoint_url=...)`) and the AWS CLI, both
//! from the venv of `cargo xtask setup`.
//!
//! The load balancer ports are free ports instead of the tutorial's 80 and
//! 443 (those may be taken on the test machine); the instance ports are the
//! tutorial's 8080 and 8443, on instance addresses of their own.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use elb_tests::{
    backend::Backend,
    http,
    l7::{Cleanup, L7Builder, L7Elb},
    moto::{AwsKeys, AwsReply, LoopbackVpc, Moto, REGION, boto3_call, py_script, venv_bin},
    ports::free_port,
};
use serde_json::{Value, json};

const KEY_ID: &str = "AKIDELBTEST0000001";
const SECRET: &str = "elb-test-secret/0000000000000000000000";

struct Fixture {
    moto: Moto,
    vpc: LoopbackVpc,
    elb: Option<L7Elb>,
    api: SocketAddr,
    credentials: PathBuf,
    _dir: tempfile::TempDir,
    _cleanup: Option<Cleanup>,
}

fn keys() -> AwsKeys {
    AwsKeys {
        access_key_id: KEY_ID.into(),
        secret_access_key: SECRET.into(),
    }
}

fn start_elb(builder: L7Builder, moto: &Moto, api: SocketAddr, credentials: &Path) -> L7Elb {
    let mut builder = builder
        .arg("--aws-api")
        .arg(&api.to_string())
        .arg("--aws-api-credentials")
        .arg(&credentials.to_string_lossy())
        .arg("--l4-dataplane")
        .arg("userspace");
    for (key, value) in moto.env() {
        builder = builder.env(&key, &value);
    }
    let elb = builder.start().expect("elb starts");
    // The admin API answers first; the AWS API binds a moment later.
    wait_for("the AWS API to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect_timeout(&api, Duration::from_millis(200)).is_ok()
    });
    elb
}

impl Fixture {
    fn start() -> Self {
        let moto = Moto::start().expect("moto starts (cargo xtask setup)");
        let vpc = moto.loopback_vpc().expect("the loopback VPC");
        let dir = tempfile::tempdir().expect("temp dir");
        let credentials = dir.path().join("credentials");
        std::fs::write(
            &credentials,
            format!(
                "[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n\n\
                 [ops]\naws_access_key_id = AKIDELBTEST0000002\n\
                 aws_secret_access_key = another-secret\n"
            ),
        )
        .expect("credentials file");
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let elb = start_elb(L7Builder::new(), &moto, api, &credentials);
        let cleanup = Cleanup(elb.state_dir.clone());
        Self {
            moto,
            vpc,
            elb: Some(elb),
            api,
            credentials,
            _dir: dir,
            _cleanup: Some(cleanup),
        }
    }

    fn elb(&self) -> &L7Elb {
        self.elb.as_ref().expect("elb runs")
    }

    fn restart_elb(&mut self) {
        let mut old = self.elb.take().expect("elb runs");
        old.stop();
        let builder = L7Builder::same_as(&old);
        self.elb = Some(start_elb(builder, &self.moto, self.api, &self.credentials));
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.api)
    }

    /// A boto3 `elb` call to elb.
    fn elb_call(&self, operation: &str, params: Value) -> AwsReply {
        boto3_call(&self.endpoint(), &keys(), "elb", operation, params)
            .unwrap_or_else(|e| panic!("boto3 elb.{operation}: {e:#}"))
    }

    fn elb_ok(&self, operation: &str, params: Value) -> Value {
        self.elb_call(operation, params).ok(operation)
    }

    /// An instance at `ip` in `zone`.
    fn instance(&self, zone: &str, ip: Ipv4Addr) -> String {
        self.moto
            .run_instance(self.vpc.subnet(zone), ip)
            .expect("run_instances")
    }

    fn instance_health(&self, lb: &str) -> Vec<(String, String, String)> {
        let reply = self.elb_ok("describe_instance_health", json!({"LoadBalancerName": lb}));
        let mut rows: Vec<_> = reply["InstanceStates"]
            .as_array()
            .expect("InstanceStates")
            .iter()
            .map(|s| {
                (
                    s["InstanceId"].as_str().unwrap_or_default().to_owned(),
                    s["State"].as_str().unwrap_or_default().to_owned(),
                    s["ReasonCode"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        rows.sort();
        rows
    }
}

/// A loopback address of its own for an instance: 127.0.0.x (zone a) or
/// 127.0.1.x (zone b), x in 20..240, distinct within this run (the tests
/// run in parallel and each binds port 8080 there).
fn instance_ip(third: u8) -> Ipv4Addr {
    use std::{
        hash::{BuildHasher, RandomState},
        sync::{
            OnceLock,
            atomic::{AtomicU32, Ordering},
        },
    };
    static BASE: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = *BASE.get_or_init(|| (RandomState::new().hash_one(std::process::id()) % 220) as u32);
    let x = 20 + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % 220;
    Ipv4Addr::new(127, 0, third, u8::try_from(x).unwrap_or(20))
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn get_via(addr: SocketAddr, host: &str) -> Option<http::HttpResponse> {
    http::get(addr, "/", &[("Host", host)]).ok()
}

#[test]
fn the_tutorial_through_boto3() {
    let mut fx = Fixture::start();
    let (ip_a, ip_b) = (instance_ip(0), instance_ip(1));
    let web_a = Backend::start_on("web-a", SocketAddr::from((ip_a, 8080))).expect("backend a");
    let web_b = Backend::start_on("web-b", SocketAddr::from((ip_b, 8080))).expect("backend b");
    let _tcp_a = Backend::start_on("tcp-a", SocketAddr::from((ip_a, 8443))).expect("tcp a");
    let _tcp_b = Backend::start_on("tcp-b", SocketAddr::from((ip_b, 8443))).expect("tcp b");
    let id_a = fx.instance("us-east-1a", ip_a);
    let id_b = fx.instance("us-east-1b", ip_b);
    let (http_port, tcp_port) = (free_port(), free_port());

    // Create my-lb: (80→8080 http), (443→8443 tcp), two zones.
    let created = fx.elb_ok(
        "create_load_balancer",
        json!({"LoadBalancerName": "my-lb",
               "Listeners": [
                   {"Protocol": "http", "LoadBalancerPort": http_port, "InstancePort": 8080},
                   {"Protocol": "tcp", "LoadBalancerPort": tcp_port, "InstancePort": 8443}],
               "AvailabilityZones": ["us-east-1a", "us-east-1b"]}),
    );
    let dns = created["DNSName"].as_str().expect("DNSName").to_owned();
    assert!(
        dns.starts_with("my-lb-") && dns.ends_with(&format!(".{REGION}.elb.amazonaws.com")),
        "{dns}"
    );
    let check = fx.elb_ok(
        "configure_health_check",
        json!({"LoadBalancerName": "my-lb",
               "HealthCheck": {"Target": "HTTP:8080/health", "Interval": 5, "Timeout": 2,
                               "UnhealthyThreshold": 2, "HealthyThreshold": 2}}),
    );
    assert_eq!(check["HealthCheck"]["Target"], "HTTP:8080/health");
    fx.elb_ok(
        "modify_load_balancer_attributes",
        json!({"LoadBalancerName": "my-lb",
               "LoadBalancerAttributes": {"ConnectionDraining": {"Enabled": true, "Timeout": 60}}}),
    );
    let attributes = fx.elb_ok(
        "describe_load_balancer_attributes",
        json!({"LoadBalancerName": "my-lb"}),
    );
    assert_eq!(
        attributes["LoadBalancerAttributes"]["ConnectionDraining"],
        json!({"Enabled": true, "Timeout": 60})
    );
    let registered = fx.elb_ok(
        "register_instances_with_load_balancer",
        json!({"LoadBalancerName": "my-lb",
               "Instances": [{"InstanceId": id_a}, {"InstanceId": id_b}]}),
    );
    assert_eq!(registered["Instances"].as_array().map(Vec::len), Some(2));

    // elb's own configuration shows it all.
    let elb = fx.elb();
    let upstreams = elb.admin_ok("GET", "upstream", None);
    let servers: Vec<&str> = upstreams["aws-my-lb-8080"]
        .as_array()
        .expect("the 8080 upstream")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(servers.len(), 2, "{upstreams}");
    assert!(upstreams["aws-my-lb-8443"].is_array(), "{upstreams}");
    let listeners = elb.admin_ok("GET", "listener", None);
    assert_eq!(
        listeners[format!("aws-my-lb-{http_port}")]["status"],
        "serving",
        "{listeners}"
    );
    let services = elb.admin_ok("GET", "service", None);
    assert_eq!(
        services[format!("aws-my-lb-{tcp_port}")]["upstream"],
        "aws-my-lb-8443",
        "{services}"
    );
    let policies = elb.admin_ok("GET", "policy", None);
    assert_eq!(
        policies["aws-my-lb-8080"]["health_check"]["target"],
        "HTTP:8080/health"
    );
    assert_eq!(policies["aws-my-lb-8080"]["deregistration_delay"], "60s");

    // Traffic reaches both instances, by the DNS name, over HTTP and TCP.
    let front = SocketAddr::from(([127, 0, 0, 1], http_port));
    wait_for(
        "both instances to serve HTTP",
        Duration::from_secs(30),
        || {
            let _ = get_via(front, &dns);
            web_a.hits() > 0 && web_b.hits() > 0
        },
    );
    // The answer to a write comes once the L4 data plane carries it: the
    // TCP listener forwards at once.
    let tcp_front = SocketAddr::from(([127, 0, 0, 1], tcp_port));
    let through_tcp = get_via(tcp_front, "any").expect("the TCP listener forwards");
    assert_eq!(through_tcp.status, 200);
    wait_for("both instances InService", Duration::from_secs(40), || {
        fx.instance_health("my-lb")
            .iter()
            .all(|(_, state, _)| state == "InService")
    });

    // One fails its check: OutOfService with reason Instance.
    web_b.set_health_status(Some(503));
    wait_for("b OutOfService", Duration::from_secs(40), || {
        fx.instance_health("my-lb").contains(&(
            id_b.clone(),
            "OutOfService".into(),
            "Instance".into(),
        ))
    });
    assert!(fx.instance_health("my-lb").contains(&(
        id_a.clone(),
        "InService".into(),
        "N/A".into()
    )));

    // Deregister it: it drains (connection draining 60 s).
    let left = fx.elb_ok(
        "deregister_instances_from_load_balancer",
        json!({"LoadBalancerName": "my-lb", "Instances": [{"InstanceId": id_b}]}),
    );
    assert_eq!(left["Instances"], json!([{"InstanceId": id_a}]));
    let health = fx.elb().admin_ok("GET", "health", None);
    let server_b = format!("{ip_b}:8080");
    assert_eq!(
        health["aws-my-lb-8080"]["servers"][&server_b]["state"], "draining",
        "{health}"
    );
    assert_eq!(fx.instance_health("my-lb").len(), 1);

    // Back in, healthy again; then its zone is disabled: OutOfService (ELB).
    web_b.set_health_status(None);
    fx.elb_ok(
        "register_instances_with_load_balancer",
        json!({"LoadBalancerName": "my-lb", "Instances": [{"InstanceId": id_b}]}),
    );
    let zones = fx.elb_ok(
        "disable_availability_zones_for_load_balancer",
        json!({"LoadBalancerName": "my-lb", "AvailabilityZones": ["us-east-1b"]}),
    );
    assert_eq!(zones["AvailabilityZones"], json!(["us-east-1a"]));
    assert!(fx.instance_health("my-lb").contains(&(
        id_b.clone(),
        "OutOfService".into(),
        "ELB".into()
    )));
    let upstreams = fx.elb().admin_ok("GET", "upstream", None);
    let b = upstreams["aws-my-lb-8080"]
        .as_array()
        .expect("upstream")
        .iter()
        .find(|s| s["name"] == server_b.as_str())
        .cloned()
        .expect("b is still a server");
    assert_eq!(b["down"], true, "{b}");

    // Everything survives a restart.
    fx.restart_elb();
    let described = fx.elb_ok(
        "describe_load_balancers",
        json!({"LoadBalancerNames": ["my-lb"]}),
    );
    let lb = &described["LoadBalancerDescriptions"][0];
    assert_eq!(lb["DNSName"], dns.as_str());
    assert_eq!(lb["AvailabilityZones"], json!(["us-east-1a"]));
    assert_eq!(lb["HealthCheck"]["Target"], "HTTP:8080/health");
    assert_eq!(lb["ListenerDescriptions"].as_array().map(Vec::len), Some(2));
    let hits = web_a.hits();
    wait_for("traffic after the restart", Duration::from_secs(15), || {
        let _ = get_via(front, &dns);
        web_a.hits() > hits
    });

    // Delete it: its configuration goes, and it is gone for the API.
    fx.elb_ok("delete_load_balancer", json!({"LoadBalancerName": "my-lb"}));
    let upstreams = fx.elb().admin_ok("GET", "upstream", None);
    assert!(upstreams.get("aws-my-lb-8080").is_none(), "{upstreams}");
    let listeners = fx.elb().admin_ok("GET", "listener", None);
    assert!(
        listeners.as_object().is_some_and(|l| l.is_empty()),
        "{listeners}"
    );
    let services = fx.elb().admin_ok("GET", "service", None);
    assert!(
        services.as_object().is_some_and(|s| s.is_empty()),
        "{services}"
    );
    let (code, status) = fx
        .elb_call(
            "describe_load_balancers",
            json!({"LoadBalancerNames": ["my-lb"]}),
        )
        .error_code("describe a deleted balancer");
    assert_eq!((code.as_str(), status), ("LoadBalancerNotFound", 400));
}

/// `aws elb ...` with the given keys; the parsed JSON output, or the
/// error text.
fn aws_cli(fx: &Fixture, keys: &AwsKeys, args: &[&str]) -> Result<Value, String> {
    let output = Command::new(venv_bin("aws"))
        .arg("elb")
        .args(args)
        .args(["--endpoint-url", &fx.endpoint(), "--output", "json"])
        .envs(keys.client_env(&fx.endpoint()))
        .env("AWS_MAX_ATTEMPTS", "1")
        .output()
        .expect("running aws (cargo xtask setup)");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
}

#[test]
fn the_aws_cli_drives_the_same_flow() {
    let fx = Fixture::start();
    let ip = instance_ip(0);
    let web = Backend::start_on("cli-web", SocketAddr::from((ip, 8080))).expect("backend");
    let id = fx.instance("us-east-1a", ip);
    let port = free_port();
    let cli =
        |args: &[&str]| aws_cli(&fx, &keys(), args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let created = cli(&[
        "create-load-balancer",
        "--load-balancer-name",
        "cli-lb",
        "--listeners",
        &format!("Protocol=HTTP,LoadBalancerPort={port},InstanceProtocol=HTTP,InstancePort=8080"),
        "--availability-zones",
        "us-east-1a",
    ]);
    let dns = created["DNSName"].as_str().expect("DNSName").to_owned();
    cli(&[
        "configure-health-check",
        "--load-balancer-name",
        "cli-lb",
        "--health-check",
        "Target=HTTP:8080/health,Interval=5,Timeout=2,UnhealthyThreshold=2,HealthyThreshold=2",
    ]);
    cli(&[
        "register-instances-with-load-balancer",
        "--load-balancer-name",
        "cli-lb",
        "--instances",
        &id,
    ]);
    let described = cli(&["describe-load-balancers", "--load-balancer-names", "cli-lb"]);
    assert_eq!(
        described["LoadBalancerDescriptions"][0]["Instances"],
        json!([{"InstanceId": id}])
    );
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(
        "traffic through the CLI's balancer",
        Duration::from_secs(15),
        || {
            let _ = get_via(front, &dns);
            web.hits() > 0
        },
    );
    wait_for("InService", Duration::from_secs(30), || {
        cli(&["describe-instance-health", "--load-balancer-name", "cli-lb"])["InstanceStates"][0]["State"]
            == "InService"
    });
    cli(&["delete-load-balancer", "--load-balancer-name", "cli-lb"]);
    let err = aws_cli(
        &fx,
        &keys(),
        &["describe-load-balancers", "--load-balancer-names", "cli-lb"],
    )
    .expect_err("deleted");
    assert!(err.contains("LoadBalancerNotFound"), "{err}");
    // A wrong key through the CLI.
    let stranger = AwsKeys {
        access_key_id: "AKIDNOBODY".into(),
        secret_access_key: SECRET.into(),
    };
    let err = aws_cli(&fx, &stranger, &["describe-load-balancers"]).expect_err("unknown key");
    assert!(err.contains("InvalidClientTokenId"), "{err}");
}

/// A POST signed by botocore as of `age` seconds ago, sent raw.
fn signed_post(fx: &Fixture, body: &str, age: u64, keys: &AwsKeys) -> http::HttpResponse {
    signed_post_as(fx, body, body, age, keys)
}

/// Signs `body` but sends `sent`.
fn signed_post_as(
    fx: &Fixture,
    body: &str,
    sent: &str,
    age: u64,
    keys: &AwsKeys,
) -> http::HttpResponse {
    let output = Command::new(venv_bin("python"))
        .arg(py_script("sign_request.py"))
        .args([
            &format!("{}/", fx.endpoint()),
            body,
            &age.to_string(),
            &keys.access_key_id,
            &keys.secret_access_key,
        ])
        .env("AWS_REGION", REGION)
        .output()
        .expect("sign_request.py");
    assert!(output.status.success(), "{output:?}");
    let signed: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let headers: Vec<(String, String)> = signed["headers"]
        .as_object()
        .expect("headers")
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("content-length"))
        .map(|(name, value)| (name.clone(), value.as_str().unwrap_or_default().to_owned()))
        .collect();
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    http::request(fx.api, "POST", "/", &headers, Some(sent.as_bytes())).expect("POST")
}

/// A GET presigned by botocore (`X-Amz-*` in the query, valid 300 s) as
/// of `age` seconds ago: its path and query.
fn presigned_target(fx: &Fixture, query: &str, age: u64) -> String {
    let output = Command::new(venv_bin("python"))
        .arg(py_script("sign_request.py"))
        .args([
            &format!("{}/", fx.endpoint()),
            query,
            &age.to_string(),
            KEY_ID,
            SECRET,
            "presign",
        ])
        .env("AWS_REGION", REGION)
        .output()
        .expect("sign_request.py");
    assert!(output.status.success(), "{output:?}");
    let signed: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let url = signed["url"].as_str().expect("url");
    url.strip_prefix(&fx.endpoint())
        .expect("our endpoint")
        .to_owned()
}

fn error_code(response: &http::HttpResponse) -> String {
    let text = response.text();
    text.split("<Code>")
        .nth(1)
        .and_then(|rest| rest.split("</Code>").next())
        .unwrap_or_else(|| panic!("no error code in {text}"))
        .to_owned()
}

#[test]
fn bad_credentials_old_signatures_and_bad_requests_get_aws_errors() {
    let fx = Fixture::start();
    // Every profile of the file is accepted.
    let ops = AwsKeys {
        access_key_id: "AKIDELBTEST0000002".into(),
        secret_access_key: "another-secret".into(),
    };
    let listed = boto3_call(
        &fx.endpoint(),
        &ops,
        "elb",
        "describe_load_balancers",
        json!({}),
    )
    .expect("boto3")
    .ok("the second profile");
    assert_eq!(listed["LoadBalancerDescriptions"], json!([]));

    let call = |keys: &AwsKeys| {
        boto3_call(
            &fx.endpoint(),
            keys,
            "elb",
            "describe_load_balancers",
            json!({}),
        )
        .expect("boto3")
        .error_code("a refused call")
    };
    let unknown = AwsKeys {
        access_key_id: "AKIDNOBODY".into(),
        secret_access_key: SECRET.into(),
    };
    assert_eq!(call(&unknown), ("InvalidClientTokenId".into(), 403));
    let wrong_secret = AwsKeys {
        access_key_id: KEY_ID.into(),
        secret_access_key: "not-the-secret".into(),
    };
    assert_eq!(call(&wrong_secret), ("SignatureDoesNotMatch".into(), 403));

    let describe = "Action=DescribeLoadBalancers&Version=2012-06-01";
    // Signed now, it works, and works again (AWS accepts a replay within
    // its 15 minutes).
    for _ in 0..2 {
        let response = signed_post(&fx, describe, 0, &keys());
        assert_eq!(response.status, 200, "{}", response.text());
        assert!(response.text().contains("<DescribeLoadBalancersResponse"));
    }
    // A request signed 20 minutes ago (a replayed old signature).
    let response = signed_post(&fx, describe, 20 * 60, &keys());
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(error_code(&response), "RequestExpired");
    // Presigned in the query string: good for X-Amz-Expires (300 s).
    let target = presigned_target(&fx, describe, 0);
    let response = http::get(fx.api, &target, &[]).expect("GET");
    assert_eq!(response.status, 200, "{}", response.text());
    let tampered = target.replace("Version=2012-06-01", "Version=2012-06-01&Marker=x");
    let response = http::get(fx.api, &tampered, &[]).expect("GET");
    assert_eq!(
        (response.status, error_code(&response).as_str()),
        (403, "SignatureDoesNotMatch")
    );
    let old_target = presigned_target(&fx, describe, 301);
    let response = http::get(fx.api, &old_target, &[]).expect("GET");
    assert_eq!(
        (response.status, error_code(&response).as_str()),
        (400, "RequestExpired")
    );
    // Unsigned.
    let response = http::request(
        fx.api,
        "POST",
        "/",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(describe.as_bytes()),
    )
    .expect("POST");
    assert_eq!(response.status, 403, "{}", response.text());
    assert_eq!(error_code(&response), "MissingAuthenticationToken");
    // Signed, but another body sent.
    let response = signed_post_as(&fx, describe, &format!("{describe}&Marker=x"), 0, &keys());
    assert_eq!(response.status, 403, "{}", response.text());
    assert_eq!(error_code(&response), "SignatureDoesNotMatch");
    // Unknown action, bad parameter, unknown balancer.
    let response = signed_post(&fx, "Action=Frobnicate&Version=2012-06-01", 0, &keys());
    assert_eq!(
        (response.status, error_code(&response).as_str()),
        (400, "InvalidAction")
    );
    let response = signed_post(
        &fx,
        "Action=ConfigureHealthCheck&Version=2012-06-01&LoadBalancerName=x",
        0,
        &keys(),
    );
    assert_eq!(
        (response.status, error_code(&response).as_str()),
        (400, "ValidationError")
    );
    let (code, status) = fx
        .elb_call(
            "describe_instance_health",
            json!({"LoadBalancerName": "nope"}),
        )
        .error_code("an unknown balancer");
    assert_eq!((code.as_str(), status), ("LoadBalancerNotFound", 400));
    // Instances EC2 does not know.
    fx.elb_ok(
        "create_load_balancer",
        json!({"LoadBalancerName": "lb2",
               "Listeners": [{"Protocol": "HTTP", "LoadBalancerPort": free_port(), "InstancePort": 8080}],
               "AvailabilityZones": ["us-east-1a"]}),
    );
    let (code, status) = fx
        .elb_call(
            "register_instances_with_load_balancer",
            json!({"LoadBalancerName": "lb2", "Instances": [{"InstanceId": "i-0123456789abcdef0"}]}),
        )
        .error_code("an unknown instance");
    assert_eq!((code.as_str(), status), ("InvalidInstance", 400));
}

#[test]
fn a_missing_or_invalid_credentials_file_stops_elb_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("credentials");
    std::fs::write(&bad, "[default]\naws_access_key_id = AKID\n").expect("write");
    for (path, wanted) in [
        (dir.path().join("missing"), "missing"),
        (bad.clone(), "profile [default]"),
    ] {
        let api = format!("127.0.0.1:{}", free_port());
        let started = L7Builder::new()
            .arg("--aws-api")
            .arg(&api)
            .arg("--aws-api-credentials")
            .arg(&path.to_string_lossy())
            .start();
        let Err(err) = started else {
            panic!("elb started with {}", path.display());
        };
        let text = format!("{err:#}");
        assert!(text.contains("AWS API credentials file"), "{text}");
        assert!(text.contains(wanted), "{text}");
    }
}
