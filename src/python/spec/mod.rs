//! Requirement specs: what the experiment asks for (requirements files,
//! markers, the pin set) and what a distribution's metadata asks for in turn.

mod markers;
mod metadata;
mod names;
mod pins;
mod requirements;

pub use markers::{parse as parse_marker, MarkerEnv, MarkerError};
pub use metadata::{
    applicable_dependencies, header_values, python_satisfies, requires_dist, requires_python,
    Dependency, MetadataError,
};
pub(crate) use metadata::{header, headers_all, parse_headers};
pub use names::{normalise_name, normalised_version, same_version, PackageName};
pub(crate) use pins::check_closed;
pub use pins::{pins_for_target, PinError, PinnedPackage};
pub use requirements::{parse_file, ParsedFile, Requirement, RequirementsError};
