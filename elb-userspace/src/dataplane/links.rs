//! XDP attachments kept as pinned bpf_links: they outlive elb, and a new
//! elb swaps its program into them atomically (`BPF_LINK_UPDATE`), so a
//! restart or an upgrade never leaves an interface without the program.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use aya::programs::{
    Xdp,
    links::{FdLink, LinkError, PinnedLink},
    xdp::XdpLink,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `struct bpf_link_info`: type, id, prog_id, then a union aligned to 8
/// whose `xdp.ifindex` comes first.
const LINK_INFO_IFINDEX_OFFSET: usize = 16;

/// The interface a pinned XDP link is attached to; 0 once the interface is
/// gone (the kernel leaves such a link defunct).
pub fn pinned_link_ifindex(path: &Path) -> io::Result<u32> {
    let fd = obj_get(path)?;
    let mut info = [0u8; 64];
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr {
        bpf_fd: raw(&fd),
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: attr and info outlive the call; the kernel writes at most
    // info_len bytes into info.
    unsafe { crate::sys::bpf::bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    let bytes: [u8; 4] = info[LINK_INFO_IFINDEX_OFFSET..LINK_INFO_IFINDEX_OFFSET + 4]
        .try_into()
        .map_err(|_| io::Error::other("short bpf_link_info"))?;
    Ok(u32::from_ne_bytes(bytes))
}

fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // The kernel refuses (EINVAL) non-zero bytes after the command's last
    // field: the tail the struct's alignment adds is an explicit zero, not
    // padding of unspecified value.
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        zero: u32,
    }
    let mut attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        zero: 0,
    };
    // SAFETY: attr and c_path outlive the call.
    let fd = unsafe { crate::sys::bpf::bpf(BPF_OBJ_GET, &mut attr) }?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn raw(fd: &OwnedFd) -> u32 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd() as u32
}

/// Swaps `program` into the XDP link pinned at `path`.
pub fn replace_program(program: &mut Xdp, path: &Path) -> Result<(), LinkUpdateError> {
    let pinned = PinnedLink::from_pin(path).map_err(LinkUpdateError::Open)?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(LinkUpdateError::NotXdp)?;
    let id = program
        .attach_to_link(link)
        .map_err(LinkUpdateError::Update)?;
    // The pin keeps the link; elb need not hold it.
    drop(program.take_link(id).map_err(LinkUpdateError::Update)?);
    Ok(())
}

/// Attaches `program` through a new link and pins it at `path`.
pub fn attach_pinned(
    program: &mut Xdp,
    ifindex: u32,
    mode: aya::programs::XdpMode,
    path: &Path,
) -> Result<(), LinkUpdateError> {
    let id = program
        .attach(ifindex, mode)
        .map_err(LinkUpdateError::Attach)?;
    let link = program.take_link(id).map_err(LinkUpdateError::Update)?;
    // Kernels without bpf_link XDP (< 5.9) attach through netlink, which
    // cannot be pinned; elb's lifecycle needs the link.
    let link = FdLink::try_from(link).map_err(|_| LinkUpdateError::NoLinkSupport)?;
    link.pin(path).map_err(LinkUpdateError::Pin)?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum LinkUpdateError {
    #[error("opening the pinned link")]
    Open(#[source] LinkError),
    #[error("the pinned link is not an XDP link")]
    NotXdp(#[source] LinkError),
    #[error("replacing the program in the pinned link")]
    Update(#[source] aya::programs::ProgramError),
    #[error("attaching")]
    Attach(#[source] aya::programs::ProgramError),
    #[error("pinning the link")]
    Pin(#[source] aya::pin::PinError),
    #[error("this kernel attached XDP without a bpf_link (Linux < 5.9), which cannot be pinned")]
    NoLinkSupport,
}
