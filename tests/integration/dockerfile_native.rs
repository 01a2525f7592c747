//! An experiment's own Dockerfile built without an engine (issue 14): no
//! podman, docker or buildah on the PATH of the build; the image then runs
//! under podman and shows each instruction's effect; two builds give the
//! same digest, from another path and a cold cache too; an unsupported
//! instruction stops the build naming its line; `--native-python` replaces
//! a `pip install -r requirements.txt` by our locked layers, reproducibly.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// A busybox root with users, a sticky /tmp and the applets the steps use,
/// as an OCI layout (made once, named by its content); its `oci:` reference.
fn base_layout(dir: &Path) -> String {
    let busybox = require_tool("busybox");
    let root = dir.join("root");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "cat", "ls", "echo", "id", "stat", "pwd", "touch", "mkdir", "env", "printf", "tr",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nstaff:x:50:\n",
    )
    .unwrap();
    for d in ["tmp", "root", "home/app"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    let staging = dir.join("base.tar");
    deterministic_tar(&staging, &root, ".");
    let bytes = fs::read(&staging).unwrap();
    let named = dir.join(format!(
        "dockerfile-native-busybox-{}.tar",
        &sha256_hex(&bytes)[..16]
    ));
    fs::rename(&staging, &named).unwrap();
    rootfs_layout(named)
}

/// A PATH with no container engine: only git, which experiments use.
pub fn engine_free_path(sandbox: &Sandbox) -> PathBuf {
    let bin = sandbox.path("engine-free-bin");
    if bin.join("git").exists() {
        return bin;
    }
    fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(require_tool("git"), bin.join("git")).unwrap();
    for engine in ["podman", "docker", "buildah"] {
        assert!(!bin.join(engine).exists());
    }
    bin
}

const DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
# escape=\
ARG BASE
FROM ${BASE} AS tools
RUN echo "made in the tools stage" > /tool.txt
# A global ARG is in a stage's scope once declared there.
ARG BASE
COPY <<EOF /notes/heredoc.txt
from a heredoc: ${BASE:+has a base}
EOF

FROM ${BASE} AS unused
RUN exit 3

FROM ${BASE}
ARG WHO=world
ARG FLAVOUR
ENV GREETING="hello ${WHO}" \
    FALLBACK="${NOT_SET:-the default}"
LABEL org.example.dockerfile="native" org.example.flavour=${FLAVOUR}
WORKDIR /app
# Owners and modes as given.
COPY --chown=app:staff --chmod=0640 experiment.py ./
COPY *constraints.txt constraints.txt
COPY static/ /srv/static/
COPY --from=tools /tool.txt /notes/heredoc.txt /from-tools/
ADD --chown=app:staff bundle.tar /unpacked/
COPY . /context/
RUN <<SCRIPT
echo "$GREETING, $FALLBACK, $FLAVOUR" > /app/run-output.txt
id -u >> /app/run-output.txt
SCRIPT
SHELL ["/bin/sh", "-c"]
USER app
WORKDIR /home/app/work
RUN id -u > by-user.txt && pwd >> by-user.txt
EXPOSE 5000 53/udp
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /app/run-output.txt"]
"#;

fn experiment(sandbox: &Sandbox, rel: &str) -> PathBuf {
    let exp = sandbox.experiment("golden", rel);
    fs::write(exp.join("Dockerfile"), DOCKERFILE).unwrap();
    fs::write(exp.join("my-constraints.txt"), "pinned==1\n").unwrap();
    // .dockerignore applies to the context, as with docker.
    fs::write(exp.join(".dockerignore"), "*.log\n").unwrap();
    fs::write(exp.join("debug.log"), "not in the image\n").unwrap();
    // A tar ADD extracts.
    let content = sandbox.path(&format!("{rel}-bundle"));
    fs::create_dir_all(content.join("inner")).unwrap();
    fs::write(content.join("inner/packed.txt"), "from the tar\n").unwrap();
    deterministic_tar(&exp.join("bundle.tar"), &content, "inner");
    exp
}

fn build(sandbox: &Sandbox, exp: &Path, base: &str, extra: &[&str]) -> Output {
    run(sandbox
        .cmd()
        .env("PATH", engine_free_path(sandbox))
        .arg("build")
        .arg(exp)
        .args(["--tag", "native", "-o", "oci:layout"])
        .arg("--build-arg")
        .arg(format!("BASE={base}"))
        .args(["--build-arg", "FLAVOUR=vanilla"])
        .args(extra))
}

fn digest_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    printed_digest(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn a_dockerfile_builds_without_an_engine_and_runs_under_podman() {
    require_tool("podman");
    let sandbox = Sandbox::new();
    let base = base_layout(&sandbox.path("base"));
    let exp = experiment(&sandbox, "with-dockerfile");
    let archive = sandbox.path("image.tar");
    let out = build(
        &sandbox,
        &exp,
        &base,
        &["-o", &format!("docker-archive:{}", archive.display())],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let digest = digest_of(&out);
    // Only the stages the target needs: the unused one (which fails) never ran.
    assert!(!stderr.contains("exit 3"), "{stderr}");
    assert!(!stderr.contains("not reproducible"), "{stderr}");

    // The same from another path, with a cold cache.
    let other = Sandbox::new();
    let exp2 = experiment(&other, "elsewhere/deeper/with-dockerfile");
    assert_eq!(digest_of(&build(&other, &exp2, &base, &[])), digest);
    // A rebuild reuses every layer.
    let again = build(&sandbox, &exp, &base, &[]);
    assert_eq!(digest_of(&again), digest);
    let again_err = String::from_utf8_lossy(&again.stderr);
    assert!(!again_err.contains("(built)"), "{again_err}");

    // The config.
    let (_, manifest, config) = layout_image(&sandbox.path("layout"));
    let c = &config["config"];
    assert_eq!(c["User"], "app");
    assert_eq!(c["WorkingDir"], "/home/app/work");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(c["Cmd"], serde_json::json!(["cat /app/run-output.txt"]));
    assert_eq!(c["Labels"]["org.example.dockerfile"], "native");
    assert_eq!(c["Labels"]["org.example.flavour"], "vanilla");
    assert_eq!(
        c["ExposedPorts"],
        serde_json::json!({"5000/tcp": {}, "53/udp": {}})
    );
    let env = c["Env"].as_array().unwrap();
    assert!(
        env.contains(&serde_json::json!("GREETING=hello world")),
        "{env:?}"
    );
    assert!(
        env.contains(&serde_json::json!("FALLBACK=the default")),
        "{env:?}"
    );
    // ARGs are not kept in the image.
    assert!(!env.iter().any(|e| e.as_str().unwrap().starts_with("WHO=")));
    // base + 6 COPY/ADD + 2 RUN
    assert_eq!(
        manifest["layers"].as_array().unwrap().len(),
        9,
        "{manifest}"
    );
    let history = created_by(&config);
    assert!(history.iter().any(|h| h == "WORKDIR /app"), "{history:?}");

    // The image under podman shows each effect.
    let image = PodmanImage::load(
        &archive,
        "registry.example.test/dallinger-oci/golden:native",
    );
    let default = ok(image
        .podman()
        .args(["run", "--rm", "--network", "none", &image.name]));
    assert_eq!(default, "hello world, the default, vanilla\n0\n");
    let shell = |script: &str| -> String {
        ok(image
            .podman()
            .args(["run", "--rm", "--network", "none", &image.name, script]))
    };
    assert_eq!(
        shell("id -u; pwd; echo $GREETING"),
        "1000\n/home/app/work\nhello world\n"
    );
    assert_eq!(
        shell("stat -c '%u:%g %a' /app/experiment.py /app/constraints.txt /home/app/work/by-user.txt /home/app/work"),
        "1000:50 640\n0:0 644\n1000:1000 644\n1000:1000 755\n"
    );
    assert_eq!(
        shell("cat /home/app/work/by-user.txt"),
        "1000\n/home/app/work\n"
    );
    assert_eq!(shell("cat /app/constraints.txt"), "pinned==1\n");
    assert_eq!(
        shell("cat /from-tools/tool.txt /from-tools/heredoc.txt"),
        "made in the tools stage\nfrom a heredoc: has a base\n"
    );
    assert_eq!(shell("cat /unpacked/inner/packed.txt"), "from the tar\n");
    assert_eq!(
        shell("stat -c '%u:%g' /unpacked/inner/packed.txt"),
        "1000:50\n"
    );
    assert_eq!(
        shell(
            "for f in debug.log experiment.py Dockerfile; do [ -e /context/$f ] && echo $f; done"
        ),
        "experiment.py\nDockerfile\n"
    );
    assert_eq!(
        shell("ls /srv/static"),
        String::from_utf8_lossy(
            &Command::new("ls")
                .arg(exp.join("static"))
                .output()
                .unwrap()
                .stdout
        )
    );
    // /tmp kept its mode under the layers.
    assert_eq!(shell("stat -c %a /tmp"), "1777\n");
}

#[test]
fn an_unsupported_instruction_stops_the_build_naming_its_line() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "unsupported");
    for (dockerfile, line, what) in [
        ("FROM scratch\nCOPY . /x\nONBUILD RUN true\n", 3, "ONBUILD"),
        (
            "FROM scratch\n\n# a comment\nRUN --mount=type=cache,target=/root \\\n  true\n",
            4,
            "RUN --mount",
        ),
    ] {
        fs::write(exp.join("Dockerfile"), dockerfile).unwrap();
        let out = run(sandbox
            .cmd()
            .env("PATH", engine_free_path(&sandbox))
            .arg("build")
            .arg(&exp)
            .args(["--tag", "x", "-o", "oci:layout"]));
        let err = one_line_error(&out);
        assert!(
            err.contains(&format!(
                "unsupported/Dockerfile:{line}: {what} is not supported by the native Dockerfile build"
            )) && err.contains("--dockerfile-engine"),
            "{err}"
        );
        assert!(!sandbox.path("layout").exists());
    }
    // `digest` says in one line it cannot predict a Dockerfile build.
    fs::write(exp.join("Dockerfile"), "FROM scratch\nCOPY config.txt /\n").unwrap();
    let out = run(sandbox.cmd().arg("digest").arg(&exp).args(["--tag", "x"]));
    let err = one_line_error(&out);
    assert!(err.contains("cannot be predicted"), "{err}");
}

#[test]
fn a_run_with_the_network_says_the_digest_is_not_reproducible() {
    let sandbox = Sandbox::new();
    let base = base_layout(&sandbox.path("base"));
    let exp = sandbox.experiment("golden", "networked");
    fs::write(
        exp.join("Dockerfile"),
        "ARG BASE\nFROM $BASE\nRUN echo networked > /n.txt\n",
    )
    .unwrap();
    let out = build(&sandbox, &exp, &base, &["--build-network"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    digest_of(&out);
    assert!(
        stderr.contains("Dockerfile:3 RUN: with the host's network (--build-network): the image's digest is not reproducible"),
        "{stderr}"
    );
    // Without it, a RUN that fails says how it ran.
    fs::write(
        exp.join("Dockerfile"),
        "ARG BASE\nFROM $BASE\nRUN echo about to fail; exit 4\n",
    )
    .unwrap();
    let out = build(&sandbox, &exp, &base, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("about to fail"), "{stderr}");
    assert!(
        stderr.contains("networked/Dockerfile:3: RUN failed (exit status 4)")
            && stderr.contains("pass --build-network"),
        "{stderr}"
    );
}

/// `--native-python`: the pip install is our locked dependency layer.
#[test]
fn native_python_replaces_the_pip_install_and_is_reproducible() {
    let base = python_base_layout();
    let dockerfile = "ARG BASE\nFROM ${BASE}\nWORKDIR /experiment\n\
                      COPY requirements.txt ./\nCOPY *constraints.txt ./\n\
                      RUN pip install --no-cache-dir -r requirements.txt\n\
                      COPY . /experiment\nCMD [\"python3\", \"-c\", \"import flask; print(flask.__version__)\"]\n";
    let build_native = |sandbox: &Sandbox, rel: &str| -> (String, String) {
        let exp = sandbox.experiment("golden", rel);
        fs::write(exp.join("requirements.txt"), "flask\n").unwrap();
        fs::write(exp.join("constraints.txt"), FLASK_CLOSURE).unwrap();
        fs::write(exp.join("Dockerfile"), dockerfile).unwrap();
        let out = run(sandbox
            .cmd()
            .env_remove("DALLINGER_OCI_NO_DEPS")
            .env("PATH", engine_free_path(sandbox))
            .arg("build")
            .arg(&exp)
            .args(["--tag", "np", "-o", "oci:layout", "--native-python"])
            .arg("--build-arg")
            .arg(format!("BASE={base}")));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (digest_of(&out), stderr)
    };
    let sandbox = Sandbox::new();
    let (digest, stderr) = build_native(&sandbox, "native-python");
    assert!(
        stderr.contains(
            "native-python/Dockerfile:6: `pip install --no-cache-dir -r requirements.txt` replaced by dallinger-oci's locked Python layers (--native-python)"
        ),
        "{stderr}"
    );
    let other = Sandbox::new();
    assert_eq!(build_native(&other, "other/native-python").0, digest);
    let (_, _, config) = layout_image(&sandbox.path("layout"));
    let history = created_by(&config);
    assert!(
        history.iter().any(|h| h
            .starts_with("RUN pip install --no-cache-dir -r requirements.txt # ")
            && h.contains("Python dependencies")),
        "{history:?}"
    );
}

/// `FROM` a registry reference goes through the base resolution (here a
/// local registry, `--insecure-registry`): the same image as from the
/// layout the registry was filled from.
#[test]
fn from_a_registry_gives_the_image_from_the_layout() {
    let skopeo = require_tool("skopeo");
    let registry = common::registry::Registry::start(common::registry::RegistryAuth::None);
    let host = registry.host();
    let sandbox = Sandbox::new();
    let base = base_layout(&sandbox.path("base"));
    ok(Command::new(&skopeo)
        .args(["copy", "--dest-tls-verify=false"])
        .arg(&base)
        .arg(format!("docker://{host}/lab/busybox:1")));
    let exp = sandbox.experiment("golden", "from-registry");
    fs::write(
        exp.join("Dockerfile"),
        "ARG BASE\nFROM $BASE\nCOPY config.txt /etc/experiment.txt\nRUN cat /etc/experiment.txt > /copied.txt\n",
    )
    .unwrap();
    let from_layout = digest_of(&build(&sandbox, &exp, &base, &[]));
    let other = Sandbox::new();
    let exp2 = other.experiment("golden", "from-registry");
    fs::copy(exp.join("Dockerfile"), exp2.join("Dockerfile")).unwrap();
    let out = build(
        &other,
        &exp2,
        &format!("{host}/lab/busybox:1"),
        &["--insecure-registry", &host],
    );
    assert_eq!(digest_of(&out), from_layout);
}
