//! The build sandbox: a user namespace, a read-only image root, tmpfs for
//! scratch, no network, PID 1, binds, exit codes and setup errors.

use crate::common;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use common::*;
use dallinger_oci::sandbox::{Bind, Exit, Sandbox};

fn busybox_root(dir: &Path) -> std::path::PathBuf {
    busybox_rootfs(dir);
    let root = dir.join("busybox-root");
    fs::create_dir_all(root.join("tmp")).unwrap();
    root
}

fn run_script(sandbox: &Sandbox, script: &str, dir: &Path) -> (Exit, String) {
    let log_path = dir.join("log");
    let log = File::create(&log_path).unwrap();
    let exit = sandbox
        .run(&["/bin/busybox", "sh", "-c", script], &log)
        .unwrap();
    (exit, fs::read_to_string(&log_path).unwrap())
}

#[test]
fn runs_as_root_of_its_own_namespaces_on_a_read_only_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_root(dir.path());
    let sandbox = Sandbox::new(&root)
        .env("PATH", "/bin")
        .env("GREETING", "it's $HOME \"quoted\"")
        .workdir("/tmp");
    let (exit, out) = run_script(
        &sandbox,
        "busybox id -u; busybox id -g; echo pid $$; busybox hostname; pwd; \
         echo \"$GREETING\"; echo ${HOME:-no home}; \
         echo scratch > /tmp/x && cat /tmp/x; \
         busybox touch /bin/new 2>/dev/null && echo root-writable || echo root-read-only; \
         busybox ls /dev | busybox tr '\\n' ' '; echo; \
         busybox cat /proc/net/dev | busybox tail -n +3 | busybox cut -d: -f1 | busybox tr -d ' '; \
         busybox ls / | busybox tr '\\n' ' '",
        dir.path(),
    );
    assert_eq!(exit, Exit::Code(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "0",
            "0",
            "pid 1",
            "dallinger-oci",
            "/tmp",
            "it's $HOME \"quoted\"",
            "no home",
            "scratch",
            "root-read-only",
            "fd full null random shm stderr stdin stdout tty urandom zero ",
            "lo",
            "bin dev proc tmp ",
        ],
        "{out}"
    );
    // The scratch write stayed in the tmpfs, the root is untouched.
    assert!(!root.join("tmp/x").exists() && !root.join("bin/new").exists());
}

#[test]
fn binds_exit_codes_and_network_choice() {
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_root(dir.path());
    let (sandbox, in_dir, out_dir) = with_build_dirs(Sandbox::new(&root), dir.path());
    fs::write(in_dir.join("input.txt"), "from the host\n").unwrap();
    let (exit, out) = run_script(
        &sandbox,
        "cat /tmp/build/in/input.txt > /tmp/build/out/copy.txt; \
         echo x > /tmp/build/in/no 2>/dev/null && echo in-writable; exit 3",
        dir.path(),
    );
    assert_eq!(exit, Exit::Code(3), "{out}");
    assert!(!out.contains("in-writable"), "{out}");
    assert!(!in_dir.join("no").exists());
    assert_eq!(
        fs::read_to_string(out_dir.join("copy.txt")).unwrap(),
        "from the host\n"
    );

    // With the network on, the host's interfaces are there: every one the
    // host has before and after, and no other (podman tests beside this one
    // add and remove interfaces meanwhile).
    let before = interfaces(&fs::read_to_string("/proc/net/dev").unwrap());
    let (_, out) = run_script(
        &Sandbox::new(&root).network(true),
        "busybox cat /proc/net/dev",
        dir.path(),
    );
    let after = interfaces(&fs::read_to_string("/proc/net/dev").unwrap());
    let inside = interfaces(&out);
    let stable: BTreeSet<&String> = before.intersection(&after).collect();
    assert!(
        stable.iter().all(|i| inside.contains(*i))
            && inside
                .iter()
                .all(|i| before.contains(i) || after.contains(i)),
        "inside: {inside:?}, host before: {before:?}, after: {after:?}"
    );
}

/// The interface names of a `/proc/net/dev`.
fn interfaces(proc_net_dev: &str) -> BTreeSet<String> {
    proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .collect()
}

#[test]
fn setup_errors_name_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_root(dir.path());
    let log = File::create(dir.path().join("log")).unwrap();
    let err = Sandbox::new(&root)
        .run(&["/bin/no-such-program"], &log)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the build sandbox could not start the program (exec): No such file or directory (os error 2)"
    );
    let err = Sandbox::new(&root)
        .bind(Bind {
            host: dir.path().to_path_buf(),
            inside: "/etc/passwd".into(),
            writable: false,
        })
        .run(&["/bin/busybox", "true"], &log)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "a sandbox bind must lie under /tmp, /var/tmp, /root, /run: /etc/passwd"
    );
}

/// The same sandbox for a user without any privilege (uid 65534): the test
/// binary runs the read-only and the overlay tests again as that user.
#[test]
fn works_for_an_unprivileged_user() {
    let setpriv = require_tool("setpriv");
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let exe = dir.path().join("sandbox-test");
    fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&scratch, Some(65534), Some(65534)).unwrap();
    // setpriv execs the copy, which another test thread's fork may still
    // hold open for writing for a moment (ETXTBSY): retried.
    let unprivileged = || {
        run(std::process::Command::new(&setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe)
            .arg("--exact")
            .args(
                [
                    "runs_as_root_of_its_own_namespaces_on_a_read_only_root",
                    "an_overlay_root_records_changes_in_its_upper_directory",
                ]
                .map(|test| test_name(module_path!(), test)),
            )
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("HOME", &scratch)
            .env("TMPDIR", &scratch))
    };
    let mut out = unprivileged();
    for _ in 0..20 {
        if !String::from_utf8_lossy(&out.stderr).contains("Text file busy") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        out = unprivileged();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("2 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sandbox keeps nothing its parent had open: a program this process
/// was still writing when a sandbox started can be run once it is closed,
/// while the sandboxed program still runs (no ETXTBSY from a descriptor
/// the sandbox's waiting process inherited).
#[test]
fn a_running_sandbox_holds_no_file_of_its_parent_open() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_root(dir.path());
    let exe = dir.path().join("copied-true");
    let mut writing = File::create(&exe).unwrap();
    writing
        .write_all(&fs::read(require_tool("true")).unwrap())
        .unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let log_path = dir.path().join("log");
    let log = File::create(&log_path).unwrap();
    let sandbox = std::thread::spawn(move || {
        Sandbox::new(&root)
            .env("PATH", "/bin")
            .run(
                &["/bin/busybox", "sh", "-c", "echo started; busybox sleep 4"],
                &log,
            )
            .unwrap()
    });
    for _ in 0..500 {
        if fs::read_to_string(&log_path).unwrap().contains("started") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(fs::read_to_string(&log_path).unwrap().contains("started"));
    drop(writing);
    // Other test threads' forks may hold it for a moment: up to a second,
    // well inside the program's four.
    let mut result = std::process::Command::new(&exe).status();
    for _ in 0..50 {
        match &result {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                result = std::process::Command::new(&exe).status();
            }
            _ => break,
        }
    }
    assert!(result.unwrap().success());
    assert!(
        !sandbox.is_finished(),
        "the check ran after the program ended"
    );
    assert_eq!(sandbox.join().unwrap(), Exit::Code(0));
}

/// With an overlay the root is writable and every change lands in the upper
/// directory: additions as files, deletions as 0/0 character devices, a
/// replaced directory marked opaque; the image root is untouched.
#[test]
fn an_overlay_root_records_changes_in_its_upper_directory() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_root(dir.path());
    fs::create_dir_all(root.join("etc/old")).unwrap();
    fs::write(root.join("etc/old/a"), "a").unwrap();
    fs::write(root.join("etc/gone"), "gone").unwrap();
    let upper = dir.path().join("upper");
    let work = dir.path().join("work");
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    let sandbox = Sandbox::new(&root)
        .overlay(dallinger_oci::sandbox::Overlay {
            upper: upper.clone(),
            work,
        })
        .env("PATH", "/bin");
    let (exit, out) = run_script(
        &sandbox,
        "echo new > /etc/new && busybox rm /etc/gone && busybox rm -r /etc/old && \
         busybox mkdir /etc/old && echo b > /etc/old/b && echo kept > /tmp/t && busybox ls /etc/old",
        dir.path(),
    );
    assert_eq!(exit, Exit::Code(0), "{out}");
    assert_eq!(out, "b\n");
    assert_eq!(fs::read_to_string(upper.join("etc/new")).unwrap(), "new\n");
    assert_eq!(fs::read_to_string(upper.join("tmp/t")).unwrap(), "kept\n");
    let gone = fs::symlink_metadata(upper.join("etc/gone")).unwrap();
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    let opaque = xattr_value(&upper.join("etc/old"), "user.overlay.opaque");
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    // The image root is as it was.
    assert!(root.join("etc/gone").is_file() && root.join("etc/old/a").is_file());
    assert!(!root.join("etc/new").exists());
}

fn xattr_value(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

/// `DIR/in` bound read-only at `/tmp/build/in` and `DIR/out` writable at
/// `/tmp/build/out`, as an sdist build has them; returns the two host dirs.
pub(crate) fn with_build_dirs(sandbox: Sandbox, dir: &Path) -> (Sandbox, PathBuf, PathBuf) {
    let (in_dir, out_dir) = (dir.join("in"), dir.join("out"));
    fs::create_dir_all(&in_dir).unwrap();
    fs::create_dir_all(&out_dir).unwrap();
    let sandbox = sandbox
        .bind(Bind {
            host: in_dir.clone(),
            inside: "/tmp/build/in".into(),
            writable: false,
        })
        .bind(Bind {
            host: out_dir.clone(),
            inside: "/tmp/build/out".into(),
            writable: true,
        });
    (sandbox, in_dir, out_dir)
}
