//! The desired-state resources (SPEC §2): their types, their names, the charm profile
//! rules (SPEC §4), and reading them from YAML text.
//!
//! Pure: nothing here talks to LXD or watches files. `crd` derives the
//! CustomResourceDefinitions of the three kinds from the same types.

pub mod crd;
pub mod model;
pub mod names;
pub mod parse;
pub mod profile;
pub mod validate;

pub use model::*;
pub use names::ProfileNames;
pub use parse::{Located, ParsedFile, Problem, parse_file, parse_str};
pub use profile::LxdProfile;
