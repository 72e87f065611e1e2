//! A heavy check in a binary of its own (so its 1,500 tasks do not run beside the CLI tests'
//! timing-sensitive ones): one ACCEPT launching more tasks than any per-message queue holds,
//! through `corral bench launch`.

// Tests drive real processes and measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::process::Command;

use corral_tests::{corral_bin, require_agent_host};

/// One ACCEPT launching more tasks than any per-message queue holds (the master once dropped
/// an agent's connection when 1,024 RunTask frames queued up, and lost the rest).
#[test]
fn bench_launch_runs_one_accept_of_1500_tasks_without_losing_one() {
    if !require_agent_host("bench_launch_runs_one_accept_of_1500_tasks_without_losing_one") {
        return;
    }
    let out = Command::new(corral_bin())
        .args(["bench", "launch", "--launches", "5", "--batch", "1500", "--ballast-mb", "0"])
        .arg("--no-crun")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("throughput: 1500 tasks (`sleep 300`) in one ACCEPT, all TASK_RUNNING"),
        "{stdout}"
    );
    // The scheduler's view of the offer path: 200 decline -> re-offer round trips over HTTP.
    assert!(
        stdout.contains("offer latency over HTTP on loopback") && stdout.contains("(n=200)"),
        "{stdout}"
    );
}

/// `corral bench output` runs every engine, checks that each moved every byte, and prints
/// its table (small sizes here: the figures are for BENCHMARKS.md, not for a test).
#[test]
fn bench_output_moves_every_byte_with_every_engine() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(corral_bin())
        .args(["bench", "output", "--streams", "2", "--records", "3000", "--bulk-mib", "2"])
        .args(["--rounds", "1", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for engine in ["io_uring splice (agent)", "poll+splice (fallback)", "read+write(2) per record"]
    {
        assert!(stdout.contains(engine), "{engine}: {stdout}");
    }
    assert!(stdout.contains("CPU ns/record") && stdout.contains("MB/s"), "{stdout}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "files removed");
}
