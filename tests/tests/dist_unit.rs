//! The shipped systemd unit (`dist/elb.service`) passes `systemd-analyze
//! verify`, with its ExecStart pointed at the elb just built (the unit
//! names /usr/local/bin/elb, which verify requires to exist).
use std::process::Command;

use elb_tests::elb_process::elb_binary;

#[test]
fn the_systemd_unit_verifies() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("dist/elb.service")).expect("dist/elb.service");
    for wanted in [
        "ExecStart=/usr/local/bin/elb run",
        "ExecReload=/usr/local/bin/elb run --takeover --detach",
        "Type=notify",
        "NotifyAccess=all",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
    ] {
        assert!(unit.contains(wanted), "the unit lacks {wanted:?}");
    }
    let settings = unit.lines().filter(|l| !l.starts_with('#'));
    for line in settings.filter(|l| l.contains("Capabilit")) {
        assert!(
            !line.contains("CAP_SYS_ADMIN"),
            "CAP_SYS_ADMIN only where bpffs must be mounted: {line}"
        );
    }
    let binary = elb_binary().expect("the elb binary");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("elb.service");
    let unit = unit.replace("/usr/local/bin/elb", &binary.to_string_lossy());
    std::fs::write(&path, unit).expect("write the unit");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze (Debian: systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "systemd-analyze verify: {said}");
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify warned: {said}"
    );
}
