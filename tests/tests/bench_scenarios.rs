//! `corral bench decline | churn | paper | updates` as a user runs them, at a small scale: each
//! runs the real master (its core alone in process, or the whole master with simulated agents
//! on real QUIC connections) against simulated agents and frameworks and prints its figures.
//! (The figures themselves are benchmarks, in BENCHMARKS.md; this checks that the scenarios
//! run, say which transport they used, and report what they promise.) Needs no root.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use corral_tests::corral_bin;

fn run(args: &[&str]) -> String {
    let out = Command::new(corral_bin()).arg("bench").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "corral bench {args:?}: {}\n{stdout}\n{stderr}", out.status);
    stdout
}

fn bench(args: &[&str]) -> String {
    let stdout = run(args);
    let transport =
        if args.contains(&"quic") { "transport: quic" } else { "transport: in-process" };
    assert!(stdout.contains(transport), "{stdout}");
    assert!(stdout.contains("offer latency (available → offer)"), "{stdout}");
    assert!(stdout.contains("allocation run"), "{stdout}");
    assert!(stdout.contains("RSS"), "{stdout}");
    assert!(stdout.contains("master CPU"), "{stdout}");
    stdout
}

/// The number after `label` on the result line.
fn number_after(text: &str, label: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with("result:")).unwrap_or_else(|| panic!("{text}"));
    let at = line.find(label).unwrap_or_else(|| panic!("no '{label}' in {line}"));
    line[at + label.len()..]
        .split_whitespace()
        .next()
        .and_then(|w| w.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .unwrap_or_else(|| panic!("no number after '{label}' in {line}"))
}

#[test]
fn churn_places_tasks_and_reports_placements_per_second() {
    let out = bench(&["churn", "--agents", "50", "--frameworks", "2", "--duration", "1s"]);
    let placed = number_after(&out, "result: ");
    assert!(placed > 100.0, "{out}");
    assert!(out.contains("placements/s"), "{out}");
    assert!(out.contains("accept → TASK_RUNNING"), "{out}");
}

#[test]
fn decline_offers_every_agent_to_every_framework_in_turn() {
    let out = bench(&["decline", "--agents", "40", "--frameworks", "5"]);
    // Five rounds of one offer per agent, each declined.
    assert_eq!(number_after(&out, "result: "), 200.0, "{out}");
    assert!(out.contains("offer → decline"), "{out}");
}

#[test]
fn paper_runs_a_fresh_frameworks_task_and_reports_its_overhead() {
    let out = bench(&["paper", "--agents", "100", "--frameworks", "4", "--duration", "1s"]);
    assert!(out.contains("the fresh frameworks' 10 s tasks finished"), "{out}");
    assert!(out.contains("(median of 5;"), "{out}");
    let total = number_after(&out, "finished ");
    assert!((10.0..15.0).contains(&total), "a 10 s task, plus the overhead: {out}");
    // Where the overhead went, and the offer path without the warm-up's samples.
    assert!(out.contains("the median probe's overhead, stage by stage: subscribe → SUBSCRIBED"));
    assert!(out.contains("offer path from a second before the probes subscribed"), "{out}");
}

/// Over QUIC: every simulated agent handshakes (mutual TLS) and registers on its own
/// connection, tasks are launched over it and their updates come back over it.
#[test]
fn churn_over_quic_places_tasks_through_real_agent_connections() {
    let out = bench(&[
        "churn",
        "--transport",
        "quic",
        "--agents",
        "20",
        "--frameworks",
        "2",
        "--duration",
        "1s",
    ]);
    assert!(number_after(&out, "result: ") > 100.0, "{out}");
    // The agents' own counters: updates sent over QUIC, and the master's acks back.
    let sent = out.split("agents sent ").nth(1).and_then(|r| r.split_whitespace().next());
    let sent: u64 = sent.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{out}"));
    assert!(sent > 200, "{out}");
}

#[test]
fn decline_over_quic_offers_every_agent_to_every_framework_in_turn() {
    let out = bench(&["decline", "--transport", "quic", "--agents", "30", "--frameworks", "5"]);
    assert_eq!(number_after(&out, "result: "), 150.0, "{out}");
}

/// One QUIC connection carrying status updates: each is acknowledged (the framework's
/// ACKNOWLEDGE turned into the master's StatusAck) and timed.
#[test]
fn updates_are_acknowledged_over_one_connection_and_timed() {
    let out = run(&["updates", "--window", "8", "--duration", "1s"]);
    assert!(out.contains("transport: quic"), "{out}");
    let acked = number_after(&out, "result: ");
    assert!(acked > 100.0, "{out}");
    assert!(out.contains("agent send → StatusAck"), "{out}");
    assert!(out.contains("updates/s"), "{out}");
}
