//! Statuses under the state directory: `<state-dir>/<namespace>/<plural>/<name>.yaml`,
//! the whole object, written atomically (a shadow file, then swapped in). Never the
//! user's files.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::hash::{HashMap, HashSet};
use crate::resource::{API_VERSION, InstanceSpec, Kind, Metadata, ResourceKey, Status, Workload};
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
/// `write` stages a status: its text written over the file's shadow, `.<name>.yaml.tmp`
/// beside it. `sync` makes the batch durable and visible: one `syncfs` for every staged
/// shadow's data, each shadow swapped with its file (`renameat2(RENAME_EXCHANGE)`), then
/// one fsync per directory. The shadow then holds the previous status and is rewritten in
/// place next time: no file is created and none unlinked per write. Creating and
/// unlinking cost ~10x the write itself on ext4 (an inode scan, a synchronous discard),
/// most of the controller's CPU in an upgrade, as a fsync per file did before that. A
/// crash still leaves the old status or the new one, never a part of one: a shadow is
/// rewritten only once the swap that made it a shadow is durable.
#[derive(Debug)]
pub struct StatusFiles {
    dir: PathBuf,
    state: Mutex<State>,
    /// Held by `write` and `sync` (the writer's and a flush's): a staged shadow is never
    /// rewritten while a sync may swap it.
    syncing: Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    /// Per key, the status in its file.
    written: HashMap<ResourceKey, Arc<Status>>,
    /// Per key, the status in its shadow, not yet swapped in.
    staged: HashMap<ResourceKey, Arc<Status>>,
    /// Directories with an entry swapped or renamed since their last fsync.
    unsynced: HashSet<PathBuf>,
}

impl StatusFiles {
    /// Opens the state directory and reads the statuses already there (drift counts and
    /// transition times survive a restart).
    pub fn open(dir: &Path) -> std::io::Result<StatusFiles> {
        std::fs::create_dir_all(dir)?;
        let mut written = HashMap::default();
        for obj in read_all(dir) {
            if let Some((key, status)) = key_and_status(&obj) {
                written.insert(key, Arc::new(status));
            }
        }
        // A shadow is kept (it is never read, only rewritten whole before a swap) unless
        // its file is gone; a temporary file of an older version goes.
        for tmp in files_under(dir, |f| {
            f.extension()
                .is_some_and(|e| e.to_string_lossy().starts_with("tmp"))
        }) {
            if file_of_shadow(&tmp).is_none_or(|file| !file.is_file()) {
                let _ = std::fs::remove_file(tmp);
            }
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

    fn lock_files(&self) -> std::sync::MutexGuard<'_, ()> {
        self.syncing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fsyncs every directory with an entry swapped since its last fsync.
    fn sync_dirs(&self) -> std::io::Result<()> {
        let dirs: Vec<PathBuf> = self.lock().unsynced.iter().cloned().collect();
        for dir in dirs {
            std::fs::File::open(&dir)?.sync_all()?;
            self.lock().unsynced.remove(&dir);
        }
        Ok(())
    }
}

impl State {
    /// The status last handed to `write` for `key`: staged, else in its file.
    fn last(&self, key: &ResourceKey) -> Option<&Status> {
        self.staged
            .get(key)
            .or_else(|| self.written.get(key))
            .map(|s| &**s)
    }
}

impl StatusStore for StatusFiles {
    /// The status last written for `key` (staged or in its file).
    fn with_status(&self, key: &ResourceKey, f: &mut dyn FnMut(Option<&Status>)) {
        f(self.lock().last(key))
    }

    /// Stages the whole resource with `status` unless `status` equals the one last
    /// written: its text over the file's shadow, swapped in by the next `sync`. Returns
    /// whether it wrote.
    fn write(
        &self,
        key: &ResourceKey,
        workload: Option<&Workload>,
        status: &Arc<Status>,
    ) -> std::io::Result<bool> {
        if self.lock().last(key) == Some(&**status) {
            return Ok(false);
        }
        let text = serde_saphyr::to_string(&Stored::new(key, workload, status))
            .map_err(std::io::Error::other)?;
        let _files = self.lock_files();
        // A swap a failed sync left unsynced is made durable before its shadow (the
        // file on disk until then) is rewritten.
        self.sync_dirs()?;
        let written = rewrite(&shadow_of(&self.path(key)), text.as_bytes());
        let mut state = self.lock();
        match written {
            Ok(()) => {
                state.staged.insert(key.clone(), status.clone());
                Ok(true)
            }
            Err(e) => {
                // The shadow holds part of this status: not one to swap in.
                state.staged.remove(key);
                Err(e)
            }
        }
    }

    /// Makes every staged status durable and visible: one `syncfs`, the swaps, then one
    /// fsync per directory whose entries changed. What fails stays for the next `sync`.
    /// The statuses stay readable meanwhile: the device flush runs without the lock
    /// `get` takes.
    fn sync(&self) -> std::io::Result<()> {
        let _files = self.lock_files();
        let batch: Vec<ResourceKey> = self.lock().staged.keys().cloned().collect();
        if !batch.is_empty() {
            rustix::fs::syncfs(std::fs::File::open(&self.dir)?)?;
        }
        for key in batch {
            let mut state = self.lock();
            // Removed meanwhile: nothing to swap in.
            if !state.staged.contains_key(&key) {
                continue;
            }
            let path = self.path(&key);
            swap(&shadow_of(&path), &path)?;
            if let Some(status) = state.staged.remove(&key) {
                state.written.insert(key, status);
            }
            if let Some(parent) = path.parent() {
                state.unsynced.insert(parent.to_path_buf());
            }
        }
        self.sync_dirs()
    }

    /// The resource is no longer managed: its status file goes, and its shadow.
    fn remove(&self, key: &ResourceKey) {
        // Under the lock each swap takes: a sync swaps before or not at all.
        let mut state = self.lock();
        state.staged.remove(key);
        state.written.remove(key);
        let path = self.path(key);
        let _ = std::fs::remove_file(shadow_of(&path));
        let _ = std::fs::remove_file(path);
    }
}

/// What a status file holds: the resource as loaded, with the controller's status; for
/// one that does not load, its kind, name and namespace. Serialized straight from the
/// resource (no intermediate JSON tree: that copy was a third of the writer's CPU).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Stored<'a> {
    api_version: &'a str,
    kind: &'a str,
    metadata: Cow<'a, Metadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<&'a InstanceSpec>,
    status: &'a Status,
}

impl<'a> Stored<'a> {
    fn new(key: &'a ResourceKey, workload: Option<&'a Workload>, status: &'a Status) -> Self {
        let metadata = workload.map_or_else(
            || {
                Cow::Owned(Metadata {
                    name: key.name.to_string(),
                    namespace: key.namespace.to_string(),
                    ..Metadata::default()
                })
            },
            |w| Cow::Borrowed(&w.metadata),
        );
        Stored {
            api_version: workload.map_or(API_VERSION, |w| &w.api_version),
            kind: key.kind.as_str(),
            metadata,
            spec: workload.map(|w| &w.spec),
            status,
        }
    }
}

fn path_of(dir: &Path, key: &ResourceKey) -> PathBuf {
    dir.join(&*key.namespace)
        .join(key.kind.plural())
        .join(format!("{}.yaml", key.name))
}

/// `<dir>/.<name>.yaml.tmp` for `<dir>/<name>.yaml`.
fn shadow_of(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.tmp"))
}

/// `<dir>/<name>.yaml` for the shadow `<dir>/.<name>.yaml.tmp`.
fn file_of_shadow(shadow: &Path) -> Option<PathBuf> {
    let name = shadow.file_name()?.to_str()?;
    let file = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    Some(shadow.with_file_name(file))
}

/// Writes `text` over the file at `path` in place (created, with its directory, when
/// missing): no truncation to zero first, so its block is neither freed nor discarded;
/// an old tail beyond `text` is cut after.
fn rewrite(path: &Path, text: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    };
    let mut file = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            open()?
        }
        other => other?,
    };
    file.write_all(text)?;
    // Cut only a longer old text: statuses mostly keep their length, and a truncation
    // to the same length still dirties the inode (a journal entry each).
    let len = text.len() as u64;
    if file.metadata()?.len() > len {
        file.set_len(len)?;
    }
    Ok(())
}

/// Swaps `shadow` with `path` atomically. When `path` does not exist yet, renames the
/// shadow and makes an empty one for the next write (the status's first write pays the
/// file creation, not each later one); when the filesystem cannot swap, renames.
fn swap(shadow: &Path, path: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    use rustix::io::Errno;
    match renameat_with(CWD, shadow, CWD, path, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(()),
        Err(Errno::NOENT) => {
            std::fs::rename(shadow, path)?;
            // Only an optimisation: a missing shadow is made by the next rewrite.
            let _ = std::fs::File::create_new(shadow);
            Ok(())
        }
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => std::fs::rename(shadow, path),
        Err(e) => Err(e.into()),
    }
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

    /// An Applied status listing `profile`.
    fn status(profile: &str) -> Status {
        let outcome = crate::status::Outcome::InSync {
            profiles: vec![profile.to_string()],
            foreign: vec![],
        };
        crate::status::decide(None, &outcome, 1, false, "2026-11-25T10:00:00Z").status
    }

    /// `files.write` of `key`, an object that does not load, with `status`.
    fn put(files: &StatusFiles, key: &ResourceKey, status: &Status) -> bool {
        files.write(key, None, &Arc::new(status.clone())).unwrap()
    }

    #[test]
    fn a_status_file_is_the_resource_as_loaded_with_its_status() {
        let d = tempfile::tempdir().unwrap();
        let files = StatusFiles::open(d.path()).unwrap();
        let text = "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata: {name: '0', namespace: m, labels: {team: db}}\nspec: {instance: juju-m-0, applications: [one]}\n";
        let parsed = crate::resource::parse_str("r.yaml", text);
        let Some(crate::resource::Resource::Machine(w)) =
            parsed.resources.first().map(|l| &l.resource)
        else {
            panic!("one machine: {:?}", parsed.errors);
        };
        let (key, status) = (ResourceKey::new(Kind::Machine, "m", "0"), status("default"));
        files
            .write(&key, Some(w), &Arc::new(status.clone()))
            .unwrap();
        // And a Machine that does not load: its name, namespace and status.
        let broken = ResourceKey::new(Kind::Machine, "m", "1");
        put(&files, &broken, &status);
        files.sync().unwrap();
        let read = |name: &str| {
            let t = std::fs::read_to_string(d.path().join(format!("m/machines/{name}.yaml")));
            serde_saphyr::from_str::<serde_json::Value>(&t.unwrap()).unwrap()
        };
        let expected = serde_json::json!({
            "apiVersion": "lxdmutater.dev/v1alpha1", "kind": "Machine",
            "metadata": {"name": "0", "namespace": "m", "labels": {"team": "db"}},
            "spec": {"instance": "juju-m-0", "applications": ["one"], "life": "alive", "manual": false},
            "status": serde_json::to_value(&status).unwrap(),
        });
        assert_eq!(read("0"), expected);
        let expected = serde_json::json!({
            "apiVersion": "lxdmutater.dev/v1alpha1", "kind": "Machine",
            "metadata": {"name": "1", "namespace": "m"},
            "status": serde_json::to_value(&status).unwrap(),
        });
        assert_eq!(read("1"), expected);
        let again = StatusFiles::open(d.path()).unwrap();
        assert_eq!(again.get(&key), Some(status.clone()));
        assert_eq!(again.get(&broken), Some(status));
    }

    #[test]
    fn an_unchanged_status_is_not_written_again_and_survives_a_reopen() {
        let d = tempfile::tempdir().unwrap();
        let files = StatusFiles::open(d.path()).unwrap();
        let key = ResourceKey::new(Kind::Machine, "m", "0");
        let status = status("default");
        assert_eq!(status.phase, Phase::Applied);
        assert!(put(&files, &key, &status));
        assert!(!put(&files, &key, &status));
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
    fn a_batch_keeps_the_newest_status_of_a_key_and_prepares_its_shadow() {
        let d = tempfile::tempdir().unwrap();
        let files = StatusFiles::open(d.path()).unwrap();
        let key = ResourceKey::new(Kind::Machine, "m", "0");
        let (a, b) = (status("a"), status("b"));
        assert!(put(&files, &key, &a));
        assert!(put(&files, &key, &b));
        assert_eq!(
            files.get(&key),
            Some(b.clone()),
            "the staged status is the one read"
        );
        files.sync().unwrap();
        let dir = d.path().join("m/machines");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".0.yaml.tmp", "0.yaml"]);
        assert_eq!(
            std::fs::read(dir.join(".0.yaml.tmp")).unwrap(),
            b"",
            "empty until rewritten"
        );
        assert_eq!(StatusFiles::open(d.path()).unwrap().get(&key), Some(b));
    }

    #[test]
    fn a_rewrite_swaps_in_the_new_status_and_keeps_the_old_one_as_the_shadow() {
        let d = tempfile::tempdir().unwrap();
        let files = StatusFiles::open(d.path()).unwrap();
        let key = ResourceKey::new(Kind::Machine, "m", "0");
        let dir = d.path().join("m/machines");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        // A longer status first, so the rewrite in place must also cut the old tail.
        let (long, short) = (status("a-rather-long-profile-name"), status("b"));
        put(&files, &key, &long);
        files.sync().unwrap();
        let first = read("0.yaml");
        put(&files, &key, &short);
        files.sync().unwrap();
        assert_eq!(
            read("0.yaml"),
            serde_saphyr::to_string(&Stored::new(&key, None, &short)).unwrap()
        );
        assert_eq!(
            read(".0.yaml.tmp"),
            first,
            "the shadow holds the previous status"
        );
        put(&files, &key, &long);
        files.sync().unwrap();
        assert_eq!(
            read("0.yaml"),
            first,
            "the shadow rewritten in place, cut to length"
        );
        assert_eq!(StatusFiles::open(d.path()).unwrap().get(&key), Some(long));
        assert!(dir.join(".0.yaml.tmp").exists(), "a shadow is kept on open");
        files.remove(&key);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn a_temporary_file_or_orphan_shadow_is_removed_on_open_and_not_read() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("m/machines");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0.yaml.tmp7"), "kind: Mach").unwrap();
        std::fs::write(dir.join(".0.yaml.tmp"), "kind: Mach").unwrap();
        std::fs::write(dir.join("1.yaml"), "kind: Machine").unwrap();
        std::fs::write(dir.join(".1.yaml.tmp"), "kind: Mach").unwrap();
        let files = StatusFiles::open(d.path()).unwrap();
        assert_eq!(files.get(&ResourceKey::new(Kind::Machine, "m", "0")), None);
        assert!(!dir.join("0.yaml.tmp7").exists());
        assert!(
            !dir.join(".0.yaml.tmp").exists(),
            "a shadow without its file goes"
        );
        assert!(
            dir.join(".1.yaml.tmp").exists(),
            "a shadow beside its file stays"
        );
    }
}
