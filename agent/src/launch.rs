//! Starting and watching one container: the agent's side of the per-task init protocol (see
//! `shim`). For each [`Launch`] the shell starts a monitor task that
//!
//! 1. resolves the user, creates the sandbox (`stdout`, `stderr`, owned by the task's user),
//!    the run directory with `task.json`, and the task's cgroup (blocking work, off the
//!    runtime);
//! 2. spawns `LAUNCHER __task-init RUN_DIR` straight into the cgroup, then reports
//!    `Launched`;
//! 3. relays the init's report lines (`Started`) and the shell's kill requests (SIGTERM to
//!    the init, which forwards it; `cgroup.kill`);
//! 4. when the init is gone: kills leftovers, waits for the cgroup to be empty, removes it, and
//!    only then reports `Exited` or `LaunchFailed`, so a terminal status update always means
//!    "nothing of this task runs any more".
#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::mpsc;

use crate::cgroup::Cgroup;
use crate::core::{Event, ExitStatus, Launch};
use crate::host::AgentUser;
use crate::paths;
use crate::shim::{Report, RunAs, ShimSpec};

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
    let cg = cgroup.clone();
    match tokio::task::spawn_blocking(move || cg.destroy(DESTROY_TIMEOUT)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(container_id, "cannot clean up the container's cgroup: {e}"),
        Err(e) => tracing::error!(container_id, "cgroup cleanup panicked: {e}"),
    }
    let event = match outcome {
        Outcome::Failed(message) => Event::LaunchFailed { container_id, message },
        Outcome::Ended(status) => Event::Exited { container_id, status },
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
    let prepared = {
        let (env, launch, cgroup) = (env.clone(), launch.clone(), cgroup.clone());
        tokio::task::spawn_blocking(move || prepare(&env, &launch, &cgroup)).await
    };
    let prepared = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(message)) => return Outcome::Failed(message),
        Err(e) => return Outcome::Failed(format!("container preparation panicked: {e}")),
    };
    if control.try_recv().is_ok() {
        return Outcome::Failed("task killed before it started".into());
    }
    let mut cmd = tokio::process::Command::new(&env.launcher);
    cmd.arg(crate::TASK_INIT_ARG)
        .arg(&prepared.run_dir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(prepared.stderr);
    let mut child = match crate::sys::spawn_in_cgroup(cmd, prepared.procs) {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed(format!(
                "cannot start the task init {}: {e}",
                env.launcher.display()
            ));
        }
    };
    let init_pid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    tracing::debug!(container_id, ?init_pid, "task init spawned");
    let _ = events.send(Event::Launched { container_id: container_id.clone() });

    let mut last: Option<Report> = None;
    if let Some(stdout) = child.stdout.take() {
        let mut lines = BufReader::new(stdout).lines();
        let mut control_open = true;
        loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(l)) => match Report::parse(&l) {
                        Some(Report::Started(pid)) => {
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
                c = control.recv(), if control_open => match c {
                    // The init is our unreaped child until `wait` below: its pid cannot have
                    // been reused.
                    Some(Control::Terminate) => {
                        if let Some(pid) = init_pid
                            && let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
                        {
                            tracing::debug!(container_id, "SIGTERM to the task init: {e}");
                        }
                    }
                    Some(Control::ForceKill) => {
                        tracing::info!(container_id, "grace period over: killing the container");
                        if let Err(e) = cgroup.kill() {
                            tracing::warn!(container_id, "{e}");
                        }
                    }
                    None => control_open = false,
                },
            }
        }
    }
    let status = child.wait().await;
    // The pipe can lose the last line only if the init died writing it; the file is the
    // record a restarted agent would read too.
    let last = last.or_else(|| crate::shim::read_exit_status(&prepared.run_dir));
    match (last, status) {
        (Some(Report::Ended(s)), _) => Outcome::Ended(s),
        (Some(Report::Failed(m)), _) => Outcome::Failed(m),
        (_, Ok(st)) => match st.signal() {
            // Killed (cgroup.kill) before it could report: so was its task.
            Some(sig) => Outcome::Ended(ExitStatus::Signal(sig)),
            None => Outcome::Failed(format!("the task init ended ({st}) without a report")),
        },
        (_, Err(e)) => Outcome::Failed(format!("cannot wait for the task init: {e}")),
    }
}

/// What `prepare` made.
struct Prepared {
    run_dir: PathBuf,
    /// The sandbox's `stderr`, for the init's own complaints.
    stderr: fs::File,
    /// The container cgroup's `cgroup.procs`, open for the spawn.
    procs: fs::File,
}

/// Resolves the user and creates sandbox, run directory and cgroup. Blocking.
fn prepare(env: &LaunchEnv, launch: &Launch, cgroup: &Cgroup) -> Result<Prepared, String> {
    let run_as = resolve_user(&env.agent_user, launch)?;
    let sandbox = paths::sandbox(
        &env.work_dir,
        &launch.agent_id,
        &launch.framework.id,
        &launch.task.task_id,
        &launch.container_id,
    );
    let spec = ShimSpec::new(launch, &sandbox, run_as.clone())?;
    let fail =
        |what: &str, p: &Path, e: std::io::Error| format!("cannot {what} {}: {e}", p.display());
    fs::create_dir_all(&sandbox).map_err(|e| fail("create the sandbox", &sandbox, e))?;
    let mut stderr = None;
    for name in ["stdout", "stderr"] {
        let p = sandbox.join(name);
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(&p)
            .map_err(|e| fail("create", &p, e))?;
        stderr = Some(f);
    }
    let stderr = stderr.ok_or("no stderr file")?;
    if let Some(u) = &run_as {
        let (uid, gid) =
            (Some(nix::unistd::Uid::from_raw(u.uid)), Some(nix::unistd::Gid::from_raw(u.gid)));
        for p in [sandbox.clone(), sandbox.join("stdout"), sandbox.join("stderr")] {
            nix::unistd::chown(&p, uid, gid)
                .map_err(|e| format!("cannot give {} to user '{}': {e}", p.display(), u.name))?;
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
    let procs = cgroup.open_procs().map_err(|e| e.to_string())?;
    Ok(Prepared { run_dir, stderr, procs })
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
