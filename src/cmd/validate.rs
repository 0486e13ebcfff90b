//! `lxd-mutater validate PATH...`: every problem of some resource files, in the
//! product's words, with file:line:column; exit 0 when there is none, 1 otherwise.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::source::scan;

pub fn validate(paths: &[PathBuf]) -> ExitCode {
    let loaded = scan::load(paths);
    let mut out = std::io::stdout().lock();
    for w in &loaded.warnings {
        let _ = writeln!(
            out,
            "{}:{}:{}: warning: {}",
            w.file, w.line, w.column, w.message
        );
    }
    for p in &loaded.problems {
        let _ = writeln!(out, "{p}");
    }
    let summary = format!(
        "{} file(s), {} resource(s), {} problem(s), {} warning(s)",
        loaded.files,
        loaded.resources.len(),
        loaded.problems.len(),
        loaded.warnings.len()
    );
    eprintln!("{summary}");
    if loaded.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
