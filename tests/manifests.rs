//! The deployment files, checked the way an operator would use them: `deploy/kubernetes`
//! built with `kubectl kustomize` and validated strictly against Kubernetes' schemas, the
//! systemd unit run through `systemd-analyze`, and `make install` into a scratch root.
//!
//! Needs kubectl, kubernetes-validate and systemd-analyze: `scripts/k8s-tools.sh`
//! installs them (`make test` runs it). A missing tool fails the test; nothing is skipped.
//!
//! One file is derived from another and checked here: the PrometheusRule's spec (from
//! `deploy/prometheus/alerts.yaml`). `LXD_MUTATER_UPDATE_MANIFESTS=1 cargo test --test
//! manifests` rewrites it. The CRDs are `crds/` itself, through its kustomization.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

/// The Kubernetes release the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.33.0";
/// API groups whose kinds have no schema in kubernetes-validate: custom resources.
const CUSTOM_GROUPS: [&str; 2] = ["monitoring.coreos.com", "lxdmutater.dev"];
const INSTALL_TOOLS: &str = "run `scripts/k8s-tools.sh` as root (`make test` does)";
const UPDATE: &str = "LXD_MUTATER_UPDATE_MANIFESTS";

const NAMESPACE: &str = "lxd-mutater";
const TLS_DIR: &str = "/etc/lxd-mutater/tls";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs a tool, feeding it `stdin`; a tool that is not installed fails the test with the
/// script that installs it.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(repo())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): {INSTALL_TOOLS}"));
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("writing to {program}: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {program}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `kubectl kustomize DIR`, as YAML.
fn kustomize(dir: &str) -> String {
    let out = run("kubectl", &["kustomize", dir], None);
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn objects(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml).expect("the YAML parses")
}

fn kind_name(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn only<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}");
    found[0]
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in the output"))
}

fn group_of(object: &Value) -> &str {
    let api_version = object["apiVersion"].as_str().unwrap_or("");
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Validates a YAML stream with `kubernetes-validate --strict` (unknown fields are errors)
/// and checks, object by object, that every built-in kind was really validated: the tool
/// only warns, and exits 0, for a kind it has no schema for, which would let a misspelt
/// `apiVersion` through. Only custom resources may be left unvalidated.
fn validate_strictly(yaml: &str, what: &str) {
    let out = run(
        "kubernetes-validate",
        &["--strict", "-k", KUBERNETES_VERSION, "-"],
        Some(yaml),
    );
    let report = text(&out.stdout);
    assert!(
        out.status.success(),
        "{what} does not validate against Kubernetes {KUBERNETES_VERSION}:\n{report}{}",
        text(&out.stderr)
    );
    let minor = KUBERNETES_VERSION
        .rsplit_once('.')
        .map_or("", |(minor, _)| minor);
    let mut passed = BTreeSet::new();
    let mut without_schema = BTreeSet::new();
    for line in report.lines() {
        if let Some(rest) = line.strip_prefix("INFO - passed for resource ") {
            let (resource, version) = rest
                .split_once(" against version ")
                .unwrap_or_else(|| panic!("unexpected line: {line}"));
            assert_eq!(version, minor, "{line}");
            passed.insert(resource.to_owned());
        } else if let Some(rest) = line.strip_prefix("WARN - Couldn't find schema for kind ") {
            let (kind, rest) = rest.split_once(" with api version ").expect(line);
            let (api_version, _) = rest.split_once(' ').expect(line);
            without_schema.insert(format!("{kind} {api_version}"));
        } else {
            panic!("{what}: unexpected kubernetes-validate output: {line}\n{report}");
        }
    }
    let all = objects(yaml);
    assert!(!all.is_empty(), "{what} is empty");
    for object in &all {
        let kind = object["kind"].as_str().unwrap_or("?");
        if CUSTOM_GROUPS.contains(&group_of(object)) {
            let key = format!("{kind} {}", object["apiVersion"].as_str().unwrap_or("?"));
            assert!(without_schema.contains(&key), "{what}: {key} was not seen");
        } else {
            let key = format!(
                "{}/{}",
                kind.to_lowercase(),
                object["metadata"]["name"].as_str().unwrap_or("?")
            );
            assert!(
                passed.contains(&key),
                "{what}: {} was not validated against a schema (a misspelt apiVersion or \
                 kind?):\n{report}",
                kind_name(object)
            );
        }
    }
}

/// Compares a file derived from another with what it should be; with
/// LXD_MUTATER_UPDATE_MANIFESTS=1, rewrites it instead.
fn check_derived(relative: &str, want: &str) {
    let path = repo().join(relative);
    if std::env::var_os(UPDATE).is_some() {
        std::fs::write(&path, want).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{relative} is stale: run `{UPDATE}=1 cargo test --test manifests`"
    );
}

#[test]
fn every_builtin_object_of_the_base_passes_strict_schema_validation() {
    validate_strictly(&kustomize("deploy/kubernetes"), "deploy/kubernetes");
}

#[test]
fn every_builtin_object_of_the_monitoring_example_passes_strict_schema_validation() {
    let dir = "deploy/kubernetes/examples/with-monitoring";
    let yaml = kustomize(dir);
    validate_strictly(&yaml, dir);
    let all = objects(&yaml);
    only(&all, "ServiceMonitor");
    only(&all, "PrometheusRule");
}

#[test]
fn the_example_secret_passes_strict_schema_validation_and_names_what_the_pod_mounts() {
    let yaml = read("deploy/kubernetes/secret.example.yaml");
    validate_strictly(&yaml, "deploy/kubernetes/secret.example.yaml");
    let secret = objects(&yaml).remove(0);
    let keys: BTreeSet<&str> = secret["stringData"]
        .as_object()
        .expect("stringData")
        .keys()
        .map(String::as_str)
        .collect();
    let all = objects(&kustomize("deploy/kubernetes"));
    let pod = &only(&all, "Deployment")["spec"]["template"]["spec"];
    let volume = &pod["volumes"][0]["secret"];
    assert_eq!(volume["secretName"], secret["metadata"]["name"]);
    let mounted: BTreeSet<&str> = volume["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["key"].as_str())
        .collect();
    assert_eq!(keys, mounted);
    assert_eq!(secret["metadata"]["namespace"], NAMESPACE);
}

/// The value a container runs with: its own securityContext, else the pod's.
fn effective<'a>(pod: &'a Value, container: &'a Value, field: &str) -> &'a Value {
    match &container["securityContext"][field] {
        Value::Null => &pod["securityContext"][field],
        value => value,
    }
}

#[test]
fn the_controller_pod_runs_non_root_read_only_without_capabilities() {
    let all = objects(&kustomize("deploy/kubernetes"));
    let pod = &only(&all, "Deployment")["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert!(pod["initContainers"].is_null() && pod["ephemeralContainers"].is_null());
    for container in containers {
        let name = &container["name"];
        let want = [
            ("runAsNonRoot", json!(true)),
            ("runAsUser", json!(65532)),
            ("runAsGroup", json!(65532)),
            ("readOnlyRootFilesystem", json!(true)),
            ("allowPrivilegeEscalation", json!(false)),
            ("seccompProfile", json!({"type": "RuntimeDefault"})),
        ];
        for (field, value) in want {
            assert_eq!(
                effective(pod, container, field),
                &value,
                "{name}: securityContext.{field}"
            );
        }
        let capabilities = &container["securityContext"]["capabilities"];
        assert_eq!(capabilities["drop"], json!(["ALL"]), "{name}");
        assert!(capabilities["add"].is_null(), "{name} adds capabilities");
        assert_ne!(effective(pod, container, "privileged"), &json!(true));
        let resources = &container["resources"];
        for bound in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    resources[bound][resource].is_string(),
                    "{name}: resources.{bound}.{resource}"
                );
            }
        }
    }
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(pod[host], json!(true), "{host}");
    }
    for volume in pod["volumes"].as_array().expect("volumes") {
        assert!(
            volume["hostPath"].is_null(),
            "volume {} is a hostPath",
            volume["name"]
        );
    }
    // Kubernetes' service links would add LXD_MUTATER_METRICS_* variables, the prefix
    // every flag reads.
    assert_eq!(pod["enableServiceLinks"], json!(false));
    let namespace = only(&all, "Namespace");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
}

#[test]
fn the_deployment_runs_two_replicas_of_the_kubernetes_controller_with_leader_election() {
    let all = objects(&kustomize("deploy/kubernetes"));
    let deployment = only(&all, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = strings(&container["args"]);
    assert_eq!(args.first(), Some(&"run"), "{args:?}");
    for flag in [
        "--source=kubernetes",
        "--leader-elect",
        "--listen=0.0.0.0:8080",
        "--log-format=json",
        &format!("--lxd-client-cert={TLS_DIR}/client.crt"),
        &format!("--lxd-client-key={TLS_DIR}/client.key"),
        &format!("--lxd-server-cert={TLS_DIR}/server.crt"),
    ] {
        assert!(args.contains(&flag), "{flag} not in {args:?}");
    }

    // The Lease's holder and namespace, from the downward API.
    for (variable, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let env = container["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == variable)
            .unwrap_or_else(|| panic!("no {variable}"));
        assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], field);
    }

    // The LXD URL, from the generated ConfigMap the pod really references.
    let config_name = container["envFrom"][0]["configMapRef"]["name"]
        .as_str()
        .expect("envFrom configMapRef");
    let config = named(&all, "ConfigMap", config_name);
    let url = config["data"]["LXD_MUTATER_LXD"]
        .as_str()
        .expect("LXD_MUTATER_LXD");
    assert!(url.starts_with("https://"), "{url}");

    // Probes and the metrics port.
    let port = &container["ports"][0];
    assert_eq!(
        (&port["name"], &port["containerPort"]),
        (&json!("metrics"), &json!(8080))
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(
            (&get["path"], &get["port"]),
            (&json!(path), &json!("metrics")),
            "{probe}"
        );
    }

    // The TLS Secret, read-only, readable by the controller's group and nobody else.
    let mount = &container["volumeMounts"][0];
    assert_eq!(mount["mountPath"], TLS_DIR);
    assert_eq!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    assert_eq!(volume["secret"]["secretName"], "lxd-mutater-lxd");
    assert_eq!(volume["secret"]["defaultMode"], 0o440);
    assert_eq!(pod["securityContext"]["fsGroup"], 65532);

    // One replica per node where possible.
    let spread = &pod["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    let anti =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        anti["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );

    let account = only(&all, "ServiceAccount");
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
}

fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector.as_object().expect("a selector");
    !wanted.is_empty() && wanted.iter().all(|(key, value)| &labels[key] == value)
}

#[test]
fn the_service_and_the_disruption_budget_cover_the_controller_pods() {
    let all = objects(&kustomize("deploy/kubernetes"));
    let pod_labels = &only(&all, "Deployment")["spec"]["template"]["metadata"]["labels"];

    let budget = only(&all, "PodDisruptionBudget");
    assert_eq!(budget["spec"]["minAvailable"], 1);
    assert!(selects(
        &budget["spec"]["selector"]["matchLabels"],
        pod_labels
    ));

    let service = only(&all, "Service");
    assert!(selects(&service["spec"]["selector"], pod_labels));
    let port = &service["spec"]["ports"][0];
    assert_eq!(
        (&port["name"], &port["port"]),
        (&json!("metrics"), &json!(8080))
    );

    for object in &all {
        let cluster_scoped = [
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
        ];
        let kind = object["kind"].as_str().unwrap_or("?");
        let namespace = &object["metadata"]["namespace"];
        if cluster_scoped.contains(&kind) {
            assert!(namespace.is_null(), "{}", kind_name(object));
        } else {
            assert_eq!(namespace, NAMESPACE, "{}", kind_name(object));
        }
    }
}

/// Every (apiGroup, resource, verb, resourceName) a set of RBAC rules grants; `*` for a
/// rule without resourceNames.
fn granted(rules: &Value) -> BTreeSet<(String, String, String, String)> {
    let mut all = BTreeSet::new();
    for rule in rules.as_array().expect("rules") {
        let names = match strings(&rule["resourceNames"]) {
            names if names.is_empty() => vec!["*"],
            names => names,
        };
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    for name in &names {
                        all.insert((group.into(), resource.into(), verb.into(), (*name).into()));
                    }
                }
            }
        }
        assert!(rule["nonResourceURLs"].is_null(), "{rule}");
    }
    all
}

fn grants(list: &[(&str, &[&str], &[&str], &str)]) -> BTreeSet<(String, String, String, String)> {
    let mut all = BTreeSet::new();
    for (group, resources, verbs, name) in list {
        for resource in *resources {
            for verb in *verbs {
                all.insert((
                    (*group).into(),
                    (*resource).into(),
                    (*verb).into(),
                    (*name).into(),
                ));
            }
        }
    }
    all
}

#[test]
fn rbac_grants_exactly_what_the_controller_needs_and_nothing_more() {
    let all = objects(&kustomize("deploy/kubernetes"));
    let account = only(&all, "ServiceAccount");
    let subject = json!([{
        "kind": "ServiceAccount",
        "name": account["metadata"]["name"],
        "namespace": account["metadata"]["namespace"],
    }]);

    let binding = only(&all, "ClusterRoleBinding");
    assert_eq!(binding["subjects"], subject);
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    let cluster_role = named(
        &all,
        "ClusterRole",
        binding["roleRef"]["name"].as_str().unwrap(),
    );
    let kinds: &[&str] = &["machines", "containers", "applications"];
    let statuses: &[&str] = &[
        "machines/status",
        "containers/status",
        "applications/status",
    ];
    assert_eq!(
        granted(&cluster_role["rules"]),
        grants(&[
            ("lxdmutater.dev", kinds, &["get", "list", "watch"], "*"),
            ("lxdmutater.dev", statuses, &["get", "patch", "update"], "*"),
            ("", &["events"], &["create", "patch"], "*"),
            ("events.k8s.io", &["events"], &["create", "patch"], "*"),
        ])
    );

    let binding = only(&all, "RoleBinding");
    assert_eq!(binding["subjects"], subject);
    assert_eq!(binding["roleRef"]["kind"], "Role");
    let role = named(&all, "Role", binding["roleRef"]["name"].as_str().unwrap());
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    let leases: &[&str] = &["leases"];
    assert_eq!(
        granted(&role["rules"]),
        grants(&[
            ("coordination.k8s.io", leases, &["create"], "*"),
            (
                "coordination.k8s.io",
                leases,
                &["get", "update", "patch"],
                "lxd-mutater"
            ),
        ])
    );
}

#[test]
fn the_juju_layout_runs_the_pods_as_environ_and_grants_host_controllers_only_their_containers() {
    let dir = "deploy/kubernetes/examples/juju-layout";
    let yaml = kustomize(dir);
    validate_strictly(&yaml, dir);
    let all = objects(&yaml);
    assert_eq!(
        only(&all, "ConfigMap")["data"]["LXD_MUTATER_FLAVOUR"],
        "environ"
    );
    let role = named(&all, "ClusterRole", "lxd-mutater-container");
    assert_eq!(
        granted(&role["rules"]),
        grants(&[
            (
                "lxdmutater.dev",
                &["containers", "applications"],
                &["get", "list", "watch"],
                "*"
            ),
            (
                "lxdmutater.dev",
                &["containers/status"],
                &["get", "patch", "update"],
                "*"
            ),
            ("", &["events"], &["create", "patch"], "*"),
            ("events.k8s.io", &["events"], &["create", "patch"], "*"),
        ])
    );
    let binding = named(&all, "ClusterRoleBinding", "lxd-mutater-container");
    assert_eq!(binding["roleRef"]["name"], "lxd-mutater-container");
    assert_eq!(binding["subjects"][0]["name"], "lxd-mutater-container");
    // No Role (no Lease) is bound to the hosts' account.
    assert!(
        !all.iter()
            .any(|o| o["kind"] == "RoleBinding"
                && o["subjects"][0]["name"] == "lxd-mutater-container")
    );
    let token = named(&all, "Secret", "lxd-mutater-container-token");
    assert_eq!(token["type"], "kubernetes.io/service-account-token");
    // The Containers' CRD lets the API server filter on spec.machine.
    let crd = named(
        &all,
        "CustomResourceDefinition",
        "containers.lxdmutater.dev",
    );
    assert_eq!(
        crd["spec"]["versions"][0]["selectableFields"],
        json!([{"jsonPath": ".spec.machine"}])
    );
}

/// The PrometheusRule as it should be: its own lines down to `spec:`, then alerts.yaml from
/// `groups:` on, indented under `spec:`.
fn prometheus_rule_from(current: &str, alerts: &str) -> String {
    let head_end = current
        .find("\nspec:\n")
        .map(|i| i + "\nspec:\n".len())
        .expect("prometheusrule.yaml has a `spec:` line");
    let groups_start = alerts
        .find("\ngroups:")
        .map(|i| i + 1)
        .expect("alerts.yaml has a `groups:` line");
    let mut out = current[..head_end].to_owned();
    for line in alerts[groups_start..].lines() {
        if !line.is_empty() {
            out.push_str("  ");
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[test]
fn the_prometheus_rule_carries_exactly_the_alert_rules_of_deploy_prometheus() {
    let alerts = read("deploy/prometheus/alerts.yaml");
    let file = "deploy/kubernetes/components/monitoring/prometheusrule.yaml";
    check_derived(file, &prometheus_rule_from(&read(file), &alerts));

    // What reaches the cluster, after kustomize has re-serialised it.
    let all = objects(&kustomize("deploy/kubernetes/examples/with-monitoring"));
    let rule = only(&all, "PrometheusRule");
    let want: Value = serde_saphyr::from_str(&alerts).expect("alerts.yaml parses");
    assert_eq!(rule["spec"]["groups"], want["groups"]);
    assert!(
        !want["groups"][0]["rules"]
            .as_array()
            .expect("rules")
            .is_empty()
    );
}

#[test]
fn the_service_monitor_scrapes_the_metrics_service_as_job_lxd_mutater() {
    let all = objects(&kustomize("deploy/kubernetes/examples/with-monitoring"));
    let monitor = only(&all, "ServiceMonitor");
    let service = only(&all, "Service");
    let labels = &service["metadata"]["labels"];
    assert!(selects(&monitor["spec"]["selector"]["matchLabels"], labels));
    assert_eq!(
        monitor["metadata"]["namespace"],
        service["metadata"]["namespace"]
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    // The alerts name the job (LxdMutaterNotReady: up{job="lxd-mutater"}); the Operator
    // takes it from the Service label named by jobLabel.
    let job_label = monitor["spec"]["jobLabel"].as_str().expect("jobLabel");
    assert_eq!(labels[job_label], "lxd-mutater");
    assert!(read("deploy/prometheus/alerts.yaml").contains(r#"job="lxd-mutater""#));
}

#[test]
fn the_kustomized_crds_are_those_of_crds_yaml() {
    let crds = read("crds/crds.yaml");

    let all = objects(&kustomize("deploy/kubernetes"));
    let mut built: Vec<&Value> = all
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .collect();
    let mut want = objects(&crds);
    built.sort_by_key(|o| o["metadata"]["name"].to_string());
    want.sort_by_key(|o| o["metadata"]["name"].to_string());
    assert_eq!(built, want.iter().collect::<Vec<_>>());
    assert_eq!(want.len(), 3);
}

/// `[Service]` (or another section) of a unit file as key/value pairs, in order.
fn unit_section(unit: &str, section: &str) -> Vec<(String, String)> {
    let header = format!("[{section}]");
    let mut inside = false;
    let mut pairs = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == header;
        } else if inside && !line.is_empty() && !line.starts_with('#') {
            let (key, value) = line.split_once('=').expect(line);
            pairs.push((key.to_owned(), value.to_owned()));
        }
    }
    pairs
}

#[test]
fn the_systemd_unit_verifies_cleanly_and_keeps_its_hardening() {
    let unit = read("deploy/systemd/lxd-mutater.service");
    let exec = "ExecStart=/usr/local/bin/lxd-mutater run --resources /etc/lxd-mutater/resources";
    assert!(unit.contains(&format!("\n{exec}\n")), "{exec}");

    // systemd-analyze verify insists that ExecStart's binary exists: use the one built.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("lxd-mutater.service");
    let binary = env!("CARGO_BIN_EXE_lxd-mutater");
    let rewritten = unit.replace(
        "ExecStart=/usr/local/bin/lxd-mutater ",
        &format!("ExecStart={binary} "),
    );
    std::fs::write(&path, rewritten).expect("write the unit");
    let path = path.to_str().expect("a UTF-8 path");
    let out = run("systemd-analyze", &["verify", "--man=no", path], None);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "systemd-analyze verify:\n{said}");
    // Other units on this machine may draw warnings; none may be about this one.
    let about_it: Vec<&str> = said.lines().filter(|l| l.contains("lxd-mutater")).collect();
    assert!(
        about_it.is_empty(),
        "systemd-analyze verify:\n{}",
        about_it.join("\n")
    );

    let service = unit_section(&unit, "Service");
    let value = |key: &str| -> Vec<&str> {
        service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, want) in [
        ("EnvironmentFile", "-/etc/default/lxd-mutater"),
        ("StateDirectory", "lxd-mutater"),
        ("Restart", "on-failure"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
    ] {
        assert_eq!(value(key), [want], "{key}=");
    }
    assert_eq!(value("SystemCallFilter")[0], "@system-service");
    assert_eq!(value("User"), Vec::<&str>::new(), "runs as root on purpose");

    // An overall score, so that a hardening line dropped later shows up here.
    let out = run(
        "systemd-analyze",
        &["security", "--offline=true", path],
        None,
    );
    let said = text(&out.stdout);
    let score: f64 = said
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for lxd-mutater.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{said}{}", text(&out.stderr)));
    assert!(score <= 2.0, "exposure level {score} (was 1.6):\n{said}");
}

/// `make install` of `binary` (it builds nothing) into `destdir`.
fn make_install(destdir: &Path, binary: &Path, extra: &[&str]) -> String {
    let mut command = Command::new("make");
    command
        .current_dir(repo())
        .args(["--no-print-directory", "install"])
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg(format!("BIN={}", binary.display()))
        .args(extra)
        // Not the jobserver or flags of a `make test` this runs under.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL");
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run make ({e}): install it (apt-get install make)"));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "make install:\n{said}");
    said
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

#[test]
fn make_install_puts_everything_in_place_and_never_overwrites_the_operators_files() {
    use std::os::unix::fs::PermissionsExt;

    // A stand-in for the release binary: make install takes a binary already built.
    let build = tempfile::tempdir().expect("a temporary directory");
    let built = build.path().join("lxd-mutater");
    std::fs::write(&built, "#!/bin/sh\n# the built binary\n").expect("a binary");
    let root = tempfile::tempdir().expect("a temporary directory");
    let root = root.path();
    let said = make_install(root, &built, &[]);
    assert!(
        said.contains("systemctl daemon-reload && systemctl enable --now lxd-mutater"),
        "{said}"
    );

    let binary = root.join("usr/local/bin/lxd-mutater");
    let mode = std::fs::metadata(&binary)
        .expect("the binary")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::read(&binary).unwrap(),
        std::fs::read(&built).unwrap()
    );
    let unit_path = root.join("usr/local/lib/systemd/system/lxd-mutater.service");
    let unit = std::fs::read_to_string(&unit_path).expect("the unit");
    assert_eq!(unit, read("deploy/systemd/lxd-mutater.service"));
    let default_path = root.join("etc/default/lxd-mutater");
    let defaults = std::fs::read_to_string(&default_path).expect("the default file");
    assert_eq!(defaults, read("deploy/systemd/lxd-mutater.default"));
    let resources = root.join("etc/lxd-mutater/resources");
    for example in examples() {
        // Inert until the operator renames it: the controller reads *.yaml and *.yml only.
        let name = format!(
            "{}.example",
            example.file_name().expect("a name").to_string_lossy()
        );
        let installed = resources.join(name);
        assert_eq!(
            std::fs::read(&installed).expect("an installed example"),
            std::fs::read(&example).expect("the example")
        );
    }

    // The operator edits the settings and the resources, removes an example; a later
    // install (an upgrade) keeps all of that and refreshes only the binary and the unit.
    let settings = "LXD_MUTATER_LXD_PROJECT=mine\n";
    std::fs::write(&default_path, settings).expect("edit the settings");
    let mine = resources.join("machines.yaml");
    std::fs::write(&mine, "# my own machines\n").expect("edit a resource");
    let removed = resources.join("applications.yaml.example");
    std::fs::remove_file(&removed).expect("remove an example");
    std::fs::write(&unit_path, "stale").expect("age the unit");

    let said = make_install(root, &built, &[]);
    assert!(said.contains("kept"), "{said}");
    assert_eq!(std::fs::read_to_string(&default_path).unwrap(), settings);
    assert_eq!(
        std::fs::read_to_string(&mine).unwrap(),
        "# my own machines\n"
    );
    assert!(
        !removed.exists(),
        "an example came back over the operator's choice"
    );
    assert_eq!(std::fs::read_to_string(&unit_path).unwrap(), unit);

    // Another PREFIX: the unit's ExecStart follows it.
    make_install(root, &built, &["PREFIX=/usr"]);
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/lxd-mutater.service"))
        .expect("the unit under /usr");
    assert!(
        unit.contains("\nExecStart=/usr/bin/lxd-mutater run "),
        "ExecStart does not follow PREFIX"
    );
    assert!(root.join("usr/bin/lxd-mutater").is_file());
}

/// Every `LXD_MUTATER_<FLAG>` name in `text` (not the bare prefix, as in "LXD_MUTATER_*").
fn setting_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("LXD_MUTATER_") {
        let name: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.ends_with('_') {
            names.insert(name);
        }
    }
    names
}

#[test]
fn the_deployment_args_and_every_documented_setting_are_known_to_the_binary() {
    let binary = env!("CARGO_BIN_EXE_lxd-mutater");
    let all = objects(&kustomize("deploy/kubernetes"));
    let container = &only(&all, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let mut args = strings(&container["args"]);
    // clap parses (and checks) every argument before it, then prints the help.
    args.push("--help");
    let out = Command::new(binary)
        .args(&args)
        .env_clear()
        .output()
        .expect("run the binary");
    assert!(
        out.status.success(),
        "the Deployment's args: {}",
        text(&out.stderr)
    );
    let help = text(&out.stdout);

    for file in [
        "deploy/kubernetes/base/lxd-mutater.env",
        "deploy/kubernetes/examples/with-monitoring/kustomization.yaml",
        "deploy/systemd/lxd-mutater.default",
    ] {
        let names = setting_names(&read(file));
        assert!(!names.is_empty(), "{file}");
        for name in names {
            assert!(
                help.contains(&format!("[env: {name}=")),
                "{file} names {name}, which `lxd-mutater run` does not read"
            );
        }
    }
}
