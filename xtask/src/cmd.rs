//! Running external commands with errors that name the step that failed.
use std::{
    ffi::OsStr,
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// A command plus the words to describe it when it fails.
pub struct Step {
    command: Command,
}

impl Step {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            command: Command::new(program),
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(args);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.command.current_dir(dir);
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.command.env_remove(key);
        self
    }

    /// Runs with inherited stdio; fails naming `what` on a non-zero exit.
    pub fn run(mut self, what: &str) -> Result<()> {
        eprintln!("xtask: {what}: {}", describe(&self.command));
        let status = self
            .command
            .status()
            .with_context(|| format!("{what}: cannot start {}", describe(&self.command)))?;
        if !status.success() {
            bail!("{what} failed ({status}): {}", describe(&self.command));
        }
        Ok(())
    }

    /// Runs quietly and returns stdout, or `None` if the program is missing
    /// or exits non-zero. For probes, where failure is an answer.
    pub fn probe(mut self) -> Option<String> {
        let output = self
            .command
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// `cargo` for the userspace workspace, with the root's pinned toolchain.
pub fn cargo(root: &Path) -> Step {
    Step::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).current_dir(root)
}

/// Replaces the current process; returns only on failure.
pub fn exec(program: &Path, args: &[String]) -> std::io::Error {
    Command::new(program).args(args).exec()
}

impl Step {
    /// Runs with stdout and stderr appended to `log`, for output that is
    /// parsed afterwards; returns the exit status, whatever it is.
    pub fn run_logged(mut self, what: &str, log: &Path) -> Result<std::process::ExitStatus> {
        eprintln!(
            "xtask: {what}: {} (output in {})",
            describe(&self.command),
            log.display()
        );
        let file = std::fs::File::create(log)
            .with_context(|| format!("{what}: cannot create {}", log.display()))?;
        let err = file
            .try_clone()
            .with_context(|| format!("{what}: cannot reopen {}", log.display()))?;
        self.command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .status()
            .with_context(|| format!("{what}: cannot start {}", describe(&self.command)))
    }
}
