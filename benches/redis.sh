#!/usr/bin/env bash
# Cluster cost: what Redis does for digue's shared line, and what it adds to
# the admission path's latency.
#
# A private redis-server on a free loopback port, two digue nodes A and B with
# [cluster] (same DIGUE_SECRET), and a standalone node S (no [cluster]), all
# with the same site: gated path /login, mode queue_all, new_users_per_minute
# 0 (the line holds) until the admission phase raises it through the admin API.
# Phases, each measured with Redis's total_commands_processed and per-command
# stats, and each node's digue_cluster_redis_calls_total (round-trips):
#   idle      IDLE seconds, nobody: the background cost (view refresh, pings)
#   arrivals  N cookie-less newcomers alternating A/B: each takes a ticket
#   polls     ROUNDS polls of each waiting ticket (JSON), alternating nodes
#   admission rate raised to 6000/min on A (propagates to B), wait until every
#             ticket had its turn, then one JSON poll per ticket: "admitted"
# The idle rate is subtracted from each phase. Latency: time to first byte
# (curl %{time_starttransfer}, one curl process, keep-alive) of a newcomer, a
# waiting poll and an admitted poll, on the cluster nodes and on S.
#
# Usage: benches/redis.sh
# Knobs (environment): N=1000 ROUNDS=5 IDLE=30 DIGUE_BIN BUILD=1 QUIET_WAIT=1200
#   READY_TIMEOUT=20 KEEP_TMP=0 OUT (default benches/results-extra-redis-YYYY-MM-DD.md)
set -euo pipefail
{

LOG_TAG=redis
. "$(dirname "$0")/lib.sh"

N="${N:-1000}"
ROUNDS="${ROUNDS:-5}"
IDLE="${IDLE:-30}"
DIGUE_BIN="${DIGUE_BIN:-target/release/digue}"
BUILD="${BUILD:-1}"
QUIET_WAIT="${QUIET_WAIT:-1200}"
READY_TIMEOUT="${READY_TIMEOUT:-20}"
KEEP_TMP="${KEEP_TMP:-0}"
OUT="${OUT:-benches/results-extra-redis-$(date +%F).md}"
ADMIT_RATE=6000   # per minute, in the admission phase
export DIGUE_ADMIN_TOKEN="redis-bench-admin-token"
export DIGUE_SECRET="redis-bench-secret-0123456789abcdef"

require_tools "" curl python3 pgrep
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  apt_install "redis-server is missing" redis-server
fi

rebuild_if_stale "$DIGUE_BIN" target/release/digue "--bin digue" src

bench_tmp redis

pick_ports REDIS_PORT ORIGIN_PORT PA AA PB AB PS AS

# ---------------------------------------------------------------- redis
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP" \
  --daemonize no --logfile "$TMP/redis.log" &
REDIS_PID=$!; PIDS+=("$REDIS_PID")
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
for i in $(seq 1 $((READY_TIMEOUT * 5))); do
  [[ "$(rcli ping 2>/dev/null)" == PONG ]] && break
  kill -0 "$REDIS_PID" 2>/dev/null || { cat "$TMP/redis.log" >&2; die "redis-server exited"; }
  sleep 0.2
done
[[ "$(rcli ping 2>/dev/null)" == PONG ]] || die "redis-server did not come up on :$REDIS_PORT"

# a trivial origin (never reached: every answer here comes from the waiting room)
mkdir -p "$TMP/www"; echo ok >"$TMP/www/index.html"
python3 -m http.server "$ORIGIN_PORT" --bind 127.0.0.1 --directory "$TMP/www" >"$TMP/origin.log" 2>&1 &
ORIGIN_PID=$!; PIDS+=("$ORIGIN_PID")
wait_http "http://127.0.0.1:$ORIGIN_PORT/" "$ORIGIN_PID" origin "$TMP/origin.log"

# ---------------------------------------------------------------- nodes
node_config() {  # node_config FILE PORT ADMIN_PORT NODE_ID|""
  cat >"$1" <<EOF
[server]
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
worker_threads = 1

[[site]]
name = "bench"
hosts = ["*"]
origin = "http://127.0.0.1:$ORIGIN_PORT"

[site.admission]
paths = ["/login"]
mode = "queue_all"
new_users_per_minute = 0
claim_window = "10m"
tickets_per_network_per_minute = 100000000
EOF
  if [[ -n "$4" ]]; then
    printf '\n[cluster]\nredis_url = "redis://127.0.0.1:%s"\nnode_id = "%s"\n' "$REDIS_PORT" "$4" >>"$1"
  fi
  "$DIGUE_BIN" check --config "$1" >/dev/null || die "config $1 invalid"
}
start_node() {  # start_node NAME PORT ADMIN NODE_ID|""
  node_config "$TMP/$1.toml" "$2" "$3" "$4"
  RUST_LOG=warn start_digue "node $1" "$TMP/$1.toml" "$TMP/$1.log" "$3"
}
start_node A "$PA" "$AA" bench-a
start_node B "$PB" "$AB" bench-b
for adm in "$AA" "$AB"; do
  for i in $(seq 1 $((READY_TIMEOUT * 5))); do
    curl -fsS "http://127.0.0.1:$adm/readyz" | grep -q 'shared store reachable' && break
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:$adm/readyz" | grep -q 'shared store reachable' || die "node on admin :$adm does not reach Redis: $(curl -sS "http://127.0.0.1:$adm/readyz")"
done
log "redis :$REDIS_PORT, node A :$PA, node B :$PB up"

calls() { metric digue_cluster_redis_calls_total "$1"; }
waiting() { metric digue_line_waiting "$1"; }
# snapshot NAME : redis command stats and node round-trips, with a timestamp
snapshot() {
  { echo "t $(date +%s.%N)"
    echo "calls_A $(calls "$AA")"; echo "calls_B $(calls "$AB")"
    rcli info stats | tr -d '\r' | awk -F: '$1 == "total_commands_processed" {print "total", $2}'
    rcli info commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ {sub(/^cmdstat_/, "", $1); print "cmd_" $1, $3}'
  } >"$TMP/snap-$1.txt"
}

# curl driver: one process, one transfer per line of a plan file
# ("PORT COOKIE|-"), keep-alive, JSON accepted; writes "code ttfb" per transfer
# and the response headers of transfer i to $TMP/h-NAME/i.
drive() {  # drive NAME PLANFILE
  local name="$1" plan="$2" cfg="$TMP/curl-$1.cfg" i=0 port cookie
  mkdir -p "$TMP/h-$name"
  : >"$cfg"
  while read -r port cookie; do
    i=$((i + 1))
    {
      ((i == 1)) || echo 'next'
      echo "url = \"http://127.0.0.1:$port/login\""
      echo 'header = "Accept: application/json"'
      [[ "$cookie" == - ]] || echo "header = \"Cookie: digue_ticket=$cookie\""
      echo 'output = "/dev/null"'
      echo "dump-header = \"$TMP/h-$name/$i\""
      echo 'write-out = "%{http_code} %{time_starttransfer}\n"'
      echo 'max-time = 5'
    } >>"$cfg"
  done <"$plan"
  timeout 600 curl -sS --config "$cfg" >"$TMP/lat-$name.txt" || die "curl driver $name failed"
  [[ "$(wc -l <"$TMP/lat-$name.txt")" == "$i" ]] || die "$name: $i transfers planned, $(wc -l <"$TMP/lat-$name.txt") answered"
}
tickets_of() {  # tickets_of NAME : ticket cookie of each transfer, in order
  local i n; n="$(wc -l <"$TMP/lat-$1.txt")"
  for i in $(seq 1 "$n"); do
    tr -d '\r' <"$TMP/h-$1/$i" | sed -n 's/^[Ss]et-[Cc]ookie: digue_ticket=\([^;]*\).*/\1/p' | head -n1
  done
}
codes() { awk '{print $1}' "$TMP/lat-$1.txt" | sort | uniq -c | awk '{printf "%s×%s ", $2, $1}'; }

raise_rate() {  # raise_rate ADMIN_PORT
  curl -fsS -X PATCH -H "Authorization: Bearer $DIGUE_ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d "{\"new_users_per_minute\": $ADMIT_RATE}" "http://127.0.0.1:$1/admin/sites/bench/admission" >/dev/null \
    || die "PATCH admission on :$1 failed"
}
wait_line_empty() {  # wait_line_empty ADMIN_PORT...
  local deadline=$((SECONDS + 120)) a busy
  while :; do
    busy=0
    for a in "$@"; do (( $(waiting "$a") == 0 )) || busy=1; done
    ((busy)) || return 0
    ((SECONDS < deadline)) || die "the line did not drain within 120 s"
    sleep 0.5
  done
}

# ---------------------------------------------------------------- cluster phases
wait_idle
LOAD_START="$(loadavg)"
# warm-up: one newcomer per node (connections, script cache)
printf '%s -\n%s -\n' "$PA" "$PB" >"$TMP/plan-warm.txt"; drive warm "$TMP/plan-warm.txt"
rcli config resetstat >/dev/null

snapshot idle0; log "idle: ${IDLE}s"; sleep "$IDLE"; snapshot idle1

for i in $(seq 1 "$N"); do if ((i % 2)); then echo "$PA -"; else echo "$PB -"; fi; done >"$TMP/plan-arr.txt"
snapshot arr0; drive arrivals "$TMP/plan-arr.txt"; snapshot arr1
mapfile -t TICKETS < <(tickets_of arrivals)
((${#TICKETS[@]} == N)) || die "arrivals: ${#TICKETS[@]} tickets for $N newcomers ($(codes arrivals))"
grep -qv '^503 ' "$TMP/lat-arrivals.txt" && die "arrivals: not all answered 503 queued ($(codes arrivals))"

: >"$TMP/plan-polls.txt"
for r in $(seq 1 "$ROUNDS"); do
  for i in "${!TICKETS[@]}"; do if (( (i + r) % 2 )); then echo "$PA ${TICKETS[$i]}"; else echo "$PB ${TICKETS[$i]}"; fi; done
done >"$TMP/plan-polls.txt"
snapshot poll0; drive polls "$TMP/plan-polls.txt"; snapshot poll1
grep -qv '^503 ' "$TMP/lat-polls.txt" && die "polls: not all answered 503 queued ($(codes polls))"

snapshot adm0
raise_rate "$AA"
log "admission: $ADMIT_RATE/min set on A; waiting for every ticket's turn"
wait_line_empty "$AA" "$AB"
for i in "${!TICKETS[@]}"; do if ((i % 2)); then echo "$PA ${TICKETS[$i]}"; else echo "$PB ${TICKETS[$i]}"; fi; done >"$TMP/plan-claims.txt"
drive claims "$TMP/plan-claims.txt"; snapshot adm1
ADMITTED="$(grep -c '^200 ' "$TMP/lat-claims.txt" || true)"
log "claims: $(codes claims)"
LOAD_CLUSTER="$(loadavg)"

# ---------------------------------------------------------------- standalone node, same latency protocol
start_node S "$PS" "$AS" ""
printf '%s -\n' "$PS" >"$TMP/plan-swarm.txt"; drive swarm "$TMP/plan-swarm.txt"
for i in $(seq 1 "$N"); do echo "$PS -"; done >"$TMP/plan-sarr.txt"
drive s-arrivals "$TMP/plan-sarr.txt"
mapfile -t STICKETS < <(tickets_of s-arrivals)
((${#STICKETS[@]} == N)) || die "standalone arrivals: ${#STICKETS[@]} tickets for $N newcomers"
for r in $(seq 1 "$ROUNDS"); do for t in "${STICKETS[@]}"; do echo "$PS $t"; done; done >"$TMP/plan-spolls.txt"
drive s-polls "$TMP/plan-spolls.txt"
raise_rate "$AS"; wait_line_empty "$AS"
for t in "${STICKETS[@]}"; do echo "$PS $t"; done >"$TMP/plan-sclaims.txt"
drive s-claims "$TMP/plan-sclaims.txt"
SADMITTED="$(grep -c '^200 ' "$TMP/lat-s-claims.txt" || true)"
LOAD_END="$(loadavg)"

# ---------------------------------------------------------------- report
TABLE="$(python3 - "$TMP" "$N" "$ROUNDS" "$ADMITTED" "$SADMITTED" <<'EOF'
import sys
tmp, n, rounds, admitted, sadmitted = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def snap(name):
    d = {}
    for line in open(f"{tmp}/snap-{name}.txt"):
        k, v = line.split()
        d[k] = float(v)
    return d
def delta(a, b):
    A, B = snap(a), snap(b)
    keys = set(A) | set(B)
    d = {k: B.get(k, 0) - A.get(k, 0) for k in keys}
    # the benchmark's own INFO / CONFIG calls are not digue's
    for own in ("cmd_info", "cmd_config|resetstat", "cmd_config"):
        d["total"] -= d.pop(own, 0)
    return d
idle = delta("idle0", "idle1")
secs = idle["t"]
rate = {k: v / secs for k, v in idle.items() if k != "t"}
def net(a, b):
    d = delta(a, b)
    return {k: v - rate.get(k, 0) * d["t"] for k, v in d.items() if k != "t"}, d["t"]
arr, t_arr = net("arr0", "arr1")
pol, t_pol = net("poll0", "poll1")
adm, t_adm = net("adm0", "adm1")
polls = n * rounds
def cmds(d):
    top = sorted(((k[4:], v) for k, v in d.items() if k.startswith("cmd_") and abs(v) >= 0.5), key=lambda x: -x[1])
    return ", ".join(f"{k} {v:.0f}" for k, v in top) or "none"
rows = [
  ("idle (per second, both nodes)", secs, rate["total"], rate["calls_A"] + rate["calls_B"], 1, cmds(rate)),
  (f"{n} arrivals (ticket issued)", t_arr, arr["total"], arr["calls_A"] + arr["calls_B"], n, cmds(arr)),
  (f"{polls} polls of waiting tickets", t_pol, pol["total"], pol["calls_A"] + pol["calls_B"], polls, cmds(pol)),
  (f"admission of {admitted} tickets (turns + claim poll)", t_adm, adm["total"], adm["calls_A"] + adm["calls_B"], max(admitted, 1), cmds(adm)),
]
print("| phase | seconds | Redis commands (net of idle) | node round-trips (net) | commands per event | round-trips per event | commands by name (net) |")
print("|---|---:|---:|---:|---:|---:|---|")
for name, s, c, r, k, by in rows:
    print(f"| {name} | {s:.1f} | {c:.0f} | {r:.0f} | {c / k:.3f} | {r / k:.3f} | {by} |")
per_user_c = (arr["total"] + adm["total"]) / max(admitted, 1) + pol["total"] / n
per_user_r = (arr["calls_A"] + arr["calls_B"] + adm["calls_A"] + adm["calls_B"]) / max(admitted, 1) + (pol["calls_A"] + pol["calls_B"]) / n
print()
print(f"- per admitted user (arrival + {rounds} waiting polls + admission): **{per_user_c:.2f} Redis commands, {per_user_r:.2f} round-trips**")
print(f"- idle background: {rate['total']:.1f} commands/s and {rate['calls_A'] + rate['calls_B']:.1f} round-trips/s for two nodes, whatever the line's length")
print()
def lat(name):
    v = []
    codes = {}
    for line in open(f"{tmp}/lat-{name}.txt"):
        c, t = line.split()
        codes[c] = codes.get(c, 0) + 1
        v.append(float(t) * 1000)
    v.sort()
    pick = lambda q: v[min(len(v) - 1, max(0, int(round(q * len(v) + 0.5)) - 1))]
    return pick(0.5), pick(0.99), len(v), " ".join(f"{k}×{c}" for k, c in sorted(codes.items()))
print("| time to first byte (ms) | cluster p50 | cluster p99 | standalone p50 | standalone p99 | p50 ratio | answers cluster / standalone |")
print("|---|---:|---:|---:|---:|---:|---|")
for label, a, b in [("newcomer (ticket issued)", "arrivals", "s-arrivals"),
                    ("poll of a waiting ticket", "polls", "s-polls"),
                    ("poll whose turn came (admitted)", "claims", "s-claims")]:
    c50, c99, cn, cc = lat(a)
    s50, s99, sn, sc = lat(b)
    print(f"| {label} | {c50:.3f} | {c99:.3f} | {s50:.3f} | {s99:.3f} | {c50 / s50:.2f} | {cc} / {sc} |")
EOF
)"
REDIS_VER="$(redis-server --version | awk '{print $3}')"
echo
echo "$TABLE"
mkdir -p "$(dirname "$OUT")"
{
  echo "# digue cluster cost (Redis), $(date '+%F %T %Z')"
  echo
  echo "- machine: $(machine_info)"
  echo "- $(digue_version), Redis $REDIS_VER on loopback, $(curl --version | head -n1 | awk '{print $1, $2}')"
  echo "- two cluster nodes + one standalone node, worker_threads = 1 each, unpinned; refresh_interval default (250ms)"
  echo "- load average: start $LOAD_START, after the cluster phases $LOAD_CLUSTER, end $LOAD_END"
  echo "- admitted: cluster $ADMITTED / $N, standalone $SADMITTED / $N"
  echo
  echo "$TABLE"
  echo
  echo "## Snapshots"
  raw_sections '###' "$TMP"/snap-*.txt
} >"$OUT"
log "results written to $OUT"
exit 0
}
