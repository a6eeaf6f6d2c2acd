//! Headless Chromium (Debian `chromium`) loading a page for a test: the DOM
//! after the page's scripts ran, the console messages, a screenshot. Each
//! load gets its own profile directory, removed afterwards; a Chromium that
//! hangs is killed.
use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The browser: `CHROMIUM` if set, else `chromium` or `chromium-browser`
/// on the PATH.
pub fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "chromium not found on the PATH: install the Debian package `chromium` (cargo xtask setup)"
    )
}

/// What a page load left.
#[derive(Debug)]
pub struct Loaded {
    /// The serialised DOM after scripts ran (empty for a screenshot).
    pub dom: String,
    /// The page's console messages, as Chromium logs them.
    pub console: Vec<String>,
    /// Chromium's whole stderr, for failure messages.
    pub log: String,
}

const LIMIT: Duration = Duration::from_secs(60);

/// Loads `url`, lets it run `budget` of virtual time (its timers and
/// fetches), then prints the DOM.
pub fn dump_dom(url: &str, budget: Duration) -> Result<Loaded> {
    run(url, budget, &["--dump-dom"])
}

/// Loads `url` like [`dump_dom`] and saves a `width`×`height` PNG to `path`.
pub fn screenshot(
    url: &str,
    budget: Duration,
    path: &Path,
    (width, height): (u32, u32),
) -> Result<Loaded> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let loaded = run(
        url,
        budget,
        &[
            &format!("--screenshot={}", path.display()),
            &format!("--window-size={width},{height}"),
            "--hide-scrollbars",
        ],
    )?;
    if !path.is_file() {
        bail!(
            "chromium wrote no screenshot to {}: {}",
            path.display(),
            loaded.log
        );
    }
    Ok(loaded)
}

fn run(url: &str, budget: Duration, extra: &[&str]) -> Result<Loaded> {
    let budget = format!("--virtual-time-budget={}", budget.as_millis());
    let mut args = vec![budget.as_str()];
    args.extend_from_slice(extra);
    launch(url, &args)
}

fn launch(url: &str, extra: &[&str]) -> Result<Loaded> {
    let profile = tempfile::Builder::new()
        .prefix("elb-chromium-")
        .tempdir()
        .context("creating a chromium profile directory")?;
    let stdout = tempfile::NamedTempFile::new()?;
    let stderr = tempfile::NamedTempFile::new()?;
    let mut child = Command::new(binary()?)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--run-all-compositor-stages-before-draw",
            &format!("--user-data-dir={}", profile.path().display()),
        ])
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(stdout.reopen()?)
        .stderr(stderr.reopen()?)
        // Its own process group, so a kill takes its helpers too.
        .process_group(0)
        .spawn()
        .context("starting chromium")?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > LIMIT {
            kill_group(child.id());
            let _ = child.wait();
            bail!("chromium did not finish loading {url} within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Helpers that outlived the browser process.
    kill_group(child.id());
    let dom = std::fs::read_to_string(stdout.path())?;
    let log = std::fs::read_to_string(stderr.path())?;
    if !status.success() {
        bail!("chromium exited with {status} loading {url}: {log}");
    }
    let console = log
        .lines()
        .filter(|line| line.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect();
    Ok(Loaded { dom, console, log })
}

fn kill_group(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: signals the process group this module started.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

/// Where a test keeps its artifacts: `<target>/test-artifacts/<test>`.
pub fn artifact_dir(test: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest.parent().unwrap_or(manifest).join("target")
        });
    target.join("test-artifacts").join(test)
}
