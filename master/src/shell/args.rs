//! `corral master` flags.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use corral_wire::tls::TlsFiles;

use crate::core::MasterConfig;

use super::MasterError;

/// Flags of `corral master`.
#[derive(Debug, Clone, clap::Args)]
pub struct MasterArgs {
    /// Address to bind HTTP (tcp) and the agent endpoint (udp) on.
    #[arg(long, default_value = "0.0.0.0")]
    pub ip: IpAddr,

    /// Port for both HTTP (tcp) and agents (udp, QUIC). 0 picks a free one.
    #[arg(long, default_value_t = 5050)]
    pub port: u16,

    /// Address clients and agents are told to use (MasterInfo). Default: the bind address, or
    /// for a wildcard bind, the address of the outward interface (loopback if none).
    #[arg(long)]
    pub advertise_ip: Option<Ipv4Addr>,

    /// Hostname reported in MasterInfo. Default: the advertised address.
    #[arg(long)]
    pub hostname: Option<String>,

    /// Directory for the master's state (logs and, with HA, the replicated log).
    #[arg(long, default_value = "/var/lib/corral/master")]
    pub work_dir: PathBuf,

    /// Directory with the cluster TLS material: ca.pem, master.pem, master-key.pem (as
    /// written by `corral certs`). Agents must present a certificate signed by ca.pem.
    #[arg(long, default_value = "/etc/corral/tls")]
    pub tls_dir: PathBuf,

    /// CA certificate (overrides TLS_DIR/ca.pem).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,

    /// Master certificate (overrides TLS_DIR/master.pem).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,

    /// Master private key (overrides TLS_DIR/master-key.pem).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,

    /// How often each agent is pinged; a ping unanswered when the next is due counts as
    /// missed (e.g. `15s`, `500ms`).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub agent_ping_timeout: Duration,

    /// Consecutive missed pings after which an agent is unreachable and its tasks are
    /// reported TASK_LOST (TASK_UNREACHABLE to partition-aware frameworks).
    #[arg(long, default_value_t = 5)]
    pub max_agent_ping_timeouts: u32,

    /// After a restart, how long agents admitted before have to re-register before they are
    /// forgotten; meanwhile reconciliation does not answer for tasks they may hold.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub agent_reregister_timeout: Duration,

    /// Role weights for DRF, e.g. `prod=3,batch=1` (default weight 1).
    #[arg(long, default_value = "")]
    pub weights: String,

    /// Completed frameworks kept for /state.
    #[arg(long, default_value_t = 50)]
    pub max_completed_frameworks: usize,

    /// Completed tasks kept per framework for /state.
    #[arg(long, default_value_t = 1000)]
    pub max_completed_tasks_per_framework: usize,

    /// Largest agent message accepted, in bytes (checked before allocating).
    #[arg(long, default_value_t = corral_wire::frame::DEFAULT_MAX_FRAME)]
    pub max_frame: usize,
}

impl MasterArgs {
    pub fn tls_files(&self) -> TlsFiles {
        let d = TlsFiles::in_dir(&self.tls_dir, "master");
        TlsFiles {
            ca: self.tls_ca.clone().unwrap_or(d.ca),
            cert: self.tls_cert.clone().unwrap_or(d.cert),
            key: self.tls_key.clone().unwrap_or(d.key),
        }
    }

    pub fn core_config(&self) -> Result<MasterConfig, MasterError> {
        let mut weights = Vec::new();
        for item in self.weights.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (role, w) = item.split_once('=').ok_or_else(|| {
                MasterError::Flag(format!("--weights: expected ROLE=WEIGHT, got '{item}'"))
            })?;
            corral_wire::mesos::validate_role(role)
                .map_err(|e| MasterError::Flag(format!("--weights: {e}")))?;
            let w: f64 =
                w.parse().ok().filter(|w: &f64| w.is_finite() && *w > 0.0).ok_or_else(|| {
                    MasterError::Flag(format!("--weights: '{w}' is not a positive number"))
                })?;
            weights.push((role.to_string(), w));
        }
        if self.agent_ping_timeout.is_zero() {
            return Err(MasterError::Flag("--agent-ping-timeout must be positive".into()));
        }
        if self.max_agent_ping_timeouts == 0 {
            return Err(MasterError::Flag("--max-agent-ping-timeouts must be at least 1".into()));
        }
        Ok(MasterConfig {
            agent_ping_timeout: self.agent_ping_timeout,
            max_agent_ping_timeouts: self.max_agent_ping_timeouts,
            max_completed_frameworks: self.max_completed_frameworks,
            max_completed_tasks_per_framework: self.max_completed_tasks_per_framework,
            weights,
            agent_reregister_timeout: self.agent_reregister_timeout,
            stopwatch: super::clock::mono_ns,
            ..MasterConfig::default()
        })
    }

    /// The flags as `/flags` and `/state` report them (Mesos names where they exist).
    pub fn flag_list(&self) -> Vec<(String, String)> {
        vec![
            ("ip".into(), self.ip.to_string()),
            ("port".into(), self.port.to_string()),
            ("hostname".into(), self.hostname.clone().unwrap_or_default()),
            ("work_dir".into(), self.work_dir.display().to_string()),
            (
                "agent_ping_timeout".into(),
                humantime::format_duration(self.agent_ping_timeout).to_string(),
            ),
            ("max_agent_ping_timeouts".into(), self.max_agent_ping_timeouts.to_string()),
            (
                "agent_reregister_timeout".into(),
                humantime::format_duration(self.agent_reregister_timeout).to_string(),
            ),
            ("weights".into(), self.weights.clone()),
            ("max_completed_frameworks".into(), self.max_completed_frameworks.to_string()),
            (
                "max_completed_tasks_per_framework".into(),
                self.max_completed_tasks_per_framework.to_string(),
            ),
            ("authenticate_agents".into(), "true".into()),
            ("agent_transport".into(), "quic+mtls".into()),
        ]
    }
}
