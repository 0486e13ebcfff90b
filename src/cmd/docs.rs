//! `lxd-mutater completions SHELL` and `lxd-mutater man DIR`: shell completion and manual
//! pages generated from the command line's own definition, so they never fall behind it.

use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::{Cli, Shell};

pub fn completions(shell: Shell) -> ExitCode {
    let mut cmd = Cli::command();
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "lxd-mutater", &mut std::io::stdout());
    ExitCode::SUCCESS
}

pub fn man(dir: &Path) -> ExitCode {
    match write_pages(dir) {
        Ok(pages) => {
            for p in pages {
                println!("{}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "error: writing the manual pages into {}: {e}",
                dir.display()
            );
            ExitCode::from(1)
        }
    }
}

/// `lxd-mutater.1`, then `lxd-mutater-<command>.1` for each command; the paths written.
fn write_pages(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let mut written = Vec::new();
    let mut page = |name: String, cmd: clap::Command| -> std::io::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.name(name.clone())).render(&mut out)?;
        std::fs::write(&path, out)?;
        written.push(path);
        Ok(())
    };
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        page(format!("lxd-mutater-{}", sub.get_name()), sub.clone())?;
    }
    page("lxd-mutater".into(), cmd)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_manual_page_per_command_and_one_for_the_tool() {
        let d = tempfile::tempdir().unwrap();
        let pages = write_pages(d.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "lxd-mutater.1",
            "lxd-mutater-run.1",
            "lxd-mutater-diff.1",
            "lxd-mutater-validate.1",
            "lxd-mutater-get.1",
            "lxd-mutater-crds.1",
            "lxd-mutater-completions.1",
            "lxd-mutater-man.1",
        ] {
            assert!(names.contains(&want.to_string()), "{want} in {names:?}");
        }
        let run = std::fs::read_to_string(d.path().join("lxd-mutater-run.1")).unwrap();
        assert!(
            run.contains(".TH lxd-mutater-run"),
            "{}",
            &run[..200.min(run.len())]
        );
        assert!(run.contains("\\-\\-resources"));
    }
}
