//! `lxd-mutater diff`: what `run` would change, and nothing changed. Exit 0 in sync,
//! 2 drift (a pending deletion of an unused owned profile included), 1 error (a resource
//! file that does not load included).

use std::process::ExitCode;
use std::sync::Arc;

use crate::cli::{LxdArgs, ResourcesArg};
use crate::pipeline::Pipeline;
use crate::reconcile::{Decision, Options};
use crate::status::files::StatusFiles;
use crate::status::metrics::Telemetry;

pub async fn diff(lxd_args: LxdArgs, resources: ResourcesArg) -> anyhow::Result<ExitCode> {
    super::init_logs("text", "warn");
    let telemetry = Telemetry::new();
    let (lxd, names) = super::connect(&lxd_args, &telemetry)?;
    // `diff` keeps no statuses: a private scratch directory, removed when dropped.
    let scratch = tempfile::Builder::new()
        .prefix("lxd-mutater-diff-")
        .tempdir()?;
    let status = StatusFiles::open(scratch.path())?;
    let opts = Options {
        dry_run: true,
        owner: lxd_args.owner.clone(),
        ..Options::new(names)
    };
    super::check_project(&lxd, lxd_args.allow_shared_profiles).await?;
    let pipeline = Pipeline::new(lxd, Arc::new(status), opts, &telemetry);
    let snapshot = super::load_dir(&resources.resources)?;
    pipeline.load(snapshot.resources());
    // A file that does not load is an error, not "in sync": a CI job running diff must
    // not pass on a broken file.
    let broken = snapshot.problems();
    for p in &broken {
        println!("error: {p}");
    }
    super::listing(pipeline.relist().await)?;
    let (mut drift, mut errors) = (0, broken.len());
    for (key, decision) in pipeline.worker.plans() {
        let head = format!("{} {}/{}", key.kind, key.namespace, key.name);
        match decision {
            Decision::Skip(why) => println!("{head}: skipped ({why})"),
            Decision::Pending => println!("{head}: pending (no instance yet)"),
            Decision::Invalid(why) => {
                errors += 1;
                println!("{head}: error: {why}");
            }
            Decision::UnknownInstance(i) => {
                errors += 1;
                println!("{head}: error: instance {i:?} not found");
            }
            Decision::Act(p) if p.is_empty() && p.foreign.is_empty() => println!("{head}: in sync"),
            Decision::Act(p) => {
                drift += 1;
                println!("{head}: drift\n{p}");
            }
        }
    }
    let cleanup = pipeline.worker.cleanup();
    if !cleanup.is_empty() {
        drift += 1;
        println!("profiles: unused\n{cleanup}");
    }
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else if drift > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
