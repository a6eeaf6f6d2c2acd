//! The NAT port range, a load-time constant: userspace sets these globals
//! with `EbpfLoader::set_global` (`--nat-ports`), so the verifier knows
//! their values (frozen `.rodata`) and no packet pays a map lookup for
//! them. Changing the range needs a new program, as a restart or takeover
//! loads anyway. The defaults serve programs loaded without them (tests,
//! benches).
use elb_common::{
    l4::{NAT_PORT_MAX, NAT_PORT_MIN},
    nat::NatPorts,
};

#[unsafe(no_mangle)]
static ELB_NAT_PORT_MIN: u16 = NAT_PORT_MIN;
#[unsafe(no_mangle)]
static ELB_NAT_PORT_MAX: u16 = NAT_PORT_MAX;

#[inline(always)]
pub fn nat_ports() -> NatPorts {
    // SAFETY: reads of plain statics; volatile, so the compiler does not
    // fold in the defaults that the loader may replace.
    let (min, max) = unsafe {
        (
            core::ptr::read_volatile(&ELB_NAT_PORT_MIN),
            core::ptr::read_volatile(&ELB_NAT_PORT_MAX),
        )
    };
    NatPorts::from_bounds(min, max)
}
