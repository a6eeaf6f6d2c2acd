//! A real etcd server (Debian's `etcd` binary) on random loopback ports with
//! a temporary data directory; killed and removed on drop. Optionally with
//! TLS (certificates from [`crate::pki`]) and authentication.
use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    pki::{Chain, ChainFiles},
    ports::free_port,
};

pub struct Etcd {
    child: Option<Child>,
    data_dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// With TLS: etcd's files (server certificate, client CA) and
    /// etcdctl's (client certificate), all of one chain.
    tls: Option<ChainFiles>,
    /// `user:password` for etcdctl once auth is enabled.
    auth: Option<String>,
}

impl Etcd {
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// etcd serving TLS with `chain`'s server certificate and requiring a
    /// client certificate signed by its CA (`--client-cert-auth`).
    pub fn start_tls(chain: &Chain) -> Result<Self> {
        Self::start_with(Some(chain))
    }

    fn start_with(chain: Option<&Chain>) -> Result<Self> {
        let data_dir = tempfile::tempdir()?;
        let tls = chain
            .map(|chain| chain.write(&data_dir.path().join("tls")))
            .transpose()?;
        let mut etcd = Self {
            child: None,
            data_dir,
            client_port: free_port(),
            peer_port: free_port(),
            tls,
            auth: None,
        };
        etcd.spawn()?;
        Ok(etcd)
    }

    /// Restarts etcd with a new chain of trust (certificate rotation).
    pub fn restart_with_chain(&mut self, chain: &Chain) -> Result<()> {
        self.kill();
        self.tls = Some(chain.write(&self.data_dir.path().join("tls"))?);
        self.spawn()
    }

    /// Adds user `root` with `password` and turns authentication on.
    pub fn enable_auth(&mut self, password: &str) -> Result<()> {
        self.ctl(&[
            "user",
            "add",
            "root",
            "--interactive=false",
            &format!("--new-user-password={password}"),
        ])?;
        self.ctl(&["auth", "enable"])?;
        self.auth = Some(format!("root:{password}"));
        Ok(())
    }

    /// `127.0.0.1:PORT`, the form ERU ELB's `ETCD` takes.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) -> Result<()> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", "default", "--data-dir"])
            .arg(self.data_dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (installed by `cargo xtask setup`)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.ctl(&["endpoint", "health"]).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("etcd did not become healthy:\n{}", self.log())
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.path().join("etcd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the server; the data directory stays for [`Etcd::restart`].
    pub fn kill(&mut self) {
        // A paused server would not die of SIGKILL before SIGCONT.
        self.resume();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing
    /// answers, as with a hung or partitioned etcd.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a [`Etcd::pause`]d server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: a plain signal to our own child.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// `etcdctl` (v3 API) against this server.
    pub fn ctl(&self, args: &[&str]) -> Result<Output> {
        let mut command = Command::new("etcdctl");
        command.env("ETCDCTL_API", "3");
        match &self.tls {
            Some(tls) => {
                command
                    .arg(format!("--endpoints=https://{}", self.endpoint()))
                    .arg("--cacert")
                    .arg(&tls.ca)
                    .arg("--cert")
                    .arg(&tls.client_cert)
                    .arg("--key")
                    .arg(&tls.client_key);
            }
            None => {
                command.arg(format!("--endpoints={}", self.endpoint()));
            }
        }
        if let Some(auth) = &self.auth {
            command.arg(format!("--user={auth}"));
        }
        let output = command.args(args).output().context("starting etcdctl")?;
        if !output.status.success() {
            bail!(
                "etcdctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output)
    }

    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        self.ctl(&["put", key, value]).map(|_| ())
    }

    /// `key → value` for every key under `prefix`.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let output = self.ctl(&["get", "--prefix", prefix])?;
        let text = String::from_utf8(output.stdout)?;
        let lines: Vec<&str> = text.lines().collect();
        Ok(lines
            .chunks(2)
            .filter(|pair| pair.len() == 2)
            .map(|pair| (pair[0].to_owned(), pair[1].to_owned()))
            .collect())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
