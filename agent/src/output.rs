//! Task output: every container's stdout and stderr go through pipes into files in its
//! sandbox, moved by one thread of the agent with io_uring.
//!
//! - **Pipes, not files, on the task's side.** The per-task init makes two pipes, gives their
//!   write ends to the task as fds 1 and 2, and keeps a read end of each at a fixed number
//!   ([`crate::shim::STDOUT_HELD_FD`], [`crate::shim::STDERR_HELD_FD`]). The agent takes its
//!   own copies with `pidfd_getfd(2)`, on launch and again after a restart, so a dead agent
//!   costs no output: what the task writes meanwhile waits in the pipe (up to its size, then
//!   the task blocks: backpressure, never loss and never unbounded memory).
//! - **Splice, not read and write.** The thread moves bytes pipe → file with `splice`, so no
//!   byte is ever held in the agent's memory: a `kill -9` of the agent between two operations
//!   loses nothing, and a splice either moved its bytes into the file or left them in the pipe.
//!   The agent's memory per task is a few dozen bytes, whatever the task writes.
//! - **One ring, batched.** Each stream has a linked pair in flight, `POLL_ADD(pipe, POLLIN)`
//!   then `SPLICE(pipe → file)`; one `io_uring_enter` submits every re-armed pair and reaps
//!   every completion, however many tasks wrote. The ring is created disabled, restricted to
//!   those two opcodes and the link flag (`IORING_REGISTER_RESTRICTIONS`), then enabled; its
//!   descriptor is close-on-exec and lives only in this thread, so no task can inherit it.
//! - **Rotation by size.** When a file reaches `max_size`, it is renamed `NAME.1` (older ones
//!   shift up, at most `keep` are kept) and a new `NAME` is started, owned like the old one.
//! - Where io_uring is not available (old kernel, `kernel.io_uring_disabled`), the same
//!   thread uses `poll(2)` and `splice(2)`; [`Output::engine`] says which runs.
#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, Seek as _, SeekFrom};
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use io_uring::{IoUring, opcode, register::Restriction, squeue, types};
use nix::fcntl::SpliceFFlags;
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::oneshot;

/// At most this many bytes per splice.
const CHUNK: u32 = 1 << 20;
/// Submission queue size (each stream has two entries in flight; more streams just mean
/// more than one submit per round).
const RING_ENTRIES: u32 = 1024;
const WAKE: u64 = u64::MAX;
/// At most this many io_uring worker threads move output.
const MAX_IOWQ_WORKERS: u32 = 4;

/// Which engine the agent asks for (`--task-output-engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EngineChoice {
    #[default]
    IoUring,
    PollSplice,
}

/// When to rotate a task's output files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once a file holds this many bytes; 0 never rotates.
    pub max_size: u64,
    /// How many rotated files (`NAME.1` ... `NAME.keep`) are kept.
    pub keep: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation { max_size: 10 << 20, keep: 5 }
    }
}

/// Resolves when a stream reached its end (every writer closed and everything moved):
/// `Ok(bytes moved)`, or why it stopped early.
#[derive(Debug)]
pub struct Drained(oneshot::Receiver<Result<u64, String>>);

impl Drained {
    pub async fn wait(self) -> Result<u64, String> {
        self.0.await.unwrap_or_else(|_| Err("the output thread stopped".into()))
    }
}

enum Cmd {
    Add { pipe: OwnedFd, path: PathBuf, done: oneshot::Sender<Result<u64, String>> },
}

/// The agent's handle on the output thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Output {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: std::sync::Mutex<std_mpsc::Sender<Cmd>>,
    wake: EventFd,
    engine: &'static str,
    rotation: Rotation,
}

impl Output {
    /// Starts the output thread: io_uring where the kernel allows it, else poll and splice.
    pub fn start(rotation: Rotation) -> io::Result<Output> {
        Self::start_with(rotation, true)
    }

    /// [`Output::start`], choosing the engine (`uring: false` forces the poll engine).
    pub fn start_with(rotation: Rotation, uring: bool) -> io::Result<Output> {
        let rotation = Rotation { keep: rotation.keep.max(1), ..rotation };
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let wake_fd = wake.as_fd().try_clone_to_owned()?;
        let (tx, rx) = std_mpsc::channel();
        let ring = if uring { restricted_ring() } else { Err(io::Error::other("not asked")) };
        let engine = match &ring {
            Ok(_) => "io_uring",
            Err(e) => {
                if uring {
                    tracing::warn!("io_uring unavailable for task output ({e}); using poll+splice");
                }
                "poll+splice"
            }
        };
        let thread = Thread { rx, wake: wake_fd, rotation, streams: Vec::new() };
        std::thread::Builder::new().name("corral-output".into()).spawn(move || match ring {
            Ok(ring) => thread.run_uring(ring),
            Err(_) => thread.run_poll(),
        })?;
        Ok(Output {
            inner: Arc::new(Inner { tx: std::sync::Mutex::new(tx), wake, engine, rotation }),
        })
    }

    /// `io_uring` or `poll+splice`.
    pub fn engine(&self) -> &'static str {
        self.inner.engine
    }

    pub fn rotation(&self) -> Rotation {
        self.inner.rotation
    }

    /// Moves everything that arrives on `pipe` into `path` (appended; created if missing),
    /// until every writer has closed it.
    pub fn capture(&self, pipe: OwnedFd, path: PathBuf) -> Drained {
        let (done, rx) = oneshot::channel();
        let sent = match self.inner.tx.lock() {
            Ok(tx) => tx.send(Cmd::Add { pipe, path, done }).is_ok(),
            Err(_) => false,
        };
        if sent {
            let _ = self.inner.wake.write(1);
        }
        Drained(rx)
    }
}

/// A ring restricted to what the output thread submits.
fn restricted_ring() -> io::Result<IoUring> {
    let ring = IoUring::builder().setup_r_disabled().build(RING_ENTRIES)?;
    // Splices run in io_uring's worker threads. Left alone it starts one per stream in
    // flight, and on a small node they fight over the CPUs and the cache (measured: 2 GB/s
    // with a few workers, 0.7 GB/s with one per stream). A few are enough for one logger.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let workers = cpus.clamp(1, MAX_IOWQ_WORKERS);
    if let Err(e) = ring.submitter().register_iowq_max_workers(&mut [workers, workers]) {
        tracing::debug!("cannot bound io_uring's workers: {e}");
    }
    let mut allowed = [
        Restriction::sqe_op(opcode::PollAdd::CODE),
        Restriction::sqe_op(opcode::Splice::CODE),
        Restriction::sqe_flags_allowed(squeue::Flags::IO_LINK.bits()),
    ];
    ring.submitter().register_restrictions(&mut allowed)?;
    ring.submitter().register_enable_rings()?;
    Ok(ring)
}

/// One pipe being moved into one file.
struct Stream {
    pipe: OwnedFd,
    file: fs::File,
    path: PathBuf,
    /// Bytes in the current file.
    size: u64,
    /// Bytes moved since the stream was added.
    moved: u64,
    done: Option<oneshot::Sender<Result<u64, String>>>,
    /// Operations in flight on the ring (0 or 2).
    inflight: u8,
    end: Option<Result<u64, String>>,
}

impl Stream {
    /// The stream, or `None` (the caller is told why) if its file cannot be opened. Then the
    /// agent's read end is just dropped: the init's copy keeps the pipe, so the task blocks
    /// once it is full rather than losing output.
    fn open(
        pipe: OwnedFd,
        path: PathBuf,
        done: oneshot::Sender<Result<u64, String>>,
    ) -> Option<Stream> {
        match open_log(&path, None) {
            Ok((file, size)) => Some(Stream {
                pipe,
                file,
                path,
                size,
                moved: 0,
                done: Some(done),
                inflight: 0,
                end: None,
            }),
            Err(e) => {
                let _ = done.send(Err(format!("cannot open {}: {e}", path.display())));
                None
            }
        }
    }

    /// `n` bytes were moved; rotates when the file is full.
    fn moved(&mut self, n: u64, rotation: Rotation) {
        self.size += n;
        self.moved += n;
        if rotation.max_size > 0 && self.size >= rotation.max_size {
            match rotate(&self.path, rotation.keep)
                .and_then(|()| open_log(&self.path, Some(&self.file)))
            {
                Ok((file, size)) => {
                    self.file = file;
                    self.size = size;
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), "cannot rotate: {e}");
                    // Keep appending to the file we have (renamed or not).
                }
            }
        }
    }

    fn finish(&mut self) {
        if let (Some(done), Some(end)) = (self.done.take(), self.end.take()) {
            let _ = done.send(end);
        }
    }
}

/// Opens `path` for appending at its end (created if missing, owned like `like`).
fn open_log(path: &Path, like: Option<&fs::File>) -> io::Result<(fs::File, u64)> {
    let mut f =
        fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o644).open(path)?;
    if let Some(old) = like
        && let Ok(meta) = old.metadata()
    {
        let _ = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()));
    }
    let size = f.seek(SeekFrom::End(0))?;
    Ok((f, size))
}

/// `path` → `path.1`, `path.1` → `path.2`, ... keeping `keep` rotated files.
pub fn rotate(path: &Path, keep: u32) -> io::Result<()> {
    let numbered = |i: u32| {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{i}"));
        PathBuf::from(s)
    };
    match fs::remove_file(numbered(keep)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    for i in (1..keep).rev() {
        match fs::rename(numbered(i), numbered(i + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    fs::rename(path, numbered(1))
}

struct Thread {
    rx: std_mpsc::Receiver<Cmd>,
    wake: OwnedFd,
    rotation: Rotation,
    streams: Vec<Option<Stream>>,
}

impl Thread {
    /// New streams from the channel; false once the agent dropped its handle.
    fn take_new(&mut self, added: &mut Vec<usize>) -> bool {
        let mut buf = [0u8; 8];
        let _ = nix::unistd::read(&self.wake, &mut buf);
        loop {
            match self.rx.try_recv() {
                Ok(Cmd::Add { pipe, path, done }) => {
                    let Some(stream) = Stream::open(pipe, path, done) else { continue };
                    let slot = match self.streams.iter().position(Option::is_none) {
                        Some(i) => {
                            self.streams[i] = Some(stream);
                            i
                        }
                        None => {
                            self.streams.push(Some(stream));
                            self.streams.len() - 1
                        }
                    };
                    added.push(slot);
                }
                Err(std_mpsc::TryRecvError::Empty) => return true,
                Err(std_mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn run_uring(mut self, mut ring: IoUring) {
        let wake_poll = |ring: &mut IoUring, fd: i32| {
            let e =
                opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build().user_data(WAKE);
            push(ring, &e);
        };
        let wake_fd = self.wake.as_raw_fd();
        wake_poll(&mut ring, wake_fd);
        let mut completions: Vec<(u64, i32)> = Vec::new();
        let mut ready: Vec<usize> = Vec::new();
        loop {
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    tracing::error!("task output ring failed: {e}");
                    return;
                }
            }
            completions.clear();
            completions.extend(ring.completion().map(|c| (c.user_data(), c.result())));
            ready.clear();
            for &(ud, res) in &completions {
                if ud == WAKE {
                    if !self.take_new(&mut ready) {
                        return;
                    }
                    wake_poll(&mut ring, wake_fd);
                    continue;
                }
                let (slot, is_splice) = ((ud >> 1) as usize, ud & 1 == 1);
                let Some(Some(s)) = self.streams.get_mut(slot) else { continue };
                s.inflight = s.inflight.saturating_sub(1);
                if is_splice {
                    match res {
                        n if n > 0 => s.moved(n as u64, self.rotation),
                        0 => s.end = Some(Ok(s.moved)),
                        e if e == -libc::EAGAIN || e == -libc::ECANCELED || e == -libc::EINTR => {}
                        e => {
                            let err = io::Error::from_raw_os_error(-e);
                            tracing::warn!(path = %s.path.display(), "task output: {err}");
                            s.end = Some(Err(format!("writing {}: {err}", s.path.display())));
                        }
                    }
                }
                if s.inflight == 0 {
                    ready.push(slot);
                }
            }
            for &slot in &ready {
                let Some(s) = self.streams.get_mut(slot).and_then(Option::as_mut) else { continue };
                if s.end.is_some() {
                    s.finish();
                    self.streams[slot] = None;
                    continue;
                }
                let room = match self.rotation.max_size {
                    0 => CHUNK as u64,
                    max => max.saturating_sub(s.size).clamp(1, CHUNK as u64),
                };
                let (pipe, file) = (s.pipe.as_raw_fd(), s.file.as_raw_fd());
                let poll = opcode::PollAdd::new(types::Fd(pipe), libc::POLLIN as u32)
                    .build()
                    .flags(squeue::Flags::IO_LINK)
                    .user_data((slot as u64) << 1);
                let splice =
                    opcode::Splice::new(types::Fd(pipe), -1, types::Fd(file), -1, room as u32)
                        .flags(libc::SPLICE_F_NONBLOCK)
                        .build()
                        .user_data(((slot as u64) << 1) | 1);
                // A linked pair must go into one submission: make room for both first.
                let free = {
                    let sq = ring.submission();
                    sq.capacity() - sq.len()
                };
                if free < 2 {
                    let _ = ring.submit();
                }
                if push(&mut ring, &poll) && push(&mut ring, &splice) {
                    s.inflight = 2;
                }
            }
        }
    }

    fn run_poll(mut self) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut ready = Vec::new();
        loop {
            let live: Vec<usize> =
                (0..self.streams.len()).filter(|&i| self.streams[i].is_some()).collect();
            let mut revents = Vec::with_capacity(live.len() + 1);
            {
                let mut fds = Vec::with_capacity(live.len() + 1);
                fds.push(PollFd::new(self.wake.as_fd(), PollFlags::POLLIN));
                for &i in &live {
                    if let Some(s) = &self.streams[i] {
                        fds.push(PollFd::new(s.pipe.as_fd(), PollFlags::POLLIN));
                    }
                }
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::error!("task output poll failed: {e}");
                        return;
                    }
                }
                revents.extend(fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())));
            }
            if revents[0] {
                ready.clear();
                if !self.take_new(&mut ready) {
                    return;
                }
            }
            for (k, &slot) in live.iter().enumerate() {
                if !revents[k + 1] {
                    continue;
                }
                let Some(s) = self.streams[slot].as_mut() else { continue };
                loop {
                    let room = match self.rotation.max_size {
                        0 => CHUNK as usize,
                        max => max.saturating_sub(s.size).clamp(1, CHUNK as u64) as usize,
                    };
                    match nix::fcntl::splice(
                        &s.pipe,
                        None,
                        &s.file,
                        None,
                        room,
                        SpliceFFlags::SPLICE_F_NONBLOCK,
                    ) {
                        Ok(0) => {
                            s.end = Some(Ok(s.moved));
                            break;
                        }
                        Ok(n) => s.moved(n as u64, self.rotation),
                        Err(nix::errno::Errno::EAGAIN) => break,
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => {
                            s.end = Some(Err(format!("writing {}: {e}", s.path.display())));
                            break;
                        }
                    }
                }
                if s.end.is_some() {
                    s.finish();
                    self.streams[slot] = None;
                }
            }
        }
    }
}

fn push(ring: &mut IoUring, e: &squeue::Entry) -> bool {
    if crate::sys::uring_push(ring, e) {
        return true;
    }
    let _ = ring.submit();
    crate::sys::uring_push(ring, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn pipe() -> (OwnedFd, fs::File) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (r, fs::File::from(w))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    fn moves_every_byte_in_order(uring: bool) {
        let dir = tempfile::tempdir().unwrap();
        let out = Output::start_with(Rotation { max_size: 0, keep: 1 }, uring).unwrap();
        if uring {
            assert_eq!(out.engine(), "io_uring", "io_uring works on this host");
        } else {
            assert_eq!(out.engine(), "poll+splice");
        }
        let mut writers = Vec::new();
        let mut drained = Vec::new();
        for i in 0..4 {
            let (r, w) = pipe();
            drained.push(out.capture(r, dir.path().join(format!("out{i}"))));
            writers.push(w);
        }
        let mut expected = vec![String::new(); 4];
        for n in 0..5000 {
            for (i, w) in writers.iter_mut().enumerate() {
                let line = format!("{i} {n:08}\n");
                w.write_all(line.as_bytes()).unwrap();
                expected[i].push_str(&line);
            }
        }
        drop(writers);
        let rt = runtime();
        for (i, d) in drained.into_iter().enumerate() {
            let moved = rt.block_on(d.wait()).unwrap();
            assert_eq!(moved, expected[i].len() as u64);
            let got = fs::read_to_string(dir.path().join(format!("out{i}"))).unwrap();
            assert!(
                got == expected[i],
                "stream {i}: {} bytes, expected {}",
                got.len(),
                expected[i].len()
            );
        }
    }

    #[test]
    fn io_uring_moves_every_byte_in_order() {
        moves_every_byte_in_order(true);
    }

    #[test]
    fn poll_engine_moves_every_byte_in_order() {
        moves_every_byte_in_order(false);
    }

    #[test]
    fn appends_to_what_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        fs::write(&path, "before\n").unwrap();
        let out = Output::start(Rotation::default()).unwrap();
        let (r, mut w) = pipe();
        let d = out.capture(r, path.clone());
        w.write_all(b"after\n").unwrap();
        drop(w);
        assert_eq!(runtime().block_on(d.wait()).unwrap(), 6);
        assert_eq!(fs::read_to_string(&path).unwrap(), "before\nafter\n");
    }

    #[test]
    fn rotates_by_size_keeping_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let out = Output::start(Rotation { max_size: 1000, keep: 2 }).unwrap();
        let (r, mut w) = pipe();
        let d = out.capture(r, path.clone());
        // 100 lines of 100 bytes: 10 files' worth, written slowly enough to rotate each time.
        let mut all = String::new();
        for n in 0..100 {
            let line = format!("{n:099}\n");
            w.write_all(line.as_bytes()).unwrap();
            all.push_str(&line);
        }
        drop(w);
        assert_eq!(runtime().block_on(d.wait()).unwrap(), 10_000);
        let read = |p: &str| fs::read_to_string(dir.path().join(p)).unwrap_or_default();
        assert!(!dir.path().join("stdout.3").exists(), "only 2 rotated files are kept");
        let (one, two, cur) = (read("stdout.1"), read("stdout.2"), read("stdout"));
        assert_eq!((one.len(), two.len()), (1000, 1000), "a splice never overfills a file");
        // What is kept is the tail of the output, in order, without a gap.
        let kept = format!("{two}{one}{cur}");
        assert!(all.ends_with(&kept), "kept files are the output's tail");
    }

    #[test]
    fn the_ring_refuses_every_opcode_but_poll_and_splice() {
        let mut ring = restricted_ring().unwrap();
        // NOP is not among the allowed opcodes, so the kernel fails it with EACCES.
        let f = fs::File::open("/proc/self/stat").unwrap();
        let nop = opcode::Nop::new().build().user_data(1);
        let read = opcode::PollAdd::new(types::Fd(f.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(2);
        let mut results: Vec<(u64, i32)> = Vec::new();
        for e in [read, nop] {
            assert!(push(&mut ring, &e));
            ring.submit_and_wait(1).unwrap();
            results.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        }
        results.sort();
        assert_eq!(results[0], (1, -libc::EACCES), "NOP is not allowed");
        assert!(results[1].1 >= 0, "POLL_ADD is: {results:?}");
    }

    #[test]
    fn rotate_shifts_numbered_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stderr");
        for (name, body) in [("stderr", "c"), ("stderr.1", "b"), ("stderr.2", "a")] {
            fs::write(dir.path().join(name), body).unwrap();
        }
        rotate(&p, 2).unwrap();
        assert!(!p.exists());
        assert_eq!(fs::read_to_string(dir.path().join("stderr.1")).unwrap(), "c");
        assert_eq!(fs::read_to_string(dir.path().join("stderr.2")).unwrap(), "b");
        assert!(!dir.path().join("stderr.3").exists());
    }
}
