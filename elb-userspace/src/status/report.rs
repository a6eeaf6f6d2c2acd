//! `elb status` as text for a terminal, from the status document. Pure.
use std::fmt::Write;

use serde_json::Value;

/// ANSI colours, or none (not a terminal, or `NO_COLOR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Colour {
    On,
    Off,
}

impl Colour {
    fn paint(self, code: &str, text: &str) -> String {
        match self {
            Self::On => format!("\x1b[{code}m{text}\x1b[0m"),
            Self::Off => text.to_owned(),
        }
    }
}

fn status_code(status: &str) -> &'static str {
    match status {
        "up" | "serving" => "32",
        "down" | "failed" => "1;31",
        "starting" => "34",
        "draining" => "33",
        "unchecked" => "36",
        _ => "2",
    }
}

/// The upstreams failing open, by name: `elb status` exits non-zero then.
pub fn fail_open(doc: &Value) -> Vec<String> {
    doc["summary"]["upstreams_fail_open"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

/// Counters as `name value` pairs, by name.
fn counters(value: &Value) -> String {
    value
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.is_number())
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join("  ")
}

/// The report of a running elb.
pub fn render(doc: &Value, colour: Colour) -> String {
    let mut out = String::new();
    let store = &doc["store"];
    let store_state = if store["connected"] == Value::Bool(true) {
        colour.paint("32", "connected")
    } else {
        colour.paint(
            "1;31",
            &format!("NOT CONNECTED ({})", text(&store["error"])),
        )
    };
    let _ = writeln!(
        out,
        "elb {}  version {}  up {}s  store {} {} {}",
        colour.paint("1", text(&doc["elb"]["name"])),
        text(&doc["elb"]["version"]),
        doc["elb"]["uptime_seconds"],
        text(&store["kind"]),
        text(&store["location"]),
        store_state
    );

    let _ = writeln!(out, "\n{}", colour.paint("1", "Listeners"));
    for listener in doc["listeners"].as_array().into_iter().flatten() {
        let status = text(&listener["status"]);
        let mut line = format!(
            "  {:<16} {:<24} {:<6} {}",
            listener["name"].as_str().unwrap_or("--listen"),
            text(&listener["address"]),
            text(&listener["protocol"]),
            colour.paint(status_code(status), status)
        );
        if let Some(error) = listener["error"].as_str() {
            let _ = write!(line, ": {error}");
        }
        let _ = writeln!(out, "{line}");
    }

    let _ = writeln!(out, "\n{}", colour.paint("1", "Upstreams"));
    let upstreams = doc["upstreams"].as_array().cloned().unwrap_or_default();
    if upstreams.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for upstream in &upstreams {
        let mut head = format!("  {}", colour.paint("1", text(&upstream["name"])));
        if upstream["fail_open"] == Value::Bool(true) {
            let _ = write!(
                head,
                "  {}",
                colour.paint("1;31", "FAIL-OPEN (no healthy server)")
            );
        }
        if upstream["health_checks"] == Value::Bool(false) {
            head.push_str("  (no health checks)");
        }
        let used: Vec<String> = ["domains", "services"]
            .iter()
            .filter_map(|key| {
                let names: Vec<&str> = upstream[*key]
                    .as_array()?
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                (!names.is_empty()).then(|| format!("{key}: {}", names.join(", ")))
            })
            .collect();
        if !used.is_empty() {
            let _ = write!(head, "  {}", used.join("; "));
        }
        if let Some(traffic) = upstream.get("traffic") {
            let _ = write!(
                head,
                "  requests {}  5xx {}",
                traffic["requests"], traffic["errors_5xx"]
            );
        }
        let _ = writeln!(out, "{head}");
        for server in upstream["servers"].as_array().into_iter().flatten() {
            let status = text(&server["status"]);
            let mut line = format!(
                "    {}  {:<24} weight {:<3} zone {:<10}",
                colour.paint(
                    status_code(status),
                    &format!("{:<9}", status.to_uppercase())
                ),
                text(&server["address"]),
                server["weight"].to_string(),
                server["zone"].as_str().unwrap_or("-"),
            );
            if let Some(left) = server["drain_seconds_left"].as_f64() {
                let _ = write!(line, " drain ends in {left:.0}s ");
            }
            let _ = write!(line, " {}", text(&server["reason"]));
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }

    let l4 = &doc["l4"];
    let dataplane = l4["dataplane"].as_str().unwrap_or("none");
    let _ = writeln!(
        out,
        "\n{} ({dataplane} data plane)",
        colour.paint("1", "L4 services")
    );
    let services = l4["services"].as_array().cloned().unwrap_or_default();
    if services.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for service in &services {
        let mut head = format!(
            "  {}  {} {} -> {}",
            colour.paint("1", text(&service["name"])),
            text(&service["proto"]),
            text(&service["vip"]),
            text(&service["upstream"])
        );
        if service["fail_open"] == Value::Bool(true) {
            let _ = write!(head, "  {}", colour.paint("1;31", "FAIL-OPEN"));
        }
        if let Some(error) = service["error"].as_str() {
            let _ = write!(head, "  {}", colour.paint("1;31", error));
        }
        let _ = writeln!(out, "{head}\n    {}", counters(&service["counters"]));
        for server in service["servers"].as_array().into_iter().flatten() {
            let status = text(&server["status"]);
            let _ = writeln!(
                out,
                "    {}  {:<24} {}",
                colour.paint(
                    status_code(status),
                    &format!("{:<9}", status.to_uppercase())
                ),
                text(&server["address"]),
                counters(&server["counters"])
            );
        }
    }

    let _ = writeln!(out, "\n{}", colour.paint("1", "XDP"));
    let interfaces = l4["interfaces"].as_object().cloned().unwrap_or_default();
    if interfaces.is_empty() {
        let _ = writeln!(
            out,
            "  not attached to any interface (L4 services: {dataplane} data plane)"
        );
    }
    for (iface, how) in &interfaces {
        let _ = writeln!(out, "  {iface:<16} {}", text(how));
    }

    let problems = doc["summary"]["problems"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !problems.is_empty() {
        let _ = writeln!(out, "\n{}", colour.paint("1;31", "Problems"));
        for problem in &problems {
            let _ = writeln!(out, "  - {}", text(problem));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc() -> Value {
        json!({
            "elb": {"name": "ELB", "version": "0.1.0", "uptime_seconds": 12},
            "store": {"kind": "file", "location": "/var/lib/elb/ELB.json", "connected": true},
            "listeners": [{"name": null, "address": "127.0.0.1:80", "protocol": "http", "status": "serving"}],
            "upstreams": [{"name": "web", "fail_open": true, "health_checks": true,
                "domains": ["shop.test"], "services": [],
                "servers": [{"address": "10.0.0.1:80", "status": "down", "weight": 1, "zone": "a",
                    "reason": "Failed 2 consecutive health checks: Connection refused"},
                    {"address": "10.0.0.2:80", "status": "draining", "weight": 2, "zone": null,
                    "drain_seconds_left": 4.2, "reason": "Target deregistration is in progress"}]}],
            "l4": {"dataplane": "xdp", "interfaces": {"eth0": "attached in driver mode"},
                "services": [{"name": "dns", "proto": "udp", "vip": "10.9.9.9:53", "upstream": "web",
                    "fail_open": true, "counters": {"packets": 10, "bytes": 1000},
                    "servers": [{"address": "10.0.0.1:80", "status": "down", "counters": {"packets": 9}}]}]},
            "summary": {"upstreams_fail_open": ["web"], "problems": ["upstream web: no healthy server"]}
        })
    }

    #[test]
    fn a_report_shows_every_part() {
        let report = render(&doc(), Colour::Off);
        for needle in [
            "elb ELB  version 0.1.0  up 12s  store file /var/lib/elb/ELB.json connected",
            "--listen         127.0.0.1:80             http   serving",
            "web  FAIL-OPEN (no healthy server)  domains: shop.test",
            "DOWN       10.0.0.1:80              weight 1   zone a          Failed 2 consecutive",
            "DRAINING   10.0.0.2:80              weight 2   zone -          drain ends in 4s",
            "L4 services (xdp data plane)",
            "dns  udp 10.9.9.9:53 -> web  FAIL-OPEN",
            "    bytes 1000  packets 10",
            "eth0             attached in driver mode",
            "Problems\n  - upstream web: no healthy server",
        ] {
            assert!(report.contains(needle), "{needle:?} not in:\n{report}");
        }
        assert!(!report.contains('\x1b'));
        assert_eq!(fail_open(&doc()), ["web"]);
    }

    #[test]
    fn colour_marks_the_down_server_red() {
        let report = render(&doc(), Colour::On);
        assert!(report.contains("\x1b[1;31mDOWN     \x1b[0m"), "{report:?}");
    }

    #[test]
    fn no_xdp_is_said() {
        let mut doc = doc();
        doc["l4"] = json!({"dataplane": "userspace", "services": []});
        let report = render(&doc, Colour::Off);
        assert!(
            report.contains("not attached to any interface (L4 services: userspace data plane)")
        );
        assert!(report.contains("L4 services (userspace data plane)\n  (none)"));
    }
}
