# lxd-mutater: the two commands of the README, and their parts.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: run run-kubernetes test bench soak lxd test-deps k8s-tools build check-tools install uninstall build-release deb

## Bring up a local LXD and Incus beside it (installs Debian's lxd, and incus from
## bookworm-backports, as root when none answers): the integration tests run on both.
lxd:
	bash scripts/lxd-up.sh
	bash scripts/incus-up.sh

## Prometheus and promtool for the observability tests.
test-deps:
	bash scripts/test-deps.sh

## kubectl (kustomize), kubernetes-validate and systemd-analyze for tests/manifests.rs.
k8s-tools:
	bash scripts/k8s-tools.sh

## Every test: formatting, lints, unit and real-LXD integration tests.
test: lxd test-deps k8s-tools check-tools
	$(CARGO) fmt --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace --lib --bins --tests

## Benchmarks (not part of make test): make bench, or make bench ARGS="--quick",
## ARGS="--instances 500". Prints a Markdown table, writes target/bench/results.json.
bench: lxd check-tools
	$(CARGO) build --release
	python3 bench/bench.py $(ARGS)

## Soak (not part of make test): 30 minutes of random edits, manual drifts and LXD
## restarts on 200 instances, on a private LXD daemon; make soak ARGS="--minutes 5".
soak: lxd check-tools
	$(CARGO) build --release
	python3 bench/soak.py $(ARGS)

build:
	$(CARGO) build

## The demo: its own LXD project, its empty instances, the controller on examples/.
run: lxd build
	bash scripts/demo.sh

## The same demo with the examples as custom resources on a fake API server (no cluster
## needed; kubectl talks to it): kubectl edit machine 0 -n demo, and LXD follows.
run-kubernetes: lxd k8s-tools
	$(CARGO) build --workspace --bins
	bash scripts/demo.sh kubernetes

check-tools:
	@command -v $(CARGO) >/dev/null || { echo "cargo is not installed: install Rust (rustup) first" >&2; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

## The release binary, which make install and make deb take: target/release/lxd-mutater
## (under $CARGO_TARGET_DIR when that is set).
build-release:
	$(CARGO) build --release --locked --bin lxd-mutater

## The Debian package: target/debian/lxd-mutater_<version>-1_<arch>.deb, made by cargo-deb
## from [package.metadata.deb] and checked with lintian (no error, no warning). Installs
## cargo-deb, lintian and dpkg-dev when they are missing. Then: dpkg -i target/debian/*.deb
deb: build-release
	CARGO="$(CARGO)" bash scripts/deb.sh --no-build

## Install as a systemd service: make build-release, then make install [PREFIX=/usr/local]
## [DESTDIR=] [BIN=path]; install builds nothing.
## The binary to $(PREFIX)/bin, the unit to $(UNITDIR) (ExecStart follows PREFIX), and,
## only where they do not exist yet, /etc/default/lxd-mutater and /etc/lxd-mutater/resources/
## (with the examples as *.yaml.example, which the controller does not read until renamed):
## an operator's settings and resources are never overwritten. Runs no systemctl.
PREFIX ?= /usr/local
DESTDIR ?=
UNITDIR ?= $(PREFIX)/lib/systemd/system
BIN ?= $(or $(CARGO_TARGET_DIR),target)/release/lxd-mutater

install:
	@test -f "$(BIN)" || { echo "no $(BIN): run make build-release first (or give BIN=path)" >&2; exit 1; }
	install -D -m 0755 "$(BIN)" "$(DESTDIR)$(PREFIX)/bin/lxd-mutater"
	install -d -m 0755 "$(DESTDIR)$(UNITDIR)"
	sed 's|^ExecStart=/usr/local/bin/lxd-mutater |ExecStart=$(PREFIX)/bin/lxd-mutater |' \
		deploy/systemd/lxd-mutater.service > "$(DESTDIR)$(UNITDIR)/lxd-mutater.service.tmp"
	chmod 0644 "$(DESTDIR)$(UNITDIR)/lxd-mutater.service.tmp"
	mv -f "$(DESTDIR)$(UNITDIR)/lxd-mutater.service.tmp" "$(DESTDIR)$(UNITDIR)/lxd-mutater.service"
	@set -e; if [ -e "$(DESTDIR)/etc/default/lxd-mutater" ]; then \
		echo "kept $(DESTDIR)/etc/default/lxd-mutater (yours)"; \
	else \
		install -D -m 0644 deploy/systemd/lxd-mutater.default "$(DESTDIR)/etc/default/lxd-mutater"; \
		echo "installed $(DESTDIR)/etc/default/lxd-mutater"; \
	fi
	@set -e; if [ -e "$(DESTDIR)/etc/lxd-mutater/resources" ]; then \
		echo "kept $(DESTDIR)/etc/lxd-mutater/resources/ (yours)"; \
	else \
		install -d -m 0755 "$(DESTDIR)/etc/lxd-mutater/resources"; \
		for f in examples/*.yaml; do \
			install -m 0644 "$$f" "$(DESTDIR)/etc/lxd-mutater/resources/$$(basename "$$f").example"; \
		done; \
		echo "installed $(DESTDIR)/etc/lxd-mutater/resources/ with the examples as *.yaml.example:"; \
		echo "inert until renamed to *.yaml (they describe the demo's model, instances juju-demo-*)"; \
	fi
	@echo
	@echo "Then: systemctl daemon-reload && systemctl enable --now lxd-mutater"
	@echo "      (settings: /etc/default/lxd-mutater; status: lxd-mutater get machines)"

## Undo make install (same PREFIX, DESTDIR, UNITDIR): removes the binary and the unit, and
## /etc/default/lxd-mutater and the *.yaml.example files only while they are as install
## wrote them (then the directories, if empty). An operator's settings and resources, the
## enable symlinks of systemctl and the statuses in /var/lib/lxd-mutater stay. A file of
## the Debian package (PREFIX=/usr) is left to dpkg. Runs no systemctl: first
## systemctl disable --now lxd-mutater, after it systemctl daemon-reload.
uninstall:
	@set -e; \
	owned_by_dpkg() { [ -z "$(DESTDIR)" ] && dpkg-query -S "$$1" >/dev/null 2>&1; }; \
	for f in "$(DESTDIR)$(PREFIX)/bin/lxd-mutater" "$(DESTDIR)$(UNITDIR)/lxd-mutater.service"; do \
		if [ ! -e "$$f" ]; then continue; fi; \
		if owned_by_dpkg "$$f"; then echo "kept $$f (the Debian package's: dpkg -r lxd-mutater)"; continue; fi; \
		rm -f "$$f"; echo "removed $$f"; \
	done; \
	d="$(DESTDIR)/etc/default/lxd-mutater"; \
	if [ -e "$$d" ] && ! owned_by_dpkg "$$d"; then \
		if cmp -s "$$d" deploy/systemd/lxd-mutater.default; then rm -f "$$d"; echo "removed $$d"; \
		else echo "kept $$d (yours: changed since make install)"; fi; \
	fi; \
	r="$(DESTDIR)/etc/lxd-mutater/resources"; \
	for f in examples/*.yaml; do \
		e="$$r/$$(basename "$$f").example"; \
		if [ -e "$$e" ] && cmp -s "$$e" "$$f"; then rm -f "$$e"; echo "removed $$e"; fi; \
	done; \
	for dir in "$$r" "$(DESTDIR)/etc/lxd-mutater"; do \
		if [ -d "$$dir" ] && ! owned_by_dpkg "$$dir"; then \
			if rmdir "$$dir" 2>/dev/null; then echo "removed $$dir/"; \
			else echo "kept $$dir/ (not empty: yours)"; fi; \
		fi; \
	done; \
	if [ -e "$(DESTDIR)/etc/systemd/system/multi-user.target.wants/lxd-mutater.service" ] || \
		[ -L "$(DESTDIR)/etc/systemd/system/multi-user.target.wants/lxd-mutater.service" ]; then \
		echo "still enabled: systemctl disable lxd-mutater (make uninstall runs no systemctl)"; \
	fi
