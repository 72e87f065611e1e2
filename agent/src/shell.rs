//! The shell around the core: turns flags into a running agent, drives the core from one loop
//! (connection events, container events, timers, the stop signal) and executes its commands;
//! then tears down what it set up.
//!
//! Everything that takes time runs elsewhere: the QUIC connection in `conn`, each container's
//! preparation, spawn and wait in its `launch` monitor, HTTP in axum's tasks. The loop itself
//! never blocks, so the core always sees events in the order they happened.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_wire::proto::{AgentMessage, IsolationReport, PROTOCOL_VERSION, Registration};
use corral_wire::resources::Resources;
use corral_wire::tls::TlsFiles;
use tokio::sync::{mpsc, oneshot, watch};

use crate::args::{AgentArgs, parse_master};
use crate::cgroup::{self, Cgroup};
use crate::conn::{self, ConnConfig, ConnEvent};
use crate::core::{Command, Core, CoreConfig, Event, RandomIds};
use crate::error::AgentError;
use crate::host::{self, AgentUser};
use crate::http::{self, HttpState, SharedCore, lock};
use crate::isolation::{self, LimitPolicy, Network};
use crate::launch::{self, ContainerHandle, Control, LaunchEnv};
use crate::{clock, paths};

/// How long a stopping agent waits for the master to acknowledge the last updates.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long containers an earlier agent left may take to die at start.
const DESTROY_STALE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many forgotten tasks `/state` keeps showing.
const COMPLETED_TASKS: usize = 1000;

/// Runs the agent until SIGINT or SIGTERM, then kills its tasks, removes their cgroups and
/// its own, and returns. Fails if it cannot start, or if the master refuses it.
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|source| AgentError::Signals { what: "SIGTERM", source })?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|source| AgentError::Signals { what: "SIGINT", source })?;
    run_until(args, async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
    })
    .await
}

/// [`run`], stopping when `shutdown` completes instead of on a signal (for embedding and
/// tests).
pub async fn run_until(
    args: AgentArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let setup = Setup::new(&args).await?;
    let parent = setup.env.cgroups.clone();
    let work_dir = setup.env.work_dir.clone();
    let result = serve(setup, args, shutdown).await;
    // Only our own containers were removed by their monitors; anything else in the parent is
    // from an earlier agent on this port and is left alone.
    match parent.children() {
        Ok(c) if c.is_empty() => {
            if let Err(e) = parent.remove() {
                tracing::warn!("{e}");
            }
        }
        Ok(c) => tracing::warn!(
            cgroup = %parent.path().display(),
            "leaving the agent cgroup: it holds containers this agent did not start: {c:?}"
        ),
        Err(e) => tracing::warn!("{e}"),
    }
    tracing::info!(work_dir = %work_dir.display(), "agent stopped");
    result
}

/// Everything derived from the flags before the agent goes live.
struct Setup {
    conn: ConnConfig,
    advertise_ip: Option<IpAddr>,
    listener: tokio::net::TcpListener,
    env: Arc<LaunchEnv>,
    registration: Registration,
    recovery: Recovery,
}

/// What a restarted agent takes over.
#[derive(Default)]
struct Recovery {
    agent_id: Option<String>,
    tasks: Vec<crate::checkpoint::TaskCheckpoint>,
    /// Containers whose init still runs, with it.
    adopt: Vec<(crate::core::Launch, launch::Adopted)>,
    /// Containers whose init is gone: how each ended, as far as can be told.
    gone: Vec<Event>,
}

/// Reads the checkpoints and finds the inits of the containers they name. After a reboot
/// (another boot id) nothing is taken over and the checkpoints are moved aside.
fn recover(work_dir: &Path, mode: crate::checkpoint::RecoverMode) -> Result<Recovery, AgentError> {
    use crate::checkpoint;
    use crate::core::{ExitStatus, Launch};
    let found = checkpoint::recover(work_dir, mode)?;
    let Some(agent) = found.agent else { return Ok(Recovery::default()) };
    let boot = host::boot_id();
    if agent.boot_id != boot {
        tracing::warn!(
            agent_id = agent.agent_id,
            "the host rebooted since the last run: its tasks are gone; registering as a new agent"
        );
        let stamp = clock::now().wall_ns / 1_000_000_000;
        if let Err(e) = checkpoint::retire(work_dir, stamp) {
            tracing::warn!("cannot move the old checkpoints aside: {e}");
        }
        return Ok(Recovery::default());
    }
    let mut out = Recovery { agent_id: Some(agent.agent_id.clone()), ..Default::default() };
    for t in &found.tasks {
        let Some(cid) = t.container_id.clone() else { continue };
        if t.phase >= 3 {
            continue;
        }
        let run_dir = paths::run_dir(work_dir, &cid);
        let launch = Launch {
            container_id: cid.clone(),
            agent_id: t.agent_id.clone(),
            framework: t.framework.clone(),
            task: t.spec.clone(),
            executor_container: t.executor_container.clone(),
        };
        match launch::find_init(&run_dir) {
            Ok(Some(init)) => {
                tracing::info!(
                    container_id = cid,
                    pid = init.pid.as_raw(),
                    "taking over the container"
                );
                out.adopt.push((launch, init));
            }
            found => {
                let why = match found {
                    Err(e) => e,
                    _ => "its init is gone".to_string(),
                };
                let event = match crate::shim::read_exit_status(&run_dir) {
                    Some(crate::shim::Report::Ended(status)) => {
                        Event::Exited { container_id: cid, status }
                    }
                    Some(crate::shim::Report::Failed(message)) => {
                        Event::LaunchFailed { container_id: cid, message }
                    }
                    _ if t.phase == 0 => Event::LaunchFailed {
                        container_id: cid,
                        message: format!("the agent restarted while launching the task ({why})"),
                    },
                    _ => Event::Exited {
                        container_id: cid,
                        status: ExitStatus::Signal(libc::SIGKILL),
                    },
                };
                tracing::warn!(?event, "a checkpointed container cannot be taken over: {why}");
                out.gone.push(event);
            }
        }
    }
    out.tasks = found.tasks;
    Ok(out)
}

impl Setup {
    async fn new(args: &AgentArgs) -> Result<Setup, AgentError> {
        let flag = |flag: &'static str| move |why: String| AgentError::Flag { flag, why };
        let master = parse_master(&args.master).map_err(flag("master"))?;
        let server_name = args.master_name.clone().unwrap_or_else(|| master.host.clone());
        let client = corral_wire::tls::client_config(&tls_files(args)?)?;

        let work_dir = &args.work_dir;
        let work_err = |source| AgentError::WorkDir { path: work_dir.clone(), source };
        std::fs::create_dir_all(work_dir).map_err(work_err)?;
        let work_dir = work_dir.canonicalize().map_err(work_err)?;

        let launcher = match &args.launcher {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(AgentError::Launcher)?,
        };
        if !launcher.is_file() {
            return Err(AgentError::Flag {
                flag: "launcher",
                why: format!("{} is not a file", launcher.display()),
            });
        }

        let overrides = match &args.resources {
            Some(text) => Resources::parse(text)
                .map_err(|e| AgentError::Flag { flag: "resources", why: e.to_string() })?,
            None => Resources::new(),
        };
        let resources = host::with_overrides(&host::detect_resources(&work_dir), &overrides);
        // Reservations and volumes made through the master live in the checkpoint.
        let resources = crate::volumes::recover(&work_dir, &resources)?;
        let attributes = match &args.attributes {
            Some(text) => host::parse_attributes(text).map_err(flag("attributes"))?,
            None => Vec::new(),
        };

        // Nothing after the cgroup is created can fail, so a failed start leaves none behind.
        let root = cgroup::find_root(args.cgroup_root.as_deref())?;
        let addr = format!("0.0.0.0:{}", args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| AgentError::HttpBind { addr: addr.clone(), source })?;
        let port = listener
            .local_addr()
            .map_err(|source| AgentError::HttpBind { addr: addr.clone(), source })?
            .port();
        let parent_name =
            args.cgroup_parent.clone().unwrap_or_else(|| format!("corral-agent-{port}"));
        if parent_name.is_empty()
            || !Path::new(&parent_name).components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(AgentError::Flag {
                flag: "cgroup-parent",
                why: format!("'{parent_name}' is not a relative path without '..'"),
            });
        }
        let cgroups = Cgroup::new(root.join(&parent_name));
        // What an earlier run of this agent left: its id and tasks, if this is the same boot.
        let recovery = recover(&work_dir, args.recover)?;
        cgroups.create()?;
        // Containers of an earlier agent on this port that are not taken over (no checkpoint,
        // or their init is gone): nothing will report on them, so they go.
        let adopted: std::collections::HashSet<&str> =
            recovery.adopt.iter().map(|(l, _)| l.container_id.as_str()).collect();
        match cgroups.children() {
            Ok(c) => {
                let stale: Vec<String> =
                    c.into_iter().filter(|n| !adopted.contains(n.as_str())).collect();
                if !stale.is_empty() {
                    tracing::warn!(
                        cgroup = %cgroups.path().display(),
                        "removing containers an earlier agent left behind: {stale:?}"
                    );
                }
                for name in stale {
                    if let Err(e) = cgroups.child(&name).destroy_tree(DESTROY_STALE_TIMEOUT) {
                        tracing::warn!("{e}");
                    }
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
        let agent_user = AgentUser::current();
        let setup = isolation::setup(
            &root,
            &cgroups,
            args.isolation,
            agent_user.is_root(),
            args.task_network,
            LimitPolicy {
                pids_max: (args.pids_max > 0).then_some(args.pids_max),
                allow_swap: args.allow_swap,
                memory_high_percent: args.memory_high_percent,
            },
        );
        let iso = match setup {
            Ok(iso) => iso,
            Err(e) => {
                // Leave nothing behind: the cgroup was made above.
                let _ = cgroups.remove();
                return Err(e.into());
            }
        };
        let telemetry = match crate::telemetry::Telemetry::start(
            args.telemetry,
            &cgroups,
            crate::telemetry::level_below(&root, cgroups.path()),
            args.telemetry_interval.max(Duration::from_millis(10)),
        ) {
            Ok(t) => Arc::new(t),
            Err(why) => {
                let _ = cgroups.remove();
                return Err(AgentError::Flag {
                    flag: "telemetry",
                    why: format!("eBPF telemetry unavailable: {why}"),
                });
            }
        };
        let isolation = IsolationReport {
            policy: iso.policy.as_str().into(),
            cgroup_root: cgroups.path().to_string_lossy().into_owned(),
            controllers: iso.controllers.clone(),
            not_enforced: iso.not_enforced(),
            namespaces: iso.namespaces,
            network: match iso.network {
                Network::Host => "host".into(),
                Network::Isolated => "isolated".into(),
            },
            telemetry: telemetry.report().summary(),
        };
        for line in &isolation.not_enforced {
            tracing::warn!("isolation ({}): {line}", iso.policy.as_str());
        }
        let hostname = args.hostname.clone().unwrap_or_else(host::hostname);
        let output = crate::output::Output::start_with(
            crate::output::Rotation { max_size: args.task_log_max_size, keep: args.task_log_keep },
            args.task_output_engine == crate::output::EngineChoice::IoUring,
        )
        .map_err(AgentError::Output)?;
        tracing::info!(engine = output.engine(), "task output");
        let forker = match crate::launcher::Launcher::start(&launcher) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("cannot start the launcher ({e}); spawning task inits directly");
                None
            }
        };

        let registration = Registration {
            protocol_version: PROTOCOL_VERSION,
            agent_id: None,
            hostname: hostname.clone(),
            http_address: args.advertise_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)).to_string(),
            http_port: port,
            resources,
            attributes,
            version: env!("CARGO_PKG_VERSION").to_string(),
            boot_id: host::boot_id(),
            tasks: Vec::new(),
            isolation,
        };
        tracing::info!(
            port,
            work_dir = %work_dir.display(),
            cgroup = %cgroups.path().display(),
            resources = %registration.resources,
            "agent starting"
        );
        Ok(Setup {
            conn: ConnConfig {
                master,
                server_name,
                client,
                backoff_max: args.reregister_backoff_max,
            },
            advertise_ip: args.advertise_ip,
            listener,
            env: Arc::new(LaunchEnv {
                work_dir,
                launcher,
                cgroups,
                agent_user,
                isolation: iso,
                hostname,
                forker,
                telemetry,
                output,
            }),
            registration,
            recovery,
        })
    }
}

fn tls_files(args: &AgentArgs) -> Result<TlsFiles, AgentError> {
    let from_dir = args.tls_dir.as_deref().map(|d| TlsFiles::in_dir(d, "agent"));
    let pick = |given: &Option<PathBuf>, flag: &'static str, dir_file: Option<&PathBuf>| {
        given.clone().or_else(|| dir_file.cloned()).ok_or_else(|| AgentError::Flag {
            flag,
            why: "no TLS material: pass --tls-dir (or all of --tls-ca, --tls-cert, --tls-key)"
                .into(),
        })
    };
    Ok(TlsFiles {
        ca: pick(&args.tls_ca, "tls-ca", from_dir.as_ref().map(|f| &f.ca))?,
        cert: pick(&args.tls_cert, "tls-cert", from_dir.as_ref().map(|f| &f.cert))?,
        key: pick(&args.tls_key, "tls-key", from_dir.as_ref().map(|f| &f.key))?,
    })
}

/// What the loop feeds the core.
enum Input {
    Event(Event),
    Timeout,
}

/// The loop's state: the core, and the effects it has set in motion.
struct Shell {
    core: SharedCore,
    env: Arc<LaunchEnv>,
    advertise_ip: Option<IpAddr>,
    /// Where to send on the current connection.
    out: Option<mpsc::UnboundedSender<AgentMessage>>,
    containers: HashMap<String, ContainerHandle>,
    container_events: mpsc::UnboundedSender<Event>,
    stopping: bool,
    refused: Option<String>,
    /// Subscribed custom executors' event streams: (framework, executor) -> stream.
    executor_streams: HashMap<(String, String), ExecutorSink>,
}

/// A custom executor's event stream.
struct ExecutorSink {
    stream: u64,
    tx: mpsc::Sender<bytes::Bytes>,
    protobuf: bool,
}

impl Shell {
    /// Feeds the core and executes what it asks for, until it asks nothing more.
    fn apply(&mut self, input: Input) {
        let now = clock::now();
        let mut pending = VecDeque::from([input]);
        while let Some(input) = pending.pop_front() {
            let commands: Vec<Command> = {
                let mut core = lock(&self.core);
                match input {
                    Input::Event(e) => core.handle(now, e),
                    Input::Timeout => core.handle_timeout(now),
                }
                std::iter::from_fn(|| core.poll_command()).collect()
            };
            for c in commands {
                pending.extend(self.execute(c));
            }
        }
    }

    fn execute(&mut self, command: Command) -> Option<Input> {
        match command {
            Command::Send(m) => match &self.out {
                Some(out) => {
                    let _ = out.send(m);
                }
                None => tracing::debug!("not connected; not sent: {m:?}"),
            },
            Command::Launch(l) => {
                let id = l.container_id.clone();
                let handle = launch::start(self.env.clone(), l, self.container_events.clone());
                self.containers.insert(id, handle);
            }
            Command::Terminate { container_id } => {
                if let Some(h) = self.containers.get(&container_id) {
                    h.send(Control::Terminate);
                }
            }
            Command::ForceKill { container_id } => {
                if let Some(h) = self.containers.get(&container_id) {
                    h.send(Control::ForceKill);
                }
            }
            Command::Forget { container_id } => {
                self.containers.remove(&container_id);
                remove_run_dir(paths::run_dir(&self.env.work_dir, &container_id));
            }
            Command::Convert { conv, total } => {
                let work_dir = &self.env.work_dir;
                if let Err(e) = crate::volumes::apply(work_dir, &conv) {
                    tracing::error!(operation = conv.name(), "cannot apply to the volumes: {e}");
                }
                if let Err(e) = crate::volumes::checkpoint(work_dir, &total) {
                    tracing::error!("cannot checkpoint the agent's resources: {e}");
                }
                tracing::info!(operation = conv.name(), resources = %conv.resources(), total = %total, "resources converted");
            }
            Command::ExecutorEvent { framework_id, executor_id, event } => {
                let key = (framework_id, executor_id);
                if let Some(sink) = self.executor_streams.get(&key) {
                    let payload = if sink.protobuf {
                        prost::Message::encode_to_vec(&event)
                    } else {
                        corral_wire::mesos::json::to_string(&event).into_bytes()
                    };
                    let record = corral_wire::recordio::encode(&payload);
                    if sink.tx.try_send(record).is_err() {
                        // Never held back by a slow executor: it subscribes again.
                        tracing::warn!(executor = %key.1, "executor too slow; closing its event stream");
                        let stream = sink.stream;
                        self.executor_streams.remove(&key);
                        return Some(Input::Event(Event::ExecutorDisconnected {
                            framework_id: key.0,
                            executor_id: key.1,
                            stream,
                        }));
                    }
                }
            }
            Command::CloseExecutorStream { framework_id, executor_id } => {
                self.executor_streams.remove(&(framework_id, executor_id));
            }
            Command::Resize { container_id, resources } => {
                let cgroup = self.env.cgroups.child(&container_id);
                let iso = &self.env.isolation;
                let limits = crate::isolation::Limits::for_task(
                    resources.scalar("cpus").as_f64(),
                    resources.scalar("mem").as_f64(),
                    &iso.limits,
                );
                self.env.telemetry.resized(
                    &container_id,
                    crate::telemetry::Limits {
                        cpus: resources.scalar("cpus").as_f64(),
                        mem_bytes: (resources.scalar("mem").as_f64() * 1048576.0) as u64,
                    },
                );
                if let Err(e) = crate::isolation::apply(&cgroup, &limits, iso) {
                    tracing::warn!(container_id, "cannot resize the container: {e}");
                }
            }
            Command::Checkpoint(task) => {
                if let Err(e) = crate::checkpoint::write_task(&self.env.work_dir, &task) {
                    tracing::error!("{e}");
                }
            }
            Command::RemoveCheckpoint(key) => {
                let work_dir = &self.env.work_dir;
                if let Err(e) =
                    crate::checkpoint::remove_task(work_dir, &key.framework_id, &key.task_id)
                {
                    tracing::error!("{e}");
                }
            }
            Command::CheckpointAgent { agent_id } => {
                let a = crate::checkpoint::AgentCheckpoint {
                    agent_id,
                    boot_id: lock(&self.core).registration().boot_id.clone(),
                };
                if let Err(e) = crate::checkpoint::write_agent(&self.env.work_dir, &a) {
                    tracing::error!("{e}");
                }
            }
            Command::Exit { reason } => {
                tracing::error!(reason, "the master refused this agent; stopping");
                self.refused.get_or_insert(reason);
                if !self.stopping {
                    self.stopping = true;
                    return Some(Input::Event(Event::Shutdown));
                }
            }
        }
        None
    }

    /// A call on the executor API.
    fn executor_input(&mut self, input: http::ExecutorInput) {
        use http::ExecutorInput as I;
        let event = match input {
            I::Subscribe { framework_id, executor_id, stream, tx, protobuf } => {
                self.executor_streams.insert(
                    (framework_id.clone(), executor_id.clone()),
                    ExecutorSink { stream, tx, protobuf },
                );
                Event::ExecutorSubscribed { framework_id, executor_id, stream }
            }
            I::Closed { framework_id, executor_id, stream } => {
                let key = (framework_id.clone(), executor_id.clone());
                if self.executor_streams.get(&key).is_some_and(|s| s.stream == stream) {
                    self.executor_streams.remove(&key);
                }
                Event::ExecutorDisconnected { framework_id, executor_id, stream }
            }
            I::Update { framework_id, executor_id, status } => {
                Event::ExecutorUpdate { framework_id, executor_id, status: *status }
            }
            I::Message { framework_id, executor_id, data } => {
                Event::ExecutorMessage { framework_id, executor_id, data }
            }
        };
        self.apply(Input::Event(event));
    }

    fn connection(&mut self, event: ConnEvent) {
        match event {
            ConnEvent::Up { out, local_ip } => {
                self.out = Some(out);
                let ip = self.advertise_ip.or(local_ip).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
                self.apply(Input::Event(Event::Connected { http_address: ip.to_string() }));
            }
            ConnEvent::Message(m) => self.apply(Input::Event(Event::Master(m))),
            ConnEvent::Down => {
                self.out = None;
                self.apply(Input::Event(Event::Disconnected));
            }
        }
    }
}

fn remove_run_dir(dir: PathBuf) {
    tokio::spawn(async move {
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), "cannot remove a run directory: {e}");
        }
    });
}

async fn serve(
    setup: Setup,
    args: AgentArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let config = CoreConfig {
        registration: setup.registration,
        default_kill_grace: args.default_kill_grace_period,
        retry_min: args.status_update_retry_min,
        retry_max: args.status_update_retry_max.max(args.status_update_retry_min),
        completed_capacity: COMPLETED_TASKS,
    };
    let mut recovery = setup.recovery;
    let mut core = Core::new(config, Box::new(RandomIds));
    if let Some(agent_id) = recovery.agent_id.take() {
        tracing::info!(
            agent_id,
            tasks = recovery.tasks.len(),
            running = recovery.adopt.len(),
            "recovering from the checkpoint"
        );
        core.recover(clock::now(), agent_id, std::mem::take(&mut recovery.tasks));
    }
    let core: SharedCore = Arc::new(Mutex::new(core));

    let (executor_tx, mut executor_rx) = mpsc::unbounded_channel();
    let router = http::router(Arc::new(HttpState {
        core: core.clone(),
        work_dir: setup.env.work_dir.clone(),
        executors: executor_tx,
        next_stream: std::sync::atomic::AtomicU64::new(1),
        telemetry: setup.env.telemetry.clone(),
        output: setup.env.output.clone(),
    }));
    let (usage_tx, mut usage_rx) = mpsc::unbounded_channel();
    if let Err(e) = crate::telemetry::spawn_sampler(setup.env.telemetry.clone(), usage_tx) {
        tracing::warn!("cannot start the telemetry sampler: {e}");
    }
    let (http_stop, http_stopped) = oneshot::channel::<()>();
    let http_task = tokio::spawn(async move {
        use axum::serve::ListenerExt as _;
        // Small responses on kept-alive connections: no Nagle delay.
        let listener = setup.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = http_stopped.await;
            })
            .await
    });

    let (conn_tx, mut conn_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let conn_task = tokio::spawn(conn::run(setup.conn, conn_tx, stop_rx));

    let (container_tx, mut container_rx) = mpsc::unbounded_channel();
    let mut shell = Shell {
        core: core.clone(),
        env: setup.env,
        advertise_ip: setup.advertise_ip,
        out: None,
        containers: HashMap::new(),
        container_events: container_tx,
        stopping: false,
        refused: None,
        executor_streams: HashMap::new(),
    };
    for (launch, init) in recovery.adopt {
        let id = launch.container_id.clone();
        let handle = launch::adopt(shell.env.clone(), launch, init, shell.container_events.clone());
        shell.containers.insert(id, handle);
    }
    for event in recovery.gone {
        shell.apply(Input::Event(event));
    }
    let mut shutdown = std::pin::pin!(shutdown);
    let mut drain_until: Option<Instant> = None;
    loop {
        let (timeout, live, pending, registered) = {
            let c = lock(&core);
            (c.next_timeout(), c.live_containers(), c.pending_updates(), c.is_registered())
        };
        if shell.stopping && live == 0 {
            if pending == 0 || !registered {
                break;
            }
            let until = *drain_until.get_or_insert_with(|| clock::now().mono + DRAIN_TIMEOUT);
            if clock::now().mono >= until {
                tracing::warn!(pending, "stopping with unacknowledged status updates");
                break;
            }
        }
        let wake = match (timeout, drain_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            _ = &mut shutdown, if !shell.stopping => {
                shell.stopping = true;
                shell.apply(Input::Event(Event::Shutdown));
            }
            Some(ev) = conn_rx.recv() => shell.connection(ev),
            Some(ev) = container_rx.recv() => shell.apply(Input::Event(ev)),
            Some(input) = executor_rx.recv() => shell.executor_input(input),
            Some(usage) = usage_rx.recv() => {
                if let Some(out) = &shell.out {
                    let _ = out.send(AgentMessage::Usage(usage));
                }
            }
            _ = sleep_until(wake), if wake.is_some() => shell.apply(Input::Timeout),
        }
    }

    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(2), conn_task).await.is_err() {
        tracing::warn!("the connection task did not stop in time");
    }
    let _ = http_stop.send(());
    match tokio::time::timeout(Duration::from_secs(2), http_task).await {
        Ok(Ok(Err(e))) => tracing::warn!("http server: {e}"),
        Err(_) => tracing::warn!("the http server did not stop in time"),
        _ => {}
    }
    // Containers killed on the way out are not recovered by anyone: drop their run dirs.
    for id in shell.containers.keys() {
        let dir = paths::run_dir(&shell.env.work_dir, id);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), "{e}");
        }
    }
    match shell.refused {
        Some(reason) => Err(AgentError::Refused { reason }),
        None => Ok(()),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
