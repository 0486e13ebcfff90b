//! `lxd-mutater run`: builds the stages (`Pipeline`), connects them to the file or
//! Kubernetes source, the LXD events stream, the resync timer, the HTTP endpoints and,
//! with `--leader-elect`, the lease; then runs them until a signal. Wiring only: what
//! each stage does is in its own room.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::backoff::{Backoff, BackoffConfig};
use crate::cli::{RunArgs, SourceKind};
use crate::leader::{Leader, LeaderConfig, WriteFence, default_identity, default_lease_namespace};
use crate::lxd::{EventNotice, LxdApi, LxdClient};
use crate::pipeline::Pipeline;
use crate::queue::BackoffConfig as QueueBackoff;
use crate::reconcile::Options;
use crate::resource::{Phase, ProfileNames};
use crate::source::SourceEvent;
use crate::source::files::{FileSnapshot, watch};
use crate::source::kubernetes::Source;
use crate::status::files::{StatusFiles, default_state_dir};
use crate::status::http::Endpoints;
use crate::status::kubernetes::KubeStatus;
use crate::status::metrics::Telemetry;

/// Retry delays while LXD or the API server does not answer at start.
const RETRY: BackoffConfig = BackoffConfig {
    base: Duration::from_millis(500),
    cap: Duration::from_secs(30),
};

/// How long the start waits for the events stream before its first listing: a stream up
/// by then needs no second listing. Past it, the start goes on and the stream's connect,
/// whenever it comes, lists again.
const FIRST_CONNECT: Duration = Duration::from_secs(5);

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    super::init_logs(&args.log_format, &args.log_level);
    anyhow::ensure!(
        args.flavour != crate::reconcile::Flavour::Container || args.machine.is_some(),
        "--flavour container needs --machine NAME: the host machine whose Containers this \
         process takes (Juju runs one container controller on each host)"
    );
    match args.source {
        SourceKind::Files => run_files(args).await,
        SourceKind::Kubernetes => run_kubernetes(args).await,
    }
}

fn options(args: &RunArgs, names: ProfileNames) -> Options {
    Options {
        flavour: args.flavour,
        machine: args.machine.clone(),
        workers: args.workers,
        resync: args.resync,
        dry_run: args.dry_run,
        backoff: QueueBackoff {
            base: args.backoff_base,
            cap: args.backoff_max,
        },
        reconcile_timeout: args.reconcile_timeout,
        namespace: args.namespace.clone(),
        owner: args.lxd.owner.clone(),
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
    anyhow::ensure!(
        root.is_dir(),
        "--resources {}: not a directory",
        root.display()
    );
    let telemetry = Arc::new(Telemetry::new());
    let (lxd, names) = super::connect(&args.lxd, &telemetry)?;
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let status = StatusFiles::open(&state_dir)
        .with_context(|| format!("state directory {}", state_dir.display()))?;
    let pipeline = Arc::new(Pipeline::new(
        lxd,
        Arc::new(status),
        options(&args, names),
        &telemetry,
    ));
    let mut snapshot = FileSnapshot::default();
    for event in snapshot.scan(&root) {
        pipeline.on_source(event);
    }

    if args.once {
        super::check_project(pipeline.lxd(), args.lxd.allow_shared_profiles).await?;
        super::listing(pipeline.relist().await)?;
        pipeline.enqueue_all();
        pipeline.worker.clone().run(true).await;
        store_statuses(&pipeline).await;
        let broken = snapshot.problems();
        for p in &broken {
            println!("{p}");
        }
        let code = once_report(&pipeline);
        return Ok(if broken.is_empty() {
            code
        } else {
            ExitCode::from(1)
        });
    }

    let http = serve(&args.listen, pipeline.endpoints(telemetry.clone())).await?;
    let mut tasks = start_lxd(&pipeline, args.resync, args.lxd.allow_shared_profiles).await?;
    info!(
        resources = %root.display(),
        state_dir = %state_dir.display(),
        dry_run = args.dry_run,
        "started"
    );
    let workers = tokio::spawn(pipeline.worker.clone().run(false));

    let (mut ticks, _watcher) = watch(&root, Duration::from_secs(30))
        .with_context(|| format!("watching {}", root.display()))?;
    tasks.push({
        let pipeline = pipeline.clone();
        let root = root.clone();
        tokio::spawn(async move {
            while ticks.recv().await.is_some() {
                for event in snapshot.scan(&root) {
                    pipeline.on_source(event);
                }
            }
        })
    });

    shutdown_signal().await;
    drain(&pipeline, tasks, Some(workers)).await;
    http.abort();
    Ok(ExitCode::SUCCESS)
}

/// A source's events into the pipeline, in order.
fn forward(
    mut events: mpsc::UnboundedReceiver<SourceEvent>,
    pipeline: Arc<Pipeline<LxdClient>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            pipeline.on_source(event);
        }
    })
}

/// `run --source kubernetes`: the custom resources as desired state, statuses through
/// the status subresource, and with --leader-elect one writer among the replicas.
async fn run_kubernetes(args: RunArgs) -> anyhow::Result<ExitCode> {
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
    anyhow::ensure!(
        !(args.leader_elect && args.flavour == crate::reconcile::Flavour::Container),
        "--leader-elect is for the replicas of an environ (or all) controller: a host's \
         container controller is the only one for its Containers and takes no lease"
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
    let (lxd, names) = super::connect(&args.lxd, &telemetry)?;
    let lxd = lxd.with_fence(fence.clone());
    // A write (request, then the operation it may start) must end within the lease: a
    // leader deposed while it waits must not land a write after its successor's.
    let lxd = if args.leader_elect {
        let deadline = (args.lease_duration / 4).min(crate::lxd::DEFAULT_TIMEOUT);
        lxd.with_timeout(deadline)
    } else {
        lxd
    };
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration (in-cluster, or $KUBECONFIG)")?;
    let (kube_client, status_client) = kube_clients(&config)?;
    let identity = default_identity();
    let (statuses, writer) = KubeStatus::new(status_client, fence.clone(), &identity);
    let pipeline = Arc::new(Pipeline::new(
        lxd,
        statuses.clone(),
        options(&args, names),
        &telemetry,
    ));
    let http = serve(&args.listen, pipeline.endpoints(telemetry.clone())).await?;
    let mut tasks = start_lxd(&pipeline, args.resync, args.lxd.allow_shared_profiles).await?;
    let (events, source_events) = mpsc::unbounded_channel();
    let source = Source::new(
        events,
        kube_client,
        args.namespace.clone(),
        args.flavour.reads(),
        args.machine.clone(),
    );
    tasks.extend(source.spawn());
    tasks.push(forward(source_events, pipeline.clone()));
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
        match stand_by(&args, config, &identity, &fence, &telemetry).await? {
            Some(leader) => Some(leader),
            None => {
                drain(&pipeline, tasks, None).await;
                writer.abort();
                return Ok(ExitCode::SUCCESS);
            }
        }
    } else {
        None
    };

    // Plan nothing before all three kinds are listed: a Machine reconciled before its
    // Applications are known would be reported in Error for nothing.
    while !pipeline.store.is_loaded() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = shutdown_signal() => {
                drain(&pipeline, tasks, None).await;
                writer.abort();
                if let Some(l) = &leader {
                    l.release().await;
                }
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    // What was decided while standing by (invalid objects' statuses) goes out now.
    store_statuses(&pipeline).await;
    statuses.flush();
    pipeline.enqueue_all();
    let workers = tokio::spawn(pipeline.worker.clone().run(false));
    let lost = match &leader {
        Some(l) => {
            tokio::select! {
                lost = l.hold() => Some(lost),
                _ = shutdown_signal() => {
                    // Keep renewing while the reconciles in flight finish: the lease must
                    // not expire under a leader that still writes.
                    tokio::select! {
                        lost = l.hold() => Some(lost),
                        _ = drain(&pipeline, tasks, Some(workers)) => None,
                    }
                }
            }
        }
        None => {
            shutdown_signal().await;
            drain(&pipeline, tasks, Some(workers)).await;
            None
        }
    };
    if let Some(lost) = lost {
        // The fence is closed already: nothing more leaves this process.
        error!(error = %lost, "no longer the leader: stopping");
        pipeline.drain();
        writer.abort();
        http.abort();
        return Ok(ExitCode::from(1));
    }
    // The last statuses, then the lease.
    store_statuses(&pipeline).await;
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

/// The source's client and the status writer's. kube retries 429/503/504 for minutes by
/// default, out of sight: both have their own backoff (the writer's yields to newer
/// statuses), so kube's is off; and a status patch that hangs would hold up every other
/// status, so the writer's client has timeouts.
fn kube_clients(config: &kube::Config) -> anyhow::Result<(kube::Client, kube::Client)> {
    let mut direct = config.clone();
    direct.default_retry = false;
    let source = kube::Client::try_from(direct.clone()).context("Kubernetes client")?;
    direct.connect_timeout = Some(Duration::from_secs(5));
    direct.read_timeout = Some(Duration::from_secs(15));
    direct.write_timeout = Some(Duration::from_secs(15));
    let status = kube::Client::try_from(direct).context("Kubernetes client")?;
    Ok((source, status))
}

/// Joins the election and waits for the lease; `None` when a signal came first (the
/// lease, if held, is released).
async fn stand_by(
    args: &RunArgs,
    config: kube::Config,
    identity: &str,
    fence: &WriteFence,
    telemetry: &Telemetry,
) -> anyhow::Result<Option<Leader>> {
    // The lease's own client gives up quickly: a renew that hangs has failed.
    let mut lease_config = config;
    lease_config.default_retry = false;
    lease_config.connect_timeout = Some(args.lease_renew);
    lease_config.read_timeout = Some(args.lease_renew);
    lease_config.write_timeout = Some(args.lease_renew);
    let lease_client = kube::Client::try_from(lease_config).context("Kubernetes client")?;
    let lease = LeaderConfig {
        lease_name: args.lease_name.clone(),
        namespace: args
            .lease_namespace
            .clone()
            .unwrap_or_else(default_lease_namespace),
        identity: identity.to_string(),
        duration: args.lease_duration,
        renew: args.lease_renew,
    };
    let mut joined = tokio::select! {
        l = join_election(lease_client, &lease, fence, telemetry) => l,
        _ = shutdown_signal() => return Ok(None),
    };
    info!(lease = %lease.lease_name, namespace = %lease.namespace, "standing by for the lease");
    tokio::select! {
        _ = joined.acquire() => Ok(Some(joined)),
        _ = shutdown_signal() => {
            joined.release().await;
            Ok(None)
        }
    }
}

/// Joins the election, retrying while the API server does not answer.
async fn join_election(
    client: kube::Client,
    lease: &LeaderConfig,
    fence: &WriteFence,
    telemetry: &Telemetry,
) -> Leader {
    let mut delay = Backoff::new(RETRY);
    loop {
        match Leader::join(
            client.clone(),
            lease,
            fence.clone(),
            Arc::new(telemetry.leader.clone()),
        )
        .await
        {
            Ok(l) => return l,
            Err(e) => {
                warn!(error = %e, "cannot join the election; again in {:?}", delay.peek());
                delay.wait().await;
            }
        }
    }
}

/// Binds `--listen` (before anything else, so that a busy port fails the start) and
/// serves /metrics, /healthz and /readyz.
async fn serve(
    listen: &str,
    endpoints: Endpoints<LxdClient>,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}"))?;
    info!(address = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    Ok(tokio::spawn(crate::status::http::serve(
        listener, endpoints,
    )))
}

/// Waits for LXD, lists it, and starts the events stream and the periodic resync.
async fn start_lxd(
    pipeline: &Arc<Pipeline<LxdClient>>,
    resync: Duration,
    allow_shared_profiles: bool,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    // Wait for LXD: a controller started before its LXD must not exit.
    let mut delay = Backoff::new(RETRY);
    loop {
        match super::check_project(pipeline.lxd(), allow_shared_profiles).await {
            Ok(()) => break,
            Err(e) if e.downcast_ref::<crate::lxd::LxdError>().is_some() => {
                warn!(error = %e, "LXD does not answer; retrying in {:?}", delay.peek());
                delay.wait().await;
            }
            Err(e) => return Err(e),
        }
    }
    // List before the workers start, so that no reconcile plans against an empty cache.
    // Every connect of the events stream lists again, so that no change falls between a
    // listing and the events: the first connect too, unless it came before this listing
    // (waited for up to FIRST_CONNECT), which then covers it: one listing at start, not
    // two.
    let mut stream = pipeline.lxd().events();
    let first = match tokio::time::timeout(FIRST_CONNECT, stream.next()).await {
        Ok(Some(EventNotice::Connected)) => None,
        Ok(other) => other,
        Err(_) => {
            debug!("the events stream is not up yet: it lists again when it is");
            None
        }
    };
    relist_until_it_answers(pipeline).await;
    let events = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move {
            let mut first = first;
            while let Some(notice) = match first.take() {
                Some(notice) => Some(notice),
                None => stream.next().await,
            } {
                let result = match notice {
                    EventNotice::Connected => {
                        debug!("events connected: listing LXD");
                        pipeline.feed.reconnected().await
                    }
                    EventNotice::Lifecycle(e) => pipeline.feed.on_event(&e).await,
                };
                match result {
                    Ok(affected) => pipeline.on_lxd(affected),
                    Err(e) => {
                        // An event whose read failed, or a listing after a reconnect that
                        // failed: the cache may have missed a change, which nothing else
                        // would bring before the next resync. LXD is listed again until
                        // it answers, and every resource looked at.
                        warn!(error = %e, "handling an LXD event: listing LXD again");
                        relist_until_it_answers(&pipeline).await;
                    }
                }
            }
        })
    };
    let resync = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move {
            loop {
                // Jitter of up to a tenth, so that replicas and restarts spread out.
                let jitter = resync.mul_f64(fastrand::f64() * 0.1);
                tokio::time::sleep(resync + jitter).await;
                match pipeline.relist().await {
                    Ok(()) => pipeline.enqueue_all(),
                    Err(e) => warn!(error = %e, "resync: cannot list LXD"),
                }
            }
        })
    };
    Ok(vec![events, resync])
}

/// Lists LXD, again after a backoff until it answers, then looks at every resource.
async fn relist_until_it_answers(pipeline: &Pipeline<LxdClient>) {
    let mut delay = Backoff::new(RETRY);
    while let Err(e) = pipeline.relist().await {
        warn!(error = %e, "cannot list LXD; retrying in {:?}", delay.peek());
        delay.wait().await;
    }
    pipeline.enqueue_all();
}

/// SIGTERM/SIGINT: finish the reconciles in flight (30 s at most; a second signal exits
/// now) and stop the other tasks.
async fn drain(
    pipeline: &Pipeline<LxdClient>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    workers: Option<tokio::task::JoinHandle<()>>,
) {
    info!("stopping: finishing the reconciles in flight (30 s at most; a second signal exits now)");
    pipeline.drain();
    for task in tasks {
        task.abort();
    }
    let Some(workers) = workers else { return };
    tokio::select! {
        _ = workers => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => warn!("reconciles still running after 30 s: exiting"),
        _ = shutdown_signal() => {
            warn!("second signal: exiting now");
            return;
        }
    }
    store_statuses(pipeline).await;
}

/// Waits (5 s at most) until the statuses decided so far are stored: the status writer
/// works beside the reconciles, and a process that exits takes what it holds with it.
async fn store_statuses<L: LxdApi + Clone>(pipeline: &Pipeline<L>) {
    if !pipeline.store_statuses(Duration::from_secs(5)).await {
        warn!(
            unwritten = pipeline.report.unwritten(),
            "exiting with statuses not stored"
        );
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
/// one line per resource that is not (the caller adds a line per file that does not load,
/// and exits 1 for those too).
fn once_report<L: LxdApi + Clone>(pipeline: &Pipeline<L>) -> ExitCode {
    let mut bad = 0;
    for k in pipeline.store.workload_keys() {
        let Some(s) = pipeline.report.last(&k) else {
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
