//! Which files the file source reads: every `*.yaml`/`*.yml` under a directory,
//! recursively; and `load`, every resource and problem under some paths, for `validate`.

use std::path::{Path, PathBuf};

/// Whether a file name is one the source reads: YAML, not hidden, not an editor's
/// temporary file (`.#x.yaml`, `#x.yaml#`, `x.yaml~`, `.x.yaml.swp` all fail one test).
pub fn is_resource_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && !name.starts_with('#')
        && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// The resource files under `root` (or `root` itself if it is a file), sorted. Hidden
/// directories are skipped; symbolic links are followed only for files. Unreadable
/// directories are reported, not fatal.
pub fn resource_files(root: &Path) -> (Vec<PathBuf>, Vec<(PathBuf, std::io::Error)>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    if root.is_file() {
        files.push(root.to_path_buf());
        return (files, errors);
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                errors.push((dir, e));
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if ft.is_dir() {
                if !hidden {
                    stack.push(path);
                }
            } else if (ft.is_file() || (ft.is_symlink() && path.is_file()))
                && is_resource_file(&path)
            {
                files.push(path);
            }
        }
    }
    files.sort();
    (files, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_and_editor_files_are_not_read() {
        for bad in [
            ".x.yaml",
            ".#x.yaml",
            "#x.yaml#",
            "x.yaml~",
            ".x.yaml.swp",
            "x.json",
            "x.yaml.tmp",
        ] {
            assert!(!is_resource_file(Path::new(bad)), "{bad}");
        }
        for good in ["x.yaml", "x.yml", "a/b/x.yaml"] {
            assert!(is_resource_file(Path::new(good)), "{good}");
        }
    }

    #[test]
    fn directories_are_walked_recursively_skipping_hidden_ones() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::create_dir_all(d.path().join(".git")).unwrap();
        for f in [
            "x.yaml",
            "a/y.yml",
            "a/b/z.yaml",
            ".git/h.yaml",
            "a/notes.txt",
        ] {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        let (files, errors) = resource_files(d.path());
        assert!(errors.is_empty());
        let names: Vec<_> = files
            .iter()
            .map(|p| {
                p.strip_prefix(d.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, vec!["a/b/z.yaml", "a/y.yml", "x.yaml"]);
    }
}

/// Every resource under some paths, with every problem, as `validate` reports them.
#[derive(Debug, Default)]
pub struct Loaded {
    pub files: usize,
    pub resources: Vec<crate::resource::Located>,
    /// Problems that make a file or a resource unusable, duplicates and profile rule
    /// violations included, sorted by file and line.
    pub problems: Vec<crate::resource::Problem>,
    pub warnings: Vec<crate::resource::Problem>,
}

/// Reads every resource file under `paths` (files or directories).
pub fn load(paths: &[PathBuf]) -> Loaded {
    use crate::resource::{Problem, parse::duplicates, parse_file};
    let mut out = Loaded::default();
    for root in paths {
        if !root.exists() {
            out.problems.push(Problem {
                file: root.display().to_string(),
                line: 0,
                column: 0,
                message: "no such file or directory".into(),
            });
            continue;
        }
        let (files, errors) = resource_files(root);
        for (dir, e) in errors {
            out.problems.push(Problem {
                file: dir.display().to_string(),
                line: 0,
                column: 0,
                message: format!("cannot read directory: {e}"),
            });
        }
        for f in files {
            out.files += 1;
            let parsed = parse_file(&f);
            out.resources.extend(parsed.resources);
            out.problems.extend(parsed.errors);
            out.problems.extend(parsed.rule_violations);
            out.warnings.extend(parsed.warnings);
        }
    }
    out.problems.extend(duplicates(&out.resources));
    out.problems.sort();
    out.warnings.sort();
    out
}
