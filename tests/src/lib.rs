//! Test harness for elb's integration tests: packet builders,
//! `BPF_PROG_TEST_RUN` fixtures, network namespaces and the `elb` process.

pub mod backend;
pub mod chromium;
pub mod consul_standin;
pub mod desync;
pub mod discovery;
pub mod elb_process;
pub mod etcd;
pub mod flood;
pub mod grpc;
pub mod http;
pub mod l4_e2e;
pub mod l4_fixture;
pub mod l7;
pub mod map_reset;
pub mod moto;
pub mod netns;
pub mod packet;
pub mod pki;
pub mod ports;
pub mod privileges;
pub mod prometheus;
pub mod proto_backend;
pub mod raw_backend;
pub mod soak;
pub mod strict_http;
pub mod wrk;
pub mod xdp_fixture;
pub mod xdp_fuzz;

/// Returns from the calling test, printing `SKIPPED: needs root and BPF`,
/// unless the process is root and the kernel has BPF.
#[macro_export]
macro_rules! require_root_and_bpf {
    () => {
        if let Err(why) = $crate::privileges::root_and_bpf() {
            $crate::privileges::print_skipped(&why);
            return;
        }
    };
}
