//! `--build-sdists`: a package published only as an sdist is built with
//! `pip wheel` in the builder image, inside the sandbox (no daemon, no
//! network), recorded in the lock by the built wheel's own sha256, and built
//! again to the same bytes from a cold cache.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::python_base_command as dallinger_oci;
use common::*;

const SETUP_PY: &str = "\
from setuptools import setup, Extension
setup(name='tinyext', version='1.0', ext_modules=[Extension('tinyext', ['tinyext.c'])])
";

const TINYEXT_C: &str = r#"#include <Python.h>
static PyObject *add(PyObject *self, PyObject *args) {
    long a, b;
    if (!PyArg_ParseTuple(args, "ll", &a, &b)) return NULL;
    return PyLong_FromLong(a + b);
}
static PyMethodDef methods[] = {{"add", add, METH_VARARGS, "a + b"}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "tinyext", NULL, -1, methods};
PyMODINIT_FUNC PyInit_tinyext(void) { return PyModule_Create(&module); }
"#;

/// A find-links directory holding only `tinyext-1.0.tar.gz`, an sdist with a
/// C extension (so a compiler and Python's headers are needed).
pub(crate) fn sdist_dir(dir: &Path) -> PathBuf {
    let src = dir.join("src/tinyext-1.0");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("setup.py"), SETUP_PY).unwrap();
    fs::write(src.join("tinyext.c"), TINYEXT_C).unwrap();
    fs::write(
        src.join("PKG-INFO"),
        "Metadata-Version: 2.1\nName: tinyext\nVersion: 1.0\n",
    )
    .unwrap();
    let links = dir.join("links");
    fs::create_dir_all(&links).unwrap();
    let tar = dir.join("tinyext-1.0.tar");
    deterministic_tar(&tar, &dir.join("src"), "tinyext-1.0");
    ok(Command::new(require_tool("gzip"))
        .args(["-n", "-9"])
        .arg(&tar));
    fs::rename(
        dir.join("tinyext-1.0.tar.gz"),
        links.join("tinyext-1.0.tar.gz"),
    )
    .unwrap();
    links
}

fn experiment(sandbox: &Sandbox, name: &str) -> PathBuf {
    let exp = sandbox.experiment("golden", name);
    fs::write(exp.join("requirements.txt"), "tinyext\n").unwrap();
    fs::write(exp.join("constraints.txt"), "tinyext==1.0\n").unwrap();
    exp
}

fn fails(out: Output) -> (String, String) {
    let last = one_line_error(&out);
    (last, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn an_sdist_is_built_in_the_sandbox_locked_and_rebuilt_to_the_same_bytes() {
    require_tool("podman");
    let builder = python_builder_layout();
    let sandbox = Sandbox::new();
    let links = sdist_dir(&sandbox.path("sdists"));
    let links = links.to_str().unwrap();
    let exp = experiment(&sandbox, "tinyapp");

    // Without the flag: the error says what to do.
    let (err, _) = fails(dallinger_oci(
        &sandbox,
        "build",
        &exp,
        &["--find-links", links],
    ));
    assert!(
        err.contains(
            "tinyext 1.0 is published only as an sdist: provide a wheel with --find-links DIR, \
             or build it with --build-sdists"
        ),
        "{err}"
    );

    let sdist_args = [
        "--find-links",
        links,
        "--build-sdists",
        "--builder-base",
        &builder,
    ];
    let (_, stderr) = succeeds(dallinger_oci(&sandbox, "lock", &exp, &sdist_args));
    assert!(
        stderr.contains("Building tinyext 1.0 from tinyext-1.0.tar.gz in oci:")
            && stderr.contains("(sandbox, no network)"),
        "{stderr}"
    );
    let lock = fs::read_to_string(exp.join("pylock.dallinger-oci.toml")).unwrap();
    let wheel = "tinyext-1.0-cp311-cp311-linux_x86_64.whl";
    assert!(
        lock.contains(
            "[packages.sdist]\nname = \"tinyext-1.0.tar.gz\"\nurl = \"tinyext-1.0.tar.gz\""
        ) && lock.contains(&format!(
            "[[packages.wheels]]\nname = \"{wheel}\"\nurl = \"{wheel}\""
        )) && lock.contains("builder-digest = \"sha256:"),
        "{lock}"
    );
    assert!(!lock.contains(sandbox.path("").to_str().unwrap()), "{lock}");

    // The extension runs in the image.
    let (digest, stderr, printed) = locked_build_and_run_python(
        &sandbox,
        &exp,
        &sdist_args,
        "registry.example.test/dallinger-oci/golden",
        "sdist-test",
        "import tinyext; print(tinyext.add(2, 3))",
    );
    // Built once, for the lock; the build took it from the cache.
    assert!(!stderr.contains("Building tinyext"), "{stderr}");
    assert_eq!(printed, "5\n");

    // Elsewhere, with a cold cache: the lock needs the flag to build the
    // wheel again, and building it again gives the same bytes.
    let other = Sandbox::new();
    let exp2 = other.path("elsewhere/tinyapp");
    copy_tree(&exp, &exp2);
    let links2 = sdist_dir(&other.path("sdists"));
    let links2 = links2.to_str().unwrap();
    let (err, _) = fails(dallinger_oci(
        &other,
        "build",
        &exp2,
        &["--find-links", links2, "--locked"],
    ));
    assert_eq!(
        err,
        format!(
            "error: tinyext 1.0's wheel was built from its sdist and is not in the cache: pass \
             --build-sdists to build it again (or --find-links DIR holding {wheel})"
        )
    );
    let (stdout, stderr) = succeeds(dallinger_oci(
        &other,
        "build",
        &exp2,
        &[
            "--find-links",
            links2,
            "--build-sdists",
            "--builder-base",
            &builder,
            "--locked",
            "--tag",
            "sdist-test",
        ],
    ));
    assert!(stderr.contains("Building tinyext 1.0"), "{stderr}");
    assert_eq!(printed_digest(&stdout), digest);
}

#[test]
fn a_builder_without_pip_is_named_with_the_log() {
    let sandbox = Sandbox::new();
    let links = sdist_dir(&sandbox.path("sdists"));
    let exp = experiment(&sandbox, "tinyapp");
    let base = python_base_layout();
    let (err, stderr) = fails(dallinger_oci(
        &sandbox,
        "build",
        &exp,
        &[
            "--find-links",
            links.to_str().unwrap(),
            "--build-sdists",
            "--builder-base",
            &base,
        ],
    ));
    assert!(
        err.starts_with("error: ")
            && err.contains("constraints.txt:1: building tinyext 1.0 from tinyext-1.0.tar.gz in oci:")
            && err.contains("failed (exit status 1): the builder has no pip; choose one with pip, setuptools and a C compiler (--builder-base); full log: "),
        "{err}"
    );
    assert!(stderr.contains("No module named pip"), "{stderr}");
    // Nothing half-written: no lock, no wheel in the cache.
    assert!(!exp.join("pylock.dallinger-oci.toml").exists());
}
