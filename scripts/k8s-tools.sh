#!/usr/bin/env bash
# What tests/manifests.rs needs, on a fresh Debian 12 machine as root. Idempotent, and
# quick when everything is there already (no network then).
#   kubectl           `kubectl kustomize` builds deploy/kubernetes (kustomize v5 inside).
#                     Not in Debian's archive: this script can only check for it.
#   kubernetes-validate  strict schema validation of the built manifests (PyPI). Installed
#                     in its own virtualenv, since Debian's python3 refuses system-wide pip
#                     installs (PEP 668), and linked into /usr/local/bin. Its schemas ship
#                     inside the package: validating needs no network.
#   systemd-analyze   `verify` of deploy/systemd/lxd-mutater.service (Debian's systemd).
set -euo pipefail

log() { printf 'k8s-tools: %s\n' "$*" >&2; }

# Pinned: the set of Kubernetes versions it knows (1.33 is what the tests validate
# against) and its strictness only change when this line does.
KUBERNETES_VALIDATE_VERSION=1.37.0
VENV=${KUBERNETES_VALIDATE_VENV:-/opt/kubernetes-validate}
LINK=/usr/local/bin/kubernetes-validate

need_root() {
  [ "$(id -u)" = 0 ] || { log "$1 is missing: run this script as root to install it"; exit 1; }
}

apt_updated=
apt_install() {
  need_root "$*"
  if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v kubectl >/dev/null 2>&1; then
  log "kubectl is not installed, and Debian does not package it. Install kubectl 1.27 or"
  log "later (kustomize v5) from the Kubernetes project's packages, then run make test again."
  exit 1
fi

if ! command -v systemd-analyze >/dev/null 2>&1; then
  log "installing systemd (for systemd-analyze)"
  apt_install systemd
fi

if ! { command -v kubernetes-validate >/dev/null 2>&1 \
       && [ "$(kubernetes-validate --version 2>/dev/null)" = "$KUBERNETES_VALIDATE_VERSION" ]; }; then
  # Debian's own python3 (its venv module works once python3-venv is there), rather than
  # whatever python3 comes first on PATH, so the virtualenv outlives a pyenv switch.
  py=/usr/bin/python3
  [ -x "$py" ] || { apt_install python3; }
  "$py" -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
  log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION in $VENV"
  need_root kubernetes-validate
  [ -x "$VENV/bin/pip" ] || "$py" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  ln -sf "$VENV/bin/kubernetes-validate" "$LINK"
  hash -r
  found=$(command -v kubernetes-validate || true)
  if [ "$found" != "$LINK" ] && [ "$("$found" --version 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
    log "another kubernetes-validate comes first on PATH ($found): remove it, or put $LINK first"
    exit 1
  fi
fi
