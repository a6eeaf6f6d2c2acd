//! A running elb keeps its heap on small pages: with transparent huge pages
//! its RSS was 2.5× larger and stepped up after bursts (the soak's RSS
//! bound failed).
use elb_tests::l7::start_with;

/// The `THP_enabled` line of the process's `/proc/PID/status`.
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .expect("THP_enabled in /proc/PID/status")
        .trim()
        .to_owned()
}

#[test]
fn elb_runs_without_transparent_huge_pages() {
    let s = start_with(&[]);
    let pid = s.elb.process.pid().expect("pid");
    assert_eq!(thp_enabled(pid), "0");
}
