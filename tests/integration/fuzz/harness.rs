//! The runner every target uses: proptest strategies, run for a share of a
//! time budget instead of a fixed number of cases, with a seed printed on
//! failure and the committed corpus replayed first.
//!
//! The budget is CPU time of the thread that runs the target, not wall
//! time: the targets run in the suite's one test binary beside tests that
//! build images and start containers, and a target gets as many cases there
//! as alone (it takes longer, by what it shares the CPU with). A target also
//! stops at [`WALL_LIMIT`] times its share of wall time, so a starved run
//! still ends.
//!
//! Environment:
//! - `FUZZ_SECONDS`: the budget of all targets together, in CPU seconds
//!   (default 60); each target gets its share from [`TARGETS`].
//!   `FUZZ_SECONDS=600 cargo test --test integration fuzz::` is a
//!   ten-minute run (five on two cores).
//! - `FUZZ_SEED`: a run's seed (printed by every target); with it the same
//!   inputs come in the same order.
//! - `FUZZ_CASES`: run exactly this many generated cases per target,
//!   whatever the time (with `FUZZ_SEED`, replays a failure exactly).
//! - `FUZZ_CASE_LIMIT`: seconds one case may take before the run is stopped
//!   as hung (default 60; inputs are small, a case takes milliseconds).

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use sha2::{Digest, Sha256};

/// Every target and its weight in the budget.
const TARGETS: &[(&str, u32)] = &[
    ("config_txt", 6),
    ("requirements", 8),
    ("image_reference", 4),
    ("www_authenticate", 4),
    ("tar_import", 8),
    ("wheel_metadata", 5),
    ("wheel_record", 7),
    ("debian_control", 6),
    ("debian_relations", 4),
    ("in_release", 8),
];

/// At least this many generated cases, however short the budget.
const MIN_CASES: u64 = 16;

/// A target stops after this many times its budget of wall time, however
/// little CPU it got.
const WALL_LIMIT: u32 = 4;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a whole number")),
    )
}

/// The CPU time `target` may run for.
fn budget(target: &str) -> Duration {
    let total = std::env::var("FUZZ_SECONDS")
        .ok()
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("FUZZ_SECONDS={v:?} is not a number of seconds"))
        })
        .unwrap_or(60.0);
    let weight = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("fuzz target {target} is not listed in harness::TARGETS"))
        .1;
    let sum: u32 = TARGETS.iter().map(|(_, w)| w).sum();
    Duration::from_secs_f64(total * f64::from(weight) / f64::from(sum))
}

/// The CPU time this thread has used (the case checks run on it; helper
/// threads a check starts, such as a parallel writer's, are not counted).
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn run_seed() -> u64 {
    env_u64("FUZZ_SEED").unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        (nanos as u64) ^ (u64::from(std::process::id()) << 32)
    })
}

/// The committed inputs of `target` (`tests/integration/fuzz/corpus/TARGET/*`).
pub fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/integration/fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// The test that runs `target`, for a replay command: libtest names each
/// test's thread after the test (`fuzz::MODULE::TARGET`).
fn test_name(target: &str) -> String {
    std::thread::current()
        .name()
        .map_or_else(|| format!("fuzz::{target}"), str::to_string)
}

/// Stops the process when one case runs for longer than the case limit: a
/// hang must not stall CI until its own time-out, and the message says how
/// to replay the case.
struct Watchdog {
    /// Seconds since `start` at which the current case began, plus one
    /// (0: idle).
    began: Arc<AtomicU64>,
    start: Instant,
}

impl Watchdog {
    fn new(target: &'static str, seed: u64, case: Arc<AtomicU64>) -> Watchdog {
        let limit = env_u64("FUZZ_CASE_LIMIT").unwrap_or(60);
        let began = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let watched = Arc::clone(&began);
        let test = test_name(target);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let b = watched.load(Ordering::SeqCst);
            if b == u64::MAX {
                return;
            }
            if b != 0 && start.elapsed().as_secs() + 1 > b + limit {
                eprintln!(
                    "fuzz target {target}: case {} has run for more than {limit} s (a hang or a \
                     blow-up); replay it with FUZZ_SEED={seed} FUZZ_CASES={} cargo test --test \
                     integration -- --exact {test}",
                    case.load(Ordering::SeqCst),
                    case.load(Ordering::SeqCst) + 1
                );
                std::process::abort();
            }
        });
        Watchdog { began, start }
    }

    fn enter(&self) {
        self.began
            .store(self.start.elapsed().as_secs() + 1, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.began.store(0, Ordering::SeqCst);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.began.store(u64::MAX, Ordering::SeqCst);
    }
}

/// How a target's input is kept as a corpus file and read back from one.
pub struct Bytes<V> {
    pub read: fn(&[u8]) -> V,
    pub write: fn(&V) -> Vec<u8>,
}

/// Where a failing input is written: a file to copy into the corpus.
fn save_failure(target: &str, seed: u64, case: u64, bytes: &[u8]) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("{target}-{seed}-{case}"));
    std::fs::write(&path, bytes).ok()?;
    Some(path)
}

/// Runs `check` on the committed corpus of `target` (read with
/// `bytes.read`) and then on inputs drawn from `strategy` until the target's
/// share of the budget is spent. A failure is shrunk to a small input,
/// saved as a corpus file and reported with the seed that reproduces it.
pub fn fuzz<S, F>(target: &'static str, strategy: S, bytes: Bytes<S::Value>, check: F)
where
    S: Strategy,
    S::Value: Debug,
    F: Fn(S::Value) -> Result<(), TestCaseError>,
{
    let seed = run_seed();
    let case = Arc::new(AtomicU64::new(0));
    let watchdog = Watchdog::new(target, seed, Arc::clone(&case));

    for (path, content) in corpus(target) {
        watchdog.enter();
        let result = check((bytes.read)(&content));
        watchdog.leave();
        if let Err(why) = result {
            panic!(
                "fuzz target {target}: corpus file {} fails: {why}",
                path.display()
            );
        }
    }

    let mut rng_seed = [0u8; 32];
    rng_seed.copy_from_slice(
        &Sha256::new()
            .chain_update(seed.to_le_bytes())
            .chain_update(target.as_bytes())
            .finalize(),
    );
    let config = Config {
        failure_persistence: None,
        max_shrink_time: 60_000,
        max_shrink_iters: 4096,
        max_global_rejects: u32::MAX,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &rng_seed));
    let fixed = env_u64("FUZZ_CASES");
    let budget = budget(target);
    let start = Instant::now();
    let cpu_start = thread_cpu_time();
    let mut n = 0u64;
    loop {
        let done = match fixed {
            Some(cases) => n >= cases,
            None => {
                n >= MIN_CASES
                    && (thread_cpu_time() - cpu_start >= budget
                        || start.elapsed() >= budget * WALL_LIMIT)
            }
        };
        if done {
            break;
        }
        case.store(n, Ordering::SeqCst);
        let tree = strategy
            .new_tree(&mut runner)
            .unwrap_or_else(|e| panic!("fuzz target {target}: cannot generate an input: {e}"));
        watchdog.enter();
        let result = runner.run_one(tree, &check);
        watchdog.leave();
        match result {
            Ok(_) => {}
            Err(TestError::Fail(why, input)) => {
                let saved = save_failure(target, seed, n, &(bytes.write)(&input));
                let mut shown = format!("{input:?}");
                if shown.len() > 2000 {
                    let cut = (0..=2000)
                        .rev()
                        .find(|&i| shown.is_char_boundary(i))
                        .unwrap_or(0);
                    shown = format!("{}… ({} characters)", &shown[..cut], shown.len());
                }
                panic!(
                    "fuzz target {target} fails on case {n} (FUZZ_SEED={seed}): {why}\n\
                     minimal input: {shown}\n\
                     saved as: {}\n\
                     replay: FUZZ_SEED={seed} FUZZ_CASES={} cargo test --test integration -- \
                     --exact {}",
                    saved.map_or("(could not be saved)".into(), |p| p.display().to_string()),
                    n + 1,
                    test_name(target)
                )
            }
            Err(TestError::Abort(why)) => panic!("fuzz target {target} aborted: {why}"),
        }
        n += 1;
    }
    eprintln!(
        "fuzz target {target}: {n} cases in {:.1} s of CPU, {:.1} s of wall time (FUZZ_SEED={seed})",
        (thread_cpu_time() - cpu_start).as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}

/// `Err` with a message when `condition` is false, for use in checks.
#[macro_export]
macro_rules! ensure {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err(proptest::test_runner::TestCaseError::fail(format!($($message)+)));
        }
    };
}
