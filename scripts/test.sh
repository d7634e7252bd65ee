#!/usr/bin/env bash
# The whole test suite: lints, every crate's unit and integration tests (real server binary,
# webrtc-crate peers, coturn's TURN clients), then the browser end-to-end test in headless
# Chromium against the release binary. Needs what .ci/run installs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

for tool in chromium turnutils_uclient turnutils_stunclient promtool node; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run .ci/run once (it installs the test tools) or see README"; exit 1; }
done
[ -d node_modules/playwright-core ] || { echo "missing node_modules: run 'npm ci'"; exit 1; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (workspace)"
cargo test --workspace

step "deploy checks (promtool check config/rules, manifests and dashboard parse)"
HUDDLE_BIN="$PWD/target/debug/huddle" bash deploy/check.sh

step "browser end-to-end (headless Chromium, release binary)"
cargo build --release --bin huddle
HUDDLE_BIN="$PWD/target/release/huddle" node --test tests/e2e/
