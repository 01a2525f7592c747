//! The build sandbox: locked mounts, no host /proc, no host directories created.
//!
//! A program in the sandbox acts as an sdist's `setup.py` would: it tries to
//! make the read-only root writable, to unmount or remount its binds, to
//! write into the root, and to read host processes. Images whose `/tmp`,
//! `/run`, `/var`, `/proc` or `/dev` are symlinks out of the root must not
//! lead a mount or a directory there. Cached trees altered from outside are
//! made again before a build uses them.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::unpack::{stored_layer, tree_state, Tar, World};
use crate::common::*;
use crate::sandbox::with_build_dirs;
use dallinger_oci::image::unpack;
use dallinger_oci::sandbox::{Bind, Exit, Overlay, Sandbox as Jail};

/// A busybox root made from the common fixture, in `dir`.
fn busybox_root(dir: &Path) -> PathBuf {
    busybox_rootfs(dir);
    let root = dir.join("busybox-root");
    for d in ["tmp", "etc", "run", "proc", "dev"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    root
}

fn run_script(jail: &Jail, script: &str, dir: &Path) -> (anyhow::Result<Exit>, String) {
    let log_path = dir.join("log");
    let log = File::create(&log_path).unwrap();
    let exit = jail.run(&["/bin/busybox", "sh", "-c", script], &log);
    (exit, fs::read_to_string(&log_path).unwrap())
}

/// Every way back to a writable root or bind fails; nothing is written.
const UNLOCK: &str = "exec 2>/dev/null
b=/bin/busybox
$b mount -o remount,bind,rw / 2>/dev/null && echo remounted-root
$b mount -o remount,rw / 2>/dev/null && echo remounted-root-superblock
echo x > /pwned 2>/dev/null && echo wrote-root
$b umount /tmp/build/in 2>/dev/null && echo unmounted-in
$b umount -l /tmp/build/in 2>/dev/null && echo detached-in
$b mount -o remount,bind,rw /tmp/build/in 2>/dev/null && echo remounted-in
echo x > /tmp/build/in/pwned 2>/dev/null && echo wrote-in
$b umount -l /proc 2>/dev/null && echo detached-proc
$b unshare -Urm $b sh -c \"$b mount -o remount,bind,rw / && echo x > /pwned\" 2>/dev/null \
  && echo remounted-in-a-new-namespace
$b grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs)' /proc/self/status
echo done
";

#[test]
fn a_read_only_root_and_its_binds_cannot_be_unlocked() {
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_root(dir.path());
    let (jail, in_dir, _out_dir) = with_build_dirs(Jail::new(&root), dir.path());
    fs::write(in_dir.join("sdist.tar.gz"), "input").unwrap();
    let (root_before, in_before) = (tree_state(&root), tree_state(&in_dir));
    let (exit, out) = run_script(&jail, UNLOCK, dir.path());
    assert_eq!(exit.unwrap(), Exit::Code(0), "{out}");
    assert_eq!(
        out,
        "CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
         CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\ndone\n"
    );
    assert_eq!(tree_state(&root), root_before);
    assert_eq!(tree_state(&in_dir), in_before);
}

/// A prepare script's overlay root: root inside as in a Dockerfile's RUN
/// (it writes a read-only file, chmods), its changes in the upper
/// directory, the mounts locked all the same.
#[test]
fn an_overlay_root_is_writable_as_root_but_its_mounts_are_locked() {
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_root(dir.path());
    fs::write(root.join("etc/read-only"), "old\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        root.join("etc/read-only"),
        fs::Permissions::from_mode(0o444),
    )
    .unwrap();
    let upper = dir.path().join("upper");
    let work = dir.path().join("work");
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    let root_before = tree_state(&root);
    let jail = Jail::new(&root).overlay(Overlay {
        upper: upper.clone(),
        work,
    });
    let script = "exec 2>/dev/null
b=/bin/busybox
$b mount -o remount,ro / 2>/dev/null && echo remounted-root
$b umount -l /run 2>/dev/null && echo detached-run
$b umount -l /proc 2>/dev/null && echo detached-proc
echo new > /etc/read-only && $b chmod 600 /etc/read-only && echo wrote-as-root
$b grep NoNewPrivs /proc/self/status
";
    let (exit, out) = run_script(&jail, script, dir.path());
    assert_eq!(exit.unwrap(), Exit::Code(0), "{out}");
    assert_eq!(out, "wrote-as-root\nNoNewPrivs:\t1\n");
    assert_eq!(
        fs::read_to_string(upper.join("etc/read-only")).unwrap(),
        "new\n"
    );
    assert_eq!(tree_state(&root), root_before);
}

#[test]
fn symlinked_mount_points_in_the_image_lead_nowhere_outside() {
    let world = World::new();
    let canary = world.canary_text();
    let roots = tempfile::tempdir().unwrap();
    let before = world.outside();
    let image = |name: &str, links: &[&str]| {
        let dir = roots.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        let root = busybox_root(&dir);
        for link in links {
            let path = root.join(link);
            let _ = fs::remove_dir(&path);
            std::os::unix::fs::symlink(&canary, &path).unwrap();
        }
        root
    };
    let bind = |inside: &str| Bind {
        host: roots.path().to_path_buf(),
        inside: inside.into(),
        writable: true,
    };
    let cases: Vec<(Jail, String)> = vec![
        (
            Jail::new(&image("tmp", &["tmp"])).bind(bind("/tmp/build/out")),
            format!(
                "cannot bind {} at /tmp/build/out in the build sandbox: the image's /tmp is a \
                 symlink or missing, so the sandbox has no tmpfs there; use an image with a /tmp \
                 directory",
                roots.path().display()
            ),
        ),
        (
            Jail::new(&image("var", &["var"])).bind(bind("/var/tmp/x")),
            format!(
                "cannot bind {} at /var/tmp/x in the build sandbox: the image's /var/tmp is a \
                 symlink or missing, so the sandbox has no tmpfs there; use an image with a \
                 /var/tmp directory",
                roots.path().display()
            ),
        ),
        (
            {
                let (upper, work) = (roots.path().join("upper"), roots.path().join("work"));
                fs::create_dir_all(&upper).unwrap();
                fs::create_dir_all(&work).unwrap();
                Jail::new(&image("run", &["run"]))
                    .overlay(Overlay { upper, work })
                    .bind(bind("/run/x"))
            },
            format!(
                "cannot bind {} at /run/x in the build sandbox: the image's /run is a symlink or \
                 missing, so the sandbox has no tmpfs there; use an image with a /run directory",
                roots.path().display()
            ),
        ),
        (
            Jail::new(&image("proc", &["proc"])),
            "the image's /proc is a symlink or not a directory, where the build sandbox mounts \
             its own /proc: the image is malformed or hostile; use another image"
                .into(),
        ),
        (
            Jail::new(&image("dev", &["dev"])),
            "the image's /dev is a symlink or not a directory, where the build sandbox mounts \
             its own /dev: the image is malformed or hostile; use another image"
                .into(),
        ),
    ];
    for (jail, expected) in cases {
        let (exit, out) = run_script(&jail, "echo ran", roots.path());
        match exit {
            Ok(exit) => panic!("ran ({exit}): {out}; expected: {expected}"),
            Err(e) => assert_eq!(e.to_string(), expected),
        }
        assert_eq!(world.outside(), before, "{expected}");
    }
    // Without a bind there, a symlinked /tmp is only a symlink, resolved in
    // the sandbox's own root: writing through it fails, outside is untouched.
    let jail = Jail::new(&image("tmp-only", &["tmp"]));
    let (exit, out) = run_script(
        &jail,
        "exec 2>/dev/null; echo x > /tmp/pwned && echo wrote; echo ran",
        roots.path(),
    );
    assert_eq!((exit.unwrap(), out.as_str()), (Exit::Code(0), "ran\n"));
    assert_eq!(world.outside(), before);
}

/// A secret in the environment of the process that runs the sandbox.
const TOKEN: &str = "hostile-test-token-4b1d";

/// Under a /proc that is partly covered (as container runtimes mask it) the
/// kernel refuses the sandbox a fresh procfs: the sandbox must refuse to run
/// rather than show the program the host's /proc (this process's
/// environment, its cwd to write through). The covered /proc is made with
/// `unshare -m` and a tmpfs over /proc/sys, for the helper below only.
#[test]
fn the_hosts_proc_is_never_lent_to_the_program() {
    let unshare = require_tool("unshare");
    let out = run(Command::new(unshare)
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /proc/sys && exec \"$0\" \"$@\"")
        .arg(std::env::current_exe().unwrap())
        .arg("--exact")
        .arg(test_name(module_path!(), "with_a_covered_proc"))
        .args(["--ignored", "--nocapture"])
        .env("DALLINGER_OCI_TEST_TOKEN", TOKEN));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "run by the_hosts_proc_is_never_lent_to_the_program, under a covered /proc"]
fn with_a_covered_proc() {
    assert_eq!(std::env::var("DALLINGER_OCI_TEST_TOKEN").unwrap(), TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_root(dir.path());
    let (exit, out) = run_script(
        &Jail::new(&root),
        "/bin/busybox cat /proc/*/environ | /bin/busybox tr '\\0' '\\n' | /bin/busybox grep -c hostile-test-token",
        dir.path(),
    );
    match exit {
        Ok(exit) => panic!("the program ran ({exit}) and found the token {out} times"),
        Err(e) => assert_eq!(
            e.to_string(),
            "the build sandbox cannot mount a fresh /proc (Operation not permitted (os error 1)): \
             the kernel refuses one where this system's /proc is partly hidden, as container \
             runtimes mask it, and the host's /proc is never lent to a build; run where a procfs \
             can be mounted (on the host, or in a container with an unmasked /proc: `docker run \
             --security-opt systempaths=unconfined`, `podman run --security-opt unmask=ALL`)"
        ),
    }
    assert_eq!(out, "");
}

/// The layers of the cached-tree tests: busybox and a config file.
pub fn config_layers(
    store: &dallinger_oci::image::store::BlobStore,
) -> Vec<dallinger_oci::image::ImageLayer> {
    vec![
        stored_layer(store, &Tar::new().busybox().bytes()),
        stored_layer(store, &Tar::new().file("etc/config", "original").bytes()),
    ]
}

/// A cached tree altered from outside (the same size and mtime, so only its
/// ctime tells) is made again before a build uses it.
#[test]
fn an_altered_cached_tree_is_made_again_before_it_is_used() {
    let world = World::new();
    let store = world.store();
    let layers = config_layers(&store);
    let dir = unpack::cached_rootfs(&store, &layers)
        .unwrap()
        .to_path_buf();
    let config = dir.join("etc/config");
    let mtime = fs::metadata(&config).unwrap().modified().unwrap();
    fs::write(&config, "tampered").unwrap();
    File::options()
        .write(true)
        .open(&config)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    fs::write(dir.join("bin/added"), "added").unwrap();
    let again = unpack::cached_rootfs(&store, &layers).unwrap();
    assert_eq!(&*again, dir.as_path());
    assert_eq!(
        fs::read_to_string(again.join("etc/config")).unwrap(),
        "original"
    );
    assert!(!again.join("bin/added").exists());
    // And a program in the sandbox cannot alter it in the first place.
    let jail = Jail::new(&again);
    let log = File::create(world.dir.path().join("cache/log")).unwrap();
    let exit = jail
        .run(
            &[
                "/bin/busybox",
                "sh",
                "-c",
                "/bin/busybox mount -o remount,bind,rw / ; echo x > /etc/config",
            ],
            &log,
        )
        .unwrap();
    assert_ne!(exit, Exit::Code(0));
    let before = tree_state(&again);
    drop(again);
    let third = unpack::cached_rootfs(&store, &layers).unwrap();
    assert_eq!(tree_state(&third), before);
}

/// Two builds on one cache: while one uses a tree, another that finds it
/// altered waits, and makes it again only once the first is done with it.
#[test]
fn a_tree_in_use_is_never_replaced_under_its_user() {
    use std::io::BufRead;
    let world = World::new();
    let store = world.store();
    let layers = config_layers(&store);
    let held = unpack::cached_rootfs(&store, &layers).unwrap();
    fs::write(held.join("etc/config"), "altered").unwrap();
    let mut other = Command::new(std::env::current_exe().unwrap())
        .arg("--exact")
        .arg(test_name(module_path!(), "another_build"))
        .args(["--ignored", "--nocapture"])
        .env("DALLINGER_OCI_TEST_STORE", world.dir.path().join("cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(other.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    // Until the other build says it waits (or ends: then it did not wait).
    while stderr.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.starts_with("Waiting for other builds to finish with the unpacked image") {
            break;
        }
        line.clear();
    }
    assert!(
        line.starts_with("Waiting for other builds to finish with the unpacked image"),
        "{seen}"
    );
    // The tree is still the one this build holds.
    assert_eq!(
        fs::read_to_string(held.join("etc/config")).unwrap(),
        "altered"
    );
    drop(held);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let out = other.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{seen}{rest}"
    );
}

#[test]
#[ignore = "run by a_tree_in_use_is_never_replaced_under_its_user"]
fn another_build() {
    let cache = std::env::var_os("DALLINGER_OCI_TEST_STORE").unwrap();
    let store = dallinger_oci::image::store::BlobStore::open(Path::new(&cache)).unwrap();
    let tree = unpack::cached_rootfs(&store, &config_layers(&store)).unwrap();
    assert_eq!(
        fs::read_to_string(tree.join("etc/config")).unwrap(),
        "original"
    );
}
