//! The agent's only `unsafe` code: the hooks that run in a forked child between `fork` and
//! `exec`, and the few process-wide settings the per-task init makes before it does anything
//! else. Each hook calls only async-signal-safe functions (raw syscalls), allocates nothing and
//! takes no lock: after `fork` in a multi-threaded parent, any lock another thread held stays
//! held forever in the child.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

/// The signals the per-task init waits for synchronously (`sigwait`). They are blocked from its
/// first instruction, so a SIGTERM that arrives before it is ready is kept, not fatal.
pub fn init_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(s);
    }
    set
}

/// Spawns `cmd` straight into the cgroup whose `cgroup.procs` is `procs`, in a new session,
/// with [`init_signals`] blocked. The child writes `0` ("this process") to `procs` before it
/// execs, so it never runs a single instruction of the new program outside the cgroup.
pub fn spawn_in_cgroup(
    mut cmd: tokio::process::Command,
    procs: File,
) -> io::Result<tokio::process::Child> {
    let fd = procs.as_raw_fd();
    let blocked = init_signals();
    let hook = move || -> io::Result<()> {
        // SAFETY: `fd` is open: `procs` is owned by this function and dropped only after
        // `spawn` returned (the child got its own copy of the descriptor table at fork). The
        // buffer is a 1-byte static string. write(2) is async-signal-safe.
        let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        if n != 1 {
            return Err(io::Error::last_os_error());
        }
        nix::unistd::setsid()?;
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&blocked), None)?;
        Ok(())
    };
    // SAFETY: the hook runs in the child between fork and exec. It only calls write(2),
    // setsid(2) and sigprocmask(2) (async-signal-safe syscalls; nix's wrappers add no
    // allocation, and converting their errno to io::Error allocates nothing), reads only
    // values it owns (`fd`, `blocked`), and takes no lock.
    unsafe { cmd.pre_exec(hook) };
    let child = cmd.spawn();
    drop(procs);
    child
}

/// Prepares the exec of a task: restores the default signal state (the per-task init runs
/// with SIGTERM, SIGINT and SIGCHLD blocked and SIGPIPE ignored, and std does not reset the
/// mask of the children it spawns), then, if `run_as` is given, drops to that uid/gid with its
/// supplementary groups.
///
/// The user switch is a hook rather than std's `CommandExt::uid`/`gid` because std cannot set
/// supplementary groups on stable Rust (`groups` is unstable) and runs its own hooks after it
/// has already dropped root, when `setgroups` is no longer allowed; so all three calls happen
/// here, in the order that works: groups, then gid, then uid.
pub fn prepare_task_exec(cmd: &mut std::process::Command, run_as: Option<(u32, u32, Vec<u32>)>) {
    let hook = move || -> io::Result<()> {
        // Dispositions first (SIGKILL and SIGSTOP cannot be changed; 32 and up are real-time
        // signals, which glibc reserves in part): handlers are reset by exec anyway, but an
        // ignored signal would stay ignored in the task.
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                // SAFETY: SIG_DFL installs no handler code; sigaction(2) is async-signal-safe.
                unsafe { libc::signal(sig, libc::SIG_DFL) };
            }
        }
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
        let Some((uid, gid, groups)) = &run_as else { return Ok(()) };
        // SAFETY: `groups` is a live Vec owned by this closure (allocated before fork); the
        // kernel reads `groups.len()` gid_t values from its buffer.
        if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain syscall with a value argument.
        if unsafe { libc::setgid(*gid) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain syscall with a value argument.
        if unsafe { libc::setuid(*uid) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs in the child between fork and exec. It only makes the sigaction,
    // sigprocmask, setgroups, setgid and setuid syscalls on values and memory it owns,
    // allocating nothing and taking no lock. glibc's set*id wrappers synchronise the ids of
    // all threads, but the child of fork has a single thread (and the per-task init is
    // single-threaded anyway); std's own uid()/gid() support makes the same calls at the same
    // point.
    unsafe { std::os::unix::process::CommandExt::pre_exec(cmd, hook) };
}

/// Ignores SIGPIPE in the per-task init: if the agent is gone, writing its report must fail
/// with EPIPE, not kill the init. ([`prepare_task_exec`] gives the task the default
/// disposition back.)
pub fn ignore_sigpipe() {
    // SAFETY: SIG_IGN installs no handler code, so no handler can run in an unsafe context.
    // It changes a process-wide setting, which is what the single-threaded init wants.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Closes every descriptor above stderr that the per-task init inherited, so none can leak
/// into the task (the agent marks its own descriptors close-on-exec; this is the backstop).
///
/// Call it first thing, before this process opens any file of its own.
pub fn close_inherited_fds() -> io::Result<()> {
    // SAFETY: close_range(2) with plain integer arguments. At the start of the init nothing in
    // this process owns a descriptor above 2 (std opens none before main and the caller has
    // opened none yet), so no File or OwnedFd is invalidated behind its back.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r == 0 {
        return Ok(());
    }
    // Kernels before 5.9: list /proc/self/fd, then close what was listed (the listing's own
    // descriptor is closed before the loop, so it is not among the ones closed below).
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: as above, no object of this process owns these descriptors; one that is
        // already closed (the listing's own) just yields EBADF.
        unsafe { libc::close(fd) };
    }
    Ok(())
}
