//! Real kubectl against the built `fake-apiserver` binary, as the demo uses it: apply,
//! apply again after an edit (a patch), get, delete. Skipped where kubectl is missing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const KUBECTL: &str = "/usr/bin/kubectl";

/// The server process, killed when the test ends however it ends.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on a free port and waits for the line that says where it serves.
fn start(kubeconfig: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-apiserver"))
        .args(["--listen", "127.0.0.1:0", "--quiet", "--kubeconfig"])
        .arg(kubeconfig)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    // The line comes once the listener is bound and the kubeconfig written; EOF if it died.
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("fake-apiserver: serving ")
        .map(str::to_owned);
    let url = url.unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    Server { child, url }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=20s")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn machine_yaml(applications: &str) -> String {
    format!(
        "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata:\n  name: \"0\"\n  namespace: demo\n\
         spec:\n  instance: juju-demo-0\n  applications: [{applications}]\n"
    )
}

#[test]
fn kubectl_applies_edits_gets_and_deletes_machines() {
    if !Path::new(KUBECTL).exists() {
        eprintln!("skipped: {KUBECTL} is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let server = start(&kubeconfig);
    let manifest: PathBuf = dir.path().join("machine.yaml");
    let manifest_arg = manifest.to_str().unwrap();

    std::fs::write(&manifest, machine_yaml("telegraf")).unwrap();
    let (ok, out) = kubectl(
        &kubeconfig,
        &["apply", "--validate=false", "-f", manifest_arg],
    );
    assert!(
        ok && out.contains("machine.lxdmutater.dev/0 created"),
        "{out}"
    );

    std::fs::write(&manifest, machine_yaml("telegraf, containerd")).unwrap();
    let (ok, out) = kubectl(
        &kubeconfig,
        &["apply", "--validate=false", "-f", manifest_arg],
    );
    assert!(
        ok && out.contains("machine.lxdmutater.dev/0 configured"),
        "{out}"
    );

    // `--server` alone is enough too.
    let (ok, out) = Command::new(KUBECTL)
        .args([
            "--server",
            &server.url,
            "get",
            "machine",
            "0",
            "-n",
            "demo",
            "-o",
            "json",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
            )
        })
        .unwrap();
    assert!(ok, "{out}");
    let object: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(object["metadata"]["generation"], 2);
    assert_eq!(
        object["spec"]["applications"],
        serde_json::json!(["telegraf", "containerd"])
    );
    let last_applied =
        &object["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"];
    assert!(
        last_applied
            .as_str()
            .is_some_and(|a| a.contains("containerd"))
    );

    // Short name and category, table output.
    let (ok, out) = kubectl(&kubeconfig, &["get", "lxdm", "-n", "demo"]);
    assert!(ok && out.lines().any(|l| l.starts_with("0 ")), "{out}");
    let (ok, out) = kubectl(&kubeconfig, &["get", "lxd-mutater", "-A", "-o", "name"]);
    assert!(ok && out.contains("machine.lxdmutater.dev/0"), "{out}");

    let (ok, out) = kubectl(&kubeconfig, &["delete", "-f", manifest_arg]);
    assert!(ok && out.contains("deleted"), "{out}");
    let (ok, out) = kubectl(&kubeconfig, &["get", "machine", "0", "-n", "demo"]);
    assert!(!ok && out.contains("NotFound"), "{out}");
}
