//! `lxd-mutater get machines|containers|applications`: the statuses the controller last
//! wrote under the state directory, as a table, YAML or JSON.

use std::process::ExitCode;

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
    let mut objects: Vec<serde_json::Value> = read_all(&dir)
        .into_iter()
        .filter(|o| o.get("kind").and_then(|k| k.as_str()) == Some(kind.as_str()))
        .collect();
    let field = |o: &serde_json::Value, path: &[&str]| -> String {
        let mut v = o;
        for p in path {
            match v.get(p) {
                Some(x) => v = x,
                None => return String::new(),
            }
        }
        match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(a) => a
                .iter()
                .map(|x| x.as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
                .join(","),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        }
    };
    objects.sort_by_key(|o| {
        (
            field(o, &["metadata", "namespace"]),
            field(o, &["metadata", "name"]),
        )
    });
    match args.output.as_str() {
        "json" => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
            println!(
                "{}",
                serde_json::to_string_pretty(&list).unwrap_or_default()
            );
        }
        "yaml" => {
            for o in &objects {
                println!(
                    "---\n{}",
                    serde_saphyr::to_string(o).unwrap_or_default().trim_end()
                );
            }
        }
        _ => {
            if objects.is_empty() {
                eprintln!("No {} found in {}.", kind.plural(), dir.display());
                return ExitCode::SUCCESS;
            }
            let rows: Vec<[String; 6]> = objects
                .iter()
                .map(|o| {
                    [
                        field(o, &["metadata", "namespace"]),
                        field(o, &["metadata", "name"]),
                        field(o, &["spec", "instance"]),
                        field(o, &["status", "phase"]),
                        field(o, &["status", "profiles"]),
                        age(&field(o, &["status", "lastTransitionTime"])),
                    ]
                })
                .collect();
            let header = ["NAMESPACE", "NAME", "INSTANCE", "PHASE", "PROFILES", "AGE"];
            let mut widths = header.map(str::len);
            for r in &rows {
                for (w, c) in widths.iter_mut().zip(r) {
                    *w = (*w).max(c.len());
                }
            }
            let line = |cells: Vec<&str>| {
                let mut s = String::new();
                for (i, c) in cells.iter().enumerate() {
                    if i + 1 < cells.len() {
                        s.push_str(&format!("{c:<w$}   ", w = widths[i]));
                    } else {
                        s.push_str(c);
                    }
                }
                println!("{}", s.trim_end());
            };
            line(header.to_vec());
            for r in &rows {
                line(r.iter().map(String::as_str).collect());
            }
        }
    }
    ExitCode::SUCCESS
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
