#!/usr/bin/env bash
# loadtest/cluster-bench.sh [OUT_DIR]: rooms spread over the nodes of a cluster, next to the same
# load on one node (see BENCHMARKS.md, "Cluster: rooms spread over three nodes").
#
# Starts a redis-server and a PostgreSQL (initdb in OUT_DIR, trust auth, fsync off) on loopback,
# then for each run starts NODES (or one) release huddle nodes in cluster mode on SERVER_CPU,
# waits for them to register in Redis, and runs the load tester on TESTER_CPU with one --url and
# one --server-pid per node: participants join through the nodes in turn and follow redirects to
# their room's node; the report gives rooms, participants and forwarded packets per node and the
# join time direct and through a redirect. Nodes stop with SIGTERM (they deregister) and Redis is
# flushed between runs. Writes one JSON report per run and figures.md.
#
# Knobs (environment): DURATION (s, default 30), REPEAT (2), NODES (3), ROOMS (6), PUBS (2),
# SUBS (6), SCENARIO_ARGS (instead of the audio scenario's arguments), RUNS (subset of
# "cluster single"), SERVER_CPU (1; the nodes, Redis and PostgreSQL), TESTER_CPU (0),
# REDIS_PORT (16379), PG_PORT (15432), SKIP_BUILD=1, SERVER_BIN, LOADTEST_BIN.
# Needs: redis-server and redis-cli (Debian redis-server, redis-tools), initdb, postgres and
# pg_isready (postgresql), taskset, jq; setpriv (util-linux) when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${1:-$ROOT/target/cluster-bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DURATION=${DURATION:-30}
REPEAT=${REPEAT:-2}
NODES=${NODES:-3}
ROOMS=${ROOMS:-6}
PUBS=${PUBS:-2}
SUBS=${SUBS:-6}
SERVER_CPU=${SERVER_CPU:-1}
TESTER_CPU=${TESTER_CPU:-0}
REDIS_PORT=${REDIS_PORT:-16379}
PG_PORT=${PG_PORT:-15432}
read -r -a SCENARIO <<<"${SCENARIO_ARGS:---scenario audio --rooms $ROOMS --publishers $PUBS --subscribers $SUBS}"

# A tool on PATH or in PostgreSQL's bin directory.
tool() {
  local t
  t=$(command -v "$1" 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$t" ] || { echo "cluster-bench.sh needs $1 (apt-get install -y $2)" >&2; exit 1; }
  echo "$t"
}
REDIS_SERVER=$(tool redis-server redis-server)
REDIS_CLI=$(tool redis-cli redis-tools)
INITDB=$(tool initdb postgresql)
POSTGRES=$(tool postgres postgresql)
PG_ISREADY=$(tool pg_isready postgresql-client)
tool taskset util-linux >/dev/null
tool jq jq >/dev/null
AS_PG=()
if [ "$(id -u)" = 0 ]; then
  AS_PG=("$(tool setpriv util-linux)" --reuid=postgres --regid=postgres --init-groups --reset-env)
fi

if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -p huddle -p huddle-loadtest
fi
HUDDLE=${SERVER_BIN:-$ROOT/target/release/huddle}
LOADTEST=${LOADTEST_BIN:-$ROOT/target/release/huddle-loadtest}
# One secret for every node (a cluster needs an explicit one) and for the tester's tokens.
SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export HUDDLE_LOADTEST_SECRET=$SECRET

REDIS_PID= PG_PID=
NODE_PIDS=()
cleanup() {
  for p in "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -z "$REDIS_PID" ] || kill "$REDIS_PID" 2>/dev/null || true
  [ -z "$PG_PID" ] || kill "$PG_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

taskset -c "$SERVER_CPU" "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
  --appendonly no --loglevel warning >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 100); do "$REDIS_CLI" -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

PGDIR=$OUT/pg
rm -rf "$PGDIR"; mkdir -p "$PGDIR"
[ "$(id -u)" != 0 ] || chown -R postgres:postgres "$PGDIR"
"${AS_PG[@]}" "$INITDB" -D "$PGDIR/data" -U huddle -A trust --no-sync -E UTF8 >"$OUT/initdb.log" 2>&1
"${AS_PG[@]}" taskset -c "$SERVER_CPU" "$POSTGRES" -D "$PGDIR/data" -p "$PG_PORT" -k "$PGDIR" \
  -c listen_addresses=127.0.0.1 -c fsync=off >"$OUT/postgres.log" 2>&1 &
PG_PID=$!
for _ in $(seq 200); do
  "$PG_ISREADY" -h 127.0.0.1 -p "$PG_PORT" -U huddle >/dev/null 2>&1 && break; sleep 0.1
done
"$PG_ISREADY" -h 127.0.0.1 -p "$PG_PORT" -U huddle >/dev/null || { cat "$OUT/postgres.log" >&2; exit 1; }

# start_nodes RUN N: N nodes n1..nN; sets NODE_PIDS, NODE_URLS.
start_nodes() {
  NODE_PIDS=() NODE_URLS=()
  local run=$1 n=$2 i log url
  for i in $(seq "$n"); do
    log=$OUT/$run-n$i.log
    : >"$log"
    rm -rf "$OUT/$run-n$i-data"
    env HUDDLE_AUTH__SECRET="$SECRET" \
      HUDDLE_CLUSTER__REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" \
      HUDDLE_CLUSTER__POSTGRES_URL="postgres://huddle@127.0.0.1:$PG_PORT/postgres" \
      HUDDLE_CLUSTER__NODE_ID="n$i" \
      HUDDLE_SIGNALING__MAX_PARTICIPANTS=10000 HUDDLE_LIMITS__JOINS_PER_IP_PER_MINUTE=0 \
      HUDDLE_LIMITS__MAX_CONNECTIONS=100000 RUST_LOG=warn \
      taskset -c "$SERVER_CPU" "$HUDDLE" serve --bind 127.0.0.1:0 --media-port 0 --turn-port 0 \
      --no-turn --data-dir "$OUT/$run-n$i-data" >"$log" 2>&1 &
    NODE_PIDS+=($!)
    url=
    for _ in $(seq 100); do
      url=$(sed -n 's|.*Huddle is ready at \(http://[0-9.:]*\).*|\1|p' "$log" || true)
      [ -n "$url" ] && break
      sleep 0.1
    done
    [ -n "$url" ] || { echo "node n$i did not start: $(cat "$log")" >&2; exit 1; }
    NODE_URLS+=("$url")
  done
  # Every node registered (first heartbeat) before anyone joins.
  for _ in $(seq 100); do
    [ "$("$REDIS_CLI" -p "$REDIS_PORT" --raw SCARD huddle:nodes)" -ge "$n" ] && return 0
    sleep 0.1
  done
  echo "nodes did not register in Redis" >&2
  exit 1
}

stop_nodes() {
  for p in "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${NODE_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  NODE_PIDS=()
  "$REDIS_CLI" -p "$REDIS_PORT" FLUSHALL >/dev/null
  sleep 1
}

# run NAME NODES
run() {
  local name=$1 n=$2
  echo "==> $name ($n node(s))"
  start_nodes "$name" "$n"
  local urls pids
  urls=$(IFS=,; echo "${NODE_URLS[*]}")
  pids=$(IFS=,; echo "${NODE_PIDS[*]}")
  local cmd=(taskset -c "$TESTER_CPU" "$LOADTEST" --target huddle --url "$urls" "${SCENARIO[@]}"
    --duration "$DURATION" --server-pid "$pids" --label "$name" --report "$OUT/$name.json" --no-progress)
  echo "HUDDLE_LOADTEST_SECRET=… ${cmd[*]}" >"$OUT/$name.cmd"
  echo "$name start $(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/loadavg.txt"
  "${cmd[@]}" | tee "$OUT/$name.txt"
  echo "$name end $(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/loadavg.txt"
  stop_nodes
}

for rep in $(seq "$REPEAT"); do
  for r in ${RUNS:-cluster single}; do
    case $r in
      cluster) run "cluster$NODES-$rep" "$NODES" ;;
      single) run "single-$rep" 1 ;;
      *) echo "unknown run $r" >&2; exit 1 ;;
    esac
  done
done

{
  echo "| run | joined/planned | forwarded packets/s (tester) | loss % e2e | server CPU-µs per forwarded packet (all nodes) | server cores (all nodes) | latency audio p50 / p99 (ms) | joins redirected | WebSocket → joined, direct p50 / p95 (ms) | WebSocket → joined, via redirect p50 / p95 (ms) | join → first media, direct / via redirect p50 (ms) |"
  echo "|---|---|---:|---:|---:|---:|---|---:|---|---|---|"
  for f in "$OUT"/*.json; do
    jq -r '.summary as $s | def r1: . * 10 | round / 10; def r2: . * 100 | round / 100;
      "| \(.label) | \($s.joined)/\($s.participants) | \($s.packets_per_sec|floor) | \($s.e2e_loss_pct*1000|round/1000)"
      + " | \($s.server.cpu_us_per_forwarded_packet|r2) | \($s.server.cores*1000|round/1000)"
      + " | \(if $s.latency_audio then "\($s.latency_audio.p50) / \($s.latency_audio.p99)" else "–" end)"
      + " | \($s.redirected)"
      + " | \(if $s.signal_join_direct_ms then "\($s.signal_join_direct_ms.p50|r1) / \($s.signal_join_direct_ms.p95|r1)" else "–" end)"
      + " | \(if $s.signal_join_redirected_ms then "\($s.signal_join_redirected_ms.p50|r1) / \($s.signal_join_redirected_ms.p95|r1)" else "–" end)"
      + " | \(if $s.join_direct_ms then $s.join_direct_ms.p50|r1|tostring else "–" end) / \(if $s.join_redirected_ms then $s.join_redirected_ms.p50|r1|tostring else "–" end) |"' "$f"
  done
  echo
  echo "| run | node | rooms | participants | forwarded packets/s | received packets/s | CPU (cores) | CPU-µs per forwarded packet |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|"
  for f in "$OUT"/*.json; do
    jq -r '.label as $l | .summary.nodes[] | def r2: . * 100 | round / 100;
      "| \($l) | \(.node // .url) | \(.rooms) | \(.participants) | \(.forwarded_packets_per_sec // 0 | floor) | \(.received_packets_per_sec // 0 | floor) | \(.cores // 0 | . * 1000 | round / 1000) | \(.cpu_us_per_forwarded_packet // 0 | r2) |"' "$f"
  done
  echo
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ); nproc: $(nproc); CPU: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
  echo "nodes, Redis and PostgreSQL on CPU $SERVER_CPU, tester on CPU $TESTER_CPU, $DURATION s per run"
  echo "1-minute load average around the runs: $(awk '{print $3}' "$OUT/loadavg.txt" | sort -n | sed -n '1p;$p' | paste -sd'-' -)"
} >"$OUT/figures.md"
cat "$OUT/figures.md"
echo "reports and commands in $OUT"
