/* The cheapest program there is on sched_switch: one per-CPU counter. The overhead benchmark
 * attaches it alone to measure what merely running a BTF tracepoint program costs on a kernel,
 * next to what Corral's programs cost. Not used by the agent. */
#include "mini_vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} switches SEC(".maps");

SEC("tp_btf/sched_switch")
int BPF_PROG(floor_sched_switch)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&switches, &zero);

	if (n)
		(*n)++;
	return 0;
}
