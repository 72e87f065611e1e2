//! `corral logs [-f] TASK`: a task's stdout (or `--stderr`) through its agent's files API.
//!
//! The task is found in the master's `/state` (running or completed, any framework unless
//! `--framework` picks one), its agent from the agent's `pid` (`slave(1)@HOST:PORT`), its
//! sandbox from the agent's `/state`. Without `-f` it prints the whole log: the rotated files
//! still kept (`stdout.N` ... `stdout.1`), then `stdout`. With `-f` it prints the end of the
//! log and then follows it, polling `/files/read`, until the task has ended and everything is
//! printed.
//!
//! Rotation is followed by file identity: the agent's `/files/read` and `/files/browse`
//! carry each file's `inode` (a Corral extension; Mesos clients ignore it). When `stdout` is
//! another file than the one being read, the rest of the old one is found among the rotated
//! files by its inode and printed, then the files rotated after it, then the new `stdout`
//! from its start: nothing is skipped or printed twice, however many rotations happened
//! between two polls (as long as the old file is still kept).

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;

use corral_tools::client::{self, MasterAddr, urlencode};

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The task's id.
    pub task: String,
    /// The master (HOST:PORT or URL).
    #[arg(long, default_value = "127.0.0.1:5050", value_parser = crate::parse_master)]
    pub master: MasterAddr,
    /// The task's framework, where several have a task of that id.
    #[arg(long)]
    pub framework: Option<String>,
    /// Follow: keep printing what the task writes until it has ended.
    #[arg(short, long)]
    pub follow: bool,
    /// Print stderr instead of stdout.
    #[arg(long)]
    pub stderr: bool,
    /// With `-f`: how much of the end to print first (bytes).
    #[arg(long, default_value_t = 4096)]
    pub tail: u64,
    /// With `-f`: how often to look for more.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

/// Where a task's log is.
struct Located {
    agent_base: String,
    dir: String,
    framework_id: String,
}

pub async fn run(args: LogsArgs) -> anyhow::Result<()> {
    let name = if args.stderr { "stderr" } else { "stdout" };
    let loc = locate(&args).await?;
    let path = format!("{}/{name}", loc.dir);
    let mut out = std::io::stdout().lock();
    if !args.follow {
        let rotated = rotated_files(&loc.agent_base, &loc.dir, name).await?;
        for (p, _) in rotated.iter().rev() {
            copy_from(&loc.agent_base, p, 0, &mut out).await?;
        }
        copy_from(&loc.agent_base, &path, 0, &mut out).await?;
        return Ok(());
    }
    // Start near the end, at a line boundary where there is one.
    let (size, mut inode) = size_of(&loc.agent_base, &path).await?;
    let mut offset = size.saturating_sub(args.tail);
    if offset > 0 {
        let (data, _, _) = read(&loc.agent_base, &path, offset).await?;
        if let Some(nl) = data.find('\n') {
            offset += nl as u64 + 1;
        }
    }
    let mut ended_polls = 0;
    loop {
        let (data, _, now_inode) = read(&loc.agent_base, &path, offset).await?;
        if now_inode != inode {
            // Rotated: finish the file we were reading, then the ones rotated after it.
            let rotated = rotated_files(&loc.agent_base, &loc.dir, name).await?;
            match rotated.iter().position(|(_, ino)| *ino == inode) {
                Some(i) => {
                    copy_from(&loc.agent_base, &rotated[i].0, offset, &mut out).await?;
                    for (p, _) in rotated[..i].iter().rev() {
                        copy_from(&loc.agent_base, p, 0, &mut out).await?;
                    }
                }
                None => eprintln!(
                    "corral logs: the log rotated past what is kept; some output was skipped"
                ),
            }
            inode = now_inode;
            offset = 0;
            continue;
        }
        if !data.is_empty() {
            out.write_all(data.as_bytes())?;
            out.flush()?;
            offset += data.len() as u64;
            continue;
        }
        // Nothing new: done once the task has ended (and a last look found nothing).
        if task_ended(&args.master, &loc.framework_id, &args.task).await? {
            ended_polls += 1;
            if ended_polls > 1 {
                return Ok(());
            }
        }
        tokio::time::sleep(args.interval).await;
    }
}

/// Prints `path` from `offset` to its current end.
async fn copy_from(
    base: &str,
    path: &str,
    mut offset: u64,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    loop {
        let (data, _, _) = read(base, path, offset).await?;
        if data.is_empty() {
            return Ok(());
        }
        out.write_all(data.as_bytes())?;
        offset += data.len() as u64;
    }
}

/// `/files/read` at `offset`: (data, offset, inode).
async fn read(base: &str, path: &str, offset: u64) -> anyhow::Result<(String, u64, u64)> {
    let url = format!("{base}/files/read?path={}&offset={offset}", urlencode(path));
    let v = client::get_json(&url).await.with_context(|| format!("reading {path}"))?;
    let data = v["data"].as_str().unwrap_or_default().to_string();
    Ok((data, v["offset"].as_u64().unwrap_or(offset), v["inode"].as_u64().unwrap_or(0)))
}

/// (size, inode) of a file.
async fn size_of(base: &str, path: &str) -> anyhow::Result<(u64, u64)> {
    let url = format!("{base}/files/read?path={}&offset=-1", urlencode(path));
    let v = client::get_json(&url).await.with_context(|| format!("reading {path}"))?;
    Ok((v["offset"].as_u64().unwrap_or(0), v["inode"].as_u64().unwrap_or(0)))
}

/// The rotated files of `name` in `dir`, newest (`.1`) first, with their inodes.
async fn rotated_files(base: &str, dir: &str, name: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let url = format!("{base}/files/browse?path={}", urlencode(dir));
    let list = client::get_json(&url).await.with_context(|| format!("listing {dir}"))?;
    let mut found: Vec<(u32, String, u64)> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| {
            let path = f["path"].as_str()?;
            let file = path.rsplit('/').next()?;
            let n: u32 = file.strip_prefix(name)?.strip_prefix('.')?.parse().ok()?;
            Some((n, path.to_string(), f["inode"].as_u64().unwrap_or(0)))
        })
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, p, i)| (p, i)).collect())
}

/// Finds the task, its agent and its sandbox.
async fn locate(args: &LogsArgs) -> anyhow::Result<Located> {
    let state = client::state(&args.master).await.context("reading the master's /state")?;
    let mut hits = Vec::new();
    for fw in frameworks(&state) {
        let fid = fw["id"].as_str().unwrap_or_default();
        if args.framework.as_deref().is_some_and(|f| f != fid) {
            continue;
        }
        for t in
            fw["tasks"].as_array().into_iter().chain(fw["completed_tasks"].as_array()).flatten()
        {
            if t["id"] == args.task.as_str() {
                hits.push((
                    fid.to_string(),
                    t["slave_id"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    hits.dedup();
    let (framework_id, agent_id) = match hits.len() {
        0 => bail!("no task '{}' on this cluster", args.task),
        1 => hits.remove(0),
        _ => bail!("several frameworks have a task '{}': pick one with --framework", args.task),
    };
    let agent = state["slaves"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"] == agent_id.as_str())
        .ok_or_else(|| anyhow!("agent {agent_id} of task '{}' is not registered", args.task))?;
    let hostport = agent["pid"]
        .as_str()
        .and_then(|p| p.split_once('@'))
        .map(|(_, hp)| hp.to_string())
        .ok_or_else(|| anyhow!("agent {agent_id} has no address"))?;
    let agent_base = format!("http://{hostport}");
    let dir = client::sandbox_of(&agent_base, &framework_id, &args.task)
        .await?
        .ok_or_else(|| anyhow!("agent {agent_id} lists no sandbox for task '{}'", args.task))?;
    Ok(Located { agent_base, dir, framework_id })
}

fn frameworks(state: &Value) -> impl Iterator<Item = &Value> {
    state["frameworks"]
        .as_array()
        .into_iter()
        .chain(state["completed_frameworks"].as_array())
        .flatten()
}

/// Whether the task is in a terminal state (or gone from the master).
async fn task_ended(
    master: &MasterAddr,
    framework_id: &str,
    task_id: &str,
) -> anyhow::Result<bool> {
    let state = client::state(master).await.context("reading the master's /state")?;
    let live = frameworks(&state)
        .filter(|f| f["id"] == framework_id)
        .flat_map(|f| f["tasks"].as_array().into_iter().flatten())
        .any(|t| {
            t["id"] == task_id
                && !matches!(
                    t["state"].as_str(),
                    Some(
                        "TASK_FINISHED"
                            | "TASK_FAILED"
                            | "TASK_KILLED"
                            | "TASK_LOST"
                            | "TASK_ERROR"
                            | "TASK_DROPPED"
                            | "TASK_GONE"
                            | "TASK_GONE_BY_OPERATOR"
                    )
                )
        });
    Ok(!live)
}
