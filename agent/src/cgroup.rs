//! cgroup v2, by hand, rooted at a configurable cgroup2 mount: `/sys/fs/cgroup` on pure-v2
//! hosts, `/sys/fs/cgroup/unified` on hybrid ones. Only the unified hierarchy is ever touched;
//! a path that is not cgroup2 (statfs magic) is refused, so the agent cannot write into a v1
//! controller tree by mistake.
//!
//! A [`Cgroup`] is just a directory path: create, read and write interface files, list and
//! kill its processes (`cgroup.kill`), watch `cgroup.events`, remove. Tasks are started
//! straight into one (see `sys::spawn_init`), with the directory and `cgroup.procs` opened
//! here beforehand. What to write (limits, controllers) is decided in `isolation`. The file
//! parsing is pure so it is tested on fixture files.
#![forbid(unsafe_code)]

use std::fs;
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where cgroup2 is looked for when no root is given, in order.
pub const DEFAULT_ROOTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path} is not a cgroup2 mount")]
    NotCgroup2 { path: PathBuf },
    #[error("no cgroup2 mount at {} or {}; mount one or pass --cgroup-root", DEFAULT_ROOTS[0], DEFAULT_ROOTS[1])]
    NoCgroup2,
    #[error("cannot {op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cgroup {path} still has processes {waited:?} after cgroup.kill")]
    StillPopulated { path: PathBuf, waited: Duration },
    #[error("unexpected contents in {path}: {what}")]
    Parse { path: PathBuf, what: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io { op, path: path.to_path_buf(), source }
}

/// Whether `path` is on a cgroup2 mount (statfs `f_type` is `CGROUP2_SUPER_MAGIC`,
/// 0x63677270).
pub fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// The cgroup2 root to use: `given` if it is cgroup2, else the first of [`DEFAULT_ROOTS`]
/// that is.
pub fn find_root(given: Option<&Path>) -> Result<PathBuf, CgroupError> {
    match given {
        Some(p) if is_cgroup2(p) => Ok(p.to_path_buf()),
        Some(p) => Err(CgroupError::NotCgroup2 { path: p.to_path_buf() }),
        None => DEFAULT_ROOTS
            .iter()
            .map(PathBuf::from)
            .find(|p| is_cgroup2(p))
            .ok_or(CgroupError::NoCgroup2),
    }
}

/// Reads `populated` from the text of a `cgroup.events` file.
pub fn parse_populated(events: &str) -> Option<bool> {
    events.lines().find_map(|l| match l.split_once(' ') {
        Some(("populated", v)) => Some(v.trim() == "1"),
        _ => None,
    })
}

/// Reads `key value` lines (`memory.events`, `pids.events`, `cpu.stat`) into pairs; lines
/// that are not a word and a number are skipped.
pub fn parse_flat_keyed(text: &str) -> Vec<(&str, u64)> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect()
}

/// The value of `key` in a flat-keyed file's text.
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    parse_flat_keyed(text).into_iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// One cgroup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn new(path: impl Into<PathBuf>) -> Cgroup {
        Cgroup { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn child(&self, name: &str) -> Cgroup {
        Cgroup::new(self.path.join(name))
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Creates the directory (and missing parents); an existing one is fine.
    pub fn create(&self) -> Result<(), CgroupError> {
        fs::create_dir_all(&self.path).map_err(io_err("create cgroup", &self.path))
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// The path of one of this cgroup's interface files.
    pub fn file_path(&self, name: &str) -> PathBuf {
        self.file(name)
    }

    /// Writes `value` to the interface file `name` (one write, as the kernel wants).
    pub fn write(&self, name: &str, value: &str) -> Result<(), CgroupError> {
        let p = self.file(name);
        let mut f = fs::OpenOptions::new().write(true).open(&p).map_err(io_err("open", &p))?;
        f.write_all(value.as_bytes()).map_err(io_err("write", &p))
    }

    /// Reads the interface file `name`.
    pub fn read(&self, name: &str) -> Result<String, CgroupError> {
        let p = self.file(name);
        fs::read_to_string(&p).map_err(io_err("read", &p))
    }

    /// The controllers this cgroup hands down to its children (`cgroup.subtree_control`).
    pub fn subtree_control(&self) -> Result<Vec<String>, CgroupError> {
        Ok(self.read("cgroup.subtree_control")?.split_whitespace().map(String::from).collect())
    }

    /// Opens the directory itself, for `clone3(CLONE_INTO_CGROUP)`.
    pub fn open_dir(&self) -> Result<fs::File, CgroupError> {
        fs::File::open(&self.path).map_err(io_err("open", &self.path))
    }

    /// Opens `cgroup.procs` for writing, for a child to join between fork and exec.
    pub fn open_procs(&self) -> Result<fs::File, CgroupError> {
        let p = self.file("cgroup.procs");
        fs::OpenOptions::new().write(true).open(&p).map_err(io_err("open", &p))
    }

    /// The pids in this cgroup (not its children).
    pub fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        let p = self.file("cgroup.procs");
        let text = fs::read_to_string(&p).map_err(io_err("read", &p))?;
        text.lines()
            .map(|l| {
                l.trim().parse().map_err(|_| CgroupError::Parse { path: p.clone(), what: l.into() })
            })
            .collect()
    }

    /// The controllers available in this cgroup (`cgroup.controllers`).
    pub fn controllers(&self) -> Result<Vec<String>, CgroupError> {
        let p = self.file("cgroup.controllers");
        let text = fs::read_to_string(&p).map_err(io_err("read", &p))?;
        Ok(text.split_whitespace().map(String::from).collect())
    }

    /// Whether any process is in this cgroup or below (`cgroup.events`).
    pub fn populated(&self) -> Result<bool, CgroupError> {
        let p = self.file("cgroup.events");
        let text = fs::read_to_string(&p).map_err(io_err("read", &p))?;
        parse_populated(&text)
            .ok_or_else(|| CgroupError::Parse { path: p, what: "no 'populated' line".into() })
    }

    /// SIGKILLs every process in this cgroup and below (`cgroup.kill`, Linux 5.14+).
    pub fn kill(&self) -> Result<(), CgroupError> {
        let p = self.file("cgroup.kill");
        let mut f = fs::OpenOptions::new().write(true).open(&p).map_err(io_err("open", &p))?;
        f.write_all(b"1").map_err(io_err("write", &p))
    }

    /// The names of the child cgroups.
    pub fn children(&self) -> Result<Vec<String>, CgroupError> {
        let entries = fs::read_dir(&self.path).map_err(io_err("list", &self.path))?;
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(io_err("list", &self.path))?;
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(out)
    }

    /// Removes the (empty) cgroup; one that is already gone is fine. A cgroup whose last
    /// process has just died can still be busy for a moment, so `EBUSY` is retried briefly.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut tries = 0;
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(source) => {
                    return Err(CgroupError::Io {
                        op: "remove cgroup",
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// Kills whatever is left in the cgroup, waits until it is empty (at most `timeout`) and
    /// removes it. Blocking: call it off the async runtime.
    pub fn destroy(&self, timeout: Duration) -> Result<(), CgroupError> {
        if !self.exists() {
            return Ok(());
        }
        if self.populated()? {
            self.kill()?;
            let step = Duration::from_millis(2);
            let mut waited = Duration::ZERO;
            while self.populated()? {
                if waited >= timeout {
                    return Err(CgroupError::StillPopulated { path: self.path.clone(), waited });
                }
                std::thread::sleep(step);
                waited += step;
            }
        }
        self.remove()
    }

    /// [`Cgroup::destroy`] for a whole subtree, deepest first (for cleaning up after an
    /// agent that could not: SIGKILLed agents leave their containers). Returns the paths of
    /// the child cgroups that were there.
    pub fn destroy_tree(&self, timeout: Duration) -> Result<Vec<PathBuf>, CgroupError> {
        if !self.exists() {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for name in self.children()? {
            let child = self.child(&name);
            found.push(child.path().to_path_buf());
            found.extend(child.destroy_tree(timeout)?);
        }
        self.destroy(timeout)?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_controllers_parse_from_fixture_files() {
        let dir = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(dir.path());
        fs::write(dir.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        fs::write(dir.path().join("cgroup.procs"), "12\n345\n").unwrap();
        assert!(cg.populated().unwrap());
        assert_eq!(cg.controllers().unwrap(), vec!["cpu", "memory", "pids"]);
        assert_eq!(cg.procs().unwrap(), vec![12, 345]);
        fs::write(dir.path().join("cgroup.events"), "frozen 0\npopulated 0\n").unwrap();
        assert!(!cg.populated().unwrap());
        fs::write(dir.path().join("cgroup.events"), "frozen 0\n").unwrap();
        assert!(matches!(cg.populated(), Err(CgroupError::Parse { .. })));
        fs::write(dir.path().join("cgroup.procs"), "x\n").unwrap();
        assert!(matches!(cg.procs(), Err(CgroupError::Parse { .. })));
        let err = Cgroup::new(dir.path().join("nope")).populated().unwrap_err();
        assert!(err.to_string().contains("nope/cgroup.events"), "errors name the path: {err}");
    }

    #[test]
    fn a_plain_directory_is_not_cgroup2() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_cgroup2(dir.path()));
        assert!(matches!(find_root(Some(dir.path())), Err(CgroupError::NotCgroup2 { .. })));
    }

    /// A real cgroup2 root to test against, or why the test is skipped.
    fn real_root() -> Option<PathBuf> {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIP cgroup::tests: cgroup tests need root");
            return None;
        }
        match find_root(None) {
            Ok(root) => Some(root),
            Err(e) => {
                println!("SKIP cgroup::tests: {e}");
                None
            }
        }
    }

    #[test]
    fn real_cgroup_create_spawn_into_kill_remove() {
        let Some(root) = real_root() else { return };
        let parent = Cgroup::new(root.join(format!("corral-unit-{}", std::process::id())));
        parent.create().unwrap();
        let cg = parent.child("c1");
        cg.create().unwrap();
        assert!(!cg.populated().unwrap());

        // Started straight into the cgroup, without a fork of this (test) process.
        let devnull = fs::File::open("/dev/null").unwrap();
        let (dir, procs) = (cg.open_dir().unwrap(), cg.open_procs().unwrap());
        use std::os::fd::AsFd as _;
        let argv = [std::ffi::OsStr::new("sleep"), std::ffi::OsStr::new("60")];
        let request = |program: &'static str| crate::sys::InitSpawn {
            program: Path::new(program),
            argv: &argv,
            stdio: [devnull.as_fd(), devnull.as_fd(), devnull.as_fd()],
            cgroup_dir: dir.as_fd(),
            cgroup_procs: procs.as_fd(),
            namespaces: crate::sys::Namespaces::default(),
        };
        let child = crate::sys::spawn_init(&request("/bin/sleep")).unwrap();
        let pid = child.pid.as_raw();
        // Linux 5.7+ (every kernel this runs on here) creates it in the cgroup directly.
        assert_eq!(child.path, crate::sys::SpawnPath::Clone3IntoCgroup);
        // It runs in the cgroup from its first instruction: /proc shows the path.
        let rel = cg.path().strip_prefix(&root).unwrap();
        let proc_cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            proc_cgroup.lines().any(|l| l == format!("0::/{}", rel.display())),
            "{proc_cgroup}"
        );
        assert_eq!(cg.procs().unwrap(), vec![pid]);
        assert!(cg.populated().unwrap());
        // The parent's children and the removal of a busy cgroup.
        assert_eq!(parent.children().unwrap(), vec!["c1"]);
        assert!(cg.remove().is_err(), "a populated cgroup cannot be removed");

        // The path for kernels before 5.7: the child joins by writing cgroup.procs.
        let other = crate::sys::spawn_init_without_clone3(&request("/bin/sleep")).unwrap();
        assert_eq!(other.path, crate::sys::SpawnPath::CloneThenJoin);
        let mut both = cg.procs().unwrap();
        both.sort();
        let mut want = vec![pid, other.pid.as_raw()];
        want.sort();
        assert_eq!(both, want);
        // A program that cannot be exec'd is an error naming the step, and leaves no child.
        let err = crate::sys::spawn_init(&request("/nonexistent/corral-init")).unwrap_err();
        assert!(err.to_string().starts_with("exec: No such file"), "{err}");
        assert_eq!(cg.procs().unwrap().len(), 2);

        cg.destroy(Duration::from_secs(5)).unwrap();
        let _ = nix::sys::wait::waitpid(other.pid, None).unwrap();
        let status = nix::sys::wait::waitpid(child.pid, None).unwrap();
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Signaled(
                child.pid,
                nix::sys::signal::Signal::SIGKILL,
                false
            )
        );
        assert!(!cg.exists());
        cg.destroy(Duration::from_secs(1)).unwrap();
        parent.remove().unwrap();
        assert!(!parent.exists());
    }
}
