//! `elb status`: asks the running elb's admin API for its status document
//! and prints it for a person; when no elb runs, says so and shows what
//! the pinned XDP state tells (attachments, global counters).
//!
//! Exit status: 0 running and no upstream fails open; 1 running with an
//! upstream failing open; 2 not running; 3 the status could not be read
//! (token refused, unexpected answer).
use std::{
    io::{IsTerminal, Read, Write},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::Value;

use super::report::{self, Colour};
use crate::{
    cli::StatusArgs,
    dataplane::{PinLayout, pinned_link_ifindex},
    l4::maps::StatsMaps,
    run_record::{self, RunRecord},
};

const TIMEOUT: Duration = Duration::from_secs(5);

enum Found {
    Running(Value),
    NotRunning(String),
}

pub fn run(args: &StatusArgs) -> ExitCode {
    match find(args) {
        Ok(Found::Running(doc)) => {
            if args.json {
                println!("{doc:#}");
            } else {
                print!("{}", report::render(&doc, colour()));
            }
            let fail_open = report::fail_open(&doc);
            if fail_open.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "elb status: upstream {} has no healthy server and is failing open",
                    fail_open.join(", ")
                );
                ExitCode::from(1)
            }
        }
        Ok(Found::NotRunning(why)) => {
            println!("elb {} is not running: {why}", args.name);
            print!("{}", pinned(args));
            eprintln!("elb status: elb {} is not running", args.name);
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("elb status: error: {error:#}");
            ExitCode::from(3)
        }
    }
}

fn colour() -> Colour {
    if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        Colour::On
    } else {
        Colour::Off
    }
}

fn find(args: &StatusArgs) -> anyhow::Result<Found> {
    let admin = match args.admin {
        Some(admin) => admin,
        None => {
            let path = run_record::path(&args.run_dir, &args.name);
            match RunRecord::read(&args.run_dir, &args.name)? {
                None => {
                    return Ok(Found::NotRunning(format!(
                        "no run record {} (is --run-dir the one elb run uses?)",
                        path.display()
                    )));
                }
                Some(record) if !record.process_alive() => {
                    return Ok(Found::NotRunning(format!(
                        "its process {} in {} is gone",
                        record.pid,
                        path.display()
                    )));
                }
                Some(record) => record.admin,
            }
        }
    };
    let stream = match TcpStream::connect_timeout(&admin, TIMEOUT) {
        Ok(stream) => stream,
        Err(error) => {
            return Ok(Found::NotRunning(format!(
                "its admin API at {admin} does not answer ({error})"
            )));
        }
    };
    let (status, body) = get(stream, admin, args.admin_token.as_deref())
        .with_context(|| format!("reading the status from {admin}"))?;
    match status {
        200 => {}
        401 => {
            bail!("the admin API at {admin} needs its token: set ELB_ADMIN_TOKEN or --admin-token")
        }
        403 => bail!("the admin API at {admin} refuses this address (see --admin-allow)"),
        other => bail!(
            "the admin API at {admin} answered {other}: {}",
            String::from_utf8_lossy(&body)
        ),
    }
    let doc = serde_json::from_slice(&body)
        .with_context(|| format!("the status from {admin} is not JSON"))?;
    Ok(Found::Running(doc))
}

/// `GET /__erulb__/status.json` over one HTTP/1.1 connection; the status
/// code and the body.
fn get(
    mut stream: TcpStream,
    admin: SocketAddr,
    token: Option<&str>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut request = format!(
        "GET /__erulb__/status.json HTTP/1.1\r\nHost: {admin}\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    parse_response(&response)
}

/// The status code and body of a complete HTTP/1.1 response (a
/// `Content-Length` or chunked body, or one that ends with the connection).
pub fn parse_response(response: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the answer has no complete HTTP head")?;
    let head = std::str::from_utf8(&response[..split]).context("the HTTP head is not UTF-8")?;
    let body = &response[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .context("the answer has no HTTP status line")?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut decoded = Vec::new();
    let mut rest = body;
    loop {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk size line is cut short")?;
        let size_text = std::str::from_utf8(&rest[..end])?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Ok((status, decoded));
        }
        let chunk = rest.get(..size).context("a chunk is cut short")?;
        decoded.extend_from_slice(chunk);
        rest = rest.get(size + 2..).context("a chunk is cut short")?;
    }
}

/// What the pins of a stopped elb tell: the XDP program may still be
/// attached and forwarding.
fn pinned(args: &StatusArgs) -> String {
    let layout = PinLayout::new(&args.bpffs, &args.name);
    if !layout.dir().exists() {
        return format!(
            "No XDP data plane pinned at {} (nothing forwards for it).\n",
            layout.dir().display()
        );
    }
    let mut out = format!("\nXDP (pinned at {})\n", layout.dir().display());
    match layout.pinned_links() {
        Ok(links) if links.is_empty() => out.push_str("  not attached to any interface\n"),
        Ok(links) => {
            for iface in links {
                let line = match pinned_link_ifindex(&layout.link(&iface)) {
                    Ok(0) => "defunct: the interface is gone".to_owned(),
                    Ok(ifindex) => {
                        format!("attached (ifindex {ifindex}), still forwarding L4 services")
                    }
                    Err(error) => format!("cannot read the pinned link: {error}"),
                };
                out.push_str(&format!("  {iface:<16} {line}\n"));
            }
        }
        Err(error) => out.push_str(&format!("  cannot list the pinned links: {error}\n")),
    }
    match StatsMaps::open_pinned(&layout).and_then(|stats| stats.global()) {
        Ok(global) => {
            let fields: Vec<String> = global
                .fields()
                .iter()
                .map(|(name, value)| format!("{name} {value}"))
                .collect();
            out.push_str(&format!("  counters: {}\n", fields.join("  ")));
        }
        Err(error) => out.push_str(&format!("  cannot read the pinned counters: {error}\n")),
    }
    out.push_str(&format!(
        "  (`elb teardown --name {}` detaches it and removes the pins)\n",
        args.name
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_with_length_or_chunks() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).expect("parse"), (200, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).expect("parse"),
            (401, b"abcde".to_vec())
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
        let cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nabc";
        assert!(parse_response(cut).is_err());
    }
}
