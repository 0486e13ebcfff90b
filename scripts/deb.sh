#!/usr/bin/env bash
# `make deb`: the Debian package, target/debian/lxd-mutater_<version>-1_<arch>.deb, built
# with cargo-deb from [package.metadata.deb] in Cargo.toml and checked with lintian (any
# E: or W: line fails the script).
#
#   scripts/deb.sh              release build, then the package, then lintian
#   scripts/deb.sh --no-build   the package from the binary already built (lintian too)
#
# LXD_MUTATER_DEB_PROFILE=dev packages the debug binary instead, into
# <target>/debian-dev/ so as never to overwrite a release package: tests/deb.rs does that
# with --no-build, on the binary `cargo test` has just built, since a release build takes
# minutes on two cores. cargo-deb warns that it is meant for releases: the check is of
# the packaging, which is the same for both.
#
# Idempotent: the tools are installed only when missing, target/deb-assets/ is written
# anew each time, and cargo-deb replaces the package it made before.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned so that the packaging (paths, maintainer-script fragments) and so lintian's
# verdict do not change under us with a new cargo-deb.
CARGO_DEB_VERSION=3.8.0
CARGO=${CARGO:-cargo}
PROFILE=${LXD_MUTATER_DEB_PROFILE:-release}
BUILD=1

for arg in "$@"; do
	case "$arg" in
	--no-build) BUILD= ;;
	*)
		echo "usage: $0 [--no-build]  (LXD_MUTATER_DEB_PROFILE=release|dev)" >&2
		exit 1
		;;
	esac
done
case "$PROFILE" in
release) PROFILE_DIR=release ;;
dev) PROFILE_DIR=debug ;;
*)
	echo "LXD_MUTATER_DEB_PROFILE is release or dev, not $PROFILE" >&2
	exit 1
	;;
esac

# --- Tools -------------------------------------------------------------------------
if ! "$CARGO" deb --version >/dev/null 2>&1; then
	echo "deb.sh: installing cargo-deb $CARGO_DEB_VERSION"
	"$CARGO" install cargo-deb --locked --version "$CARGO_DEB_VERSION"
elif [ "$("$CARGO" deb --version)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
	# Someone's own cargo-deb is left alone; what it makes may differ from what was checked.
	echo "deb.sh: warning: $("$CARGO" deb --version), not $CARGO_DEB_VERSION as tested" >&2
fi
# lintian checks the package; dpkg-dev brings dpkg-shlibdeps (cargo-deb's depends =
# "$auto" asks it for the libraries the binary links), dpkg-parsechangelog (below) and
# binutils (cargo-deb strips the binary).
missing=()
command -v lintian >/dev/null || missing+=(lintian)
command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
command -v dpkg-parsechangelog >/dev/null || missing+=(dpkg-dev)
command -v strip >/dev/null || missing+=(binutils)
if ((${#missing[@]})); then
	if [ "$(id -u)" != 0 ]; then
		echo "deb.sh: missing ${missing[*]}: run as root, or apt-get install ${missing[*]}" >&2
		exit 1
	fi
	echo "deb.sh: installing ${missing[*]}"
	# The package lists may be absent or stale on a fresh machine.
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
echo "deb.sh: $("$CARGO" deb --version), lintian $(lintian --print-version)"

# --- The changelog must describe this version ----------------------------------------
# cargo-deb names the package <Cargo.toml version>-1 and installs deploy/debian/changelog
# as it is; a changelog left behind by a version bump would describe another package.
pkgid=$("$CARGO" pkgid --quiet lxd-mutater)
version="${pkgid##*[#@]}-1"
changelog_version=$(dpkg-parsechangelog -l deploy/debian/changelog -S Version)
if [ "$changelog_version" != "$version" ]; then
	echo "deb.sh: deploy/debian/changelog's latest entry is $changelog_version, the package" \
		"is $version: add an entry for $version on top (by hand, or dch from devscripts)" >&2
	exit 1
fi

# --- The binary ----------------------------------------------------------------------
# Where Cargo puts it (CARGO_TARGET_DIR and .cargo/config included); cargo-deb's
# "target/release/lxd-mutater" asset resolves to the same file.
target_dir=$("$CARGO" metadata --format-version 1 --no-deps --locked |
	sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [ -z "$target_dir" ]; then
	echo "deb.sh: cargo metadata gave no target_directory" >&2
	exit 1
fi
if [ -n "$BUILD" ]; then
	"$CARGO" build --locked --profile "$PROFILE" --bin lxd-mutater
fi
bin="$target_dir/$PROFILE_DIR/lxd-mutater"
if [ ! -x "$bin" ]; then
	echo "deb.sh: no $bin: build it (make build-release), or drop --no-build" >&2
	exit 1
fi

# --- Generated assets: target/deb-assets/ -----------------------------------------
# Under the repository's own target/ whatever CARGO_TARGET_DIR says: cargo-deb reads every
# asset but target/release/* relative to Cargo.toml. Written in a scratch directory and
# moved into place, so that a failure leaves no half-written set behind.
assets=target/deb-assets
mkdir -p target
tmp=$(mktemp -d target/deb-assets.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/completions" "$tmp/systemd"
# From the binary being packaged, so they describe exactly its command line.
"$bin" completions bash >"$tmp/completions/lxd-mutater.bash"
"$bin" completions zsh >"$tmp/completions/_lxd-mutater"
"$bin" completions fish >"$tmp/completions/lxd-mutater.fish"
"$bin" man "$tmp/man" >/dev/null
# The packaged unit: the repository's, with the binary where the package puts it (the
# repository's says /usr/local/bin, for `make install`). The same substitution as the
# Makefile's install target; it must have hit, or the package would start a binary that
# is not there.
{
	echo "# Installed by the lxd-mutater Debian package (from deploy/systemd/lxd-mutater.service,"
	echo "# ExecStart in /usr/bin). Change it with \`systemctl edit lxd-mutater\`, not here."
	sed 's|^ExecStart=/usr/local/bin/lxd-mutater |ExecStart=/usr/bin/lxd-mutater |' \
		deploy/systemd/lxd-mutater.service
} >"$tmp/systemd/lxd-mutater.service"
if [ "$(grep -c '^ExecStart=' "$tmp/systemd/lxd-mutater.service")" != 1 ] ||
	! grep -q '^ExecStart=/usr/bin/lxd-mutater ' "$tmp/systemd/lxd-mutater.service"; then
	echo "deb.sh: deploy/systemd/lxd-mutater.service has no single" \
		"ExecStart=/usr/local/bin/lxd-mutater line to point at /usr/bin" >&2
	exit 1
fi
chmod 0644 "$tmp"/completions/* "$tmp"/man/* "$tmp"/systemd/*
rm -rf "$assets"
mv "$tmp" "$assets"
trap - EXIT

# --- The package -----------------------------------------------------------------
if [ "$PROFILE" = release ]; then
	out="$target_dir/debian"
	fast=()
else
	out="$target_dir/debian-dev"
	# A test package, of a binary several times the release one: lighter compression.
	fast=(--fast)
fi
mkdir -p "$out"
"$CARGO" deb --no-build --locked --profile "$PROFILE" --output "$out/" "${fast[@]}"
# cargo-deb names it <name>_<version>_<Debian architecture>.deb (a native build).
deb="$out/lxd-mutater_${version}_$(dpkg --print-architecture).deb"
if [ ! -f "$deb" ]; then
	echo "deb.sh: cargo-deb made no $deb" >&2
	exit 1
fi

# --- lintian ---------------------------------------------------------------------
# Any tag of warning level or above fails. Overrides (each with its reason) are in
# deploy/debian/lintian-overrides, shipped in the package, and shown here as O: lines.
# lintian's own --fail-on is not used: with --show-overrides, lintian 2.116 (bookworm)
# also fails on the tags it was told to override.
echo "deb.sh: lintian $deb"
report=$(lintian --fail-on none --show-overrides "$deb")
[ -z "$report" ] || echo "$report"
if grep -q '^[EW]: ' <<<"$report"; then
	echo "deb.sh: lintian found errors or warnings (above)" >&2
	exit 1
fi
echo "deb.sh: lintian found no error and no warning"
echo "$deb"
