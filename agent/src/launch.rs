//! Starting and watching one container: the agent's side of the per-task init protocol (see
//! `shim`). For each [`Launch`] the shell starts a monitor task that
//!
//! 1. resolves the user, creates the sandbox (`stdout`, `stderr`, owned by the task's user),
//!    the run directory with `task.json`, and the task's cgroup (blocking work, off the
//!    runtime);
//!    writes the task's limits into the cgroup (`isolation`);
//! 2. spawns `LAUNCHER __task-init RUN_DIR` straight into the cgroup and its new namespaces
//!    (`sys::spawn_init`, no fork of the agent);
//! 3. relays the init's report lines (`Started`; `Launched` first only if the task is not
//!    running within [`STARTING_AFTER`]) and the shell's kill requests (SIGTERM to the init,
//!    which forwards it; `cgroup.kill`);
//! 4. when the init is gone: reads `memory.events` (an OOM kill is a `Limited` end), kills
//!    leftovers, waits for the cgroup to be empty, removes it, and only then reports `Exited`,
//!    `Limited` or `LaunchFailed`, so a terminal status update always means "nothing of this
//!    task runs any more".
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fs;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use corral_wire::mesos::v1::task_status::Reason;
use nix::sys::wait::WaitStatus;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::mpsc;

use crate::cgroup::Cgroup;
use crate::core::{Event, ExitStatus, Launch};
use crate::host::AgentUser;
use crate::isolation::{self, Isolation, Network};
use crate::paths;
use crate::shim::{InitIsolation, Report, RunAs, ShimSpec};
use crate::sys::{InitSpawn, Namespaces, SpawnedInit};

/// A task not running this long after its init was spawned is reported TASK_STARTING.
const STARTING_AFTER: Duration = Duration::from_millis(50);
/// How long a container's cgroup may take to empty after `cgroup.kill`.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(10);

/// What every launch shares.
#[derive(Debug)]
pub struct LaunchEnv {
    pub work_dir: PathBuf,
    /// The binary to run as `BINARY __task-init RUN_DIR`.
    pub launcher: PathBuf,
    /// The agent's cgroup; containers are its children.
    pub cgroups: Cgroup,
    pub agent_user: AgentUser,
    pub isolation: Isolation,
    /// The hostname tasks see (their own uts namespace is set to it).
    pub hostname: String,
    /// The process that forks task inits (see `launcher`); without it the agent spawns them.
    pub forker: Option<crate::launcher::Launcher>,
    /// Per-container usage: told when a container's cgroup is made and when it goes.
    pub telemetry: std::sync::Arc<crate::telemetry::Telemetry>,
    /// Moves every container's stdout and stderr into its sandbox files.
    pub output: crate::output::Output,
}

/// A kill request for a running container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Terminate,
    ForceKill,
}

/// The shell's handle on one container's monitor.
#[derive(Debug)]
pub struct ContainerHandle {
    control: mpsc::UnboundedSender<Control>,
}

impl ContainerHandle {
    pub fn send(&self, c: Control) {
        // A finished monitor has nothing left to kill.
        let _ = self.control.send(c);
    }
}

/// Starts the monitor of a new container; its events go to `events`.
pub fn start(
    env: Arc<LaunchEnv>,
    launch: Launch,
    events: mpsc::UnboundedSender<Event>,
) -> ContainerHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(monitor(env, launch, None, rx, events));
    ContainerHandle { control: tx }
}

/// Takes over the running container of an earlier agent (see [`Adopted`]); its events go to
/// `events` as if this agent had launched it.
pub fn adopt(
    env: Arc<LaunchEnv>,
    launch: Launch,
    init: Adopted,
    events: mpsc::UnboundedSender<Event>,
) -> ContainerHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(monitor(env, launch, Some(init), rx, events));
    ContainerHandle { control: tx }
}

/// The init of a container an earlier agent started, found alive and verified (same pid,
/// same start time) by [`find_init`].
#[derive(Debug)]
pub struct Adopted {
    pub pid: nix::unistd::Pid,
    pub pidfd: OwnedFd,
}

/// The identity of a container's init, recorded in its run directory right after the spawn:
/// `pid start-time` (start time in clock ticks since boot, from `/proc/PID/stat`). Not made
/// durable with fsync: it means something only until the next reboot.
pub const INIT_FILE: &str = "init";

/// Finds the init an earlier agent started for the container whose run directory is
/// `run_dir`: `Ok(None)` if it is gone (or its pid now belongs to another process).
pub fn find_init(run_dir: &Path) -> Result<Option<Adopted>, String> {
    let path = run_dir.join(INIT_FILE);
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut words = text.split_whitespace();
    let (Some(Ok(pid)), Some(Ok(start))) =
        (words.next().map(str::parse::<i32>), words.next().map(str::parse::<u64>))
    else {
        return Err(format!("{} does not hold 'PID START-TIME'", path.display()));
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    let pidfd = match crate::sys::pidfd_open_any(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(e) => return Err(format!("cannot open a pidfd for pid {pid}: {e}")),
    };
    // The pidfd pins the process it names; if that process has the recorded start time it is
    // the init, not a later process that reused the pid.
    match crate::host::process_start_time(pid.as_raw()) {
        Ok(t) if t == start => Ok(Some(Adopted { pid, pidfd })),
        _ => Ok(None),
    }
}

enum Outcome {
    Failed(String),
    Ended(ExitStatus),
    Limited(Reason, String),
}

async fn monitor(
    env: Arc<LaunchEnv>,
    launch: Launch,
    adopted: Option<Adopted>,
    mut control: mpsc::UnboundedReceiver<Control>,
    events: mpsc::UnboundedSender<Event>,
) {
    let container_id = launch.container_id.clone();
    let cgroup = env.cgroups.child(&container_id);
    let outcome = match adopted {
        None => run_container(&env, &launch, &cgroup, &mut control, &events).await,
        Some(init) => {
            // Usage is counted again from the takeover (the eBPF counters of the agent that
            // started the container died with it; cgroup files are cumulative anyway).
            {
                let (env, launch, cgroup) = (env.clone(), launch.clone(), cgroup.clone());
                let _ =
                    tokio::task::spawn_blocking(move || track_usage(&env, &launch, &cgroup)).await;
            }
            let (_, logs) = dirs(&env, &launch);
            let run_dir = paths::run_dir(&env.work_dir, &container_id);
            let init = Init { pid: init.pid, pidfd: init.pidfd, child: false, run_dir, logs };
            supervise(&env, &container_id, &cgroup, init, None, &mut control, &events).await
        }
    };
    let (cg, telemetry, id) = (cgroup.clone(), env.telemetry.clone(), container_id.clone());
    let destroyed = tokio::task::spawn_blocking(move || {
        telemetry.removing(&id);
        cg.destroy(DESTROY_TIMEOUT)
    });
    match destroyed.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(container_id, "cannot clean up the container's cgroup: {e}"),
        Err(e) => tracing::error!(container_id, "cgroup cleanup panicked: {e}"),
    }
    let event = match outcome {
        Outcome::Failed(message) => Event::LaunchFailed { container_id, message },
        Outcome::Ended(status) => Event::Exited { container_id, status },
        Outcome::Limited(reason, message) => Event::Limited { container_id, reason, message },
    };
    let _ = events.send(event);
}

/// A container's init, as its monitor holds it.
struct Init {
    pid: nix::unistd::Pid,
    pidfd: OwnedFd,
    /// This agent's child (spawned here): reaped here.
    child: bool,
    run_dir: PathBuf,
    /// Where the task's `stdout` and `stderr` files are.
    logs: PathBuf,
}

async fn run_container(
    env: &Arc<LaunchEnv>,
    launch: &Launch,
    cgroup: &Cgroup,
    control: &mut mpsc::UnboundedReceiver<Control>,
    events: &mpsc::UnboundedSender<Event>,
) -> Outcome {
    let container_id = launch.container_id.clone();
    if control.try_recv().is_ok() {
        return Outcome::Failed("task killed before it started".into());
    }
    // One trip to the blocking pool: prepare, then spawn (the thread waits until the init has
    // exec'd).
    let spawned = {
        let (env, launch, cgroup) = (env.clone(), launch.clone(), cgroup.clone());
        tokio::task::spawn_blocking(move || spawn(&env, &cgroup, prepare(&env, &launch, &cgroup)?))
            .await
    };
    let (init, report_pipe, run_dir) = match spawned {
        Ok(Ok(s)) => s,
        Ok(Err(message)) => return Outcome::Failed(message),
        Err(e) => return Outcome::Failed(format!("container preparation panicked: {e}")),
    };
    tracing::debug!(container_id, pid = init.pid.as_raw(), path = ?init.path, "task init spawned");
    let (_, logs) = dirs(env, launch);
    let init = Init { pid: init.pid, pidfd: init.pidfd, child: true, run_dir, logs };
    supervise(env, &container_id, cgroup, init, Some(report_pipe), control, events).await
}

/// The sandbox and the directory of `stdout` and `stderr` of a launch.
fn dirs(env: &LaunchEnv, launch: &Launch) -> (PathBuf, PathBuf) {
    let group = launch
        .task
        .group
        .as_ref()
        .zip(launch.executor_container.as_deref())
        .map(|(g, c)| (g.executor_id.as_str(), c));
    paths::task_dirs(
        &env.work_dir,
        &launch.agent_id,
        &launch.framework.id,
        &launch.task.task_id,
        &launch.container_id,
        group,
    )
}

/// The agent's copies of the task's output pipes, moved into the log files from now on.
fn capture(env: &LaunchEnv, container_id: &str, init: &Init) -> Vec<crate::output::Drained> {
    let mut drained = Vec::new();
    for (fd, name) in
        [(crate::shim::STDOUT_HELD_FD, "stdout"), (crate::shim::STDERR_HELD_FD, "stderr")]
    {
        match crate::sys::pidfd_getfd(init.pidfd.as_fd(), fd) {
            Ok(pipe) => drained.push(env.output.capture(pipe, init.logs.join(name))),
            Err(e) => tracing::warn!(container_id, "cannot take the task's {name} pipe: {e}"),
        }
    }
    drained
}

/// Follows a container from its init's first report to its end: relays the reports, kills on
/// request, then (task over) kills what is left but the init, waits until the output pipes
/// are empty, and removes the init. `report_pipe` is `None` for an adopted container: its
/// pipe is taken from the init.
async fn supervise(
    env: &Arc<LaunchEnv>,
    container_id: &str,
    cgroup: &Cgroup,
    init: Init,
    report_pipe: Option<OwnedFd>,
    control: &mut mpsc::UnboundedReceiver<Control>,
    events: &mpsc::UnboundedSender<Event>,
) -> Outcome {
    let fresh = report_pipe.is_some();
    let container_id = container_id.to_string();
    let mut outputs = Vec::new();
    let mut captured = false;
    // An adopted init may have ended its task while no agent ran: the file says so.
    let mut last: Option<Report> =
        if fresh { None } else { crate::shim::read_exit_status(&init.run_dir) };
    if !fresh {
        outputs = capture(env, &container_id, &init);
        captured = true;
    }
    let report_pipe = match report_pipe {
        Some(p) => Ok(p),
        None => crate::sys::pidfd_getfd(init.pidfd.as_fd(), crate::shim::REPORT_HELD_FD),
    };
    let mut force_killed = false;
    if last.is_none() {
        // TASK_STARTING only for a task that is not running soon after its init started.
        let starting_after = tokio::time::sleep(STARTING_AFTER);
        tokio::pin!(starting_after);
        let mut announced = !fresh;
        let pipe = report_pipe.map_err(|e| e.to_string()).and_then(|p| {
            tokio::net::unix::pipe::Receiver::from_owned_fd(p).map_err(|e| e.to_string())
        });
        match pipe {
            Ok(pipe) => {
                let mut lines = BufReader::new(pipe).lines();
                let mut control_open = true;
                loop {
                    tokio::select! {
                        line = lines.next_line() => match line {
                            Ok(Some(l)) => match Report::parse(&l) {
                                Some(Report::Started(pid)) => {
                                    announced = true;
                                    if !captured {
                                        outputs = capture(env, &container_id, &init);
                                        captured = true;
                                    }
                                    let _ = events.send(Event::Started { container_id: container_id.clone(), pid });
                                }
                                Some(r) => {
                                    last = Some(r);
                                    break;
                                }
                                None => tracing::warn!(container_id, line = l, "unexpected line from the task init"),
                            },
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(container_id, "reading the task init's report: {e}");
                                break;
                            }
                        },
                        _ = &mut starting_after, if !announced => {
                            announced = true;
                            let _ = events.send(Event::Launched { container_id: container_id.clone() });
                        }
                        c = control.recv(), if control_open => match c {
                            Some(Control::Terminate) => {
                                if let Err(e) = crate::sys::pidfd_send_signal(init.pidfd.as_fd(), nix::sys::signal::Signal::SIGTERM) {
                                    tracing::debug!(container_id, "SIGTERM to the task init: {e}");
                                }
                            }
                            Some(Control::ForceKill) => {
                                tracing::info!(container_id, "grace period over: killing the container (cgroup.kill)");
                                force_killed = true;
                                if let Err(e) = cgroup.kill() {
                                    tracing::warn!(container_id, "{e}");
                                }
                            }
                            None => control_open = false,
                        },
                    }
                }
            }
            Err(e) => tracing::warn!(container_id, "cannot read the task init's report: {e}"),
        }
    }
    if !captured {
        // A launch that failed before the task started: its pipes, if any, are empty.
        outputs = capture(env, &container_id, &init);
    }
    // The task is over. What it left behind may still hold its output pipes: kill all of it
    // but the init, which keeps the pipes until every byte is in the files.
    {
        let (cg, keep) = (cgroup.clone(), init.pid.as_raw());
        let _ = tokio::task::spawn_blocking(move || kill_all_but(&cg, keep)).await;
    }
    for d in outputs {
        match tokio::time::timeout(DESTROY_TIMEOUT, d.wait()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(container_id, "task output: {e}"),
            Err(_) => tracing::warn!(container_id, "task output not drained in time"),
        }
    }
    if let Err(e) = cgroup.kill() {
        tracing::debug!(container_id, "{e}");
    }
    let status = wait_exit(&init).await;
    // An OOM kill anywhere in the container (memory.oom.group takes all of it) is the end.
    if env.isolation.has("memory") {
        let cg = cgroup.clone();
        if let Ok(Some(message)) =
            tokio::task::spawn_blocking(move || isolation::memory_limitation(&cg)).await
        {
            return Outcome::Limited(Reason::ContainerLimitationMemory, message);
        }
    }
    // The pipe can lose the last line only if the init died writing it; the file is the
    // record a restarted agent reads too.
    let last = last.or_else(|| crate::shim::read_exit_status(&init.run_dir));
    match (last, status) {
        (Some(Report::Ended(s)), _) => Outcome::Ended(s),
        (Some(Report::Failed(m)), _) => Outcome::Failed(m),
        // Killed (cgroup.kill) before it could report: so was its task.
        (_, _) if force_killed => Outcome::Ended(ExitStatus::Signal(libc::SIGKILL)),
        (_, Ok(Some(WaitStatus::Signaled(_, sig, _)))) => {
            Outcome::Ended(ExitStatus::Signal(sig as i32))
        }
        (_, Ok(st)) => Outcome::Failed(format!("the task init ended ({st:?}) without a report")),
        (_, Err(e)) => Outcome::Failed(format!("cannot wait for the task init: {e}")),
    }
}

/// Kills every process of the container but `keep` (its init), until none is left. Blocking.
fn kill_all_but(cgroup: &Cgroup, keep: i32) {
    for _ in 0..1000 {
        let Ok(pids) = cgroup.procs() else { return };
        let others: Vec<i32> = pids.into_iter().filter(|p| *p != keep).collect();
        if others.is_empty() {
            return;
        }
        for pid in others {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until the init exits (its pidfd turns readable) and reaps it if it is this agent's
/// child (`None` for an adopted init, which its new parent reaps).
async fn wait_exit(init: &Init) -> Result<Option<WaitStatus>, String> {
    let pidfd = init.pidfd.try_clone().map_err(|e| e.to_string())?;
    crate::sys::pidfd_exited(pidfd)
        .await
        .map_err(|e| format!("cannot watch the init's pidfd: {e}"))?;
    if !init.child {
        return Ok(None);
    }
    nix::sys::wait::waitpid(init.pid, None).map(Some).map_err(|e| e.to_string())
}

/// Spawns the init of a prepared container. Blocking (the calling thread waits until the
/// child has exec'd). Returns the init, the read end of its report pipe and the run dir.
fn spawn(
    env: &LaunchEnv,
    cgroup: &Cgroup,
    p: Prepared,
) -> Result<(SpawnedInit, OwnedFd, PathBuf), String> {
    let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot make the report pipe: {e}"))?;
    let argv: [&OsStr; 3] =
        [env.launcher.as_os_str(), OsStr::new(crate::TASK_INIT_ARG), p.run_dir.as_os_str()];
    let iso = &env.isolation;
    let req = InitSpawn {
        program: &env.launcher,
        argv: &argv,
        stdio: [p.stdin.as_fd(), report_write.as_fd(), p.stderr.as_fd()],
        cgroup_dir: p.cgroup_dir.as_fd(),
        cgroup_procs: p.procs.as_fd(),
        namespaces: Namespaces {
            private: iso.namespaces,
            net: iso.namespaces && iso.network == Network::Isolated,
        },
    };
    if let Some(forker) = &env.forker {
        let r = crate::launcher::Request {
            run_dir: &p.run_dir,
            namespaces: req.namespaces,
            stdio: req.stdio,
            cgroup_dir: req.cgroup_dir,
            cgroup_procs: req.cgroup_procs,
        };
        match forker.launch(&r) {
            Ok(Some((pid, path))) => {
                // The init is this process's child (CLONE_PARENT) and unreaped.
                let pidfd = crate::sys::pidfd_open(pid)
                    .map_err(|e| format!("cannot open a pidfd for the task init: {e}"))?;
                record_init(&p.run_dir, pid);
                return Ok((SpawnedInit { pid, pidfd, path }, report_read, p.run_dir));
            }
            Ok(None) => clear_container(cgroup),
            Err(e) => return Err(format!("cannot start the task init: {e}")),
        }
    }
    let init = crate::sys::spawn_init(&req)
        .map_err(|e| format!("cannot start the task init {}: {e}", env.launcher.display()))?;
    record_init(&p.run_dir, init.pid);
    Ok((init, report_read, p.run_dir))
}

/// Writes [`INIT_FILE`] (replaced atomically, not fsynced: see there).
fn record_init(run_dir: &Path, pid: nix::unistd::Pid) {
    let start = match crate::host::process_start_time(pid.as_raw()) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(pid = pid.as_raw(), "cannot read the init's start time: {e}");
            return;
        }
    };
    let tmp = run_dir.join(format!(".{INIT_FILE}.tmp"));
    let written = fs::write(&tmp, format!("{} {start}\n", pid.as_raw()))
        .and_then(|()| fs::rename(&tmp, run_dir.join(INIT_FILE)));
    if let Err(e) = written {
        tracing::warn!(dir = %run_dir.display(), "cannot record the task init: {e}");
    }
}

/// Before the agent spawns an init itself because its launcher died mid-request: an init
/// the launcher may have forked for this container before dying is killed and reaped (it is
/// the agent's child), so the container has one init.
fn clear_container(cgroup: &Cgroup) {
    let Ok(pids) = cgroup.procs() else { return };
    if pids.is_empty() {
        return;
    }
    let _ = cgroup.kill();
    for pid in pids {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    }
}

/// What `prepare` made.
struct Prepared {
    run_dir: PathBuf,
    stdin: fs::File,
    /// The sandbox's `stderr`, for the init's own complaints.
    stderr: fs::File,
    /// The container cgroup's directory and `cgroup.procs`, open for the spawn.
    cgroup_dir: fs::File,
    procs: fs::File,
}

/// Starts sampling the container's usage (telemetry).
fn track_usage(env: &LaunchEnv, launch: &Launch, cgroup: &Cgroup) {
    let resources = &launch.task.resources;
    let task = &launch.task;
    env.telemetry.created(
        &launch.container_id,
        cgroup,
        crate::telemetry::Labels {
            framework_id: launch.framework.id.clone(),
            task_id: task.task_id.clone(),
            executor_id: task
                .group
                .as_ref()
                .map(|g| g.executor_id.clone())
                .or_else(|| task.executor.as_ref().map(|e| e.executor_id.clone())),
            name: task.name.clone(),
        },
        crate::telemetry::Limits {
            cpus: resources.scalar("cpus").as_f64(),
            mem_bytes: (resources.scalar("mem").as_f64() * 1048576.0) as u64,
        },
    );
}

/// Resolves the user and creates sandbox, run directory and cgroup. Blocking.
fn prepare(env: &LaunchEnv, launch: &Launch, cgroup: &Cgroup) -> Result<Prepared, String> {
    let run_as = resolve_user(&env.agent_user, launch)?;
    let (sandbox, logs) = dirs(env, launch);
    let mut spec = ShimSpec::new(launch, &sandbox, &logs, run_as.clone())?;
    let iso = &env.isolation;
    if iso.namespaces {
        spec.isolation = InitIsolation {
            namespaces: true,
            hostname: Some(env.hostname.clone()),
            loopback: iso.network == Network::Isolated,
            tmp: Some(sandbox.join("tmp")),
            volumes: Vec::new(),
        };
    }
    let fail =
        |what: &str, p: &Path, e: std::io::Error| format!("cannot {what} {}: {e}", p.display());
    fs::create_dir_all(&sandbox).map_err(|e| fail("create the sandbox", &sandbox, e))?;
    fs::create_dir_all(&logs).map_err(|e| fail("create", &logs, e))?;
    let mut stderr = None;
    for name in ["stdout", "stderr"] {
        let p = logs.join(name);
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(&p)
            .map_err(|e| fail("create", &p, e))?;
        stderr = Some(f);
    }
    let stderr = stderr.ok_or("no stderr file")?;
    // The task's private /tmp (bind-mounted over /tmp by the init): world-writable and
    // sticky, like /tmp.
    let tmp = sandbox.join("tmp");
    if spec.isolation.tmp.is_some() {
        fs::create_dir_all(&tmp).map_err(|e| fail("create", &tmp, e))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))
            .map_err(|e| fail("set the mode of", &tmp, e))?;
    }
    if let Some(u) = &run_as {
        let (uid, gid) =
            (Some(nix::unistd::Uid::from_raw(u.uid)), Some(nix::unistd::Gid::from_raw(u.gid)));
        let mut owned = vec![sandbox.clone(), logs.join("stdout"), logs.join("stderr")];
        if logs != sandbox {
            owned.push(logs.clone());
        }
        for p in owned {
            nix::unistd::chown(&p, uid, gid)
                .map_err(|e| format!("cannot give {} to user '{}': {e}", p.display(), u.name))?;
        }
    }
    // Persistent volumes: bound into the sandbox by the init in the task's mount namespace,
    // or (no namespaces) linked, as Mesos' posix filesystem isolator does.
    for (key, vol) in launch.task.resources.volumes() {
        let Some(role) = key.role() else { continue };
        let source = crate::volumes::volume_dir(&env.work_dir, role, &vol.id);
        fs::create_dir_all(&source).map_err(|e| fail("create the volume", &source, e))?;
        if let Some(u) = &run_as {
            let (uid, gid) =
                (Some(nix::unistd::Uid::from_raw(u.uid)), Some(nix::unistd::Gid::from_raw(u.gid)));
            nix::unistd::chown(&source, uid, gid).map_err(|e| {
                format!("cannot give {} to user '{}': {e}", source.display(), u.name)
            })?;
        }
        let target = sandbox.join(&vol.container_path);
        if spec.isolation.namespaces {
            fs::create_dir_all(&target).map_err(|e| fail("create", &target, e))?;
            spec.isolation.volumes.push(crate::shim::VolumeMount {
                source,
                target,
                read_only: vol.read_only,
            });
        } else {
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(|e| fail("create", parent, e))?;
            }
            std::os::unix::fs::symlink(&source, &target)
                .map_err(|e| fail("link the volume at", &target, e))?;
        }
    }
    let run_dir = paths::run_dir(&env.work_dir, &launch.container_id);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&run_dir)
        .map_err(|e| fail("create", &run_dir, e))?;
    let json = serde_json::to_vec_pretty(&spec)
        .map_err(|e| format!("cannot encode the task spec: {e}"))?;
    let spec_path = run_dir.join(paths::TASK_SPEC_FILE);
    fs::write(&spec_path, json).map_err(|e| fail("write", &spec_path, e))?;
    cgroup.create().map_err(|e| e.to_string())?;
    let resources = &launch.task.resources;
    track_usage(env, launch, cgroup);
    let limits = isolation::Limits::for_task(
        resources.scalar("cpus").as_f64(),
        resources.scalar("mem").as_f64(),
        &iso.limits,
    );
    isolation::apply(cgroup, &limits, iso)
        .map_err(|e| format!("cannot set the container's limits: {e}"))?;
    let cgroup_dir = cgroup.open_dir().map_err(|e| e.to_string())?;
    let procs = cgroup.open_procs().map_err(|e| e.to_string())?;
    let stdin = fs::File::open("/dev/null").map_err(|e| fail("open", Path::new("/dev/null"), e))?;
    Ok(Prepared { run_dir, stdin, stderr, cgroup_dir, procs })
}

/// Who the task runs as: the command's user, else the framework's; empty means the agent's
/// own user (no switch). A root agent switches to any existing user; another agent can only
/// run tasks as itself.
pub fn resolve_user(agent: &AgentUser, launch: &Launch) -> Result<Option<RunAs>, String> {
    let name = launch
        .task
        .command
        .user
        .as_deref()
        .filter(|u| !u.is_empty())
        .or(Some(launch.framework.user.as_str()).filter(|u| !u.is_empty()));
    let Some(name) = name else { return Ok(None) };
    if !agent.is_root() {
        return if name == agent.name {
            Ok(None)
        } else {
            Err(format!(
                "cannot run the task as user '{name}': the agent runs as '{}' without root privileges",
                agent.name
            ))
        };
    }
    let user = match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => u,
        Ok(None) => return Err(format!("user '{name}' does not exist on this agent")),
        Err(e) => return Err(format!("cannot look up user '{name}': {e}")),
    };
    if user.uid.is_root() {
        return Ok(None);
    }
    let cname = std::ffi::CString::new(name).map_err(|_| format!("bad user name {name:?}"))?;
    let groups = nix::unistd::getgrouplist(&cname, user.gid)
        .map_err(|e| format!("cannot list the groups of user '{name}': {e}"))?;
    Ok(Some(RunAs {
        name: name.to_string(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups: groups.iter().map(|g| g.as_raw()).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_wire::proto::{CommandSpec, FrameworkRef, TaskSpec};

    fn launch(cmd_user: Option<&str>, fw_user: &str) -> Launch {
        Launch {
            container_id: "c".into(),
            agent_id: "a".into(),
            framework: FrameworkRef { id: "f".into(), user: fw_user.into(), ..Default::default() },
            task: TaskSpec {
                task_id: "t".into(),
                command: CommandSpec { user: cmd_user.map(String::from), ..Default::default() },
                ..Default::default()
            },
            executor_container: None,
        }
    }

    #[test]
    fn user_resolution_for_a_non_root_agent() {
        let agent = AgentUser { uid: 1000, name: "alice".into() };
        assert_eq!(resolve_user(&agent, &launch(None, "")), Ok(None));
        assert_eq!(resolve_user(&agent, &launch(None, "alice")), Ok(None));
        assert_eq!(resolve_user(&agent, &launch(Some(""), "alice")), Ok(None));
        let err = resolve_user(&agent, &launch(Some("bob"), "alice")).unwrap_err();
        assert!(err.contains("'bob'") && err.contains("'alice'"), "{err}");
    }

    #[test]
    fn user_resolution_for_a_root_agent() {
        let root = AgentUser { uid: 0, name: "root".into() };
        assert_eq!(resolve_user(&root, &launch(None, "root")), Ok(None));
        let err = resolve_user(&root, &launch(Some("no-such-user-corral"), "")).unwrap_err();
        assert_eq!(err, "user 'no-such-user-corral' does not exist on this agent");
        // The command's user wins over the framework's; `nobody` exists on Debian.
        let nobody = resolve_user(&root, &launch(Some("nobody"), "root")).unwrap().unwrap();
        assert_eq!((nobody.name.as_str(), nobody.uid), ("nobody", 65534));
        assert!(nobody.groups.contains(&nobody.gid));
    }
}
