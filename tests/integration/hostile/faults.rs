//! Faults: SIGKILL at random points, a full file system, concurrent builds on one cache.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cache::{
    assert_blobs_hash_to_names, assert_records_name_blobs, layout_tags, noise, pushed_digest,
    python_experiment, tiny,
};
use crate::common::registry::{Registry, RegistryAuth};
use crate::common::*;

/// Temporary files of the store (a killed build may leave some; nothing
/// else may be half-written).
fn store_temp_files(cache: &Path) -> Vec<PathBuf> {
    fs::read_dir(cache.join("tmp"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[test]
fn builds_and_pushes_killed_at_random_points_leave_nothing_trusted_wrongly() {
    let registry = Registry::start(RegistryAuth::None);
    let base = python_base_layout();
    let wheels: &[(&str, &str, usize)] = &[
        ("killa", "1.0", 3 << 20),
        ("killb", "1.0", 2 << 20),
        ("killc", "2.0", 1 << 20),
        ("killd", "0.1", 512 << 10),
    ];
    // The reference: a clean build in a cache of its own, timed.
    let clean = Sandbox::new();
    let (clean_exp, clean_links) = python_experiment(&clean, "exp", wheels);
    let build_args = |links: &Path| -> Vec<String> {
        vec![
            "--base".into(),
            base.clone(),
            "--index-url".into(),
            String::new(),
            "--find-links".into(),
            links.display().to_string(),
        ]
    };
    let started = Instant::now();
    let mut cmd = clean.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg("build")
        .arg(&clean_exp)
        .args(build_args(&clean_links));
    let expected = printed_digest(&succeeds(run(&mut cmd)).0);
    let duration = started.elapsed();
    let image = format!("{}/lab/killed", registry.host());
    // The pushed image is named for the registry (config.txt says so).
    clean.name_image(&clean_exp, &image);
    let mut cmd = clean.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg("build")
        .arg(&clean_exp)
        .args(build_args(&clean_links));
    let expected_push = printed_digest(&succeeds(run(&mut cmd)).0);

    let sandbox = Sandbox::new();
    let (exp, links) = python_experiment(&sandbox, "exp", wheels);
    let seed = std::env::var("DALLINGER_OCI_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!(
        "kill seed {seed} (set DALLINGER_OCI_KILL_SEED to repeat); a clean build took {duration:?}"
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let kills = 24;
    let mut killed = 0;
    let loop_started = Instant::now();
    let mut warm = duration;
    let mut i = 0;
    // Bounded: at most 60 runs, and 5 minutes.
    while killed < kills && i < 60 {
        i += 1;
        // Every build does real work: each has its own epoch, which every
        // layer depends on. Every third one is a push. The first two run
        // to their end (the second timing a warm build, over which the
        // kills are spread).
        let push = i % 3 == 2;
        let log = sandbox.path(&format!("run-{i}.log"));
        let mut cmd = sandbox.cmd();
        cmd.env_remove("DALLINGER_OCI_NO_DEPS")
            .env(
                "SOURCE_DATE_EPOCH",
                (946_684_800 + i as u64 * 86_400).to_string(),
            )
            .arg(if push { "push" } else { "build" })
            .arg(&exp)
            .args(build_args(&links))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        if push {
            sandbox.name_image(&exp, &image);
        } else {
            sandbox.name_image(&exp, "registry.example.test/dallinger-oci/golden");
            cmd.args(["-o", &format!("oci:{}:t{i}", sandbox.path("out").display())]);
        }
        let started = Instant::now();
        let mut child = cmd.spawn().unwrap();
        if i > 2 {
            std::thread::sleep(warm.mul_f64(rng.f64()));
        }
        let status = match child.try_wait().unwrap() {
            Some(status) => Some(status),
            None if i <= 2 => Some(child.wait().unwrap()),
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                killed += 1;
                None
            }
        };
        // The kills are spread over the shortest run seen to its end.
        if i == 2 || (status.is_some() && started.elapsed() < warm) {
            warm = started.elapsed();
        }
        // A run that was not killed must have succeeded.
        if let Some(status) = status {
            assert!(
                status.success(),
                "run {i} failed after earlier kills:\n{}",
                fs::read_to_string(&log).unwrap()
            );
        }
        assert!(
            loop_started.elapsed() < Duration::from_secs(300),
            "the kill loop is too slow"
        );
    }
    println!(
        "{killed} of {} runs were killed before they finished",
        i - 2
    );
    assert!(killed >= 20, "too few kills landed: {killed}");
    sandbox.name_image(&exp, "registry.example.test/dallinger-oci/golden");

    // Nothing the killed runs left is trusted wrongly: the same digest as
    // the clean build, and every blob is what its name says.
    let cache = sandbox.path("cache");
    assert_blobs_hash_to_names(&cache);
    assert_records_name_blobs(&cache);
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg("build")
        .arg(&exp)
        .args(build_args(&links))
        .args([
            "-o",
            &format!("oci:{}:final", sandbox.path("out").display()),
        ]);
    assert_eq!(printed_digest(&succeeds(run(&mut cmd)).0), expected);
    assert_blobs_hash_to_names(&cache);
    assert_records_name_blobs(&cache);
    // What the killed runs left is swept: in the store, in the layout and
    // beside it.
    let temps: Vec<PathBuf> = store_temp_files(&cache)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("blob-")
        })
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
    assert_blobs_hash_to_names(&sandbox.path("out"));
    let staging: Vec<_> = fs::read_dir(sandbox.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".dallinger-oci-layout-"))
        .collect();
    assert!(staging.is_empty(), "{staging:?}");
    // And a push after the killed pushes completes, to the same digest.
    sandbox.name_image(&exp, &image);
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg("push")
        .arg(&exp)
        .args(build_args(&links));
    assert_eq!(pushed_digest(&succeeds(run(&mut cmd)).0), expected_push);
}

/// A tmpfs of `size` bytes at `dir`, unmounted when dropped (also when the
/// test fails).
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    fn mount(dir: &Path, size: u64) -> SmallFs {
        fs::create_dir_all(dir).unwrap();
        ok(Command::new(require_tool("mount"))
            .args(["-t", "tmpfs", "-o", &format!("size={size}")])
            .arg("dallinger-oci-test")
            .arg(dir));
        SmallFs {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

#[test]
fn a_full_cache_file_system_gives_one_clear_line_and_nothing_half_written() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "exp");
    fs::write(exp.join("static/big.txt"), noise(3, 600 << 10)).unwrap();
    let expected = printed_digest(&succeeds(tiny(&sandbox, "build", &exp, &[])).0);
    let mount_point = sandbox.path("small");
    let mut failures = 0;
    let mut size = 8 << 10;
    loop {
        assert!(size <= 16 << 20, "the build never fitted");
        let small = SmallFs::mount(&mount_point, size);
        let cache = mount_point.join("cache");
        let mut cmd = sandbox.cmd();
        cmd.env("DALLINGER_OCI_CACHE", &cache)
            .arg("build")
            .arg(&exp)
            .args(["--base", &super::cache::tiny_base()]);
        let out = run(&mut cmd);
        if out.status.success() {
            assert_eq!(
                printed_digest(&String::from_utf8_lossy(&out.stdout)),
                expected
            );
            drop(small);
            break;
        }
        failures += 1;
        let err = one_line_error(&out);
        assert_eq!(
            err,
            format!(
                "error: no space left on the device for the cache (cache directory {}): free some space there or choose another with --cache-dir",
                cache.display()
            ),
            "with {size} bytes"
        );
        // Nothing half-written: every blob whole, every record naming one,
        // no temporary file left.
        if cache.join("blobs").exists() {
            assert_blobs_hash_to_names(&cache);
        }
        assert_records_name_blobs(&cache);
        assert!(
            store_temp_files(&cache).is_empty(),
            "{:?}",
            store_temp_files(&cache)
        );
        // Failing again on the same full disk says the same.
        let mut again = sandbox.cmd();
        again
            .env("DALLINGER_OCI_CACHE", &cache)
            .arg("build")
            .arg(&exp)
            .args(["--base", &super::cache::tiny_base()]);
        assert_eq!(one_line_error(&run(&mut again)), err);
        drop(small);
        size += size / 2;
    }
    assert!(failures >= 3, "only {failures} sizes failed");
}

#[test]
fn two_builds_at_once_on_one_cache_and_one_layout_keep_both_tags() {
    let sandbox = Sandbox::new();
    let a = sandbox.experiment("golden", "a");
    let b = sandbox.experiment("golden", "b");
    let layout = sandbox.path("shared");
    let out = |tag: &str| format!("oci:{}:{tag}", layout.display());
    let mut tags = Vec::new();
    for round in 0..6 {
        // Different experiments with real work (a few MB to compress).
        fs::write(a.join("static/big.txt"), noise(round * 2 + 1, 3 << 20)).unwrap();
        fs::write(b.join("static/big.txt"), noise(round * 2 + 2, 3 << 20)).unwrap();
        let (ta, tb) = (format!("a{round}"), format!("b{round}"));
        let spawn = |exp: &Path, tag: &str| {
            let mut cmd = sandbox.cmd();
            cmd.arg("build")
                .arg(exp)
                .args(["--base", &super::cache::tiny_base(), "-o", &out(tag)])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            cmd.spawn().unwrap()
        };
        let (ca, cb) = (spawn(&a, &ta), spawn(&b, &tb));
        let (oa, ob) = (
            ca.wait_with_output().unwrap(),
            cb.wait_with_output().unwrap(),
        );
        let da = printed_digest(&succeeds(oa).0);
        let db = printed_digest(&succeeds(ob).0);
        // Each is the digest the same build gives alone in a fresh cache.
        if round == 0 {
            for (exp, digest) in [(&a, &da), (&b, &db)] {
                let alone = Sandbox::new();
                let copy = alone.path("exp");
                copy_tree(exp, &copy);
                assert_eq!(
                    &printed_digest(&succeeds(tiny(&alone, "build", &copy, &[])).0),
                    digest
                );
            }
        }
        tags.push((ta, da));
        tags.push((tb, db));
        let mut found = layout_tags(&layout);
        found.sort();
        let mut want = tags.clone();
        want.sort();
        assert_eq!(found, want, "round {round}");
    }
    assert_blobs_hash_to_names(&layout);
    let cache = sandbox.path("cache");
    assert_blobs_hash_to_names(&cache);
    assert_records_name_blobs(&cache);
}
