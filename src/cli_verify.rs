//! `dallinger-oci verify`: the command line of `src/verify`. Exit codes:
//! 0 reproduced, 1 not reproduced (the differences printed), 2 not
//! verified (an error: the image, the experiment or the rebuild failed).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;

use dallinger_oci::registry::push::PushOptions;
use dallinger_oci::verify::{self, Outcome, VerifyRequest};

use super::{build_request, one_line, BuildArgs};

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The image to verify: REPO@sha256:HEX (a registry), oci:DIR[:TAG] or
    /// docker-archive:FILE.
    #[arg(long, value_name = "REF")]
    image: String,
    /// The experiment directory and the build options of the original
    /// build (another option gives another image); with no directory, the
    /// image's source and revision labels name a repository and commit,
    /// cloned into a temporary directory. The rebuild uses a fresh
    /// temporary cache unless --cache-dir is given.
    #[command(flatten)]
    build: BuildArgs,
    /// Where the experiment is inside the repository the labels name.
    #[arg(long, value_name = "DIR")]
    git_subdir: Option<PathBuf>,
    /// Print the whole report (every path) as JSON on standard output.
    #[arg(long)]
    json: bool,
}

pub fn run(mut args: VerifyArgs, matches: Option<&ArgMatches>) -> ExitCode {
    let given =
        |id: &str| matches.and_then(|m| m.value_source(id)) == Some(ValueSource::CommandLine);
    let (exp_given, cache_given) = (given("experiment_dir"), given("cache_dir"));
    match verify_command(&mut args, exp_given, cache_given) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::from(2)
        }
    }
}

/// True when the image is reproduced.
fn verify_command(args: &mut VerifyArgs, exp_given: bool, cache_given: bool) -> Result<bool> {
    if exp_given && args.git_subdir.is_some() {
        bail!(
            "--git-subdir is for verifying from the image's labels: drop it, or drop the \
             experiment directory"
        );
    }
    // DALLINGER_OCI_CACHE is not --cache-dir: a rebuild that reused
    // remembered layers would not show that the inputs still make them.
    let _fresh = if cache_given {
        None
    } else {
        let dir = tempfile::Builder::new()
            .prefix("dallinger-oci-verify-cache-")
            .tempdir()?;
        args.build.cache_dir = Some(dir.path().to_path_buf());
        Some(dir)
    };
    let request = VerifyRequest {
        image: args.image.clone(),
        build: build_request(&args.build, PushOptions::default(), false, false)?,
        from_labels: (!exp_given).then(|| args.git_subdir.clone()),
    };
    let outcome = verify::verify(request)?;
    let reproduced = matches!(outcome, Outcome::Verified);
    if args.json {
        let value = match &outcome {
            Outcome::Verified => serde_json::json!({"image": args.image, "verified": true}),
            Outcome::Differs(report) => {
                let mut value = serde_json::to_value(report)?;
                value["verified"] = serde_json::json!(false);
                value
            }
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        match &outcome {
            Outcome::Verified => {
                println!("Verified: {} is reproduced bit for bit", args.image)
            }
            Outcome::Differs(report) => print!("{report}"),
        }
    }
    Ok(reproduced)
}
