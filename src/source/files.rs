//! The file source: every file's last good resources, rescanned when the directory
//! watcher says something changed and periodically (watchers miss events). A file that
//! stops parsing keeps its last good resources. Each rescan emits only what changed
//! (`SourceEvent`s), so the work downstream is proportional to the change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::resource::{Problem, Resource, ResourceKey, parse_file};

use super::SourceEvent;
use super::scan::resource_files;

#[derive(Debug, Default)]
struct FileState {
    text: String,
    /// The last good resources of the file.
    resources: Vec<Resource>,
    /// The problems of the current text, if it does not parse.
    problems: Vec<Problem>,
}

/// Every file's last good resources, and what was last emitted.
#[derive(Debug, Default)]
pub struct FileSnapshot {
    files: BTreeMap<PathBuf, FileState>,
    emitted: HashMap<ResourceKey, Resource>,
    invalid: Option<usize>,
    loaded: bool,
}

impl FileSnapshot {
    /// Reads the directory again and says what changed since the last call: upserts and
    /// removals, the count of files that do not parse when it changed, and `Loaded` after
    /// the first scan.
    pub fn scan(&mut self, root: &Path) -> Vec<SourceEvent> {
        let mut events = Vec::new();
        if self.rescan(root) {
            let now: HashMap<ResourceKey, Resource> =
                self.resources().into_iter().map(|r| (r.key(), r)).collect();
            let mut gone: Vec<ResourceKey> = self
                .emitted
                .keys()
                .filter(|k| !now.contains_key(k))
                .cloned()
                .collect();
            gone.sort();
            let mut upserts: Vec<&Resource> = now
                .iter()
                .filter(|(k, r)| self.emitted.get(k) != Some(r))
                .map(|(_, r)| r)
                .collect();
            upserts.sort_by_key(|r| r.key());
            events.extend(upserts.into_iter().cloned().map(SourceEvent::Upsert));
            events.extend(gone.into_iter().map(SourceEvent::Remove));
            self.emitted = now;
        }
        let invalid = self.broken_files();
        if self.invalid != Some(invalid) {
            self.invalid = Some(invalid);
            events.push(SourceEvent::InvalidCount(invalid));
        }
        if !std::mem::replace(&mut self.loaded, true) {
            events.push(SourceEvent::Loaded);
        }
        events
    }

    /// Reads the directory again; returns whether any resource may have changed. Files
    /// whose text did not change are not parsed again.
    pub fn rescan(&mut self, root: &Path) -> bool {
        let (paths, dir_errors) = resource_files(root);
        for (dir, e) in dir_errors {
            warn!(path = %dir.display(), error = %e, "cannot read directory");
        }
        let present: HashSet<&PathBuf> = paths.iter().collect();
        let before = self.files.len();
        self.files.retain(|p, _| present.contains(p));
        let mut changed = self.files.len() != before;
        for path in &paths {
            let Ok(text) = std::fs::read_to_string(path) else {
                // Being replaced or unreadable: keep what we had.
                continue;
            };
            let state = self.files.entry(path.clone()).or_default();
            if state.text == text && !state.text.is_empty() {
                continue;
            }
            state.text = text;
            let parsed = parse_file(path);
            for w in &parsed.warnings {
                warn!("{w}");
            }
            if parsed.errors.is_empty() {
                if !state.problems.is_empty() {
                    info!(file = %path.display(), "file parses again");
                }
                state.problems.clear();
                state.resources = parsed.resources.into_iter().map(|l| l.resource).collect();
                changed = true;
            } else {
                for p in &parsed.errors {
                    warn!("{p} (the file's last good resources are kept)");
                }
                state.problems = parsed.errors;
            }
        }
        changed
    }

    /// Files that do not parse now.
    pub fn broken_files(&self) -> usize {
        self.files
            .values()
            .filter(|s| !s.problems.is_empty())
            .count()
    }

    /// The union of every file's resources; of two with the same key, the first file
    /// (in path order) wins and the other is reported.
    pub fn resources(&self) -> Vec<Resource> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (path, state) in &self.files {
            for r in &state.resources {
                if seen.insert(r.key()) {
                    out.push(r.clone());
                } else {
                    warn!(file = %path.display(), resource = %r.key(), "defined twice: this one is ignored");
                }
            }
        }
        out
    }
}

/// Watches `root` and sends a tick on every change (debounced) and every `rescan`.
/// The returned watcher must be kept alive.
pub fn watch(
    root: &Path,
    rescan: Duration,
) -> Result<(mpsc::Receiver<()>, impl Drop), notify::Error> {
    let (tx, rx) = mpsc::channel(1);
    let ticker = tx.clone();
    let mut debouncer = notify_debouncer_full::new_debouncer(
        Duration::from_millis(100),
        None,
        move |_events: notify_debouncer_full::DebounceEventResult| {
            // A full channel already holds a tick: changes coalesce.
            let _ = tx.try_send(());
        },
    )?;
    debouncer.watch(root, notify::RecursiveMode::Recursive)?;
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(rescan);
        interval.tick().await;
        loop {
            interval.tick().await;
            if ticker.is_closed() {
                break;
            }
            let _ = ticker.try_send(());
        }
    });
    Ok((rx, debouncer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{app, machine};

    fn names(events: &[SourceEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                SourceEvent::Upsert(r) => format!("upsert {}", r.key()),
                SourceEvent::Remove(k) => format!("remove {k}"),
                SourceEvent::Loaded => "loaded".into(),
                SourceEvent::InvalidCount(n) => format!("invalid {n}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_scan_emits_only_what_changed_and_a_broken_file_keeps_its_resources() {
        let d = tempfile::tempdir().unwrap();
        let write = |f: &str, t: &str| std::fs::write(d.path().join(f), t).unwrap();
        write("apps.yaml", &app("one", 3));
        write(
            "m.yaml",
            &(machine("0", "i0", &["one"]) + &machine("1", "i1", &["one"])),
        );
        let mut s = FileSnapshot::default();
        let first = names(&s.scan(d.path()));
        assert_eq!(first.len(), 5, "{first:?}");
        assert_eq!(first[3..], ["invalid 0", "loaded"]);
        // Nothing changed: nothing said.
        assert!(s.scan(d.path()).is_empty());
        // One machine edited, one removed: two events.
        write("m.yaml", &machine("0", "i9", &["one"]));
        let second = names(&s.scan(d.path()));
        assert_eq!(second, ["upsert Machine/m/0", "remove Machine/m/1"]);
        // A file that stops parsing keeps its last good resources: only the count moves.
        write("m.yaml", "kind: [");
        assert_eq!(names(&s.scan(d.path())), ["invalid 1"]);
        write("m.yaml", &machine("0", "i9", &["one"]));
        assert_eq!(names(&s.scan(d.path())), ["invalid 0"]);
    }
}
