# lxd-mutater: the two commands of the README, and their parts.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: run test bench lxd test-deps build check-tools

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
	$(CARGO) test --lib --bins --tests

## Benchmarks (not part of make test): make bench, or make bench ARGS="--quick",
## ARGS="--instances 500". Prints a Markdown table, writes target/bench/results.json.
bench: lxd check-tools
	$(CARGO) build --release
	python3 bench/bench.py $(ARGS)

build:
	$(CARGO) build

## The demo: its own LXD project, its empty instances, the controller on examples/.
run: lxd build
	bash scripts/demo.sh

check-tools:
	@command -v $(CARGO) >/dev/null || { echo "cargo is not installed: install Rust (rustup) first" >&2; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy
