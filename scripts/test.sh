#!/usr/bin/env bash
# The whole test suite: lints, every crate's unit and integration tests (real server binary,
# webrtc-crate peers, coturn's TURN clients), then the browser end-to-end test in headless
# Chromium against the release binary. Needs what .ci/run installs.
set -euo pipefail
cd "$(dirname "$0")/.."
# Where cargo puts binaries (CARGO_TARGET_DIR when set).
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"

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

step "fuzzing (cargo-fuzz, 20 s per target on the committed corpus; stable compiler via RUSTC_BOOTSTRAP)"
command -v cargo-fuzz >/dev/null || { echo "missing cargo-fuzz: run .ci/run once (cargo install cargo-fuzz)"; exit 1; }
for target in signaling_decode session sdp_offer turn_input recorder; do
  mkdir -p "fuzz/corpus/$target"
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" "corpus/$target" -- \
    -max_total_time=20 -rss_limit_mb=2048 -print_final_stats=1) || { echo "fuzz target $target failed: see fuzz/artifacts/$target"; exit 1; }
done

step "deploy checks (promtool check config/rules, manifests and dashboard parse)"
HUDDLE_BIN="$target_dir/debug/huddle" bash deploy/check.sh

step "browser end-to-end (headless Chromium, release binary)"
cargo build --release -p huddle --bin huddle -p huddle-loadtest --bin huddle-impair
# One browser test file at a time: each starts its own server and several Chromium processes,
# which is all two cores can carry without timing out.
HUDDLE_BIN="$target_dir/release/huddle" AIORTC_PYTHON="$target_dir/aiortc-venv/bin/python" \
  node --test --test-concurrency=1 tests/e2e/

step "soak (10 minutes of meeting rooms with churn through the load tester; memory, fds, tasks)"
HUDDLE_BIN="$target_dir/release/huddle" cargo test --release -p huddle-loadtest --test soak -- --ignored --nocapture
