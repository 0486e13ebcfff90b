//! `fake-apiserver --listen 127.0.0.1:6443 [--kubeconfig PATH] [--quiet]`: serves the
//! fake Kubernetes API until killed, for the cluster-free demo.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use fake_apiserver::{Config, FakeApiServer};

const USAGE: &str = "usage: fake-apiserver [--listen ADDR] [--kubeconfig PATH] [--quiet]
  --listen ADDR      where to serve plain HTTP (default 127.0.0.1:6443)
  --kubeconfig PATH  write a kubeconfig pointing at the server there
  --quiet            do not log each request to stderr";

struct Args {
    listen: SocketAddr,
    kubeconfig: Option<PathBuf>,
    quiet: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 6443)),
        kubeconfig: None,
        quiet: false,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let value = args.next().ok_or("--listen needs an address")?;
                parsed.listen = value
                    .parse()
                    .map_err(|e| format!("--listen {value}: {e}"))?;
            }
            "--kubeconfig" => {
                parsed.kubeconfig = Some(args.next().ok_or("--kubeconfig needs a path")?.into());
            }
            "--quiet" => parsed.quiet = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = Config {
        listen: args.listen,
        log_requests: !args.quiet,
        ..Config::default()
    };
    let server = match FakeApiServer::start_with(config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("fake-apiserver: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.kubeconfig
        && let Err(e) = server.kubeconfig(path)
    {
        eprintln!("fake-apiserver: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    eprintln!("fake-apiserver: serving {}", server.url());
    std::future::pending::<()>().await;
    ExitCode::SUCCESS
}
