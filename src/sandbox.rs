//! Runs a program inside an unpacked image root without a daemon and without
//! privileges: a new user namespace (the caller is root inside, and only
//! there), new mount, PID, IPC and UTS namespaces, no network unless asked,
//! and the root switched with `pivot_root`. The image root is mounted
//! read-only; `/tmp`, `/var/tmp`, `/root` and `/run` are fresh tmpfs, `/dev`
//! holds only the harmless nodes, `/proc` is a fresh procfs of the sandbox's
//! own PID namespace (never the host's: where the kernel refuses one, the
//! sandbox does not run), and chosen host directories are bound in.
//!
//! The image is hostile input: every mount point in it is resolved from a
//! handle on the root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! and mounted on through that handle, so a symlinked `/tmp`, `/run`,
//! `/proc` or `/dev` never leads a mount or a `mkdir` out of the root.
//!
//! The mounts are locked before the program starts: after `pivot_root` the
//! sandbox enters a second user namespace (as bubblewrap does), which owns
//! neither the mount namespace nor the mounts, so nothing in it can
//! remount the read-only root writable or unmount a bind; `no_new_privs` is
//! set, and for a read-only root every capability is dropped, the bounding
//! set too (a uid-0 process that execs would regain them otherwise). An
//! overlay root (prepare scripts) keeps the second namespace's capabilities,
//! which reach only its own files and namespaces: the script is root as in
//! a Dockerfile's RUN, and its writes land in the overlay's upper directory.
//!
//! Written on raw syscalls rather than by calling `unshare(1)` or bubblewrap:
//! neither is on every CI runner, and this way a failure names its step. The
//! child of `fork` may only make async-signal-safe calls (the parent has
//! threads), so everything it needs is prepared before the fork and the
//! child only mounts, writes and execs.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// A host directory made visible inside the sandbox.
#[derive(Debug, Clone)]
pub struct Bind {
    pub host: PathBuf,
    /// Absolute path inside; must lie under one of the sandbox's tmpfs
    /// mounts (`/tmp`, `/var/tmp`, `/root`, `/run`), which is where it is
    /// created, and not inside another bind. The image must have that
    /// directory (not a symlink).
    pub inside: String,
    pub writable: bool,
}

/// How to run one program.
#[derive(Debug, Clone)]
pub struct Sandbox {
    root: PathBuf,
    binds: Vec<Bind>,
    env: Vec<(String, String)>,
    workdir: String,
    network: bool,
    hostname: String,
    /// Writable root: an overlay whose changes land in `upper`.
    overlay: Option<Overlay>,
    /// The user and group the program runs as (a Dockerfile's `USER`).
    user: (u32, u32),
}

/// Where an overlay root keeps its changes (both empty directories on the
/// same file system, outside the image root).
#[derive(Debug, Clone)]
pub struct Overlay {
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// Directories of the image that get a fresh, writable, empty tmpfs.
const TMPFS_DIRS: [&str; 4] = ["tmp", "var/tmp", "root", "run"];
/// The device nodes a build may open.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The links a /dev has: process substitution and `/dev/stdin` need them.
const DEV_LINKS: [(&str, &str); 4] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// How the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

impl Sandbox {
    /// A sandbox over the unpacked image root `root` (a directory).
    pub fn new(root: &Path) -> Sandbox {
        Sandbox {
            root: root.to_path_buf(),
            binds: Vec::new(),
            env: Vec::new(),
            workdir: "/".into(),
            network: false,
            hostname: "dallinger-oci".into(),
            overlay: None,
            user: (0, 0),
        }
    }

    /// Makes the root writable through an overlay: what the program adds,
    /// changes or deletes is recorded in `overlay.upper` (deletions as
    /// 0/0 character devices, replaced directories with the
    /// `user.overlay.opaque` attribute), the image root stays untouched.
    /// Only `/run` then gets a tmpfs; `/tmp` and `/root` are part of the
    /// overlay, as in a Dockerfile's RUN.
    pub fn overlay(mut self, overlay: Overlay) -> Sandbox {
        self.overlay = Some(overlay);
        self
    }

    pub fn bind(mut self, bind: Bind) -> Sandbox {
        self.binds.push(bind);
        self
    }

    /// Sets (or replaces) one environment variable; nothing of the host's
    /// environment reaches the program otherwise.
    pub fn env(mut self, key: &str, value: &str) -> Sandbox {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn workdir(mut self, dir: &str) -> Sandbox {
        self.workdir = dir.to_string();
        self
    }

    /// Runs the program as `uid`:`gid` (root by default), as a
    /// Dockerfile's `USER` does: the innermost user namespace maps that
    /// user (and only it) to the caller, so every file of the root is
    /// that user's and the program holds no capability after its exec.
    pub fn user(mut self, uid: u32, gid: u32) -> Sandbox {
        self.user = (uid, gid);
        self
    }

    /// Shares the host's network instead of an empty network namespace.
    pub fn network(mut self, on: bool) -> Sandbox {
        self.network = on;
        self
    }

    /// Runs `argv` (`argv[0]` an absolute path inside the root), its output
    /// and errors written to `log`, stdin empty. Returns how it ended; an
    /// error only when the sandbox itself could not be set up.
    pub fn run(&self, argv: &[&str], log: &File) -> Result<Exit> {
        let plan = self.prepare(argv)?;
        let devnull = File::open("/dev/null").context("cannot open /dev/null")?;
        let (err_read, err_write) = pipe()?;
        // SAFETY: the child runs only `child_main`, which makes
        // async-signal-safe syscalls on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("cannot fork the sandbox");
        }
        if pid == 0 {
            unsafe {
                libc::close(err_read.as_raw_fd());
                child_main(
                    &plan,
                    devnull.as_raw_fd(),
                    log.as_raw_fd(),
                    err_write.as_raw_fd(),
                )
            }
        }
        drop(err_write);
        let status = wait_for(pid)?;
        let mut report = [0u8; 8];
        let n = read_full(&err_read, &mut report);
        if n == report.len() {
            let step = u32::from_ne_bytes(report[..4].try_into().unwrap()) as usize;
            let errno = i32::from_ne_bytes(report[4..].try_into().unwrap());
            let error = std::io::Error::from_raw_os_error(errno);
            let step = STEPS.get(step).copied().unwrap_or("an unknown step");
            if step == STEPS[STEP_UNSHARE] && (errno == libc::EPERM || errno == libc::ENOSPC) {
                bail!(
                    "cannot create a user namespace for the build sandbox ({error}): this system \
                     forbids unprivileged user namespaces (on Ubuntu 23.10 and later: `sudo sysctl \
                     kernel.apparmor_restrict_unprivileged_userns=0`; elsewhere check \
                     user.max_user_namespaces), or run as root"
                );
            }
            if step == STEPS[STEP_PROC] {
                bail!(
                    "the build sandbox cannot mount a fresh /proc ({error}): the kernel refuses \
                     one where this system's /proc is partly hidden, as container runtimes mask \
                     it, and the host's /proc is never lent to a build; run where a procfs can be \
                     mounted (on the host, or in a container with an unmasked /proc: `docker run \
                     --security-opt systempaths=unconfined`, `podman run --security-opt \
                     unmask=ALL`)"
                );
            }
            bail!("the build sandbox could not {step}: {error}");
        }
        Ok(status)
    }

    fn prepare(&self, argv: &[&str]) -> Result<ChildPlan> {
        let root = self
            .root
            .canonicalize()
            .with_context(|| format!("the sandbox root {} is missing", self.root.display()))?;
        let handle = rustix::fs::open(
            &root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("the sandbox root {} is not a directory", root.display()))?;
        // Mount points the image may lack (a scratch-built root); the root
        // is the caller's own unpacked copy, so they are made there (a
        // cached tree has them already).
        for dir in ["proc", "dev"] {
            if image_dir(&handle, dir) == Err(Errno::NOENT) {
                match rustix::fs::mkdirat(&handle, dir, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("cannot create {}", root.join(dir).display()))
                    }
                }
            }
            if image_dir(&handle, dir).is_err() {
                bail!(
                    "the image's /{dir} is a symlink or not a directory, where the build sandbox \
                     mounts its own /{dir}: the image is malformed or hostile; use another image"
                );
            }
        }
        if argv.is_empty() || !argv[0].starts_with('/') {
            bail!("the sandbox needs an absolute program path, not {argv:?}");
        }
        // A tmpfs only on a real directory of the image; a symlinked /tmp
        // stays a symlink, resolved inside the root once it is the root.
        let tmpfs: Vec<&str> = TMPFS_DIRS
            .into_iter()
            .filter(|dir| self.overlay.is_none() || *dir == "run")
            .filter(|dir| image_dir(&handle, dir).is_ok())
            .collect();
        let mut binds = Vec::new();
        for bind in &self.binds {
            let inside = bind.inside.trim_start_matches('/');
            // Binds are made inside a tmpfs, never in the image root (or
            // its overlay, where they would count as changes).
            let allowed: &[&str] = if self.overlay.is_some() {
                &["run"]
            } else {
                &TMPFS_DIRS
            };
            let under_tmpfs = allowed
                .iter()
                .find(|d| inside.starts_with(&format!("{d}/")));
            let Some(tmpfs_dir) = under_tmpfs.filter(|_| {
                !inside
                    .split('/')
                    .any(|c| c == ".." || c == "." || c.is_empty())
            }) else {
                let list: Vec<String> = allowed.iter().map(|d| format!("/{d}")).collect();
                bail!(
                    "a sandbox bind must lie under {}: {}",
                    list.join(", "),
                    bind.inside
                );
            };
            if !tmpfs.contains(tmpfs_dir) {
                bail!(
                    "cannot bind {} at {} in the build sandbox: the image's /{tmpfs_dir} is a \
                     symlink or missing, so the sandbox has no tmpfs there; use an image with a \
                     /{tmpfs_dir} directory",
                    bind.host.display(),
                    bind.inside
                );
            }
            if let Some(outer) = self.binds.iter().find(|b| {
                bind.inside
                    .starts_with(&format!("{}/", b.inside.trim_end_matches('/')))
            }) {
                bail!(
                    "a sandbox bind may not lie inside another: {} is inside {}",
                    bind.inside,
                    outer.inside
                );
            }
            // Made component by component inside the tmpfs.
            let dirs = inside[tmpfs_dir.len() + 1..]
                .split('/')
                .map(CString::new)
                .collect::<Result<Vec<_>, _>>()
                .context("a sandbox bind holds a NUL byte")?;
            let host = bind
                .host
                .canonicalize()
                .with_context(|| format!("cannot bind {} into the sandbox", bind.host.display()))?;
            binds.push(ChildBind {
                host: cpath(&host)?,
                tmpfs: CString::new(*tmpfs_dir)?,
                dirs,
                inside: CString::new(inside)?,
                writable: bind.writable,
                locked: locked_flags(&host)?,
            });
        }
        let devices = DEVICES
            .iter()
            .map(|d| Ok((cpath(&Path::new("/dev").join(d))?, CString::new(*d)?)))
            .collect::<Result<Vec<_>>>()?;
        // A read-only remount must keep the flags the kernel locked on the
        // mount it was bound from, or it is refused.
        let locked = locked_flags(&root)?;
        let uid = unsafe { libc::getuid() };
        let gid = unsafe { libc::getgid() };
        let mut flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS;
        if !self.network {
            flags |= libc::CLONE_NEWNET;
        }
        let env = self
            .env
            .iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()
            .context("an environment variable holds a NUL byte")?;
        let args = argv
            .iter()
            .map(|a| CString::new(*a))
            .collect::<Result<Vec<_>, _>>()
            .context("an argument holds a NUL byte")?;
        let overlay = match &self.overlay {
            None => None,
            Some(o) => {
                let dirs = [&root, &o.upper.canonicalize()?, &o.work.canonicalize()?];
                if let Some(bad) = dirs
                    .iter()
                    .find(|d| d.to_str().is_none_or(|t| t.contains([',', ':', '\\'])))
                {
                    bail!(
                        "the overlay directory {} holds a comma, colon or backslash, which \
                         overlay mount options cannot carry: use a cache directory without them",
                        bad.display()
                    );
                }
                Some(CString::new(format!(
                    "lowerdir={},upperdir={},workdir={},userxattr",
                    dirs[0].display(),
                    dirs[1].display(),
                    dirs[2].display()
                ))?)
            }
        };
        let argv = pointers(&args);
        let envp = pointers(&env);
        Ok(ChildPlan {
            flags,
            uid_map: format!("0 {uid} 1\n").into_bytes(),
            gid_map: format!("0 {gid} 1\n").into_bytes(),
            inner_uid_map: format!("{} 0 1\n", self.user.0).into_bytes(),
            inner_gid_map: format!("{} 0 1\n", self.user.1).into_bytes(),
            overlay,
            dev_links: DEV_LINKS
                .iter()
                .map(|(name, target)| Ok((CString::new(*name)?, CString::new(*target)?)))
                .collect::<Result<Vec<_>>>()?,
            devices,
            tmpfs: tmpfs
                .into_iter()
                .map(CString::new)
                .collect::<Result<Vec<_>, _>>()?,
            binds,
            root: cpath(&root)?,
            locked,
            drop_capabilities: self.overlay.is_none(),
            workdir: CString::new(self.workdir.as_str())?,
            hostname: self.hostname.clone().into_bytes(),
            args,
            _env: env,
            argv,
            envp,
        })
    }
}

/// Whether `rel` is a directory of the image, reached without a symlink.
fn image_dir(root: &OwnedFd, rel: &str) -> std::result::Result<(), Errno> {
    rustix::fs::openat2(
        root,
        rel,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map(drop)
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} holds a NUL byte", path.display()))
}

/// A NULL-terminated array of pointers into `strings`, for execve. The
/// pointers stay valid while `strings` lives (a CString's bytes never move).
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot make a pipe");
    }
    // SAFETY: pipe2 just returned these two descriptors, owned by no one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        let r = unsafe { libc::read(fd.as_raw_fd(), buf[n..].as_mut_ptr().cast(), buf.len() - n) };
        if r <= 0 {
            if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        n += r as usize;
    }
    n
}

fn wait_for(pid: libc::pid_t) -> Result<Exit> {
    let mut status = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("waiting for the sandbox");
        }
    }
    Ok(if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(libc::WEXITSTATUS(status))
    })
}

fn locked_flags(root: &Path) -> Result<libc::c_ulong> {
    let path = cpath(root)?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot stat the file system of {}", root.display()));
    }
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    Ok(flags)
}

struct ChildBind {
    host: CString,
    /// The sandbox tmpfs it lies in (`tmp`, relative to the root).
    tmpfs: CString,
    /// Directories to create below that tmpfs, outermost first (the last
    /// is the mount point).
    dirs: Vec<CString>,
    /// The mount point relative to the root.
    inside: CString,
    writable: bool,
    locked: libc::c_ulong,
}

/// Everything the child needs, made before the fork.
struct ChildPlan {
    flags: libc::c_int,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    /// The mount-locking namespace's maps: the program's user to ours.
    inner_uid_map: Vec<u8>,
    inner_gid_map: Vec<u8>,
    root: CString,
    /// Overlay mount options, when the root is writable.
    overlay: Option<CString>,
    locked: libc::c_ulong,
    /// `/dev/fd` and friends: (name in /dev, target).
    dev_links: Vec<(CString, CString)>,
    /// (host node, name in /dev).
    devices: Vec<(CString, CString)>,
    /// Image directories (relative to the root) that get a tmpfs.
    tmpfs: Vec<CString>,
    binds: Vec<ChildBind>,
    /// Drop every capability before exec (a read-only root).
    drop_capabilities: bool,
    workdir: CString,
    hostname: Vec<u8>,
    args: Vec<CString>,
    /// Owns the strings `envp` points to.
    _env: Vec<CString>,
    /// NULL-terminated pointers into `args` and `env`.
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

/// The steps the child reports a failure of, by index.
const STEPS: [&str; 20] = [
    "redirect its output",
    "create its namespaces (unshare)",
    "write its uid and gid maps",
    "fork its first process",
    "make its mounts private",
    "mount the image root (bind or overlay)",
    "mount /proc",
    "mount /dev",
    "create a device node",
    "mount a tmpfs",
    "bind a host directory",
    "make the image root read-only",
    "switch to the image root (pivot_root)",
    "set its host name",
    "change to its working directory",
    "start the program (exec)",
    "find a mount point in the image without a symlink",
    "lock its mounts (a second user namespace)",
    "drop its capabilities",
    "set no_new_privs",
];
const STEP_UNSHARE: usize = 1;
const STEP_PROC: usize = 6;
const STEP_DEV: usize = 7;
const STEP_DEVICE: usize = 8;
const STEP_TMPFS: usize = 9;
const STEP_BIND: usize = 10;
const STEP_RESOLVE: usize = 16;
const STEP_LOCK: usize = 17;
const STEP_CAPS: usize = 18;
const STEP_NNP: usize = 19;

/// Reports `step` and errno on the error pipe and exits.
unsafe fn fail(report_fd: libc::c_int, step: usize) -> ! {
    let errno = *libc::__errno_location();
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    libc::write(report_fd, buf.as_ptr().cast(), buf.len());
    libc::_exit(127)
}

unsafe fn write_file(path: &[u8], bytes: &[u8]) -> bool {
    // `path` ends with a NUL (a literal below).
    let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return false;
    }
    let ok = libc::write(fd, bytes.as_ptr().cast(), bytes.len()) == bytes.len() as isize;
    libc::close(fd);
    ok
}

unsafe fn mount(
    source: *const libc::c_char,
    target: *const libc::c_char,
    fstype: *const libc::c_char,
    flags: libc::c_ulong,
    data: *const libc::c_char,
) -> bool {
    libc::mount(source, target, fstype, flags, data.cast()) == 0
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `path` below `dir` as an `O_PATH` handle, refusing symlinks on the
/// way and at the end, and anything that leaves `dir`: -1 on failure.
unsafe fn open_beneath(
    dir: libc::c_int,
    path: *const libc::c_char,
    directory: bool,
) -> libc::c_int {
    let mut flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if directory {
        flags |= libc::O_DIRECTORY;
    }
    let how = OpenHow {
        flags: flags as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    libc::syscall(
        libc::SYS_openat2,
        dir,
        path,
        &how as *const OpenHow,
        std::mem::size_of::<OpenHow>(),
    ) as libc::c_int
}

/// `/proc/self/fd/N`, NUL-terminated, naming what the handle `fd` names:
/// mounting on it mounts on that very directory, whatever its path.
struct FdPath([u8; 32]);

impl FdPath {
    fn new(fd: libc::c_int) -> FdPath {
        const PREFIX: &[u8] = b"/proc/self/fd/";
        let mut buf = [0u8; 32];
        buf[..PREFIX.len()].copy_from_slice(PREFIX);
        let mut digits = [0u8; 10];
        let mut n = fd.max(0) as u32;
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            buf[PREFIX.len() + i] = digits[len - 1 - i];
        }
        FdPath(buf)
    }

    fn as_ptr(&self) -> *const libc::c_char {
        self.0.as_ptr().cast()
    }
}

/// Mounts on the directory `rel` of the root (handle `root`), found without
/// following a symlink; reports `step` when the mount fails.
#[allow(clippy::too_many_arguments)]
unsafe fn mount_in(
    root: libc::c_int,
    rel: *const libc::c_char,
    source: *const libc::c_char,
    fstype: *const libc::c_char,
    flags: libc::c_ulong,
    data: *const libc::c_char,
    report: libc::c_int,
    step: usize,
) {
    let fd = open_beneath(root, rel, true);
    if fd < 0 {
        fail(report, STEP_RESOLVE);
    }
    if !mount(source, FdPath::new(fd).as_ptr(), fstype, flags, data) {
        fail(report, step);
    }
    libc::close(fd);
}

/// The capability sets of capset(2), version 3 (two words each).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// No capability left, now or after exec: the bounding and ambient sets
/// emptied, then the process's own sets.
unsafe fn drop_capabilities() -> bool {
    for cap in 0..64 {
        if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
            && *libc::__errno_location() != libc::EINVAL
        {
            return false;
        }
    }
    if libc::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL,
        0,
        0,
        0,
    ) != 0
    {
        return false;
    }
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) == 0
}

/// Closes every descriptor from `first` on: close_range(2) (Linux 5.9), or
/// one by one up to the descriptor limit where the kernel lacks it.
unsafe fn close_from(first: libc::c_int) {
    if libc::syscall(
        libc::SYS_close_range,
        first as libc::c_uint,
        libc::c_uint::MAX,
        0,
    ) == 0
    {
        return;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let end = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
        limit.rlim_cur.min(1 << 20) as libc::c_int
    } else {
        1024
    };
    for fd in first..end {
        libc::close(fd);
    }
}

/// The forked child: namespaces, then a second fork so the program is PID 1
/// of its own PID namespace, mounts, pivot_root, locks, exec.
unsafe fn child_main(plan: &ChildPlan, stdin: i32, log: i32, report: i32) -> ! {
    let null = std::ptr::null::<libc::c_char>();
    if libc::dup2(stdin, 0) < 0 || libc::dup2(log, 1) < 0 || libc::dup2(log, 2) < 0 {
        fail(report, 0);
    }
    // Nothing else of the parent is kept: the fork copied every descriptor
    // its other threads had open (a layer being written, a file being
    // copied), and this process lives as long as the program. The report
    // pipe moves to 3, still close-on-exec, and the rest is closed.
    let report = if report == 3 {
        report
    } else if libc::dup3(report, 3, libc::O_CLOEXEC) == 3 {
        3
    } else {
        fail(report, 0)
    };
    close_from(4);
    if libc::unshare(plan.flags) != 0 {
        fail(report, STEP_UNSHARE);
    }
    // Without "deny", an unprivileged process may not write its gid_map.
    let _ = write_file(b"/proc/self/setgroups\0", b"deny");
    if !write_file(b"/proc/self/uid_map\0", &plan.uid_map)
        || !write_file(b"/proc/self/gid_map\0", &plan.gid_map)
    {
        fail(report, 2);
    }
    let pid = libc::fork();
    if pid < 0 {
        fail(report, 3);
    }
    if pid > 0 {
        // Waits for the program (PID 1 inside) and passes its end on.
        libc::close(report);
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 {
            if *libc::__errno_location() != libc::EINTR {
                libc::_exit(126);
            }
        }
        if libc::WIFSIGNALED(status) {
            libc::kill(libc::getpid(), libc::WTERMSIG(status));
            libc::_exit(128 + libc::WTERMSIG(status));
        }
        libc::_exit(libc::WEXITSTATUS(status));
    }
    // PID 1 of the new PID namespace: the program runs here.
    if !mount(
        c"none".as_ptr(),
        c"/".as_ptr(),
        null,
        libc::MS_REC | libc::MS_PRIVATE,
        null,
    ) {
        fail(report, 4);
    }
    let root_mounted = match &plan.overlay {
        Some(options) => mount(
            c"overlay".as_ptr(),
            plan.root.as_ptr(),
            c"overlay".as_ptr(),
            0,
            options.as_ptr(),
        ),
        None => mount(
            plan.root.as_ptr(),
            plan.root.as_ptr(),
            null,
            libc::MS_BIND | libc::MS_REC,
            null,
        ),
    };
    if !root_mounted {
        fail(report, 5);
    }
    // The root as mounted now; every mount point below is found from it.
    let root = libc::open(
        plan.root.as_ptr(),
        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
    );
    if root < 0 {
        fail(report, 5);
    }
    // A fresh procfs or nothing: the host's /proc would show (and let the
    // program write through) every host process.
    mount_in(
        root,
        c"proc".as_ptr(),
        c"proc".as_ptr(),
        c"proc".as_ptr(),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        null,
        report,
        STEP_PROC,
    );
    mount_in(
        root,
        c"dev".as_ptr(),
        c"tmpfs".as_ptr(),
        c"tmpfs".as_ptr(),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        c"mode=0755".as_ptr(),
        report,
        STEP_DEV,
    );
    // Our fresh tmpfs from here on.
    let dev = open_beneath(root, c"dev".as_ptr(), true);
    if dev < 0 {
        fail(report, STEP_RESOLVE);
    }
    for (host, name) in &plan.devices {
        let fd = libc::openat(
            dev,
            name.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o644,
        );
        if fd < 0 {
            fail(report, STEP_DEVICE);
        }
        libc::close(fd);
        let node = open_beneath(dev, name.as_ptr(), false);
        if node < 0 {
            fail(report, STEP_RESOLVE);
        }
        if !mount(
            host.as_ptr(),
            FdPath::new(node).as_ptr(),
            null,
            libc::MS_BIND,
            null,
        ) {
            fail(report, STEP_DEVICE);
        }
        libc::close(node);
    }
    if libc::mkdirat(dev, c"shm".as_ptr(), 0o1777) != 0 {
        fail(report, STEP_DEV);
    }
    mount_in(
        dev,
        c"shm".as_ptr(),
        c"tmpfs".as_ptr(),
        c"tmpfs".as_ptr(),
        libc::MS_NOSUID | libc::MS_NODEV,
        c"mode=1777".as_ptr(),
        report,
        STEP_DEV,
    );
    for (name, target) in &plan.dev_links {
        if libc::symlinkat(target.as_ptr(), dev, name.as_ptr()) != 0 {
            fail(report, STEP_DEV);
        }
    }
    libc::close(dev);
    for dir in &plan.tmpfs {
        mount_in(
            root,
            dir.as_ptr(),
            c"tmpfs".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=1777".as_ptr(),
            report,
            STEP_TMPFS,
        );
    }
    for bind in &plan.binds {
        // Down from the tmpfs, one fresh directory at a time.
        let mut dir = open_beneath(root, bind.tmpfs.as_ptr(), true);
        if dir < 0 {
            fail(report, STEP_RESOLVE);
        }
        for name in &bind.dirs {
            if libc::mkdirat(dir, name.as_ptr(), 0o755) != 0
                && *libc::__errno_location() != libc::EEXIST
            {
                fail(report, STEP_BIND);
            }
            let next = open_beneath(dir, name.as_ptr(), true);
            if next < 0 {
                fail(report, STEP_RESOLVE);
            }
            libc::close(dir);
            dir = next;
        }
        if !mount(
            bind.host.as_ptr(),
            FdPath::new(dir).as_ptr(),
            null,
            libc::MS_BIND | libc::MS_REC,
            null,
        ) {
            fail(report, STEP_BIND);
        }
        libc::close(dir);
        if !bind.writable {
            mount_in(
                root,
                bind.inside.as_ptr(),
                null,
                null,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | bind.locked,
                null,
                report,
                STEP_BIND,
            );
        }
    }
    libc::close(root);
    if plan.overlay.is_none()
        && !mount(
            null,
            plan.root.as_ptr(),
            null,
            libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | plan.locked,
            null,
        )
    {
        fail(report, 11);
    }
    if libc::chdir(plan.root.as_ptr()) != 0
        || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
        || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
    {
        fail(report, 12);
    }
    if libc::sethostname(plan.hostname.as_ptr().cast(), plan.hostname.len()) != 0 {
        fail(report, 13);
    }
    // Locks the mounts: a user namespace that owns neither the mount
    // namespace nor its mounts, root (the same user) inside unless a
    // user was asked for.
    if libc::unshare(libc::CLONE_NEWUSER) != 0
        || !write_file(b"/proc/self/setgroups\0", b"deny")
        || !write_file(b"/proc/self/uid_map\0", &plan.inner_uid_map)
        || !write_file(b"/proc/self/gid_map\0", &plan.inner_gid_map)
    {
        fail(report, STEP_LOCK);
    }
    if libc::chdir(plan.workdir.as_ptr()) != 0 {
        fail(report, 14);
    }
    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
        fail(report, STEP_NNP);
    }
    if plan.drop_capabilities && !drop_capabilities() {
        fail(report, STEP_CAPS);
    }
    // ETXTBSY is transient: another thread of this process may have had
    // the program open for writing (an unpacked tree, a copied binary) when
    // some process was forked, and that fork's child holds the descriptor
    // until it closes it or execs, moments later. Retried, with growing
    // sleeps, for about two seconds, as cargo does for its build scripts.
    let mut pause_ms: i64 = 1;
    let mut waited_ms: i64 = 0;
    loop {
        libc::execve(
            plan.args[0].as_ptr(),
            plan.argv.as_ptr(),
            plan.envp.as_ptr(),
        );
        if *libc::__errno_location() != libc::ETXTBSY || waited_ms >= 2000 {
            break;
        }
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: pause_ms * 1_000_000,
        };
        libc::nanosleep(&pause, std::ptr::null_mut());
        waited_ms += pause_ms;
        pause_ms = (pause_ms * 2).min(100);
    }
    fail(report, 15)
}
