//! `lxd-mutater import juju-status [FILE|-]` and `lxd-mutater import lxd`: an existing
//! Juju deployment as resources. The YAML goes to stdout, what was skipped or adapted to
//! stderr; exit 1 when something could not be imported (the rest is still printed, so
//! that the notes can be read against it) or nothing could be read.
//!
//! This file reads the input (a file, stdin, or an LXD listing) and prints; the
//! conversion is `crate::import`'s.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use crate::cli::{ImportLxdArgs, ImportSource};
use crate::import::{Import, ImportError, MAX_INPUT_BYTES, juju_status, lxd};
use crate::lxd::LxdApi;
use crate::resource::Kind;
use crate::resource::names::check_resource_name;
use crate::status::metrics::Telemetry;

pub fn import(source: ImportSource) -> ExitCode {
    match source {
        ImportSource::JujuStatus { file } => {
            let imported =
                read(file.as_deref()).and_then(|(name, text)| juju_status::convert(&name, &text));
            match imported {
                Ok(i) => print(&i),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        ImportSource::Lxd(args) => super::runtime(from_lxd(*args)),
    }
}

/// The text of `file` (`-` or none: stdin), refused past the size cap before more is read.
fn read(file: Option<&Path>) -> Result<(String, String), ImportError> {
    let stdin = file.is_none_or(|f| f == Path::new("-"));
    let name = match file {
        Some(f) if !stdin => f.display().to_string(),
        _ => "<stdin>".to_string(),
    };
    let io = |source| ImportError::Read {
        file: name.clone(),
        source,
    };
    let mut bytes = Vec::new();
    if stdin {
        if std::io::stdin().is_terminal() {
            eprintln!(
                "reading `juju status --format=yaml --no-color` from standard input (end it with Ctrl-D)"
            );
        }
        std::io::stdin()
            .lock()
            .take(MAX_INPUT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
    } else {
        let f = std::fs::File::open(file.unwrap_or(Path::new("-"))).map_err(io)?;
        f.take(MAX_INPUT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
    }
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(ImportError::TooLarge {
            file: name,
            cap: MAX_INPUT_BYTES,
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| ImportError::NotUtf8 { file: name.clone() })?;
    Ok((name, text))
}

async fn from_lxd(args: ImportLxdArgs) -> anyhow::Result<ExitCode> {
    super::init_logs("text", "warn");
    if let Some(m) = &args.machine {
        check_resource_name("--machine", m).map_err(anyhow::Error::msg)?;
    }
    if let Some(m) = &args.model {
        check_resource_name("--model", m).map_err(anyhow::Error::msg)?;
    }
    let telemetry = Telemetry::new();
    let (client, names) = super::connect(&args.lxd, &telemetry)?;
    super::check_project(&client, args.lxd.allow_shared_profiles).await?;
    let instances = super::listing(client.list_instances().await)?;
    let profiles = super::listing(client.list_profiles().await)?;
    let opts = lxd::Options {
        names,
        machine: args.machine,
        model: args.model,
        project: args.lxd.lxd_project,
    };
    let imported = lxd::convert(&instances, &profiles, &opts)?;
    Ok(print(&imported))
}

/// The resources on stdout, the notes and a count on stderr.
fn print(imported: &Import) -> ExitCode {
    let yaml = match imported.to_yaml() {
        Ok(y) => y,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(yaml.as_bytes()).and_then(|()| out.flush()) {
        eprintln!("error: writing the resources: {e}");
        return ExitCode::from(1);
    }
    for n in &imported.notes {
        eprintln!("{n}");
    }
    let count = |k: Kind| imported.resources().filter(|r| r.kind() == k).count();
    eprintln!(
        "imported {} application(s), {} machine(s), {} container(s){}",
        count(Kind::Application),
        count(Kind::Machine),
        count(Kind::Container),
        if imported.has_errors() {
            "; some could not be (see the errors above)"
        } else {
            ""
        }
    );
    if imported.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
