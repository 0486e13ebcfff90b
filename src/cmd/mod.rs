//! The commands, one file each: `run` wires the stages and runs them; `diff`, `get`,
//! `validate` and `crds` are one-shot. What two commands share (the runtime, logs, the
//! LXD connection, loading a resources directory) is here.

pub mod crds;
pub mod diff;
pub mod docs;
pub mod get;
pub mod import;
pub mod run;
pub mod validate;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing::warn;

use crate::cli::{Cli, Command, LxdArgs};
use crate::lxd::{Endpoint, LxdClient, LxdError};
use crate::resource::ProfileNames;
use crate::source::files::FileSnapshot;
use crate::status::metrics::Telemetry;

/// Runs the command line; the process's exit code.
pub fn main() -> ExitCode {
    // One TLS provider for the whole process (kube's client builds its config from the
    // process default); a second install attempt is harmless.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Exit 2 is reserved for drift (`diff`): a usage error is 1, like every other error,
    // so that a mistyped flag in a cron job never reads as drift.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    match cli.command {
        Command::Validate { paths } => validate::validate(&paths),
        Command::Crds => crds::crds(),
        Command::Run(args) => runtime(run::run(*args)),
        Command::Diff(args) => runtime(diff::diff(args.lxd, args.resources)),
        Command::Get(args) => get::get(args),
        Command::Import(source) => import::import(source),
        Command::Completions { shell } => docs::completions(shell),
        Command::Man { dir } => docs::man(&dir),
    }
}

/// One thread runs every task. The controller waits on LXD almost all the time; a
/// multi-thread runtime spent more on waking its threads than on the work (the upgrade
/// bench: 0.70-0.73 -> 0.58-0.64 ms of CPU per instance; the full loop at 100,000:
/// 30-40% less CPU, and more reconciles per second in the converge and the bump), and
/// leaves the other cores to LXD. Status files are written on a thread of their own.
fn runtime(f: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(f) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logs(format: &str, level: &str) {
    // `--log-level` was checked when the command line was parsed (`cli::parse_log_level`).
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The LXD client the flags describe, reporting its requests to the metrics, and the
/// profile name templates.
fn connect(args: &LxdArgs, telemetry: &Telemetry) -> anyhow::Result<(LxdClient, ProfileNames)> {
    let endpoint = Endpoint::parse(
        args.lxd.as_deref(),
        args.lxd_client_cert.clone(),
        args.lxd_client_key.clone(),
        args.lxd_server_cert.clone(),
    )?;
    let lxd =
        LxdClient::new(&endpoint, &args.lxd_project)?.with_observer(telemetry.metrics.clone());
    let names = ProfileNames::new(&args.charm_profile_template, &args.model_profile_template)
        .map_err(anyhow::Error::msg)?;
    Ok((lxd, names))
}

/// LXD 5.0 lists nothing, without an error, for a project that does not exist: check it
/// once, so that a typo in --lxd-project is not reported as every instance missing. A
/// project without profiles of its own is refused unless allowed: its profile calls reach
/// the default project's, shared with every such project.
async fn check_project(lxd: &LxdClient, allow_shared_profiles: bool) -> anyhow::Result<()> {
    match lxd.get_project().await {
        Ok(p) if !p.isolates_profiles() && allow_shared_profiles => {
            warn!(
                project = lxd.project(),
                "project has features.profiles=false: its profiles are the default project's \
                 (--allow-shared-profiles)"
            );
            Ok(())
        }
        Ok(p) if !p.isolates_profiles() => anyhow::bail!(
            "LXD project {:?} has features.profiles=false: its profiles are the default \
             project's, shared with every project like it. Set features.profiles=true on it, \
             or pass --allow-shared-profiles",
            lxd.project()
        ),
        Ok(_) => Ok(()),
        Err(LxdError::NotFound { .. }) => {
            anyhow::bail!(
                "LXD project {:?} does not exist (--lxd-project)",
                lxd.project()
            )
        }
        Err(e) => Err(e.into()),
    }
}

/// The first scan of a resources directory.
fn load_dir(dir: &std::path::Path) -> anyhow::Result<FileSnapshot> {
    anyhow::ensure!(
        dir.is_dir(),
        "--resources {}: not a directory",
        dir.display()
    );
    let mut snapshot = FileSnapshot::default();
    snapshot.rescan(dir);
    Ok(snapshot)
}

/// Context for an LXD listing error.
fn listing<T>(r: Result<T, LxdError>) -> anyhow::Result<T> {
    r.context("listing LXD")
}
