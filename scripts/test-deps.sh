#!/usr/bin/env bash
# What the tests need besides LXD: a real Prometheus server and promtool (Debian's
# prometheus package), curl, python3, and zsh and fish (the completion scripts are parsed
# by each shell). Idempotent; installs only what is missing.
set -euo pipefail

missing=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v zsh >/dev/null 2>&1 || missing+=(zsh)
command -v fish >/dev/null 2>&1 || missing+=(fish)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "test-deps: missing ${missing[*]}: install them, or run as root" >&2; exit 1; }
  echo "test-deps: installing ${missing[*]}" >&2
  apt-get update -qq
  # The package must not start its own Prometheus service: tests start their own.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
