//! The processes the L7 benches compare: nginx (as balancer or as the
//! backends) and elb, and elb's admin API.
use std::{path::Path, process::Command};

use anyhow::Result;

use super::procs::{Background, curl, free_port};

/// Starts nginx in the foreground with `conf`, written to `dir`.
pub(super) fn nginx(dir: &Path, name: &str, conf: &str) -> Result<Background> {
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, conf)?;
    Background::spawn(
        name,
        Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"]),
        dir,
    )
}

/// The top of an nginx configuration: workers, pid, error log, events.
pub(super) fn common_conf(dir: &Path, name: &str, workers: u32) -> String {
    let d = dir.display();
    format!(
        "worker_processes {workers};\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log warn;\n\
         events {{ worker_connections 4096; }}\n"
    )
}

/// nginx's temporary directories, inside the bench's own directory.
pub(super) fn temp_paths(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; \
         uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n"
    )
}

/// The two nginx backends both balancers send to, listening on the
/// returned ports.
pub(super) fn start_backends(dir: &Path) -> Result<(Background, u16, u16)> {
    let (b1, b2) = (free_port()?, free_port()?);
    let mut backends = nginx(dir, "backends", &backend_conf(dir, b1, b2))?;
    backends.wait_port(b1)?;
    backends.wait_port(b2)?;
    Ok((backends, b1, b2))
}

fn backend_conf(dir: &Path, b1: u16, b2: u16) -> String {
    format!(
        "{}http {{\n access_log off; {}\n keepalive_requests 100000;\n\
         server {{ listen 127.0.0.1:{b1}; location / {{ return 200 \"b1 $http_x_version\\n\"; }} }}\n\
         server {{ listen 127.0.0.1:{b2}; location / {{ return 200 \"b2 $http_x_version\\n\"; }} }}\n}}\n",
        common_conf(dir, "backends", 1),
        temp_paths(dir)
    )
}

/// Starts elb with its admin API and plain HTTP on loopback `port` and the
/// embedded store in `dir`.
pub(super) fn start_elb(
    bin: &Path,
    dir: &Path,
    name: &str,
    port: u16,
    extra: &[&str],
) -> Result<Background> {
    let mut command = Command::new(bin);
    command
        .args([
            "run",
            "--name",
            name,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--state-file")
        .arg(dir.join(format!("{name}.json")))
        .arg("--run-dir")
        .arg(dir)
        .args(extra)
        .env("RUST_LOG", "warn");
    Background::spawn(&format!("elb-{name}"), &mut command, dir)
}

/// PUT `body` to elb's admin `endpoint`; fails unless answered 2xx.
pub(super) fn admin(port: u16, endpoint: &str, body: &str) -> Result<String> {
    curl(
        "PUT",
        &format!("http://127.0.0.1:{port}/__erulb__/{endpoint}"),
        Some(body),
        &[],
    )
}

/// What nginx as a balancer does to each proxied request, as elb does:
/// upstream keep-alive, and the forwarding headers.
pub(super) const NGINX_PROXY: &str = "proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
    proxy_set_header Host $host; proxy_set_header X-Real-IP $remote_addr;\n\
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme;\n";
