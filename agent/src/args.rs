//! The agent's command-line flags (`corral agent ...`) and the parsers of their values.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `corral agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The master to register with: `host:port` or `http://host:port`. The agent speaks QUIC
    /// over UDP to the same port number as the master's HTTP.
    #[arg(long, default_value = "127.0.0.1:5050")]
    pub master: String,

    /// The TLS server name to verify the master's certificate against [default: the host
    /// part of --master].
    #[arg(long, value_name = "NAME")]
    pub master_name: Option<String>,

    /// TCP port of the agent's HTTP API (0 picks a free one).
    #[arg(long, default_value_t = 5051)]
    pub port: u16,

    /// The hostname the agent reports [default: the system hostname].
    #[arg(long)]
    pub hostname: Option<String>,

    /// The IP address clients use to reach the agent's HTTP API [default: the local address
    /// of the socket towards the master, else 127.0.0.1].
    #[arg(long, value_name = "IP")]
    pub advertise_ip: Option<IpAddr>,

    /// Where sandboxes and container run directories live.
    #[arg(long, default_value = "/var/lib/corral/agent", value_name = "DIR")]
    pub work_dir: PathBuf,

    /// Resources to offer, in Mesos syntax (`cpus:2;mem:1024;disk:4096;ports:[31000-32000]`).
    /// Each named resource overrides the detected one.
    #[arg(long)]
    pub resources: Option<String>,

    /// Attributes of this agent (`rack:r1;zone:a`).
    #[arg(long)]
    pub attributes: Option<String>,

    /// The cgroup2 mount to create task cgroups under [default: /sys/fs/cgroup if it is
    /// cgroup2, else /sys/fs/cgroup/unified if it is].
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,

    /// The cgroup (relative to --cgroup-root) that holds the task cgroups
    /// [default: corral-agent-PORT, PORT being the HTTP port].
    #[arg(long, value_name = "NAME")]
    pub cgroup_parent: Option<String>,

    /// `strict`: refuse to start unless cpu, memory and pids limits can be enforced and tasks
    /// can get their own namespaces (the error names the missing controller and the file
    /// that shows it). `best-effort`: run anyway and report what is not enforced (in the
    /// log, the agent's /state and the master's /state).
    #[arg(long, value_enum, default_value = "strict")]
    pub isolation: crate::isolation::Policy,

    /// `pids.max` of every task (0: no limit): a fork bomb stops there.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub pids_max: u64,

    /// Let tasks use swap (by default `memory.swap.max` is 0: `mem` is all they get).
    #[arg(long)]
    pub allow_swap: bool,

    /// Set `memory.high` to this percentage of a task's memory: the kernel reclaims and
    /// throttles above it, before the OOM killer acts at `memory.max`.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub memory_high_percent: Option<u8>,

    /// `host`: tasks share the host's network. `isolated`: each task gets a fresh network
    /// namespace with only loopback.
    #[arg(long, value_enum, default_value = "host")]
    pub task_network: crate::isolation::Network,

    /// Directory with `ca.pem`, `agent.pem` and `agent-key.pem` (as `corral certs` writes).
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,

    /// The cluster CA certificate (overrides DIR/ca.pem).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// The agent's certificate (overrides DIR/agent.pem).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The agent's private key (overrides DIR/agent-key.pem).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Where per-task usage comes from. `auto`: eBPF programs where the kernel allows them
    /// (root, BTF), cgroup files otherwise, with the reason in /state. `ebpf`: refuse to
    /// start without them. `cgroup`: never load eBPF.
    #[arg(long, value_enum, default_value = "auto")]
    pub telemetry: crate::telemetry::Mode,

    /// How often every task's usage is sampled (for /metrics and the master).
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub telemetry_interval: Duration,

    /// Time between SIGTERM and SIGKILL when a task is killed and neither the kill request
    /// nor the task names one (`3s`, `500ms`).
    #[arg(long, default_value = "3s", value_parser = parse_duration, value_name = "DURATION")]
    pub default_kill_grace_period: Duration,

    /// Longest wait between two attempts to reach the master (the wait starts at 100ms and
    /// doubles).
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub reregister_backoff_max: Duration,

    /// First wait before an unacknowledged status update is sent again (then doubling).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub status_update_retry_min: Duration,

    /// Longest wait between two sends of an unacknowledged status update.
    #[arg(long, default_value = "10min", value_parser = parse_duration, value_name = "DURATION")]
    pub status_update_retry_max: Duration,

    /// Rotate a task's `stdout` or `stderr` once it holds this much (`10MB`, `512KiB`, bytes;
    /// 0: never).
    #[arg(long, default_value = "10MiB", value_parser = parse_size, value_name = "SIZE")]
    pub task_log_max_size: u64,

    /// How task output is moved into the sandbox files: `io-uring` (splices batched on one
    /// ring) or `poll-splice` (the same splices as system calls after poll(2)). Where
    /// io_uring is unavailable the agent uses `poll-splice` and says so in its `/state`.
    #[arg(long, value_enum, default_value = "io-uring")]
    pub task_output_engine: crate::output::EngineChoice,

    /// How many rotated files (`stdout.1` ... `stdout.N`) each task keeps.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub task_log_keep: u32,

    /// How a restarted agent treats a checkpoint it cannot read: `strict` refuses to start
    /// and names the file; `non-strict` logs it and recovers everything else.
    #[arg(long, value_enum, default_value = "strict")]
    pub recover: crate::checkpoint::RecoverMode,

    /// The binary that runs the per-task init (`BINARY __task-init ...`)
    /// [default: this executable].
    #[arg(long, value_name = "PATH")]
    pub launcher: Option<PathBuf>,
}

/// The master's address as given: a host (name or IP) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterAddr {
    pub host: String,
    pub port: u16,
}

/// The port the master listens on when `--master` names none.
pub const DEFAULT_MASTER_PORT: u16 = 5050;

/// Parses `host:port`, `http://host:port`, `https://host:port/`, `[::1]:5050` or a bare host.
pub fn parse_master(text: &str) -> Result<MasterAddr, String> {
    let t = text.trim();
    let t = t.strip_prefix("http://").or_else(|| t.strip_prefix("https://")).unwrap_or(t);
    let t = t.split('/').next().unwrap_or(t);
    if t.is_empty() {
        return Err(format!("no host in '{text}'"));
    }
    let bad_port = |p: &str| format!("bad port '{p}' in '{text}'");
    if let Some(rest) = t.strip_prefix('[') {
        let (host, after) =
            rest.split_once(']').ok_or_else(|| format!("unclosed '[' in '{text}'"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad_port(p))?,
            None if after.is_empty() => DEFAULT_MASTER_PORT,
            None => return Err(format!("unexpected '{after}' in '{text}'")),
        };
        return Ok(MasterAddr { host: host.to_string(), port });
    }
    match t.rsplit_once(':') {
        // An IPv6 address without brackets has several colons: all of it is the host.
        Some((host, _)) if host.contains(':') => {
            Ok(MasterAddr { host: t.to_string(), port: DEFAULT_MASTER_PORT })
        }
        Some((host, p)) if !host.is_empty() => {
            Ok(MasterAddr { host: host.to_string(), port: p.parse().map_err(|_| bad_port(p))? })
        }
        Some(_) => Err(format!("no host in '{text}'")),
        None => Ok(MasterAddr { host: t.to_string(), port: DEFAULT_MASTER_PORT }),
    }
}

/// Parses a size: bytes, or a number with `KB`/`MB`/`GB` (powers of 1000) or
/// `K`/`KiB`/`M`/`MiB`/`G`/`GiB` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("bad size '{text}'"))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "K" | "KiB" => 1024.0,
        "M" | "MiB" => 1048576.0,
        "G" | "GiB" => 1073741824.0,
        u => return Err(format!("unknown unit '{u}' in size '{text}'")),
    };
    Ok((value * mult) as u64)
}

/// Parses a duration: a decimal number and a unit, humantime style (`ns`, `us`, `ms`, `s`,
/// `m`/`min`, `h`, `d`) or Mesos style (`secs`, `mins`, `hrs`, `days`, `weeks`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("bad duration '{text}'"))?;
    let unit_secs = match unit.trim() {
        "ns" | "nsecs" => 1e-9,
        "us" | "usecs" | "µs" => 1e-6,
        "ms" | "msecs" => 1e-3,
        "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        "w" | "week" | "weeks" => 604_800.0,
        "" => return Err(format!("duration '{text}' needs a unit (e.g. 3s, 500ms)")),
        u => return Err(format!("unknown unit '{u}' in duration '{text}'")),
    };
    Duration::try_from_secs_f64(value * unit_secs)
        .map_err(|e| format!("bad duration '{text}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("1 parsec").is_err());
    }

    fn m(host: &str, port: u16) -> MasterAddr {
        MasterAddr { host: host.into(), port }
    }

    #[test]
    fn master_addresses() {
        assert_eq!(parse_master("127.0.0.1:5050").unwrap(), m("127.0.0.1", 5050));
        assert_eq!(parse_master("http://master.example:7070").unwrap(), m("master.example", 7070));
        assert_eq!(parse_master("http://master.example:7070/").unwrap(), m("master.example", 7070));
        assert_eq!(parse_master("master").unwrap(), m("master", 5050));
        assert_eq!(parse_master("[::1]:6060").unwrap(), m("::1", 6060));
        assert_eq!(parse_master("[::1]").unwrap(), m("::1", 5050));
        assert_eq!(parse_master("::1").unwrap(), m("::1", 5050));
        assert!(parse_master("host:notaport").is_err());
        assert!(parse_master(":5050").is_err());
        assert!(parse_master("http://").is_err());
        assert!(parse_master("[::1").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("10min").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("2secs").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1hrs").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert!(parse_duration("3").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3parsecs").is_err());
    }

    #[test]
    fn flags_parse_with_defaults() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            agent: AgentArgs,
        }
        let cli = Cli::try_parse_from(["corral", "--tls-dir", "/tls"]).unwrap();
        assert_eq!(cli.agent.master, "127.0.0.1:5050");
        assert_eq!(cli.agent.port, 5051);
        assert_eq!(cli.agent.default_kill_grace_period, Duration::from_secs(3));
        assert_eq!(cli.agent.reregister_backoff_max, Duration::from_secs(5));
        assert_eq!(cli.agent.status_update_retry_min, Duration::from_secs(10));
        assert_eq!(cli.agent.status_update_retry_max, Duration::from_secs(600));
        assert_eq!(cli.agent.isolation, crate::isolation::Policy::Strict);
        assert_eq!(cli.agent.pids_max, 4096);
        assert_eq!(cli.agent.task_network, crate::isolation::Network::Host);
        let cli = Cli::try_parse_from(["corral", "--isolation", "best-effort", "--pids-max", "0"])
            .unwrap();
        assert_eq!(cli.agent.isolation, crate::isolation::Policy::BestEffort);
        assert_eq!(cli.agent.pids_max, 0);
        assert!(Cli::try_parse_from(["corral", "--isolation", "loose"]).is_err());
        assert!(Cli::try_parse_from(["corral", "--memory-high-percent", "0"]).is_err());
        let cli = Cli::try_parse_from(["corral", "--default-kill-grace-period", "500ms"]).unwrap();
        assert_eq!(cli.agent.default_kill_grace_period, Duration::from_millis(500));
    }
}
