//! The embedded store's file across a kill: what a killed writer left.
use elb_tests::l7::{Cleanup, L7Builder};

#[test]
fn stale_temp_files_of_the_state_file_are_removed_at_start() {
    let builder = L7Builder::new();
    let mut elb = builder.start().expect("start elb");
    let _cleanup = Cleanup(elb.state_dir.clone());
    elb.stop();
    // What a `kill -9` between create and rename leaves: pid 99999999 is
    // above the kernel's pid_max, so never a live writer.
    let dir = elb.state_dir.clone();
    let stale = dir.join(".state.json.tmp-99999999");
    let other = dir.join(".other.json.tmp-99999999");
    std::fs::write(&stale, "{\"format\":").expect("write stale temp file");
    std::fs::write(&other, "{").expect("write another file's temp file");

    let elb = L7Builder::same_as(&elb).start().expect("restart elb");
    assert!(!stale.exists(), "the stale temp file is still there");
    assert!(other.exists(), "another state file's temp file was removed");
    assert!(
        elb.process
            .log()
            .contains("removed a stale state temp file"),
        "{}",
        elb.process.log()
    );
}
