//! The file source: every file's last good resources, rescanned when the directory
//! watcher says something changed and periodically (watchers miss events). A file that
//! stops parsing keeps its last good resources. Each rescan emits only what changed
//! (`SourceEvent`s), so the work downstream is proportional to the change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::resource::parse::{Documents, ReadError, parse_bytes_again, read_capped};
use crate::resource::{Problem, Resource, ResourceKey};

use super::SourceEvent;
use super::scan::{is_resource_file, resource_files};

#[derive(Debug, Default)]
struct FileState {
    /// What was read last (or why it could not be), to parse only what changed.
    bytes: Option<Result<Vec<u8>, String>>,
    /// The last good resources of the file.
    resources: Vec<Resource>,
    /// The problems of the current text, if it does not parse.
    problems: Vec<Problem>,
    /// Its documents as last parsed: an edit parses only the documents it changed.
    documents: Documents,
}

/// Every file's last good resources, and what was last emitted.
#[derive(Debug, Default)]
pub struct FileSnapshot {
    files: BTreeMap<PathBuf, FileState>,
    emitted: HashMap<ResourceKey, Resource>,
    invalid: Option<usize>,
    loaded: bool,
    /// Why the last scan could not see the whole directory (its view is partial).
    unreadable: Option<String>,
}

impl FileSnapshot {
    /// Reads the directory again and says what changed since the last call: upserts and
    /// removals, the count of files that do not parse when it changed, and `Loaded` after
    /// the first scan.
    pub fn scan(&mut self, root: &Path) -> Vec<SourceEvent> {
        let mut events = Vec::new();
        let was = self.unreadable.clone();
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
        if self.unreadable != was {
            events.push(SourceEvent::Unreadable(self.unreadable.clone()));
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
    /// whose bytes did not change are not parsed again; each file is read once, and never
    /// past the size cap.
    ///
    /// A directory that cannot be read (the root gone or unreadable, a subdirectory that
    /// fails) makes the view partial: no file is forgotten, nothing is removed, and
    /// `unreadable` says why until a whole scan succeeds.
    pub fn rescan(&mut self, root: &Path) -> bool {
        let (paths, dir_errors) = if root.is_dir() {
            resource_files(root)
        } else {
            let why =
                std::io::Error::new(std::io::ErrorKind::NotFound, "missing, or not a directory");
            (Vec::new(), vec![(root.to_path_buf(), why)])
        };
        let partial = dir_errors
            .first()
            .map(|(dir, e)| format!("cannot read {}: {e}", dir.display()));
        if partial != self.unreadable {
            match &partial {
                Some(why) => warn!("{why} (the last good resources are kept; nothing is removed)"),
                None => info!(root = %root.display(), "resources directory readable again"),
            }
        }
        self.unreadable = partial;
        let mut changed = false;
        if self.unreadable.is_none() {
            let present: HashSet<&PathBuf> = paths.iter().collect();
            let before = self.files.len();
            self.files.retain(|p, _| present.contains(p));
            changed = self.files.len() != before;
        }
        for path in &paths {
            let read = match read_capped(path) {
                Ok(bytes) => Ok(bytes),
                // Renamed away between the listing and the read: the next scan settles it.
                Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => Err(e.to_string()),
            };
            let state = self.files.entry(path.clone()).or_default();
            if state.bytes.as_ref() == Some(&read) {
                continue;
            }
            state.bytes = Some(read.clone());
            let name = path.display().to_string();
            let parsed = match read {
                Ok(bytes) => parse_bytes_again(&name, bytes, &mut state.documents),
                Err(e) => crate::resource::ParsedFile::error(&name, e),
            };
            for w in &parsed.warnings {
                warn!("{w}");
            }
            let loaded: Vec<Resource> = parsed.resources.into_iter().map(|l| l.resource).collect();
            if parsed.errors.is_empty() {
                if !state.problems.is_empty() {
                    info!(file = %path.display(), "file parses again");
                }
                state.problems.clear();
                state.resources = loaded;
            } else {
                for p in &parsed.errors {
                    warn!(
                        "{p} (the resources of this file that do not load keep their last good version)"
                    );
                }
                // Each document stands alone: the ones that load are taken; nothing the
                // file held before is forgotten while part of it does not load.
                let keys: HashSet<ResourceKey> = loaded.iter().map(Resource::key).collect();
                let kept = std::mem::take(&mut state.resources)
                    .into_iter()
                    .filter(|r| !keys.contains(&r.key()));
                state.resources = loaded.into_iter().chain(kept).collect();
                state.problems = parsed.errors;
            }
            changed = true;
        }
        changed
    }

    /// The problems of the files that do not load now, and why the directory could not be
    /// read whole (for one-shot commands, which exit 1 on either).
    pub fn problems(&self) -> Vec<String> {
        self.unreadable
            .iter()
            .cloned()
            .chain(
                self.files
                    .values()
                    .flat_map(|f| f.problems.iter().map(Problem::to_string)),
            )
            .collect()
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

/// Whether a watch event may change the resources. Reading a file is not a change: the
/// rescan's own reads would otherwise tick the next rescan, ten times a second for ever
/// (inotify reports opens and closes).
pub(crate) fn is_change(kind: &notify::EventKind) -> bool {
    !matches!(
        kind,
        notify::EventKind::Access(
            notify::event::AccessKind::Open(_)
                | notify::event::AccessKind::Read
                | notify::event::AccessKind::Close(notify::event::AccessMode::Read)
                | notify::event::AccessKind::Close(notify::event::AccessMode::Execute)
                | notify::event::AccessKind::Any
        )
    )
}

/// Whether a watch event says a writer is done with a resource file: closed after
/// writing, renamed into place (or away), removed. An editor's save, `mv` of a finished
/// file and `rm` all end with one of these; a write still under way does not.
pub(crate) fn is_finished(event: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    matches!(
        event.kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_)
    ) && event.paths.iter().any(|p| is_resource_file(p))
}

/// How long the watch waits after a change that is not finished (a write under way, a
/// temporary file) for one that is, before it ticks anyway.
const SETTLE: Duration = Duration::from_millis(100);

/// Watches `root` and sends a tick on every change and every `rescan`. A change to a
/// resource file that its writer is done with (`is_finished`) ticks at once; any other
/// waits up to `settle` for one, so that an editor's save (a temporary file, a rename)
/// is read once and whole. Changes that arrive meanwhile coalesce into that tick.
/// The returned watcher must be kept alive.
///
/// The wait is a tokio timer started by the first change, not a debouncer thread:
/// a controller with nothing to do wakes for nothing (notify-debouncer-full's thread
/// woke 40 times a second, a third of the CPU of an idle controller).
pub fn watch(
    root: &Path,
    rescan: Duration,
) -> Result<(mpsc::Receiver<()>, impl Drop), notify::Error> {
    watch_settling(root, rescan, SETTLE)
}

fn watch_settling(
    root: &Path,
    rescan: Duration,
    settle: Duration,
) -> Result<(mpsc::Receiver<()>, impl Drop), notify::Error> {
    let (tx, rx) = mpsc::channel(1);
    let (changed, mut changes) = mpsc::channel::<()>(1);
    let finished = Arc::new(AtomicBool::new(false));
    let mut watcher = notify::recommended_watcher({
        let finished = finished.clone();
        move |event: notify::Result<notify::Event>| {
            // A full channel already holds a change: they coalesce. An error ticks at
            // once: a rescan finds out.
            let (change, done) = match &event {
                Ok(e) => (is_change(&e.kind), is_finished(e)),
                Err(_) => (true, true),
            };
            if done {
                finished.store(true, Ordering::SeqCst);
            }
            if change {
                let _ = changed.try_send(());
            }
        }
    })?;
    notify::Watcher::watch(&mut watcher, root, notify::RecursiveMode::Recursive)?;
    let ticker = tx.clone();
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            let deadline = tokio::time::Instant::now() + settle;
            while !finished.swap(false, Ordering::SeqCst) {
                match tokio::time::timeout_at(deadline, changes.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            while changes.try_recv().is_ok() {}
            if tx.try_send(()).is_err() && tx.is_closed() {
                break;
            }
        }
    });
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
    Ok((rx, watcher))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_a_file_is_no_change_and_writing_one_is() {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind};
        for read in [
            AccessKind::Open(AccessMode::Any),
            AccessKind::Read,
            AccessKind::Close(AccessMode::Read),
            AccessKind::Any,
        ] {
            assert!(!is_change(&EventKind::Access(read)), "{read:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Create(CreateKind::File),
            EventKind::Remove(notify::event::RemoveKind::Any),
            EventKind::Any,
        ] {
            assert!(is_change(&change), "{change:?}");
        }
    }
    use crate::testing::{app, machine};

    /// A tick within `deadline`, rescans aside (they come every hour here).
    async fn ticked(ticks: &mut mpsc::Receiver<()>) -> bool {
        tokio::time::timeout(Duration::from_secs(10), ticks.recv())
            .await
            .is_ok_and(|t| t.is_some())
    }

    #[tokio::test]
    async fn a_finished_write_ticks_without_waiting_out_the_settle_time() {
        let d = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        let (mut ticks, _w) = watch_settling(d.path(), hour, hour).unwrap();
        // Written aside and renamed into place, as `write_atomic` and editors do: the
        // temporary file alone would wait an hour, the rename ends the wait.
        std::fs::write(d.path().join(".tmp"), app("one", 3)).unwrap();
        std::fs::rename(d.path().join(".tmp"), d.path().join("apps.yaml")).unwrap();
        assert!(
            ticked(&mut ticks).await,
            "no tick after a rename into place"
        );
        // Written in place: the close after writing ends the wait.
        std::fs::write(d.path().join("apps.yaml"), app("one", 4)).unwrap();
        assert!(ticked(&mut ticks).await, "no tick after a write in place");
        std::fs::remove_file(d.path().join("apps.yaml")).unwrap();
        assert!(ticked(&mut ticks).await, "no tick after a removal");
    }

    #[test]
    fn only_a_resource_file_its_writer_is_done_with_is_finished() {
        use notify::event::{AccessKind, AccessMode, DataChange, ModifyKind, RenameMode};
        use notify::{Event, EventKind};
        let at = |kind, path: &str| Event::new(kind).add_path(PathBuf::from(path));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        let written = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(is_finished(&at(closed, "/r/m.yaml")));
        assert!(is_finished(&at(renamed, "/r/m.yml")));
        assert!(!is_finished(&at(written, "/r/m.yaml")), "still writing");
        assert!(
            !is_finished(&at(closed, "/r/.tmp-resources")),
            "not a resource file"
        );
        assert!(
            !is_finished(&at(closed, "/r/m.yaml.swp")),
            "an editor's file"
        );
    }

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

    #[test]
    fn a_directory_that_goes_away_is_a_partial_view_and_nothing_is_forgotten() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("resources");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("m.yaml"), machine("0", "i0", &[])).unwrap();
        let mut s = FileSnapshot::default();
        assert_eq!(s.scan(&root).len(), 3);
        std::fs::rename(&root, top.path().join("away")).unwrap();
        let events = s.scan(&root);
        assert!(
            matches!(events.as_slice(), [SourceEvent::Unreadable(Some(why))] if why.contains("resources")),
            "{events:?}"
        );
        assert_eq!(s.resources().len(), 1, "nothing forgotten");
        std::fs::rename(top.path().join("away"), &root).unwrap();
        assert_eq!(s.scan(&root), [SourceEvent::Unreadable(None)]);
        // An empty but readable directory is a real view.
        std::fs::remove_file(root.join("m.yaml")).unwrap();
        assert_eq!(names(&s.scan(&root)), ["remove Machine/m/0"]);
    }

    #[test]
    fn each_document_stands_alone() {
        let d = tempfile::tempdir().unwrap();
        let bad = "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata: {name: \"9\", namespace: m}\nspec: {instance: bad/name}\n---\n";
        std::fs::write(
            d.path().join("m.yaml"),
            bad.to_string() + &machine("0", "i0", &[]),
        )
        .unwrap();
        let mut s = FileSnapshot::default();
        let events = names(&s.scan(d.path()));
        assert_eq!(events, ["upsert Machine/m/0", "invalid 1", "loaded"]);
    }

    #[test]
    fn text_that_is_not_utf8_and_a_huge_sparse_file_are_counted_not_read() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.yaml"), b"kind: \xff\xfe\n").unwrap();
        let huge = std::fs::File::create(d.path().join("b.yaml")).unwrap();
        huge.set_len(8 * 1024 * 1024 * 1024).unwrap();
        std::fs::write(d.path().join("m.yaml"), machine("0", "i0", &[])).unwrap();
        let mut s = FileSnapshot::default();
        let events = names(&s.scan(d.path()));
        assert_eq!(events, ["upsert Machine/m/0", "invalid 2", "loaded"]);
        let problems: Vec<String> = s
            .files
            .values()
            .flat_map(|f| f.problems.iter().map(|p| p.message.clone()))
            .collect();
        assert!(
            problems.iter().any(|p| p.starts_with("not UTF-8 text")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("larger than")),
            "{problems:?}"
        );
    }
}
