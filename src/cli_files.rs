//! `dallinger-oci files`: what goes into `/experiment`, generated files
//! marked, and what was left out by which rule. `--json` has the keys of
//! Dallinger 12.4's `dallinger deployment-files list --json`
//! (`destinations`, `file_count`, `total_size`: the files copied from the
//! experiment) and ours beside them.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use dallinger_oci::experiment::{Experiment, FileKind, LoadOptions, Selection};

#[derive(clap::Args)]
pub struct FilesArgs {
    /// The experiment directory (holding config.txt and experiment.py).
    #[arg(default_value = ".")]
    experiment_dir: PathBuf,
    /// Print JSON: `destinations`, `file_count` and `total_size` as
    /// `dallinger deployment-files list --json` has them, with `entries`
    /// (everything in /experiment), `generated`, `excluded` and `selection`.
    #[arg(long)]
    json: bool,
}

struct Entry<'a> {
    destination: &'a str,
    kind: &'static str,
    size: u64,
    executable: bool,
    target: Option<&'a str>,
}

pub fn run(args: FilesArgs) -> Result<()> {
    let experiment = Experiment::load(
        &args.experiment_dir,
        &LoadOptions {
            home_config: dirs::home_dir().map(|h| h.join(".dallingerconfig")),
        },
    )?;
    let listing = &experiment.listing;
    let generated = |rel: &str| listing.generated.iter().any(|g| g == rel);
    let mut entries = Vec::new();
    for file in &experiment.files {
        let entry = match &file.kind {
            FileKind::Generated { bytes, executable } => Entry {
                destination: &file.rel,
                kind: if generated(&file.rel) {
                    "generated"
                } else {
                    "file"
                },
                size: bytes.len() as u64,
                executable: *executable,
                target: None,
            },
            FileKind::File { source, executable } => Entry {
                destination: &file.rel,
                kind: "file",
                size: fs_err::metadata(source)
                    .with_context(|| format!("cannot list {}", file.rel))?
                    .len(),
                executable: *executable,
                target: None,
            },
            FileKind::Symlink { target } => Entry {
                destination: &file.rel,
                kind: "symlink",
                size: 0,
                executable: false,
                target: Some(target),
            },
        };
        entries.push(entry);
    }
    let copied: Vec<&Entry> = entries.iter().filter(|e| e.kind != "generated").collect();
    let total_size: u64 = copied.iter().map(|e| e.size).sum();
    let selection = match listing.selection {
        Selection::DeployToml => "deploy.toml",
        Selection::Dallinger => "dallinger",
    };

    if args.json {
        let value = json!({
            "destinations": copied.iter().map(|e| e.destination).collect::<Vec<_>>(),
            "file_count": copied.len(),
            "total_size": total_size,
            "selection": selection,
            "generated": listing.generated,
            "entries": entries.iter().map(|e| {
                let mut entry = json!({
                    "destination": e.destination,
                    "kind": e.kind,
                    "size": e.size,
                    "executable": e.executable,
                });
                if let Some(target) = e.target {
                    entry["target"] = json!(target);
                }
                entry
            }).collect::<Vec<_>>(),
            "excluded": listing.excluded.iter().map(|x| json!({
                "path": x.path,
                "directory": x.directory,
                "rule": x.rule,
                "value": x.value,
            })).collect::<Vec<_>>(),
        });
        return print(serde_json::to_string_pretty(&value)? + "\n");
    }

    let mut out = String::new();
    match listing.selection {
        Selection::DeployToml => writeln!(out, "Selected by deploy.toml (Dallinger 12.4 rules)")?,
        Selection::Dallinger => writeln!(
            out,
            "Selected by Dallinger's exclusion list, git and .dallingerignore"
        )?,
    }
    for e in &entries {
        match (e.kind, e.target) {
            ("generated", _) => writeln!(out, "{}  (generated)", e.destination)?,
            (_, Some(target)) => writeln!(out, "{} -> {target}", e.destination)?,
            _ => writeln!(out, "{}", e.destination)?,
        }
    }
    if !listing.excluded.is_empty() {
        writeln!(out, "Excluded:")?;
        for x in &listing.excluded {
            let slash = if x.directory { "/" } else { "" };
            match &x.value {
                Some(value) => writeln!(out, "  {}{slash}  {} {value:?}", x.path, x.rule)?,
                None => writeln!(out, "  {}{slash}  {}", x.path, x.rule)?,
            }
        }
    }
    let count = |n: usize| match n {
        1 => "1 file".to_string(),
        n => format!("{n} files"),
    };
    writeln!(
        out,
        "Summary: {}, {total_size} bytes from the experiment; {} generated",
        count(copied.len()),
        count(entries.len() - copied.len())
    )?;
    print(out)
}

/// Prints `text` whole; a reader that stops early (`| head`) is no error.
fn print(text: String) -> Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write the listing to standard output"),
    }
}
