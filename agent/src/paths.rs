//! The agent's on-disk layout under `--work-dir`, in one place:
//!
//! - `slaves/<agent-id>/frameworks/<framework-id>/executors/<task-id>/runs/<container-id>/`:
//!   a task's sandbox (Mesos' layout; the command executor's id is the task id), holding the
//!   task's `stdout` and `stderr`. Sandboxes stay after their task is forgotten.
//! - `containers/<container-id>/`: the container's run directory: `task.json` (what the
//!   per-task init runs) and `exit_status` (how the task ended, written by the init). It lives
//!   until the task is forgotten, so a restarted agent can find what ran and how it ended.
//!
//! Ids become path components, so [`validate_id`] is checked before any of them is used.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// The sandbox of one container.
pub fn sandbox(
    work_dir: &Path,
    agent_id: &str,
    framework_id: &str,
    task_id: &str,
    container_id: &str,
) -> PathBuf {
    work_dir
        .join("slaves")
        .join(agent_id)
        .join("frameworks")
        .join(framework_id)
        .join("executors")
        .join(task_id)
        .join("runs")
        .join(container_id)
}

/// A task's sandbox (its working directory) and the directory of its `stdout`/`stderr`: both
/// its own sandbox for a command task; for a task of a group, the group executor's sandbox
/// (shared by the group) and `tasks/<task-id>` in it.
pub fn task_dirs(
    work_dir: &Path,
    agent_id: &str,
    framework_id: &str,
    task_id: &str,
    container_id: &str,
    group: Option<(&str, &str)>,
) -> (PathBuf, PathBuf) {
    match group {
        Some((executor_id, executor_container)) => {
            let dir = sandbox(work_dir, agent_id, framework_id, executor_id, executor_container);
            let logs = dir.join("tasks").join(task_id);
            (dir, logs)
        }
        None => {
            let dir = sandbox(work_dir, agent_id, framework_id, task_id, container_id);
            (dir.clone(), dir)
        }
    }
}

/// Where container run directories live.
pub fn containers_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("containers")
}

/// The run directory of one container.
pub fn run_dir(work_dir: &Path, container_id: &str) -> PathBuf {
    containers_dir(work_dir).join(container_id)
}

/// The launch spec the per-task init reads, in a run directory.
pub const TASK_SPEC_FILE: &str = "task.json";
/// The task's end, written atomically by the per-task init, in a run directory.
pub const EXIT_STATUS_FILE: &str = "exit_status";

/// Whether an id can be a single path component (Mesos' rules for ids, plus no control
/// characters): non-empty, not `.` or `..`, no `/`, no NUL or other control character.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("empty id".into());
    }
    if id == "." || id == ".." {
        return Err(format!("'{id}' is not a usable id"));
    }
    if id.len() > 255 {
        return Err("id longer than 255 bytes".into());
    }
    if let Some(c) = id.chars().find(|c| *c == '/' || c.is_control()) {
        return Err(format!("id {id:?} contains {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_mesos_like() {
        let p = sandbox(Path::new("/w"), "a1", "f1", "t1", "c1");
        assert_eq!(p, Path::new("/w/slaves/a1/frameworks/f1/executors/t1/runs/c1"));
        assert_eq!(run_dir(Path::new("/w"), "c1"), Path::new("/w/containers/c1"));
    }

    #[test]
    fn ids_must_be_one_path_component() {
        for ok in ["t1", "my-task.1", "a b", "ümlaut", "..."] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "/", "a\0b", "a\nb", &"x".repeat(256)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
