/* Corral's per-task telemetry. Every counter is keyed by the cgroup v2 id of the task's container
 * (the inode of its directory), found as the ancestor at `container_level` of the cgroup a thread
 * is in, so a task's own sub-cgroups still count for it. The agent inserts a zeroed entry into
 * `tasks` when it creates a container and deletes it when the container is gone; the programs
 * only look entries up and never insert, so the map cannot fill with cgroups nobody watches.
 *
 * Programs are BTF tracepoints (tp_btf: direct, CO-RE-relocated loads from the kernel's structs;
 * no kprobes) and cgroup_skb for the network. Hot paths read no clock, do one per-CPU hash
 * lookup, and plain adds on per-CPU values. */
#include "mini_vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "telemetry.h"

char LICENSE[] SEC("license") = "GPL";

/* The depth of the containers' cgroups below the hierarchy's root; set by the loader. */
const volatile __u32 container_level = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct task_stats);
} tasks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_slot);
} cpu_slots SEC(".maps");

/* Threads the OOM killer chose, counted when they exit (where their cgroup is current). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} oom_victims SEC(".maps");

/* Per CPU: the last container id looked up and not found. Most threads on a host are in no
 * tracked container; this spares them the hash lookup on every switch and fault. A container's
 * id is new when it is created and tracked before anything runs in it; the agent clears this
 * cache whenever it tracks one anyway (a re-adopted container may have been seen untracked). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} untracked_cache SEC(".maps");

static __always_inline struct task_stats *current_stats(void)
{
	__u32 level = container_level, zero = 0;
	struct task_stats *st;
	__u64 id, *miss;

	if (!level)
		return 0;
	id = bpf_get_current_ancestor_cgroup_id(level);
	if (!id)
		return 0;
	miss = bpf_map_lookup_elem(&untracked_cache, &zero);
	if (miss && *miss == id)
		return 0;
	st = bpf_map_lookup_elem(&tasks, &id);
	if (!st && miss)
		*miss = id;
	return st;
}

static __always_inline __u32 log2_slot(__u64 v)
{
	__u32 r = 0;

	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) { r += 1; }
	return r >= RQ_SLOTS ? RQ_SLOTS - 1 : r;
}

/* The one hot program. A thread's stretch on a CPU runs from one switch to the next; the slot of
 * the CPU remembers, from when the thread came on, its scheduler runtime and its run-queue delay
 * (se.sum_exec_runtime and sched_info.run_delay: what cpu.stat and /proc/PID/schedstat sum).
 * When it leaves, the growth of each is charged to its container: the runtime as CPU time, the
 * delay as the run-queue wait that preceded this stretch (the scheduler adds it on arrival). No
 * clock is read and no per-thread map is kept. */
SEC("tp_btf/sched_switch")
int BPF_PROG(on_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 zero = 0;
	struct cpu_slot *slot = bpf_map_lookup_elem(&cpu_slots, &zero);
	struct task_stats *st;
	bool has_delay = bpf_core_field_exists(next->sched_info);

	if (!slot)
		return 0;
	st = current_stats();
	if (st && slot->pid == (__u64)prev->pid) {
		__u64 runtime = prev->se.sum_exec_runtime;

		if (runtime > slot->runtime_base)
			st->oncpu_ns += runtime - slot->runtime_base;
		st->switches++;
		if (prev->__state == 0)
			st->involuntary++;
		if (has_delay) {
			__u64 delay = prev->sched_info.run_delay;
			__u64 wait = delay > slot->delay_base ? delay - slot->delay_base : 0;

			st->rq_waits++;
			st->rq_wait_ns += wait;
			st->rq_hist[log2_slot(wait) & (RQ_SLOTS - 1)]++;
		}
	}
	slot->pid = next->pid;
	slot->runtime_base = next->se.sum_exec_runtime;
	slot->delay_base = has_delay ? next->sched_info.run_delay : 0;
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_sched_process_fork, struct task_struct *parent, struct task_struct *child)
{
	struct task_stats *st = current_stats();

	if (!st)
		return 0;
	if (child->pid == child->tgid)
		st->forks++;
	else
		st->threads++;
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_sched_process_exec)
{
	struct task_stats *st = current_stats();

	if (st)
		st->execs++;
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_sched_process_exit, struct task_struct *p)
{
	struct task_stats *st = current_stats();
	__u32 pid = p->pid;

	if (!st)
		return 0;
	if (p->pid == p->tgid)
		st->exits++;
	if (bpf_map_lookup_elem(&oom_victims, &pid)) {
		st->oom_kills++;
		bpf_map_delete_elem(&oom_victims, &pid);
	}
	return 0;
}

/* mark_victim's argument is the task since Linux 6.8 and its pid before: one program for each,
 * the loader keeps whichever the kernel accepts. */
SEC("tp_btf/mark_victim")
int BPF_PROG(on_mark_victim_task, struct task_struct *task)
{
	__u32 pid = task->pid;
	__u8 one = 1;

	bpf_map_update_elem(&oom_victims, &pid, &one, BPF_ANY);
	return 0;
}

SEC("tp_btf/mark_victim")
int BPF_PROG(on_mark_victim_pid, int victim)
{
	__u32 pid = victim;
	__u8 one = 1;

	bpf_map_update_elem(&oom_victims, &pid, &one, BPF_ANY);
	return 0;
}

SEC("tp_btf/page_fault_user")
int BPF_PROG(on_page_fault_user)
{
	struct task_stats *st = current_stats();

	if (st)
		st->page_faults++;
	return 0;
}

/* Bios as they are queued, charged to the thread that submits them: reads and direct or synced
 * writes land on the task; page-cache writeback done later by kernel threads does not. */
SEC("tp_btf/block_bio_queue")
int BPF_PROG(on_block_bio_queue, struct bio *bio)
{
	struct task_stats *st = current_stats();
	__u32 op, bytes;

	if (!st)
		return 0;
	op = bio->bi_opf & 0xff; /* REQ_OP_MASK */
	bytes = bio->bi_iter.bi_size;
	if (op == 0) { /* REQ_OP_READ */
		st->blk_read_bytes += bytes;
		st->blk_read_ops++;
	} else if (op == 1) { /* REQ_OP_WRITE */
		st->blk_write_bytes += bytes;
		st->blk_write_ops++;
	}
	return 0;
}

static __always_inline struct task_stats *skb_stats(struct __sk_buff *skb)
{
	__u32 level = container_level;
	__u64 id;

	if (!level)
		return 0;
	id = bpf_skb_ancestor_cgroup_id(skb, level);
	if (!id)
		return 0;
	return bpf_map_lookup_elem(&tasks, &id);
}

/* Attached to the agent's cgroup, so every container below it inherits them. They only count:
 * 1 lets every packet through. */
SEC("cgroup_skb/ingress")
int on_skb_ingress(struct __sk_buff *skb)
{
	struct task_stats *st = skb_stats(skb);

	if (st) {
		st->net_rx_bytes += skb->len;
		st->net_rx_packets++;
	}
	return 1;
}

SEC("cgroup_skb/egress")
int on_skb_egress(struct __sk_buff *skb)
{
	struct task_stats *st = skb_stats(skb);

	if (st) {
		st->net_tx_bytes += skb->len;
		st->net_tx_packets++;
	}
	return 1;
}
