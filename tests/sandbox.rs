//! The build sandbox: a user namespace, a read-only image root, tmpfs for
//! scratch, no network, PID 1, binds, exit codes and setup errors.

mod common;

use std::fs::{self, File};
use std::path::Path;

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
            "full null random tty urandom zero ",
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
    let out_dir = dir.path().join("out");
    let in_dir = dir.path().join("in");
    fs::create_dir_all(&out_dir).unwrap();
    fs::create_dir_all(&in_dir).unwrap();
    fs::write(in_dir.join("input.txt"), "from the host\n").unwrap();
    let sandbox = Sandbox::new(&root)
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

    // With the network on, the host's interfaces are there.
    let (_, out) = run_script(
        &Sandbox::new(&root).network(true),
        "busybox cat /proc/net/dev | busybox tail -n +3 | busybox wc -l",
        dir.path(),
    );
    let host_interfaces = fs::read_to_string("/proc/net/dev").unwrap().lines().count() - 2;
    assert_eq!(out.trim(), host_interfaces.to_string());
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
        "a sandbox bind must lie under /tmp, /var/tmp, /root or /run: /etc/passwd"
    );
}

/// The same sandbox for a user without any privilege (uid 65534): the test
/// binary runs the first test again as that user.
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
    let out = run(std::process::Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args([
            "--exact",
            "runs_as_root_of_its_own_namespaces_on_a_read_only_root",
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("HOME", &scratch)
        .env("TMPDIR", &scratch));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
