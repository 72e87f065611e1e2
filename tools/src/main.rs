//! `corral`: one binary for every role — the master and agent daemons, a local dev cluster,
//! a one-task framework (`corral run`), cluster tables, and certificate generation.
#![forbid(unsafe_code)]

/// mimalloc instead of glibc's malloc: the master's hot paths (offers, launches, status
/// updates) allocate many short-lived strings and vectors, and glibc's bins and consolidation
/// cost a third of the CPU of `corral bench churn` (profiled); mimalloc's thread-local free
/// lists do not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod bench_output;
mod bench_sim;
mod certs;
mod dev;
mod logs;
mod run;
mod tables;
mod top;

use std::ffi::OsStr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use corral_tools::client::MasterAddr;

#[derive(Debug, Parser)]
#[command(
    name = "corral",
    version,
    about = "Corral: a cluster manager that speaks the Apache Mesos v1 APIs"
)]
struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. `info`, `corral_master=debug`.
    #[arg(long, global = true, env = "CORRAL_LOG", default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a master (HTTP API and agent endpoint on one port number).
    Master(corral_master::MasterArgs),
    /// Run an agent: register with the master, run tasks in cgroups.
    Agent(corral_agent::AgentArgs),
    /// Run a local cluster: a standalone master and N agents as child processes, with a
    /// throwaway CA. Ctrl-C stops everything and leaves no process or cgroup behind.
    Dev(dev::DevArgs),
    /// Run one command as a task (a one-task framework, like mesos-execute): prints state
    /// transitions, then the task's stdout and stderr, and exits with the task's exit code.
    Run(run::RunArgs),
    /// List the cluster's agents.
    Agents(tables::TableArgs),
    /// List the cluster's frameworks.
    Frameworks(tables::TableArgs),
    /// List the cluster's tasks.
    Tasks(tables::TableArgs),
    /// A live view of the cluster's running tasks and what they use (CPU, memory, run-queue
    /// latency, network), sortable; `--batch` prints plain tables.
    Top(top::TopArgs),
    /// Print a task's stdout (or `--stderr`) from its sandbox; `-f` follows it, across
    /// rotations, until the task ends.
    Logs(logs::LogsArgs),
    /// Make TLS material for a cluster (CA, master and agent certificates).
    Certs(certs::CertsArgs),
    /// Benchmarks: `corral bench launch` (task launch latency and throughput vs crun).
    Bench(bench::BenchArgs),
}

/// Parses `--master` values.
pub fn parse_master(s: &str) -> Result<MasterAddr, String> {
    s.parse::<MasterAddr>().map_err(|e| e.to_string())
}

/// Logs to stderr through `filter`, reloadable so that the operator API's SET_LOGGING_LEVEL
/// can raise the verbosity for a while (1: debug, 2 and more: trace; 0: `filter` again).
fn init_logging(filter: &str) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let base = filter.to_string();
    let make = move |level: u32| -> EnvFilter {
        let spec = match level {
            0 => base.clone(),
            1 => format!("{base},debug"),
            _ => format!("{base},trace"),
        };
        EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let (layer, reload) = tracing_subscriber::reload::Layer::new(make(0));
    tracing_subscriber::registry()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();
    corral_master::logging::install(move |level| {
        reload.reload(make(level)).map_err(|e| format!("cannot change the log filter: {e}"))
    });
}

fn main() -> ExitCode {
    // The per-task init runs before anything else: no runtime, no logging setup.
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new(corral_agent::TASK_INIT_ARG)) {
        corral_agent::task_init_main();
    }
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new(corral_agent::LAUNCHER_ARG)) {
        corral_agent::launcher_main();
    }
    let mut cli = Cli::parse();
    // A benchmark's report is its output: the in-process daemons only log problems.
    if matches!(cli.command, Command::Bench(_)) && cli.log == "info" {
        cli.log = "warn".into();
    }
    init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corral: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Master(args) => {
                corral_master::run(args, shutdown_signal()).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Agent(args) => {
                corral_agent::run(args).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Dev(args) => dev::run(args).await,
            Command::Run(args) => run::run(args).await,
            Command::Agents(args) => tables::agents(args).await,
            Command::Frameworks(args) => tables::frameworks(args).await,
            Command::Tasks(args) => tables::tasks(args).await,
            Command::Top(args) => top::run(args).await,
            Command::Logs(args) => logs::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Certs(args) => certs::run(args),
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("corral: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        // Without signal handlers the daemon can only be killed; wait forever.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
