//! Runs a program inside an unpacked image root without a daemon and without
//! privileges: a new user namespace (the caller is root inside, and only
//! there), new mount, PID, IPC and UTS namespaces, no network unless asked,
//! and the root switched with `pivot_root`. The image root is mounted
//! read-only; `/tmp`, `/var/tmp`, `/root` and `/run` are fresh tmpfs, `/dev`
//! holds only the harmless nodes, and chosen host directories are bound in.
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

/// A host directory made visible inside the sandbox.
#[derive(Debug, Clone)]
pub struct Bind {
    pub host: PathBuf,
    /// Absolute path inside; must lie under one of the sandbox's tmpfs
    /// mounts (`/tmp`, `/var/tmp`, `/root`, `/run`), which is where it is
    /// created.
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
            bail!("the build sandbox could not {step}: {error}");
        }
        Ok(status)
    }

    fn prepare(&self, argv: &[&str]) -> Result<ChildPlan> {
        let root = self
            .root
            .canonicalize()
            .with_context(|| format!("the sandbox root {} is missing", self.root.display()))?;
        let under = |rel: &str| cpath(&root.join(rel.trim_start_matches('/')));
        // Mount points the image may lack (a scratch-built root); the root
        // is the caller's own unpacked copy, so they are made there.
        for dir in ["proc", "dev"] {
            let path = root.join(dir);
            if !path.is_dir() {
                std::fs::create_dir_all(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
            }
        }
        if argv.is_empty() || !argv[0].starts_with('/') {
            bail!("the sandbox needs an absolute program path, not {argv:?}");
        }
        let mut tmpfs = Vec::new();
        for dir in TMPFS_DIRS {
            if self.overlay.is_some() && dir != "run" {
                continue;
            }
            if root.join(dir).is_dir() && !root.join(dir).is_symlink() {
                tmpfs.push(under(dir)?);
            }
        }
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
            if !allowed.iter().any(|d| inside.starts_with(&format!("{d}/")))
                || inside
                    .split('/')
                    .any(|c| c == ".." || c == "." || c.is_empty())
            {
                let list: Vec<String> = allowed.iter().map(|d| format!("/{d}")).collect();
                bail!(
                    "a sandbox bind must lie under {}: {}",
                    list.join(", "),
                    bind.inside
                );
            }
            // Created component by component inside the tmpfs.
            let mut dirs = Vec::new();
            let mut partial = String::new();
            for (i, component) in inside.split('/').enumerate() {
                if i > 0 {
                    partial.push('/');
                }
                partial.push_str(component);
                if i > 0 {
                    dirs.push(under(&partial)?);
                }
            }
            let host = bind
                .host
                .canonicalize()
                .with_context(|| format!("cannot bind {} into the sandbox", bind.host.display()))?;
            binds.push(ChildBind {
                host: cpath(&host)?,
                dirs,
                target: under(inside)?,
                writable: bind.writable,
                locked: locked_flags(&host)?,
            });
        }
        let devices = DEVICES
            .iter()
            .map(|d| {
                Ok((
                    cpath(&Path::new("/dev").join(d))?,
                    under(&format!("dev/{d}"))?,
                ))
            })
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
            overlay,
            shm_target: under("dev/shm")?,
            dev_links: DEV_LINKS
                .iter()
                .map(|(name, target)| Ok((under(&format!("dev/{name}"))?, CString::new(*target)?)))
                .collect::<Result<Vec<_>>>()?,
            proc_target: under("proc")?,
            dev_target: under("dev")?,
            devices,
            tmpfs,
            binds,
            root: cpath(&root)?,
            locked,
            workdir: CString::new(self.workdir.as_str())?,
            hostname: self.hostname.clone().into_bytes(),
            args,
            _env: env,
            argv,
            envp,
        })
    }
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
    /// Directories to create, outermost first (the last is the target).
    dirs: Vec<CString>,
    target: CString,
    writable: bool,
    locked: libc::c_ulong,
}

/// Everything the child needs, made before the fork.
struct ChildPlan {
    flags: libc::c_int,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    root: CString,
    /// Overlay mount options, when the root is writable.
    overlay: Option<CString>,
    locked: libc::c_ulong,
    proc_target: CString,
    dev_target: CString,
    /// `/dev/shm`, a tmpfs (POSIX semaphores, multiprocessing).
    shm_target: CString,
    /// `/dev/fd` and friends: (link, target).
    dev_links: Vec<(CString, CString)>,
    devices: Vec<(CString, CString)>,
    tmpfs: Vec<CString>,
    binds: Vec<ChildBind>,
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
const STEPS: [&str; 16] = [
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
];
const STEP_UNSHARE: usize = 1;

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

/// The forked child: namespaces, then a second fork so the program is PID 1
/// of its own PID namespace, mounts, pivot_root, exec.
unsafe fn child_main(plan: &ChildPlan, stdin: i32, log: i32, report: i32) -> ! {
    let null = std::ptr::null::<libc::c_char>();
    if libc::dup2(stdin, 0) < 0 || libc::dup2(log, 1) < 0 || libc::dup2(log, 2) < 0 {
        fail(report, 0);
    }
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
    if !mount(
        c"proc".as_ptr(),
        plan.proc_target.as_ptr(),
        c"proc".as_ptr(),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        null,
    ) {
        // Where a fresh procfs is refused (a masked /proc in a container),
        // the host's is bound instead.
        if !mount(
            c"/proc".as_ptr(),
            plan.proc_target.as_ptr(),
            null,
            libc::MS_BIND | libc::MS_REC,
            null,
        ) {
            fail(report, 6);
        }
    }
    if !mount(
        c"tmpfs".as_ptr(),
        plan.dev_target.as_ptr(),
        c"tmpfs".as_ptr(),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        c"mode=0755".as_ptr(),
    ) {
        fail(report, 7);
    }
    for (host, target) in &plan.devices {
        let fd = libc::open(
            target.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644,
        );
        if fd < 0 {
            fail(report, 8);
        }
        libc::close(fd);
        if !mount(host.as_ptr(), target.as_ptr(), null, libc::MS_BIND, null) {
            fail(report, 8);
        }
    }
    if libc::mkdir(plan.shm_target.as_ptr(), 0o1777) != 0
        || !mount(
            c"tmpfs".as_ptr(),
            plan.shm_target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=1777".as_ptr(),
        )
    {
        fail(report, 7);
    }
    for (link, target) in &plan.dev_links {
        if libc::symlink(target.as_ptr(), link.as_ptr()) != 0 {
            fail(report, 7);
        }
    }
    for dir in &plan.tmpfs {
        if !mount(
            c"tmpfs".as_ptr(),
            dir.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=1777".as_ptr(),
        ) {
            fail(report, 9);
        }
    }
    for bind in &plan.binds {
        for dir in &bind.dirs {
            if libc::mkdir(dir.as_ptr(), 0o755) != 0 && *libc::__errno_location() != libc::EEXIST {
                fail(report, 10);
            }
        }
        if !mount(
            bind.host.as_ptr(),
            bind.target.as_ptr(),
            null,
            libc::MS_BIND | libc::MS_REC,
            null,
        ) {
            fail(report, 10);
        }
        if !bind.writable
            && !mount(
                null,
                bind.target.as_ptr(),
                null,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | bind.locked,
                null,
            )
        {
            fail(report, 10);
        }
    }
    if plan.overlay.is_none()
        && !mount(
            null,
            plan.root.as_ptr(),
            null,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | plan.locked,
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
    if libc::chdir(plan.workdir.as_ptr()) != 0 {
        fail(report, 14);
    }
    libc::execve(
        plan.args[0].as_ptr(),
        plan.argv.as_ptr(),
        plan.envp.as_ptr(),
    );
    fail(report, 15)
}
