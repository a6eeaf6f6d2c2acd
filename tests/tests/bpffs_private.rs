//! elb that has to mount bpffs itself in a private mount namespace (as
//! under `ip netns exec`, `unshare -m` or in a container without the host's
//! /sys/fs/bpf) says in one line that its pins will not outlive it, and
//! how to fix that. Runs in a new mount and network namespace (its own
//! loopback for the XDP program), which end with the process.
use std::time::Duration;

use elb_tests::{elb_process::ElbProcess, netns::unique_name, ports::free_port};

#[test]
fn a_bpffs_elb_mounted_itself_is_warned_about() {
    let name = unique_name("B");
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state.json");
    let listen = format!("127.0.0.1:{}", free_port());
    // Drop the host's bpffs from the new mount namespace, then run elb.
    let wrapper = [
        "unshare",
        "--mount",
        "--net",
        "sh",
        "-c",
        "umount -l /sys/fs/bpf 2>/dev/null; ip link set lo up && exec \"$0\" \"$@\"",
    ];
    let args = [
        "run",
        "--name",
        &name,
        "--listen",
        &listen,
        "--xdp-iface",
        "lo",
        "--xdp-mode",
        "skb",
        "--state-file",
        state.to_str().expect("path"),
        "--run-dir",
        dir.path().to_str().expect("path"),
    ];
    let mut elb = ElbProcess::spawn_wrapped(&wrapper, &args, None).expect("start elb");
    elb.wait_for_log(Duration::from_secs(20), "elb running")
        .unwrap_or_else(|e| panic!("{e:#}: {}", elb.plain_log()));
    let log = elb.plain_log();
    let warning = log
        .lines()
        .find(|line| line.contains("WARN") && line.contains("bpffs was not mounted"))
        .unwrap_or_else(|| panic!("no warning: {log}"));
    for fix in [
        "mount -t bpf bpf /sys/fs/bpf",
        "-v /sys/fs/bpf:/sys/fs/bpf",
        "nsenter --net=",
    ] {
        assert!(
            warning.contains(fix),
            "the warning lacks {fix:?}: {warning}"
        );
    }
    let status = elb.stop().expect("stop");
    assert!(status.success(), "{status}");
}
