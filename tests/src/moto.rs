//! A real moto server (PyPI's `moto[server]`, from the venv `cargo xtask
//! setup` makes) on a free loopback port: EC2 and Auto Scaling for the
//! AWS tests. Killed and reaped on drop.
//!
//! AWS calls go through boto3 (`tests/py/aws_call.py`, one process per
//! call). Instances live in a VPC `127.0.0.0/16` whose subnets are
//! `127.0.0.0/24` (us-east-1a) and `127.0.1.0/24` (us-east-1b), so their
//! private addresses are loopback addresses where the tests' backends
//! listen: nothing is ever sent to moto's default 172.31.x.x.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::ports::free_port;

/// The region of every test.
pub const REGION: &str = "us-east-1";
/// The loopback VPC and its subnets, one per zone.
pub const VPC_CIDR: &str = "127.0.0.0/16";
/// An AMI moto ships (one of its default images).
pub const MOTO_AMI: &str = "ami-12c6146b";
pub const SUBNETS: [(&str, &str); 2] = [
    ("us-east-1a", "127.0.0.0/24"),
    ("us-east-1b", "127.0.1.0/24"),
];

/// The venv of `cargo xtask setup`: `ELB_VENV`, else `/opt/elb-venv`.
pub fn venv_dir() -> PathBuf {
    std::env::var_os("ELB_VENV").map_or_else(|| PathBuf::from("/opt/elb-venv"), PathBuf::from)
}

/// A program of the venv: `python`, `moto_server`, `aws`.
pub fn venv_bin(name: &str) -> PathBuf {
    venv_dir().join("bin").join(name)
}

/// A script under `tests/py/`.
pub fn py_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py").join(name)
}

/// An access key pair.
#[derive(Debug, Clone)]
pub struct AwsKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl AwsKeys {
    /// What moto accepts (it checks no signature).
    pub fn moto() -> Self {
        Self {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
        }
    }

    /// The environment of an AWS client (boto3, the AWS CLI, the Rust SDK)
    /// that uses these keys, in [`REGION`], against `endpoint`; shared
    /// files and instance metadata switched off so the host's own AWS
    /// setup plays no part.
    pub fn client_env(&self, endpoint: &str) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ACCESS_KEY_ID", &self.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", &self.secret_access_key),
            ("AWS_REGION", REGION),
            ("AWS_DEFAULT_REGION", REGION),
            ("AWS_CONFIG_FILE", "/nonexistent/aws-config"),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials",
            ),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
    }
}

/// What an AWS service answered to one call.
#[derive(Debug, Clone, PartialEq)]
pub enum AwsReply {
    Ok(Value),
    /// A service error: its `Code`, `Message` and HTTP status.
    Error {
        code: String,
        message: String,
        status: u16,
    },
}

impl AwsReply {
    /// The result, or a panic naming the call's error (tests).
    pub fn ok(self, what: &str) -> Value {
        match self {
            Self::Ok(value) => value,
            Self::Error {
                code,
                message,
                status,
            } => panic!("{what}: {status} {code}: {message}"),
        }
    }

    /// The error code, or a panic if the call succeeded (tests).
    pub fn error_code(&self, what: &str) -> (String, u16) {
        match self {
            Self::Ok(value) => panic!("{what}: expected an error, got {value}"),
            Self::Error { code, status, .. } => (code.clone(), *status),
        }
    }
}

/// One boto3 call (`boto3.client(service, endpoint_url=endpoint)`), e.g.
/// `boto3_call(&url, &keys, "elb", "describe_load_balancers", json!({}))`.
/// `Err` only when the call could not be made at all.
pub fn boto3_call(
    endpoint: &str,
    keys: &AwsKeys,
    service: &str,
    operation: &str,
    params: Value,
) -> Result<AwsReply> {
    let output = Command::new(venv_bin("python"))
        .arg(py_script("aws_call.py"))
        .args([endpoint, service, operation, &params.to_string()])
        .envs(keys.client_env(endpoint))
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "running {} (cargo xtask setup)",
                venv_bin("python").display()
            )
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "boto3 {service}.{operation}: {}\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let reply: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("boto3 {service}.{operation} printed {stdout:?}"))?;
    if let Some(result) = reply.get("ok") {
        return Ok(AwsReply::Ok(result.clone()));
    }
    Ok(AwsReply::Error {
        code: reply["error"]["Code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        message: reply["error"]["Message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        status: reply["status"]
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0),
    })
}

/// The loopback VPC's subnets.
#[derive(Debug, Clone)]
pub struct LoopbackVpc {
    pub vpc_id: String,
    /// `(zone, subnet ID)` in the order of [`SUBNETS`].
    pub subnets: Vec<(String, String)>,
}

impl LoopbackVpc {
    /// The subnet of `zone`.
    pub fn subnet(&self, zone: &str) -> &str {
        self.subnets
            .iter()
            .find(|(z, _)| z == zone)
            .map(|(_, id)| id.as_str())
            .unwrap_or_else(|| panic!("no loopback subnet in {zone}"))
    }
}

pub struct Moto {
    child: Option<Child>,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl Moto {
    /// Starts `moto_server` on a free loopback port and waits until it
    /// answers.
    pub fn start() -> Result<Self> {
        let mut moto = Self {
            child: None,
            port: free_port(),
            log: tempfile::NamedTempFile::new()?,
        };
        moto.spawn()?;
        Ok(moto)
    }

    fn spawn(&mut self) -> Result<()> {
        let program = venv_bin("moto_server");
        let log = self.log.reopen()?;
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} (cargo xtask setup)", program.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("moto_server exited ({status}):\n{}", self.log_text());
            }
            if self.answers() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "moto_server did not answer within 30 s:\n{}",
            self.log_text()
        )
    }

    /// moto's own API answers a plain GET.
    fn answers(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment that points an AWS SDK (elb's) at this moto.
    pub fn env(&self) -> Vec<(String, String)> {
        AwsKeys::moto().client_env(&self.endpoint())
    }

    /// A boto3 call to moto.
    pub fn call(&self, service: &str, operation: &str, params: Value) -> Result<AwsReply> {
        boto3_call(
            &self.endpoint(),
            &AwsKeys::moto(),
            service,
            operation,
            params,
        )
    }

    /// A boto3 call to moto that must succeed.
    pub fn call_ok(&self, service: &str, operation: &str, params: Value) -> Result<Value> {
        match self.call(service, operation, params)? {
            AwsReply::Ok(value) => Ok(value),
            AwsReply::Error {
                code,
                message,
                status,
            } => bail!("moto {service}.{operation}: {status} {code}: {message}"),
        }
    }

    /// Kills and reaps moto (its state is gone); the port stays reserved
    /// for [`Moto::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A fresh moto (empty state) on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// Creates the VPC `127.0.0.0/16` and its subnets [`SUBNETS`].
    pub fn loopback_vpc(&self) -> Result<LoopbackVpc> {
        let vpc = self.call_ok("ec2", "create_vpc", json!({"CidrBlock": VPC_CIDR}))?;
        let vpc_id = vpc["Vpc"]["VpcId"]
            .as_str()
            .context("create_vpc gave no VpcId")?
            .to_owned();
        let mut subnets = Vec::new();
        for (zone, cidr) in SUBNETS {
            let subnet = self.call_ok(
                "ec2",
                "create_subnet",
                json!({"VpcId": vpc_id, "CidrBlock": cidr, "AvailabilityZone": zone}),
            )?;
            let id = subnet["Subnet"]["SubnetId"]
                .as_str()
                .context("create_subnet gave no SubnetId")?;
            subnets.push((zone.to_owned(), id.to_owned()));
        }
        Ok(LoopbackVpc { vpc_id, subnets })
    }

    /// One running instance in `subnet_id` with private address `ip`
    /// (a loopback address in the subnet); returns its ID.
    pub fn run_instance(&self, subnet_id: &str, ip: Ipv4Addr) -> Result<String> {
        let reservation = self.call_ok(
            "ec2",
            "run_instances",
            json!({"ImageId": MOTO_AMI, "MinCount": 1, "MaxCount": 1, "InstanceType": "t3.micro",
                   "SubnetId": subnet_id, "PrivateIpAddress": ip.to_string()}),
        )?;
        let instance = &reservation["Instances"][0];
        let got = instance["PrivateIpAddress"].as_str().unwrap_or_default();
        if got != ip.to_string() {
            bail!("moto gave the instance {got:?}, not {ip}");
        }
        Ok(instance["InstanceId"]
            .as_str()
            .context("run_instances gave no InstanceId")?
            .to_owned())
    }

    /// An Auto Scaling group `name` over `subnet_ids` (a launch template
    /// of the same name) with `desired` instances; moto gives them
    /// addresses from the subnets (loopback).
    pub fn create_asg(&self, name: &str, subnet_ids: &[&str], desired: u32) -> Result<()> {
        self.call_ok(
            "ec2",
            "create_launch_template",
            json!({"LaunchTemplateName": name,
                   "LaunchTemplateData": {"ImageId": MOTO_AMI, "InstanceType": "t3.micro"}}),
        )?;
        self.call_ok(
            "autoscaling",
            "create_auto_scaling_group",
            json!({"AutoScalingGroupName": name,
                   "LaunchTemplate": {"LaunchTemplateName": name, "Version": "$Latest"},
                   "MinSize": 0, "MaxSize": 20, "DesiredCapacity": desired,
                   "VPCZoneIdentifier": subnet_ids.join(",")}),
        )?;
        Ok(())
    }

    /// Scales group `name` out or in.
    pub fn set_desired_capacity(&self, name: &str, desired: u32) -> Result<()> {
        self.call_ok(
            "autoscaling",
            "set_desired_capacity",
            json!({"AutoScalingGroupName": name, "DesiredCapacity": desired}),
        )?;
        Ok(())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
