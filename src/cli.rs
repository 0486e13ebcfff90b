//! The command line (SPEC §5): its definition and nothing else. `cmd` runs each command.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Run the controller: keep LXD in line with the resources, until stopped.
    ///
    /// Reads every *.yaml/*.yml under --resources (edits are picked up within a second),
    /// or, with --source kubernetes, lists and watches the custom resources; lists LXD,
    /// and reconciles each Machine and Container: creates missing charm profiles,
    /// rewrites owned ones whose content drifted, sets each drifted instance's profile
    /// list with one PATCH, deletes owned profiles nothing uses any more.
    /// Statuses go to --state-dir, never into the resource files (on Kubernetes: to the
    /// status subresource).
    Run(Box<RunArgs>),
    /// Show what `run` would change, and change nothing.
    ///
    /// Exit code: 0 in sync, 2 drift (a pending deletion of an unused owned profile
    /// included), 1 error (usage errors and resource files that do not load included).
    Diff(DiffArgs),
    /// Show resources and their status, as the controller last wrote it.
    Get(GetArgs),
    /// Print the resources (YAML) of an existing Juju deployment, from `juju status` or
    /// from an LXD project.
    ///
    /// The resources go to standard output, one YAML document each; what was skipped or
    /// adapted, and anything the first `run` would change, goes to standard error. Exit
    /// code: 0, or 1 when something could not be imported (the rest is still printed).
    #[command(subcommand, after_help = IMPORT_EXAMPLES)]
    Import(ImportSource),
    /// Print a shell completion script (bash, zsh or fish) on standard output.
    ///
    /// bash: lxd-mutater completions bash > /etc/bash_completion.d/lxd-mutater
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write the manual pages (lxd-mutater.1 and one per command, lxd-mutater-run.1, ...)
    /// into DIR.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// Where `import` reads the deployment from.
#[derive(Subcommand, Debug)]
pub enum ImportSource {
    /// From `juju status --format=yaml` (Juju 3.x): Juju's record of the model.
    ///
    /// One namespace, the model: an Application per application (its profile content from
    /// the machines' lxd-profiles, subordinates with subordinateTo), a Machine per machine
    /// (manual ones with manual: true, unprovisioned ones without an instance), a
    /// Container per LXD container (spec.machine its host). Run `juju status` without
    /// selectors, and with --no-color: coloured input is refused.
    #[command(after_help = IMPORT_EXAMPLES)]
    JujuStatus {
        /// The file `juju status --format=yaml` wrote; `-` or nothing reads standard input.
        #[arg(value_name = "FILE|-")]
        file: Option<PathBuf>,
    },
    /// From an LXD project as it is: the instances whose profiles follow Juju's names.
    ///
    /// An instance with the profiles [default, juju-<model>, juju-<model>-<app>-<rev>...]
    /// becomes a Machine of namespace <model>; with --machine NAME, an instance with
    /// [default, juju-<model>-<app>-<rev>...] becomes a Container of host NAME. Each charm
    /// profile becomes an Application with its content. So `diff` is in sync at once.
    #[command(after_help = IMPORT_EXAMPLES)]
    Lxd(Box<ImportLxdArgs>),
}

const IMPORT_EXAMPLES: &str = "Examples:
  juju status -m demo --format=yaml --no-color > status.yaml
  lxd-mutater import juju-status status.yaml > /etc/lxd-mutater/resources/demo.yaml
  lxd-mutater diff --resources /etc/lxd-mutater/resources      # exit 0: in sync

  lxd-mutater import lxd --lxd-project default > resources/demo.yaml
  lxd-mutater import lxd --machine 1 > host-1/containers.yaml  # on machine 1, its containers";

#[derive(clap::Args, Debug, Clone)]
pub struct ImportLxdArgs {
    #[command(flatten)]
    pub lxd: LxdArgs,
    /// Import the containers of this host machine (Juju's machine id, `0`), as Container
    /// resources, instead of the machines.
    #[arg(long, env = "LXD_MUTATER_MACHINE", value_name = "NAME")]
    pub machine: Option<String>,
    /// Import only this model's instances; needed with --machine when the containers'
    /// profile names fit more than one model.
    #[arg(long, env = "LXD_MUTATER_MODEL", value_name = "MODEL")]
    pub model: Option<String>,
}

/// The shells `completions` writes for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ResourcesArg {
    /// Directory of resource files (read recursively).
    #[arg(long, env = "LXD_MUTATER_RESOURCES", value_name = "DIR")]
    pub resources: PathBuf,
}

#[derive(clap::Args, Debug, Clone)]
pub struct LxdArgs {
    /// LXD (5.x) or Incus (6.x) to talk to: unix:///path/unix.socket or
    /// https://host:8443. Default: $LXD_SOCKET, else $LXD_DIR/unix.socket, else
    /// $INCUS_SOCKET, else $INCUS_DIR/unix.socket, else the first that answers of the snap's
    /// LXD socket, Debian's (/var/lib/lxd/unix.socket) and Incus'
    /// (/var/lib/incus/unix.socket), else the first of them that exists.
    #[arg(long, env = "LXD_MUTATER_LXD", value_name = "URL")]
    pub lxd: Option<String>,
    /// LXD project to work in.
    #[arg(
        long,
        env = "LXD_MUTATER_LXD_PROJECT",
        default_value = "default",
        value_name = "P"
    )]
    pub lxd_project: String,
    /// Client certificate (PEM) for https.
    #[arg(long, env = "LXD_MUTATER_LXD_CLIENT_CERT", value_name = "FILE")]
    pub lxd_client_cert: Option<PathBuf>,
    /// Client key (PEM) for https.
    #[arg(long, env = "LXD_MUTATER_LXD_CLIENT_KEY", value_name = "FILE")]
    pub lxd_client_key: Option<PathBuf>,
    /// The server certificate to pin (PEM) for https; no other is ever accepted.
    #[arg(long, env = "LXD_MUTATER_LXD_SERVER_CERT", value_name = "FILE")]
    pub lxd_server_cert: Option<PathBuf>,
    /// Charm profile name template.
    #[arg(long, env = "LXD_MUTATER_CHARM_PROFILE_TEMPLATE", default_value = crate::resource::names::DEFAULT_CHARM_TEMPLATE)]
    pub charm_profile_template: String,
    /// Model profile name template.
    #[arg(long, env = "LXD_MUTATER_MODEL_PROFILE_TEMPLATE", default_value = crate::resource::names::DEFAULT_MODEL_TEMPLATE)]
    pub model_profile_template: String,
    /// This controller's name, recorded (config key user.lxd-mutater.owner) on the profiles
    /// it creates and the instances it claims. It rewrites, deletes and touches only what
    /// carries this value: give each controller sharing an LXD project its own.
    #[arg(
        long,
        env = "LXD_MUTATER_OWNER",
        default_value = crate::store::OWNER_VALUE,
        value_name = "NAME"
    )]
    pub owner: String,
    /// Work in a project without features.profiles=true, whose profiles are the default
    /// project's and shared with every other such project (refused otherwise).
    #[arg(long, env = "LXD_MUTATER_ALLOW_SHARED_PROFILES")]
    pub allow_shared_profiles: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DiffArgs {
    #[command(flatten)]
    pub resources: ResourcesArg,
    #[command(flatten)]
    pub lxd: LxdArgs,
}

pub use crate::reconcile::Flavour;

/// Where desired state comes from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// YAML files under --resources; statuses under --state-dir.
    Files,
    /// Custom resources from the Kubernetes API server (in-cluster config or $KUBECONFIG);
    /// statuses through the status subresource.
    Kubernetes,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Where desired state comes from.
    #[arg(long, env = "LXD_MUTATER_SOURCE", value_enum, default_value = "files")]
    pub source: SourceKind,
    /// Directory of resource files (read recursively); required with --source files.
    #[arg(long, env = "LXD_MUTATER_RESOURCES", value_name = "DIR")]
    pub resources: Option<PathBuf>,
    /// --source kubernetes: watch only this namespace (default: all namespaces).
    #[arg(long, env = "LXD_MUTATER_NAMESPACE", value_name = "NS")]
    pub namespace: Option<String>,
    /// --source kubernetes: run as one of several replicas; only the holder of a
    /// coordination.k8s.io Lease writes to LXD and statuses. A standby keeps its caches
    /// warm and is ready. On losing the lease (or failing to renew it) the leader stops
    /// writing at once and exits non-zero; on SIGTERM it drains and releases the lease.
    #[arg(long, env = "LXD_MUTATER_LEADER_ELECT")]
    pub leader_elect: bool,
    /// The Lease's name.
    #[arg(long, env = "LXD_MUTATER_LEASE_NAME", default_value = "lxd-mutater")]
    pub lease_name: String,
    /// The Lease's namespace. Default: $POD_NAMESPACE, else the pod's own namespace,
    /// else default.
    #[arg(long, env = "LXD_MUTATER_LEASE_NAMESPACE", value_name = "NS")]
    pub lease_namespace: Option<String>,
    /// How long the lease stays valid after the leader's last renewal.
    #[arg(long, env = "LXD_MUTATER_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: std::time::Duration,
    /// How often the leader renews; an API server unreachable for this long makes it
    /// step down.
    #[arg(long, env = "LXD_MUTATER_LEASE_RENEW", default_value = "2s", value_parser = parse_duration)]
    pub lease_renew: std::time::Duration,
    #[command(flatten)]
    pub lxd: LxdArgs,
    /// Where statuses are written. Default: $STATE_DIRECTORY, else /var/lib/lxd-mutater
    /// as root, else $XDG_STATE_HOME/lxd-mutater.
    #[arg(long, env = "LXD_MUTATER_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "LXD_MUTATER_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub listen: String,
    /// Resources reconciled at once. Writes to a local LXD (its Unix socket) are also
    /// held to one per core of the host: more at once only wait on each other there.
    #[arg(long, env = "LXD_MUTATER_WORKERS", default_value_t = 4)]
    pub workers: usize,
    /// Full relisting of LXD and re-check of every resource (30s, 5m, 1h), with jitter.
    #[arg(long, env = "LXD_MUTATER_RESYNC", default_value = "10m", value_parser = parse_duration)]
    pub resync: std::time::Duration,
    /// First retry delay after a failure; doubles on each failure.
    #[arg(long, env = "LXD_MUTATER_BACKOFF_BASE", default_value = "500ms", value_parser = parse_duration)]
    pub backoff_base: std::time::Duration,
    /// Longest retry delay.
    #[arg(long, env = "LXD_MUTATER_BACKOFF_MAX", default_value = "5m", value_parser = parse_duration)]
    pub backoff_max: std::time::Duration,
    /// A reconcile running longer is abandoned, counted (category reconcile_timeout) and
    /// retried with backoff; /healthz fails when one runs well past it.
    #[arg(long, env = "LXD_MUTATER_RECONCILE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub reconcile_timeout: std::time::Duration,
    /// Detect and report drift (status Drifted) and change nothing in LXD.
    #[arg(long, env = "LXD_MUTATER_DRY_RUN")]
    pub dry_run: bool,
    /// One pass over every resource, then exit: 0 when all are Applied, Pending or
    /// Skipped and every file loads, 1 otherwise (one line per resource or file that is
    /// not).
    #[arg(long, env = "LXD_MUTATER_ONCE")]
    pub once: bool,
    /// Which of Juju's two workers this process is: environ (the model's Machines, through
    /// the model's LXD), container (the Containers of one host, through that host's LXD;
    /// needs --machine), or all (both: the demo and small setups).
    #[arg(long, env = "LXD_MUTATER_FLAVOUR", value_enum, default_value = "all")]
    pub flavour: Flavour,
    /// The host machine whose Containers this process takes (spec.machine == NAME);
    /// required with --flavour container.
    #[arg(long, env = "LXD_MUTATER_MACHINE", value_name = "NAME")]
    pub machine: Option<String>,
    /// Log format.
    #[arg(long, env = "LXD_MUTATER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Log filter: a level (error, warn, info, debug, trace, off), or comma-separated
    /// target=level directives (info,lxd_mutater=debug).
    #[arg(long, env = "LXD_MUTATER_LOG_LEVEL", default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,
}

#[derive(clap::Args, Debug, Clone)]
pub struct GetArgs {
    /// machines, containers or applications.
    #[arg(value_parser = ["machines", "containers", "applications", "machine", "container", "application"])]
    pub kind: String,
    /// Only this resource (its name; with -n, in that namespace).
    pub name: Option<String>,
    /// Only this namespace (model).
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Where the controller writes statuses (found as `run` finds it).
    #[arg(long, env = "LXD_MUTATER_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Output format: table, wide (the table with the message, the drift count and the
    /// last transition), yaml or json.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "wide", "yaml", "json"])]
    pub output: String,
    /// After the listing, print a line each time a status changes (as kubectl get -w),
    /// until interrupted.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

/// `30s`, `5m`, `1h`, `500ms`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 30s, 5m or 1h: {e}"))
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A log filter whose every directive names a level: `info`, `lxd_mutater=debug`,
/// `warn,lxd_mutater::reconcile=trace`. A bare word that is not a level (`verbose`) is
/// refused rather than read as a target name that silently logs nothing.
pub fn parse_log_level(s: &str) -> Result<String, String> {
    let bad = |d: &str| {
        format!(
            "{d:?} is not a log level: use one of {} or TARGET=LEVEL (e.g. lxd_mutater=debug)",
            LEVELS.join(", ")
        )
    };
    if s.trim().is_empty() {
        return Err(bad(s));
    }
    for directive in s.split(',') {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !LEVELS.contains(&level.trim().to_ascii_lowercase().as_str()) {
            return Err(bad(directive));
        }
    }
    tracing_subscriber::EnvFilter::try_new(s).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_are_checked_not_silently_replaced() {
        for good in [
            "info",
            "DEBUG",
            "warn,lxd_mutater=debug",
            "lxd_mutater::reconcile=trace",
        ] {
            assert_eq!(parse_log_level(good).as_deref(), Ok(good), "{good}");
        }
        for bad in ["verbose", "", "info,loud", "lxd_mutater=lots"] {
            assert!(parse_log_level(bad).is_err(), "{bad:?}");
        }
    }
}
