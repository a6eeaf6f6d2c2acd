//! Starting a real L7 `elb` for a test: free port, temp state, unique name.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Result;

use crate::{elb_process::ElbProcess, http, netns::unique_name, ports::free_port};

/// How to start elb; [`L7Builder::start`] waits until the admin API answers.
pub struct L7Builder {
    name: String,
    port: u16,
    state_dir: PathBuf,
    etcd: Option<String>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

pub struct L7Elb {
    pub process: ElbProcess,
    pub addr: SocketAddr,
    pub name: String,
    pub state_dir: PathBuf,
}

impl L7Builder {
    pub fn new() -> Self {
        let name = unique_name("L");
        let state_dir = std::env::temp_dir().join(format!("elb-{name}"));
        Self {
            name,
            port: free_port(),
            state_dir,
            etcd: None,
            extra: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Reuses the name, port and state of a previous run (restart tests).
    pub fn same_as(previous: &L7Elb) -> Self {
        Self {
            name: previous.name.clone(),
            port: previous.addr.port(),
            state_dir: previous.state_dir.clone(),
            etcd: None,
            extra: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Starts under this ELB name (etcd key prefix) instead of a unique one.
    pub fn start_named(mut self, name: &str) -> Result<L7Elb> {
        self.name = name.to_owned();
        self.start()
    }

    pub fn etcd(mut self, endpoint: &str) -> Self {
        self.etcd = Some(endpoint.to_owned());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra.push(arg.to_owned());
        self
    }

    /// An environment variable for elb (e.g. [`crate::moto::Moto::env`]).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn start(self) -> Result<L7Elb> {
        std::fs::create_dir_all(&self.state_dir)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse()?;
        let listen = addr.to_string();
        let state_file = self.state_dir.join("state.json");
        let state_file = state_file.to_string_lossy().into_owned();
        let run_dir = self.state_dir.to_string_lossy().into_owned();
        let mut args = vec![
            "run",
            "--name",
            &self.name,
            "--listen",
            &listen,
            "--state-file",
            &state_file,
            "--run-dir",
            &run_dir,
        ];
        if let Some(etcd) = &self.etcd {
            args.extend(["--etcd", etcd]);
        }
        args.extend(self.extra.iter().map(String::as_str));
        let started =
            ElbProcess::spawn_with_env(&[], &args, &self.env, None).and_then(|mut process| {
                process.wait_until(Duration::from_secs(20), || {
                    http::get(addr, "/__erulb__/upstream", &[]).is_ok()
                })?;
                Ok(process)
            });
        let process = match started {
            Ok(process) => process,
            Err(err) => {
                // The test never got the directory to clean up.
                let _ = std::fs::remove_dir_all(&self.state_dir);
                return Err(err);
            }
        };
        Ok(L7Elb {
            process,
            addr,
            name: self.name,
            state_dir: self.state_dir,
        })
    }
}

impl Default for L7Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl L7Elb {
    /// An admin call that must succeed; returns the JSON reply.
    pub fn admin_ok(
        &self,
        method: &str,
        endpoint: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let response = http::admin(self.addr, method, endpoint, body.as_ref())
            .unwrap_or_else(|e| panic!("{method} {endpoint}: {e:#}"));
        assert_eq!(
            response.status,
            200,
            "{method} {endpoint}: {}",
            response.text()
        );
        assert_eq!(response.header("content-type"), Some("application/json"));
        response.json().expect("JSON reply")
    }

    /// GET with a Host header (and optional User-Agent).
    pub fn get(&self, host: &str, path: &str, user_agent: Option<&str>) -> http::HttpResponse {
        let mut headers = vec![("Host", host)];
        if let Some(ua) = user_agent {
            headers.push(("User-Agent", ua));
        }
        http::get(self.addr, path, &headers).unwrap_or_else(|e| panic!("GET {host}{path}: {e:#}"))
    }

    /// Stops elb; the state directory is kept for a restart.
    pub fn stop(&mut self) {
        let _ = self.process.stop();
    }
}

impl Drop for L7Elb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes a test's state directory when dropped.
pub struct Cleanup(pub PathBuf);

/// State directories a [`Cleanup`] removed. A test's `Cleanup` is often
/// dropped before its elb, which may still write a state snapshot and so
/// recreate the directory; the elb's drop removes it again once it stopped.
static REMOVED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        REMOVED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.0.clone());
    }
}

/// After an elb with `--run-dir dir` stopped: removes `dir` if a
/// [`Cleanup`] already did (see [`REMOVED`]).
pub(crate) fn remove_again_if_cleaned(dir: &std::path::Path) {
    let cleaned = REMOVED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|removed| removed == dir);
    if cleaned {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A rule document that sends everything to `servername`.
pub fn backend_doc(servername: &str) -> serde_json::Value {
    serde_json::json!({"init": "b", "rules": {"b": {"type": "backend", "args": {"servername": servername}}}})
}

impl L7Elb {
    /// Replaces upstream `name` with `servers` (`(address, nginx parameters)`).
    pub fn put_upstream(&self, name: &str, servers: &[(std::net::SocketAddr, &str)]) {
        let servers: serde_json::Map<String, serde_json::Value> = servers
            .iter()
            .map(|(addr, params)| (addr.to_string(), serde_json::Value::from(*params)))
            .collect();
        self.admin_ok(
            "PUT",
            "upstream",
            Some(serde_json::json!({ name: servers })),
        );
    }

    /// [`L7Elb::put_upstream`], then points `host` at it with [`backend_doc`].
    pub fn route(&self, host: &str, name: &str, servers: &[(std::net::SocketAddr, &str)]) {
        self.put_upstream(name, servers);
        self.admin_ok(
            "PUT",
            "domain",
            Some(serde_json::json!({ host: backend_doc(name) })),
        );
    }
}

/// A started elb and the removal of its state directory, for tests that
/// do not restart it.
pub struct Setup {
    pub elb: L7Elb,
    _cleanup: Cleanup,
}

/// Starts elb (embedded store) with `extra` flags.
pub fn start_with(extra: &[&str]) -> Setup {
    let mut builder = L7Builder::new();
    for arg in extra {
        builder = builder.arg(arg);
    }
    let elb = builder.start().expect("start elb");
    let cleanup = Cleanup(elb.state_dir.clone());
    Setup {
        elb,
        _cleanup: cleanup,
    }
}

/// The name of the test backend that answered (the answer must be a 200).
pub fn served_by(response: &http::HttpResponse) -> String {
    assert_eq!(response.status, 200, "{}", response.text());
    response.json().expect("json")["server"]
        .as_str()
        .expect("server")
        .to_owned()
}
