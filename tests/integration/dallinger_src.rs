//! `--dallinger-src PATH`: the Dallinger layer built from a local source
//! tree in the builder instead of the pinned release (which is then never
//! fetched), and `debug` binding PATH/dallinger over the installed package
//! in web and worker, where the image's Python imports it from.

use crate::common;

use std::fs;
use std::path::Path;

use common::*;

/// Package data the Dallinger layer takes into /experiment.
const PACKAGE_DATA: &str =
    "\n[tool.setuptools.package-data]\ndallinger = [\"frontend/static/*\", \"heroku/*\"]\n";

/// A minimal Dallinger-shaped source tree: the `dallinger` distribution,
/// its package with a marker, and the files the Dallinger layer takes
/// into /experiment (`frontend/`, the Procfiles).
fn dallinger_tree(root: &Path, marker: &str) {
    let package = root.join("dallinger");
    fs::create_dir_all(package.join("frontend/static")).unwrap();
    fs::create_dir_all(package.join("heroku")).unwrap();
    fs::write(
        root.join("pyproject.toml"),
        setuptools_pyproject("dallinger", "99.0.0a1", PACKAGE_DATA),
    )
    .unwrap();
    set_marker(root, marker);
    fs::write(package.join("frontend/static/from-src.txt"), "frontend\n").unwrap();
    fs::write(
        package.join("heroku/Procfile_no_clock"),
        "web: dallinger_heroku_web\n",
    )
    .unwrap();
    fs::write(
        package.join("heroku/Procfile"),
        "web: dallinger_heroku_web\n",
    )
    .unwrap();
}

fn set_marker(root: &Path, marker: &str) {
    fs::write(
        root.join("dallinger/__init__.py"),
        format!("MARKER = {marker:?}\n"),
    )
    .unwrap();
}

#[test]
fn dallinger_src_builds_the_dallinger_layer_and_debug_mounts_it() {
    require_tool("podman");
    let builder = python_builder_layout();
    let sandbox = Sandbox::new();
    let src = sandbox.path("Dallinger");
    dallinger_tree(&src, "from-src-1");
    // The golden experiment pins dallinger==12.3.0, which the source tree
    // replaces: no index is reachable, so the release is never fetched.
    let exp = sandbox.experiment("golden", "srcapp");
    let src_arg = src.to_str().unwrap();
    let common_args = [
        "--base",
        &python_base_layout(),
        "--index-url",
        "",
        "--dallinger-src",
        src_arg,
        "--builder-base",
        &builder,
        "--tag",
        "src-test",
    ];

    let archive = sandbox.path("image.tar");
    let out = ok(sandbox
        .cmd()
        .env_remove("DALLINGER_OCI_NO_DEPS")
        .arg("build")
        .arg(&exp)
        .args(common_args)
        .arg("-o")
        .arg(format!("docker-archive:{}", archive.display())));
    printed_digest(&out);

    let image = PodmanImage::load(
        &archive,
        "registry.example.test/dallinger-oci/golden:src-test",
    );
    let purelib = "/usr/local/lib/python3.11/dist-packages";
    let probe = "import dallinger, importlib.metadata as m; \
                 print(dallinger.MARKER, m.version('dallinger'), dallinger.__file__); \
                 print(open('/experiment/static/from-src.txt').read().strip())";
    assert_eq!(
        image.python(&[], probe),
        format!("from-src-1 99.0.0a1 {purelib}/dallinger/__init__.py\nfrontend\n")
    );

    // debug writes a compose file that binds the tree over the installed
    // package in web and worker (--no-start: nothing else runs).
    let data_home = sandbox.path("data");
    let stdout = ok(sandbox
        .cmd()
        .env_remove("DALLINGER_OCI_NO_DEPS")
        .env("CONTAINERS_CONF", fixture("containers.conf"))
        .env("XDG_DATA_HOME", &data_home)
        .arg("debug")
        .arg(&exp)
        .args(common_args)
        .args(["--runtime", "podman", "--no-start"]));
    let compose_path = data_home.join("dallinger-oci/debug/srcapp/docker-compose.yml");
    assert!(
        stdout.contains(&format!("Compose file: {}", compose_path.display())),
        "{stdout}"
    );
    let compose = fs::read_to_string(&compose_path).unwrap();
    let host = fs::canonicalize(&src).unwrap().join("dallinger");
    let bind = format!("      - \"{}:{purelib}/dallinger:ro\"\n", host.display());
    // Services start at two spaces' indent.
    for service in ["web", "worker"] {
        let section = compose
            .split("\n  \"")
            .find(|s| s.starts_with(&format!("{service}\":\n")))
            .unwrap_or_else(|| panic!("no {service}: {compose}"));
        assert!(
            section.contains(bind.trim_end()),
            "{service} lacks {bind}: {compose}"
        );
    }
    assert_eq!(compose.matches(&bind).count(), 2, "{compose}");

    // That bind is where the image's Python imports dallinger from: an edit
    // shows without a rebuild.
    set_marker(&src, "edited");
    let volume = [
        "-v".to_string(),
        format!("{}:{purelib}/dallinger:ro", host.display()),
    ];
    assert_eq!(
        image.python(&volume, "import dallinger; print(dallinger.MARKER)"),
        "edited\n"
    );
}

#[test]
fn lock_refuses_dallinger_src() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "srcapp");
    let out = run(sandbox
        .cmd()
        .env_remove("DALLINGER_OCI_NO_DEPS")
        .arg("lock")
        .arg(&exp)
        .args(["--dallinger-src", "/nonexistent"]));
    let err = one_line_error(&out);
    assert!(
        err.ends_with(
            "a --dallinger-src tree is never locked: run `lock` without --dallinger-src (builds \
             with it use the lock for everything else)"
        ),
        "{err}"
    );
}

#[test]
fn an_editable_dallinger_on_this_machine_is_named_not_used() {
    require_tool("python3");
    let sandbox = Sandbox::new();
    // What `pip install -e` leaves in site-packages (PEP 610), found by
    // this machine's python3 through PYTHONPATH.
    let site = sandbox.path("site");
    let checkout = sandbox.path("my Dallinger");
    let info = site.join("dallinger-99.0.0a1.dist-info");
    fs::create_dir_all(&info).unwrap();
    fs::write(
        info.join("METADATA"),
        "Metadata-Version: 2.1\nName: dallinger\nVersion: 99.0.0a1\n",
    )
    .unwrap();
    let url = format!("file://{}", checkout.display()).replace(' ', "%20");
    fs::write(
        info.join("direct_url.json"),
        format!(r#"{{"url": "{url}", "dir_info": {{"editable": true}}}}"#),
    )
    .unwrap();
    let exp = sandbox.experiment("golden", "editable");
    fs::write(exp.join("constraints.txt"), "# nothing to install\n").unwrap();

    let out = run(sandbox
        .cmd()
        .env_remove("DALLINGER_OCI_NO_DEPS")
        .env("PYTHONPATH", &site)
        .arg("build")
        .arg(&exp)
        .args(["--base", &python_base_layout(), "--index-url", ""]));
    let (_, stderr) = succeeds(out);
    let path = checkout.display();
    assert!(
        stderr.contains(&format!(
            "warning: this machine's python3 has Dallinger installed in editable mode from \
             {path}; the image gets the pinned Dallinger, not that checkout: pass \
             --dallinger-src {path} to build from it"
        )),
        "{stderr}"
    );
}
