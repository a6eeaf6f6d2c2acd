//! The embedded store: the whole configuration in one local JSON file,
//! rewritten atomically (temp file, fsync, rename, fsync of the directory).
//! The same format holds elb's local snapshot of etcd.
use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{Kv, KvOp, StoreError};

const FORMAT: &str = "elb-state/1";

/// On-disk layout of a state or snapshot file.
#[derive(Debug, Serialize, Deserialize)]
pub struct StateFile {
    pub format: String,
    /// etcd revision the snapshot was taken at; 0 for the embedded store.
    pub revision: i64,
    pub kv: Kv,
}

/// Reads a state file; `Ok(None)` if it does not exist.
pub fn read_state_file(path: &Path) -> Result<Option<StateFile>, StoreError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_error(path, format!("cannot read: {e}"))),
    };
    let state: StateFile = serde_json::from_str(&text)
        .map_err(|e| file_error(path, format!("is not a valid elb state file: {e}")))?;
    if state.format != FORMAT {
        return Err(file_error(
            path,
            format!("has format {:?}, expected {FORMAT:?}", state.format),
        ));
    }
    Ok(Some(state))
}

/// Replaces `path` with `kv` so that a crash leaves either the old or the
/// new file, never a torn one.
pub fn write_state_file(path: &Path, revision: i64, kv: &Kv) -> Result<(), StoreError> {
    let state = StateFile {
        format: FORMAT.into(),
        revision,
        kv: kv.clone(),
    };
    let text = serde_json::to_vec_pretty(&state)
        .map_err(|e| file_error(path, format!("cannot serialise: {e}")))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| file_error(path, format!("cannot create {}: {e}", dir.display())))?;
    let tmp = dir.join(format!("{}{}", temp_prefix(path), std::process::id()));
    let write = || -> std::io::Result<()> {
        // Owner only: the state holds TLS private keys (`/certs/`).
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        file_error(path, format!("cannot write: {e}"))
    })
}

/// `.<file name>.tmp-`: what [`write_state_file`]'s temp files for `path`
/// start with; the writer's pid follows.
fn temp_prefix(path: &Path) -> String {
    format!(
        ".{}.tmp-",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    )
}

/// Removes the temp files a writer of `path` left when it was killed
/// between creating and renaming one. Only this file's temp files go
/// (`.<name>.tmp-<pid>`), and not one whose pid is a live process: that
/// writer may still be about to rename it. Returns the paths removed.
pub fn remove_stale_temp_files(path: &Path) -> Vec<PathBuf> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = temp_prefix(path);
    let Ok(entries) = std::fs::read_dir(dir) else {
        // No directory yet: nothing was ever written there.
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if Path::new("/proc").join(pid).exists() {
            tracing::debug!(file = %entry.path().display(), "temp file of a live process kept");
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {
                tracing::info!(file = %entry.path().display(), "removed a stale state temp file");
                removed.push(entry.path());
            }
            Err(error) => tracing::warn!(
                file = %entry.path().display(),
                %error,
                "cannot remove a stale state temp file"
            ),
        }
    }
    removed
}

fn file_error(path: &Path, message: String) -> StoreError {
    StoreError::File {
        path: path.display().to_string(),
        message,
    }
}

/// The embedded store.
pub struct FileStore {
    path: PathBuf,
    kv: Mutex<Kv>,
}

impl FileStore {
    /// Opens the state file, creating an empty one on first start. A file
    /// that exists but cannot be parsed is an error: starting empty would
    /// silently drop the configuration.
    pub fn open(path: PathBuf) -> Result<(Self, Kv), StoreError> {
        let kv = match read_state_file(&path)? {
            Some(state) => state.kv,
            None => {
                let kv = Kv::new();
                write_state_file(&path, 0, &kv)?;
                tracing::info!(path = %path.display(), "created an empty state file");
                kv
            }
        };
        Ok((
            Self {
                path,
                kv: Mutex::new(kv.clone()),
            },
            kv,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn commit(&self, ops: &[KvOp]) -> Result<i64, StoreError> {
        let mut current = self.kv.lock().await;
        let mut next = current.clone();
        for op in ops {
            op.apply_to(&mut next);
        }
        let path = self.path.clone();
        let to_write = next.clone();
        tokio::task::spawn_blocking(move || write_state_file(&path, 0, &to_write))
            .await
            .map_err(|e| file_error(&self.path, format!("writer task failed: {e}")))??;
        *current = next;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ELB.json");
        write_state_file(&path, 0, &Kv::new()).expect("write");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    #[tokio::test]
    async fn commits_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/ELB.json");
        let (store, kv) = FileStore::open(path.clone()).expect("open");
        assert!(kv.is_empty());
        assert!(path.exists(), "created on first start");
        store
            .commit(&[KvOp::Put {
                key: "/ELB/rules/a".into(),
                value: "{}".into(),
            }])
            .await
            .expect("commit");
        drop(store);
        let (_, kv) = FileStore::open(path).expect("reopen");
        assert_eq!(kv.get("/ELB/rules/a").map(String::as_str), Some("{}"));
    }

    #[test]
    fn stale_temp_files_of_this_file_go_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ELB.json");
        // A pid above the kernel's pid_max (2^22) is never live.
        let stale = dir.path().join(".ELB.json.tmp-99999999");
        let live = dir
            .path()
            .join(format!(".ELB.json.tmp-{}", std::process::id()));
        let others = [
            ".OTHER.json.tmp-99999999",
            ".ELB.json.tmp-",
            ".ELB.json.tmp-12x",
            "ELB.json.tmp-99999999",
            ".ELB.json.bak",
        ];
        for file in [&stale, &live] {
            std::fs::write(file, "{").expect("write");
        }
        for other in others {
            std::fs::write(dir.path().join(other), "{").expect("write");
        }
        assert_eq!(remove_stale_temp_files(&path), std::slice::from_ref(&stale));
        assert!(!stale.exists());
        assert!(live.exists(), "a live writer's file stays");
        for other in others {
            assert!(dir.path().join(other).exists(), "{other} is not ours");
        }
        assert!(remove_stale_temp_files(&dir.path().join("none/ELB.json")).is_empty());
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ELB.json");
        std::fs::write(&path, "{not json").expect("write");
        let err = FileStore::open(path.clone()).err().expect("must fail");
        let message = err.to_string();
        assert!(message.contains("not a valid elb state file"), "{message}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "{not json");
    }

    #[tokio::test]
    async fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ELB.json");
        let (store, _) = FileStore::open(path.clone()).expect("open");
        // A directory where the file should go makes rename fail.
        std::fs::remove_file(&path).expect("rm");
        std::fs::create_dir(&path).expect("mkdir");
        let result = store
            .commit(&[KvOp::Put {
                key: "/ELB/rules/a".into(),
                value: "{}".into(),
            }])
            .await;
        assert!(result.is_err());
        assert!(store.kv.lock().await.is_empty(), "memory unchanged");
    }
}
