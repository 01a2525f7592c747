//! From a fully pinned requirements file to verified wheels on disk, for one
//! target: no resolver, only choice (best wheel for the target's tags),
//! verification (sha256, closure of the pin set) and the lock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use super::index::{self, Candidate, IndexAnswers, IndexConfig, LazyClient, SelectError};
use super::install::{WheelArchive, WheelFilename};
use super::source::git::{self as git_source, GitUrl};
use super::source::{BuiltWheel, SdistBuilder};
use super::spec::{
    applicable_dependencies, check_closed, normalised_version, parse_file, pins_for_target,
    same_version, Dependency, MarkerEnv, PackageName, PinnedPackage,
};
use super::target::{file_priority, TagIndex, Target};
use crate::image::store::{sha256_file, BlobStore};
use crate::plan::{Hashes, Lock, LockInputs, LockedFile, LockedPackage, LockedVcs};

/// A wheel chosen, fetched and verified.
#[derive(Debug, Clone)]
pub struct ResolvedWheel {
    pub name: String,
    pub normalised: PackageName,
    pub version: String,
    pub filename: String,
    pub url: String,
    /// Lowercase hex.
    pub sha256: String,
    pub path: PathBuf,
    /// The sdist the wheel was built from, when no wheel was published.
    pub sdist: Option<SdistSource>,
    /// The git commit the wheel was built from (a `git+` requirement).
    pub vcs: Option<LockedVcs>,
}

/// An sdist a wheel was built from.
#[derive(Debug, Clone)]
pub struct SdistSource {
    pub filename: String,
    pub url: String,
    /// Lowercase hex.
    pub sha256: String,
}

/// What the experiment's Python needs on the target.
pub struct Resolution {
    /// Wheels to install, sorted by normalised name. Pins the base already
    /// has at the same version are not here.
    pub wheels: Vec<ResolvedWheel>,
    /// Pinned packages the base already has at the pinned version.
    pub already_in_base: Vec<String>,
    pub lock: Lock,
    /// Whether the wheels came from an up-to-date lock.
    pub from_lock: bool,
}

pub struct ResolveRequest<'a> {
    /// constraints.txt (or requirements.txt) of the experiment.
    pub requirements: &'a Path,
    pub target: &'a Target,
    pub index: &'a IndexConfig,
    pub inputs: LockInputs,
    /// The lock next to config.txt, if any.
    pub lock: Option<Lock>,
    /// Fail instead of resolving again when the lock is out of date.
    pub locked: bool,
    pub parallel: usize,
    /// Builds wheels for pins published only as sdists and for git
    /// requirements (`--build-sdists`).
    pub sdists: Option<&'a SdistBuilder<'a>>,
    /// Wheels built from local source trees (`--dallinger-src`): they
    /// replace the pins of their names, and are never locked.
    pub local_wheels: &'a [ResolvedWheel],
    /// The cache: what the indexes said about exact pins before (see
    /// `index::answers`), and the wheels' metadata.
    pub store: &'a BlobStore,
    /// Ask the indexes again instead of using what they said before.
    pub refresh: bool,
}

pub fn resolve(request: &ResolveRequest) -> Result<Resolution> {
    let mut parsed = parse_file(request.requirements)?;
    let local: BTreeSet<PackageName> = request
        .local_wheels
        .iter()
        .map(|w| w.normalised.clone())
        .collect();
    // A local source stands for every line naming its package, pinned or not.
    parsed
        .requirements
        .retain(|r| !local.contains(&r.normalised));
    parsed
        .constraints
        .retain(|r| !local.contains(&r.normalised));
    let env = MarkerEnv::for_target(request.target);
    let pins = pins_for_target(&parsed, &env)?;
    let (needed, already_in_base) = split_by_base(&pins, request.target, &local);

    let fresh_lock = |wheels: &[ResolvedWheel]| lock_of(request, wheels, &local);
    if let Some(lock) = &request.lock {
        match stale_reason(lock, &request.inputs, &needed, &local) {
            None => {
                let mut wheels = fetch_locked(lock, request, &needed, &local)?;
                wheels.extend(request.local_wheels.iter().cloned());
                wheels.sort_by(|a, b| a.normalised.cmp(&b.normalised));
                let pins = with_built_versions(&pins, &wheels);
                check_pin_set(request.store, &pins, &wheels, request.target, &env)?;
                return Ok(Resolution {
                    lock: lock.clone(),
                    wheels,
                    already_in_base,
                    from_lock: true,
                });
            }
            Some(reason) if request.locked => bail!(
                "the lock {} is out of date ({reason}): run `dallinger-oci lock`",
                crate::plan::LOCK_FILE
            ),
            Some(reason) => eprintln!(
                "warning: {} is out of date ({reason}); resolving again (run `dallinger-oci lock` to update it)",
                crate::plan::LOCK_FILE
            ),
        }
    } else if request.locked {
        bail!(
            "--locked needs a lock file: run `dallinger-oci lock` to write {}",
            crate::plan::LOCK_FILE
        );
    }

    // git requirements are built from source, only when asked to: before
    // anything is fetched.
    let (git_pins, pinned): (Vec<&PinnedPackage>, Vec<&PinnedPackage>) =
        needed.values().partition(|p| p.git.is_some());
    if let (Some(pin), None) = (git_pins.first(), request.sdists) {
        bail!(
            "{}:{}: `{}` is a git requirement, built from source: pass --build-sdists (and \
             --builder-base REF unless the base has pip, setuptools and a compiler)",
            pin.file.display(),
            pin.line,
            pin.text()
        );
    }
    let client = LazyClient::default();
    let answers = IndexAnswers::new(request.store, request.refresh)?;
    let tags = TagIndex::for_target(request.target);
    let priority = |filename: &str| file_priority(filename, &tags);
    // List and choose per package, a few at a time.
    type Choice = Result<(Candidate, Option<String>)>;
    let chosen: Vec<Mutex<Option<Choice>>> = pinned.iter().map(|_| Mutex::new(None)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..request.parallel.clamp(1, 8) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(pin) = pinned.get(i) else { return };
                let result = choose(pin, request, &client, &answers, &priority);
                *chosen[i].lock().unwrap() = Some(result);
            });
        }
    });
    let items: Vec<(Candidate, Option<String>)> = chosen
        .into_iter()
        .map(|slot| slot.into_inner().unwrap().expect("every pin was tried"))
        .collect::<Result<_>>()?;
    let paths = index::fetch_all_lazy(&items, request.index, &client, request.parallel.max(1))?;
    let mut wheels = Vec::new();
    for ((pin, (candidate, _)), path) in pinned.iter().zip(&items).zip(paths) {
        let sha256 = match &candidate.sha256 {
            Some(s) => s.clone(),
            None => sha256_file(&path)?
                .trim_start_matches("sha256:")
                .to_string(),
        };
        let wheel = ResolvedWheel {
            name: pin.name.clone(),
            normalised: PackageName::new(&pin.name),
            version: pin.version.clone(),
            filename: candidate.filename.clone(),
            url: candidate.url.clone(),
            sha256,
            path,
            sdist: None,
            vcs: None,
        };
        wheels.push(if candidate.is_wheel() {
            wheel
        } else {
            build_from_sdist(wheel, request)
                .with_context(|| format!("{}:{}", pin.file.display(), pin.line))?
        });
    }
    for pin in git_pins {
        wheels.push(
            build_from_git(pin, None, request)
                .with_context(|| format!("{}:{}: {}", pin.file.display(), pin.line, pin.text()))?,
        );
    }
    wheels.extend(request.local_wheels.iter().cloned());
    wheels.sort_by(|a, b| a.normalised.cmp(&b.normalised));
    let pins = with_built_versions(&pins, &wheels);
    check_pin_set(request.store, &pins, &wheels, request.target, &env)?;
    Ok(Resolution {
        lock: fresh_lock(&wheels),
        wheels,
        already_in_base,
        from_lock: false,
    })
}

/// The wheels of an up-to-date lock as [`resolve`] would give them, but
/// none fetched: each `path` is where the wheel is (`--find-links`, the
/// cache) or would be. For a build whose layers the lock predicts (see
/// `BlobStore::predicting`), which opens no wheel. `None` when there is no
/// lock, it is out of date, or it has local (`--dallinger-src`) wheels.
pub fn locked_unfetched(request: &ResolveRequest) -> Result<Option<Resolution>> {
    let Some(lock) = &request.lock else {
        return Ok(None);
    };
    if !request.local_wheels.is_empty() {
        return Ok(None);
    }
    let parsed = parse_file(request.requirements)?;
    let env = MarkerEnv::for_target(request.target);
    let pins = pins_for_target(&parsed, &env)?;
    let local = BTreeSet::new();
    let (needed, already_in_base) = split_by_base(&pins, request.target, &local);
    if stale_reason(lock, &request.inputs, &needed, &local).is_some() {
        return Ok(None);
    }
    let mut wheels = Vec::new();
    for p in &lock.packages {
        let wheel = p
            .wheels
            .first()
            .with_context(|| format!("{} lists no wheel for {}", crate::plan::LOCK_FILE, p.name))?;
        let sha256 = &wheel.hashes.sha256;
        wheels.push(ResolvedWheel {
            name: p.name.clone(),
            normalised: PackageName::new(&p.name),
            version: p.version.clone(),
            filename: wheel.name.clone(),
            url: wheel.url.clone(),
            sha256: sha256.clone(),
            path: locked_local_path(&wheel.name, sha256, request)
                .unwrap_or_else(|| request.index.cache_path(sha256, &wheel.name)),
            sdist: p.sdist.as_ref().map(|s| SdistSource {
                filename: s.name.clone(),
                url: s.url.clone(),
                sha256: s.hashes.sha256.clone(),
            }),
            vcs: p.vcs.clone(),
        });
    }
    wheels.sort_by(|a, b| a.normalised.cmp(&b.normalised));
    Ok(Some(Resolution {
        lock: lock.clone(),
        wheels,
        already_in_base,
        from_lock: true,
    }))
}

/// Pins the base lacks (or has at another version), and those it has;
/// those built from `local` sources in neither.
fn split_by_base(
    pins: &BTreeMap<PackageName, PinnedPackage>,
    target: &Target,
    local: &BTreeSet<PackageName>,
) -> (BTreeMap<PackageName, PinnedPackage>, Vec<String>) {
    let mut needed = BTreeMap::new();
    let mut in_base = Vec::new();
    for (key, pin) in pins.iter().filter(|(k, _)| !local.contains(*k)) {
        match target.installed.get(key) {
            // A base's version that is not PEP 440 is the pin's only when
            // written alike.
            Some(dist)
                if same_version(&dist.version, &pin.version)
                    .unwrap_or(dist.version == pin.version) =>
            {
                in_base.push(format!("{}=={}", pin.name, pin.version))
            }
            _ => {
                needed.insert(key.clone(), pin.clone());
            }
        }
    }
    (needed, in_base)
}

fn choose(
    pin: &PinnedPackage,
    request: &ResolveRequest,
    client: &LazyClient,
    answers: &IndexAnswers,
    priority: &dyn Fn(&str) -> Option<usize>,
) -> Result<(Candidate, Option<String>)> {
    let place = format!("{}:{}", pin.file.display(), pin.line);
    if let Some(url) = &pin.url {
        let filename = url
            .rsplit('/')
            .next()
            .unwrap_or(url)
            .split(['#', '?'])
            .next()
            .unwrap_or_default()
            .to_string();
        let sha = pin
            .hashes
            .first()
            .map(|h| h.trim_start_matches("sha256:").to_string());
        let candidate = Candidate {
            filename,
            url: url.clone(),
            sha256: sha.clone(),
            requires_python: None,
            yanked: None,
            size: None,
            index: "direct URL".into(),
        };
        return Ok((candidate, sha));
    }
    // What the indexes said before, when it leads to a file in the wheel
    // cache; else (or when it has no file for this target) they are asked.
    let mut ask = false;
    let candidate = loop {
        let listing = index::list_pin_files(
            &pin.name,
            &pin.version,
            request.index,
            &|| client.get(),
            Some(answers),
            ask,
        )
        .with_context(|| format!("{place}: {}=={}", pin.name, pin.version))?;
        match choose_file(&listing.files, pin, request, &place, priority) {
            Ok(candidate) if listing.remembered && !in_wheel_cache(&candidate, request.index) => {
                ask = true
            }
            Err(_) if listing.remembered => ask = true,
            chosen => break chosen?,
        }
    };
    // A pin with hashes accepts only those files, as pip's hash checking does.
    let expected = if pin.hashes.is_empty() {
        None
    } else {
        let actual = candidate.sha256.clone().unwrap_or_default();
        match pin
            .hashes
            .iter()
            .find(|h| h.trim_start_matches("sha256:") == actual)
        {
            Some(h) => Some(h.trim_start_matches("sha256:").to_string()),
            None => Some(pin.hashes[0].trim_start_matches("sha256:").to_string()),
        }
    };
    Ok((candidate, expected))
}

/// The file of `pin` to fetch from `files`: its best wheel for the
/// target, else (with --build-sdists) its sdist.
fn choose_file(
    files: &[Candidate],
    pin: &PinnedPackage,
    request: &ResolveRequest,
    place: &str,
    priority: &dyn Fn(&str) -> Option<usize>,
) -> Result<Candidate> {
    if files.is_empty() {
        if request.index.offline {
            bail!(
                "{place}: {}=={} is neither in the wheel cache nor in --find-links, and --offline allows no network:                  build once with network (or run `dallinger-oci lock`) to fill the cache",
                pin.name,
                pin.version
            );
        }
        bail!(
            "{place}: no files of {} are published on {}",
            pin.name,
            request.index.indexes().collect::<Vec<_>>().join(", ")
        );
    }
    let selected = index::select(
        files,
        &pin.version,
        priority,
        request.target.python_version,
        true,
    );
    Ok(match selected {
        Ok(wheel) => wheel.clone(),
        // No wheel fits: build one from the sdist when asked to.
        Err(SelectError::SdistOnly { .. } | SelectError::NoWheel { .. })
            if request.sdists.is_some() && index::select_sdist(files, &pin.version).is_some() =>
        {
            index::select_sdist(files, &pin.version).unwrap().clone()
        }
        Err(e) => bail!("{place}: {e} (target: {})", describe_target(request.target)),
    })
}

/// Whether `candidate` is in the wheel cache already (no download).
fn in_wheel_cache(candidate: &Candidate, config: &IndexConfig) -> bool {
    candidate.sha256.as_ref().is_some_and(|hex| {
        std::fs::metadata(config.cache_path(hex, &candidate.filename))
            .is_ok_and(|m| m.is_file() && candidate.size.is_none_or(|s| s == m.len()))
    })
}

/// The wheel built from the fetched sdist `fetched` (whose fields describe
/// the sdist), recording where it came from.
fn build_from_sdist(fetched: ResolvedWheel, request: &ResolveRequest) -> Result<ResolvedWheel> {
    let builder = request
        .sdists
        .context("an sdist was chosen without --build-sdists")?;
    let built = builder.build(
        &fetched.path,
        &fetched.sha256,
        &fetched.name,
        &fetched.version,
        request.target,
        request.index,
    )?;
    Ok(ResolvedWheel {
        filename: built.filename.clone(),
        url: built.filename,
        sha256: built.sha256,
        path: built.path,
        sdist: Some(SdistSource {
            filename: fetched.filename,
            url: fetched.url,
            sha256: fetched.sha256,
        }),
        ..fetched
    })
}

fn describe_target(target: &Target) -> String {
    let (a, b, c) = target.python_version;
    match target.glibc {
        Some((g1, g2)) => format!(
            "CPython {a}.{b}.{c} on linux/{} with glibc {g1}.{g2}",
            target.arch
        ),
        None => format!("CPython {a}.{b}.{c} on linux/{}", target.arch),
    }
}

/// The pins with the versions of the wheels built from git and local
/// sources (known only now), and a pin for a local source that had none.
fn with_built_versions(
    pins: &BTreeMap<PackageName, PinnedPackage>,
    wheels: &[ResolvedWheel],
) -> BTreeMap<PackageName, PinnedPackage> {
    let mut pins = pins.clone();
    for wheel in wheels {
        let pin = pins
            .entry(wheel.normalised.clone())
            .or_insert_with(|| PinnedPackage {
                name: wheel.name.clone(),
                version: wheel.version.clone(),
                extras: Vec::new(),
                hashes: Vec::new(),
                url: None,
                git: None,
                file: PathBuf::from("(local source)"),
                line: 0,
            });
        pin.version = wheel.version.clone();
    }
    pins
}

/// A git requirement's wheel: its revision resolved to a commit (the
/// `locked` one when the lock has it), the source at that commit built
/// like an sdist.
fn build_from_git(
    pin: &PinnedPackage,
    locked: Option<&str>,
    request: &ResolveRequest,
) -> Result<ResolvedWheel> {
    let git: &GitUrl = pin.git.as_ref().context("not a git requirement")?;
    let builder = request
        .sdists
        .context("a git requirement needs --build-sdists")?;
    let commit = match locked {
        Some(commit) => commit.to_string(),
        None if request.index.offline
            && !git
                .revision
                .as_deref()
                .is_some_and(git_source::is_full_commit) =>
        {
            bail!(
                "resolving `{}` needs the repository, and --offline allows no network: lock it \
                 once with network (`dallinger-oci lock`), or pin a full commit id",
                git.revision.as_deref().unwrap_or("HEAD")
            )
        }
        None => {
            let resolved = git_source::resolve_revision(git)?;
            if let Some(branch) = &resolved.moving {
                eprintln!(
                    "warning: {}:{}: {} follows the branch `{branch}`, now at commit {}: \
                     until a lock records it (`dallinger-oci lock`), every build follows the \
                     branch; pin a tag or commit to stop that",
                    pin.file.display(),
                    pin.line,
                    pin.text(),
                    resolved.commit
                );
            }
            resolved.commit
        }
    };
    let normalised = PackageName::new(&pin.name);
    let archive = git_source::source_archive(
        &request.index.cache_dir.join("git"),
        git,
        &commit,
        &normalised,
        request.index.offline,
    )?;
    let sha256 = sha256_file(&archive)?
        .trim_start_matches("sha256:")
        .to_string();
    let built = builder.build(
        &archive,
        &sha256,
        &pin.name,
        &format!("at {}", &commit[..12]),
        request.target,
        request.index,
    )?;
    let vcs = LockedVcs {
        kind: "git".into(),
        url: git.redacted_url(),
        requested_revision: git.revision.clone(),
        commit_id: commit,
        subdirectory: git.subdirectory.clone(),
    };
    source_built_wheel(&pin.name, built, Some(vcs))
}

/// A wheel built from a git commit or a source tree; its version is known
/// only from its name.
pub(crate) fn source_built_wheel(
    name: &str,
    built: BuiltWheel,
    vcs: Option<LockedVcs>,
) -> Result<ResolvedWheel> {
    let parsed = WheelFilename::parse(&built.filename)
        .with_context(|| format!("the built wheel has a bad name: {}", built.filename))?;
    let version = normalised_version(&parsed.version);
    Ok(ResolvedWheel {
        name: name.to_string(),
        normalised: PackageName::new(name),
        version,
        filename: built.filename.clone(),
        url: built.filename,
        sha256: built.sha256,
        path: built.path,
        sdist: None,
        vcs,
    })
}

/// Every dependency of every pin (on this target) must be pinned or in the base.
fn check_pin_set(
    store: &BlobStore,
    pins: &BTreeMap<PackageName, PinnedPackage>,
    wheels: &[ResolvedWheel],
    target: &Target,
    env: &MarkerEnv,
) -> Result<()> {
    let mut requires: BTreeMap<PackageName, Vec<String>> = BTreeMap::new();
    for wheel in wheels {
        requires.insert(wheel.normalised.clone(), requires_dist(store, wheel)?);
    }
    // Packages the base provides count as pinned; their own dependencies are
    // the base's business.
    let mut all = pins.clone();
    for (key, dist) in &target.installed {
        all.entry(key.clone()).or_insert_with(|| PinnedPackage {
            name: dist.name.clone(),
            version: dist.version.clone(),
            extras: Vec::new(),
            hashes: Vec::new(),
            url: None,
            git: None,
            file: PathBuf::from("(base image)"),
            line: 0,
        });
    }
    let deps_of = |name: &str, extras: &[String]| -> Vec<Dependency> {
        requires
            .get(name)
            .and_then(|r| applicable_dependencies(r, extras, env).ok())
            .unwrap_or_default()
    };
    check_closed(&all, &deps_of, target.python_version)?;
    Ok(())
}

/// A wheel's `Requires-Dist`, read from its metadata once and then
/// remembered under its sha256 (which the wheel cache verified).
fn requires_dist(store: &BlobStore, wheel: &ResolvedWheel) -> Result<Vec<String>> {
    let key = format!("requires-dist/1\n{}\n{}", wheel.sha256, wheel.filename);
    crate::image::memoised(store, "requires", &key, || {
        let info = WheelArchive::open(&wheel.path)
            .and_then(|mut archive| archive.dist_info())
            .with_context(|| format!("reading the metadata of {}", wheel.filename))?;
        Ok(info.metadata.requires_dist)
    })
}

fn stale_reason(
    lock: &Lock,
    inputs: &LockInputs,
    needed: &BTreeMap<PackageName, PinnedPackage>,
    local: &BTreeSet<PackageName>,
) -> Option<String> {
    let ours = &lock.tool.ours;
    if ours.base_digest != inputs.base_digest {
        return Some(format!(
            "base {} is now {}",
            ours.base_digest, inputs.base_digest
        ));
    }
    if ours.platform != inputs.platform {
        return Some(format!(
            "platform {} is now {}",
            ours.platform, inputs.platform
        ));
    }
    if ours.requirements_sha256 != inputs.requirements_sha256 {
        return Some("the requirements changed".into());
    }
    // A git package is compared by its source as written; its commit is
    // what the lock is for.
    let locked: BTreeMap<PackageName, String> = lock
        .packages
        .iter()
        .map(|p| (PackageName::new(&p.name), p))
        .filter(|(k, _)| !local.contains(k))
        .map(|(k, p)| {
            let source = match &p.vcs {
                Some(v) => format!(
                    "git {} {:?} {:?}",
                    v.url, v.requested_revision, v.subdirectory
                ),
                None => p.version.clone(),
            };
            (k, source)
        })
        .collect();
    let wanted: BTreeMap<PackageName, String> = needed
        .iter()
        .map(|(k, p)| {
            let source = match &p.git {
                Some(g) => format!(
                    "git {} {:?} {:?}",
                    g.redacted_url(),
                    g.revision,
                    g.subdirectory
                ),
                None => p.version.clone(),
            };
            (k.clone(), source)
        })
        .collect();
    (locked != wanted).then(|| "its packages differ from the pins".into())
}

fn fetch_locked(
    lock: &Lock,
    request: &ResolveRequest,
    needed: &BTreeMap<PackageName, PinnedPackage>,
    local: &BTreeSet<PackageName>,
) -> Result<Vec<ResolvedWheel>> {
    let (from_git, regular): (Vec<&LockedPackage>, Vec<&LockedPackage>) = lock
        .packages
        .iter()
        .filter(|p| !local.contains(&PackageName::new(&p.name)))
        .partition(|p| p.vcs.is_some());
    let mut wheels = Vec::new();
    for p in from_git {
        wheels.push(locked_git_wheel(p, request, needed)?);
    }
    let client = LazyClient::default();
    // Per package: what to fetch (the wheel, or the sdist to build it
    // again), and the locked wheel.
    let mut items: Vec<(Candidate, Option<String>)> = Vec::new();
    let mut rebuild: Vec<bool> = Vec::new();
    let mut recorded_urls: Vec<String> = Vec::new();
    for p in &regular {
        let wheel = p
            .wheels
            .first()
            .with_context(|| format!("{} lists no wheel for {}", crate::plan::LOCK_FILE, p.name))?;
        let local = locked_local_path(&wheel.name, &wheel.hashes.sha256, request);
        let from = match (&p.sdist, &local) {
            (Some(sdist), None) => {
                if request.sdists.is_none() {
                    bail!(
                        "{} {}'s wheel was built from its sdist and is not in the cache: pass \
                         --build-sdists to build it again (or --find-links DIR holding {})",
                        p.name,
                        p.version,
                        wheel.name
                    );
                }
                rebuild.push(true);
                sdist
            }
            _ => {
                rebuild.push(false);
                wheel
            }
        };
        // A file locked by name only comes from --find-links or the cache;
        // one locked with its index URL is taken from there too when they
        // hold it (its sha256 is checked as it is copied), so a locked
        // offline build can be fed a wheel directory. The lock's URL is
        // what the build records.
        let remote = from.url.starts_with("http://") || from.url.starts_with("https://");
        let at_hand = locked_local_path(&from.name, &from.hashes.sha256, request);
        let url = match at_hand {
            Some(path) => path.to_string_lossy().into_owned(),
            None if remote => from.url.clone(),
            None => request
                .index
                .cache_path(&from.hashes.sha256, &from.name)
                .to_string_lossy()
                .into_owned(),
        };
        recorded_urls.push(if remote {
            from.url.clone()
        } else {
            url.clone()
        });
        items.push((
            Candidate {
                filename: from.name.clone(),
                url,
                sha256: Some(from.hashes.sha256.clone()),
                requires_python: None,
                yanked: None,
                size: None,
                index: "lock".into(),
            },
            Some(from.hashes.sha256.clone()),
        ));
    }
    let paths = index::fetch_all_lazy(&items, request.index, &client, request.parallel.max(1))?;
    for ((((p, (c, _)), path), rebuild), url) in regular
        .iter()
        .zip(items)
        .zip(paths)
        .zip(rebuild)
        .zip(recorded_urls)
    {
        let fetched = ResolvedWheel {
            name: p.name.clone(),
            normalised: PackageName::new(&p.name),
            version: p.version.clone(),
            filename: c.filename,
            url,
            sha256: c.sha256.unwrap_or_default(),
            path,
            sdist: p.sdist.as_ref().map(|s| SdistSource {
                filename: s.name.clone(),
                url: s.url.clone(),
                sha256: s.hashes.sha256.clone(),
            }),
            vcs: None,
        };
        if !rebuild {
            wheels.push(fetched);
            continue;
        }
        let built = build_from_sdist(fetched, request)?;
        check_rebuilt(p, &built, "its sdist", request)?;
        wheels.push(built);
    }
    Ok(wheels)
}

/// A rebuilt wheel must be the locked one, byte for byte.
fn check_rebuilt(
    p: &LockedPackage,
    built: &ResolvedWheel,
    source: &str,
    request: &ResolveRequest,
) -> Result<()> {
    let locked = &p.wheels[0];
    if built.sha256 != locked.hashes.sha256 {
        bail!(
            "building {} {} from {source} again gave {} with sha256 {}, but {} has {} with \
             sha256 {}: the build is not reproducible with the builder {}; run \
             `dallinger-oci lock` to accept the new wheel",
            p.name,
            p.version,
            built.filename,
            built.sha256,
            crate::plan::LOCK_FILE,
            locked.name,
            locked.hashes.sha256,
            request
                .sdists
                .map(|b| b.description.as_str())
                .unwrap_or("?")
        );
    }
    Ok(())
}

/// A locked git package's wheel: from the cache (no git, no network), else
/// built again at the locked commit and checked against the lock.
fn locked_git_wheel(
    p: &LockedPackage,
    request: &ResolveRequest,
    needed: &BTreeMap<PackageName, PinnedPackage>,
) -> Result<ResolvedWheel> {
    let vcs = p.vcs.as_ref().context("not a git package")?;
    let wheel = p
        .wheels
        .first()
        .with_context(|| format!("{} lists no wheel for {}", crate::plan::LOCK_FILE, p.name))?;
    let cached = locked_local_path(&wheel.name, &wheel.hashes.sha256, request).filter(|path| {
        sha256_file(path).is_ok_and(|h| h.trim_start_matches("sha256:") == wheel.hashes.sha256)
    });
    if let Some(path) = cached {
        return Ok(ResolvedWheel {
            name: p.name.clone(),
            normalised: PackageName::new(&p.name),
            version: p.version.clone(),
            filename: wheel.name.clone(),
            url: wheel.name.clone(),
            sha256: wheel.hashes.sha256.clone(),
            path,
            sdist: None,
            vcs: Some(vcs.clone()),
        });
    }
    if request.sdists.is_none() {
        bail!(
            "{} {}'s wheel was built from {} at commit {} and is not in the cache: pass \
             --build-sdists to build it again (or --find-links DIR holding {})",
            p.name,
            p.version,
            vcs.url,
            vcs.commit_id,
            wheel.name
        );
    }
    // The requirement's own URL, which may carry credentials the lock must not.
    let pin = needed
        .get(&PackageName::new(&p.name))
        .with_context(|| format!("{} is locked but not required", p.name))?;
    let built = build_from_git(pin, Some(&vcs.commit_id), request)
        .with_context(|| format!("{}:{}: {}", pin.file.display(), pin.line, pin.text()))?;
    check_rebuilt(p, &built, &format!("commit {}", vcs.commit_id), request)?;
    Ok(built)
}

/// A locked file known by name and hash, in --find-links or the cache.
fn locked_local_path(name: &str, sha256: &str, request: &ResolveRequest) -> Option<PathBuf> {
    request
        .index
        .find_links
        .iter()
        .map(|dir| dir.join(name))
        .chain(std::iter::once(request.index.cache_path(sha256, name)))
        .find(|p| p.is_file())
}

/// A URL fit for the lock: a wheel from --find-links or built here is
/// recorded by name only, as the lock must not hold this machine's paths.
fn portable_url(url: &str, filename: &str) -> String {
    if url.starts_with("http://") || url.starts_with("https://") {
        url.to_string()
    } else {
        filename.to_string()
    }
}

fn lock_of(
    request: &ResolveRequest,
    wheels: &[ResolvedWheel],
    local: &BTreeSet<PackageName>,
) -> Lock {
    let (a, b, c) = request.target.python_version;
    let mut inputs = request.inputs.clone();
    if let Some(builder) = request
        .sdists
        .filter(|_| wheels.iter().any(|w| w.sdist.is_some() || w.vcs.is_some()))
    {
        inputs.builder = Some(builder.description.clone());
        inputs.builder_digest = builder.resolved_digest().map(str::to_string);
    }
    Lock {
        lock_version: "1.0".into(),
        created_by: "dallinger-oci".into(),
        requires_python: format!("=={a}.{b}.{c}"),
        packages: wheels
            .iter()
            .filter(|w| !local.contains(&w.normalised))
            .map(|w| LockedPackage {
                name: w.name.clone(),
                version: w.version.clone(),
                sdist: w.sdist.as_ref().map(|s| LockedFile {
                    name: s.filename.clone(),
                    url: portable_url(&s.url, &s.filename),
                    hashes: Hashes {
                        sha256: s.sha256.clone(),
                    },
                }),
                vcs: w.vcs.clone(),
                wheels: vec![LockedFile {
                    name: w.filename.clone(),
                    url: portable_url(&w.url, &w.filename),
                    hashes: Hashes {
                        sha256: w.sha256.clone(),
                    },
                }],
            })
            .collect(),
        tool: crate::plan::ToolSection {
            ours: inputs,
            platforms: Vec::new(),
        },
    }
}
