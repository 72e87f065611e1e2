//! The per-task init (`corral __task-init RUN_DIR`), like containerd's shim: the process
//! between the agent and one task. It owns starting the task, forwarding kill signals to it,
//! and recording how it ended; it outlives an agent that dies, so a restarted agent can still
//! learn the task's end.
//!
//! Protocol with the agent:
//! - The agent spawns it straight into the task's cgroup, in a new session, with the signals
//!   of [`crate::sys::init_signals`] blocked (`sys::spawn_init`); stdin is `/dev/null`, stdout
//!   is a pipe to the agent (the report channel), stderr is the sandbox's `stderr` file (so
//!   its complaints before the task starts reach the user). Its environment is empty. It gets
//!   no parent-death signal.
//! - It makes the task's output pipes and keeps read ends of them, and of its report pipe, at
//!   fixed descriptors ([`REPORT_HELD_FD`], [`STDOUT_HELD_FD`], [`STDERR_HELD_FD`]): the agent
//!   takes copies with `pidfd_getfd` (see `output`), and while no agent runs the pipes keep a
//!   reader, so the task's output and the init's reports wait there for the next agent.
//! - With [`InitIsolation::namespaces`] it is pid 1 of new pid, mount, uts and ipc namespaces
//!   (and of a new network namespace when asked). Before the task starts it makes every mount
//!   private, mounts a fresh `/proc` (so the task sees only its own processes), bind-mounts
//!   the sandbox's `tmp` over `/tmp`, sets the hostname and brings loopback up. As pid 1 it
//!   reaps every orphan. Without namespaces it is a child subreaper instead.
//! - `argv`: `[launcher, "__task-init", RUN_DIR]`. `RUN_DIR/task.json` is the [`ShimSpec`]:
//!   program, argv, environment, sandbox, and the uid/gid/groups to run as (resolved by the
//!   agent, so the init needs no user database).
//! - It reports one line per event on stdout ([`Report`]): `started <pid>`, then
//!   `exited <code>` or `signaled <signo>`; or `failed <message>` if the task could not start.
//!   The final line is also written atomically (temp file, fsync, rename, fsync of the
//!   directory) to `RUN_DIR/exit_status` before it is sent. SIGPIPE is ignored.
//! - Then it does not exit: it lingers, reaping, holding the pipes, until the agent has
//!   killed what is left of the container, moved the last byte of output and removed the
//!   container with `cgroup.kill`. So a task that ends while no agent runs loses neither its
//!   exit status nor its output.
//! - SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to it while the task runs are
//!   forwarded: to every process of the container's pid namespace, or without one to the
//!   task's process group.
//!
//! The task: its own process group, cwd the sandbox, stdin `/dev/null`, stdout/stderr the
//! write ends of the output pipes, the spec's environment only, default signal dispositions
//! and an empty signal mask (restored explicitly: std does not), no descriptor but 0, 1 and 2,
//! the bounding set cut down to [`DEFAULT_CAPABILITIES`] (and no capabilities at all unless it
//! runs as root).
#![forbid(unsafe_code)]

use std::fs;
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::core::{ExitStatus, Launch};
use crate::paths::{EXIT_STATUS_FILE, TASK_SPEC_FILE};

/// The `PATH` a task gets when its environment names none (Mesos' default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the per-task init runs; written by the agent to `RUN_DIR/task.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShimSpec {
    pub sandbox: PathBuf,
    /// Where `stdout` and `stderr` are, when not in the sandbox (a task group's task).
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    /// The program to exec (looked up in the spec's `PATH` when it has no `/`).
    pub program: String,
    /// The full argv, `argv[0]` included.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub run_as: Option<RunAs>,
    #[serde(default)]
    pub isolation: InitIsolation,
}

/// What the init sets up around the task.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InitIsolation {
    /// The init is pid 1 of its own pid, mount, uts and ipc namespaces.
    pub namespaces: bool,
    /// Hostname to set in the uts namespace.
    pub hostname: Option<String>,
    /// A fresh network namespace: bring `lo` up.
    pub loopback: bool,
    /// Directory to bind-mount over `/tmp`.
    pub tmp: Option<PathBuf>,
    /// Persistent volumes to bind-mount into the sandbox.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
}

/// One persistent volume in a task's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// The volume's directory on the agent.
    pub source: PathBuf,
    /// Where the task sees it (inside the sandbox).
    pub target: PathBuf,
    pub read_only: bool,
}

/// The capabilities a task keeps in its bounding set (and holds, if it runs as root): the
/// same default set as Docker's. Everything else, `CAP_SYS_ADMIN` first, is gone for good.
pub const DEFAULT_CAPABILITIES: &[u32] = &[
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    8,  // CAP_SETPCAP
    10, // CAP_NET_BIND_SERVICE
    13, // CAP_NET_RAW
    18, // CAP_SYS_CHROOT
    27, // CAP_MKNOD
    29, // CAP_AUDIT_WRITE
    31, // CAP_SETFCAP
];

/// [`DEFAULT_CAPABILITIES`] as a bit mask.
pub fn default_capability_mask() -> u64 {
    DEFAULT_CAPABILITIES.iter().fold(0, |m, c| m | (1u64 << c))
}

/// A resolved user to run the task as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl ShimSpec {
    /// The spec for `launch`: `sh -c VALUE` when the command is a shell command, else `VALUE`
    /// with `arguments` as the whole argv (Mesos semantics). The environment is `PATH` (unless
    /// the task sets it), the task's own variables, then the `MESOS_*` ones.
    pub fn new(
        launch: &Launch,
        sandbox: &Path,
        log_dir: &Path,
        run_as: Option<RunAs>,
    ) -> Result<ShimSpec, String> {
        let cmd = &launch.task.command;
        let value = cmd.value.clone().unwrap_or_default();
        let (program, argv) = if cmd.shell {
            if value.is_empty() {
                return Err("shell command has no value".into());
            }
            ("/bin/sh".to_string(), vec!["sh".to_string(), "-c".to_string(), value])
        } else {
            if value.is_empty() {
                return Err("command has no value to execute".into());
            }
            let argv =
                if cmd.arguments.is_empty() { vec![value.clone()] } else { cmd.arguments.clone() };
            (value, argv)
        };
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: &str| {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        };
        set("PATH", DEFAULT_PATH);
        for (k, v) in &cmd.environment {
            set(k, v);
        }
        let sandbox_str = sandbox.to_string_lossy();
        set("MESOS_SANDBOX", &sandbox_str);
        set("MESOS_DIRECTORY", &sandbox_str);
        set("MESOS_FRAMEWORK_ID", &launch.framework.id);
        set("MESOS_TASK_ID", &launch.task.task_id);
        let executor_id = launch.task.group.as_ref().map(|g| g.executor_id.as_str());
        set("MESOS_EXECUTOR_ID", executor_id.unwrap_or(&launch.task.task_id));
        set("MESOS_AGENT_ID", &launch.agent_id);
        set("MESOS_SLAVE_ID", &launch.agent_id);
        set("MESOS_CONTAINER_ID", &launch.container_id);
        if let Some(u) = &run_as {
            set("USER", &u.name);
        }
        Ok(ShimSpec {
            sandbox: sandbox.to_path_buf(),
            log_dir: (log_dir != sandbox).then(|| log_dir.to_path_buf()),
            program,
            argv,
            env,
            run_as,
            isolation: InitIsolation::default(),
        })
    }
}

/// One line of the init's report (and the content of `exit_status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Started(u32),
    Failed(String),
    Ended(ExitStatus),
}

impl Report {
    pub fn parse(line: &str) -> Option<Report> {
        let (word, rest) = line.trim_end().split_once(' ')?;
        match word {
            "started" => rest.parse().ok().map(Report::Started),
            "failed" => Some(Report::Failed(rest.to_string())),
            "exited" => rest.parse().ok().map(|c| Report::Ended(ExitStatus::Code(c))),
            "signaled" => rest.parse().ok().map(|s| Report::Ended(ExitStatus::Signal(s))),
            _ => None,
        }
    }

    /// The line, newline included; a message is kept on one line.
    pub fn line(&self) -> String {
        match self {
            Report::Started(pid) => format!("started {pid}\n"),
            Report::Failed(msg) => format!("failed {}\n", msg.replace(['\n', '\r'], " ")),
            Report::Ended(ExitStatus::Code(c)) => format!("exited {c}\n"),
            Report::Ended(ExitStatus::Signal(s)) => format!("signaled {s}\n"),
        }
    }
}

/// Where the init keeps a read end of its report pipe (its stdout), so that the pipe keeps a
/// reader while no agent runs and a restarted agent can take it (`pidfd_getfd`).
pub const REPORT_HELD_FD: i32 = 100;
/// Where the init keeps the read end of the task's stdout pipe.
pub const STDOUT_HELD_FD: i32 = 101;
/// Where the init keeps the read end of the task's stderr pipe.
pub const STDERR_HELD_FD: i32 = 102;
/// What the init asks of an output pipe's size: how much a task may write while no agent
/// moves it before the task blocks.
const OUTPUT_PIPE_SIZE: i32 = 1 << 20;

/// Reads what a container's init recorded about the task's end, if anything.
pub fn read_exit_status(run_dir: &Path) -> Option<Report> {
    let text = fs::read_to_string(run_dir.join(EXIT_STATUS_FILE)).ok()?;
    Report::parse(text.lines().next()?)
}

/// The per-task init's `main`. See the module doc for its protocol.
pub fn task_init_main() -> ! {
    run_init(std::env::args_os().nth(2).map(PathBuf::from))
}

/// The per-task init for `run_dir`, in a process that is already where the init belongs (its
/// cgroup and namespaces; stdio set up): `corral __task-init`, or the child the launcher forks.
pub fn run_init(run_dir: Option<PathBuf>) -> ! {
    // First, before this process opens anything of its own.
    let closed = crate::sys::close_inherited_fds();
    crate::sys::ignore_sigpipe();
    if let Err(e) = closed {
        eprintln!("corral task init: cannot close inherited descriptors: {e}");
    }
    // Held open: the container's mounts may hide the run directory's path (a work dir under
    // /tmp), and the exit status is written through the descriptor.
    let run_dir_fd = run_dir.as_ref().map(fs::File::open);
    // Descriptors that must stay open until this process is killed.
    let mut held: Vec<std::os::fd::OwnedFd> = Vec::new();
    let final_report = match (&run_dir, &run_dir_fd) {
        (Some(dir), Some(Ok(_))) => run_task(dir, &mut held),
        (Some(dir), Some(Err(e))) => Report::Failed(format!("cannot open {}: {e}", dir.display())),
        _ => Report::Failed("task init needs the run directory as its second argument".into()),
    };
    if let (Some(dir), Some(Ok(fd))) = (&run_dir, &run_dir_fd) {
        let via_fd = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        if let Err(e) = write_atomically(&via_fd, EXIT_STATUS_FILE, &final_report.line()) {
            eprintln!("corral task init: cannot record the exit status in {}: {e}", dir.display());
        }
    }
    report(&final_report);
    linger(held)
}

/// After the task: the init stays, holding the pipes, until the agent has moved every byte of
/// output and removes the container (`cgroup.kill`). If no agent runs meanwhile, the output
/// and the report wait in the pipes for the next one. It only reaps what ends.
fn linger(held: Vec<std::os::fd::OwnedFd>) -> ! {
    let signals = crate::sys::init_signals();
    let _ = signals.thread_block();
    loop {
        if let Ok(Signal::SIGCHLD) = signals.wait() {
            while let Ok(st) = nix::sys::wait::waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                if st == WaitStatus::StillAlive {
                    break;
                }
            }
        }
        // Keep `held` alive for as long as the loop runs.
        std::hint::black_box(&held);
    }
}

/// Makes the task's output pipe: the write end for the task, the read end held at `at`.
fn output_pipe(at: i32, held: &mut Vec<std::os::fd::OwnedFd>) -> Result<Stdio, Report> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Report::Failed(format!("cannot make an output pipe: {e}")))?;
    // Best effort: a smaller pipe only means a task blocks sooner while no agent runs.
    let _ = nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE_SIZE));
    let r = crate::sys::hold_fd_at(r, at)
        .map_err(|e| Report::Failed(format!("cannot hold an output pipe: {e}")))?;
    held.push(r);
    Ok(Stdio::from(w))
}

/// Writes a report line to the agent; a vanished agent is not an error.
fn report(r: &Report) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(r.line().as_bytes());
    let _ = out.flush();
}

/// Starts the task, forwards signals until it ends, and returns the final report.
fn run_task(run_dir: &Path, held: &mut Vec<std::os::fd::OwnedFd>) -> Report {
    let signals = crate::sys::init_signals();
    // Normally already blocked by the agent; blocking again makes the init self-sufficient.
    if let Err(e) = signals.thread_block() {
        return Report::Failed(format!("cannot block signals: {e}"));
    }
    let spec_path = run_dir.join(TASK_SPEC_FILE);
    let spec: ShimSpec = match fs::read(&spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => return Report::Failed(format!("cannot read {}: {e}", spec_path.display())),
    };
    // A reader for the report pipe that lives as long as this init (opening the pipe
    // through /proc gives a read end of the same pipe).
    match fs::File::open("/proc/self/fd/1") {
        Ok(f) => match crate::sys::hold_fd_at(f.into(), REPORT_HELD_FD) {
            Ok(fd) => held.push(fd),
            Err(e) => eprintln!("corral task init: cannot hold the report pipe: {e}"),
        },
        Err(e) => eprintln!("corral task init: cannot open the report pipe for reading: {e}"),
    }
    let (stdout, stderr) =
        match (output_pipe(STDOUT_HELD_FD, held), output_pipe(STDERR_HELD_FD, held)) {
            (Ok(o), Ok(e)) => (o, e),
            (Err(r), _) | (_, Err(r)) => return r,
        };
    let iso = &spec.isolation;
    if iso.namespaces {
        if let Err(e) = crate::sys::setup_container_namespaces(
            iso.hostname.as_deref(),
            iso.tmp.as_deref().map(|t| (t, spec.sandbox.as_path())),
            iso.loopback,
            &iso.volumes,
        ) {
            return Report::Failed(format!("cannot set up the container: {e}"));
        }
    } else if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("corral task init: cannot become a subreaper: {e}");
    }
    let Some(argv0) = spec.argv.first() else {
        return Report::Failed("empty argv".into());
    };
    let mut cmd = std::process::Command::new(&spec.program);
    cmd.arg0(argv0)
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.sandbox)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    let ids = spec.run_as.as_ref().map(|u| (u.uid, u.gid, u.groups.clone()));
    // Only a root init can (and needs to) drop capabilities.
    let caps = nix::unistd::geteuid()
        .is_root()
        .then(|| crate::sys::CapDrop::new(default_capability_mask()));
    crate::sys::prepare_task_exec(&mut cmd, ids, caps);
    let spawned = cmd.spawn();
    // The write ends of the output pipes must live only in the task, or they never end.
    drop(cmd);
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let who =
                spec.run_as.as_ref().map(|u| format!(" as user '{}'", u.name)).unwrap_or_default();
            return Report::Failed(format!("cannot start '{}'{who}: {e}", spec.program));
        }
    };
    let pid = Pid::from_raw(child.id() as i32);
    // From here on the task's stderr file is written only by the agent (at its own offset):
    // the init's complaints go nowhere rather than between the task's bytes.
    if let Ok(null) = fs::File::open("/dev/null")
        && let Ok(fd) = crate::sys::hold_fd_at(null.into(), 2)
    {
        held.push(fd);
    }
    report(&Report::Started(child.id()));
    loop {
        let sig = match signals.wait() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("corral task init: sigwait: {e}");
                continue;
            }
        };
        if sig != Signal::SIGCHLD {
            // ESRCH just means nothing is left to signal.
            let _ = if iso.namespaces {
                // Every process of the container's pid namespace but this init.
                nix::sys::signal::kill(Pid::from_raw(-1), sig)
            } else {
                // The task leads its own process group.
                nix::sys::signal::killpg(pid, sig)
            };
            continue;
        }
        // Reap everything that has ended: the task, and orphans that were reparented here.
        loop {
            match nix::sys::wait::waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) if p == pid => {
                    return Report::Ended(ExitStatus::Code(code));
                }
                Ok(WaitStatus::Signaled(p, s, _)) if p == pid => {
                    return Report::Ended(ExitStatus::Signal(s as i32));
                }
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
                Ok(_) => {}
                Err(e) => return Report::Failed(format!("cannot wait for the task: {e}")),
            }
        }
    }
}

/// Writes `name` in `dir` so that a reader sees either nothing or the whole content, even
/// across a crash: temp file, fsync, rename, fsync of the directory.
pub fn write_atomically(dir: &Path, name: &str, content: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_wire::proto::{CommandSpec, FrameworkRef, TaskSpec};

    fn launch(command: CommandSpec) -> Launch {
        Launch {
            container_id: "c1".into(),
            agent_id: "a1".into(),
            framework: FrameworkRef { id: "f1".into(), ..Default::default() },
            task: TaskSpec { task_id: "t1".into(), command, ..Default::default() },
            executor_container: None,
        }
    }

    fn env_of<'a>(spec: &'a ShimSpec, key: &str) -> Option<&'a str> {
        spec.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn shell_commands_run_under_sh() {
        let l = launch(CommandSpec {
            shell: true,
            value: Some("echo hi".into()),
            ..Default::default()
        });
        let spec = ShimSpec::new(&l, Path::new("/sb"), Path::new("/sb"), None).unwrap();
        assert_eq!(spec.program, "/bin/sh");
        assert_eq!(spec.argv, vec!["sh", "-c", "echo hi"]);
        assert_eq!(env_of(&spec, "MESOS_SANDBOX"), Some("/sb"));
        assert_eq!(env_of(&spec, "MESOS_TASK_ID"), Some("t1"));
        assert_eq!(env_of(&spec, "MESOS_FRAMEWORK_ID"), Some("f1"));
        assert_eq!(env_of(&spec, "MESOS_AGENT_ID"), Some("a1"));
        assert_eq!(env_of(&spec, "MESOS_CONTAINER_ID"), Some("c1"));
        assert_eq!(env_of(&spec, "PATH"), Some(DEFAULT_PATH));
    }

    #[test]
    fn plain_commands_take_arguments_as_the_whole_argv() {
        let cmd = CommandSpec {
            shell: false,
            value: Some("/bin/echo".into()),
            arguments: vec!["echo".into(), "a".into()],
            environment: vec![
                ("PATH".into(), "/opt/bin".into()),
                ("MESOS_TASK_ID".into(), "x".into()),
            ],
            ..Default::default()
        };
        let spec = ShimSpec::new(&launch(cmd), Path::new("/sb"), Path::new("/sb"), None).unwrap();
        assert_eq!(spec.program, "/bin/echo");
        assert_eq!(spec.argv, vec!["echo", "a"]);
        assert_eq!(env_of(&spec, "PATH"), Some("/opt/bin"), "the task's PATH wins");
        assert_eq!(env_of(&spec, "MESOS_TASK_ID"), Some("t1"), "the agent's MESOS_* win");
        assert_eq!(spec.env.iter().filter(|(k, _)| k == "PATH").count(), 1);
        let cmd = CommandSpec { shell: false, value: Some("true".into()), ..Default::default() };
        assert_eq!(
            ShimSpec::new(&launch(cmd), Path::new("/sb"), Path::new("/sb"), None).unwrap().argv,
            vec!["true"]
        );
        assert!(
            ShimSpec::new(
                &launch(CommandSpec::default()),
                Path::new("/sb"),
                Path::new("/sb"),
                None
            )
            .is_err()
        );
        let shell_empty = CommandSpec { shell: true, ..Default::default() };
        assert!(
            ShimSpec::new(&launch(shell_empty), Path::new("/sb"), Path::new("/sb"), None).is_err()
        );
    }

    #[test]
    fn spec_round_trips_through_json() {
        let l = launch(CommandSpec { shell: true, value: Some("x".into()), ..Default::default() });
        let run_as = RunAs { name: "nobody".into(), uid: 65534, gid: 65534, groups: vec![65534] };
        let spec = ShimSpec::new(&l, Path::new("/sb"), Path::new("/sb"), Some(run_as)).unwrap();
        assert_eq!(env_of(&spec, "USER"), Some("nobody"));
        let back: ShimSpec = serde_json::from_slice(&serde_json::to_vec(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn report_lines_round_trip() {
        for r in [
            Report::Started(42),
            Report::Failed("cannot start 'x': No such file".into()),
            Report::Ended(ExitStatus::Code(3)),
            Report::Ended(ExitStatus::Signal(15)),
        ] {
            assert_eq!(Report::parse(&r.line()), Some(r.clone()));
        }
        assert_eq!(Report::Failed("a\nb".into()).line(), "failed a b\n");
        assert_eq!(Report::parse("bogus 1"), None);
        assert_eq!(Report::parse("started x"), None);
        assert_eq!(Report::parse("exited"), None);
    }

    #[test]
    fn exit_status_is_written_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_exit_status(dir.path()), None);
        write_atomically(dir.path(), EXIT_STATUS_FILE, &Report::Ended(ExitStatus::Code(7)).line())
            .unwrap();
        assert_eq!(read_exit_status(dir.path()), Some(Report::Ended(ExitStatus::Code(7))));
        let names: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![EXIT_STATUS_FILE], "no temp file left behind");
    }
}
