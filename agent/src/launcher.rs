//! The launcher: a small helper process (`corral __launcher`) that the agent starts once and
//! that forks every task's init, so no launch pays for an `exec` of the corral binary (about
//! 1 ms on a small VM, more than the fork itself) and no launch forks the agent.
//!
//! The agent holds one end of a `SOCK_SEQPACKET` socket pair; the launcher's stdin is the
//! other. A request is one message: `namespace flags (u32 LE) ++ run directory`, with five
//! descriptors attached (`SCM_RIGHTS`): the init's stdin, stdout (the report pipe), stderr,
//! the cgroup's directory and its `cgroup.procs`. The launcher clones itself straight into
//! the container's cgroup and namespaces as a child of the agent (`sys::clone_init`,
//! `CLONE_PARENT`), and answers `pid (i32 LE) ++ errno (i32 LE)`. The child sets up its stdio
//! and becomes the per-task init (`shim::run_init`) without an exec.
//!
//! The launcher is single-threaded (no runtime) and exits when the agent's end of the socket
//! closes, which the agent's death does too. If it is gone or stops answering, that launch
//! falls back to `sys::spawn_init` (clone of the agent with `CLONE_VM | CLONE_VFORK`, then
//! exec) and a new launcher takes the next ones (up to a few times).
#![forbid(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::unistd::Pid;

use crate::sys::{Cloned, Namespaces, SpawnPath};

/// `argv[1]` of the launcher process.
pub const LAUNCHER_ARG: &str = "__launcher";

const NS_PRIVATE: u32 = 1;
const NS_NET: u32 = 2;
/// The descriptors a request carries.
const FDS: usize = 5;
/// How long the agent waits for the launcher's answer.
const REPLY_TIMEOUT_S: i64 = 10;
/// The longest request (a run directory path is far shorter).
const MAX_REQUEST: usize = 8192;

/// The agent's handle on its launcher.
#[derive(Debug)]
pub struct Launcher {
    program: PathBuf,
    inner: Mutex<Option<(OwnedFd, Child)>>,
    /// Launchers started after the first one died.
    restarts: std::sync::atomic::AtomicU32,
}

/// How many times a dead launcher is replaced before the agent spawns every init itself.
const MAX_RESTARTS: u32 = 5;

/// What the agent passes for one launch.
pub struct Request<'a> {
    pub run_dir: &'a Path,
    pub namespaces: Namespaces,
    pub stdio: [BorrowedFd<'a>; 3],
    pub cgroup_dir: BorrowedFd<'a>,
    pub cgroup_procs: BorrowedFd<'a>,
}

impl Launcher {
    /// Starts `program __launcher`. The launcher inherits nothing but its socket (stdin) and
    /// the agent's stderr.
    pub fn start(program: &Path) -> io::Result<Launcher> {
        Ok(Launcher {
            program: program.to_path_buf(),
            inner: Mutex::new(Some(spawn_process(program)?)),
            restarts: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Asks the launcher for an init. `Ok(None)`: no launcher (it died, or was never there);
    /// the caller spawns the init itself. Blocking.
    pub fn launch(&self, req: &Request<'_>) -> io::Result<Option<(Pid, SpawnPath)>> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some((sock, _)) = guard.as_ref() else { return Ok(None) };
        match exchange(sock.as_fd(), req) {
            Ok(r) => Ok(Some(r)),
            Err(Exchange::Refused(e)) => Err(e),
            Err(Exchange::Gone(e)) => {
                if let Some((sock, mut child)) = guard.take() {
                    drop(sock);
                    let _ = child.kill();
                    let _ = child.wait();
                }
                // This launch may or may not have been forked: the caller clears the
                // container and spawns the init itself. Later ones go to a new launcher.
                let n = self.restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n < MAX_RESTARTS {
                    match spawn_process(&self.program) {
                        Ok(l) => {
                            tracing::warn!("the launcher was gone ({e}); started a new one");
                            *guard = Some(l);
                        }
                        Err(e2) => tracing::error!(
                            "the launcher was gone ({e}) and cannot be restarted ({e2}); spawning task inits directly"
                        ),
                    }
                } else {
                    tracing::error!(
                        "the launcher was gone ({e}) for the {}th time; spawning task inits directly from now on",
                        n + 1
                    );
                }
                Ok(None)
            }
        }
    }

    /// Closes the socket (the launcher exits) and reaps it.
    pub fn stop(&self) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((sock, mut child)) = guard.take() {
            drop(sock);
            let _ = child.wait();
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `program __launcher` with one end of a new socket pair as its stdin.
fn spawn_process(program: &Path) -> io::Result<(OwnedFd, Child)> {
    let (mine, theirs) =
        socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
    // A launcher that stops answering must not hang launches forever: past this the agent
    // gives up on it.
    nix::sys::socket::setsockopt(
        &mine,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(REPLY_TIMEOUT_S, 0),
    )?;
    let child = Command::new(program)
        .arg(LAUNCHER_ARG)
        .env_clear()
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .spawn()?;
    Ok((mine, child))
}

enum Exchange {
    /// The launcher answered with an error for this launch.
    Refused(io::Error),
    /// The launcher is not there any more.
    Gone(io::Error),
}

fn exchange(sock: BorrowedFd<'_>, req: &Request<'_>) -> Result<(Pid, SpawnPath), Exchange> {
    let mut flags = 0u32;
    if req.namespaces.private {
        flags |= NS_PRIVATE;
    }
    if req.namespaces.net {
        flags |= NS_NET;
    }
    let head = flags.to_le_bytes();
    let iov = [IoSlice::new(&head), IoSlice::new(req.run_dir.as_os_str().as_bytes())];
    let fds = [
        req.stdio[0].as_raw_fd(),
        req.stdio[1].as_raw_fd(),
        req.stdio[2].as_raw_fd(),
        req.cgroup_dir.as_raw_fd(),
        req.cgroup_procs.as_raw_fd(),
    ];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(|e| Exchange::Gone(e.into()))?;
    let mut reply = [0u8; 9];
    let n = {
        let mut iov = [IoSliceMut::new(&mut reply)];
        recvmsg::<()>(sock.as_raw_fd(), &mut iov, None, MsgFlags::empty())
            .map_err(|e| Exchange::Gone(e.into()))?
            .bytes
    };
    if n != reply.len() {
        return Err(Exchange::Gone(io::Error::other(format!("a {n}-byte reply"))));
    }
    let pid = i32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]]);
    let errno = i32::from_le_bytes([reply[4], reply[5], reply[6], reply[7]]);
    if pid <= 0 {
        return Err(Exchange::Refused(io::Error::from_raw_os_error(errno)));
    }
    let path = if reply[8] == 1 { SpawnPath::Clone3IntoCgroup } else { SpawnPath::CloneThenJoin };
    Ok((Pid::from_raw(pid), path))
}

/// The launcher process's `main`: serves requests on stdin until the agent closes it.
pub fn launcher_main() -> ! {
    // No parent-death signal: it would follow the agent *thread* that started this process
    // (a blocking-pool thread, for a restarted launcher). The agent's death closes its end
    // of the socket, and the launcher leaves on that end of file.
    crate::sys::ignore_sigpipe();
    let code = match serve() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("corral launcher: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn serve() -> io::Result<()> {
    let sock = io::stdin().as_fd().try_clone_to_owned()?;
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let mut cmsg_space = nix::cmsg_space!([std::os::fd::RawFd; FDS]);
        let (n, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            let mut fds: Vec<OwnedFd> = Vec::new();
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // The kernel just installed these in this process for this message.
                    fds.extend(raw.into_iter().map(crate::sys::own_received_fd));
                }
            }
            (msg.bytes, fds)
        };
        if n == 0 {
            return Ok(()); // the agent closed its end
        }
        let reply = match handle(&buf[..n], &fds) {
            Ok((pid, path)) => reply(pid.as_raw(), 0, path),
            Err(e) => reply(0, e.raw_os_error().unwrap_or(libc::EINVAL), SpawnPath::CloneThenJoin),
        };
        drop(fds);
        sendmsg::<()>(sock.as_raw_fd(), &[IoSlice::new(&reply)], &[], MsgFlags::empty(), None)?;
    }
}

fn reply(pid: i32, errno: i32, path: SpawnPath) -> [u8; 9] {
    let mut r = [0u8; 9];
    r[..4].copy_from_slice(&pid.to_le_bytes());
    r[4..8].copy_from_slice(&errno.to_le_bytes());
    r[8] = u8::from(path == SpawnPath::Clone3IntoCgroup);
    r
}

/// One request: clone the init; in the child, become it.
fn handle(msg: &[u8], fds: &[OwnedFd]) -> io::Result<(Pid, SpawnPath)> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    if msg.len() < 4 || fds.len() != FDS {
        return Err(bad("malformed request"));
    }
    let flags = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]);
    let run_dir = PathBuf::from(std::ffi::OsStr::from_bytes(&msg[4..]));
    let namespaces = Namespaces { private: flags & NS_PRIVATE != 0, net: flags & NS_NET != 0 };
    match crate::sys::clone_init(namespaces, fds[3].as_fd(), fds[4].as_fd())? {
        Cloned::Parent(pid, path) => Ok((pid, path)),
        Cloned::Child => {
            // Never returns into the launcher's loop: a panic ends this process.
            let result = std::panic::catch_unwind(|| {
                if let Err(e) =
                    crate::sys::init_stdio([fds[0].as_fd(), fds[1].as_fd(), fds[2].as_fd()])
                {
                    eprintln!("corral task init: cannot set up stdio: {e}");
                    std::process::exit(127);
                }
                let _ = nix::sys::prctl::set_name(c"corral-init");
                crate::sys::set_cmdline(&[
                    std::ffi::OsStr::new("corral"),
                    std::ffi::OsStr::new(crate::TASK_INIT_ARG),
                    run_dir.as_os_str(),
                ]);
                crate::shim::run_init(Some(run_dir))
            });
            let _ = result;
            std::process::exit(127)
        }
    }
}
