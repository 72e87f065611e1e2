/* Types shared between the programs (telemetry.bpf.c) and the agent (src/types.rs, which
 * mirrors them as #[repr(C)] structs; a test compares both layouts through the object's BTF).
 * Change one side and the other in the same commit. */
#pragma once

/* Run-queue latency histogram: slot i counts waits of [2^i, 2^(i+1)) ns (slot 0 also 0 and 1
 * ns); the last slot also holds everything longer. 2^31 ns is 2.1 s. */
#define RQ_SLOTS 32

/* What the programs count for one task's cgroup. The `tasks` map holds one per CPU (no atomics
 * on the hot path); the agent sums them. All counters only grow. */
struct task_stats {
	__u64 oncpu_ns;          /* scheduler runtime, added when a thread is switched out */
	__u64 switches;          /* times switched out */
	__u64 involuntary;       /* ... of which while still runnable (preempted) */
	__u64 rq_waits;          /* stretches on a CPU, each after a run-queue wait */
	__u64 rq_wait_ns;        /* their total */
	__u64 rq_hist[RQ_SLOTS]; /* their distribution */
	__u64 page_faults;       /* user-mode page faults */
	__u64 blk_read_bytes;    /* bios submitted by the task's threads */
	__u64 blk_write_bytes;
	__u64 blk_read_ops;
	__u64 blk_write_ops;
	__u64 execs;
	__u64 forks;             /* new processes */
	__u64 threads;           /* new threads */
	__u64 exits;             /* processes that ended */
	__u64 oom_kills;         /* processes the OOM killer chose */
	__u64 net_rx_bytes;      /* IP bytes through the task's sockets */
	__u64 net_rx_packets;
	__u64 net_tx_bytes;
	__u64 net_tx_packets;
};

/* Per CPU: the thread on this CPU now (its pid: thread id), and its scheduler runtime
 * (se.sum_exec_runtime) and run-queue delay (sched_info.run_delay) when it came on. The agent
 * adds the running stretch of a tracked thread when it samples (from /proc/PID/schedstat), so
 * a task that never leaves its CPU still shows its time. */
struct cpu_slot {
	__u64 pid;
	__u64 runtime_base;
	__u64 delay_base;
};
