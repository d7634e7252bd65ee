#!/usr/bin/env bash
# Where the SFU's time goes: the release server under the load tester's audio scenario, profiled
# with perf (BENCHMARKS.md, "Profile: where the SFU's time goes").
#
#   loadtest/profile.sh [OUT_DIR]          (default OUT_DIR: target/profile/<date>)
#
# Starts target/release/huddle on CPU 1 and the load tester on CPU 0 as bench.sh does, waits
# DELAY seconds (joins and warm-up), records PERF_SECONDS of the server with DWARF call graphs,
# and prints perf's flat profile. The binaries must be built (cargo build --release -p huddle
# -p huddle-loadtest). Knobs (environment): DURATION (30), DELAY (10), PERF_SECONDS (15),
# PUBLISHERS (10), SUBSCRIBERS (40), SERVER_BIN, LOADTEST_BIN. Needs perf and taskset.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${1:-$ROOT/target/profile/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
DURATION=${DURATION:-30}
DELAY=${DELAY:-10}
PERF_SECONDS=${PERF_SECONDS:-15}
HUDDLE=${SERVER_BIN:-$ROOT/target/release/huddle}
LOADTEST=${LOADTEST_BIN:-$ROOT/target/release/huddle-loadtest}
for tool in perf taskset; do
  command -v "$tool" >/dev/null || { echo "profile.sh needs $tool" >&2; exit 1; }
done

DATA=$OUT/data
rm -rf "$DATA"; mkdir -p "$DATA"
: >"$OUT/huddle.log"
env HUDDLE_SIGNALING__MAX_PARTICIPANTS=10000 HUDDLE_LIMITS__JOINS_PER_IP_PER_MINUTE=0 \
  HUDDLE_LIMITS__MAX_CONNECTIONS=100000 RUST_LOG=warn \
  taskset -c 1 "$HUDDLE" serve --bind 127.0.0.1:0 --media-port 0 --turn-port 0 --no-turn \
  --data-dir "$DATA" >"$OUT/huddle.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
URL=
for _ in $(seq 100); do
  URL=$(sed -n 's|.*Huddle is ready at \(http://[0-9.:]*\).*|\1|p' "$OUT/huddle.log" || true)
  [ -n "$URL" ] && break
  sleep 0.1
done
[ -n "$URL" ] || { echo "huddle did not start: $(cat "$OUT/huddle.log")" >&2; exit 1; }

taskset -c 0 "$LOADTEST" --target huddle --url "$URL" --token-secret-file "$DATA/secret.key" \
  --scenario audio --publishers "${PUBLISHERS:-10}" --subscribers "${SUBSCRIBERS:-40}" \
  --duration "$DURATION" --server-pid "$PID" --label huddle-audio-profile \
  --report "$OUT/run.json" --no-progress >"$OUT/loadtest.txt" 2>&1 &
TESTER=$!
sleep "$DELAY"
perf record -F 999 --call-graph dwarf,16384 -p "$PID" -o "$OUT/perf.data" -- sleep "$PERF_SECONDS" \
  2>"$OUT/perf-record.log"
wait "$TESTER"
grep -E 'received \(window\)|loss|server CPU' "$OUT/loadtest.txt" || true
perf report -i "$OUT/perf.data" --no-children --percent-limit 2 --stdio 2>/dev/null \
  | grep -v '^$' >"$OUT/report.txt" || true
perf report -i "$OUT/perf.data" --children --stdio -g none --sort symbol 2>/dev/null \
  | grep '%' | head -120 >"$OUT/children.txt" || true
head -60 "$OUT/children.txt"
echo "perf data, reports and the tester's output in $OUT"
