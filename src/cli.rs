//! The command line (SPEC §5): parsing it and running each command. The wiring of the
//! controller's parts lives here, in one place.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::source::files;

#[derive(Parser, Debug)]
#[command(
    name = "lxd-mutater",
    version,
    about = "Keeps the LXD profiles of machines and containers in line with the applications that run on them",
    long_about = "Keeps the LXD profiles of machines and containers in line with the applications \
that run on them: Juju's instancemutater worker as a reconciliation controller.\n\n\
Desired state is YAML resources (Application, Machine, Container; apiVersion \
lxdmutater.dev/v1alpha1). Every flag can also be set with an environment variable \
LXD_MUTATER_<FLAG>, for example LXD_MUTATER_RESOURCES."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check resource files: YAML syntax, fields, names, and Juju's charm profile rules.
    ///
    /// Prints one line per problem (file:line:column: message) and exits 0 when everything
    /// is valid, 1 otherwise. Directories are read recursively (*.yaml, *.yml; hidden and
    /// editor temporary files are skipped).
    Validate {
        /// Files or directories to check.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Print the CustomResourceDefinitions of the three kinds (what crds/ holds).
    Crds,
}

/// Runs the command line; the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { paths } => validate(&paths),
        Command::Crds => crds(),
    }
}

fn validate(paths: &[PathBuf]) -> ExitCode {
    let loaded = files::load(paths);
    let mut out = std::io::stdout().lock();
    for w in &loaded.warnings {
        let _ = writeln!(out, "{}:{}:{}: warning: {}", w.file, w.line, w.column, w.message);
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

fn crds() -> ExitCode {
    match crate::crd::crds_yaml() {
        Ok(y) => {
            print!("{y}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write the CRDs: {e}");
            ExitCode::from(1)
        }
    }
}
