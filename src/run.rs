//! The commands that run the controller (`run`, `diff`) and read its statuses (`get`):
//! the wiring of source, store, queue, reconcile, LXD and status, in one place.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{debug, error, info, warn};

use crate::cli::{GetArgs, LxdArgs, ResourcesArg, RunArgs, SourceKind};
use crate::controller::{Controller, Options, run_workers};
use crate::fence::WriteFence;
use crate::lxd::{Endpoint, EventNotice, LxdClient};
use crate::queue::BackoffConfig;
use crate::reconcile::Decision;
use crate::resource::{Kind, Phase, ProfileNames};
use crate::source::watch::{FileSnapshot, watch};
use crate::status::files::{StatusFiles, default_state_dir, read_all};
use crate::status::metrics::Telemetry;

fn init_logs(format: &str, level: &str) {
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

fn client(args: &LxdArgs, telemetry: &Telemetry) -> anyhow::Result<(LxdClient, ProfileNames)> {
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
/// once, so that a typo in --lxd-project is not reported as every instance missing.
async fn check_project(lxd: &LxdClient) -> anyhow::Result<()> {
    match lxd.get_project().await {
        Ok(p) if !p.isolates_profiles() => {
            warn!(
                project = lxd.project(),
                "project has features.profiles=false: its profiles are the default project's"
            );
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(crate::lxd::LxdError::NotFound { .. }) => {
            anyhow::bail!(
                "LXD project {:?} does not exist (--lxd-project)",
                lxd.project()
            )
        }
        Err(e) => Err(e.into()),
    }
}

fn load(dir: &std::path::Path) -> anyhow::Result<FileSnapshot> {
    anyhow::ensure!(
        dir.is_dir(),
        "--resources {}: not a directory",
        dir.display()
    );
    let mut snapshot = FileSnapshot::default();
    snapshot.rescan(dir);
    Ok(snapshot)
}

/// `lxd-mutater run`.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    init_logs(&args.log_format, &args.log_level);
    match args.source {
        SourceKind::Files => run_files(args).await,
        SourceKind::Kubernetes => run_kubernetes(args).await,
    }
}

fn options(args: &RunArgs, names: ProfileNames) -> Options {
    Options {
        machine: args.machine.clone(),
        workers: args.workers,
        resync: args.resync,
        dry_run: args.dry_run,
        backoff: BackoffConfig {
            base: args.backoff_base,
            cap: args.backoff_max,
        },
        reconcile_timeout: args.reconcile_timeout,
        namespace: args.namespace.clone(),
        ..Options::new(names)
    }
}

async fn run_files(args: RunArgs) -> anyhow::Result<ExitCode> {
    let Some(root) = args.resources.clone() else {
        anyhow::bail!("--resources DIR is required with --source files");
    };
    anyhow::ensure!(
        !args.leader_elect && args.namespace.is_none(),
        "--leader-elect and --namespace need --source kubernetes (with files, run one \
         controller per resources directory)"
    );
    let telemetry = Arc::new(Telemetry::new());
    let (lxd, names) = client(&args.lxd, &telemetry)?;
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let status = StatusFiles::open(&state_dir)
        .with_context(|| format!("state directory {}", state_dir.display()))?;
    let ctl = Controller::new(lxd, status, options(&args, names), &telemetry);
    let mut snapshot = load(&root)?;
    ctl.load_snapshot(snapshot.resources());
    ctl.set_source_errors(snapshot.broken_files());

    if args.once {
        check_project(&ctl.lxd).await?;
        ctl.relist().await.context("listing LXD")?;
        ctl.enqueue_all();
        run_workers(ctl.clone(), true).await;
        return Ok(once_report(&ctl));
    }

    let http = serve(&args.listen, &ctl, &telemetry).await?;
    let mut tasks = start_lxd(&ctl, args.resync).await?;
    info!(
        resources = %root.display(),
        state_dir = %state_dir.display(),
        dry_run = args.dry_run,
        "started"
    );
    let workers = tokio::spawn(run_workers(ctl.clone(), false));

    let (mut ticks, _watcher) = watch(&root, Duration::from_secs(30))
        .with_context(|| format!("watching {}", root.display()))?;
    tasks.push({
        let ctl = ctl.clone();
        let root = root.clone();
        tokio::spawn(async move {
            while ticks.recv().await.is_some() {
                if snapshot.rescan(&root) {
                    ctl.load_snapshot(snapshot.resources());
                }
                ctl.set_source_errors(snapshot.broken_files());
            }
        })
    });

    shutdown_signal().await;
    drain(&ctl, tasks, Some(workers)).await;
    http.abort();
    Ok(ExitCode::SUCCESS)
}

/// `run --source kubernetes`: the custom resources as desired state, statuses through
/// the status subresource, and with --leader-elect one writer among the replicas.
async fn run_kubernetes(args: RunArgs) -> anyhow::Result<ExitCode> {
    use crate::k8s::{leader, source::Source, status::KubeStatus};
    anyhow::ensure!(
        !args.once,
        "--once works with --source files only (a pass over the custom resources is `run` \
         until every status is Applied)"
    );
    anyhow::ensure!(
        args.lease_renew < args.lease_duration,
        "--lease-renew ({:?}) must be shorter than --lease-duration ({:?})",
        args.lease_renew,
        args.lease_duration
    );
    if args.resources.is_some() {
        warn!("--resources is ignored with --source kubernetes");
    }
    let telemetry = Arc::new(Telemetry::new());
    // A replica that may lead starts fenced: nothing reaches LXD or a status before it
    // holds the lease.
    let fence = if args.leader_elect {
        WriteFence::closed()
    } else {
        WriteFence::open()
    };
    let (lxd, names) = client(&args.lxd, &telemetry)?;
    let lxd = lxd.with_fence(fence.clone());
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration (in-cluster, or $KUBECONFIG)")?;
    // kube retries 429/503/504 for minutes by default, out of sight. The source and the
    // status writer have their own backoff (the writer's yields to newer statuses), and
    // the lease must fail fast (below).
    let mut direct = config.clone();
    direct.default_retry = false;
    let kube_client = kube::Client::try_from(direct.clone()).context("Kubernetes client")?;
    // A status patch that hangs would hold up every other status.
    direct.connect_timeout = Some(Duration::from_secs(5));
    direct.read_timeout = Some(Duration::from_secs(15));
    direct.write_timeout = Some(Duration::from_secs(15));
    let status_client = kube::Client::try_from(direct).context("Kubernetes client")?;
    let identity = leader::default_identity();
    let (status, writer) = KubeStatus::new(status_client, fence.clone(), &identity);
    let statuses = status.clone();
    let ctl = Controller::new(lxd, status.clone(), options(&args, names), &telemetry);
    let http = serve(&args.listen, &ctl, &telemetry).await?;
    let mut tasks = start_lxd(&ctl, args.resync).await?;
    let source = Source::new(ctl.clone(), status, kube_client, args.namespace.clone());
    tasks.extend(source.spawn());
    // Stopped last on SIGTERM, after the workers' final statuses.
    let writer = tokio::spawn(writer.run());
    info!(
        namespace = args.namespace.as_deref().unwrap_or("(all)"),
        identity = %identity,
        leader_elect = args.leader_elect,
        dry_run = args.dry_run,
        "started"
    );

    let leader = if args.leader_elect {
        // The lease's own client gives up quickly: a renew that hangs has failed.
        let mut lease_config = config;
        lease_config.default_retry = false;
        lease_config.connect_timeout = Some(args.lease_renew);
        lease_config.read_timeout = Some(args.lease_renew);
        lease_config.write_timeout = Some(args.lease_renew);
        let lease_client = kube::Client::try_from(lease_config).context("Kubernetes client")?;
        let lease = leader::LeaderConfig {
            lease_name: args.lease_name.clone(),
            namespace: args
                .lease_namespace
                .clone()
                .unwrap_or_else(leader::default_lease_namespace),
            identity: identity.clone(),
            duration: args.lease_duration,
            renew: args.lease_renew,
        };
        let mut joined = tokio::select! {
            l = join_election(lease_client, &lease, &fence, &telemetry) => l,
            _ = shutdown_signal() => {
                drain(&ctl, tasks, None).await;
                writer.abort();
                return Ok(ExitCode::SUCCESS);
            }
        };
        info!(lease = %lease.lease_name, namespace = %lease.namespace, "standing by for the lease");
        tokio::select! {
            _ = joined.acquire() => {}
            _ = shutdown_signal() => {
                drain(&ctl, tasks, None).await;
                writer.abort();
                joined.release().await;
                return Ok(ExitCode::SUCCESS);
            }
        }
        Some(joined)
    } else {
        None
    };

    // Plan nothing before all three kinds are listed: a Machine reconciled before its
    // Applications are known would be reported in Error for nothing.
    while !ctl.is_loaded() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = shutdown_signal() => {
                drain(&ctl, tasks, None).await;
                writer.abort();
                if let Some(l) = &leader {
                    l.release().await;
                }
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    // What was decided while standing by (invalid objects' statuses) goes out now.
    statuses.flush();
    ctl.enqueue_all();
    let workers = tokio::spawn(run_workers(ctl.clone(), false));
    let lost = match &leader {
        Some(l) => {
            tokio::select! {
                lost = l.hold() => Some(lost),
                _ = shutdown_signal() => {
                    // Keep renewing while the reconciles in flight finish: the lease must
                    // not expire under a leader that still writes.
                    tokio::select! {
                        lost = l.hold() => Some(lost),
                        _ = drain(&ctl, tasks, Some(workers)) => None,
                    }
                }
            }
        }
        None => {
            shutdown_signal().await;
            drain(&ctl, tasks, Some(workers)).await;
            None
        }
    };
    if let Some(lost) = lost {
        // The fence is closed already: nothing more leaves this process.
        error!(error = %lost, "no longer the leader: stopping");
        ctl.drain();
        writer.abort();
        http.abort();
        return Ok(ExitCode::from(1));
    }
    // The last statuses, then the lease.
    let flushed = std::time::Instant::now();
    while !statuses.is_idle() && flushed.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.abort();
    if let Some(l) = &leader {
        l.release().await;
    }
    http.abort();
    Ok(ExitCode::SUCCESS)
}

/// Joins the election, retrying while the API server does not answer.
async fn join_election(
    client: kube::Client,
    lease: &crate::k8s::leader::LeaderConfig,
    fence: &WriteFence,
    telemetry: &Telemetry,
) -> crate::k8s::leader::Leader {
    let mut delay = Duration::from_millis(500);
    loop {
        match crate::k8s::leader::Leader::join(
            client.clone(),
            lease,
            fence.clone(),
            telemetry.leader.clone(),
        )
        .await
        {
            Ok(l) => return l,
            Err(e) => {
                warn!(error = %e, "cannot join the election; again in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Binds `--listen` (before anything else, so that a busy port fails the start) and
/// serves /metrics, /healthz and /readyz.
async fn serve(
    listen: &str,
    ctl: &Arc<Controller<LxdClient>>,
    telemetry: &Arc<Telemetry>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}"))?;
    info!(address = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    Ok(tokio::spawn(crate::status::http::serve(
        listener,
        ctl.clone(),
        telemetry.clone(),
    )))
}

/// Waits for LXD, lists it, and starts the events stream and the periodic resync.
async fn start_lxd(
    ctl: &Arc<Controller<LxdClient>>,
    resync: Duration,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    // Wait for LXD: a controller started before its LXD must not exit.
    let mut delay = Duration::from_millis(500);
    loop {
        match check_project(&ctl.lxd).await {
            Ok(()) => break,
            Err(e) if e.downcast_ref::<crate::lxd::LxdError>().is_some() => {
                warn!(error = %e, "LXD does not answer; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
    // List before the workers start, so that no reconcile plans against an empty cache.
    // Every connect of the events stream (the first included: the websocket may come up
    // after this listing) lists again, so no change falls between the two.
    let mut stream = ctl.lxd.events();
    let mut delay = Duration::from_millis(500);
    while let Err(e) = ctl.relist().await {
        warn!(error = %e, "cannot list LXD; retrying in {delay:?}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
    ctl.enqueue_all();
    let events = {
        let ctl = ctl.clone();
        tokio::spawn(async move {
            while let Some(notice) = stream.next().await {
                let result = match notice {
                    EventNotice::Connected => {
                        debug!("events connected: listing LXD");
                        ctl.relisted().await
                    }
                    EventNotice::Lifecycle(e) => ctl.on_event(&e).await,
                };
                if let Err(e) = result {
                    warn!(error = %e, "handling an LXD event");
                }
            }
        })
    };
    let resync = {
        let ctl = ctl.clone();
        tokio::spawn(async move {
            loop {
                // Jitter of up to a tenth, so that replicas and restarts spread out.
                let jitter = resync.mul_f64(fastrand::f64() * 0.1);
                tokio::time::sleep(resync + jitter).await;
                match ctl.relist().await {
                    Ok(()) => ctl.enqueue_all(),
                    Err(e) => warn!(error = %e, "resync: cannot list LXD"),
                }
            }
        })
    };
    Ok(vec![events, resync])
}

/// SIGTERM/SIGINT: finish the reconciles in flight (30 s at most; a second signal exits
/// now) and stop the other tasks.
async fn drain(
    ctl: &Arc<Controller<LxdClient>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    workers: Option<tokio::task::JoinHandle<()>>,
) {
    info!("stopping: finishing the reconciles in flight (30 s at most; a second signal exits now)");
    ctl.drain();
    for task in tasks {
        task.abort();
    }
    let Some(workers) = workers else { return };
    tokio::select! {
        _ = workers => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => warn!("reconciles still running after 30 s: exiting"),
        _ = shutdown_signal() => warn!("second signal: exiting now"),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `--once`: 0 when every resource is Applied, Pending or Skipped, 1 otherwise, with
/// one line per resource that is not.
fn once_report<L: crate::lxd::LxdApi>(ctl: &Controller<L>) -> ExitCode {
    let keys: Vec<_> = ctl
        .desired
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .workloads()
        .map(|(k, _)| k.clone())
        .collect();
    let mut bad = 0;
    for k in keys {
        let Some(s) = ctl.status.get(&k) else {
            continue;
        };
        if !matches!(s.phase, Phase::Applied | Phase::Pending | Phase::Skipped) {
            bad += 1;
            println!(
                "{} {}/{}: {} {}",
                k.kind, k.namespace, k.name, s.phase, s.message
            );
        }
    }
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `lxd-mutater diff`: 0 in sync, 2 drift, 1 error.
pub async fn diff(lxd_args: LxdArgs, resources: ResourcesArg) -> anyhow::Result<ExitCode> {
    init_logs("text", "warn");
    let telemetry = Telemetry::new();
    let (lxd, names) = client(&lxd_args, &telemetry)?;
    let dir = tempfile_dir()?;
    let status = StatusFiles::open(&dir)?;
    let opts = Options {
        dry_run: true,
        ..Options::new(names)
    };
    check_project(&lxd).await?;
    let ctl = Controller::new(lxd, status, opts, &telemetry);
    let snapshot = load(&resources.resources)?;
    ctl.load_snapshot(snapshot.resources());
    ctl.relist().await.context("listing LXD")?;
    let (mut drift, mut errors) = (0, 0);
    for (key, decision) in ctl.plans() {
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
    let _ = std::fs::remove_dir_all(&dir);
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else if drift > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// `diff` keeps no statuses: a scratch directory it removes.
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("lxd-mutater-diff-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

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
