//! Python dependencies installed natively: real wheels from PyPI on a
//! bookworm base made by mmdebstrap, run with podman.

use crate::common;

use std::fs;
use std::path::Path;
use std::process::Output;

use common::*;

fn experiment(sandbox: &Sandbox, dir: &str, constraints: &str) -> std::path::PathBuf {
    let exp = sandbox.experiment("golden", dir);
    fs::write(exp.join("requirements.txt"), "flask\n").unwrap();
    fs::write(exp.join("constraints.txt"), constraints).unwrap();
    exp
}

/// A build with the Python layers (the sandbox turns them off by default).
fn build(sandbox: &Sandbox, exp: &Path, extra: &[&str]) -> Output {
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg("build")
        .arg(exp)
        .args(["--base", &python_base_layout()])
        .args(extra);
    run(&mut cmd)
}

fn build_ok(sandbox: &Sandbox, exp: &Path, extra: &[&str]) -> String {
    let out = build(sandbox, exp, extra);
    assert!(
        out.status.success(),
        "build failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    printed_digest(&String::from_utf8_lossy(&out.stdout))
}

/// A failing build's one-line error.
fn build_err(sandbox: &Sandbox, exp: &Path, extra: &[&str]) -> String {
    one_line_error(&build(sandbox, exp, extra))
}

#[test]
fn wheels_are_installed_and_run_in_the_image() {
    require_tool("podman");
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, "flaskapp", FLASK_CLOSURE);
    let archive = sandbox.path("image.tar");
    build_ok(
        &sandbox,
        &exp,
        &[
            "--tag",
            "py",
            "--output",
            &format!("docker-archive:{}", archive.display()),
            "--output",
            "oci:layout",
        ],
    );
    let (_, manifest, config) = layout_image(&sandbox.path("layout"));
    // base, dependencies, experiment code
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 3);
    let history = created_by(&config);
    assert!(
        history
            .iter()
            .any(|h| h.contains("Python dependencies (7 wheels)")),
        "{history:?}"
    );

    let image = PodmanImage::load(&archive, "registry.example.test/dallinger-oci/golden:py");
    let out = ok(image.podman().args([
        "run", "--rm", "--network", "none", &image.name, "sh", "-c",
        "python3 -c 'import flask, markupsafe._speedups; print(flask.__version__)' && flask --version | head -1 \
         && head -1 /usr/local/bin/flask && cat /usr/local/lib/python3.11/dist-packages/flask-3.0.3.dist-info/INSTALLER \
         && ls /usr/local/lib/python3.11/dist-packages/flask-3.0.3.dist-info/REQUESTED \
         && ! ls /usr/local/lib/python3.11/dist-packages/jinja2-3.1.4.dist-info/REQUESTED 2>/dev/null",
    ]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "3.0.3", "{out}");
    assert!(lines[1].starts_with("Python 3.11.2"), "{out}");
    assert_eq!(lines[2], "#!/usr/bin/python3", "{out}");
    assert_eq!(lines[3], "dallinger-oci", "{out}");
}

#[test]
fn same_digest_from_other_paths_and_cold_or_warm_caches_and_shared_layers() {
    let a = Sandbox::new();
    let exp_a = experiment(&a, "first/flaskapp", FLASK_CLOSURE);
    let cold = build_ok(&a, &exp_a, &["--tag", "t", "--output", "oci:out"]);
    let warm = build_ok(&a, &exp_a, &["--tag", "t"]);
    assert_eq!(cold, warm);
    let b = Sandbox::new();
    let exp_b = experiment(&b, "somewhere/else/entirely", FLASK_CLOSURE);
    assert_eq!(build_ok(&b, &exp_b, &["--tag", "t"]), cold);

    // Another experiment with the same pins: the same dependency layer.
    let other = experiment(&b, "other", FLASK_CLOSURE);
    fs::write(other.join("experiment.py"), "# a different experiment\n").unwrap();
    build_ok(&b, &other, &["--tag", "t", "--output", "oci:other-layout"]);
    let (_, m1, _) = layout_image(&a.path("out"));
    let (_, m2, _) = layout_image(&b.path("other-layout"));
    assert_eq!(m1["layers"][1], m2["layers"][1], "dependency layers differ");
    assert_ne!(m1["layers"][2], m2["layers"][2]);
}

#[test]
fn the_lock_pins_everything_and_then_needs_no_network() {
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, "flaskapp", FLASK_CLOSURE);
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .args(["lock"])
        .arg(&exp)
        .args(["--base", &python_base_layout(), "--tag", "t"]);
    let unlocked = printed_digest(&ok(&mut cmd));
    let lock = fs::read_to_string(exp.join("pylock.dallinger-oci.toml")).unwrap();
    assert!(
        lock.contains("name = \"markupsafe\"") || lock.contains("name = \"MarkupSafe\""),
        "{lock}"
    );
    assert!(lock.contains("cp311-cp311-manylinux"), "{lock}");
    assert!(lock.contains("base-digest = \"sha256:"), "{lock}");
    assert!(
        !lock.contains("/root/") && !lock.contains("/tmp/"),
        "a host path in the lock: {lock}"
    );
    // Offline, from the lock and the warm cache; the lock file itself is not
    // part of the image.
    let locked = build_ok(
        &sandbox,
        &exp,
        &[
            "--tag",
            "t",
            "--locked",
            "--offline",
            "--index-url",
            "http://127.0.0.1:9/simple/",
        ],
    );
    assert_eq!(locked, unlocked);
    // A fresh cache fed the same wheels through --find-links, though the
    // lock names their index URLs: the same image, offline.
    let links = sandbox.path("wheelhouse");
    fs::create_dir_all(&links).unwrap();
    let mut copied = 0;
    for entry in walkdir::WalkDir::new(sandbox.dir.path()) {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_file()
            && name.ends_with(".whl")
            && !entry.path().starts_with(&links)
        {
            fs::copy(entry.path(), links.join(&name)).unwrap();
            copied += 1;
        }
    }
    assert!(copied >= 5, "{copied} wheels in the cache");
    let fresh = sandbox.path("fresh-cache");
    let from_links = build_ok(
        &sandbox,
        &exp,
        &[
            "--tag",
            "t",
            "--locked",
            "--offline",
            "--cache-dir",
            fresh.to_str().unwrap(),
            "--find-links",
            links.to_str().unwrap(),
        ],
    );
    assert_eq!(from_links, unlocked);
    // A changed pin set makes the lock stale.
    fs::write(
        exp.join("constraints.txt"),
        format!("{FLASK_CLOSURE}six==1.16.0\n"),
    )
    .unwrap();
    let err = build_err(&sandbox, &exp, &["--tag", "t", "--locked"]);
    assert!(
        err.contains("out of date") && err.contains("dallinger-oci lock"),
        "{err}"
    );
}

#[test]
fn bad_python_inputs_give_clear_errors() {
    let sandbox = Sandbox::new();
    // Not closed: flask without its dependencies.
    let exp = experiment(&sandbox, "open", "flask==3.0.3\n");
    let err = build_err(&sandbox, &exp, &["--tag", "t", "--output", "oci:never"]);
    assert!(
        err.contains("flask==3.0.3") && err.contains("Jinja2"),
        "{err}"
    );
    assert!(!sandbox.path("never").exists());

    // A hash that does not match the wheel.
    let exp = experiment(
        &sandbox,
        "hash",
        &format!("six==1.16.0 --hash=sha256:{}\n", "0".repeat(64)),
    );
    fs::write(exp.join("requirements.txt"), "six\n").unwrap();
    let err = build_err(&sandbox, &exp, &["--tag", "t"]);
    assert!(
        err.contains("six") && err.contains(&"0".repeat(64)),
        "{err}"
    );

    // No wheel for this target: the package, the version and why each file was refused.
    let exp = experiment(&sandbox, "windows", "pywin32==306\n");
    fs::write(exp.join("requirements.txt"), "pywin32\n").unwrap();
    let err = build_err(&sandbox, &exp, &["--tag", "t"]);
    assert!(
        err.contains("pywin32") && err.contains("306") && err.contains("win"),
        "{err}"
    );

    // Only an sdist: named, with the ways out.
    let exp = experiment(&sandbox, "sdist", "psycopg2==2.9.9\n");
    fs::write(exp.join("requirements.txt"), "psycopg2\n").unwrap();
    let err = build_err(&sandbox, &exp, &["--tag", "t"]);
    assert!(
        err.contains("psycopg2") && err.contains("--find-links"),
        "{err}"
    );

    // An index nobody answers.
    let exp = experiment(&sandbox, "noindex", "six==1.16.0\n");
    fs::write(exp.join("requirements.txt"), "six\n").unwrap();
    let err = build_err(
        &sandbox,
        &exp,
        &["--tag", "t", "--index-url", "http://127.0.0.1:9/simple/"],
    );
    assert!(err.contains("127.0.0.1:9"), "{err}");

    // Offline with nothing cached.
    let fresh = Sandbox::new();
    let exp = experiment(&fresh, "offline", "six==1.16.0\n");
    fs::write(exp.join("requirements.txt"), "six\n").unwrap();
    let err = build_err(&fresh, &exp, &["--tag", "t", "--offline"]);
    assert!(
        err.contains("six") && (err.contains("offline") || err.contains("network")),
        "{err}"
    );

    // A git requirement without --build-sdists names its line.
    let exp = experiment(
        &sandbox,
        "vcs",
        "dallinger @ git+https://github.com/Dallinger/Dallinger@main\n",
    );
    let err = build_err(&sandbox, &exp, &["--tag", "t"]);
    assert!(
        err.contains("constraints.txt:1: `dallinger @ git+https://github.com/Dallinger/Dallinger@main` is a git requirement, built from source: pass --build-sdists"),
        "{err}"
    );
}

/// `--compile-bytecode`: `.pyc` files made by the base's own interpreter in
/// the sandbox, the same bytes from another path and a cold cache, naming
/// the installed path (not the staging one), and loaded in the image.
#[test]
fn bytecode_is_compiled_by_the_target_and_reproducible() {
    require_tool("podman");
    let a = Sandbox::new();
    let exp_a = experiment(&a, "first/flaskapp", FLASK_CLOSURE);
    let archive = a.path("image.tar");
    let digest = build_ok(
        &a,
        &exp_a,
        &[
            "--compile-bytecode",
            "--tag",
            "pyc",
            "--output",
            "oci:out",
            "--output",
            &format!("docker-archive:{}", archive.display()),
        ],
    );
    let b = Sandbox::new();
    let exp_b = experiment(&b, "somewhere/else", FLASK_CLOSURE);
    assert_eq!(
        build_ok(&b, &exp_b, &["--compile-bytecode", "--tag", "pyc"]),
        digest
    );
    let without = build_ok(&b, &exp_b, &["--tag", "pyc"]);
    assert_ne!(without, digest);

    let (_, manifest, _) = layout_image(&a.path("out"));
    let deps = gunzip(&blob(
        &a.path("out"),
        manifest["layers"][1]["digest"].as_str().unwrap(),
    ));
    let mut pyc = Vec::new();
    for entry in tar::Archive::new(&deps[..]).entries().unwrap() {
        let path = entry.unwrap().path().unwrap().display().to_string();
        if path.ends_with(".pyc") {
            pyc.push(path);
        }
    }
    assert!(
        pyc.contains(
            &"usr/local/lib/python3.11/dist-packages/flask/__pycache__/app.cpython-311.pyc"
                .to_string()
        ),
        "{pyc:?}"
    );

    let image = PodmanImage::load(&archive, "registry.example.test/dallinger-oci/golden:pyc");
    // The header is the interpreter's own (magic number, unchecked-hash
    // flag 0b01), and the code object names the installed file.
    let out = image.python(
        &[],
        "import importlib.util, marshal, flask.app as m\n\
         data = open(m.__cached__, 'rb').read()\n\
         print(data[:4] == importlib.util.MAGIC_NUMBER, int.from_bytes(data[4:8], 'little'))\n\
         print(marshal.loads(data[16:]).co_filename)",
    );
    assert_eq!(
        out,
        "True 1\n/usr/local/lib/python3.11/dist-packages/flask/app.py\n"
    );
}

/// The bytecode cache's entries (one per wheel and base): name → the inode
/// of its manifest, which changes only when the entry is written again.
fn bytecode_entries(sandbox: &Sandbox) -> std::collections::BTreeMap<String, u64> {
    use std::os::unix::fs::MetadataExt;
    let bucket = sandbox.path("cache/bytecode");
    fs::read_dir(&bucket)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let manifest = fs::metadata(e.path().join("manifest.json")).unwrap();
            (e.file_name().to_string_lossy().into_owned(), manifest.ino())
        })
        .collect()
}

/// The cached layers and the unpacked base gone: the next build makes its
/// layers again, and unpacks the base only if it has something to compile.
fn forget_layers_and_base_root(sandbox: &Sandbox) {
    fs::remove_dir_all(sandbox.path("cache/layers")).unwrap();
    let root = sandbox.path("cache/rootfs");
    if root.exists() {
        fs::remove_dir_all(root).unwrap();
    }
}

/// `--compile-bytecode` keeps each wheel's `.pyc` set, by wheel and base:
/// another pin set compiles only the wheels not seen before; with the
/// layers gone a rebuild compiles nothing (the base is not even unpacked)
/// and gives the same digest; a damaged entry is noticed, compiled again
/// and replaced, the digest unchanged.
#[test]
fn bytecode_is_cached_per_wheel_and_checked_when_read() {
    let s = Sandbox::new();
    let click = s.experiment("golden", "click");
    fs::write(click.join("requirements.txt"), "click\n").unwrap();
    fs::write(click.join("constraints.txt"), "click==8.1.7\n").unwrap();
    build_ok(&s, &click, &["--compile-bytecode", "--tag", "t"]);
    let only_click = bytecode_entries(&s);
    assert_eq!(only_click.len(), 1, "{only_click:?}");

    let exp = experiment(&s, "flaskapp", FLASK_CLOSURE);
    let digest = build_ok(&s, &exp, &["--compile-bytecode", "--tag", "t"]);
    let all = bytecode_entries(&s);
    assert_eq!(all.len(), 7, "one per wheel: {all:?}");
    for (name, inode) in &only_click {
        assert_eq!(all.get(name), Some(inode), "click's set was compiled again");
    }

    forget_layers_and_base_root(&s);
    assert_eq!(
        build_ok(&s, &exp, &["--compile-bytecode", "--tag", "t"]),
        digest
    );
    assert!(
        !s.path("cache/rootfs").exists(),
        "the base was unpacked to compile again"
    );
    assert_eq!(bytecode_entries(&s), all);

    // One byte of flask's app.pyc changed, its size kept.
    let flask = all
        .keys()
        .find(|name| {
            fs::read_to_string(s.path(&format!("cache/bytecode/{name}/manifest.json")))
                .unwrap()
                .contains("flask/__pycache__/app.cpython-311.pyc")
        })
        .unwrap()
        .clone();
    let manifest =
        fs::read_to_string(s.path(&format!("cache/bytecode/{flask}/manifest.json"))).unwrap();
    let index = manifest
        .split("{\"site\"")
        .skip(1)
        .position(|f| f.contains("flask/__pycache__/app.cpython-311.pyc"))
        .unwrap();
    let app = s.path(&format!("cache/bytecode/{flask}/{index}"));
    let good = fs::read(&app).unwrap();
    let mut bytes = good.clone();
    *bytes.last_mut().unwrap() ^= 0xff;
    fs::write(&app, bytes).unwrap();
    forget_layers_and_base_root(&s);
    let out = build(&s, &exp, &["--compile-bytecode", "--tag", "t"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        printed_digest(&String::from_utf8_lossy(&out.stdout)),
        digest
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: the cached bytecode ")
            && stderr.contains(&format!(
                "{flask} is damaged (flask/__pycache__/app.cpython-311.pyc does not match its \
                 manifest); compiling it again"
            )),
        "{stderr}"
    );
    assert_eq!(
        fs::read(&app).unwrap(),
        good,
        "the entry was not made again"
    );
    let after = bytecode_entries(&s);
    assert_eq!(after.len(), 7);
    for (name, inode) in all.iter().filter(|(name, _)| **name != flask) {
        assert_eq!(after.get(name), Some(inode), "{name} was compiled again");
    }
}
