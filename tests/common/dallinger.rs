//! The Dallinger release the end-to-end tests pin
//! (fixtures/experiments/dallinger-demo) and what building it needs.

use super::*;

/// The release fixtures/experiments/dallinger-demo pins.
pub const DALLINGER_VERSION: &str = "12.3.0";

/// The `==` pin of `name` in a constraints file.
pub fn pinned(constraints: &str, name: &str) -> String {
    constraints
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}==")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {name}== pin in constraints.txt"))
}

/// The arguments that build psycopg2 (published only as an sdist) from its
/// sdist in the bookworm builder image: `--build-sdists --builder-base …`.
pub fn sdist_build_args() -> Vec<String> {
    vec![
        "--build-sdists".into(),
        "--builder-base".into(),
        python_builder_layout(),
    ]
}
