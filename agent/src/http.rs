//! The agent's HTTP API (a subset of Mesos' agent endpoints): `/health`, `/state` (also as
//! `/slave(1)/state`), `/files/browse`, `/files/read`, `/files/download` and
//! `/monitor/statistics`, `/metrics/snapshot`, and the v1 executor API (`/api/v1/executor`:
//! SUBSCRIBE opens a RecordIO event stream, UPDATE and MESSAGE answer 202; calls go to the
//! shell's loop through a channel). Handlers are thin: state comes from the core's task table (read
//! under its lock, never across an await), files from the work directory only, statistics
//! from each container's cgroup files.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use corral_wire::mesos::is_terminal;
use corral_wire::mesos::v1::TaskState;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::core::{Core, TaskRecord};
use crate::paths;

/// The core, shared between the shell's loop (which drives it) and the HTTP handlers (which
/// read it).
pub type SharedCore = Arc<Mutex<Core>>;

/// Locks the core. A panic while it was held cannot leave it half-updated in a way readers
/// care about, so a poisoned lock is used as is.
pub fn lock(core: &SharedCore) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The most `/files/read` returns at once.
pub const MAX_READ: u64 = 1 << 20;

#[derive(Debug)]
pub struct HttpState {
    pub core: SharedCore,
    /// Canonical.
    pub work_dir: PathBuf,
    /// Executor API calls, to the shell's loop.
    pub executors: tokio::sync::mpsc::UnboundedSender<ExecutorInput>,
    pub next_stream: std::sync::atomic::AtomicU64,
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// How task output reaches the sandbox files.
    pub output: crate::output::Output,
}

/// An executor API call for the shell's loop.
#[derive(Debug)]
pub enum ExecutorInput {
    Subscribe {
        framework_id: String,
        executor_id: String,
        stream: u64,
        tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
        protobuf: bool,
    },
    Closed {
        framework_id: String,
        executor_id: String,
        stream: u64,
    },
    Update {
        framework_id: String,
        executor_id: String,
        status: Box<corral_wire::mesos::v1::TaskStatus>,
    },
    Message {
        framework_id: String,
        executor_id: String,
        data: Vec<u8>,
    },
}

/// Events buffered per executor stream before the executor counts as stuck.
const EXECUTOR_STREAM_BUFFER: usize = 1024;

/// `POST /api/v1/executor`, with Mesos' statuses and texts.
async fn executor_api(
    State(s): State<Arc<HttpState>>,
    method: axum::http::Method,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
) -> Response {
    use corral_wire::mesos::json::{self, JsonError};
    use corral_wire::mesos::v1::executor::{Call, call};
    use corral_wire::mesos::{APPLICATION_JSON, APPLICATION_PROTOBUF};
    let text = |code: StatusCode, m: String| {
        (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], m).into_response()
    };
    if method != axum::http::Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "POST")], "").into_response();
    }
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return text(StatusCode::BAD_REQUEST, "Expecting 'Content-Type' to be present".into());
    };
    let media =
        ct.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let protobuf = media == APPLICATION_PROTOBUF;
    let call: Call = match media.as_str() {
        APPLICATION_JSON => match json::from_slice::<Call>(&body) {
            Ok(c) => c,
            Err(JsonError::Syntax(e)) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Failed to parse body into JSON: {e}"),
                );
            }
            Err(JsonError::Convert(e)) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Failed to convert JSON into Call protobuf: {e}"),
                );
            }
        },
        APPLICATION_PROTOBUF => match json::from_protobuf::<Call>(&body) {
            Ok(c) => c,
            Err(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "Failed to parse body into Call protobuf".into(),
                );
            }
        },
        _ => {
            return text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Expecting 'Content-Type' of {APPLICATION_JSON} or {APPLICATION_PROTOBUF}"),
            );
        }
    };
    let framework_id = call.framework_id.value.clone();
    let executor_id = call.executor_id.value.clone();
    let invalid =
        |m: &str| text(StatusCode::BAD_REQUEST, format!("Failed to validate executor::Call: {m}"));
    let t = call.r#type.and_then(|t| call::Type::try_from(t).ok());
    match t {
        Some(call::Type::Subscribe) => {
            if !lock(&s.core).executor_known(&framework_id, &executor_id) {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Executor '{executor_id}' of framework '{framework_id}' is not running on this agent"
                    ),
                );
            }
            let stream = s.next_stream.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (tx, rx) = tokio::sync::mpsc::channel(EXECUTOR_STREAM_BUFFER);
            let input = ExecutorInput::Subscribe {
                framework_id: framework_id.clone(),
                executor_id: executor_id.clone(),
                stream,
                tx,
                protobuf,
            };
            if s.executors.send(input).is_err() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "Agent is shutting down".into());
            }
            let guard = StreamGuard { tx: s.executors.clone(), framework_id, executor_id, stream };
            let body = futures_util::stream::unfold((rx, guard), |(mut rx, guard)| async move {
                rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(b), (rx, guard)))
            });
            let media = if protobuf { APPLICATION_PROTOBUF } else { APPLICATION_JSON };
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, media)
                .body(Body::from_stream(body))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        Some(call::Type::Update) => {
            let Some(update) = call.update else {
                return invalid("Expecting 'update' to be present");
            };
            let status = update.status;
            if !status.uuid.as_deref().is_some_and(corral_wire::mesos::is_valid_uuid) {
                return invalid("'uuid' of the status update must be a valid UUID");
            }
            if status.source.is_some_and(|src| {
                src != corral_wire::mesos::v1::task_status::Source::Executor as i32
            }) {
                return invalid("Received wrong 'source' for the status update");
            }
            let input =
                ExecutorInput::Update { framework_id, executor_id, status: Box::new(status) };
            match s.executors.send(input) {
                Ok(()) => StatusCode::ACCEPTED.into_response(),
                Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "Agent is shutting down".into()),
            }
        }
        Some(call::Type::Message) => {
            let Some(m) = call.message else { return invalid("Expecting 'message' to be present") };
            let input = ExecutorInput::Message { framework_id, executor_id, data: m.data };
            match s.executors.send(input) {
                Ok(()) => StatusCode::ACCEPTED.into_response(),
                Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "Agent is shutting down".into()),
            }
        }
        Some(call::Type::Heartbeat) => StatusCode::ACCEPTED.into_response(),
        _ => invalid("Expecting 'type' to be present"),
    }
}

/// Tells the shell when an executor's stream ends, however it ends.
struct StreamGuard {
    tx: tokio::sync::mpsc::UnboundedSender<ExecutorInput>,
    framework_id: String,
    executor_id: String,
    stream: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(ExecutorInput::Closed {
            framework_id: std::mem::take(&mut self.framework_id),
            executor_id: std::mem::take(&mut self.executor_id),
            stream: self.stream,
        });
    }
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/state", get(state_handler))
        .route("/slave(1)/state", get(state_handler))
        .route("/files/browse", get(files_browse))
        .route("/files/browse.json", get(files_browse))
        .route("/files/read", get(files_read))
        .route("/files/read.json", get(files_read))
        .route("/monitor/statistics", get(monitor_statistics))
        .route("/metrics/snapshot", get(metrics_snapshot))
        .route("/metrics", get(prometheus_metrics))
        .route("/monitor/statistics.json", get(monitor_statistics))
        .route("/files/download", get(files_download))
        .route("/api/v1/executor", axum::routing::any(executor_api))
        .with_state(state)
}

async fn state_handler(State(s): State<Arc<HttpState>>) -> Response {
    let mut body = state_json(&lock(&s.core), &s.work_dir);
    body["telemetry"] = s.telemetry.report().to_json(s.telemetry.interval());
    let rotation = s.output.rotation();
    body["task_output"] = serde_json::json!({
        "engine": s.output.engine(),
        "rotate_max_size": rotation.max_size,
        "rotate_keep": rotation.keep,
    });
    axum::Json(body).into_response()
}

/// The agent's state in the shape of Mesos' agent `/state` (the subset Corral fills).
/// Live tasks sit in their executor's `tasks` (or `completed_tasks` once terminal); tasks the
/// agent has forgotten are kept (bounded) as the framework's `completed_executors`, so a
/// client that just saw a task end can still find its sandbox.
pub fn state_json(core: &Core, work_dir: &Path) -> Value {
    let reg = core.registration();
    let agent_id = core.agent_id().unwrap_or_default();
    let mut frameworks: BTreeMap<String, (Value, Vec<Value>, Vec<Value>)> = BTreeMap::new();
    let mut add = |t: &TaskRecord, completed: bool| {
        let Some(executor) = executor_json(t, work_dir) else { return };
        let f = frameworks.entry(t.framework.id.clone()).or_insert_with(|| {
            let info = json!({
                "id": t.framework.id,
                "name": t.framework.name,
                "user": t.framework.user,
                "role": t.framework.role,
            });
            (info, Vec::new(), Vec::new())
        });
        if completed { f.2.push(executor) } else { f.1.push(executor) }
    };
    for t in core.tasks() {
        add(t, false);
    }
    for t in core.completed() {
        add(t, true);
    }
    let frameworks: Vec<Value> = frameworks
        .into_values()
        .map(|(mut info, executors, completed)| {
            info["executors"] = Value::Array(executors);
            info["completed_executors"] = Value::Array(completed);
            info
        })
        .collect();
    json!({
        "id": agent_id,
        "hostname": reg.hostname,
        "pid": format!("slave(1)@{}:{}", reg.http_address, reg.http_port),
        "version": corral_wire::MESOS_COMPAT_VERSION,
        "corral_version": reg.version,
        "resources": reg.resources.to_summary_json(),
        "isolation": reg.isolation.to_json(),
        "frameworks": frameworks,
        "completed_frameworks": [],
    })
}

/// A task's command executor, or `None` for a task refused before it had a container.
fn executor_json(t: &TaskRecord, work_dir: &Path) -> Option<Value> {
    let task_id = &t.spec.task_id;
    if let Some(e) = &t.spec.executor {
        // A custom executor's task: in the executor's own sandbox.
        let container = t.executor_container.as_deref()?;
        let directory =
            paths::sandbox(work_dir, &t.agent_id, &t.framework.id, &e.executor_id, container);
        let task = json!({
            "id": task_id,
            "name": t.spec.name,
            "framework_id": t.framework.id,
            "executor_id": e.executor_id,
            "slave_id": t.agent_id,
            "state": t.state.as_str_name(),
            "resources": t.spec.resources.to_summary_json(),
        });
        let (tasks, completed) =
            if is_terminal(t.state) { (vec![], vec![task]) } else { (vec![task], vec![]) };
        return Some(json!({
            "id": e.executor_id,
            "name": e.name,
            "source": e.executor_id,
            "framework_id": t.framework.id,
            "container": container,
            "directory": directory.to_string_lossy(),
            "resources": e.resources.to_summary_json(),
            "tasks": tasks,
            "queued_tasks": [],
            "completed_tasks": completed,
        }));
    }
    let container_id = t.container_id.as_deref()?;
    let group = t.spec.group.as_ref().zip(t.executor_container.as_deref());
    let (directory, _) = paths::task_dirs(
        work_dir,
        &t.agent_id,
        &t.framework.id,
        task_id,
        container_id,
        group.map(|(g, c)| (g.executor_id.as_str(), c)),
    );
    let command = t.spec.command.value.as_deref().unwrap_or_default();
    let task = json!({
        "id": task_id,
        "name": t.spec.name,
        "framework_id": t.framework.id,
        "executor_id": t.spec.group.as_ref().map(|g| g.executor_id.as_str()).unwrap_or(task_id),
        "slave_id": t.agent_id,
        "state": t.state.as_str_name(),
        "resources": t.spec.resources.to_summary_json(),
    });
    let (tasks, completed) =
        if is_terminal(t.state) { (vec![], vec![task]) } else { (vec![task], vec![]) };
    Some(json!({
        "id": task_id,
        "name": format!("Command Executor (Task: {task_id}) (Command: {command})"),
        "source": task_id,
        "framework_id": t.framework.id,
        "container": container_id,
        "directory": directory.to_string_lossy(),
        "resources": t.spec.resources.to_summary_json(),
        "tasks": tasks,
        "queued_tasks": [],
        "completed_tasks": completed,
    }))
}

#[derive(Debug, Deserialize)]
struct FilesQuery {
    path: String,
    offset: Option<i64>,
    length: Option<i64>,
}

/// Why a file request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum FilesError {
    BadRequest(String),
    Forbidden,
    NotFound,
    Internal(String),
}

impl IntoResponse for FilesError {
    fn into_response(self) -> Response {
        match self {
            FilesError::BadRequest(m) => (StatusCode::BAD_REQUEST, m).into_response(),
            FilesError::Forbidden => (StatusCode::FORBIDDEN, "Access denied").into_response(),
            FilesError::NotFound => (StatusCode::NOT_FOUND, "File not found").into_response(),
            FilesError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m).into_response(),
        }
    }
}

/// `path` resolved (symlinks and `..` included; relative to `work_dir` unless absolute) if it
/// exists and lies inside `work_dir` (canonical).
fn resolve_inside(work_dir: &Path, path: &str) -> Result<PathBuf, FilesError> {
    let canonical = match work_dir.join(path).canonicalize() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FilesError::NotFound),
        Err(_) => return Err(FilesError::Forbidden),
    };
    if !canonical.starts_with(work_dir) {
        return Err(FilesError::Forbidden);
    }
    Ok(canonical)
}

/// Opens `path` for reading if it resolves (symlinks and `..` included) to a regular file
/// inside `work_dir` (canonical). A relative path is taken relative to `work_dir`.
pub fn open_inside(work_dir: &Path, path: &str) -> Result<(fs::File, u64), FilesError> {
    let canonical = resolve_inside(work_dir, path)?;
    // O_NOFOLLOW: a last component swapped for a symlink since canonicalize is refused.
    let file =
        fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&canonical).map_err(
            |e| match e.kind() {
                std::io::ErrorKind::NotFound => FilesError::NotFound,
                _ => FilesError::Forbidden,
            },
        )?;
    let meta = file.metadata().map_err(|e| FilesError::Internal(e.to_string()))?;
    if meta.is_dir() {
        return Err(FilesError::BadRequest("Cannot read a directory".into()));
    }
    Ok((file, meta.len()))
}

/// `/files/read`: up to `length` (capped at [`MAX_READ`]) bytes at `offset`; `offset = -1`
/// asks for the size only. Returns the data (lossy UTF-8) and the offset it starts at.
#[cfg(test)]
pub fn read_chunk(
    work_dir: &Path,
    path: &str,
    offset: Option<i64>,
    length: Option<i64>,
) -> Result<(String, u64), FilesError> {
    read_chunk_of(work_dir, path, offset, length).map(|(d, o, _)| (d, o))
}

/// [`read_chunk`], with the inode of the file the bytes came from.
fn read_chunk_of(
    work_dir: &Path,
    path: &str,
    offset: Option<i64>,
    length: Option<i64>,
) -> Result<(String, u64, u64), FilesError> {
    use std::os::unix::fs::MetadataExt as _;
    let (mut file, size) = open_inside(work_dir, path)?;
    let inode = file.metadata().map(|m| m.ino()).unwrap_or(0);
    let offset = match offset {
        None => 0,
        Some(-1) => return Ok((String::new(), size, inode)),
        Some(o) if o < 0 => return Err(FilesError::BadRequest(format!("Negative offset {o}"))),
        Some(o) => o as u64,
    };
    let length = match length {
        None | Some(-1) => MAX_READ,
        Some(l) if l < 0 => return Err(FilesError::BadRequest(format!("Negative length {l}"))),
        Some(l) => (l as u64).min(MAX_READ),
    };
    if offset >= size {
        return Ok((String::new(), offset, inode));
    }
    let mut buf = Vec::new();
    file.seek(SeekFrom::Start(offset)).map_err(|e| FilesError::Internal(e.to_string()))?;
    file.take(length.min(size - offset))
        .read_to_end(&mut buf)
        .map_err(|e| FilesError::Internal(e.to_string()))?;
    // A character cut at the end of the chunk is left for the next read, so a reader that
    // goes on at `offset + data.len()` sees it whole (never a replacement character).
    if let Err(e) = std::str::from_utf8(&buf)
        && e.error_len().is_none()
        && e.valid_up_to() > 0
    {
        buf.truncate(e.valid_up_to());
    }
    Ok((String::from_utf8_lossy(&buf).into_owned(), offset, inode))
}

async fn files_read(State(s): State<Arc<HttpState>>, Query(q): Query<FilesQuery>) -> Response {
    let work_dir = s.work_dir.clone();
    let result =
        tokio::task::spawn_blocking(move || read_chunk_of(&work_dir, &q.path, q.offset, q.length))
            .await;
    match result {
        Ok(Ok((data, offset, inode))) => {
            // `inode` is Corral's: it tells a follower (`corral logs -f`) that the file was
            // rotated. Mesos clients ignore it.
            axum::Json(json!({ "data": data, "offset": offset, "inode": inode })).into_response()
        }
        Ok(Err(e)) => e.into_response(),
        Err(e) => FilesError::Internal(e.to_string()).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct BrowseQuery {
    path: String,
}

/// `/files/browse`: the entries of a directory inside the work dir, as Mesos' `FileInfo`
/// JSON (`path`, `nlink`, `size`, `mtime`, `mode` as `ls -l` shows it, `uid`, `gid` as names).
fn browse(work_dir: &Path, path: &str) -> Result<Value, FilesError> {
    let canonical = resolve_inside(work_dir, path)?;
    if !canonical.is_dir() {
        return Err(FilesError::BadRequest("Cannot browse a file".into()));
    }
    let mut out = Vec::new();
    let entries = fs::read_dir(&canonical).map_err(|e| FilesError::Internal(e.to_string()))?;
    for e in entries.flatten() {
        let Ok(meta) = e.path().symlink_metadata() else { continue };
        out.push(file_info(&e.path(), &meta));
    }
    out.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    Ok(Value::Array(out))
}

fn file_info(path: &Path, meta: &fs::Metadata) -> Value {
    use std::os::unix::fs::MetadataExt as _;
    let user = nix::unistd::User::from_uid(meta.uid().into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| meta.uid().to_string());
    let group = nix::unistd::Group::from_gid(meta.gid().into())
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| meta.gid().to_string());
    json!({
        "path": path.to_string_lossy(),
        "nlink": meta.nlink(),
        "size": meta.size(),
        "inode": meta.ino(),
        "mtime": meta.mtime() as f64 + f64::from(meta.mtime_nsec() as u32) / 1e9,
        "mode": mode_string(meta.mode()),
        "uid": user,
        "gid": group,
    })
}

/// `drwxr-xr-x`, as `ls -l` prints a mode.
fn mode_string(mode: u32) -> String {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        _ => '-',
    };
    let mut s = String::from(kind);
    // setuid, setgid and sticky show in the execute column, as `ls` prints them.
    for (shift, special, on, off) in
        [(6, libc::S_ISUID, 's', 'S'), (3, libc::S_ISGID, 's', 'S'), (0, libc::S_ISVTX, 't', 'T')]
    {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => on,
            (false, true) => off,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

async fn files_browse(State(s): State<Arc<HttpState>>, Query(q): Query<BrowseQuery>) -> Response {
    let work_dir = s.work_dir.clone();
    match tokio::task::spawn_blocking(move || browse(&work_dir, &q.path)).await {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => FilesError::Internal(e.to_string()).into_response(),
    }
}

/// `/monitor/statistics`: one entry per running container, Mesos' `ResourceStatistics` field
/// names plus Corral's (eBPF counters, the CPU rate), read when asked.
async fn monitor_statistics(State(s): State<Arc<HttpState>>) -> Response {
    let telemetry = s.telemetry.clone();
    match tokio::task::spawn_blocking(move || telemetry.statistics()).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => FilesError::Internal(e.to_string()).into_response(),
    }
}

/// `/metrics`: every task's usage in Prometheus' text format (OpenMetrics), labelled with
/// `task_id`, `framework_id` and `executor_id` (metric names in the README).
async fn prometheus_metrics(State(s): State<Arc<HttpState>>) -> Response {
    let telemetry = s.telemetry.clone();
    match tokio::task::spawn_blocking(move || telemetry.prometheus()).await {
        Ok(body) => (
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => FilesError::Internal(e.to_string()).into_response(),
    }
}

/// `/metrics/snapshot`: Mesos' agent metric names where the same quantity exists here.
pub fn metrics_json(core: &Core) -> Value {
    let mut o = serde_json::Map::new();
    let mut put = |k: &str, v: f64| {
        o.insert(format!("slave/{k}"), json!(v));
    };
    put("registered", if core.is_registered() { 1.0 } else { 0.0 });
    let live: Vec<&TaskRecord> = core.tasks().filter(|t| !is_terminal(t.state)).collect();
    let count =
        |s: TaskState| core.tasks().chain(core.completed()).filter(|t| t.state == s).count() as f64;
    for (name, state) in [
        ("staging", TaskState::TaskStaging),
        ("starting", TaskState::TaskStarting),
        ("running", TaskState::TaskRunning),
        ("killing", TaskState::TaskKilling),
        ("finished", TaskState::TaskFinished),
        ("failed", TaskState::TaskFailed),
        ("killed", TaskState::TaskKilled),
        ("lost", TaskState::TaskLost),
        ("gone", TaskState::TaskGone),
    ] {
        put(&format!("tasks_{name}"), count(state));
    }
    put("executors_running", live.iter().filter(|t| t.container_id.is_some()).count() as f64);
    let total = &core.registration().resources;
    let mut used = corral_wire::resources::Resources::new();
    for t in &live {
        used.add(&t.spec.resources.scalars_only());
    }
    for r in ["cpus", "mem", "disk", "gpus"] {
        let (t, u) = (total.scalar(r).as_f64(), used.scalar(r).as_f64());
        put(&format!("{r}_total"), t);
        put(&format!("{r}_used"), u);
        put(&format!("{r}_percent"), if t > 0.0 { u / t } else { 0.0 });
    }
    Value::Object(o)
}

async fn metrics_snapshot(State(s): State<Arc<HttpState>>) -> Response {
    let body = metrics_json(&lock(&s.core));
    axum::Json(body).into_response()
}

#[derive(Debug, Deserialize)]
struct DownloadQuery {
    path: String,
}

async fn files_download(
    State(s): State<Arc<HttpState>>,
    Query(q): Query<DownloadQuery>,
) -> Response {
    let work_dir = s.work_dir.clone();
    let path = q.path.clone();
    let opened = tokio::task::spawn_blocking(move || open_inside(&work_dir, &path)).await;
    let (file, size) = match opened {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return e.into_response(),
        Err(e) => return FilesError::Internal(e.to_string()).into_response(),
    };
    let name = Path::new(&q.path)
        .file_name()
        .map(|n| n.to_string_lossy().replace('"', ""))
        .unwrap_or_else(|| "download".into());
    let chunks =
        futures_util::stream::unfold(tokio::fs::File::from_std(file), |mut f| async move {
            use tokio::io::AsyncReadExt as _;
            let mut buf = vec![0u8; 64 * 1024];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn modes_print_as_ls_does() {
        assert_eq!(super::mode_string(libc::S_IFDIR | 0o1777), "drwxrwxrwt");
        assert_eq!(super::mode_string(libc::S_IFREG | 0o644), "-rw-r--r--");
        assert_eq!(super::mode_string(libc::S_IFREG | 0o4755), "-rwsr-xr-x");
        assert_eq!(super::mode_string(libc::S_IFREG | 0o2640), "-rw-r-S---");
        assert_eq!(super::mode_string(libc::S_IFLNK | 0o777), "lrwxrwxrwx");
    }

    use super::*;

    fn work() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let canon = dir.path().canonicalize().unwrap();
        fs::create_dir_all(canon.join("sb")).unwrap();
        fs::write(canon.join("sb/stdout"), "hello world").unwrap();
        (dir, canon)
    }

    #[test]
    fn reads_chunks_and_sizes() {
        let (_d, w) = work();
        let abs = w.join("sb/stdout").to_string_lossy().into_owned();
        assert_eq!(read_chunk(&w, &abs, None, None).unwrap(), ("hello world".into(), 0));
        assert_eq!(read_chunk(&w, &abs, Some(6), Some(3)).unwrap(), ("wor".into(), 6));
        assert_eq!(read_chunk(&w, &abs, Some(-1), None).unwrap(), (String::new(), 11));
        assert_eq!(read_chunk(&w, &abs, Some(50), Some(3)).unwrap(), (String::new(), 50));
        assert_eq!(read_chunk(&w, "sb/stdout", Some(0), Some(5)).unwrap(), ("hello".into(), 0));
        assert!(matches!(read_chunk(&w, &abs, Some(-2), None), Err(FilesError::BadRequest(_))));
        assert!(matches!(
            read_chunk(&w, &w.join("sb").to_string_lossy(), None, None),
            Err(FilesError::BadRequest(_))
        ));
    }

    #[test]
    fn refuses_paths_outside_the_work_dir() {
        let (_d, w) = work();
        assert_eq!(read_chunk(&w, "/etc/passwd", None, None), Err(FilesError::Forbidden));
        let up = w.join("sb/../../").to_string_lossy().into_owned();
        assert_eq!(read_chunk(&w, &up, None, None), Err(FilesError::Forbidden));
        std::os::unix::fs::symlink("/etc/passwd", w.join("sb/escape")).unwrap();
        let link = w.join("sb/escape").to_string_lossy().into_owned();
        assert_eq!(read_chunk(&w, &link, None, None), Err(FilesError::Forbidden));
        let missing = w.join("sb/missing").to_string_lossy().into_owned();
        assert_eq!(read_chunk(&w, &missing, None, None), Err(FilesError::NotFound));
    }
}
