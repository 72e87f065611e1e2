/* Corral's per-task telemetry. Every counter is keyed by the cgroup v2 id of the task's container
 * (the inode of its directory), found as the ancestor at `container_level` of the cgroup a thread
 * is in, so a task's own sub-cgroups still count for it. The agent inserts a zeroed entry into
 * `tasks` when it creates a container and deletes it when the container is gone; the programs
 * only look entries up and never insert, so the map cannot fill with cgroups nobody watches.
 *
 * Programs are BTF tracepoints (tp_btf: direct, CO-RE-relocated loads from the kernel's structs;
 * no kprobes) and cgroup_skb for the network. Hot paths do one per-CPU hash lookup per tracked
 * thread and plain adds on per-CPU values. */
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

/* When a tracked thread became runnable (woken, or preempted while runnable), by pid. LRU: a
 * thread that exits without running again cannot leak an entry for long. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} runnable_since SEC(".maps");

/* Threads the OOM killer chose, counted when they exit (where their cgroup is current). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} oom_victims SEC(".maps");

/* The container cgroup id of `cg`: its ancestor at container_level. `ancestors` is a flexible
 * array: CO-RE relocates where it starts, and the one slot is read with a probe read (constant
 * indices into it would each need a relocation the loader cannot check against a [0] array). */
static __always_inline __u64 container_of_cgroup(struct cgroup *cg)
{
	struct cgroup *anc = 0;
	__u32 level = container_level;
	unsigned long base;

	if (!cg || !level || (__u32)cg->level < level)
		return 0;
	base = (unsigned long)cg + bpf_core_field_offset(struct cgroup, ancestors);
	if (bpf_probe_read_kernel(&anc, sizeof(anc), (void *)(base + level * sizeof(anc))))
		return 0;
	if (!anc)
		return 0;
	return BPF_CORE_READ(anc, kn, id);
}

static __always_inline __u64 task_container(struct task_struct *t)
{
	return container_of_cgroup(t->cgroups->dfl_cgrp);
}

static __always_inline struct task_stats *current_stats(void)
{
	__u32 level = container_level;
	__u64 id;

	if (!level)
		return 0;
	id = bpf_get_current_ancestor_cgroup_id(level);
	if (!id)
		return 0;
	return bpf_map_lookup_elem(&tasks, &id);
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

SEC("tp_btf/sched_switch")
int BPF_PROG(on_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 zero = 0;
	struct cpu_slot *slot = bpf_map_lookup_elem(&cpu_slots, &zero);
	struct task_stats *st;
	__u64 now, next_cg;

	if (!slot)
		return 0;
	now = bpf_ktime_get_ns();

	/* prev (still current) leaves the CPU: charge its stretch to the container it is in now,
	 * which also covers a thread that moved itself into a container while running. */
	st = current_stats();
	if (st) {
		__u64 runtime = prev->se.sum_exec_runtime;

		if (slot->pid == (__u64)prev->pid && runtime > slot->runtime_base)
			st->oncpu_ns += runtime - slot->runtime_base;
		st->switches++;
		if (prev->__state == 0) {
			/* Preempted: it waits in the run queue from now on. */
			__u32 pid = prev->pid;

			st->involuntary++;
			bpf_map_update_elem(&runnable_since, &pid, &now, BPF_ANY);
		}
	}

	/* next takes the CPU: how long did it wait? */
	next_cg = task_container(next);
	st = next_cg ? bpf_map_lookup_elem(&tasks, &next_cg) : 0;
	if (st) {
		__u32 pid = next->pid;
		__u64 *since = bpf_map_lookup_elem(&runnable_since, &pid);

		if (since) {
			__u64 wait = now > *since ? now - *since : 0;

			st->rq_waits++;
			st->rq_wait_ns += wait;
			st->rq_hist[log2_slot(wait) & (RQ_SLOTS - 1)]++;
			bpf_map_delete_elem(&runnable_since, &pid);
		}
	}
	slot->cgroup_id = st ? next_cg : 0;
	slot->since_ns = now;
	slot->runtime_base = next->se.sum_exec_runtime;
	slot->pid = next->pid;
	return 0;
}

static __always_inline void runnable(struct task_struct *p)
{
	__u64 cg = task_container(p);
	__u32 pid;
	__u64 now;

	if (!cg || !bpf_map_lookup_elem(&tasks, &cg))
		return;
	pid = p->pid;
	now = bpf_ktime_get_ns();
	bpf_map_update_elem(&runnable_since, &pid, &now, BPF_ANY);
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(on_sched_wakeup, struct task_struct *p)
{
	runnable(p);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(on_sched_wakeup_new, struct task_struct *p)
{
	runnable(p);
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

	bpf_map_delete_elem(&runnable_since, &pid);
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
