//! What the agent persists so that a restarted agent (after `kill -9`, a crash or an
//! upgrade) takes over its running tasks: the agent's id and boot id, and per task its
//! framework, spec, container, phase and the status updates not yet acknowledged.
//!
//! Layout under `<work-dir>/meta/`: `agent.ckpt`, and
//! `frameworks/<framework-id>/tasks/<task-id>.ckpt` (ids are checked path-safe before they
//! get here). Each file is a header (`CRLCKPT\0`, format version, payload length, CRC-32 of
//! the payload, all little-endian) and an rkyv payload. A file is replaced crash-atomically:
//! written to a temp file in the same directory, fsynced, renamed over the old one, and the
//! directory fsynced. A reader therefore sees the old file or the new one, never a mix; and
//! it checks everything before it trusts a byte: header, length cap, CRC, then rkyv's
//! validation (bytecheck). A file that fails is an error naming the file.
//!
//! Which state goes in is decided by the core (`Command::Checkpoint`, emitted before any
//! message the state change causes is sent); this module only reads and writes the files.
//! The process identity of each container's init lives beside it in its run directory
//! (`launch::INIT_FILE`).
#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use corral_wire::proto::{FrameworkRef, StatusUpdate, TaskSpec};
use rkyv::rancor::BoxedError;
use rkyv::{Archive, Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"CRLCKPT\0";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 4 + 4;
/// No checkpoint is larger (a task's spec and its pending updates are a few KiB).
pub const MAX_SIZE: usize = 16 << 20;

/// How a restarted agent treats a checkpoint it cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RecoverMode {
    /// Refuse to start, naming the file.
    #[default]
    Strict,
    /// Log it and skip just that task (its container is removed as an orphan).
    NonStrict,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("checkpoint {path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
}

/// Who this agent is, and under which boot.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AgentCheckpoint {
    pub agent_id: String,
    pub boot_id: String,
}

/// One task as the core knows it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TaskCheckpoint {
    pub framework: FrameworkRef,
    pub spec: TaskSpec,
    pub container_id: Option<String>,
    pub executor_container: Option<String>,
    /// The agent id its sandbox path was made with.
    pub agent_id: String,
    /// The latest `TaskState` generated.
    pub state: i32,
    /// `core::Phase` as a number (0 launching, 1 starting, 2 running, 3 done).
    pub phase: u8,
    /// A kill was requested: its end is TASK_KILLED.
    pub killing: bool,
    /// Updates not yet acknowledged, oldest first.
    pub updates: Vec<StatusUpdate>,
}

/// The checkpoint directory of `work_dir`.
pub fn meta_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("meta")
}

pub fn agent_path(work_dir: &Path) -> PathBuf {
    meta_dir(work_dir).join("agent.ckpt")
}

pub fn task_path(work_dir: &Path, framework_id: &str, task_id: &str) -> PathBuf {
    meta_dir(work_dir)
        .join("frameworks")
        .join(framework_id)
        .join("tasks")
        .join(format!("{task_id}.ckpt"))
}

/// The file's bytes for `value`.
pub fn encode<T>(value: &T) -> Vec<u8>
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            BoxedError,
        >,
    >,
{
    let payload = rkyv::to_bytes::<BoxedError>(value).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Checks and decodes a file's bytes.
pub fn decode<T>(bytes: &[u8]) -> Result<T, String>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, BoxedError>>
        + Deserialize<T, rkyv::api::high::HighDeserializer<BoxedError>>,
{
    if bytes.len() < HEADER {
        return Err(format!("{} bytes, shorter than the header", bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err("not a Corral checkpoint (bad magic)".into());
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let (version, len, crc) = (word(8), word(12) as usize, word(16));
    if version != VERSION {
        return Err(format!("format version {version}, this agent reads {VERSION}"));
    }
    if len > MAX_SIZE || bytes.len() - HEADER != len {
        return Err(format!("payload of {} bytes, header says {len}", bytes.len() - HEADER));
    }
    let payload = &bytes[HEADER..];
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(len);
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<T, BoxedError>(&aligned).map_err(|e| format!("invalid payload: {e}"))
}

/// Replaces `path` with `bytes` crash-atomically (temp file, fsync, rename, fsync of the
/// directory), creating its directory if needed.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    let dir = path.parent().ok_or_else(|| io(io::Error::other("no parent directory")))?;
    fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    fs::rename(&tmp, path).map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// Reads and checks one checkpoint file.
pub fn read_file<T>(path: &Path) -> Result<T, CheckpointError>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, BoxedError>>
        + Deserialize<T, rkyv::api::high::HighDeserializer<BoxedError>>,
{
    let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    let meta = fs::metadata(path).map_err(io)?;
    if meta.len() > (MAX_SIZE + HEADER) as u64 {
        let why = format!("{} bytes, more than the {MAX_SIZE} allowed", meta.len());
        return Err(CheckpointError::Corrupt { path: path.to_path_buf(), why });
    }
    let bytes = fs::read(path).map_err(io)?;
    decode(&bytes).map_err(|why| CheckpointError::Corrupt { path: path.to_path_buf(), why })
}

pub fn write_agent(work_dir: &Path, a: &AgentCheckpoint) -> Result<(), CheckpointError> {
    write_file(&agent_path(work_dir), &encode(a))
}

pub fn write_task(work_dir: &Path, t: &TaskCheckpoint) -> Result<(), CheckpointError> {
    write_file(&task_path(work_dir, &t.framework.id, &t.spec.task_id), &encode(t))
}

/// Removes a task's checkpoint (it is forgotten); a missing one is fine.
pub fn remove_task(
    work_dir: &Path,
    framework_id: &str,
    task_id: &str,
) -> Result<(), CheckpointError> {
    let path = task_path(work_dir, framework_id, task_id);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(CheckpointError::Io { path, source: e })
        }
        _ => Ok(()),
    }
}

/// Everything a restarted agent reads back.
#[derive(Debug, Default)]
pub struct Recovered {
    pub agent: Option<AgentCheckpoint>,
    pub tasks: Vec<TaskCheckpoint>,
    /// Checkpoints skipped under `non-strict`, with why.
    pub skipped: Vec<CheckpointError>,
}

/// Reads every checkpoint under `work_dir`. Under `strict` the first unreadable file is the
/// error; under `non-strict` it is skipped (a bad `agent.ckpt` then means starting afresh).
pub fn recover(work_dir: &Path, mode: RecoverMode) -> Result<Recovered, CheckpointError> {
    let mut out = Recovered::default();
    let fail = |e: CheckpointError, out: &mut Recovered| match mode {
        RecoverMode::Strict => Err(e),
        RecoverMode::NonStrict => {
            // Moved aside (kept for a post-mortem), so the next start does not trip on it.
            let path = match &e {
                CheckpointError::Io { path, .. } | CheckpointError::Corrupt { path, .. } => path,
            };
            let mut aside = path.as_os_str().to_owned();
            aside.push(".corrupt");
            let _ = fs::rename(path, &aside);
            tracing::warn!("skipping (moved aside to {}): {e}", Path::new(&aside).display());
            out.skipped.push(e);
            Ok(())
        }
    };
    let agent = agent_path(work_dir);
    if !agent.exists() {
        return Ok(out);
    }
    match read_file::<AgentCheckpoint>(&agent) {
        Ok(a) => out.agent = Some(a),
        Err(e) => {
            fail(e, &mut out)?;
            return Ok(out);
        }
    }
    let frameworks = meta_dir(work_dir).join("frameworks");
    let list = |dir: &Path| -> Result<Vec<PathBuf>, CheckpointError> {
        match fs::read_dir(dir) {
            Ok(entries) => {
                let mut v: Vec<PathBuf> =
                    entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                v.sort();
                Ok(v)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(CheckpointError::Io { path: dir.to_path_buf(), source }),
        }
    };
    for fw in list(&frameworks)? {
        for file in list(&fw.join("tasks"))? {
            let name =
                file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A temp file of a write that never finished: the old file (if any) stands.
                let _ = fs::remove_file(&file);
                continue;
            }
            if !name.ends_with(".ckpt") {
                continue;
            }
            match read_file::<TaskCheckpoint>(&file) {
                Ok(t) if file == task_path(work_dir, &t.framework.id, &t.spec.task_id) => {
                    out.tasks.push(t)
                }
                Ok(_) => {
                    let why = "it names another task than its path".to_string();
                    fail(CheckpointError::Corrupt { path: file, why }, &mut out)?
                }
                Err(e) => fail(e, &mut out)?,
            }
        }
    }
    Ok(out)
}

/// Moves the checkpoints aside (`meta.<unix-seconds>`): after a reboot they describe tasks
/// that no longer run.
pub fn retire(work_dir: &Path, stamp: u64) -> io::Result<()> {
    let meta = meta_dir(work_dir);
    match fs::rename(&meta, work_dir.join(format!("meta.{stamp}"))) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> TaskCheckpoint {
        TaskCheckpoint {
            framework: FrameworkRef { id: "fw-1".into(), ..Default::default() },
            spec: TaskSpec { task_id: id.into(), ..Default::default() },
            container_id: Some("c-1".into()),
            executor_container: None,
            agent_id: "a-S0".into(),
            state: 1,
            phase: 2,
            killing: false,
            updates: vec![StatusUpdate {
                framework_id: "fw-1".into(),
                task_id: id.into(),
                state: 1,
                reason: None,
                source: 1,
                message: String::new(),
                uuid: [7; 16],
                timestamp_ns: 42,
                container_id: Some("c-1".into()),
            }],
        }
    }

    #[test]
    fn round_trip_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        write_agent(w, &AgentCheckpoint { agent_id: "a-S0".into(), boot_id: "b".into() }).unwrap();
        for id in ["t1", "t2"] {
            write_task(w, &task(id)).unwrap();
        }
        let r = recover(w, RecoverMode::Strict).unwrap();
        assert_eq!(r.agent.unwrap().agent_id, "a-S0");
        assert_eq!(r.tasks, vec![task("t1"), task("t2")]);
        remove_task(w, "fw-1", "t1").unwrap();
        remove_task(w, "fw-1", "t1").unwrap();
        assert_eq!(recover(w, RecoverMode::Strict).unwrap().tasks, vec![task("t2")]);
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = encode(&task("t1"));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(decode::<TaskCheckpoint>(&bad).is_err(), "flip at {i} not caught");
        }
        for cut in 0..bytes.len() {
            assert!(decode::<TaskCheckpoint>(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(decode::<TaskCheckpoint>(&bytes).unwrap(), task("t1"));
    }

    #[test]
    fn strict_names_the_file_non_strict_skips_it() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        write_agent(w, &AgentCheckpoint { agent_id: "a-S0".into(), boot_id: "b".into() }).unwrap();
        for id in ["t1", "t2", "t3"] {
            write_task(w, &task(id)).unwrap();
        }
        let bad = task_path(w, "fw-1", "t2");
        let mut bytes = fs::read(&bad).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        fs::write(&bad, bytes).unwrap();
        let err = recover(w, RecoverMode::Strict).unwrap_err().to_string();
        assert!(err.contains(&bad.display().to_string()) && err.contains("checksum"), "{err}");
        let r = recover(w, RecoverMode::NonStrict).unwrap();
        let ids: Vec<_> = r.tasks.iter().map(|t| t.spec.task_id.as_str()).collect();
        assert_eq!(ids, ["t1", "t3"]);
        assert_eq!(r.skipped.len(), 1);
        // Moved aside: the next strict start reads the rest.
        assert!(!bad.exists());
        assert_eq!(recover(w, RecoverMode::Strict).unwrap().tasks.len(), 2);
    }

    #[test]
    fn a_file_in_the_wrong_place_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        write_agent(w, &AgentCheckpoint { agent_id: "a".into(), boot_id: "b".into() }).unwrap();
        write_file(&task_path(w, "fw-1", "other"), &encode(&task("t1"))).unwrap();
        assert!(recover(w, RecoverMode::Strict).is_err());
    }
}
