//! The agent's only `unsafe` code, kept small:
//!
//! - [`spawn_init`]: starts a task's init without forking the agent. The child shares the
//!   agent's memory and the agent's thread waits until it has exec'd (`CLONE_VM |
//!   CLONE_VFORK`, what `posix_spawn` does), so the cost does not grow with the agent's size.
//!   Where the kernel has it (5.7+), `clone3` puts the child into its cgroup as it is created
//!   (`CLONE_INTO_CGROUP`); elsewhere the child writes itself into `cgroup.procs` before it
//!   execs. Either way nothing of the init runs outside the task's cgroup. The new pid, mount,
//!   uts, ipc (and optionally network) namespaces are made by the same call. The child runs
//!   only async-signal-safe syscalls on memory prepared before the clone.
//! - The hooks that run in the init's forked child between `fork` and `exec` of the task:
//!   default signal state, capability bounding, user switch.
//! - The few process-wide settings the per-task init makes before it does anything else.
//!
//! Each hook allocates nothing and takes no lock: after `fork` in a multi-threaded parent (or
//! in a child sharing its memory) any lock another thread held stays held in the child.

use std::ffi::{CString, OsStr, c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

use nix::unistd::Pid;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

/// The signals the per-task init waits for synchronously (`sigwait`). They are blocked from its
/// first instruction, so a SIGTERM that arrives before it is ready is kept, not fatal (and,
/// blocked, they reach a pid-namespace init that has no handler for them).
pub fn init_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// The namespaces a task's init is created in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Namespaces {
    /// New pid, mount, uts and ipc namespaces.
    pub private: bool,
    /// A new network namespace (loopback only).
    pub net: bool,
}

impl Namespaces {
    fn clone_flags(self) -> u64 {
        let mut f = 0;
        if self.private {
            f |= (libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC)
                as u64;
        }
        if self.net {
            f |= libc::CLONE_NEWNET as u64;
        }
        f
    }
}

/// What [`spawn_init`] starts.
pub struct InitSpawn<'a> {
    pub program: &'a Path,
    /// The whole argv, `argv[0]` included. The environment is empty.
    pub argv: &'a [&'a OsStr],
    /// Descriptors that become the child's 0, 1 and 2.
    pub stdio: [BorrowedFd<'a>; 3],
    /// The cgroup's directory (for `CLONE_INTO_CGROUP`).
    pub cgroup_dir: BorrowedFd<'a>,
    /// The cgroup's `cgroup.procs`, open for writing (for kernels without it).
    pub cgroup_procs: BorrowedFd<'a>,
    pub namespaces: Namespaces,
}

/// How the child got into its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnPath {
    /// `clone3` with `CLONE_INTO_CGROUP`: created there.
    Clone3IntoCgroup,
    /// `clone`, then the child wrote itself into `cgroup.procs` before `execve`.
    CloneThenJoin,
}

/// A started init: its pid (in the agent's namespace) and a pidfd, which becomes readable
/// when it exits.
#[derive(Debug)]
pub struct SpawnedInit {
    pub pid: Pid,
    pub pidfd: OwnedFd,
    pub path: SpawnPath,
}

/// Everything the child needs, prepared by the parent; the child writes back only `errno`
/// and `step` (it shares the parent's memory until it execs).
#[repr(C)]
struct ChildCtx {
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    stdio: [c_int; 3],
    /// `cgroup.procs` to join; -1 when the clone already placed the child.
    procs_fd: c_int,
    mask: libc::sigset_t,
    errno: AtomicI32,
    step: AtomicI32,
}

const STEP_CGROUP: i32 = 1;
const STEP_SETSID: i32 = 2;
const STEP_STDIO: i32 = 3;
const STEP_SIGMASK: i32 = 4;
const STEP_EXEC: i32 = 5;

fn step_name(step: i32) -> &'static str {
    match step {
        STEP_CGROUP => "join the cgroup",
        STEP_SETSID => "start a session",
        STEP_STDIO => "set up stdin/stdout/stderr",
        STEP_SIGMASK => "set the signal mask",
        _ => "exec",
    }
}

/// The child's whole life: runs on its own small stack, in the parent's memory, with every
/// signal blocked. Returns only on failure (the exit status of the child).
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildCtx` that `spawn_init` keeps alive (and does not touch)
    // until this child has exec'd or exited: with CLONE_VFORK the parent's thread is suspended
    // until then.
    let ctx = unsafe { &*(arg as *const ChildCtx) };
    let fail = |step: i32| -> c_int {
        // SAFETY: __errno_location returns this thread's errno slot; reading it is safe.
        let e = unsafe { *libc::__errno_location() };
        ctx.errno.store(e, Ordering::Relaxed);
        ctx.step.store(step, Ordering::Release);
        127
    };
    // Handlers the agent installed must not run here (this child shares its memory): back to
    // the default before any signal can be unblocked. The child has its own copy of the
    // disposition table (no CLONE_SIGHAND), so the agent's stay as they are.
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction(2) with a zeroed struct on this stack; a signal number the C
        // library reserves just fails with EINVAL.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_IGN
                && old.sa_sigaction != libc::SIG_DFL
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
    }
    // SAFETY: plain syscalls on descriptors the parent keeps open for the duration of the
    // clone, and on a static 1-byte buffer.
    unsafe {
        if ctx.procs_fd >= 0 && libc::write(ctx.procs_fd, b"0".as_ptr().cast(), 1) != 1 {
            return fail(STEP_CGROUP);
        }
        if libc::setsid() < 0 {
            return fail(STEP_SETSID);
        }
        for (target, &fd) in ctx.stdio.iter().enumerate() {
            let target = target as c_int;
            let ok = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, target) == target
            };
            if !ok {
                return fail(STEP_STDIO);
            }
        }
        if libc::sigprocmask(libc::SIG_SETMASK, &ctx.mask, std::ptr::null_mut()) != 0 {
            return fail(STEP_SIGMASK);
        }
        libc::execve(ctx.program, ctx.argv, ctx.envp);
    }
    fail(STEP_EXEC)
}

/// `struct clone_args` (linux/sched.h), version 2 (88 bytes, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// The child's stack: it runs `child_main` and libc's thin syscall wrappers only.
const CHILD_STACK: usize = 64 * 1024;

/// Whether `clone3(CLONE_INTO_CGROUP)` works here: 0 not tried, 1 yes, 2 no.
static CLONE3: AtomicU8 = AtomicU8::new(0);

/// `clone3` that runs `f(arg)` in the child on the stack the args name, then `exit`s with
/// its result. Returns the raw syscall result: the child's pid, or `-errno`.
///
/// # Safety
/// `args` must describe a valid stack (`CLONE_VM` children run on it) and `f` must be safe to
/// run in a child that shares the caller's memory.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_run(
    args: &mut CloneArgs,
    f: extern "C" fn(*mut c_void) -> c_int,
    arg: *mut c_void,
) -> i64 {
    let ret: i64;
    // SAFETY: the syscall returns twice. The parent (rax != 0) jumps to 2 and leaves with
    // only rax, rcx and r11 changed, as declared. The child (rax == 0) starts on its own stack
    // (the kernel sets rsp to stack + stack_size), aligns it, calls `f(arg)` and exits with
    // its result: it never returns into Rust code that expects the parent's stack.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "and rsp, -16",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") f,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Starts the per-task init as described in the module doc, and waits until it has exec'd
/// (or failed to: then the error says which step failed, and the child is reaped).
pub fn spawn_init(req: &InitSpawn<'_>) -> io::Result<SpawnedInit> {
    spawn_init_inner(req, true)
}

/// [`spawn_init`] through the path for kernels without `CLONE_INTO_CGROUP` (for tests).
#[cfg(test)]
pub fn spawn_init_without_clone3(req: &InitSpawn<'_>) -> io::Result<SpawnedInit> {
    spawn_init_inner(req, false)
}

fn spawn_init_inner(req: &InitSpawn<'_>, try_clone3: bool) -> io::Result<SpawnedInit> {
    let cstr = |b: &[u8]| {
        CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"))
    };
    let program = cstr(req.program.as_os_str().as_bytes())?;
    let args = req.argv.iter().map(|a| cstr(a.as_bytes())).collect::<io::Result<Vec<_>>>()?;
    let mut argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const c_char; 1] = [std::ptr::null()];
    let mut ctx = ChildCtx {
        program: program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        stdio: req.stdio.map(|fd| fd.as_raw_fd()),
        procs_fd: -1,
        mask: *init_signals().as_ref(),
        errno: AtomicI32::new(0),
        step: AtomicI32::new(0),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    let ns = req.namespaces.clone_flags();
    let flags = libc::CLONE_VM as u64 | libc::CLONE_VFORK as u64 | CLONE_PIDFD | ns;

    // Every signal blocked across the clone: no handler of the agent may run in the child
    // (which shares its memory) before it has reset them.
    let mut old_mask = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises `all`; pthread_sigmask writes the old mask into
    // `old_mask` before it is read.
    let all = unsafe {
        let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigfillset(all.as_mut_ptr());
        all.assume_init()
    };
    // SAFETY: valid pointers to sigsets on this stack.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, old_mask.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    let mut pidfd: c_int = -1;
    let mut path = SpawnPath::Clone3IntoCgroup;
    let mut ret: i64 = -(libc::ENOSYS as i64);
    #[cfg(target_arch = "x86_64")]
    if try_clone3 && CLONE3.load(Ordering::Relaxed) != 2 {
        let mut args = CloneArgs {
            flags: flags | CLONE_INTO_CGROUP,
            pidfd: &mut pidfd as *mut c_int as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.as_mut_ptr() as u64,
            stack_size: stack.len() as u64,
            cgroup: req.cgroup_dir.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: `stack` is a live, writable buffer of `stack_size` bytes that outlives the
        // child's use of it (the child has exec'd or exited when clone3 returns, CLONE_VFORK);
        // `ctx` and everything it points to live until then too; `child_main` is written for
        // a child that shares this memory.
        ret = unsafe { clone3_run(&mut args, child_main, (&raw mut ctx).cast()) };
        if ret > 0 {
            CLONE3.store(1, Ordering::Relaxed);
        } else if ret == -(libc::ENOSYS as i64) || ret == -(libc::E2BIG as i64) {
            // No clone3, or one without the cgroup field (before 5.7).
            CLONE3.store(2, Ordering::Relaxed);
        }
    }
    if ret < 0 && [libc::ENOSYS, libc::E2BIG, libc::EINVAL].contains(&(-ret as i32)) {
        path = SpawnPath::CloneThenJoin;
        ctx.procs_fd = req.cgroup_procs.as_raw_fd();
        // SAFETY: the stack top is inside `stack` and 16-byte aligned; clone(2) stores the
        // pidfd through the parent_tid argument for CLONE_PIDFD. The same lifetime argument
        // as for clone3 holds.
        ret = unsafe {
            let top = stack.as_mut_ptr().add(stack.len()) as usize & !15;
            libc::clone(
                child_main,
                top as *mut c_void,
                (flags as c_int) | libc::SIGCHLD,
                (&raw mut ctx).cast(),
                &mut pidfd as *mut c_int,
            ) as i64
        };
        if ret < 0 {
            // SAFETY: reading this thread's errno right after the failed call.
            ret = -(unsafe { *libc::__errno_location() } as i64);
        }
    }
    // SAFETY: restores the mask saved above (initialised by the first pthread_sigmask).
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old_mask.as_ptr(), std::ptr::null_mut()) };
    drop(stack);
    if ret < 0 {
        return Err(io::Error::other(format!(
            "clone: {}",
            io::Error::from_raw_os_error(-ret as i32)
        )));
    }
    let pid = Pid::from_raw(ret as i32);
    // SAFETY: the kernel returned a new pidfd (CLONE_PIDFD) that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let step = ctx.step.load(Ordering::Acquire);
    if step != 0 {
        let err = io::Error::from_raw_os_error(ctx.errno.load(Ordering::Relaxed));
        // The child has exited (it failed before or at exec): reap it.
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(io::Error::new(err.kind(), format!("{}: {err}", step_name(step))));
    }
    Ok(SpawnedInit { pid, pidfd, path })
}

/// Where [`clone_init`] returns.
pub enum Cloned {
    /// In the new process (in its cgroup and namespaces).
    Child,
    /// In the caller; the new process's pid. It is a child of the caller's parent.
    Parent(Pid, SpawnPath),
}

/// Forks the calling (single-threaded) launcher into a new process that is created in the
/// cgroup (`CLONE_INTO_CGROUP`; before 5.7 it joins `cgroup.procs` first thing) and the
/// namespaces of a container, as a child of the launcher's parent (`CLONE_PARENT`: the agent
/// reaps it, and it does not die with the launcher). Returns twice, like `fork`.
///
/// The caller must be single-threaded (the launcher is: it starts no runtime), so the child's
/// copy of the address space holds no lock another thread had taken. The C library's cached
/// thread id in the child is the parent's (a raw clone does not update it): the child must not
/// call `raise`/`abort`; it leaves with `exit`, its panics caught.
pub fn clone_init(
    namespaces: Namespaces,
    cgroup_dir: BorrowedFd<'_>,
    cgroup_procs: BorrowedFd<'_>,
) -> io::Result<Cloned> {
    let flags = libc::CLONE_PARENT as u64 | namespaces.clone_flags();
    let mut path = SpawnPath::Clone3IntoCgroup;
    let mut ret: i64 = -(libc::ENOSYS as i64);
    if CLONE3.load(Ordering::Relaxed) != 2 {
        let args = CloneArgs {
            flags: flags | CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: cgroup_dir.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 without CLONE_VM and without a stack is fork: the child continues
        // here on its own copy of this stack and address space. The process is
        // single-threaded (the contract of this function), so nothing else runs during the
        // copy. `args` lives across the call.
        ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if ret < 0 {
            // SAFETY: reading this thread's errno right after the failed call.
            let e = unsafe { *libc::__errno_location() };
            if e == libc::ENOSYS || e == libc::E2BIG {
                CLONE3.store(2, Ordering::Relaxed);
            }
            ret = -(e as i64);
        }
    }
    let join = ret < 0 && [libc::ENOSYS, libc::E2BIG, libc::EINVAL].contains(&(-ret as i32));
    if join {
        path = SpawnPath::CloneThenJoin;
        // SAFETY: clone(2) with a zero stack is fork (see above); no tid pointers are passed.
        ret = unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags | libc::SIGCHLD as u64,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if ret < 0 {
            // SAFETY: reading this thread's errno right after the failed call.
            ret = -(unsafe { *libc::__errno_location() } as i64);
        }
    }
    match ret {
        0 => {
            if join {
                // SAFETY: write(2) of a static 1-byte buffer to a descriptor the caller keeps
                // open.
                let n = unsafe { libc::write(cgroup_procs.as_raw_fd(), b"0".as_ptr().cast(), 1) };
                if n != 1 {
                    let e = io::Error::last_os_error();
                    eprintln!("corral task init: cannot join its cgroup: {e}");
                    std::process::exit(127);
                }
            }
            Ok(Cloned::Child)
        }
        r if r > 0 => Ok(Cloned::Parent(Pid::from_raw(r as i32), path)),
        r => Err(io::Error::from_raw_os_error(-r as i32)),
    }
}

/// In a freshly cloned init: `fds` become 0, 1 and 2, and it leads a new session.
pub fn init_stdio(fds: [BorrowedFd<'_>; 3]) -> io::Result<()> {
    for (target, fd) in fds.iter().enumerate() {
        let target = target as c_int;
        let fd = fd.as_raw_fd();
        // SAFETY: dup2/fcntl on descriptors this process holds; dup2 replaces whatever the
        // target number held (the launcher's own stdio, which this process does not use).
        let ok = unsafe {
            if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, target) == target
            }
        };
        if !ok {
            return Err(io::Error::last_os_error());
        }
    }
    nix::unistd::setsid()?;
    Ok(())
}

/// Makes `/proc/self/cmdline` (what `ps` shows) read `args`: a task init forked by the
/// launcher would otherwise show the launcher's command line. Needs CAP_SYS_RESOURCE, so it
/// is best effort (the process name, `comm`, is set by the caller and always works). The
/// buffer is leaked: the kernel reads it for the rest of the process's life.
pub fn set_cmdline(args: &[&OsStr]) {
    let mut buf: Vec<u8> = Vec::new();
    for a in args {
        buf.extend_from_slice(a.as_bytes());
        buf.push(0);
    }
    let buf: &'static mut [u8] = buf.leak();
    let (start, end) =
        (buf.as_ptr() as libc::c_ulong, buf.as_ptr() as libc::c_ulong + buf.len() as libc::c_ulong);
    let set = |opt: libc::c_int, v: libc::c_ulong| {
        // SAFETY: prctl(2) PR_SET_MM with an address inside a live (leaked) allocation.
        unsafe {
            libc::prctl(
                libc::PR_SET_MM,
                opt as libc::c_ulong,
                v,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) == 0
        }
    };
    // The kernel keeps start <= end after each call: move the end first when going up.
    if !(set(libc::PR_SET_MM_ARG_END, end) && set(libc::PR_SET_MM_ARG_START, start)) {
        let _ = set(libc::PR_SET_MM_ARG_START, start) && set(libc::PR_SET_MM_ARG_END, end);
    }
}

/// Takes ownership of a descriptor received with `SCM_RIGHTS`.
pub fn own_received_fd(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: the kernel installed `fd` in this process when the message was received, and
    // only the caller knows its number: nothing else owns or closes it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A pidfd for `pid`, which must be an unreaped child of this process (so the pid cannot have
/// been reused).
pub fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) with integer arguments; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as c_int) })
}

/// Resolves when the process behind `pidfd` has exited (a pidfd polls readable then). The
/// process is not reaped.
pub async fn pidfd_exited(pidfd: OwnedFd) -> io::Result<()> {
    // SAFETY: the OwnedFd moves into the AsyncFd and stays open, the same descriptor, until
    // the AsyncFd is dropped at the end of this function.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    }
    .map_err(io::Error::from)?;
    let _guard = fd.readable().await?;
    Ok(())
}

/// Capabilities to keep when the task is exec'd by a root init.
#[derive(Debug, Clone, Copy)]
pub struct CapDrop {
    /// Bit `n` set: keep capability `n`.
    keep: u64,
    /// The highest capability number this kernel knows.
    last_cap: u32,
}

impl CapDrop {
    pub fn new(keep: u64) -> CapDrop {
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(40);
        CapDrop { keep, last_cap }
    }
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Prepares the exec of a task: restores the default signal state (the per-task init runs
/// with its signals blocked and SIGPIPE ignored, and std does not reset the mask of the
/// children it spawns); with `caps`, cuts the bounding set down to the kept capabilities,
/// clears the ambient and inheritable sets and leaves only the kept ones permitted and
/// effective; then, if `run_as` is given, drops to that uid/gid with its supplementary groups
/// (which clears the remaining capabilities: the task is not root).
///
/// The user switch is a hook rather than std's `CommandExt::uid`/`gid` because std cannot set
/// supplementary groups on stable Rust (`groups` is unstable) and runs its own hooks after it
/// has already dropped root, when `setgroups` is no longer allowed; so all three calls happen
/// here, in the order that works: groups, then gid, then uid.
pub fn prepare_task_exec(
    cmd: &mut std::process::Command,
    run_as: Option<(u32, u32, Vec<u32>)>,
    caps: Option<CapDrop>,
) {
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
        if let Some(c) = caps {
            for cap in 0..=c.last_cap {
                if c.keep & (1u64 << cap) == 0 {
                    // SAFETY: prctl(2) with integer arguments.
                    let r = unsafe {
                        libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0)
                    };
                    // EINVAL: a capability this kernel does not have.
                    if r != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            // SAFETY: prctl(2) with integer arguments (EINVAL before 4.3: nothing to clear).
            unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                    0,
                    0,
                    0,
                )
            };
            let header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
            let word = |i: usize| (c.keep >> (32 * i)) as u32;
            let data =
                [0, 1].map(|i| CapData { effective: word(i), permitted: word(i), inheritable: 0 });
            // SAFETY: capset(2) reads one header and two data structs (version 3) from
            // memory owned by this closure's stack frame.
            if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
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
    // sigprocmask, prctl, capset, setgroups, setgid and setuid syscalls on values and memory
    // it owns, allocating nothing and taking no lock. glibc's set*id wrappers synchronise the
    // ids of all threads, but the child of fork has a single thread (and the per-task init is
    // single-threaded anyway); std's own uid()/gid() support makes the same calls at the same
    // point.
    unsafe { std::os::unix::process::CommandExt::pre_exec(cmd, hook) };
}

/// The per-task init's container setup, run as pid 1 of its new namespaces before the task
/// starts: every mount private (nothing propagates back to the host), a fresh `/proc` for
/// the new pid namespace, `tmp` bind-mounted over `/tmp`, the hostname, and loopback up in a
/// new network namespace. `tmp` comes with the sandbox: a sandbox under `/tmp` (a work dir
/// there) would be hidden by the new `/tmp`, so it is bound again at its own path.
pub fn setup_container_namespaces(
    hostname: Option<&str>,
    tmp: Option<(&Path, &Path)>,
    loopback: bool,
    volumes: &[crate::shim::VolumeMount],
) -> io::Result<()> {
    use nix::mount::{MsFlags, mount};
    let ctx = |what: &'static str| move |e: nix::Error| io::Error::other(format!("{what}: {e}"));
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(ctx("make mounts private"))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(ctx("mount /proc"))?;
    // The volumes' directories are opened before /tmp is replaced (a work dir under /tmp
    // would vanish from view), and bound by descriptor after.
    let sources = volumes
        .iter()
        .map(|v| {
            std::fs::File::open(&v.source).map_err(|e| {
                io::Error::other(format!("open the volume {}: {e}", v.source.display()))
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    if let Some((tmp, sandbox)) = tmp {
        let keep = std::fs::File::open(sandbox)?;
        mount(Some(tmp), "/tmp", None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(ctx("bind the sandbox's tmp over /tmp"))?;
        if sandbox.starts_with("/tmp") {
            std::fs::create_dir_all(sandbox)?;
            let by_fd = format!("/proc/self/fd/{}", keep.as_raw_fd());
            mount(Some(by_fd.as_str()), sandbox, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(ctx("bind the sandbox back under the new /tmp"))?;
        }
    }
    for (v, src) in volumes.iter().zip(&sources) {
        let by_fd = format!("/proc/self/fd/{}", src.as_raw_fd());
        mount(Some(by_fd.as_str()), &v.target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(ctx("bind a persistent volume into the sandbox"))?;
        if v.read_only {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(None::<&str>, &v.target, None::<&str>, flags, None::<&str>)
                .map_err(ctx("make a persistent volume read-only"))?;
        }
    }
    if let Some(h) = hostname {
        nix::unistd::sethostname(h).map_err(ctx("set the hostname"))?;
    }
    if loopback {
        loopback_up().map_err(|e| io::Error::other(format!("bring up lo: {e}")))?;
    }
    Ok(())
}

/// Sets `IFF_UP` on `lo` (a new network namespace starts with it down).
fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid; the name is copied within its 16 bytes.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the `ifreq` on this stack.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
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

/// A pidfd for any process `pid` (not necessarily a child). The pid may have been reused by
/// the time this returns: the caller checks the process's identity (its start time) after
/// the pidfd is open, which pins it.
pub fn pidfd_open_any(pid: Pid) -> io::Result<OwnedFd> {
    pidfd_open(pid)
}

/// A duplicate, in this process, of descriptor `fd` of the process behind `pidfd`
/// (`pidfd_getfd(2)`, Linux 5.6+; needs ptrace rights over it, which a root agent has over
/// its inits). The new descriptor is close-on-exec.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: c_int) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd(2) with a valid pidfd and plain integers; the result is checked.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0u32) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor installed in this process that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as c_int) })
}

/// Sends `sig` to the process behind `pidfd` (never to a process that reused its pid).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: nix::sys::signal::Signal) -> io::Result<()> {
    // SAFETY: pidfd_send_signal(2) with a valid pidfd, a signal number and no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig as c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Moves `fd` to descriptor number `target` (close-on-exec), closing what was there: the
/// per-task init keeps the read ends of its pipes at fixed numbers, so a restarted agent knows
/// where to find them with [`pidfd_getfd`].
pub fn hold_fd_at(fd: OwnedFd, target: c_int) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() == target {
        return Ok(fd);
    }
    // SAFETY: dup3(2) on a descriptor we own. In the single-threaded init, `target` is not
    // owned by any File or OwnedFd (the init chooses numbers far above what it opens), so
    // nothing is invalidated by dup3 replacing it.
    let r = unsafe { libc::dup3(fd.as_raw_fd(), target, libc::O_CLOEXEC) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(fd);
    // SAFETY: dup3 installed `target` as a new descriptor that only this call knows about.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Queues `entry` on the output ring; false if the submission queue is full.
///
/// Only for entries that name no memory (poll and splice between descriptors): the kernel
/// reads nothing but the entry itself, which it copies at submission, so no buffer can be
/// freed under it.
pub fn uring_push(ring: &mut io_uring::IoUring, entry: &io_uring::squeue::Entry) -> bool {
    // SAFETY: see above: the entries pushed here carry descriptors and integers only; the
    // descriptors stay open until their completions are reaped (the output thread owns them
    // and drops a stream only after both of its operations completed).
    unsafe { ring.submission().push(entry).is_ok() }
}
