#!/usr/bin/env bash
# A/B of two Huddle binaries on one bench.sh scenario: the media thread's wake-ups per second
# (voluntary context switches of `media-0`, 10 s in the middle of the run) and the run's CPU per
# forwarded packet, alternating A, B, A, B. Needs root (bench.sh's network namespace).
#
#   loadtest/ab-wakeups.sh BIN_A BIN_B [RUN] [REPS]     # RUN: a bench.sh run name, default huddle-meeting
set -euo pipefail
A=${1:?binary A}; B=${2:?binary B}; RUN=${3:-huddle-meeting}; REPS=${4:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/target/bench/ab}
mkdir -p "$OUT"
for rep in $(seq "$REPS"); do
  for side in A B; do
    bin=$A; [ "$side" = B ] && bin=$B
    dir=$OUT/$side-$rep
    rm -rf "$dir"
    SERVER_BIN=$bin DURATION=25 REPEAT=1 SKIP_BUILD=1 RUNS=$RUN "$ROOT/loadtest/bench.sh" "$dir" >"$dir.log" 2>&1 &
    bench=$!
    sleep 13
    pid=$(pgrep -f "$bin serve" | head -1)
    task=
    for t in /proc/"$pid"/task/*; do [ "$(cat "$t/comm")" = media-0 ] && task=$t; done
    a=$(awk '/^voluntary_ctxt/ {print $2}' "$task/status")
    sleep 10
    b=$(awk '/^voluntary_ctxt/ {print $2}' "$task/status")
    wait "$bench"
    cpu=$(jq -r '.summary.server.cpu_us_per_forwarded_packet' "$dir/$RUN-1.json")
    echo "$side rep $rep: $(((b - a) / 10)) wake-ups/s, $cpu CPU-µs per forwarded packet ($bin)"
  done
done
