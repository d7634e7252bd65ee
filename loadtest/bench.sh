#!/usr/bin/env bash
# Huddle against Janus VideoRoom, measured in one run on one machine. Every server runs inside a
# network namespace this script makes (a veth pair on a private /24), the load tester outside it:
# no traffic ever goes to an address of the machine's own interfaces.
#
#   loadtest/bench.sh [OUT_DIR]          (default OUT_DIR: target/bench/<date>)
#
# Builds the release binaries, makes the namespace (NETNS, default huddle-bench-<pid>: veth
# NET_PREFIX.1 on the host side, NET_PREFIX.2 inside; NET_PREFIX defaults to 10.77.0), then for
# each scenario starts the server inside it on CPU 1 (ip netns exec + taskset) and the load tester
# on CPU 0 in the root namespace, aimed at NET_PREFIX.2 with its ICE on NET_PREFIX.1; runs the
# tester for DURATION seconds with --server-pid, stops the server, and goes on to the next one.
# Writes one JSON report and one SVG plot per run and a figures table (figures.md) that
# BENCHMARKS.md quotes. The namespace and its veth pair are deleted on exit.
#
# Knobs (environment): DURATION (s, default 30), REPEAT (3; 0 only redoes figures.md from the
# reports already in OUT_DIR), SERVER_CPU (1), TESTER_CPU (0),
# AUDIO_PUBS (10), AUDIO_SUBS (40), AUDIO_SUBS_LARGE (100), LIVE_SUBS (40), MEETING (8),
# MEETING_LARGE (25), VIDEO_KBPS (800), NETNS, NET_PREFIX, TESTER_RCVBUF (bytes, 1 MiB),
# RUNS (space-separated subset of: huddle-audio janus-audio huddle-livestream janus-livestream
# huddle-meeting janus-meeting huddle-meeting25 janus-meeting25 huddle-audio-large
# janus-audio-large; and, not run by default, huddle-livestream-mix-simulcast3
# huddle-livestream-mix-simulcast1 huddle-churn, huddle-audio-overload janus-audio-overload:
# audio to AUDIO_SUBS_OVERLOAD (100) listeners with BUSY_LOOPS (1) busy loops on the server's core),
# huddle-meeting4 huddle-meeting4-whep20 huddle-meeting4-record (a meeting of 4, alone, watched
# by 20 WHEP viewers, or recorded through the room API;
# Huddle only), SKIP_JANUS=1, SKIP_BUILD=1, SERVER_BIN and
# LOADTEST_BIN (other builds; not HUDDLE_*, which huddle reads as configuration), NO_LIMIT_ENV=1
# (for builds older than the [limits] section).
# The churn run (huddle-churn; Huddle only: the Janus driver has no churn) takes CHURN_STEADY (8)
# steady participants, CHURN_TOTAL (60) joiners, CHURN_CONCURRENT (4) at a time, CHURN_STAY
# (mean stay, s, 20) and CHURN_DURATION (s, the run's bound: default DURATION); for the long
# churn of BENCHMARKS.md use e.g. CHURN_TOTAL=2000 CHURN_CONCURRENT=12 CHURN_STAY=5
# CHURN_DURATION=1200.
# Needs: root (ip netns), iproute2, cargo, taskset (util-linux), jq, and for the peer the Debian
# package `janus`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${1:-$ROOT/target/bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DURATION=${DURATION:-30}
REPEAT=${REPEAT:-3}
SERVER_CPU=${SERVER_CPU:-1}
TESTER_CPU=${TESTER_CPU:-0}
AUDIO_PUBS=${AUDIO_PUBS:-10}
AUDIO_SUBS=${AUDIO_SUBS:-40}
AUDIO_SUBS_LARGE=${AUDIO_SUBS_LARGE:-100}
AUDIO_SUBS_OVERLOAD=${AUDIO_SUBS_OVERLOAD:-100}
BUSY_LOOPS=${BUSY_LOOPS:-1}
LIVE_SUBS=${LIVE_SUBS:-40}
MEETING=${MEETING:-8}
MEETING_LARGE=${MEETING_LARGE:-25}
VIDEO_KBPS=${VIDEO_KBPS:-800}
CHURN_STEADY=${CHURN_STEADY:-8}
CHURN_TOTAL=${CHURN_TOTAL:-60}
CHURN_CONCURRENT=${CHURN_CONCURRENT:-4}
CHURN_STAY=${CHURN_STAY:-20}
CHURN_DURATION=${CHURN_DURATION:-$DURATION}
# The tester's UDP receive buffers (--udp-rcvbuf; 0 = the system default): with the default
# ~208 KiB, a tester core that the machine's other work delays for a moment drops datagrams,
# and the loss is the tester's, not the server's. 1 MiB holds ~0.5 s of a meeting-of-25
# participant's ~2,000 packets/s; much more only turns the tester's drops into its latency.
TESTER_RCVBUF=${TESTER_RCVBUF:-1048576}
JANUS_WS_PORT=${JANUS_WS_PORT:-18188}
# Janus runs one thread (GLib loop) per handle unless told to share a few static event loops;
# its documentation recommends static loops at scale. One loop matches the one pinned core;
# JANUS_EVENT_LOOPS=0 restores the default.
JANUS_EVENT_LOOPS=${JANUS_EVENT_LOOPS:-1}
# The servers' network namespace: a veth pair on a private /24, NET_PREFIX.1 on the host side
# (the load tester's address, for signaling and ICE), NET_PREFIX.2 inside (the server's only
# address: HTTP/WebSocket and media for Huddle, WebSocket and ICE for Janus).
NETNS=${NETNS:-huddle-bench-$$}
NET_PREFIX=${NET_PREFIX:-10.77.0}
HOST_IP=$NET_PREFIX.1
SERVER_IP=$NET_PREFIX.2
VETH_HOST=hb$$h
VETH_NS=hb$$n

for tool in ip taskset jq; do
  command -v "$tool" >/dev/null || { echo "bench.sh needs $tool" >&2; exit 1; }
done
if [ -z "${SKIP_JANUS:-}" ] && ! command -v janus >/dev/null; then
  echo "janus not found: apt-get install -y --no-install-recommends janus (or SKIP_JANUS=1)" >&2
  exit 1
fi
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -p huddle -p huddle-loadtest
fi
HUDDLE=${SERVER_BIN:-$ROOT/target/release/huddle}
LOADTEST=${LOADTEST_BIN:-$ROOT/target/release/huddle-loadtest}

SERVER_PID=
NETNS_MADE=
# The kernel's cap on socket buffers, raised for the run (both servers get the same) and put
# back on exit: Huddle asks for 4 MiB per media socket (docs/scaling.md). SOCKET_MAX=0 leaves it.
SOCKET_MAX=${SOCKET_MAX:-4194304}
OLD_RMEM=$(sysctl -n net.core.rmem_max); OLD_WMEM=$(sysctl -n net.core.wmem_max)
if [ "$SOCKET_MAX" != 0 ]; then
  sysctl -qw net.core.rmem_max="$SOCKET_MAX" net.core.wmem_max="$SOCKET_MAX"
fi
cleanup() {
  if [ "$SOCKET_MAX" != 0 ]; then sysctl -qw net.core.rmem_max="$OLD_RMEM" net.core.wmem_max="$OLD_WMEM" || true; fi
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  if [ -n "$NETNS_MADE" ]; then
    # Anything still running in the namespace was started by this script.
    for pid in $(ip netns pids "$NETNS" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    ip netns del "$NETNS" 2>/dev/null || true
    ip link del "$VETH_HOST" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Makes the namespace and its veth pair; refuses a prefix already routed on this machine.
make_netns() {
  if [ "$(id -u)" != 0 ]; then
    echo "bench.sh needs root for ip netns (the servers run in a namespace of their own)" >&2
    exit 1
  fi
  if ip -4 -o addr show | grep -q " $NET_PREFIX\."; then
    echo "$NET_PREFIX.0/24 is already on an interface of this machine: set NET_PREFIX" >&2
    exit 1
  fi
  ip netns add "$NETNS"
  NETNS_MADE=1
  ip link add "$VETH_HOST" type veth peer name "$VETH_NS"
  ip link set "$VETH_NS" netns "$NETNS"
  ip addr add "$HOST_IP/24" dev "$VETH_HOST"
  ip link set "$VETH_HOST" up
  ip netns exec "$NETNS" ip addr add "$SERVER_IP/24" dev "$VETH_NS"
  ip netns exec "$NETNS" ip link set "$VETH_NS" up
  ip netns exec "$NETNS" ip link set lo up
  # The namespace has no route but its /24: nothing a server does can leave it for elsewhere.
  for _ in $(seq 50); do
    if ip netns exec "$NETNS" ip -4 -o addr show dev "$VETH_NS" | grep -q "$SERVER_IP"; then
      return 0
    fi
    sleep 0.1
  done
  echo "the namespace's address did not come up" >&2
  exit 1
}

# The room API's credentials (every run has them; huddle-meeting4-record uses them).
BENCH_API_KEY=bench
BENCH_API_SECRET=bench-api-secret-0123456789abcdef

# Starts huddle on SERVER_CPU; sets SERVER_PID, HUDDLE_URL, HUDDLE_DATA.
start_huddle() {
  HUDDLE_DATA=$OUT/huddle-data-$1
  rm -rf "$HUDDLE_DATA"; mkdir -p "$HUDDLE_DATA"
  : >"$OUT/huddle-$1.log" # exists before the server's redirect does (the loop below reads it)
  # Room size and per-address join limits off: every participant comes from one address.
  local limits=(HUDDLE_LIMITS__JOINS_PER_IP_PER_MINUTE=0 HUDDLE_LIMITS__MAX_CONNECTIONS=100000)
  [ -z "${NO_LIMIT_ENV:-}" ] || limits=()
  # ip netns exec, env and taskset each exec the next: $! is huddle's own PID.
  ip netns exec "$NETNS" env HUDDLE_SIGNALING__MAX_PARTICIPANTS=10000 "${limits[@]}" RUST_LOG=warn \
    HUDDLE_API__KEY="$BENCH_API_KEY" HUDDLE_API__SECRET="$BENCH_API_SECRET" \
    taskset -c "$SERVER_CPU" "$HUDDLE" serve --bind "$SERVER_IP:0" --media-bind-ip "$SERVER_IP" \
    --media-port 0 --turn-port 0 --no-turn --data-dir "$HUDDLE_DATA" >"$OUT/huddle-$1.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    HUDDLE_URL=$(sed -n 's|.*Huddle is ready at \(http://[0-9.:]*\).*|\1|p' "$OUT/huddle-$1.log" || true)
    [ -n "$HUDDLE_URL" ] && return 0
    sleep 0.1
  done
  echo "huddle did not start: $(cat "$OUT/huddle-$1.log")" >&2
  exit 1
}

# Starts Janus (videoroom plugin, WebSocket transport only, ICE on the namespace's address) on
# SERVER_CPU.
start_janus() {
  local dir=$OUT/janus-conf-$1
  rm -rf "$dir"; cp -r /etc/janus "$dir"
  sed -i \
    -e "s|configs_folder = \"/etc/janus\"|configs_folder = \"$dir\"|" \
    -e 's|^\(\s*\)debug_level = .*|\1debug_level = 3|' \
    -e "s|^\(\s*\)#event_loops = 8.*|\1event_loops = $JANUS_EVENT_LOOPS|" \
    -e "s|^\(\s*\)#ice_enforce_list = \"eth0\"\$|\1ice_enforce_list = \"$SERVER_IP\"|" \
    "$dir/janus.jcfg"
  grep -q "^\s*ice_enforce_list = \"$SERVER_IP\"" "$dir/janus.jcfg" ||
    { echo "could not set ice_enforce_list in $dir/janus.jcfg" >&2; exit 1; }
  # Only the videoroom plugin, the WebSocket transport, no loggers, no event handlers.
  local plugins transports
  plugins=$(cd /usr/lib/x86_64-linux-gnu/janus/plugins && ls *.so | grep -v videoroom | paste -sd, -)
  transports=$(cd /usr/lib/x86_64-linux-gnu/janus/transports && ls *.so | grep -v websockets | paste -sd, -)
  awk -v plugins="$plugins" -v transports="$transports" '
    /^plugins: \{/ {print; print "\tdisable = \"" plugins "\""; next}
    /^transports: \{/ {print; print "\tdisable = \"" transports "\""; next}
    /^loggers: \{/ {print; print "\tdisable = \"libjanus_jsonlog.so\""; next}
    {print}' "$dir/janus.jcfg" >"$dir/janus.jcfg.new" && mv "$dir/janus.jcfg.new" "$dir/janus.jcfg"
  sed -i \
    -e "s|^\(\s*\)#ws_ip = .*|\1ws_ip = \"$SERVER_IP\"|" \
    -e "s|^\(\s*\)ws_port = .*|\1ws_port = $JANUS_WS_PORT|" \
    -e 's|^\(\s*\)json = .*|\1json = "plain"|' \
    "$dir/janus.transport.websockets.jcfg"
  # ip netns exec, env and taskset each exec the next, so $! is the server's own PID (not so
  # through a shell function, which would fork a subshell).
  ip netns exec "$NETNS" taskset -c "$SERVER_CPU" janus -C "$dir/janus.jcfg" -F "$dir" -o \
    -L "$OUT/janus-$1.log" >/dev/null 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    if (exec 3<>/dev/tcp/"$SERVER_IP"/"$JANUS_WS_PORT") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "janus did not start: $(tail -20 "$OUT/janus-$1.log")" >&2
  exit 1
}

# UDP receive-buffer drops so far (RcvbufErrors of /proc/net/snmp), in the root namespace (the
# tester's sockets) or, with an argument, in the servers' namespace.
udp_drops() {
  local snmp
  if [ -n "${1:-}" ]; then snmp=$(ip netns exec "$NETNS" cat /proc/net/snmp); else snmp=$(cat /proc/net/snmp); fi
  awk '/^Udp:/ { if (!h) { for (i = 2; i <= NF; i++) k[i] = $i; h = 1 } else { for (i = 2; i <= NF; i++) if (k[i] == "RcvbufErrors") print $i } }' <<<"$snmp"
}

# The process SERVER_PID runs must be the server itself (its CPU time is the measurement).
check_server_pid() {
  local comm
  comm=$(cat "/proc/$SERVER_PID/comm" 2>/dev/null || true)
  case $comm in
    huddle* | janus*) ;;
    *) echo "server PID $SERVER_PID is '$comm', not the server" >&2; exit 1 ;;
  esac
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  sleep 1
}

# run NAME TARGET SCENARIO-ARGS...
run() {
  local name=$1 target=$2; shift 2
  echo "==> $name"
  if [ "$target" = huddle ]; then
    start_huddle "$name"
    set -- --target huddle --url "$HUDDLE_URL" --token-secret-file "$HUDDLE_DATA/secret.key" \
      --ice-ip "$HOST_IP" "$@"
  else
    start_janus "$name"
    set -- --target janus --janus-url "ws://$SERVER_IP:$JANUS_WS_PORT" --ice-ip "$HOST_IP" "$@"
  fi
  check_server_pid
  local cmd=(taskset -c "$TESTER_CPU" "$LOADTEST" "$@" --udp-rcvbuf "$TESTER_RCVBUF"
    --duration "${RUN_DURATION:-$DURATION}"
    --server-pid "$SERVER_PID"
    --label "$name" --report "$OUT/$name.json" --plot "$OUT/$name.svg" --no-progress)
  echo "${cmd[*]}" >"$OUT/$name.cmd"
  echo "$name start $(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/loadavg.txt"
  local tester_drops server_drops busy=
  tester_drops=$(udp_drops) server_drops=$(udp_drops ns)
  : >"$OUT/$name.txt"
  if [ -n "${BUSY_SERVER_CPU:-}" ]; then
    # Overload: BUSY_LOOPS busy loops share the server's core for the whole run (the same
    # priority), so the server has about 1/(BUSY_LOOPS+1) of it. Killed right after the tester
    # ends.
    for _ in $(seq "$BUSY_LOOPS"); do
      taskset -c "$SERVER_CPU" sh -c 'while :; do :; done' &
      busy="$busy $!"
    done
    echo "busy loops$busy on CPU $SERVER_CPU" | tee -a "$OUT/$name.txt"
  fi
  "${cmd[@]}" | tee -a "$OUT/$name.txt"
  for pid in $busy; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  echo "$name end $(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/loadavg.txt"
  # Where datagrams were dropped for want of socket buffer: at the tester (it fell behind) or
  # at the server.
  echo "$name udp receive-buffer drops: tester $(($(udp_drops) - tester_drops)), server $(($(udp_drops ns) - server_drops))" |
    tee -a "$OUT/udp-drops.txt"
  stop_server
}

AUDIO=(--scenario audio --publishers "$AUDIO_PUBS" --subscribers "$AUDIO_SUBS")
LIVE=(--scenario livestream --subscribers "$LIVE_SUBS" --video-kbps "$VIDEO_KBPS")
AUDIO_LARGE=(--scenario audio --publishers "$AUDIO_PUBS" --subscribers "$AUDIO_SUBS_LARGE")
# Meetings publish three simulcast layers, as browsers do, and the server picks one per viewer;
# every viewer shows its room as a grid would (the tester's default for meetings: the speaker
# large, the next four medium, everyone else small; see `huddle-loadtest --help`).
MEET=(--scenario meeting --participants "$MEETING" --video-kbps "$VIDEO_KBPS" --simulcast 3)
MEET25=(--scenario meeting --participants "$MEETING_LARGE" --video-kbps "$VIDEO_KBPS" --simulcast 3)
# Livestream viewers with small, medium and large tiles in turn: with three simulcast layers each
# size gets its own layer (q, h, f); with one layer, everyone gets the full stream.
LIVE_MIX=(--scenario livestream --subscribers "$LIVE_SUBS" --video-kbps "$VIDEO_KBPS"
  --subscriber-mix small,medium,large)
# A meeting of 4, alone and with 20 WHEP viewers (one video and four audio m-lines each: the
# active speaker's video and everyone's audio), for the cost of a viewer. Huddle only.
MEET4=(--scenario meeting --participants 4 --video-kbps "$VIDEO_KBPS" --simulcast 3)
# Overload: audio to AUDIO_SUBS_OVERLOAD listeners while a busy loop takes half the server's core.
AUDIO_OVERLOAD=(--scenario audio --publishers "$AUDIO_PUBS" --subscribers "$AUDIO_SUBS_OVERLOAD")
# Steady participants while others join and leave (each with audio and simulcast video, one in
# four sharing a screen); bounded by CHURN_TOTAL and CHURN_DURATION.
CHURN=(--scenario churn --participants "$CHURN_STEADY" --churn-total "$CHURN_TOTAL"
  --churn-concurrent "$CHURN_CONCURRENT" --churn-stay "$CHURN_STAY" --video-kbps "$VIDEO_KBPS"
  --simulcast 3)
[ "$REPEAT" -eq 0 ] || make_netns
# Runs alternate between the servers, REPEAT times, so that a disturbance of the machine hits
# both; the figures are medians over the repetitions.
for rep in $(seq "$REPEAT"); do
  for r in ${RUNS:-huddle-audio janus-audio huddle-livestream janus-livestream huddle-meeting janus-meeting huddle-meeting25 janus-meeting25 huddle-audio-large janus-audio-large}; do
    case $r in
      huddle-audio-large) run "$r-$rep" huddle "${AUDIO_LARGE[@]}" ;;
      janus-audio-large) [ -n "${SKIP_JANUS:-}" ] || run "$r-$rep" janus "${AUDIO_LARGE[@]}" ;;
      huddle-audio) run "$r-$rep" huddle "${AUDIO[@]}" ;;
      janus-audio) [ -n "${SKIP_JANUS:-}" ] || run "$r-$rep" janus "${AUDIO[@]}" ;;
      huddle-livestream) run "$r-$rep" huddle "${LIVE[@]}" ;;
      janus-livestream) [ -n "${SKIP_JANUS:-}" ] || run "$r-$rep" janus "${LIVE[@]}" ;;
      huddle-meeting) run "$r-$rep" huddle "${MEET[@]}" ;;
      janus-meeting) [ -n "${SKIP_JANUS:-}" ] || run "$r-$rep" janus "${MEET[@]}" ;;
      huddle-meeting25) run "$r-$rep" huddle "${MEET25[@]}" ;;
      janus-meeting25) [ -n "${SKIP_JANUS:-}" ] || run "$r-$rep" janus "${MEET25[@]}" ;;
      huddle-meeting4) run "$r-$rep" huddle "${MEET4[@]}" ;;
      huddle-meeting4-whep20) run "$r-$rep" huddle "${MEET4[@]}" --whep-viewers 20 ;;
      huddle-meeting4-record) run "$r-$rep" huddle "${MEET4[@]}" --record --api-key "$BENCH_API_KEY" --api-secret "$BENCH_API_SECRET" ;;
      huddle-livestream-mix-simulcast3) run "$r-$rep" huddle "${LIVE_MIX[@]}" --simulcast 3 ;;
      huddle-livestream-mix-simulcast1) run "$r-$rep" huddle "${LIVE_MIX[@]}" --simulcast 1 ;;
      huddle-churn) RUN_DURATION=$CHURN_DURATION run "$r-$rep" huddle "${CHURN[@]}" ;;
      huddle-audio-overload) BUSY_SERVER_CPU=1 run "$r-$rep" huddle "${AUDIO_OVERLOAD[@]}" ;;
      janus-audio-overload) [ -n "${SKIP_JANUS:-}" ] || BUSY_SERVER_CPU=1 run "$r-$rep" janus "${AUDIO_OVERLOAD[@]}" ;;
      *) echo "unknown run $r" >&2; exit 1 ;;
    esac
  done
done

# The figures: medians over the repetitions (min–max of the CPU cost in brackets), then every run.
{
  echo "| scenario | runs | received packets/s | loss % end to end (worst run) | server CPU-µs per forwarded packet: median [min–max] | projected packets/s per core | server cores | latency p50 / p99 audio (ms) | latency p50 / p99 video (ms) | join p50 (ms) | server RSS per participant (KiB) | tester cores per 10k pps |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  jq -rs '
    def med: sort | .[(length - 1) / 2 | floor];
    def r2: . * 100 | round / 100;
    def r1: . * 10 | round / 10;
    group_by(.label | sub("-[0-9]+$"; "")) | .[] |
    (map(.summary)) as $s |
    "| \(.[0].label | sub("-[0-9]+$"; "")) | \(length)"
    + " | \($s | map(.packets_per_sec) | med | floor)"
    + " | \($s | map(.e2e_loss_pct) | max | . * 1000 | round / 1000)"
    + " | \($s | map(.server.cpu_us_per_forwarded_packet) | med | r2) [\($s | map(.server.cpu_us_per_forwarded_packet) | min | r2)–\($s | map(.server.cpu_us_per_forwarded_packet) | max | r2)]"
    + " | \($s | map(.server.projected_packets_per_sec_per_core) | med | floor)"
    + " | \($s | map(.server.cores) | med | . * 1000 | round / 1000)"
    + " | \(if $s[0].latency_audio then "\($s | map(.latency_audio.p50) | med | r1) / \($s | map(.latency_audio.p99) | med | r1)" else "–" end)"
    + " | \(if $s[0].latency_video then "\($s | map(.latency_video.p50) | med | r1) / \($s | map(.latency_video.p99) | med | r1)" else "–" end)"
    + " | \($s | map(.join_ms.p50 // 0) | med | floor)"
    + " | \($s | map(.server.rss_per_participant_kib // 0) | med | floor)"
    + " | \($s | map(.tester.cores_per_10k_pps) | med | . * 1000 | round / 1000) |"
  ' "$OUT"/*.json
  echo
  echo "| run | joined/planned | received packets/s | loss % end to end / SFU→subscriber | server CPU-µs per forwarded packet | server cores | latency p50 / p99 audio (ms) | latency p50 / p99 video (ms) | p99 audio / video after the joins (ms) | server errors | largest SDP received (bytes) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for f in "$OUT"/*.json; do
    jq -r '.summary as $s | "| \(.label) | \($s.joined)/\($s.participants) | \($s.packets_per_sec|floor) | \($s.e2e_loss_pct*1000|round/1000) / \($s.loss_pct*1000|round/1000) | \($s.server.cpu_us_per_forwarded_packet*100|round/100) | \($s.server.cores*1000|round/1000) | \(if $s.latency_audio then "\($s.latency_audio.p50) / \($s.latency_audio.p99)" else "–" end) | \(if $s.latency_video then "\($s.latency_video.p50) / \($s.latency_video.p99)" else "–" end) | \($s.latency_audio_window.p99 // "–") / \($s.latency_video_window.p99 // "–") | \($s.server_errors // "–") | \($s.max_sdp_bytes // "–") |"' "$f"
  done
  if jq -e -s 'map(select(.summary.churn != null)) | length > 0' "$OUT"/*.json >/dev/null; then
    echo
    echo "| run | steady joined | joiners started / joined / failed (screens; most at once) | server errors to steady participants | failed negotiations, steady / joiners | largest SDP to a steady participant (bytes) | most remote tracks at once | first part: CPU-µs per packet, RSS MiB | last part | last against first: CPU per packet, RSS | gauges after everyone left |"
    echo "|---|---|---|---|---|---:|---:|---|---|---|---|"
    for f in "$OUT"/*.json; do
      jq -r 'select(.summary.churn != null) | .summary as $s | $s.churn as $c |
        def r2: if . == null then "–" else . * 100 | round / 100 | tostring end;
        def r1: if . == null then "–" else . * 10 | round / 10 | tostring end;
        "| \(.label) | \($s.joined)/\($s.participants)"
        + " | \($c.joiners.started) / \($c.joiners.joined) / \($c.joiners.failed) (\($c.joiners.screens); \($c.joiners.peak_concurrent))"
        + " | \($s.server_errors)\(if ($s.server_error_codes | length) > 0 then " (" + ($s.server_error_codes | to_entries | map("\(.key) \(.value)") | join(", ")) + ")" else "" end)"
        + " | \($s.negotiation_failures) / \($c.joiners.negotiation_failures)"
        + " | \($s.max_sdp_bytes) | \($s.peak_remote_tracks)"
        + " | \($c.first.cpu_us_per_forwarded_packet | r2), \($c.first.rss_mib | r1) (\($c.first.from | floor)–\($c.first.to | floor) s)"
        + " | \($c.last.cpu_us_per_forwarded_packet | r2), \($c.last.rss_mib | r1) (\($c.last.from | floor)–\($c.last.to | floor) s)"
        + " | \($c.cpu_change_pct | r1) %, \($c.rss_change_pct | r1) %"
        + " | \(if $c.gauges_after then ($c.gauges_after | to_entries | map("\(.key | sub("^huddle_"; ""))=\(.value)") | join(" ")) else "–" end) |"' "$f"
    done
  fi
  if jq -e -s 'map(.summary.whep_viewers // 0) | add > 0' "$OUT"/*.json >/dev/null; then
    # The server's cost per forwarded packet (above) counts the viewers' packets; the received
    # packets/s there are the participants' only.
    echo
    echo "| run | WHEP viewers connected/planned (failed) | viewer packets received (run) | viewer packets/s (window) | video kbit/s per viewer | least packets a viewer got | resources deleted | packets/s forwarded, participants + viewers | server cores | server RSS (MiB) |"
    echo "|---|---|---:|---:|---:|---:|---|---:|---:|---:|"
    for f in "$OUT"/*.json; do
      jq -r '.summary as $s | select(($s.whep_viewers // 0) > 0 or (.label | test("^huddle-meeting4-[0-9]+$"))) |
        "| \(.label) | \($s.whep_viewers_connected // 0)/\($s.whep_viewers // 0) (\($s.whep_viewers_failed // 0))"
        + " | \($s.whep_packets_received // 0) | \($s.whep_packets_per_sec // 0 | floor)"
        + " | \($s.whep_video_kbps_per_viewer // 0 | floor) | \($s.whep_min_packets_per_viewer // "–")"
        + " | \($s.whep_viewers_deleted // "–")"
        + " | \($s.packets_per_sec + ($s.whep_packets_per_sec // 0) | floor)"
        + " | \($s.server.cores * 1000 | round / 1000) | \($s.server.rss_mib * 10 | round / 10) |"' "$f"
    done
  fi
  if jq -e -s 'map(.summary.tile_classes // [] | length) | add > 0' "$OUT"/*.json >/dev/null; then
    echo
    echo "| run | tile class | subscribers | video tracks | kbit/s per track | packets/s per track |"
    echo "|---|---|---:|---:|---:|---:|"
    for f in "$OUT"/*.json; do
      jq -r '.label as $l | .summary.tile_classes[]? |
        "| \($l) | \(.class) (\(.width)x\(.height)) | \(.subscribers) | \(.video_tracks) | \(.video_kbps_per_track|floor) | \(.video_packets_per_sec_per_track*10|round/10) |"' "$f"
    done
  fi
} >"$OUT/figures.md"
{
  echo
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ); nproc: $(nproc); CPU: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
  echo "server on CPU $SERVER_CPU inside network namespace $NETNS ($SERVER_IP, veth pair on $NET_PREFIX.0/24), tester on CPU $TESTER_CPU in the root namespace ($HOST_IP), $DURATION s per run"
  echo "1-minute load average around the runs (other work on the machine): $(awk '{print $3}' "$OUT/loadavg.txt" | sort -n | sed -n '1p;$p' | paste -sd'-' -)"
  if [ -s "$OUT/udp-drops.txt" ]; then
    echo
    echo "UDP datagrams dropped for want of socket buffer during each run (/proc/net/snmp RcvbufErrors):"
    echo
    sed 's/^/    /' "$OUT/udp-drops.txt"
  fi
} >>"$OUT/figures.md"
cat "$OUT/figures.md"
echo "reports, plots and commands in $OUT"
