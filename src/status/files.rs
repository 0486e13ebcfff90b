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
///
/// A write is staged (its temporary file written, not yet synced) and `sync` makes the
/// batch durable and visible: one `syncfs` for every staged file's data, then each
/// rename, then one fsync per directory. A fsync per file cost the status writer most of
/// the controller's CPU during an upgrade (a device flush each); a crash still leaves the
/// old status or the new one, never an empty file.
#[derive(Debug)]
pub struct StatusFiles {
    dir: PathBuf,
    state: Mutex<State>,
    /// One `sync` at a time (the writer's and a flush's).
    syncing: Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    /// Per key, the status in its file.
    written: HashMap<ResourceKey, Status>,
    /// Per key, the status written to a temporary file and not yet renamed over its own.
    staged: HashMap<ResourceKey, Staged>,
    /// Directories with an entry renamed since their last fsync.
    unsynced: HashSet<PathBuf>,
}

#[derive(Debug)]
struct Staged {
    tmp: PathBuf,
    status: Status,
}

impl StatusFiles {
    /// Opens the state directory and reads the statuses already there (drift counts and
    /// transition times survive a restart). Temporary files a crash left are removed.
    pub fn open(dir: &Path) -> std::io::Result<StatusFiles> {
        std::fs::create_dir_all(dir)?;
        let mut written = HashMap::new();
        for obj in read_all(dir) {
            if let Some((key, status)) = key_and_status(&obj) {
                written.insert(key, status);
            }
        }
        for tmp in files_under(dir, |f| {
            f.extension()
                .is_some_and(|e| e.to_string_lossy().starts_with("tmp"))
        }) {
            let _ = std::fs::remove_file(tmp);
        }
        Ok(StatusFiles {
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                written,
                ..State::default()
            }),
            syncing: Mutex::new(()),
        })
    }

    pub fn path(&self, key: &ResourceKey) -> PathBuf {
        path_of(&self.dir, key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl State {
    /// The status last handed to `write` for `key`: staged, else in its file.
    fn last(&self, key: &ResourceKey) -> Option<&Status> {
        self.staged
            .get(key)
            .map(|s| &s.status)
            .or_else(|| self.written.get(key))
    }

    fn unstage(&mut self, key: &ResourceKey) {
        if let Some(old) = self.staged.remove(key) {
            let _ = std::fs::remove_file(old.tmp);
        }
    }
}

impl StatusStore for StatusFiles {
    /// The status last written for `key` (staged or in its file).
    fn get(&self, key: &ResourceKey) -> Option<Status> {
        self.lock().last(key).cloned()
    }

    /// Stages `object` (the whole resource, status included) unless `status` equals the
    /// one last written: its temporary file, made durable and renamed by the next `sync`.
    /// Returns whether it wrote.
    fn write(
        &self,
        key: &ResourceKey,
        object: &dyn Fn() -> serde_json::Value,
        status: &Status,
    ) -> std::io::Result<bool> {
        if self.lock().last(key) == Some(status) {
            return Ok(false);
        }
        let path = self.path(key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let text = serde_saphyr::to_string(&object()).map_err(std::io::Error::other)?;
        // A temporary name of its own per write: a staged file is never overwritten
        // while it may still be renamed.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("yaml.tmp{n}"));
        std::fs::write(&tmp, text.as_bytes())?;
        let mut state = self.lock();
        state.unstage(key);
        state.staged.insert(
            key.clone(),
            Staged {
                tmp,
                status: status.clone(),
            },
        );
        Ok(true)
    }

    /// Makes every staged status durable and visible: one `syncfs` (the files' data),
    /// the renames, then one fsync per directory whose entries changed. What fails stays
    /// for the next `sync`. The statuses stay readable meanwhile: the device flush runs
    /// without the lock `get` takes.
    fn sync(&self) -> std::io::Result<()> {
        let _one = self
            .syncing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let batch: Vec<(ResourceKey, PathBuf)> = (self.lock().staged.iter())
            .map(|(k, s)| (k.clone(), s.tmp.clone()))
            .collect();
        if !batch.is_empty() {
            rustix::fs::syncfs(std::fs::File::open(&self.dir)?)?;
        }
        for (key, tmp) in batch {
            let mut state = self.lock();
            // Superseded meanwhile: the newer one is synced next time.
            if state.staged.get(&key).is_none_or(|s| s.tmp != tmp) {
                continue;
            }
            let path = self.path(&key);
            std::fs::rename(&tmp, &path)?;
            if let Some(staged) = state.staged.remove(&key) {
                state.written.insert(key, staged.status);
            }
            if let Some(parent) = path.parent() {
                state.unsynced.insert(parent.to_path_buf());
            }
        }
        let dirs: Vec<PathBuf> = self.lock().unsynced.iter().cloned().collect();
        for dir in dirs {
            std::fs::File::open(&dir)?.sync_all()?;
            self.lock().unsynced.remove(&dir);
        }
        Ok(())
    }

    /// The resource is no longer managed: its status file goes.
    fn remove(&self, key: &ResourceKey) {
        let mut state = self.lock();
        state.unstage(key);
        state.written.remove(key);
        let _ = std::fs::remove_file(self.path(key));
    }
}

fn path_of(dir: &Path, key: &ResourceKey) -> PathBuf {
    dir.join(&*key.namespace)
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
    files_under(dir, |f| f.extension().is_some_and(|e| e == "yaml"))
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .filter_map(|t| serde_saphyr::from_str::<serde_json::Value>(&t).ok())
        .collect()
}

/// The files `<namespace>/<plural>/<file>` under the state directory that `wanted` takes,
/// sorted.
fn files_under(dir: &Path, wanted: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let entries = |d: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    entries(dir)
        .iter()
        .filter(|ns| ns.is_dir())
        .flat_map(|ns| entries(ns))
        .filter(|kind| kind.is_dir())
        .flat_map(|kind| entries(&kind))
        .filter(|f| wanted(f) && f.is_file())
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
        assert!(files.write(&key, &|| obj.clone(), &status).unwrap());
        assert!(!files.write(&key, &|| obj.clone(), &status).unwrap());
        assert!(
            !d.path().join("m/machines/0.yaml").exists(),
            "visible only once synced"
        );
        files.sync().unwrap();
        assert!(d.path().join("m/machines/0.yaml").is_file());
        let again = StatusFiles::open(d.path()).unwrap();
        assert_eq!(again.get(&key), Some(status));
    }

    #[test]
    fn a_batch_keeps_the_newest_status_of_a_key_and_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let files = StatusFiles::open(d.path()).unwrap();
        let key = ResourceKey::new(Kind::Machine, "m", "0");
        let status = |p: &str| {
            let outcome = crate::status::Outcome::InSync {
                profiles: vec![p.to_string()],
                foreign: vec![],
            };
            crate::status::decide(None, &outcome, 1, false, "2026-11-25T10:00:00Z").status
        };
        let obj = |s: &Status| {
            serde_json::json!({"kind": "Machine",
            "metadata": {"name": "0", "namespace": "m"}, "spec": {}, "status": s})
        };
        let (a, b) = (status("a"), status("b"));
        assert!(files.write(&key, &|| obj(&a), &a).unwrap());
        assert!(files.write(&key, &|| obj(&b), &b).unwrap());
        assert_eq!(
            files.get(&key),
            Some(b.clone()),
            "the staged status is the one read"
        );
        files.sync().unwrap();
        let dir = d.path().join("m/machines");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["0.yaml"]);
        assert_eq!(StatusFiles::open(d.path()).unwrap().get(&key), Some(b));
    }

    #[test]
    fn a_temporary_file_a_crash_left_is_removed_on_open_and_not_read() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("m/machines");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0.yaml.tmp7"), "kind: Mach").unwrap();
        let files = StatusFiles::open(d.path()).unwrap();
        assert_eq!(files.get(&ResourceKey::new(Kind::Machine, "m", "0")), None);
        assert!(!dir.join("0.yaml.tmp7").exists());
    }
}
