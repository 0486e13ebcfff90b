# lxd-mutater: the two commands of the README, and their parts.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: run test lxd test-deps build check-tools

## Bring up a local LXD (installs Debian's lxd as root when none answers).
lxd:
	bash scripts/lxd-up.sh

## Prometheus and promtool for the observability tests.
test-deps:
	bash scripts/test-deps.sh

## Every test: formatting, lints, unit and real-LXD integration tests.
test: lxd test-deps check-tools
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test --all-targets

build:
	$(CARGO) build

## The demo: its own LXD project, its empty instances, the controller on examples/.
run: lxd build
	bash scripts/demo.sh

check-tools:
	@command -v $(CARGO) >/dev/null || { echo "cargo is not installed: install Rust (rustup) first" >&2; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy
