#!/usr/bin/env bash
# Bring up a local Incus daemon beside LXD: the tests' second real daemon. Idempotent and
# quick when Incus already answers. Needs root for the install step.
#
# Debian 12 has incus only in bookworm-backports, which a fresh machine does not list: it is
# added with the mirror the machine already uses for bookworm. No systemd here, so the
# daemon is started by hand, detached. Any failure is fatal: make test runs every
# real-daemon scenario on both LXD and Incus, and must not quietly drop the Incus half.
#
# Socket: $INCUS_SOCKET, else $INCUS_DIR/unix.socket, else /var/lib/incus/unix.socket.
set -euo pipefail

log() { printf 'incus-up: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

socket() {
  if [ -n "${INCUS_SOCKET:-}" ]; then echo "$INCUS_SOCKET"; return; fi
  echo "${INCUS_DIR:-/var/lib/incus}/unix.socket"
}

answers() {
  local s; s=$(socket)
  [ -S "$s" ] && curl -fsS --max-time 5 --unix-socket "$s" http://incus/1.0 >/dev/null 2>&1
}

# The mirror of the stanza (deb822) or line (one-line format) that serves bookworm itself.
debian_mirror() {
  local f=/etc/apt/sources.list.d/debian.sources
  if [ -r "$f" ]; then
    awk '
      /^[[:space:]]*$/ { if (suite && uri) { print uri; exit } suite = 0; uri = ""; next }
      tolower($1) == "uris:" { uri = $2 }
      tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == "bookworm") suite = 1 }
      END { if (suite && uri) print uri }
    ' "$f" | head -n 1
    return
  fi
  if [ -r /etc/apt/sources.list ]; then
    awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list
  fi
}

add_backports() {
  if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    return
  fi
  local mirror; mirror=$(debian_mirror)
  [ -n "$mirror" ] || die "cannot find the Debian mirror for bookworm in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
  log "adding bookworm-backports from $mirror"
  cat > /etc/apt/sources.list.d/bookworm-backports.sources <<EOF
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
}

if ! command -v curl >/dev/null 2>&1; then
  log "installing curl"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl ca-certificates >/dev/null
fi

if ! answers; then
  if [ ! -x /usr/libexec/incus/incusd ] || ! command -v incus >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "Incus is not installed and this is not root: run as root, or install incus (bookworm-backports)"
    add_backports
    log "installing incus from bookworm-backports"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      -t bookworm-backports incus >/dev/null || die "installing incus from bookworm-backports failed"
    [ -x /usr/libexec/incus/incusd ] || die "incus is installed but /usr/libexec/incus/incusd is not there"
  fi
  if ! answers; then
    log "starting the Incus daemon"
    # setsid: the daemon must outlive this script and the make that called it.
    setsid /usr/libexec/incus/incusd --group root --logfile /var/log/incus.log </dev/null >/dev/null 2>&1 &
    incus admin waitready --timeout 60 || die "incusd did not become ready (see /var/log/incus.log)"
  fi
fi

# A storage pool named default, so that projects can have a root disk.
if ! incus storage show default >/dev/null 2>&1; then
  log "creating storage pool 'default' (dir)"
  incus storage create default dir >/dev/null
fi
answers || die "Incus does not answer on $(socket)"
log "Incus answers on $(socket)"
