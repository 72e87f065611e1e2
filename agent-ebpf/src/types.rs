//! The Rust side of `bpf/telemetry.h`: the same structs as `#[repr(C)]`, field for field.
//! `tests/layout.rs` reads the compiled object's BTF and checks that every size and offset
//! agrees, so the two definitions cannot drift apart silently.
#![allow(unsafe_code)]

/// Run-queue latency slots (`RQ_SLOTS`): slot `i` counts waits of `[2^i, 2^(i+1))` ns; the last
/// also counts longer ones.
pub const RQ_SLOTS: usize = 32;

macro_rules! mirrored {
    ($(#[$m:meta])* $(@derive #[$m2:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $field:ident : $ty:ty,)* }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $(#[$m2])*
        pub struct $name { $($(#[$fm])* pub $field: $ty,)* }

        impl $name {
            /// Every field's name and byte offset, for the layout test.
            pub const FIELDS: &'static [(&'static str, usize)] =
                &[$((stringify!($field), std::mem::offset_of!($name, $field)),)*];
        }
    };
}

mirrored! {
    /// `struct task_stats`: what the programs count for one container (see the header for what
    /// each counter means).
    pub struct TaskStats {
        pub oncpu_ns: u64,
        pub switches: u64,
        pub involuntary: u64,
        pub rq_waits: u64,
        pub rq_wait_ns: u64,
        pub rq_hist: [u64; RQ_SLOTS],
        pub page_faults: u64,
        pub blk_read_bytes: u64,
        pub blk_write_bytes: u64,
        pub blk_read_ops: u64,
        pub blk_write_ops: u64,
        pub execs: u64,
        pub forks: u64,
        pub threads: u64,
        pub exits: u64,
        pub oom_kills: u64,
        pub net_rx_bytes: u64,
        pub net_rx_packets: u64,
        pub net_tx_bytes: u64,
        pub net_tx_packets: u64,
    }
}

mirrored! {
    /// `struct cpu_slot`: the thread on one CPU now (thread id), and its scheduler runtime and
    /// run-queue delay (ns) when it came on.
    @derive #[derive(Default)]
    pub struct CpuSlot {
        pub pid: u64,
        pub runtime_base: u64,
        pub delay_base: u64,
    }
}

impl Default for TaskStats {
    fn default() -> Self {
        TaskStats {
            oncpu_ns: 0,
            switches: 0,
            involuntary: 0,
            rq_waits: 0,
            rq_wait_ns: 0,
            rq_hist: [0; RQ_SLOTS],
            page_faults: 0,
            blk_read_bytes: 0,
            blk_write_bytes: 0,
            blk_read_ops: 0,
            blk_write_ops: 0,
            execs: 0,
            forks: 0,
            threads: 0,
            exits: 0,
            oom_kills: 0,
            net_rx_bytes: 0,
            net_rx_packets: 0,
            net_tx_bytes: 0,
            net_tx_packets: 0,
        }
    }
}

impl TaskStats {
    /// Adds `other` counter by counter (summing the per-CPU copies).
    pub fn add(&mut self, o: &TaskStats) {
        self.oncpu_ns += o.oncpu_ns;
        self.switches += o.switches;
        self.involuntary += o.involuntary;
        self.rq_waits += o.rq_waits;
        self.rq_wait_ns += o.rq_wait_ns;
        for (a, b) in self.rq_hist.iter_mut().zip(o.rq_hist.iter()) {
            *a += b;
        }
        self.page_faults += o.page_faults;
        self.blk_read_bytes += o.blk_read_bytes;
        self.blk_write_bytes += o.blk_write_bytes;
        self.blk_read_ops += o.blk_read_ops;
        self.blk_write_ops += o.blk_write_ops;
        self.execs += o.execs;
        self.forks += o.forks;
        self.threads += o.threads;
        self.exits += o.exits;
        self.oom_kills += o.oom_kills;
        self.net_rx_bytes += o.net_rx_bytes;
        self.net_rx_packets += o.net_rx_packets;
        self.net_tx_bytes += o.net_tx_bytes;
        self.net_tx_packets += o.net_tx_packets;
    }
}

// SAFETY: both are #[repr(C)] structs of u64s only (arrays of u64 included): no padding, no
// pointers, and every bit pattern is a valid value, which is what `aya::Pod` requires of data
// copied to and from maps.
unsafe impl aya::Pod for TaskStats {}
// SAFETY: as above.
unsafe impl aya::Pod for CpuSlot {}
