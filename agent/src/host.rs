//! What this machine offers and who it is: resource detection (cpus, memory, disk, ports)
//! with `--resources` overrides, `--attributes` parsing, hostname, boot id and the agent's own
//! user. The arithmetic and parsing are pure functions; only `detect_*` read the system.
#![forbid(unsafe_code)]

use std::path::Path;

use corral_wire::proto::{Attribute, AttributeValue};
use corral_wire::resources::{Resources, Value, parse_value};

const MIB: u64 = 1 << 20;

/// The port range offered when `--resources` names none.
pub const DEFAULT_PORTS: (u64, u64) = (31000, 32000);

/// Memory to offer (MB) out of `total_bytes`: all but 1 GiB when there are at least 2 GiB,
/// else half.
pub fn offered_mem_mb(total_bytes: u64) -> u64 {
    let total = total_bytes / MIB;
    if total >= 2048 { total - 1024 } else { total / 2 }
}

/// Disk to offer (MB) out of a filesystem of `total_bytes`: all but 5 GiB or half, whichever
/// reserve is smaller.
pub fn offered_disk_mb(total_bytes: u64) -> u64 {
    let total = total_bytes / MIB;
    total - (5 * 1024).min(total / 2)
}

/// `MemTotal` in bytes from the text of `/proc/meminfo`.
pub fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => Some(value * 1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// What the machine has: `cpus` (available parallelism), `mem` and `disk` (MB, after the
/// reserves above; `disk` from the filesystem of `work_dir`) and `ports`.
pub fn detect_resources(work_dir: &Path) -> Resources {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut r = Resources::new().with_scalar("cpus", cpus as f64);
    match std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(parse_meminfo_total) {
        Some(total) => r = r.with_scalar("mem", offered_mem_mb(total) as f64),
        None => tracing::warn!("cannot read MemTotal from /proc/meminfo; offering no memory"),
    }
    match nix::sys::statvfs::statvfs(work_dir) {
        Ok(s) => {
            let total = s.blocks().saturating_mul(s.fragment_size());
            r = r.with_scalar("disk", offered_disk_mb(total) as f64);
        }
        Err(e) => {
            tracing::warn!(path = %work_dir.display(), "cannot statvfs the work dir ({e}); offering no disk")
        }
    }
    r.with_ranges("ports", &[DEFAULT_PORTS])
}

/// `detected`, with every resource named in `overrides` (reserved or not) replaced by the
/// override.
pub fn with_overrides(detected: &Resources, overrides: &Resources) -> Resources {
    let mut out = overrides.clone();
    for (key, value) in detected.iter() {
        if overrides.iter().any(|(k, _)| k.name == key.name) {
            continue;
        }
        out.insert(key.clone(), value.clone());
    }
    out
}

/// Parses `--attributes`: `name:value` pairs separated by `;`. A value is a scalar when it is
/// a number, ranges when `[a-b,c-d]`, a set when `{a,b}`, else text.
pub fn parse_attributes(text: &str) -> Result<Vec<Attribute>, String> {
    let mut out = Vec::new();
    for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) =
            item.split_once(':').ok_or_else(|| format!("expected NAME:VALUE, got '{item}'"))?;
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() {
            return Err(format!("empty attribute name in '{item}'"));
        }
        let value = match parse_value(value).map_err(|e| format!("attribute '{name}': {e}"))? {
            Some(Value::Scalar(s)) => AttributeValue::Scalar(s),
            Some(Value::Ranges(r)) => AttributeValue::Ranges(r),
            Some(Value::Set(items)) => AttributeValue::Set(items.into_iter().collect()),
            None => AttributeValue::Text(value.to_string()),
        };
        out.push(Attribute { name: name.to_string(), value });
    }
    Ok(out)
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".to_string())
}

/// The kernel's boot id; empty when unreadable.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Who the agent runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUser {
    pub uid: u32,
    pub name: String,
}

impl AgentUser {
    pub fn current() -> AgentUser {
        let uid = nix::unistd::geteuid();
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        AgentUser { uid: uid.as_raw(), name }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_wire::resources::{Ranges, Scalar};

    #[test]
    fn memory_reserve() {
        assert_eq!(offered_mem_mb(24 << 30), 24 * 1024 - 1024);
        assert_eq!(offered_mem_mb(2 << 30), 1024);
        assert_eq!(offered_mem_mb(1 << 30), 512);
        assert_eq!(offered_mem_mb(0), 0);
    }

    #[test]
    fn disk_reserve() {
        assert_eq!(offered_disk_mb(100 << 30), 100 * 1024 - 5 * 1024);
        assert_eq!(offered_disk_mb(8 << 30), 4 * 1024);
        assert_eq!(offered_disk_mb(0), 0);
    }

    #[test]
    fn meminfo() {
        let text = "MemFree:  10 kB\nMemTotal:       24576000 kB\nBuffers: 1 kB\n";
        assert_eq!(parse_meminfo_total(text), Some(24_576_000 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo_total("MemTotal: lots\n"), None);
    }

    #[test]
    fn detection_on_this_host() {
        let r = detect_resources(Path::new("/"));
        assert!(r.scalar("cpus").as_f64() >= 1.0);
        assert!(r.scalar("mem").as_f64() > 0.0);
        assert!(r.scalar("disk").as_f64() > 0.0);
        assert_eq!(r.ranges("ports").unwrap(), Ranges::new([DEFAULT_PORTS]));
    }

    #[test]
    fn overrides_replace_by_name() {
        let detected = Resources::new()
            .with_scalar("cpus", 8.0)
            .with_scalar("mem", 1000.0)
            .with_ranges("ports", &[(31000, 32000)]);
        let overrides = Resources::parse("cpus:2;ports:[5000-5001];gpus:1").unwrap();
        let r = with_overrides(&detected, &overrides);
        assert_eq!(r.scalar("cpus"), Scalar::from_f64(2.0));
        assert_eq!(r.scalar("mem"), Scalar::from_f64(1000.0));
        assert_eq!(r.scalar("gpus"), Scalar::from_f64(1.0));
        assert_eq!(r.ranges("ports").unwrap(), Ranges::new([(5000, 5001)]));
    }

    #[test]
    fn attributes() {
        let a =
            parse_attributes("rack:r1; zone:a;weight:2.5;ids:[1-3,7-9];os:{linux,debian}").unwrap();
        let names: Vec<_> = a.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, vec!["rack", "zone", "weight", "ids", "os"]);
        assert_eq!(a[0].value, AttributeValue::Text("r1".into()));
        assert_eq!(a[2].value, AttributeValue::Scalar(Scalar::from_f64(2.5)));
        assert_eq!(a[3].value, AttributeValue::Ranges(Ranges::new([(1, 3), (7, 9)])));
        // Sets are sets: kept sorted.
        assert_eq!(a[4].value, AttributeValue::Set(vec!["debian".into(), "linux".into()]));
        assert!(parse_attributes("").unwrap().is_empty());
        assert!(parse_attributes("novalue").is_err());
        assert!(parse_attributes(":x").is_err());
        assert!(parse_attributes("r:[a-b]").is_err());
    }
}

/// When process `pid` started, in clock ticks after boot (`/proc/PID/stat`, field 22): with
/// the pid, it names one process for the life of the boot.
pub fn process_start_time(pid: i32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat).ok_or_else(|| std::io::Error::other(format!("bad /proc/{pid}/stat")))
}

/// Field 22 of a `/proc/PID/stat` line; the command name (field 2) may hold spaces and ')'.
fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod start_time_tests {
    #[test]
    fn start_time_is_field_22_even_with_odd_names() {
        let line =
            "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(super::parse_start_time(line), Some(987654));
        assert_eq!(super::parse_start_time("1 (x) S"), None);
        let me = super::process_start_time(std::process::id() as i32).unwrap();
        assert!(me > 0);
    }
}
