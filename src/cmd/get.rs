//! `lxd-mutater get machines|containers|applications [NAME]`: the statuses the
//! controller last wrote under the state directory, as a table (`-o wide` adds the
//! message, the drift count and the last transition), YAML or JSON; with `--watch`, a line
//! each time one changes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::cli::GetArgs;
use crate::resource::Kind;
use crate::status::files::{default_state_dir, read_all};

/// `lxd-mutater get`.
pub fn get(args: GetArgs) -> ExitCode {
    let kind = match args.kind.trim_end_matches('s') {
        "machine" => Kind::Machine,
        "container" => Kind::Container,
        _ => Kind::Application,
    };
    let dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let objects = objects(&dir, kind, &args);
    let wide = args.output == "wide";
    match args.output.as_str() {
        "json" => {
            let items: Vec<&Value> = objects.values().collect();
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
            println!(
                "{}",
                serde_json::to_string_pretty(&list).unwrap_or_default()
            );
        }
        "yaml" => {
            for o in objects.values() {
                println!(
                    "---\n{}",
                    serde_saphyr::to_string(o).unwrap_or_default().trim_end()
                );
            }
        }
        _ if objects.is_empty() && !args.watch => {
            eprintln!("No {} found in {}.", kind.plural(), dir.display());
        }
        _ => print_table(objects.values().map(|o| row(o, wide)).collect(), wide),
    }
    if args.watch {
        return watch(&dir, kind, &args, objects, wide);
    }
    ExitCode::SUCCESS
}

/// The objects of `kind` (and NAME, namespace), by namespace and name.
fn objects(dir: &Path, kind: Kind, args: &GetArgs) -> BTreeMap<(String, String), Value> {
    read_all(dir)
        .into_iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some(kind.as_str()))
        .map(|o| {
            let key = (
                field(&o, &["metadata", "namespace"]),
                field(&o, &["metadata", "name"]),
            );
            (key, o)
        })
        .filter(|((ns, name), _)| {
            args.name.as_deref().is_none_or(|n| n == name)
                && args.namespace.as_deref().is_none_or(|n| n == ns)
        })
        .collect()
}

fn field(o: &Value, path: &[&str]) -> String {
    let mut v = o;
    for p in path {
        match v.get(p) {
            Some(x) => v = x,
            None => return String::new(),
        }
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join(","),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

const HEADER: [&str; 6] = ["NAMESPACE", "NAME", "INSTANCE", "PHASE", "PROFILES", "AGE"];
const WIDE: [&str; 3] = ["DRIFT", "LAST TRANSITION", "MESSAGE"];

fn row(o: &Value, wide: bool) -> Vec<String> {
    let mut r = vec![
        field(o, &["metadata", "namespace"]),
        field(o, &["metadata", "name"]),
        field(o, &["spec", "instance"]),
        field(o, &["status", "phase"]),
        field(o, &["status", "profiles"]),
        age(&field(o, &["status", "lastTransitionTime"])),
    ];
    if wide {
        let drift = field(o, &["status", "drift", "count"]);
        r.push(if drift.is_empty() { "0".into() } else { drift });
        r.push(field(o, &["status", "lastTransitionTime"]));
        r.push(field(o, &["status", "message"]));
    }
    r
}

fn print_table(rows: Vec<Vec<String>>, wide: bool) {
    let mut header: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
    if wide {
        header.extend(WIDE.iter().map(|h| h.to_string()));
    }
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        println!("{}", line(r, &widths));
    }
}

fn line(cells: &[String], widths: &[usize]) -> String {
    let mut s = String::new();
    for (i, c) in cells.iter().enumerate() {
        if i + 1 < cells.len() {
            s.push_str(&format!("{c:<w$}   ", w = widths[i]));
        } else {
            s.push_str(c);
        }
    }
    s.trim_end().to_string()
}

/// What a watch compares: the status and the spec (an edit shows too).
fn seen(o: &Value) -> (Value, Value) {
    (
        o.get("status").cloned().unwrap_or(Value::Null),
        o.get("spec").cloned().unwrap_or(Value::Null),
    )
}

/// Prints a row for each object whose status changes, until the process is stopped. The
/// state directory is watched (and read again at least every second: watchers miss
/// events), so a change shows within a second.
fn watch(
    dir: &Path,
    kind: Kind,
    args: &GetArgs,
    mut last: BTreeMap<(String, String), Value>,
    wide: bool,
) -> ExitCode {
    let (tx, rx) = std::sync::mpsc::channel();
    let watcher = notify_debouncer_full::new_debouncer(
        Duration::from_millis(50),
        None,
        move |events: notify_debouncer_full::DebounceEventResult| {
            // Its own reads of the status files are no change (they would tick again).
            let changed = events.as_ref().map_or(true, |v| {
                v.iter()
                    .any(|e| crate::source::files::is_change(&e.event.kind))
            });
            if changed {
                let _ = tx.send(());
            }
        },
    );
    let _watcher = match watcher {
        Ok(mut w) => {
            let _ = w.watch(dir, notify::RecursiveMode::Recursive);
            Some(w)
        }
        Err(_) => None,
    };
    let widths: Vec<usize> = {
        let mut w: Vec<usize> = HEADER.iter().map(|h| h.len().max(12)).collect();
        if wide {
            w.extend([5, 20]);
        }
        w
    };
    loop {
        // A tick, or a second without one: read again either way.
        let _ = rx.recv_timeout(Duration::from_secs(1));
        while rx.try_recv().is_ok() {}
        let now = objects(dir, kind, args);
        for (key, o) in &now {
            if last.get(key).map(seen) != Some(seen(o)) {
                println!("{}", line(&row(o, wide), &widths));
            }
        }
        for (key, o) in &last {
            if !now.contains_key(key) {
                let mut r = row(o, wide);
                r[3] = "Deleted".into();
                println!("{}", line(&r, &widths));
            }
        }
        last = now;
    }
}

/// `kubectl`-style age of an RFC 3339 time: 45s, 12m, 3h, 2d.
fn age(t: &str) -> String {
    let Ok(then) = humantime::parse_rfc3339(t) else {
        return String::new();
    };
    let secs = std::time::SystemTime::now()
        .duration_since(then)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
