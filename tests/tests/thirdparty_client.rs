//! A third-party Mesos client library, unmodified, against a real cluster: pymesos 0.3.15
//! (PyPI) drives `tests/python/thirdparty_client.py`, which launches tasks, kills one,
//! reconciles explicitly and implicitly, and — after this test restarts the master on the same
//! port and work dir — resubscribes with the same framework id and finds its tasks still
//! running, with no TASK_LOST in between (the master recovers its registry).
//!
//! The library lives in a venv that `scripts/pyclient-venv.sh` builds (`scripts/test` builds it
//! before the tests; here it is built on demand and the test is skipped, saying why, where it
//! cannot be: no PyPI, no python3-venv or python3-dev).

// Tests drive real processes and measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use corral_tests::{Cluster, ClusterOptions, require_agent_host};

const TEST: &str = "pymesos_launches_kills_reconciles_and_resubscribes_after_a_master_restart";

#[test]
fn pymesos_launches_kills_reconciles_and_resubscribes_after_a_master_restart() {
    if !require_agent_host(TEST) {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let venv = Command::new(repo.join("scripts/pyclient-venv.sh"))
        .arg(repo.join(".venv-pyclient"))
        .output()
        .unwrap();
    if !venv.status.success() {
        let err = String::from_utf8_lossy(&venv.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        eprintln!(
            "SKIP {TEST}: cannot build the pymesos venv (needs PyPI, python3-venv, python3-dev): {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
        return;
    }
    let python = String::from_utf8_lossy(&venv.stdout).trim().to_string();

    let mut cluster = Cluster::start(ClusterOptions::default());
    let flag = cluster.dir.path().join("master-restarted");
    let log = cluster.dir.path().join("pymesos.log");
    let mut child = Command::new(&python)
        .arg(repo.join("tests/python/thirdparty_client.py"))
        .args(["--master", &format!("127.0.0.1:{}", cluster.master_port)])
        .arg("--restart-file")
        .arg(&flag)
        .args(["--timeout", "240"])
        // The restarted master recovers its registry: until the agent re-registers it does
        // not answer reconciliation, so no interim TASK_LOST may reach the framework.
        .arg("--strict-restart-reconcile")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let failure = |lines: &[String], why: &str| -> String {
        format!(
            "{why}\n--- client stdout\n{}\n--- pymesos log (stderr)\n{}",
            lines.join("\n"),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };
    // Phases 1-5, then the restart handshake.
    loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => {
                let ready = line.starts_with("READY-FOR-RESTART");
                lines.push(line);
                if ready {
                    break;
                }
            }
            Err(_) => panic!("{}", failure(&lines, "no READY-FOR-RESTART within 120 s")),
        }
    }
    cluster.restart_master();
    std::fs::write(&flag, "restarted\n").unwrap();
    // Phases 6 and 7: until the client's stdout ends.
    loop {
        match rx.recv_timeout(Duration::from_secs(240)) {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("{}", failure(&lines, "the client did not finish within 240 s"));
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(
        status.success() && lines.last().map(String::as_str) == Some("RESULT OK"),
        "{}",
        failure(&lines, &format!("the client exited with {status}"))
    );
    for phase in 1..=7 {
        assert!(
            lines.iter().any(|l| l.contains(&format!("PHASE {phase} OK"))),
            "{}",
            failure(&lines, &format!("phase {phase} did not pass"))
        );
    }
}
