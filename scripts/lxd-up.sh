#!/usr/bin/env bash
# Bring up a local LXD daemon for tests and the demo, if none answers already.
# Idempotent: a running LXD is left as it is. Needs root for the install step.
#
# Socket: $LXD_SOCKET, else $LXD_DIR/unix.socket, else the snap one, else Debian's.
set -euo pipefail

log() { printf 'lxd-up: %s\n' "$*" >&2; }

socket() {
  if [ -n "${LXD_SOCKET:-}" ]; then echo "$LXD_SOCKET"; return; fi
  if [ -n "${LXD_DIR:-}" ]; then echo "$LXD_DIR/unix.socket"; return; fi
  for s in /var/snap/lxd/common/lxd/unix.socket /var/lib/lxd/unix.socket; do
    if [ -S "$s" ]; then echo "$s"; return; fi
  done
  echo /var/lib/lxd/unix.socket
}

answers() {
  local s; s=$(socket)
  [ -S "$s" ] && curl -fsS --max-time 5 --unix-socket "$s" http://lxd/1.0 >/dev/null 2>&1
}

if ! command -v curl >/dev/null 2>&1; then
  log "installing curl"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl ca-certificates >/dev/null
fi

if ! answers; then
  if ! command -v lxd >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { log "LXD is not installed and this is not root: run as root, or install lxd"; exit 1; }
    log "installing Debian's lxd package"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lxd lxd-client >/dev/null
  fi
  if ! answers; then
    log "starting the LXD daemon"
    # setsid: the daemon must outlive this script and the make that called it.
    setsid lxd --group root --logfile /var/log/lxd.log </dev/null >/dev/null 2>&1 &
    lxd waitready --timeout 60
  fi
fi

# A storage pool named default, so that projects can have a root disk.
if ! lxc storage show default >/dev/null 2>&1; then
  log "creating storage pool 'default' (dir)"
  lxc storage create default dir >/dev/null
fi
log "LXD answers on $(socket)"
