#!/usr/bin/env bash
# Relays the same turnutils_uclient load through coturn's turnserver and
# through Huddle's TURN server (the `turnd` example), one after the other, and
# compares the servers' CPU time per relayed message.
#
#   turn-server/bench/compare.sh            # defaults below
#   M=50 N=2000 L=1200 Z=1 ROUNDS=2 turn-server/bench/compare.sh
#
# Servers are pinned to core 1 and the client to core 0 (taskset). CPU time is
# utime+stime of the server process (all its threads) from /proc/PID/stat,
# read just before the client starts and just after it exits. Everything runs
# on 127.0.0.1. Needs: coturn (turnserver, turnutils_uclient), taskset, cargo.
set -euo pipefail

M=${M:-50}          # clients
N=${N:-2000}        # messages per client
L=${L:-1200}        # message length, bytes
Z=${Z:-1}           # interval between a client's messages, ms
ROUNDS=${ROUNDS:-1} # runs per server
HUDDLE_THREADS=${HUDDLE_THREADS:-2} # turnd worker threads (0: one current-thread runtime); coturn runs one UDP thread per core
SERVER_CORE=${SERVER_CORE:-1}
CLIENT_CORE=${CLIENT_CORE:-0}
SECRET=bench-secret
COTURN_PORT=${COTURN_PORT:-34781}
HUDDLE_PORT=${HUDDLE_PORT:-34782}

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d /tmp/turn-bench.XXXXXX)
for tool in turnserver turnutils_uclient taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install coturn util-linux)" >&2; exit 1; }
done

echo "building turnd (release)..." >&2
(cd "$root" && cargo build --release -q -p huddle-turn --example turnd)
target_dir=$(cd "$root" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
TURND=${TURND:-${target_dir:-$root/target}/release/examples/turnd}

clk=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Datagrams dropped by the kernel on the server's own UDP sockets (full
# receive buffers), from the `drops` column of /proc/net/udp{,6}.
server_drops() {
  local inodes
  inodes=$(ls -l "/proc/$1/fd" 2>/dev/null | sed -n 's/.*socket:\[\([0-9]*\)\]/\1/p' | tr '\n' ' ')
  cat /proc/net/udp /proc/net/udp6 | awk -v list="$inodes" '
    BEGIN { n = split(list, a, " "); for (i = 1; i <= n; i++) mine[a[i]] = 1 }
    NR > 1 && ($10 in mine) { d += $13 } END { print d + 0 }'
}
# System-wide UDP receive-buffer overflows (client sockets included).
rcvbuf_errors() { awk '/^Udp:/ { if (++n == 2) print $6 }' /proc/net/snmp; }

server_pid=
stop_server() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=
}
trap 'stop_server; rm -rf "$work"' EXIT

start_coturn() {
  taskset -c "$SERVER_CORE" turnserver -n --use-auth-secret --static-auth-secret="$SECRET" \
    --realm bench.test --no-tls --no-dtls -L 127.0.0.1 --listening-port "$COTURN_PORT" \
    --relay-ip 127.0.0.1 --allow-loopback-peers --no-cli --log-file stdout --simple-log \
    --min-port 49152 --max-port 49999 >"$work/coturn.log" 2>&1 &
  server_pid=$!
}

start_huddle() {
  taskset -c "$SERVER_CORE" "$TURND" --listen "127.0.0.1:$HUDDLE_PORT" --secret "$SECRET" \
    --realm bench.test --mode general --allow-peer 127.0.0.0/8 --min-port 50000 --max-port 50999 \
    --user-quota 100000 --total-quota 100000 --unauth-rate 0 --threads "$HUDDLE_THREADS" \
    >"$work/huddle.log" 2>&1 &
  server_pid=$!
}

# run NAME PORT -> prints "name sent recv lost loss% secs cpu_us"
run() {
  local name=$1 port=$2 out="$work/$1.uclient.$3.log"
  sleep 1.5
  kill -0 "$server_pid" || { echo "$name did not start" >&2; cat "$work/$name.log" >&2; exit 1; }
  local before after errs_before errs_after drops
  errs_before=$(rcvbuf_errors)
  before=$(cpu_ticks "$server_pid")
  taskset -c "$CLIENT_CORE" timeout 300 turnutils_uclient -y -W "$SECRET" -e 127.0.0.1 \
    -m "$M" -n "$N" -l "$L" -z "$Z" -p "$port" 127.0.0.1 >"$out" 2>&1 || {
      echo "uclient against $name failed:" >&2; tail -5 "$out" >&2; exit 1; }
  after=$(cpu_ticks "$server_pid")
  errs_after=$(rcvbuf_errors)
  drops=$(server_drops "$server_pid")
  local sent recv lost pct secs
  sent=$(grep -o 'tot_send_msgs=[0-9]*' "$out" | tail -1 | cut -d= -f2)
  recv=$(grep -o 'tot_recv_msgs=[0-9]*' "$out" | tail -1 | cut -d= -f2)
  lost=$(sed -n 's/.*Total lost packets \([0-9]*\) (\([0-9.]*\)%).*/\1/p' "$out" | tail -1)
  pct=$(sed -n 's/.*Total lost packets \([0-9]*\) (\([0-9.]*\)%).*/\2/p' "$out" | tail -1)
  secs=$(sed -n 's/.*Total transmit time is \([0-9]*\).*/\1/p' "$out" | tail -1)
  echo "$name $sent $recv $lost $pct $secs $(( (after - before) * 1000000 / clk )) $drops $((errs_after - errs_before))"
}

results=()
for round in $(seq 1 "$ROUNDS"); do
  start_coturn; results+=("$(run coturn "$COTURN_PORT" "$round")"); stop_server
  start_huddle; results+=("$(run huddle "$HUDDLE_PORT" "$round")"); stop_server
done

echo
echo "uclient -y -m $M -n $N -l $L -z $Z (UDP, REST secret), servers on core $SERVER_CORE, client on core $CLIENT_CORE, turnd --threads $HUDDLE_THREADS"
printf '%-8s %9s %9s %7s %8s %6s %12s %14s %12s %12s %12s\n' server sent received lost loss% secs server_cpu_ms cpu_us_per_msg cpu_us_per_hop server_drops rcvbuf_errs
declare -A cpu_sum recv_sum
for r in "${results[@]}"; do
  read -r name sent recv lost pct secs cpu drops errs <<<"$r"
  per=$(awk -v c="$cpu" -v n="$recv" 'BEGIN { if (n > 0) printf "%.2f", c / n; else print "n/a" }')
  hop=$(awk -v c="$cpu" -v n="$recv" 'BEGIN { if (n > 0) printf "%.2f", c / n / 2; else print "n/a" }')
  printf '%-8s %9s %9s %7s %8s %6s %12d %14s %12s %12s %12s\n' "$name" "$sent" "$recv" "$lost" "$pct" "$secs" $((cpu / 1000)) "$per" "$hop" "$drops" "$errs"
  cpu_sum[$name]=$(( ${cpu_sum[$name]:-0} + cpu ))
  recv_sum[$name]=$(( ${recv_sum[$name]:-0} + recv ))
done
awk -v hc="${cpu_sum[huddle]}" -v hn="${recv_sum[huddle]}" -v cc="${cpu_sum[coturn]}" -v cn="${recv_sum[coturn]}" \
  'BEGIN { if (hn > 0 && cn > 0 && cc > 0) printf "\nhuddle/coturn CPU per delivered message: %.2fx\n", (hc / hn) / (cc / cn) }'
