//! `lxd-mutater crds`: the CustomResourceDefinitions of the three kinds.

use std::process::ExitCode;

pub fn crds() -> ExitCode {
    match crate::resource::crd::crds_yaml() {
        Ok(y) => {
            print!("{y}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write the CRDs: {e}");
            ExitCode::from(1)
        }
    }
}
