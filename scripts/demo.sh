#!/usr/bin/env bash
# The demo behind `make run`: its own LXD project, the example instances (empty, created
# when missing), and the controller on examples/. It never touches another project.
#
# `scripts/demo.sh kubernetes` (make run-kubernetes) is the same demo with the examples as
# custom resources: no cluster is needed, a fake API server (crates/fake-apiserver, the
# real wire format) runs on 127.0.0.1 and kubectl talks to it.
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCE=${1:-files}
[ $# -gt 0 ] && shift

PROJECT=${LXD_MUTATER_DEMO_PROJECT:-lxd-mutater-demo}
STATE=${LXD_MUTATER_DEMO_STATE:-$PWD/.demo-state}
LISTEN=${LXD_MUTATER_LISTEN:-127.0.0.1:8080}
BIN=./target/debug/lxd-mutater

if ! lxc project show "$PROJECT" >/dev/null 2>&1; then
  echo "demo: creating LXD project $PROJECT"
  lxc project create "$PROJECT" -c features.profiles=true -c features.images=false >/dev/null
fi
if ! lxc profile device show default --project "$PROJECT" 2>/dev/null | grep -q '^root:'; then
  lxc profile device add default root disk path=/ pool=default --project "$PROJECT" >/dev/null
fi
# Every instance the examples name, created empty when missing.
for instance in $(grep -ho 'instance: *[a-z0-9-]*' examples/*.yaml | awk '{print $2}'); do
  if ! lxc info "$instance" --project "$PROJECT" >/dev/null 2>&1; then
    echo "demo: creating empty instance $instance"
    lxc init --empty "$instance" --project "$PROJECT" >/dev/null
  fi
done

if [ "$SOURCE" = kubernetes ]; then
  API=${LXD_MUTATER_DEMO_API:-127.0.0.1:6443}
  mkdir -p "$STATE"
  KUBECONFIG="$STATE/kubeconfig"
  export KUBECONFIG
  command -v kubectl >/dev/null || { echo "demo: kubectl is needed (it is not in Debian; install it from kubernetes.io)" >&2; exit 1; }
  ./target/debug/fake-apiserver --listen "$API" --kubeconfig "$KUBECONFIG" --quiet &
  FAKE=$!
  trap 'kill $FAKE 2>/dev/null' EXIT
  for _ in $(seq 100); do
    kubectl version >/dev/null 2>&1 && break
    sleep 0.1
  done
  kubectl apply --validate=false -f examples/
  cat <<MSG

lxd-mutater demo on Kubernetes custom resources (fake API server at http://$API,
LXD project $PROJECT)
  Edit:   export KUBECONFIG=$KUBECONFIG
          kubectl edit machine 0 -n demo                 (or edit examples/ and kubectl apply --validate=false -f examples/)
  Look:   kubectl get machines,containers,applications -n demo
          kubectl get machine 0 -n demo -o yaml          (status, the Ready condition)
          lxc list --project $PROJECT -c n,P
          curl -s http://$LISTEN/metrics
  Stop:   Ctrl-C

MSG
  "$BIN" run --source kubernetes --lxd-project "$PROJECT" --listen "$LISTEN" "$@"
  exit $?
fi

cat <<MSG

lxd-mutater demo (LXD project $PROJECT)
  Edit:   examples/applications.yaml and examples/machines.yaml (a revision, an application)
  Look:   $BIN get machines --state-dir $STATE
          lxc list --project $PROJECT -c n,P       (the instances and their profiles)
          $BIN diff --resources examples --lxd-project $PROJECT
          curl -s http://$LISTEN/metrics
  Stop:   Ctrl-C

MSG
exec "$BIN" run --resources examples --lxd-project "$PROJECT" --state-dir "$STATE" --listen "$LISTEN" "$@"
