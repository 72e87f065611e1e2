//! `corral top`: a live view of every running task in the cluster and what it uses, from the
//! master's operator API (GET_TASKS with Corral's per-task statistics, GET_AGENTS for host
//! names), refreshed every interval.
//!
//! On a terminal it is a full-screen table (ratatui): `c`, `m`, `r` and `n` sort by CPU,
//! memory, run-queue latency (p99) or network; `q` or Ctrl-C quits. With `--batch` (or when
//! stdout is not a terminal) it prints one plain table per interval, `--iterations` times.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use corral_tools::client::MasterAddr;
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The master: HOST:PORT or http://HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:5050", value_parser = crate::parse_master)]
    master: MasterAddr,
    /// What to sort by (descending).
    #[arg(long, value_enum, default_value = "cpu")]
    sort: SortKey,
    /// Time between refreshes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Print plain tables instead of the full-screen view.
    #[arg(long)]
    batch: bool,
    /// Stop after this many refreshes (batch mode; 0: never).
    #[arg(short = 'n', long, default_value_t = 0)]
    iterations: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Cores used.
    Cpu,
    /// Resident memory.
    Mem,
    /// Run-queue latency, p99.
    Rq,
    /// Network bytes per second, in and out.
    Net,
}

/// One task's line.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub task_id: String,
    pub name: String,
    pub host: String,
    pub state: String,
    pub cpu: f64,
    pub cpu_limit: f64,
    pub mem: Option<u64>,
    pub mem_limit: Option<u64>,
    pub rq_p50: Option<f64>,
    pub rq_p99: Option<f64>,
    pub net_rx_rate: Option<f64>,
    pub net_tx_rate: Option<f64>,
    pub procs: Option<u64>,
    pub source: String,
}

/// What a previous poll saw of a task's network counters: (timestamp, rx, tx).
type NetSeen = HashMap<String, (f64, u64, u64)>;

async fn call(http: &reqwest::Client, master: &MasterAddr, body: Value) -> anyhow::Result<Value> {
    let url = master.url("/api/v1");
    let resp = http
        .post(&url)
        .header("Accept", "application/json")
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await.context("reading the master's answer")?;
    anyhow::ensure!(status.is_success(), "{url}: {status}: {text}");
    serde_json::from_str(&text).context("the master's answer is not JSON")
}

/// Polls the master once: the running tasks with their latest usage.
async fn poll(
    http: &reqwest::Client,
    master: &MasterAddr,
    seen: &mut NetSeen,
) -> anyhow::Result<Vec<Row>> {
    let tasks = call(http, master, json!({"type": "GET_TASKS"})).await?;
    let agents = call(http, master, json!({"type": "GET_AGENTS"})).await?;
    let hosts: HashMap<String, String> = agents["get_agents"]["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let info = &a["agent_info"];
            Some((
                info["id"]["value"].as_str()?.to_string(),
                info["hostname"].as_str()?.to_string(),
            ))
        })
        .collect();
    let list = tasks["get_tasks"]["tasks"].as_array().cloned().unwrap_or_default();
    Ok(rows(&list, &hosts, seen))
}

/// Rows from GET_TASKS' `tasks` (the live ones), with network rates against `seen`.
pub fn rows(tasks: &[Value], hosts: &HashMap<String, String>, seen: &mut NetSeen) -> Vec<Row> {
    let mut out = Vec::new();
    let mut next_seen = NetSeen::new();
    for t in tasks {
        let id = t["task_id"]["value"].as_str().unwrap_or_default().to_string();
        let st = &t["statistics"];
        let (rx, tx, ts) =
            (st["net_rx_bytes"].as_u64(), st["net_tx_bytes"].as_u64(), st["timestamp"].as_f64());
        let mut rates = (None, None);
        if let (Some(rx), Some(tx), Some(ts)) = (rx, tx, ts) {
            if let Some(&(pts, prx, ptx)) = seen.get(&id)
                && ts > pts
            {
                let dt = ts - pts;
                rates = (
                    Some(rx.saturating_sub(prx) as f64 / dt),
                    Some(tx.saturating_sub(ptx) as f64 / dt),
                );
            } else if let Some(&prev) = seen.get(&id) {
                next_seen.insert(id.clone(), prev);
            }
            next_seen.entry(id.clone()).or_insert((ts, rx, tx));
        }
        out.push(Row {
            name: t["name"].as_str().unwrap_or_default().to_string(),
            host: t["agent_id"]["value"]
                .as_str()
                .map(|a| hosts.get(a).cloned().unwrap_or_else(|| a.to_string()))
                .unwrap_or_default(),
            state: t["state"].as_str().unwrap_or_default().trim_start_matches("TASK_").to_string(),
            cpu: st["cpus_usage"].as_f64().unwrap_or(0.0),
            cpu_limit: st["cpus_limit"].as_f64().unwrap_or(0.0),
            mem: st["mem_rss_bytes"].as_u64().or(st["mem_total_bytes"].as_u64()),
            mem_limit: st["mem_limit_bytes"].as_u64(),
            rq_p50: st["runqueue_latency_p50_secs"].as_f64(),
            rq_p99: st["runqueue_latency_p99_secs"].as_f64(),
            net_rx_rate: rates.0,
            net_tx_rate: rates.1,
            procs: st["processes"].as_u64(),
            source: st["telemetry_source"].as_str().unwrap_or("-").to_string(),
            task_id: id,
        });
    }
    *seen = next_seen;
    out.retain(|r| matches!(r.state.as_str(), "STAGING" | "STARTING" | "RUNNING" | "KILLING"));
    out
}

pub fn sort(rows: &mut [Row], key: SortKey) {
    let k = |r: &Row| match key {
        SortKey::Cpu => r.cpu,
        SortKey::Mem => r.mem.unwrap_or(0) as f64,
        SortKey::Rq => r.rq_p99.unwrap_or(0.0),
        SortKey::Net => r.net_rx_rate.unwrap_or(0.0) + r.net_tx_rate.unwrap_or(0.0),
    };
    rows.sort_by(|a, b| k(b).total_cmp(&k(a)).then_with(|| a.task_id.cmp(&b.task_id)));
}

const HEADER: [&str; 11] = [
    "TASK",
    "NAME",
    "HOST",
    "STATE",
    "CPU",
    "CPU LIM",
    "MEM",
    "MEM LIM",
    "RQ p50/p99",
    "NET rx/tx /s",
    "PROCS",
];

fn bytes(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        Some(b) if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        Some(b) if b >= 1 << 10 => format!("{:.1}K", b as f64 / 1024.0),
        Some(b) => format!("{b}B"),
    }
}

fn secs(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s >= 1.0 => format!("{s:.1}s"),
        Some(s) if s >= 1e-3 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{:.0}us", s * 1e6),
    }
}

/// A row's cells, in [`HEADER`] order.
pub fn cells(r: &Row) -> [String; 11] {
    [
        r.task_id.clone(),
        r.name.clone(),
        r.host.clone(),
        r.state.clone(),
        format!("{:.2}", r.cpu),
        format!("{:.2}", r.cpu_limit),
        bytes(r.mem),
        bytes(r.mem_limit),
        format!("{}/{}", secs(r.rq_p50), secs(r.rq_p99)),
        format!(
            "{}/{}",
            bytes(r.net_rx_rate.map(|v| v as u64)),
            bytes(r.net_tx_rate.map(|v| v as u64))
        ),
        r.procs.map_or("-".into(), |p| p.to_string()),
    ]
}

/// The plain table (batch mode).
pub fn render_text(rows: &[Row]) -> String {
    let all: Vec<[String; 11]> = rows.iter().map(cells).collect();
    let mut widths: Vec<usize> = HEADER.iter().map(|h| h.len()).collect();
    for r in &all {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let s: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        s.join("  ").trim_end().to_string()
    };
    let mut out = line(&HEADER.map(String::from));
    for r in &all {
        out.push('\n');
        out.push_str(&line(r));
    }
    out.push('\n');
    out
}

pub async fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    if args.batch || !std::io::stdout().is_terminal() {
        return batch(&args, &http).await;
    }
    interactive(&args, &http).await
}

async fn batch(args: &TopArgs, http: &reqwest::Client) -> anyhow::Result<ExitCode> {
    let mut seen = NetSeen::new();
    let mut n = 0;
    loop {
        let mut rows = poll(http, &args.master, &mut seen).await?;
        sort(&mut rows, args.sort);
        println!("{} running tasks, by {:?}", rows.len(), args.sort);
        print!("{}", render_text(&rows));
        n += 1;
        if args.iterations != 0 && n >= args.iterations {
            return Ok(ExitCode::SUCCESS);
        }
        println!();
        tokio::time::sleep(args.interval).await;
    }
}

async fn interactive(args: &TopArgs, http: &reqwest::Client) -> anyhow::Result<ExitCode> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Modifier, Style};
    use ratatui::widgets::{Cell, Paragraph, Row as TRow, Table};

    let mut terminal = ratatui::init();
    let mut seen = NetSeen::new();
    let mut key = args.sort;
    let mut status = String::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut next_poll = tokio::time::Instant::now();
    let result: anyhow::Result<()> = async {
        loop {
            if tokio::time::Instant::now() >= next_poll {
                match poll(http, &args.master, &mut seen).await {
                    Ok(r) => {
                        rows = r;
                        status = format!("{} running tasks", rows.len());
                    }
                    Err(e) => status = format!("{e:#}"),
                }
                next_poll = tokio::time::Instant::now() + args.interval;
            }
            sort(&mut rows, key);
            terminal.draw(|f| {
                let [top, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(f.area());
                f.render_widget(
                    Paragraph::new(format!(
                        "corral top · {} · sort {:?} (c cpu, m mem, r run-queue, n net) · q quits · {status}",
                        args.master.host_port(),
                        key
                    )),
                    top,
                );
                let widths = [
                    Constraint::Fill(3),
                    Constraint::Fill(2),
                    Constraint::Fill(2),
                    Constraint::Length(9),
                    Constraint::Length(6),
                    Constraint::Length(7),
                    Constraint::Length(8),
                    Constraint::Length(8),
                    Constraint::Length(15),
                    Constraint::Length(15),
                    Constraint::Length(5),
                ];
                let table = Table::new(
                    rows.iter().map(|r| TRow::new(cells(r).into_iter().map(Cell::from))),
                    widths,
                )
                .header(TRow::new(HEADER.map(Cell::from)).style(Style::new().add_modifier(Modifier::REVERSED)));
                f.render_widget(table, body);
            })?;
            // Keys until the next refresh; never block the runtime.
            let wait = next_poll.saturating_duration_since(tokio::time::Instant::now());
            let got = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Event>> {
                if event::poll(wait.min(Duration::from_millis(250)))? { event::read().map(Some) } else { Ok(None) }
            })
            .await??;
            if let Some(Event::Key(k)) = got {
                match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return Ok(()),
                    KeyCode::Char('c') => key = SortKey::Cpu,
                    KeyCode::Char('m') => key = SortKey::Mem,
                    KeyCode::Char('r') => key = SortKey::Rq,
                    KeyCode::Char('n') => key = SortKey::Net,
                    _ => {}
                }
            }
        }
    }
    .await;
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, state: &str, cpu: f64, mem: u64, p99: f64, ts: f64, rx: u64) -> Value {
        json!({
            "task_id": {"value": id}, "name": id, "agent_id": {"value": "a1"}, "state": state,
            "statistics": {"timestamp": ts, "cpus_usage": cpu, "cpus_limit": 1.0, "mem_rss_bytes": mem,
                           "mem_limit_bytes": 1u64 << 30, "runqueue_latency_p50_secs": p99 / 10.0,
                           "runqueue_latency_p99_secs": p99, "net_rx_bytes": rx, "net_tx_bytes": 0,
                           "processes": 2, "telemetry_source": "ebpf"}
        })
    }

    #[test]
    fn live_tasks_sorted_by_each_key_with_network_rates() {
        let hosts = HashMap::from([("a1".to_string(), "node-1".to_string())]);
        let mut seen = NetSeen::new();
        let first = [
            task("busy", "TASK_RUNNING", 0.98, 10 << 20, 1e-4, 100.0, 0),
            task("fat", "TASK_RUNNING", 0.01, 900 << 20, 1e-5, 100.0, 0),
            task("queued", "TASK_RUNNING", 0.40, 20 << 20, 4e-3, 100.0, 0),
            task("done", "TASK_FINISHED", 0.0, 0, 0.0, 100.0, 0),
        ];
        let mut r = rows(&first, &hosts, &mut seen);
        assert_eq!(r.len(), 3, "finished tasks are not shown");
        assert_eq!(r[0].host, "node-1");
        let order = |r: &[Row]| r.iter().map(|x| x.task_id.clone()).collect::<Vec<_>>();
        sort(&mut r, SortKey::Cpu);
        assert_eq!(order(&r), ["busy", "queued", "fat"]);
        sort(&mut r, SortKey::Mem);
        assert_eq!(order(&r), ["fat", "queued", "busy"]);
        sort(&mut r, SortKey::Rq);
        assert_eq!(order(&r), ["queued", "busy", "fat"]);
        assert!(r.iter().all(|x| x.net_rx_rate.is_none()), "no rate from one poll");
        let second = [task("fat", "TASK_RUNNING", 0.01, 900 << 20, 1e-5, 102.0, 4_000_000)];
        let r = rows(&second, &hosts, &mut seen);
        assert_eq!(r[0].net_rx_rate, Some(2_000_000.0));
        let text = render_text(&r);
        assert!(text.starts_with("TASK"), "{text}");
        assert!(text.contains("900.0M") && text.contains("1.9M/0B"), "{text}");
    }
}
