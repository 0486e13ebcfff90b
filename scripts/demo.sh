#!/usr/bin/env bash
# The demo behind `make run`: its own LXD project, the example instances (empty, created
# when missing), and the controller on examples/. It never touches another project.
set -euo pipefail
cd "$(dirname "$0")/.."

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
