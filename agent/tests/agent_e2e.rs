//! End-to-end tests: the real agent (in-process, `corral_agent::run_until`) against a scripted
//! fake master (a quinn server with `corral_wire::tls::write_cluster` material), running real
//! tasks in real cgroups.
//!
//! Why `harness = false` and a `main` of our own: the agent starts every task through the
//! per-task init, which it execs as `LAUNCHER __task-init RUN_DIR`. In production LAUNCHER is
//! the `corral` binary, whose `main` hands `__task-init` to `corral_agent::task_init_main()`.
//! A libtest binary owns its `main` and so cannot play that role, and a helper `[[bin]]` would
//! ship a test binary with the library (or make this crate depend on tools/). So this file's
//! `main` first checks for `__task-init` and becomes the init; otherwise it runs the cases,
//! passing its own path (`current_exe`) as `--launcher`. The init path exercised here is
//! exactly the production one.
//!
//! The cases need root and a cgroup2 mount (they create cgroups and switch users); without
//! them every case is reported as skipped, with the reason. Each case stops its agent and
//! checks that no container cgroup (hence no task process) is left; a failing case still stops
//! its agent before the next starts. Arguments that do not start with `-` filter cases by
//! name. The closing line is `N passed, N failed[, N skipped]`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser as _;
use corral_agent::{AgentArgs, AgentError};
use corral_wire::frame::{DEFAULT_MAX_FRAME, FrameReader, encode_master};
use corral_wire::mesos::v1::TaskState;
use corral_wire::mesos::v1::task_status::{Reason, Source};
use corral_wire::proto::{
    AgentMessage, CommandSpec, FrameworkRef, MasterMessage, Registration, RunTask, StatusUpdate,
    TaskSpec,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinHandle;

type CaseFn = fn() -> Pin<Box<dyn Future<Output = ()>>>;

const CASES: &[(&str, CaseFn)] = &[
    ("exit_status_sandbox_and_http", || Box::pin(exit_status_sandbox_and_http())),
    ("kill_ends_in_task_killed_within_the_grace_period", || Box::pin(kill_within_grace())),
    ("kill_escalates_to_cgroup_kill_after_the_grace_period", || Box::pin(kill_escalates())),
    ("unacked_update_is_resent_and_reregistration_resends_heads", || {
        Box::pin(resend_and_reregister())
    }),
    ("users_arguments_and_launch_failures", || Box::pin(users_and_failures())),
    ("stopping_the_agent_kills_its_tasks", || Box::pin(stop_kills_tasks())),
    ("refused_agent_stops_with_an_error", || Box::pin(refused())),
    ("invalid_frame_drops_the_connection_and_tasks_survive", || Box::pin(invalid_frame())),
    ("sigterm_stops_an_agent_process_cleanly", || Box::pin(sigterm_stops_agent_process())),
    ("task_init_outlives_a_killed_agent", || Box::pin(init_outlives_agent())),
    ("a_silent_master_is_left_and_the_agent_reregisters", || Box::pin(silent_master())),
    ("inits_are_forked_by_the_launcher_which_is_replaced_when_it_dies", || {
        Box::pin(launcher_forks())
    }),
];

/// `argv[1]` that makes this binary run an agent process (`corral_agent::run`, with its own
/// signal handling) from the remaining flags.
const AGENT_ARG: &str = "__agent";

/// The positional arguments libtest would take as name filters: flags and the values of
/// libtest's flags that take one (`--test-threads 2`, `--skip NAME`, ...) are not filters.
fn name_filters(args: &[String]) -> Vec<&str> {
    const WITH_VALUE: &[&str] =
        &["--test-threads", "--skip", "--format", "--color", "--logfile", "-Z", "--shuffle-seed"];
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if WITH_VALUE.contains(&a) {
            i += 2;
            continue;
        }
        if !a.starts_with('-') {
            out.push(a);
        }
        i += 1;
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(corral_agent::LAUNCHER_ARG) {
        corral_agent::launcher_main();
    }
    if args.get(1).map(String::as_str) == Some(corral_agent::TASK_INIT_ARG) {
        corral_agent::task_init_main();
    }
    if args.get(1).map(String::as_str) == Some(AGENT_ARG) {
        return agent_process_main(&args[2..]);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "corral_agent=warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let filters = name_filters(&args[1..]);
    let selected: Vec<_> = CASES
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f)))
        .collect();
    if let Some(why) = skip_reason() {
        for (name, _) in &selected {
            println!("SKIP {name}: {why}");
        }
        println!("0 passed, 0 failed, {} skipped", selected.len());
        return ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in selected {
        println!("test {name} ...");
        let started = now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(case())));
        // A failed case may have left its agent running: stop it before the next case.
        rt.block_on(reap_abandoned_agents());
        match result {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.1?})", started.elapsed());
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn agent_process_main(flags: &[String]) -> ExitCode {
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).try_init();
    let argv = std::iter::once("agent".to_string()).chain(flags.iter().cloned());
    let args = Cli::try_parse_from(argv).expect("valid agent flags").agent;
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match rt.block_on(corral_agent::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root to create cgroups and switch users".into());
    }
    match corral_agent::cgroup::find_root(None) {
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}

const WAIT: Duration = Duration::from_secs(15);

/// The test's clock: it times real processes (kill latency, resend gaps), like a shell does.
#[allow(clippy::disallowed_methods)] // this test's single clock source
fn now() -> Instant {
    Instant::now()
}

// ---------------------------------------------------------------------------------------------
// The fake master.

struct FakeMaster {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    tls: tempfile::TempDir,
}

impl FakeMaster {
    fn start() -> FakeMaster {
        let tls = tempfile::tempdir().expect("tls tempdir");
        corral_wire::tls::write_cluster(tls.path(), &["localhost".into(), "127.0.0.1".into()])
            .expect("cluster tls material");
        let server = corral_wire::tls::server_config(&corral_wire::tls::TlsFiles::in_dir(
            tls.path(),
            "master",
        ))
        .expect("server config");
        let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().expect("addr"))
            .expect("quic server");
        let addr = endpoint.local_addr().expect("local addr");
        FakeMaster { endpoint, addr, tls }
    }

    /// Accepts the agent's next connection and its `Register`.
    async fn accept(&self) -> (Session, Registration) {
        let incoming = tokio::time::timeout(WAIT, self.endpoint.accept())
            .await
            .expect("the agent connects in time")
            .expect("endpoint open");
        let conn = incoming.await.expect("handshake");
        let (send, recv) = conn.accept_bi().await.expect("the agent opens a stream");
        let mut s = Session { conn, send, recv, frames: FrameReader::new(DEFAULT_MAX_FRAME) };
        let first = s.next().await;
        let AgentMessage::Register(registration) = first else {
            panic!("the first message must be Register, got {first:?}");
        };
        (s, registration)
    }
}

struct Session {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    frames: FrameReader,
}

impl Session {
    async fn send(&mut self, m: MasterMessage) {
        self.send.write_all(&encode_master(&m)).await.expect("send to the agent");
    }

    /// The next message, usage reports skipped (they come every second; the telemetry
    /// tests check them).
    async fn next(&mut self) -> AgentMessage {
        loop {
            let m = tokio::time::timeout(WAIT, self.frames.next_agent(&mut self.recv))
                .await
                .expect("the agent sends in time")
                .expect("a valid frame")
                .expect("the stream stays open");
            if !matches!(m, AgentMessage::Usage(_)) {
                return m;
            }
        }
    }

    /// The next status update (pongs are skipped).
    async fn update(&mut self) -> StatusUpdate {
        loop {
            match self.next().await {
                AgentMessage::StatusUpdate(u) => return u,
                AgentMessage::Pong { .. } => continue,
                other => panic!("expected a status update, got {other:?}"),
            }
        }
    }

    async fn ack(&mut self, u: &StatusUpdate) {
        self.send(MasterMessage::StatusAck {
            framework_id: u.framework_id.clone(),
            task_id: u.task_id.clone(),
            uuid: u.uuid,
        })
        .await;
    }

    /// The next update, which must be for `task_id` in `state`; acknowledged. A TASK_STARTING
    /// before it is skipped (acknowledged): the agent sends one only for a launch that takes
    /// longer than 50 ms, which a loaded machine can make any launch.
    async fn expect(&mut self, task_id: &str, state: TaskState) -> StatusUpdate {
        loop {
            let u = self.update().await;
            assert_eq!(u.task_id, task_id, "{u:?}");
            self.ack(&u).await;
            if u.task_state() == Some(TaskState::TaskStarting) && state != TaskState::TaskStarting {
                continue;
            }
            assert_eq!(u.task_state(), Some(state), "{u:?}");
            return u;
        }
    }
}

/// Accepts the agent and registers it as `agent-1`.
async fn register(master: &FakeMaster) -> (Session, Registration) {
    let (mut session, registration) = master.accept().await;
    session
        .send(MasterMessage::Registered {
            agent_id: "agent-1".into(),
            master_id: "master-1".into(),
            ping_interval_ms: 1000,
        })
        .await;
    (session, registration)
}

fn framework() -> FrameworkRef {
    FrameworkRef { id: "fw-1".into(), name: "e2e".into(), user: String::new(), role: "*".into() }
}

fn shell_task(task_id: &str, command: &str) -> MasterMessage {
    task(task_id, CommandSpec { shell: true, value: Some(command.into()), ..Default::default() })
}

fn task(task_id: &str, command: CommandSpec) -> MasterMessage {
    MasterMessage::RunTask(Box::new(RunTask {
        framework: framework(),
        task: TaskSpec {
            task_id: task_id.into(),
            name: format!("task {task_id}"),
            resources: corral_wire::resources::Resources::parse("cpus:0.1;mem:32")
                .expect("resources"),
            command,
            kill_grace_period_ns: None,
            group: None,
            executor: None,
            data: None,
        },
    }))
}

fn kill(task_id: &str, grace: Duration) -> MasterMessage {
    MasterMessage::KillTask {
        framework_id: "fw-1".into(),
        task_id: task_id.into(),
        grace_period_ns: Some(grace.as_nanos() as u64),
    }
}

// ---------------------------------------------------------------------------------------------
// The agent under test.

/// Agents whose case panicked before stopping them: (run's handle, its work dir).
type Abandoned = (JoinHandle<Result<(), AgentError>>, tempfile::TempDir);
static ABANDONED: Mutex<Vec<Abandoned>> = Mutex::new(Vec::new());

struct Agent {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), AgentError>>>,
    work: Option<tempfile::TempDir>,
    work_dir: PathBuf,
    /// The agent's parent cgroup.
    cgroup: PathBuf,
}

/// A fresh work dir, the agent's cgroup parent name and the flags of an agent for `master`.
fn agent_flags(
    master: &FakeMaster,
    extra: &[&str],
) -> (tempfile::TempDir, PathBuf, String, Vec<String>) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let work = tempfile::tempdir().expect("work tempdir");
    // Tasks that run as another user must be able to reach their sandbox.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let work_dir = work.path().canonicalize().expect("canonical work dir");
    let parent = format!("corral-e2e-{}-{n}", std::process::id());
    let launcher = std::env::current_exe().expect("own path");
    let mut flags: Vec<String> = vec![
        "--master".into(),
        format!("http://{}", master.addr),
        "--port".into(),
        "0".into(),
        "--work-dir".into(),
        work_dir.to_string_lossy().into(),
        "--cgroup-parent".into(),
        parent.clone(),
        "--tls-dir".into(),
        master.tls.path().to_string_lossy().into(),
        "--launcher".into(),
        launcher.to_string_lossy().into(),
        "--hostname".into(),
        "e2e-host".into(),
        "--attributes".into(),
        "rack:r1".into(),
        "--resources".into(),
        "cpus:3".into(),
        "--isolation".into(),
        "best-effort".into(),
    ];
    flags.extend(extra.iter().map(|s| s.to_string()));
    (work, work_dir, parent, flags)
}

fn start_agent(master: &FakeMaster, extra: &[&str]) -> Agent {
    let (work, work_dir, parent, flags) = agent_flags(master, extra);
    let argv = std::iter::once("agent".to_string()).chain(flags);
    let args = Cli::try_parse_from(argv).expect("valid agent flags").agent;
    let root = corral_agent::cgroup::find_root(None).expect("cgroup2");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(corral_agent::run_until(args, async move {
        let _ = stopped.await;
    }));
    Agent {
        stop: Some(stop),
        handle: Some(handle),
        work: Some(work),
        work_dir,
        cgroup: root.join(parent),
    }
}

impl Agent {
    /// Stops the agent and returns what `run` returned.
    async fn stop(mut self) -> Result<(), AgentError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.join().await
    }

    /// Waits for `run` to return by itself.
    async fn join(&mut self) -> Result<(), AgentError> {
        let handle = self.handle.take().expect("joined once");
        let r = tokio::time::timeout(WAIT, handle).await.expect("the agent stops in time");
        r.expect("the agent task does not panic")
    }

    fn sandbox(&self, task_id: &str, container_id: &str) -> PathBuf {
        self.work_dir
            .join("slaves/agent-1/frameworks/fw-1/executors")
            .join(task_id)
            .join("runs")
            .join(container_id)
    }

    fn container_cgroup(&self, container_id: &str) -> PathBuf {
        self.cgroup.join(container_id)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let (Some(h), Some(w)) = (self.handle.take(), self.work.take()) {
            ABANDONED.lock().expect("lock").push((h, w));
        }
    }
}

async fn reap_abandoned_agents() {
    let abandoned: Vec<Abandoned> = std::mem::take(&mut *ABANDONED.lock().expect("lock"));
    for (handle, _work) in abandoned {
        if tokio::time::timeout(WAIT, handle).await.is_err() {
            println!("  (an abandoned agent did not stop in time)");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Whether `pid` is a live process. A zombie is not: a task whose parent was killed with it
/// is reaped by init, in its own time.
fn pid_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The `SigBlk`/`SigIgn` masks of a process (hex), from /proc.
fn signal_masks(pid: i32) -> (String, String) {
    let status = read(Path::new(&format!("/proc/{pid}/status")));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .expect("field")
    };
    (field("SigBlk:"), field("SigIgn:"))
}

/// The pids in a cgroup, with their `comm`.
fn cgroup_procs(cgroup: &Path) -> Vec<(i32, String)> {
    read(&cgroup.join("cgroup.procs"))
        .lines()
        .map(|l| {
            let pid: i32 = l.trim().parse().expect("a pid");
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_string())
        })
        .collect()
}

/// A GET on the agent's HTTP port: (status, body).
async fn http_get(port: u16, path_and_query: &str) -> (u16, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("http connect");
    let req =
        format!("GET {path_and_query} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("http write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("http read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("http header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..eol]).expect("hex").trim(), 16)
                    .expect("chunk size");
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        body = out;
    }
    (status, body)
}

async fn http_json(port: u16, path_and_query: &str) -> serde_json::Value {
    let (status, body) = http_get(port, path_and_query).await;
    assert_eq!(status, 200, "GET {path_and_query}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("json body")
}

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let until = now() + WAIT;
    while !ok() {
        assert!(now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The cases.

async fn exit_status_sandbox_and_http() {
    let master = FakeMaster::start();
    let agent = start_agent(&master, &[]);
    let (mut session, r) = register(&master).await;
    assert_eq!(r.agent_id, None, "first registration has no id");
    assert!(r.tasks.is_empty());
    assert_eq!(r.protocol_version, corral_wire::proto::PROTOCOL_VERSION);
    assert_eq!(r.hostname, "e2e-host");
    assert_eq!(r.http_address, "127.0.0.1", "the local address towards the master");
    assert_ne!(r.http_port, 0, "the bound port, not the flag's 0");
    assert_eq!(r.resources.scalar("cpus").as_f64(), 3.0, "--resources overrides detection");
    assert!(r.resources.scalar("mem").as_f64() > 0.0, "other resources are detected");
    assert_eq!(r.attributes.len(), 1);
    assert_eq!(r.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(r.boot_id, read(Path::new("/proc/sys/kernel/random/boot_id")).trim());
    assert_eq!(Path::new(&r.isolation.cgroup_root), agent.cgroup);
    assert!(agent.cgroup.is_dir());

    session.send(MasterMessage::Ping { seq: 7 }).await;
    assert_eq!(session.next().await, AgentMessage::Pong { seq: 7 });

    session.send(shell_task("t1", "echo hi; exit 3")).await;
    // The task runs at once: no TASK_STARTING before TASK_RUNNING.
    let starting = session.expect("t1", TaskState::TaskRunning).await;
    assert_eq!(starting.source, Source::Executor as i32);
    let cid = starting.container_id.clone().expect("RUNNING names the container");
    let failed = session.expect("t1", TaskState::TaskFailed).await;
    assert_eq!(failed.message, "Command exited with status 3");
    assert_eq!(failed.container_id.as_deref(), Some(cid.as_str()));
    assert!(failed.timestamp_ns > starting.timestamp_ns.saturating_sub(1));
    assert!(starting.uuid != failed.uuid);

    let sandbox = agent.sandbox("t1", &cid);
    assert_eq!(read(&sandbox.join("stdout")), "hi\n");
    assert!(
        !agent.container_cgroup(&cid).exists(),
        "the container's cgroup is gone at the terminal update"
    );
    let exit_file = agent.work_dir.join("containers").join(&cid).join("exit_status");
    // The run dir goes once the terminal update is acknowledged (asynchronously).
    eventually("the run directory to go", || !exit_file.exists()).await;

    // HTTP.
    let port = r.http_port;
    assert_eq!(http_get(port, "/health").await.0, 200);
    let state = http_json(port, "/state").await;
    assert_eq!(state["id"], "agent-1");
    assert_eq!(state["hostname"], "e2e-host");
    assert_eq!(state["pid"], format!("slave(1)@127.0.0.1:{port}"));
    assert_eq!(state["version"], "1.11.0");
    assert_eq!(state["resources"]["cpus"], 3.0);
    assert_eq!(state["isolation"]["cgroup_root"], agent.cgroup.to_string_lossy().as_ref());
    assert_eq!(state["completed_frameworks"], serde_json::json!([]));
    let fw = &state["frameworks"][0];
    assert_eq!(fw["id"], "fw-1");
    // Acknowledged and forgotten: listed as a completed executor with its sandbox.
    let ex = &fw["completed_executors"][0];
    assert_eq!(ex["id"], "t1");
    assert_eq!(ex["container"], cid.as_str());
    assert_eq!(ex["directory"], sandbox.to_string_lossy().as_ref());
    assert_eq!(ex["completed_tasks"][0]["state"], "TASK_FAILED");
    assert_eq!(ex["completed_tasks"][0]["slave_id"], "agent-1");
    assert_eq!(http_json(port, "/slave(1)/state").await["id"], "agent-1");

    let stdout = sandbox.join("stdout");
    let q = |extra: &str| format!("/files/read?path={}{extra}", stdout.display());
    let chunk = http_json(port, &q("&offset=0")).await;
    assert_eq!(
        (&chunk["data"], &chunk["offset"]),
        (&serde_json::json!("hi\n"), &serde_json::json!(0))
    );
    // Corral's extension: the file's inode, for followers that must notice a rotation.
    use std::os::unix::fs::MetadataExt as _;
    let ino = std::fs::metadata(&stdout).expect("stdout").ino();
    assert_eq!(chunk["inode"], ino);
    let size = http_json(port, &q("&offset=-1")).await;
    assert_eq!(size, serde_json::json!({"data": "", "offset": 3, "inode": ino}));
    assert_eq!(http_json(port, &q("&offset=1&length=1")).await["data"], "i");
    let (status, body) = http_get(port, "/files/read?path=/etc/passwd").await;
    assert_eq!((status, body.as_slice()), (403, &b"Access denied"[..]));
    let missing = format!("/files/read?path={}/nope", sandbox.display());
    assert_eq!(http_get(port, &missing).await.0, 404);
    let (status, body) =
        http_get(port, &format!("/files/download?path={}", stdout.display())).await;
    assert_eq!((status, body.as_slice()), (200, &b"hi\n"[..]));

    // /files/browse: the sandbox's entries as Mesos FileInfo.
    let listing = http_json(port, &format!("/files/browse?path={}", sandbox.display())).await;
    let names: Vec<&str> = listing
        .as_array()
        .expect("an array")
        .iter()
        .map(|f| f["path"].as_str().expect("path").rsplit('/').next().expect("name"))
        .collect();
    assert_eq!(names, ["stderr", "stdout", "tmp"]);
    let out = &listing[1];
    assert_eq!(out["size"], 3);
    assert_eq!(out["mode"], "-rw-r--r--");
    assert_eq!(out["uid"], "root");
    assert_eq!(listing[2]["mode"], "drwxrwxrwt", "the task's /tmp");
    let (status, _) = http_get(port, &format!("/files/browse?path={}", stdout.display())).await;
    assert_eq!(status, 400, "a file is not browsed");
    assert_eq!(http_get(port, "/files/browse?path=/etc").await.0, 403);

    // /monitor/statistics: a running task's cgroup figures under Mesos' names.
    session.send(shell_task("busy", "while :; do :; done")).await;
    session.expect("busy", TaskState::TaskRunning).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = http_json(port, "/monitor/statistics").await;
    let entry = stats
        .as_array()
        .expect("an array")
        .iter()
        .find(|e| e["executor_id"] == "busy")
        .unwrap_or_else(|| panic!("no entry for the running task: {stats}"));
    assert_eq!(entry["framework_id"], "fw-1");
    let st = &entry["statistics"];
    assert_eq!(st["cpus_limit"], 0.1);
    assert_eq!(st["mem_limit_bytes"], 32 * 1024 * 1024);
    assert!(st["cpus_user_time_secs"].as_f64().expect("user time") > 0.0, "{st}");
    assert!(st["processes"].as_u64().expect("processes") >= 2, "init and the loop: {st}");
    assert!(st["timestamp"].as_f64().expect("timestamp") > 1.7e9);
    // /metrics/snapshot: Mesos' agent names.
    let m = http_json(port, "/metrics/snapshot").await;
    assert_eq!(m["slave/registered"], 1.0);
    assert_eq!(m["slave/tasks_running"], 1.0);
    assert_eq!(m["slave/tasks_failed"], 1.0, "t1, forgotten but counted: {m}");
    assert_eq!(m["slave/executors_running"], 1.0);
    assert_eq!(m["slave/cpus_total"], 3.0);
    assert_eq!(m["slave/cpus_used"], 0.1);
    session.send(kill("busy", Duration::from_secs(1))).await;
    session.expect("busy", TaskState::TaskKilled).await;

    let cgroup = agent.cgroup.clone();
    agent.stop().await.expect("a clean stop");
    assert!(!cgroup.exists(), "the agent removes its cgroup");
}

/// Runs `sleep 60`, checks what the task inherited, and returns (container id, task pid,
/// init pid).
async fn run_sleeper(
    agent: &Agent,
    session: &mut Session,
    task_id: &str,
    command: &str,
) -> (String, i32, i32) {
    session.send(shell_task(task_id, command)).await;
    let cid =
        session.expect(task_id, TaskState::TaskRunning).await.container_id.expect("container id");
    let cg = agent.container_cgroup(&cid);
    let mut procs = Vec::new();
    eventually("sleep to run in the container cgroup", || {
        procs = cgroup_procs(&cg);
        procs.iter().any(|(_, c)| c == "sleep")
    })
    .await;
    let task_pid = procs.iter().find(|(_, c)| c == "sleep").map(|(p, _)| *p).expect("sleep");
    let init_pid =
        procs.iter().find(|(_, c)| c != "sleep" && c != "sh").map(|(p, _)| *p).expect("init");
    (cid, task_pid, init_pid)
}

async fn kill_within_grace() {
    let master = FakeMaster::start();
    let agent = start_agent(&master, &[]);
    let (mut session, _) = register(&master).await;
    let (cid, task_pid, init_pid) =
        run_sleeper(&agent, &mut session, "sleeper", "exec sleep 60").await;
    let sandbox = agent.sandbox("sleeper", &cid);

    // The task holds only stdin (/dev/null), stdout and stderr (the sandbox files): none of the
    // agent's sockets or files leaked into it.
    // Right after exec the dynamic loader briefly holds the libraries it maps (fd 3): poll
    // until the process settles. A leaked fd would stay and fail this.
    let fds = || {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{task_pid}/fd"))
            .expect("task fds")
            .map(|e| e.expect("fd entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let mut seen = fds();
    for _ in 0..100 {
        if seen == ["0", "1", "2"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        seen = fds();
    }
    assert_eq!(seen, vec!["0", "1", "2"], "task fds: {seen:?}");
    let link = |fd: u32| std::fs::read_link(format!("/proc/{task_pid}/fd/{fd}")).expect("fd link");
    assert_eq!(link(0), Path::new("/dev/null"));
    // stdout and stderr are two pipes (the agent moves them into the sandbox's files); no
    // other descriptor (the agent's io_uring ring, the init's held pipe ends) leaked in.
    let (out, err) = (link(1), link(2));
    assert!(
        out.to_string_lossy().starts_with("pipe:[") && err.to_string_lossy().starts_with("pipe:["),
        "{out:?} {err:?}"
    );
    assert_ne!(out, err);
    // The init leads its own session; the task leads its own process group in it.
    let stat = |pid: i32| -> Vec<String> {
        let s = read(Path::new(&format!("/proc/{pid}/stat")));
        let after = &s[s.rfind(')').expect("comm end") + 2..];
        after.split_whitespace().map(String::from).collect()
    };
    let (init_stat, task_stat) = (stat(init_pid), stat(task_pid));
    assert_eq!(init_stat[3], init_pid.to_string(), "init is a session leader");
    assert_eq!(task_stat[2], task_pid.to_string(), "task leads its process group");
    assert_eq!(task_stat[3], init_pid.to_string(), "task is in the init's session");
    // The task's environment.
    let env = std::fs::read(format!("/proc/{task_pid}/environ")).expect("environ");
    let env = String::from_utf8_lossy(&env);
    assert!(env.split('\0').any(|v| v == format!("MESOS_SANDBOX={}", sandbox.display())), "{env}");
    assert!(env.split('\0').any(|v| v == "MESOS_TASK_ID=sleeper"), "{env}");
    // Nothing blocked, and neither SIGTERM nor SIGPIPE ignored, although the init blocks and
    // ignores them.
    let (blocked, ignored) = signal_masks(task_pid);
    assert_eq!(u64::from_str_radix(&blocked, 16).expect("hex"), 0, "SigBlk {blocked}");
    let ignored = u64::from_str_radix(&ignored, 16).expect("hex");
    let bit = |sig: i32| 1u64 << (sig - 1);
    assert_eq!(ignored & (bit(libc::SIGTERM) | bit(libc::SIGPIPE) | bit(libc::SIGINT)), 0);

    let grace = Duration::from_secs(3);
    let t0 = now();
    session.send(kill("sleeper", grace)).await;
    let killed = session.expect("sleeper", TaskState::TaskKilled).await;
    let took = t0.elapsed();
    assert_eq!(killed.message, "Command terminated with signal Terminated");
    assert!(took < grace, "SIGTERM was enough: {took:?}");
    assert!(!pid_running(task_pid), "the task is gone");
    eventually("the init to be reaped", || !pid_running(init_pid)).await;
    assert!(!agent.container_cgroup(&cid).exists());

    // A kill for a task the agent does not know is answered with TASK_LOST.
    session.send(kill("ghost", grace)).await;
    let lost = session.expect("ghost", TaskState::TaskLost).await;
    assert_eq!(lost.message, "Task not found on agent");
    agent.stop().await.expect("a clean stop");
}

async fn kill_escalates() {
    let master = FakeMaster::start();
    let agent = start_agent(&master, &[]);
    let (mut session, _) = register(&master).await;
    // Both the shell and sleep ignore SIGTERM.
    let (cid, task_pid, init_pid) =
        run_sleeper(&agent, &mut session, "stubborn", "trap '' TERM; sleep 60; true").await;
    let grace = Duration::from_millis(700);
    let t0 = now();
    session.send(kill("stubborn", grace)).await;
    let killed = session.expect("stubborn", TaskState::TaskKilled).await;
    let took = t0.elapsed();
    assert!(took >= grace, "not before the grace period: {took:?}");
    assert!(took < grace + Duration::from_secs(2), "soon after it: {took:?}");
    assert_eq!(killed.message, "Command terminated with signal Killed");
    assert!(!pid_running(task_pid));
    eventually("the init to be reaped", || !pid_running(init_pid)).await;
    assert!(!agent.container_cgroup(&cid).exists());
    agent.stop().await.expect("a clean stop");
}

async fn resend_and_reregister() {
    let master = FakeMaster::start();
    let agent = start_agent(&master, &["--status-update-retry-min", "1s"]);
    let (mut session, _) = register(&master).await;
    session.send(shell_task("t", "sleep 60")).await;
    let running = session.update().await;
    assert_eq!(running.task_state(), Some(TaskState::TaskRunning));
    // Not acknowledged (an ack naming another update does not count): sent again, same uuid.
    let mut wrong = running.clone();
    wrong.uuid[0] ^= 1;
    session.ack(&wrong).await;
    let t0 = now();
    let again = session.update().await;
    let gap = t0.elapsed();
    assert_eq!(again, running, "the resend is the same update");
    assert!(
        gap >= Duration::from_millis(800) && gap < Duration::from_secs(3),
        "after ~1s: {gap:?}"
    );

    // The master drops the connection before acknowledging RUNNING.
    session.conn.close(0u32.into(), b"master restart");
    drop(session);
    let (mut session, r) = master.accept().await;
    assert_eq!(r.agent_id.as_deref(), Some("agent-1"), "re-registration names the agent");
    assert_eq!(r.tasks.len(), 1);
    assert_eq!(r.tasks[0].task.task_id, "t");
    assert_eq!(r.tasks[0].framework_id, "fw-1");
    assert_eq!(r.tasks[0].state, TaskState::TaskRunning as i32);
    session
        .send(MasterMessage::Registered {
            agent_id: "agent-1".into(),
            master_id: "m2".into(),
            ping_interval_ms: 1000,
        })
        .await;
    let t0 = now();
    let resent = session.update().await;
    assert_eq!(resent, running, "the head goes out again right after Registered");
    assert!(t0.elapsed() < Duration::from_millis(500), "immediately: {:?}", t0.elapsed());
    session.ack(&resent).await;

    session.send(kill("t", Duration::from_secs(2))).await;
    session.expect("t", TaskState::TaskKilled).await;
    agent.stop().await.expect("a clean stop");
}

async fn users_and_failures() {
    let master = FakeMaster::start();
    let agent = start_agent(&master, &[]);
    let (mut session, _) = register(&master).await;

    // A user that does not exist: refused before anything starts.
    let cmd = CommandSpec {
        shell: true,
        value: Some("true".into()),
        user: Some("no-such-user-e2e".into()),
        ..Default::default()
    };
    session.send(task("ghost-user", cmd)).await;
    let failed = session.expect("ghost-user", TaskState::TaskFailed).await;
    assert_eq!(failed.reason, Some(Reason::ContainerLaunchFailed as i32));
    assert!(failed.message.contains("no-such-user-e2e"), "{}", failed.message);

    // Runs as nobody, in its sandbox, which nobody owns.
    let cmd = CommandSpec {
        shell: true,
        value: Some("id -u; id -g; pwd; echo oops >&2".into()),
        user: Some("nobody".into()),
        ..Default::default()
    };
    session.send(task("as-nobody", cmd)).await;
    let cid = session.expect("as-nobody", TaskState::TaskRunning).await.container_id.expect("cid");
    let done = session.expect("as-nobody", TaskState::TaskFinished).await;
    assert_eq!(done.message, "Command exited with status 0");
    let sandbox = agent.sandbox("as-nobody", &cid);
    let nobody = nix::unistd::User::from_name("nobody").expect("lookup").expect("nobody exists");
    assert_eq!(
        read(&sandbox.join("stdout")),
        format!("{}\n{}\n{}\n", nobody.uid, nobody.gid, sandbox.display())
    );
    assert_eq!(read(&sandbox.join("stderr")), "oops\n");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(&sandbox).expect("sandbox").uid(), nobody.uid.as_raw());

    // Not a shell command: `value` exec'd with `arguments` as the whole argv.
    let cmd = CommandSpec {
        shell: false,
        value: Some("/bin/sh".into()),
        arguments: vec![
            "my-argv0".into(),
            "-c".into(),
            "head -c 8 /proc/$$/cmdline; echo; echo \"$0 $1\"".into(),
            "zero".into(),
            "one".into(),
        ],
        ..Default::default()
    };
    session.send(task("argv", cmd)).await;
    let cid = session.expect("argv", TaskState::TaskRunning).await.container_id.expect("cid");
    session.expect("argv", TaskState::TaskFinished).await;
    assert_eq!(read(&agent.sandbox("argv", &cid).join("stdout")), "my-argv0\nzero one\n");

    // A program that does not exist: the init reports the failure.
    let cmd =
        CommandSpec { shell: false, value: Some("/nonexistent/prog".into()), ..Default::default() };
    session.send(task("no-prog", cmd)).await;
    let failed = session.expect("no-prog", TaskState::TaskFailed).await;
    let cid = failed.container_id.clone().expect("cid");
    assert_eq!(failed.reason, Some(Reason::ContainerLaunchFailed as i32));
    assert!(failed.message.contains("/nonexistent/prog"), "{}", failed.message);
    assert!(!agent.container_cgroup(&cid).exists());

    // A task killed by a signal it did not get from the agent fails.
    session.send(shell_task("suicide", "kill -KILL $$")).await;
    session.expect("suicide", TaskState::TaskRunning).await;
    let failed = session.expect("suicide", TaskState::TaskFailed).await;
    assert_eq!(failed.message, "Command terminated with signal Killed");

    // A second RunTask for a live task is ignored.
    session.send(shell_task("dup", "sleep 60")).await;
    session.expect("dup", TaskState::TaskRunning).await;
    session.send(shell_task("dup", "true")).await;
    session.send(kill("dup", Duration::from_secs(2))).await;
    let u = session.expect("dup", TaskState::TaskKilled).await;
    assert_eq!(u.message, "Command terminated with signal Terminated");
    agent.stop().await.expect("a clean stop");
}

async fn stop_kills_tasks() {
    let master = FakeMaster::start();
    let agent = start_agent(&master, &["--default-kill-grace-period", "1s"]);
    let (mut session, _) = register(&master).await;
    let (cid, task_pid, init_pid) = run_sleeper(&agent, &mut session, "long", "sleep 60").await;
    let (cgroup, container) = (agent.cgroup.clone(), agent.container_cgroup(&cid));
    let run_dir = agent.work_dir.join("containers").join(&cid);
    assert!(run_dir.join("task.json").exists());
    let t0 = now();
    let stopping = tokio::spawn(agent.stop());
    // The stopping agent still reports (and waits briefly for the ack of) the kill.
    let killed = session.expect("long", TaskState::TaskKilled).await;
    assert!(killed.message.starts_with("Command terminated with signal"), "{}", killed.message);
    stopping.await.expect("join").expect("a clean stop");
    assert!(t0.elapsed() < Duration::from_secs(5), "stopped in {:?}", t0.elapsed());
    assert!(!pid_running(task_pid) && !pid_running(init_pid), "no process left");
    assert!(!container.exists() && !cgroup.exists(), "no cgroup left");
    assert!(!run_dir.exists(), "no run directory left");
}

async fn refused() {
    let master = FakeMaster::start();
    let mut agent = start_agent(&master, &[]);
    let (mut session, _) = master.accept().await;
    session.send(MasterMessage::Refused { reason: "protocol version 1 is too old".into() }).await;
    match agent.join().await {
        Err(AgentError::Refused { reason }) => assert_eq!(reason, "protocol version 1 is too old"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!agent.cgroup.exists());
}

/// An agent in its own process (this binary with [`AGENT_ARG`]); killed if the case fails.
struct AgentProcess {
    child: tokio::process::Child,
    _work: tempfile::TempDir,
    work_dir: PathBuf,
    cgroup: PathBuf,
}

fn start_agent_process(master: &FakeMaster, extra: &[&str]) -> AgentProcess {
    let (work, work_dir, parent, flags) = agent_flags(master, extra);
    let child = tokio::process::Command::new(std::env::current_exe().expect("own path"))
        .arg(AGENT_ARG)
        .args(flags)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the agent process");
    let root = corral_agent::cgroup::find_root(None).expect("cgroup2");
    AgentProcess { child, _work: work, work_dir, cgroup: root.join(parent) }
}

impl AgentProcess {
    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id().expect("running") as i32);
        nix::sys::signal::kill(pid, sig).expect("signal the agent");
    }

    async fn wait(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the agent exits in time")
            .expect("wait")
    }
}

async fn sigterm_stops_agent_process() {
    let master = FakeMaster::start();
    let mut agent = start_agent_process(&master, &["--default-kill-grace-period", "1s"]);
    let (mut session, _) = register(&master).await;
    session.send(shell_task("long", "sleep 60")).await;
    let cid = session.expect("long", TaskState::TaskRunning).await.container_id.expect("cid");
    let container = agent.cgroup.join(&cid);
    assert!(container.is_dir());
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let killed = session.expect("long", TaskState::TaskKilled).await;
    assert!(killed.message.starts_with("Command terminated with signal"), "{}", killed.message);
    let status = agent.wait().await;
    assert!(status.success(), "a clean stop exits 0: {status}");
    assert!(!container.exists() && !agent.cgroup.exists(), "no cgroup left");
    assert!(!agent.work_dir.join("containers").join(&cid).exists(), "no run directory left");
}

async fn init_outlives_agent() {
    let master = FakeMaster::start();
    let mut agent = start_agent_process(&master, &[]);
    let (mut session, _) = register(&master).await;
    // The marker goes into the sandbox: the task's /tmp is its own, so a file elsewhere under
    // the host's /tmp (where this test's work dir is) is out of its sight.
    let command = "while [ ! -e \"$MESOS_SANDBOX/go\" ]; do sleep 0.05; done; echo done; exit 7";
    session.send(shell_task("survivor", command)).await;
    let cid = session.expect("survivor", TaskState::TaskRunning).await.container_id.expect("cid");
    let stdout = agent.sandbox_stdout("survivor", &cid);
    let marker = stdout.parent().expect("sandbox").join("go");
    let container = agent.cgroup.join(&cid);
    let init_pid = cgroup_procs(&container)
        .into_iter()
        .find(|(_, comm)| comm != "sh" && comm != "sleep")
        .map(|(p, _)| p)
        .expect("the init");

    // The agent dies without a chance to clean up.
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    let status = agent.wait().await;
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // The init and its task go on; the task finishes and the init records how it ended.
    assert!(pid_running(init_pid), "the init survives its agent");
    std::fs::write(&marker, "").expect("marker");
    let exit_file = agent.work_dir.join("containers").join(&cid).join("exit_status");
    eventually("the init to record the exit", || exit_file.exists()).await;
    assert_eq!(read(&exit_file), "exited 7\n");
    // The output waits in the pipe for the next agent, held open by the init, which stays.
    assert_eq!(read(&agent.sandbox_stdout("survivor", &cid)), "");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(pid_running(init_pid), "the init lingers, holding the task's output");
    let held = std::fs::read_link(format!("/proc/{init_pid}/fd/{}", corral_agent::STDOUT_HELD_FD))
        .expect("the init holds the stdout pipe");
    assert!(held.to_string_lossy().starts_with("pipe:["), "{held:?}");

    // Nobody recovers it yet: clean up the way a restarted agent will.
    let cg = corral_agent::cgroup::Cgroup::new(&container);
    cg.destroy(WAIT).expect("remove the container cgroup");
    corral_agent::cgroup::Cgroup::new(&agent.cgroup).remove().expect("remove the agent cgroup");
}

/// The parent pid of `pid` (from /proc).
fn ppid_of(pid: i32) -> i32 {
    let stat = read(Path::new(&format!("/proc/{pid}/stat")));
    let rest = stat.rsplit_once(") ").expect("stat format").1;
    rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("ppid")
}

/// The agent's launcher: its child whose command line names `__launcher`.
fn launcher_of(agent_pid: i32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        (String::from_utf8_lossy(&cmd).contains(corral_agent::LAUNCHER_ARG)
            && ppid_of(pid) == agent_pid)
            .then_some(pid)
    })
}

async fn launcher_forks() {
    let master = FakeMaster::start();
    let mut agent = start_agent_process(&master, &["--default-kill-grace-period", "1s"]);
    let agent_pid = agent.child.id().expect("running") as i32;
    let (mut session, _) = register(&master).await;
    let mut launcher = None;
    eventually("the launcher to run", || {
        launcher = launcher_of(agent_pid);
        launcher.is_some()
    })
    .await;
    let launcher = launcher.expect("a launcher");

    // The init is forked by the launcher, yet it is the agent's child (CLONE_PARENT) and
    // named as an init.
    session.send(shell_task("forked", "sleep 60")).await;
    let cid = session.expect("forked", TaskState::TaskRunning).await.container_id.expect("cid");
    let container = agent.cgroup.join(&cid);
    let (init, comm) = cgroup_procs(&container)
        .into_iter()
        .find(|(_, comm)| comm != "sh" && comm != "sleep")
        .expect("the init");
    assert_eq!(comm, "corral-init");
    assert_eq!(ppid_of(init), agent_pid, "the init is the agent's child, not the launcher's");

    // Without its launcher the agent goes on: inits are spawned directly.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(launcher), nix::sys::signal::Signal::SIGKILL)
        .expect("kill the launcher");
    eventually("the launcher to be gone", || !pid_running(launcher)).await;
    session.send(shell_task("direct", "sleep 60")).await;
    let cid2 = session.expect("direct", TaskState::TaskRunning).await.container_id.expect("cid");
    let (init2, comm2) = cgroup_procs(&agent.cgroup.join(&cid2))
        .into_iter()
        .find(|(_, comm)| comm != "sh" && comm != "sleep")
        .expect("the second init");
    assert_eq!(ppid_of(init2), agent_pid);
    assert_ne!(comm2, "corral-init", "exec'd by the agent, not forked by a launcher");
    // The first task is unaffected by its launcher's death.
    assert!(pid_running(init), "an init does not die with the launcher");
    // A new launcher forks the next ones.
    let relaunched = launcher_of(agent_pid).expect("a new launcher");
    assert_ne!(relaunched, launcher);
    session.send(shell_task("forked-again", "sleep 60")).await;
    let cid3 =
        session.expect("forked-again", TaskState::TaskRunning).await.container_id.expect("cid");
    let (_, comm3) = cgroup_procs(&agent.cgroup.join(&cid3))
        .into_iter()
        .find(|(_, comm)| comm != "sh" && comm != "sleep")
        .expect("the third init");
    assert_eq!(comm3, "corral-init");
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    for _ in 0..3 {
        let u = session.update().await;
        assert_eq!(u.task_state(), Some(TaskState::TaskKilled), "{u:?}");
        session.ack(&u).await;
    }
    assert!(agent.wait().await.success());
}

impl Drop for AgentProcess {
    /// A failed case must not leave tasks behind: kill the agent and whatever containers it
    /// left, and remove its cgroup.
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let parent = corral_agent::cgroup::Cgroup::new(&self.cgroup);
        for name in parent.children().unwrap_or_default() {
            let _ = parent.child(&name).destroy(WAIT);
        }
        let _ = parent.remove();
    }
}

impl AgentProcess {
    fn sandbox_stdout(&self, task_id: &str, container_id: &str) -> PathBuf {
        self.work_dir
            .join("slaves/agent-1/frameworks/fw-1/executors")
            .join(task_id)
            .join("runs")
            .join(container_id)
            .join("stdout")
    }
}

async fn invalid_frame() {
    let master = FakeMaster::start();
    let agent = start_agent(&master, &[]);
    let (mut session, _) = register(&master).await;
    session.send(shell_task("steady", "sleep 60")).await;
    let cid = session.expect("steady", TaskState::TaskRunning).await.container_id.expect("cid");
    // A record whose payload is not a valid archive.
    session.send.write_all(&[8, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]).await.expect("write");
    // The agent drops this connection and registers again on a new one, task included.
    let (mut session, r) = master.accept().await;
    assert_eq!(r.agent_id.as_deref(), Some("agent-1"));
    assert_eq!(r.tasks.len(), 1);
    assert!(agent.container_cgroup(&cid).is_dir(), "the task keeps running");
    session
        .send(MasterMessage::Registered {
            agent_id: "agent-1".into(),
            master_id: "m".into(),
            ping_interval_ms: 1000,
        })
        .await;
    session.send(kill("steady", Duration::from_secs(2))).await;
    session.expect("steady", TaskState::TaskKilled).await;
    agent.stop().await.expect("a clean stop");
}

/// A master that keeps the QUIC connection open but stops talking (never pings) is given up
/// after the silence limit (5 s at least), and the agent registers again with its id.
async fn silent_master() {
    let master = FakeMaster::start();
    let agent = start_agent(&master, &[]);
    let (mut session, _) = master.accept().await;
    session
        .send(MasterMessage::Registered {
            agent_id: "agent-1".into(),
            master_id: "m".into(),
            ping_interval_ms: 100,
        })
        .await;
    let registered_at = now();
    let (_session, again) = master.accept().await;
    let waited = registered_at.elapsed();
    assert_eq!(again.agent_id.as_deref(), Some("agent-1"));
    assert!(waited >= Duration::from_millis(4900), "left the master too early: {waited:?}");
    assert!(waited < Duration::from_secs(12), "left the master too late: {waited:?}");
    drop(session);
    agent.stop().await.expect("a clean stop");
}
