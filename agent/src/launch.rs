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
    tokio::spawn(monitor(env, launch, rx, events));
    ContainerHandle { control: tx }
}

enum Outcome {
    Failed(String),
    Ended(ExitStatus),
    Limited(Reason, String),
}

async fn monitor(
    env: Arc<LaunchEnv>,
    launch: Launch,
    mut control: mpsc::UnboundedReceiver<Control>,
    events: mpsc::UnboundedSender<Event>,
) {
    let container_id = launch.container_id.clone();
    let cgroup = env.cgroups.child(&container_id);
    let outcome = run_container(&env, &launch, &cgroup, &mut control, &events).await;
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
    let init_pid = init.pid;
    tracing::debug!(container_id, pid = init_pid.as_raw(), path = ?init.path, "task init spawned");

    let mut last: Option<Report> = None;
    // TASK_STARTING only for a task that is not running soon after its init started.
    let starting_after = tokio::time::sleep(STARTING_AFTER);
    tokio::pin!(starting_after);
    let mut announced = false;
    match tokio::net::unix::pipe::Receiver::from_owned_fd(report_pipe) {
        Ok(pipe) => {
            let mut lines = BufReader::new(pipe).lines();
            let mut control_open = true;
            loop {
                tokio::select! {
                    line = lines.next_line() => match line {
                        Ok(Some(l)) => match Report::parse(&l) {
                            Some(Report::Started(pid)) => {
                                announced = true;
                                let _ = events.send(Event::Started { container_id: container_id.clone(), pid });
                            }
                            Some(r) => last = Some(r),
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
                        // The init is our unreaped child until `wait_exit` below: its pid
                        // cannot have been reused.
                        Some(Control::Terminate) => {
                            if let Err(e) = nix::sys::signal::kill(init_pid, nix::sys::signal::Signal::SIGTERM) {
                                tracing::debug!(container_id, "SIGTERM to the task init: {e}");
                            }
                        }
                        Some(Control::ForceKill) => {
                            tracing::info!(container_id, "grace period over: killing the container (cgroup.kill)");
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
    let status = wait_exit(init).await;
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
    // record a restarted agent would read too.
    let last = last.or_else(|| crate::shim::read_exit_status(&run_dir));
    match (last, status) {
        (Some(Report::Ended(s)), _) => Outcome::Ended(s),
        (Some(Report::Failed(m)), _) => Outcome::Failed(m),
        (_, Ok(WaitStatus::Signaled(_, sig, _))) => {
            // Killed (cgroup.kill) before it could report: so was its task.
            Outcome::Ended(ExitStatus::Signal(sig as i32))
        }
        (_, Ok(st)) => Outcome::Failed(format!("the task init ended ({st:?}) without a report")),
        (_, Err(e)) => Outcome::Failed(format!("cannot wait for the task init: {e}")),
    }
}

/// Waits until the init exits (its pidfd turns readable) and reaps it.
async fn wait_exit(init: SpawnedInit) -> Result<WaitStatus, String> {
    crate::sys::pidfd_exited(init.pidfd)
        .await
        .map_err(|e| format!("cannot watch the init's pidfd: {e}"))?;
    nix::sys::wait::waitpid(init.pid, None).map_err(|e| e.to_string())
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
                return Ok((SpawnedInit { pid, pidfd, path }, report_read, p.run_dir));
            }
            Ok(None) => clear_container(cgroup),
            Err(e) => return Err(format!("cannot start the task init: {e}")),
        }
    }
    let init = crate::sys::spawn_init(&req)
        .map_err(|e| format!("cannot start the task init {}: {e}", env.launcher.display()))?;
    Ok((init, report_read, p.run_dir))
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

/// Resolves the user and creates sandbox, run directory and cgroup. Blocking.
fn prepare(env: &LaunchEnv, launch: &Launch, cgroup: &Cgroup) -> Result<Prepared, String> {
    let run_as = resolve_user(&env.agent_user, launch)?;
    let group = launch
        .task
        .group
        .as_ref()
        .zip(launch.executor_container.as_deref())
        .map(|(g, c)| (g.executor_id.as_str(), c));
    let (sandbox, logs) = paths::task_dirs(
        &env.work_dir,
        &launch.agent_id,
        &launch.framework.id,
        &launch.task.task_id,
        &launch.container_id,
        group,
    );
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
