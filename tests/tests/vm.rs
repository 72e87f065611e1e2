//! The VM suite: cgroup v2 enforcement checked inside a QEMU guest (TCG; KVM is not used),
//! where the suite owns a whole cgroup2 hierarchy with every controller, whatever the host has.
//!
//! This file owns the host side: it packs an initramfs (static busybox, the workspace's real
//! `corral` binary with the shared libraries it links, `/etc/passwd` and friends, and
//! `tests/vm/guest.sh`), boots Debian's kernel (`.vm/vmlinuz`, fetched by `scripts/vm-kernel`)
//! on it, streams the guest's console to stdout and decides pass/fail from it. The guest script
//! starts a master and an agent and runs the cases through `corral run`; it prints
//! `test NAME ... ok|FAILED` lines and `N passed, M failed`, which pass through unprefixed.
//!
//! A plain `main` (`harness = false`). It fails, never skips, when QEMU, busybox, cpio or the
//! kernel are missing. Overrides: `CORRAL_BIN` (the binary), `CORRAL_VM_KERNEL` (the kernel
//! image), `CORRAL_VM_GUEST` (the guest script), `CORRAL_VM_TIMEOUT` (seconds, default 400),
//! `CORRAL_VM_APPEND` (more kernel arguments, e.g. `loglevel=5` for kernel warnings in full).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The host's static busybox (Debian's busybox-static): the guest's whole userland.
const BUSYBOX: &str = "/bin/busybox";
/// Kernel command line: serial console, quiet, reboot (so QEMU exits) on panic.
const APPEND: &str = "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init";
const DEFAULT_TIMEOUT_S: u64 = 400;
/// What /init prints once userspace runs, and after the guest script.
const GUEST_UP: &str = "== guest up";
const GUEST_EXIT: &str = "== guest exit=";
/// A CPU stuck this long in the guest kernel means it will not recover.
const LOCKUP_GIVE_UP_S: u64 = 60;

/// The initramfs's `/init`: busybox applets, the pseudo file systems, cgroup2 with every
/// controller (the guest's own root), loopback, then the guest script.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
hostname -F /etc/hostname
echo "== guest up after $(cut -d' ' -f1 /proc/uptime)s"
sh /guest.sh
echo "== guest exit=$? after $(cut -d' ' -f1 /proc/uptime)s"
poweroff -f
"#;

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
const HOSTNAME: &str = "corral-vm\n";
const HOSTS: &str = "127.0.0.1 localhost corral-vm\n::1 localhost\n";
const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files\n";

type Result<T> = std::result::Result<T, String>;

// The suite measures real time (a timeout and the wall time it reports); the no-clock rule is
// for the cores.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

fn main() -> ExitCode {
    let start = now();
    let mut counted = false;
    let outcome = run(start, &mut counted);
    let wall = start.elapsed().as_secs_f64();
    match outcome {
        Ok(summary) => {
            println!("vm: ok: {summary}; host wall time {wall:.1}s");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // A run that ends without the guest's own summary still counts as one failure
            // for the repo's counters (scripts/test adds up the `N passed, M failed` lines).
            if !counted {
                println!("0 passed, 1 failed");
            }
            println!("vm: FAILED: {e}; host wall time {wall:.1}s");
            ExitCode::FAILURE
        }
    }
}

/// Everything; `Ok` is the guest's summary line. Sets `counted` when the guest printed a
/// summary that already counts a failure.
fn run(start: Instant, counted: &mut bool) -> Result<String> {
    let root = workspace_root()?;
    // First the kernel: fetching it (scripts/vm-kernel) also installs the tools.
    let kernel = find_kernel(&root)?;
    let tools = Tools::find()?;
    // corral_bin panics, with its reason, when target/<profile>/corral is missing.
    let corral = std::panic::catch_unwind(corral_tests::corral_bin)
        .map_err(|_| "no corral binary (see the message above)".to_string())?;
    if !corral.is_file() {
        return Err(format!(
            "{} not found: build it first (`cargo build -p corral-tools`) or set CORRAL_BIN",
            corral.display()
        ));
    }
    let guest = std::env::var_os("CORRAL_VM_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("tests/vm/guest.sh"));
    let timeout = match std::env::var("CORRAL_VM_TIMEOUT") {
        Ok(s) => Duration::from_secs(
            s.parse().map_err(|_| format!("CORRAL_VM_TIMEOUT={s}: not a number of seconds"))?,
        ),
        Err(_) => Duration::from_secs(DEFAULT_TIMEOUT_S),
    };

    let work = tempfile::Builder::new()
        .prefix("corral-vm-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let initrd = work.path().join("initrd.cpio");
    build_initramfs(&tools, &corral, &guest, &work.path().join("root"), &initrd)?;
    let size = fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0);
    println!(
        "vm: kernel {}, initramfs {:.1} MB ({} and its libraries), built in {:.1}s",
        kernel.display(),
        size as f64 / 1e6,
        corral.display(),
        start.elapsed().as_secs_f64()
    );
    let mut out = boot(&tools.qemu, &kernel, &initrd, timeout)?;
    if let (Some(l), None) = (&out.hung, out.summary) {
        // Seen about once in twenty boots under TCG, before any case ran: booting again is
        // a fresh machine. A second hang fails the suite.
        println!("vm: the guest kernel hung ({l}); booting it once more");
        out = boot(&tools.qemu, &kernel, &initrd, timeout)?;
    }
    *counted = out.summary.is_some_and(|(_, failed)| failed > 0);
    out.judge()
}

fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "the tests crate has no parent directory".into())
}

/// The host programs the suite needs.
struct Tools {
    qemu: PathBuf,
    cpio: PathBuf,
    ldd: Option<PathBuf>,
}

impl Tools {
    fn find() -> Result<Tools> {
        const INSTALL: &str = "run scripts/vm-kernel (as root) to install it";
        let qemu = which("qemu-system-x86_64")
            .ok_or_else(|| format!("qemu-system-x86_64 not found in PATH: {INSTALL}"))?;
        let cpio = which("cpio").ok_or_else(|| format!("cpio not found in PATH: {INSTALL}"))?;
        let busybox = Path::new(BUSYBOX);
        if !busybox.is_file() {
            return Err(format!("{BUSYBOX} not found (Debian package busybox-static): {INSTALL}"));
        }
        if let Some(interp) = elf_interpreter(busybox)? {
            return Err(format!(
                "{BUSYBOX} is dynamically linked (interpreter {interp}): the guest needs the \
                 static one (Debian package busybox-static)"
            ));
        }
        Ok(Tools { qemu, cpio, ldd: which("ldd") })
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The kernel image: `$CORRAL_VM_KERNEL`, else `.vm/vmlinuz`, fetched with `scripts/vm-kernel`
/// when missing.
fn find_kernel(root: &Path) -> Result<PathBuf> {
    if let Some(k) = std::env::var_os("CORRAL_VM_KERNEL") {
        let k = PathBuf::from(k);
        return if k.is_file() {
            Ok(k)
        } else {
            Err(format!("CORRAL_VM_KERNEL={}: no such file", k.display()))
        };
    }
    let k = root.join(".vm/vmlinuz");
    if k.is_file() {
        return Ok(k);
    }
    let script = root.join("scripts/vm-kernel");
    println!("vm: {} missing, running {}", k.display(), script.display());
    let status = Command::new(&script)
        .current_dir(root)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if k.is_file() {
        Ok(k)
    } else {
        Err(format!(
            "no kernel image at {} ({} exited with {status}); run it as root, or set \
             CORRAL_VM_KERNEL",
            k.display(),
            script.display()
        ))
    }
}

/// The ELF interpreter (`PT_INTERP`) of a 64-bit little-endian ELF file; `None` when it has
/// none (static).
fn elf_interpreter(path: &Path) -> Result<Option<String>> {
    let bad = |what: &str| format!("{}: {what}", path.display());
    let data = fs::read(path).map_err(|e| bad(&e.to_string()))?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .and_then(|v| usize::try_from(v).ok())
    };
    let truncated = || bad("truncated ELF header");
    let phoff = u64_at(0x20).ok_or_else(truncated)?;
    let phentsize = u16_at(0x36).ok_or_else(truncated)?;
    let phnum = u16_at(0x38).ok_or_else(truncated)?;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = data.get(ph..ph + 4).ok_or_else(truncated)?;
        if p_type == 3u32.to_le_bytes() {
            let off = u64_at(ph + 8).ok_or_else(truncated)?;
            let len = u64_at(ph + 32).ok_or_else(truncated)?;
            let raw = data.get(off..off + len).ok_or_else(truncated)?;
            let s = raw.split(|&b| b == 0).next().unwrap_or_default();
            return Ok(Some(String::from_utf8_lossy(s).into_owned()));
        }
    }
    Ok(None)
}

/// The absolute paths of the shared libraries `bin` needs, as `ldd` resolves them, plus its
/// ELF interpreter. Empty for a static binary.
fn shared_libraries(ldd: Option<&Path>, bin: &Path) -> Result<Vec<PathBuf>> {
    let Some(interp) = elf_interpreter(bin)? else {
        return Ok(Vec::new());
    };
    let ldd = ldd.ok_or_else(|| {
        format!("{} is dynamically linked and ldd is not installed", bin.display())
    })?;
    let out = Command::new(ldd)
        .arg(bin)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", ldd.display()))?;
    if !out.status.success() {
        return Err(format!(
            "ldd {} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut libs = vec![PathBuf::from(interp)];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        if line.contains("not found") {
            return Err(format!("ldd {}: {line}", bin.display()));
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux... (0x...)`;
        // `linux-vdso.so.1 (0x...)` has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let p = PathBuf::from(p);
            if !libs.contains(&p) {
                libs.push(p);
            }
        }
    }
    // glibc loads NSS modules with dlopen, so ldd does not list them; user lookups need
    // libnss_files (a stub in newer glibc, harmless to copy).
    let libc = libs.iter().find(|p| p.file_name().is_some_and(|n| n == "libc.so.6")).cloned();
    if let Some(nss) = libc.and_then(|c| c.parent().map(|d| d.join("libnss_files.so.2")))
        && nss.is_file()
    {
        libs.push(nss);
    }
    Ok(libs)
}

/// Copies `from` (following links) to `root` + `to` (an absolute path) with `mode`.
fn install(root: &Path, from: &Path, to: &Path, mode: u32) -> Result<()> {
    let dest = root.join(to.strip_prefix("/").unwrap_or(to));
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    }
    fs::copy(from, &dest)
        .map_err(|e| format!("copy {} to {}: {e}", from.display(), dest.display()))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", dest.display()))
}

fn write_file(root: &Path, to: &str, text: &str, mode: u32) -> Result<()> {
    let dest = root.join(to.trim_start_matches('/'));
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    }
    fs::write(&dest, text).map_err(|e| format!("write {}: {e}", dest.display()))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", dest.display()))
}

/// Lays out the guest's root file system in `root` and packs it into `initrd` (an
/// uncompressed newc cpio: the debug `corral` binary is large, and decompressing it under
/// TCG costs more than reading it).
fn build_initramfs(
    tools: &Tools,
    corral: &Path,
    guest: &Path,
    root: &Path,
    initrd: &Path,
) -> Result<()> {
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "root", "etc", "run",
        "var/tmp",
    ] {
        fs::create_dir_all(root.join(d)).map_err(|e| format!("mkdir {d}: {e}"))?;
    }
    install(root, Path::new(BUSYBOX), Path::new("/bin/busybox"), 0o755)?;
    install(root, corral, Path::new("/usr/local/bin/corral"), 0o755)?;
    for lib in shared_libraries(tools.ldd.as_deref(), corral)? {
        install(root, &lib, &lib, 0o755)?;
    }
    if !guest.is_file() {
        return Err(format!("guest script {} not found", guest.display()));
    }
    install(root, guest, Path::new("/guest.sh"), 0o755)?;
    write_file(root, "/init", INIT, 0o755)?;
    write_file(root, "/etc/passwd", PASSWD, 0o644)?;
    write_file(root, "/etc/group", GROUP, 0o644)?;
    write_file(root, "/etc/hostname", HOSTNAME, 0o644)?;
    write_file(root, "/etc/hosts", HOSTS, 0o644)?;
    write_file(root, "/etc/nsswitch.conf", NSSWITCH, 0o644)?;

    let mut names = String::new();
    list_tree(root, Path::new("."), &mut names)?;
    let out = fs::File::create(initrd).map_err(|e| format!("create {}: {e}", initrd.display()))?;
    let mut child = Command::new(&tools.cpio)
        .args(["-o", "-H", "newc", "--quiet", "-R", "0:0"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", tools.cpio.display()))?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().ok_or("cpio stdin")?;
        stdin.write_all(names.as_bytes()).map_err(|e| format!("feeding cpio: {e}"))?;
    }
    let done = child.wait_with_output().map_err(|e| format!("cpio: {e}"))?;
    if !done.status.success() {
        return Err(format!(
            "cpio exited with {}: {}",
            done.status,
            String::from_utf8_lossy(&done.stderr).trim()
        ));
    }
    Ok(())
}

/// Every path under `base`/`rel`, parents first, one a line (cpio's input).
fn list_tree(base: &Path, rel: &Path, out: &mut String) -> Result<()> {
    let _ = writeln!(out, "{}", rel.display());
    let dir = base.join(rel);
    if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .map_err(|e| format!("list {}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        entries.sort();
        for name in entries {
            list_tree(base, &rel.join(name), out)?;
        }
    }
    Ok(())
}

/// What the guest printed, as far as the verdict goes.
#[derive(Debug, Default)]
struct Output {
    guest_up: bool,
    guest_exit: Option<i32>,
    /// The `N passed, M failed` line.
    summary: Option<(u32, u32)>,
    timed_out: Option<Duration>,
    /// A kernel soft lockup report for a CPU stuck for [`LOCKUP_GIVE_UP_S`] or more: the
    /// guest is not coming back (seen, rarely, under TCG), so QEMU is killed early.
    hung: Option<String>,
    qemu_status: Option<std::process::ExitStatus>,
}

impl Output {
    fn see(&mut self, line: &str) {
        // The markers may share a line with what the firmware printed last (no newline).
        if line.contains(GUEST_UP) {
            self.guest_up = true;
        } else if let Some((_, rest)) = line.split_once(GUEST_EXIT) {
            self.guest_exit = rest.split_whitespace().next().and_then(|c| c.parse().ok());
        } else if let Some(s) = parse_summary(line) {
            self.summary = Some(s);
        } else if lockup_seconds(line).is_some_and(|s| s >= LOCKUP_GIVE_UP_S) {
            self.hung = Some(line.to_string());
        }
    }

    fn judge(&self) -> Result<String> {
        if let Some(l) = &self.hung {
            return Err(format!("the guest kernel hung, QEMU killed: {l}"));
        }
        if let Some(t) = self.timed_out {
            return Err(format!(
                "timed out after {}s: QEMU killed (guest up: {}, summary: {})",
                t.as_secs(),
                self.guest_up,
                self.summary.map_or("none".into(), |(p, f)| format!("{p} passed, {f} failed"))
            ));
        }
        if !self.guest_up {
            return Err(format!(
                "the guest never reached /init's first line (kernel or initramfs problem; QEMU \
                 exited with {})",
                self.qemu_status.map_or("unknown status".into(), |s| s.to_string())
            ));
        }
        let Some(code) = self.guest_exit else {
            return Err("the guest script never finished (no `== guest exit=` line)".into());
        };
        match self.summary {
            None => Err(format!("the guest script exited with {code} without a summary line")),
            Some((p, f)) if f > 0 => Err(format!("{f} guest case(s) failed, {p} passed")),
            Some((0, _)) => Err("the guest ran no cases".into()),
            Some((p, _)) if code != 0 => {
                Err(format!("the guest script exited with {code} ({p} passed)"))
            }
            Some((p, f)) => Ok(format!("{p} passed, {f} failed")),
        }
    }
}

/// N of the kernel's `watchdog: BUG: soft lockup - CPU#0 stuck for Ns! [comm:pid]`.
fn lockup_seconds(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once("soft lockup - CPU#")?;
    let (_, rest) = rest.split_once(" stuck for ")?;
    rest.split_once("s!")?.0.parse().ok()
}

/// `N passed, M failed` (the whole line).
fn parse_summary(line: &str) -> Option<(u32, u32)> {
    let rest = line.strip_suffix(" failed")?;
    let (p, f) = rest.split_once(" passed, ")?;
    Some((p.parse().ok()?, f.parse().ok()?))
}

enum Event {
    Line(String),
    Stderr(String),
    StdoutClosed,
}

/// Boots the guest and streams its console; kills QEMU (by its pid, it is our child) after
/// `timeout`.
fn boot(qemu: &Path, kernel: &Path, initrd: &Path, timeout: Duration) -> Result<Output> {
    let mut append = APPEND.to_string();
    if let Ok(more) = std::env::var("CORRAL_VM_APPEND") {
        append.push(' ');
        append.push_str(&more);
    }
    let mut cmd = Command::new(qemu);
    cmd.args(["-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "2", "-m", "1536"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &append, "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"])
        // Not a terminal: QEMU leaves the caller's tty settings alone.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", qemu.display()))?;
    println!("vm: qemu pid {} (timeout {}s)", child.id(), timeout.as_secs());
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().ok_or("qemu stdout")?;
    let stderr = child.stderr.take().ok_or("qemu stderr")?;
    let tx_err = tx.clone();
    std::thread::spawn(move || {
        read_lines(stdout, |l| tx.send(Event::Line(l)).is_ok());
        let _ = tx.send(Event::StdoutClosed);
    });
    std::thread::spawn(move || read_lines(stderr, |l| tx_err.send(Event::Stderr(l)).is_ok()));

    let mut out = Output::default();
    let deadline = start + timeout;
    loop {
        let left = deadline.saturating_duration_since(now());
        match rx.recv_timeout(left) {
            Ok(Event::Line(l)) => {
                if l.contains(GUEST_UP) {
                    println!("{l} [host {:.1}s]", start.elapsed().as_secs_f64());
                } else {
                    println!("{l}");
                }
                out.see(&l);
                if out.hung.is_some() {
                    let _ = child.kill();
                    break;
                }
            }
            Ok(Event::Stderr(l)) => println!("qemu: {l}"),
            Ok(Event::StdoutClosed) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                out.timed_out = Some(timeout);
                let _ = child.kill();
                break;
            }
        }
    }
    // QEMU exits right after the guest powers off; give it a moment, then make sure.
    let wait_until = now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(s)) => {
                out.qemu_status = Some(s);
                break;
            }
            Ok(None) if now() < wait_until => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                out.qemu_status = child.wait().ok();
                break;
            }
        }
    }
    // Whatever QEMU said on stderr last.
    while let Ok(ev) = rx.try_recv() {
        if let Event::Stderr(l) = ev {
            println!("qemu: {l}");
        }
    }
    println!("vm: qemu ran {:.1}s", start.elapsed().as_secs_f64());
    Ok(out)
}

/// Calls `f` with each line (lossy UTF-8, terminal escapes and control characters such as
/// `\r` stripped: the firmware clears the screen) until EOF or `f` returns false.
fn read_lines(r: impl Read, mut f: impl FnMut(String) -> bool) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if !f(clean_line(&String::from_utf8_lossy(&buf))) {
                    return;
                }
            }
        }
    }
}

/// `raw` without ANSI escape sequences (`ESC [ ... final`, `ESC x`) and control characters
/// other than tab.
fn clean_line(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.next() == Some('[') {
                    // Parameters and intermediates, up to the final byte (@ to ~).
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}
