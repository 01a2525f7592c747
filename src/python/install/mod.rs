//! Installing: wheel files read and checked, installed natively into a
//! layer tree as pip installs them, and optionally byte-compiled.

mod bytecode;
mod installer;
mod wheel;

pub(crate) use bytecode::{BytecodeCompiler, Compiled, WheelFiles};
pub(crate) use installer::read_members;
pub use installer::{install_wheel, InstallError, InstalledWheel};
pub use wheel::{
    parse_record, write_record, CoreMetadata, RecordRow, WheelArchive, WheelError, WheelFilename,
    WheelInfo, WheelMember,
};
