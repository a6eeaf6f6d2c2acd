//! `elb run --detach`: starts the same command line without `--detach` in
//! the background and returns once it serves (exit 0) or has failed (1).
//! systemd's ExecReload needs this: a reload command must end, while the
//! elb it starts must go on (and becomes the main process through
//! `MAINPID=`, see dist/elb.service).
use std::{
    io::Read,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    process::{Command, ExitCode},
};

/// The variable that gives the child the readiness pipe's write end.
const READY_FD: &str = "ELB_READY_FD";
const READY: &[u8] = b"ready\n";

pub fn run_detached() -> ExitCode {
    match spawn_and_wait() {
        Ok(pid) => {
            eprintln!("elb: started in the background (pid {pid}), serving");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("elb: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn spawn_and_wait() -> anyhow::Result<u32> {
    use anyhow::Context;
    let (mut read, write) = std::io::pipe().context("creating the readiness pipe")?;
    // dup() clears close-on-exec: the child inherits this copy only.
    // SAFETY: dup of a descriptor we own; the result is owned at once.
    let inherited = unsafe { libc::dup(write.as_raw_fd()) };
    if inherited < 0 {
        return Err(std::io::Error::last_os_error()).context("duplicating the readiness pipe");
    }
    // SAFETY: a new descriptor from dup, owned by nobody else.
    let inherited = unsafe { OwnedFd::from_raw_fd(inherited) };
    drop(write);
    let exe = std::env::current_exe().context("finding the elb binary")?;
    let args = std::env::args_os().skip(1).filter(|arg| arg != "--detach");
    let child = Command::new(exe)
        .args(args)
        .env(READY_FD, inherited.as_raw_fd().to_string())
        // Its own process group: a terminal's ^C or hangup is not for it.
        .process_group(0)
        .spawn()
        .context("starting elb in the background")?;
    drop(inherited);
    let mut said = Vec::new();
    let _ = read.read_to_end(&mut said);
    if said == READY {
        Ok(child.id())
    } else {
        anyhow::bail!(
            "the background elb (pid {}) stopped before it served (its log is above)",
            child.id()
        )
    }
}

/// In a detached child: says it serves and closes the pipe; elsewhere
/// nothing.
pub fn report_ready() {
    let Some(fd) = std::env::var(READY_FD)
        .ok()
        .and_then(|fd| fd.parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: the descriptor was inherited for this, is open, and nothing
    // else in this process uses it.
    let pipe = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut pipe = std::fs::File::from(pipe);
    let _ = std::io::Write::write_all(&mut pipe, READY);
}
