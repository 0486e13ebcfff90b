//! Statuses under the state directory: `<state-dir>/<namespace>/<plural>/<name>.yaml`,
//! the whole object, written atomically (temporary file, then rename). Never the user's
//! files.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::resource::{Kind, ResourceKey, Status};
use crate::status::StatusStore;

/// Where statuses go when no flag says: `$STATE_DIRECTORY` (systemd), else
/// `/var/lib/lxd-mutater` as root, else `$XDG_STATE_HOME/lxd-mutater`
/// (`~/.local/state/lxd-mutater`).
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may pass several, colon-separated: the first is ours.
        let first = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        return PathBuf::from(first);
    }
    if is_root() {
        return PathBuf::from("/var/lib/lxd-mutater");
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("lxd-mutater");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/state/lxd-mutater")
}

fn is_root() -> bool {
    // The owner of /proc/self is the effective user; no libc call needed.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// The status files, and the statuses last written (so an unchanged one is not written
/// again).
#[derive(Debug)]
pub struct StatusFiles {
    dir: PathBuf,
    written: Mutex<HashMap<ResourceKey, Status>>,
    /// Directories with an entry renamed since their last fsync (held while `sync`
    /// runs, so that a `sync` returns only once what was written before it is durable).
    unsynced: Mutex<HashSet<PathBuf>>,
}

impl StatusFiles {
    /// Opens the state directory and reads the statuses already there (drift counts and
    /// transition times survive a restart).
    pub fn open(dir: &Path) -> std::io::Result<StatusFiles> {
        std::fs::create_dir_all(dir)?;
        let mut written = HashMap::new();
        for obj in read_all(dir) {
            if let Some((key, status)) = key_and_status(&obj) {
                written.insert(key, status);
            }
        }
        Ok(StatusFiles {
            dir: dir.to_path_buf(),
            written: Mutex::new(written),
            unsynced: Mutex::new(HashSet::new()),
        })
    }

    pub fn path(&self, key: &ResourceKey) -> PathBuf {
        path_of(&self.dir, key)
    }
}

impl StatusStore for StatusFiles {
    /// The status last written for `key`.
    fn get(&self, key: &ResourceKey) -> Option<Status> {
        lock(&self.written).get(key).cloned()
    }

    /// Writes `object` (the whole resource, status included) unless `status` equals the
    /// one last written. Returns whether it wrote.
    fn write(
        &self,
        key: &ResourceKey,
        object: &serde_json::Value,
        status: &Status,
    ) -> std::io::Result<bool> {
        if lock(&self.written).get(key) == Some(status) {
            return Ok(false);
        }
        let path = self.path(key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let text = serde_saphyr::to_string(object).map_err(std::io::Error::other)?;
        // A temporary name of its own per write: two writes of one key at once (a worker,
        // and the catch-up after a full disk) must not rename each other's file away.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("yaml.tmp{n}"));
        // Durable before it is visible: the data, then the rename; the directory entry
        // at the next `sync` (the writer's, after each batch), so that a crash leaves the
        // old status or the new one, never an empty file.
        {
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        if let Some(parent) = path.parent() {
            lock(&self.unsynced).insert(parent.to_path_buf());
        }
        lock(&self.written).insert(key.clone(), status.clone());
        Ok(true)
    }

    /// Fsyncs each directory whose entries changed since the last `sync`.
    fn sync(&self) -> std::io::Result<()> {
        let mut unsynced = lock(&self.unsynced);
        while let Some(dir) = unsynced.iter().next().cloned() {
            std::fs::File::open(&dir)?.sync_all()?;
            unsynced.remove(&dir);
        }
        Ok(())
    }

    /// The resource is no longer managed: its status file goes.
    fn remove(&self, key: &ResourceKey) {
        lock(&self.written).remove(key);
        let _ = std::fs::remove_file(self.path(key));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn path_of(dir: &Path, key: &ResourceKey) -> PathBuf {
    dir.join(&key.namespace)
        .join(key.kind.plural())
        .join(format!("{}.yaml", key.name))
}

fn key_and_status(obj: &serde_json::Value) -> Option<(ResourceKey, Status)> {
    let kind = Kind::parse(obj.get("kind")?.as_str()?)?;
    let meta = obj.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let ns = meta
        .get("namespace")
        .and_then(|n| n.as_str())
        .unwrap_or("default");
    let status: Status = serde_json::from_value(obj.get("status")?.clone()).ok()?;
    Some((ResourceKey::new(kind, ns, name), status))
}

/// Every object under the state directory, `<namespace>/<plural>/<name>.yaml` (files
/// that do not parse are skipped).
pub fn read_all(dir: &Path) -> Vec<serde_json::Value> {
    let entries = |d: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let files: Vec<PathBuf> = entries(dir)
        .iter()
        .filter(|ns| ns.is_dir())
        .flat_map(|ns| entries(ns))
        .filter(|kind| kind.is_dir())
        .flat_map(|kind| entries(&kind))
        .filter(|f| f.extension().is_some_and(|e| e == "yaml") && f.is_file())
        .collect();
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .filter_map(|t| serde_saphyr::from_str::<serde_json::Value>(&t).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Phase;

    #[test]
    fn an_unchanged_status_is_not_written_again_and_survives_a_reopen() {
        let d = tempfile::tempdir().unwrap();
        let files = StatusFiles::open(d.path()).unwrap();
        let key = ResourceKey::new(Kind::Machine, "m", "0");
        let outcome = crate::status::Outcome::InSync {
            profiles: vec!["default".into()],
            foreign: vec![],
        };
        let status = crate::status::decide(None, &outcome, 1, false, "2026-11-25T10:00:00Z").status;
        assert_eq!(status.phase, Phase::Applied);
        let obj = serde_json::json!({"apiVersion": "lxdmutater.dev/v1alpha1", "kind": "Machine",
            "metadata": {"name": "0", "namespace": "m"}, "spec": {}, "status": status});
        assert!(files.write(&key, &obj, &status).unwrap());
        assert!(!files.write(&key, &obj, &status).unwrap());
        assert!(d.path().join("m/machines/0.yaml").is_file());
        let again = StatusFiles::open(d.path()).unwrap();
        assert_eq!(again.get(&key), Some(status));
    }
}
