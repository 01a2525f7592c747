//! Unpacking hostile layers: nothing resolved outside the root.
//!
//! Each layer is tar bytes written here. A canary directory beside the
//! cache (files, a subdirectory, their modes and change times) is the
//! "outside" every escape aims at: it must be exactly as it was, and
//! nothing may appear beside it, whatever the layer does. Symlinks planted
//! in a layer are followed only inside the root (as containerd and moby
//! follow them), so an entry aimed through one lands in the root.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::*;
use dallinger_oci::image::store::{BlobStore, StoredLayer};
use dallinger_oci::image::{layout, unpack, Image, ImageLayer};

pub const TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// A layer's tar bytes, names and link names written as given (no `..` or
/// absolute-path checks), so a test can write what an attacker would.
pub struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    pub fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn raw(mut self, kind: tar::EntryType, name: &str, link: &str, mode: u32, data: &[u8]) -> Tar {
        let mut header = tar::Header::new_gnu();
        let gnu = header.as_gnu_mut().unwrap();
        assert!(name.len() < 100 && link.len() < 100, "{name} -> {link}");
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(946_684_800);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        self.0.append(&header, data).unwrap();
        self
    }

    pub fn file(self, name: &str, content: &str) -> Tar {
        self.file_mode(name, content.as_bytes(), 0o644)
    }

    pub fn file_mode(self, name: &str, content: &[u8], mode: u32) -> Tar {
        self.raw(tar::EntryType::Regular, name, "", mode, content)
    }

    pub fn dir(self, name: &str, mode: u32) -> Tar {
        self.raw(tar::EntryType::Directory, name, "", mode, b"")
    }

    /// Directory entries for `abs` and each directory above it, in the root.
    pub fn dirs(mut self, abs: &str) -> Tar {
        let mut path = String::new();
        for part in abs.trim_start_matches('/').split('/') {
            path.push_str(part);
            path.push('/');
            self = self.dir(&path, 0o755);
        }
        self
    }

    pub fn symlink(self, name: &str, target: &str) -> Tar {
        self.raw(tar::EntryType::Symlink, name, target, 0o777, b"")
    }

    pub fn hardlink(self, name: &str, target: &str) -> Tar {
        self.raw(tar::EntryType::Link, name, target, 0o644, b"")
    }

    pub fn char_device(self, name: &str) -> Tar {
        self.raw(tar::EntryType::Char, name, "", 0o666, b"")
    }

    /// A runnable busybox root: `bin/busybox` and `bin/sh`.
    pub fn busybox(self) -> Tar {
        let busybox = fs::read(require_tool("busybox")).unwrap();
        self.dir("bin/", 0o755)
            .file_mode("bin/busybox", &busybox, 0o755)
            .symlink("bin/sh", "busybox")
            .dir("tmp/", 0o1777)
            .dir("etc/", 0o755)
            .dir("opt/", 0o755)
    }

    pub fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// A plain-tar layer put in the store.
pub fn stored_layer(store: &BlobStore, bytes: &[u8]) -> ImageLayer {
    let digest = store.put_bytes(bytes).unwrap();
    ImageLayer {
        blob: StoredLayer {
            diff_id: digest.clone(),
            digest,
            size: bytes.len() as u64,
            media_type: TAR_LAYER.into(),
        },
        annotations: Default::default(),
        remote: None,
    }
}

/// A temp directory holding the cache and a canary directory beside it:
/// `canary/victim`, `canary/sub/keep`, `canary/sub` mode 0755.
pub struct World {
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join("canary");
        fs::create_dir_all(canary.join("sub")).unwrap();
        fs::write(canary.join("victim"), "precious\n").unwrap();
        fs::write(canary.join("sub/keep"), "keep me\n").unwrap();
        fs::set_permissions(canary.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(canary.join("victim"), fs::Permissions::from_mode(0o644)).unwrap();
        BlobStore::open(&dir.path().join("cache")).unwrap();
        World { dir }
    }

    pub fn canary(&self) -> PathBuf {
        self.dir.path().join("canary")
    }

    /// The canary's absolute path as text, for symlink targets.
    pub fn canary_text(&self) -> String {
        self.canary().to_str().unwrap().to_string()
    }

    pub fn store(&self) -> BlobStore {
        BlobStore::open(&self.dir.path().join("cache")).unwrap()
    }

    /// Everything outside the cache: the canary's tree (names, types,
    /// modes, contents, link targets, change times) and the names beside it.
    pub fn outside(&self) -> Vec<String> {
        let mut out = tree_state(&self.canary());
        let mut top: Vec<String> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        out.push(format!("beside: {top:?}"));
        out
    }
}

/// A directory's tree, as lines that change when anything in it changes.
pub fn tree_state(dir: &Path) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.path().symlink_metadata().unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("-> {}", fs::read_link(e.path()).unwrap().display())
            } else if meta.is_file() {
                fs::read_to_string(e.path()).unwrap_or_else(|_| "(binary)".into())
            } else {
                String::new()
            };
            format!(
                "{} {:o} ctime {}.{} {what}",
                e.path().strip_prefix(dir).unwrap().display(),
                meta.mode(),
                meta.ctime(),
                meta.ctime_nsec()
            )
        })
        .collect()
}

/// Unpacks `layers` (after a benign busybox layer) through the cache, as a
/// build does; returns the result and the tree's directory.
fn unpack(world: &World, layers: &[Vec<u8>]) -> (anyhow::Result<PathBuf>, BlobStore) {
    let store = world.store();
    let mut image = vec![stored_layer(&store, &Tar::new().busybox().bytes())];
    image.extend(layers.iter().map(|l| stored_layer(&store, l)));
    let result = unpack::cached_rootfs(&store, &image).map(|r| r.to_path_buf());
    (result, store)
}

/// The root path of `abs` (an absolute host path) inside the tree, where
/// an entry aimed at it through a symlink lands.
fn in_root(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

#[test]
fn symlinks_in_a_layer_never_lead_out_of_the_root() {
    let world = World::new();
    let canary = world.canary_text();
    let before = world.outside();
    // Planted symlinks (absolute, relative and chained), then every kind of
    // entry through them. The image has the canary's path too, so they lead
    // somewhere in it.
    let plant = Tar::new()
        .dirs(&format!("{canary}/sub"))
        .symlink("esc", &canary)
        .symlink("chain", "esc")
        .symlink("up", "../../../../../../../..")
        .symlink("subesc", &format!("{canary}/sub"))
        .bytes();
    let through = Tar::new()
        .file("esc/.wh.victim", "")
        .file("chain/sub/.wh.keep", "")
        .file("esc/sub/.wh..wh..opq", "")
        .dir("esc/sub/", 0o777)
        .dir("esc/new/", 0o777)
        .file("esc/victim", "overwritten")
        .file("chain/planted", "planted")
        .symlink("esc/link", "/etc/passwd")
        .file("up/escaped", "up")
        .file(&format!("{}/abs", canary.trim_start_matches('/')), "abs")
        .file(
            &format!("/{}/absolute-name", canary.trim_start_matches('/')),
            "abs",
        )
        // A directory entry on the symlink itself replaces it, in the root.
        .dir("subesc/", 0o777)
        .bytes();
    let (result, _store) = unpack(&world, &[plant, through]);
    assert_eq!(
        world.outside(),
        before,
        "something outside the root changed"
    );
    let root = result.unwrap();
    // Each entry landed inside the root, where the symlink leads in it.
    let inside = in_root(&root, &canary);
    assert_eq!(
        fs::read_to_string(inside.join("victim")).unwrap(),
        "overwritten"
    );
    assert_eq!(
        fs::read_to_string(inside.join("planted")).unwrap(),
        "planted"
    );
    assert_eq!(fs::read_to_string(inside.join("abs")).unwrap(), "abs");
    assert_eq!(
        fs::read_to_string(inside.join("absolute-name")).unwrap(),
        "abs"
    );
    assert_eq!(
        fs::read_link(inside.join("link")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert!(inside.join("new").is_dir() && inside.join("sub").is_dir());
    assert_eq!(fs::read_to_string(root.join("escaped")).unwrap(), "up");
    assert!(root.join("subesc").symlink_metadata().unwrap().is_dir());
    assert!(root.join("bin/busybox").is_file());
}

#[test]
fn whiteouts_that_name_no_file_are_refused() {
    for name in [".wh...", ".wh..", ".wh.", "bin/.wh..", "bin/.wh..."] {
        let world = World::new();
        let store = world.store();
        // Another tree in the same cache, which `.wh...` would remove.
        let other = Tar::new().file("other", "other tree").bytes();
        let other_root = unpack::cached_rootfs(&store, &[stored_layer(&store, &other)])
            .unwrap()
            .to_path_buf();
        let other_sum = other_root.with_extension("sum");
        let other_before = (tree_state(&other_root), fs::read(&other_sum).ok());
        let before = world.outside();
        let hostile = Tar::new().file(name, "").bytes();
        let digest = stored_layer(&store, &hostile).blob.digest;
        let (result, _) = unpack(&world, &[hostile]);
        assert_eq!(world.outside(), before, "{name}");
        // The other tree (and its fingerprint) is untouched.
        assert_eq!(
            (tree_state(&other_root), fs::read(&other_sum).ok()),
            other_before,
            "{name}"
        );
        let err = format!("{:#}", result.unwrap_err());
        assert_eq!(
            err,
            format!(
                "layer {digest} (2 of 2): entry `{name}`: a whiteout that names no file (`.`, \
                 `..` or nothing) cannot be applied: the image is malformed or hostile: use \
                 another base image"
            )
        );
    }
}

#[test]
fn names_and_hard_links_that_leave_the_root_are_refused() {
    let world = World::new();
    let canary = world.canary_text();
    let before = world.outside();
    let cases = [
        (
            Tar::new().file("../escape", "x").bytes(),
            "entry `../escape`: the name goes up (`..`), out of the root",
        ),
        (
            Tar::new().file("bin/../../escape", "x").bytes(),
            "entry `bin/../../escape`: the name goes up (`..`), out of the root",
        ),
        (
            Tar::new().hardlink("link", "../canary/victim").bytes(),
            "entry `link`: a hard link to `../canary/victim`, which goes up (`..`), out of the root",
        ),
        (
            Tar::new()
                .symlink("esc", &canary)
                .hardlink("link", "esc/victim")
                .bytes(),
            "entry `link`: a hard link to `esc/victim`, which is not in the image",
        ),
        (
            Tar::new().hardlink("link", &format!("{canary}/victim")).bytes(),
            &format!("entry `link`: a hard link to `{canary}/victim`, which is not in the image"),
        ),
    ];
    for (layer, expected) in cases {
        let (result, _) = unpack(&world, &[layer]);
        assert_eq!(world.outside(), before, "{expected}");
        let err = format!("{:#}", result.unwrap_err());
        assert!(err.contains(expected), "{err}\nexpected: {expected}");
    }
    // The victim still has one link: no hard link to it was made.
    assert_eq!(
        fs::metadata(world.canary().join("victim")).unwrap().nlink(),
        1
    );
}

/// A directory replaced by a file, another by a symlink out, then an entry
/// through that symlink; setuid and setgid bits; a device node.
fn replacing_layer(canary: &str) -> Vec<u8> {
    Tar::new()
        .file("d", "now a file")
        .symlink("e", canary)
        .file("e/victim", "through e")
        .file_mode("bin/su", b"setuid", 0o4755)
        .dir("shared/", 0o2775)
        .char_device("dev-null-copy")
        .hardlink("bin/su-link", "bin/su")
        .bytes()
}

#[test]
fn replaced_directories_setuid_bits_and_device_nodes() {
    let world = World::new();
    let canary = world.canary_text();
    let before = world.outside();
    let lower = |with_canary_path: bool| {
        let tar = if with_canary_path {
            Tar::new().dirs(&canary)
        } else {
            Tar::new()
        };
        tar.dir("d/", 0o755)
            .file("d/f", "f")
            .dir("e/", 0o755)
            .file("e/g", "g")
            .bytes()
    };
    // The symlink leads to nothing in the image: refused, as before.
    let (result, _) = unpack(&world, &[lower(false), replacing_layer(&canary)]);
    assert_eq!(world.outside(), before);
    let err = format!("{:#}", result.unwrap_err());
    assert!(
        err.ends_with(
            "entry `e/victim`: a directory above it is a file, or a symlink to nothing in the \
             image: the image is malformed or hostile: use another base image"
        ),
        "{err}"
    );
    // With the canary's path in the image, the same layer lands there.
    let (result, _) = unpack(&world, &[lower(true), replacing_layer(&canary)]);
    assert_eq!(world.outside(), before);
    let root = result.unwrap();
    assert_eq!(fs::read_to_string(root.join("d")).unwrap(), "now a file");
    assert_eq!(
        fs::read_to_string(in_root(&root, &canary).join("victim")).unwrap(),
        "through e"
    );
    let mode = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("bin/su"), 0o755, "setuid bit dropped");
    assert_eq!(mode("shared"), 0o775, "setgid bit dropped");
    assert!(
        !root.join("dev-null-copy").exists(),
        "device nodes are skipped"
    );
    assert_eq!(fs::metadata(root.join("bin/su")).unwrap().nlink(), 2);
    // The cache's trees are for their owner only.
    assert_eq!(mode("..") & 0o077, 0);
}

/// A build with a hostile `oci:` base through the command line: a base
/// whose symlinks aim out builds (its entries land inside the root) and
/// leaves the outside alone; one with a `.wh...` whiteout is refused with
/// one line that names the layer, the entry and what to do.
#[test]
fn a_build_with_a_hostile_base_changes_nothing_outside() {
    let world = World::new();
    let canary = world.canary_text();
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "exp");
    fs::write(
        exp.join("prepare_docker_image.sh"),
        "#!/bin/sh\nset -e\necho prepared > /opt/prepared\n\
         echo pwned > /esc/from-the-script 2>/dev/null || true\n",
    )
    .unwrap();
    let escapes = Tar::new()
        .dirs(&format!("{canary}/sub"))
        .symlink("esc", &canary)
        .file("esc/.wh.victim", "")
        .file("esc/sub/.wh..wh..opq", "")
        .dir("esc/sub/", 0o777)
        .file("esc/planted", "planted")
        .bytes();
    let build = |layers: &[Vec<u8>], name: &str| {
        let layout_dir = sandbox.path("bases").join(name);
        let store_dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(store_dir.path()).unwrap();
        let mut image = vec![stored_layer(&store, &Tar::new().busybox().bytes())];
        image.extend(layers.iter().map(|l| stored_layer(&store, l)));
        let diff_ids: Vec<&str> = image.iter().map(|l| l.blob.diff_id.as_str()).collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let digests: Vec<String> = image.iter().map(|l| l.blob.digest.clone()).collect();
        let assembled = Image::assemble(&store, &config, image).unwrap();
        layout::write(&store, &assembled, &layout_dir, "base").unwrap();
        let out = run(sandbox
            .cmd()
            .arg("build")
            .arg(&exp)
            .arg("--base")
            .arg(format!("oci:{}:base", layout_dir.display()))
            .args(["--tag", "t", "-o"])
            .arg(format!("oci:{}", sandbox.path(name).display()))
            .arg("--run-prepare"));
        (out, digests)
    };
    let before = world.outside();
    let (out, _) = build(&[escapes], "escapes");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(world.outside(), before, "{stderr}");
    assert!(out.status.success(), "{stderr}");

    let hostile = Tar::new().dir("x/", 0o755).file("x/.wh...", "").bytes();
    let (out, digests) = build(&[hostile], "refused");
    let err = one_line_error(&out);
    assert_eq!(
        err,
        format!(
            "error: unpacking the image for prepare_docker_image.sh: layer {} (2 of 2): entry \
             `x/.wh...`: a whiteout that names no file (`.`, `..` or nothing) cannot be \
             applied: the image is malformed or hostile: use another base image",
            digests[1]
        )
    );
    assert_eq!(world.outside(), before);
    assert!(!sandbox.path("refused").exists());
    // The cache holds only the tree of the first build, and no partial one.
    let rootfs = sandbox.path("cache/rootfs");
    let mut names: Vec<String> = fs::read_dir(&rootfs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].len() == 32 && names[1] == format!("{}.sum", names[0]),
        "{names:?}"
    );
}

/// One layer as plain tar, as gzip of two members and as zstd of several
/// frames unpacks to the same tree: every member and frame is read, as an
/// engine reads them, so what is checked is what an engine would unpack.
/// A media type that names no known compression is refused in one line
/// naming the layer and the type.
#[test]
fn every_compression_unpacks_alike_and_unknown_types_are_refused() {
    use dallinger_oci_layers::Codec;
    use std::io::Write;

    let big: Vec<u8> = (0..5u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let first = Tar::new().dir("a/", 0o755).file("a/one", "first member\n");
    let first = first.file_mode("a/big.bin", &big, 0o644).bytes();
    let second = Tar::new().file("a/two", "second member\n").bytes();
    // The first tar without its end-of-archive blocks, so the second
    // member carries on the same archive.
    let joined = [&first[..first.len() - 1024], &second[..]].concat();
    let compress = |codec: Codec, parts: &[&[u8]]| {
        let mut out = Vec::new();
        for part in parts {
            let mut encoder = codec.encoder(Vec::new(), 2).unwrap();
            encoder.write_all(part).unwrap();
            out.extend(encoder.finish().unwrap());
        }
        out
    };
    let first_part = &first[..first.len() - 1024];
    let variants = [
        ("application/vnd.oci.image.layer.v1.tar", joined.clone()),
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            compress(Codec::Gzip, &[first_part, &second]),
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+zstd",
            compress(Codec::Zstd, &[&joined]),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let contents = |root: &Path| -> Vec<(String, Vec<u8>)> {
        walkdir::WalkDir::new(root)
            .sort_by_file_name()
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                (rel, fs::read(e.path()).unwrap())
            })
            .collect()
    };
    let mut trees = Vec::new();
    for (i, (media_type, blob)) in variants.iter().enumerate() {
        let path = dir.path().join(format!("layer{i}"));
        fs::write(&path, blob).unwrap();
        let dest = dir.path().join(format!("root{i}"));
        let layer = unpack::LayerFile {
            name: format!("layer{i}"),
            path,
            media_type: media_type.to_string(),
        };
        unpack::unpack_layers(&[layer], &dest).unwrap_or_else(|e| panic!("{media_type}: {e:#}"));
        trees.push(contents(&dest));
    }
    let names: Vec<&str> = trees[0].iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a/big.bin", "a/one", "a/two"]);
    assert_eq!(trees[0][0].1, big);
    assert_eq!(trees[1], trees[0], "gzip of two members");
    assert_eq!(trees[2], trees[0], "zstd");

    let path = dir.path().join("layer-xz");
    fs::write(&path, &joined).unwrap();
    let layer = unpack::LayerFile {
        name: "sha256:abc".into(),
        path,
        media_type: "application/vnd.oci.image.layer.v1.tar+xz".into(),
    };
    let err = unpack::unpack_layers(&[layer], &dir.path().join("root-xz")).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "layer sha256:abc: media type \"application/vnd.oci.image.layer.v1.tar+xz\" is not a \
         layer type this tool can read (plain tar, gzip or zstd): use another base image"
    );
}
