#!/usr/bin/env bash
# The cost of a waiting pupil, on digue alone:
#  (a) queued-poll throughput and p99: wrk polling the gated URL with a valid
#      ticket that stays queued (JSON status), beside a cache hit measured the
#      same way in the same run (and run.sh's latest cache-hit figure, if any);
#  (b) memory per queued visitor: RSS before/after issuing 100,000 tickets,
#      with a control run of 100,000 cache hits first;
#  (c) CPU per status poll: digue's utime+stime during the poll run ÷ polls.
# Pinned as in run.sh: digue (worker_threads = 1) and the origin on CPU 0,
# wrk -t1 -c64 on CPU 1.
#
# Usage: benches/queue.sh
# Knobs (environment): CONNS=64 DURATION=10s WARMUP=2s TICKETS=100000
#   SERVER_CPU=0 CLIENT_CPU=1 DIGUE_BIN BUILD=1 QUIET_WAIT=1200 READY_TIMEOUT=20
#   KEEP_TMP=0 OUT (default benches/results-extra-queue-YYYY-MM-DD.md)
set -euo pipefail
{

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CONNS="${CONNS:-64}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
TICKETS="${TICKETS:-100000}"
SERVER_CPU="${SERVER_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
DIGUE_BIN="${DIGUE_BIN:-target/release/digue}"
BUILD="${BUILD:-1}"
QUIET_WAIT="${QUIET_WAIT:-1200}"
READY_TIMEOUT="${READY_TIMEOUT:-20}"
KEEP_TMP="${KEEP_TMP:-0}"
OUT="${OUT:-benches/results-extra-queue-$(date +%F).md}"
GATED="/pronote/eleve.html"

log() { printf '[queue] %s\n' "$*" >&2; }
die() { printf '[queue] ERROR: %s\n' "$*" >&2; exit 1; }

for t in curl python3 taskset pgrep wrk nginx; do
  command -v "$t" >/dev/null 2>&1 || die "$t is missing (apt-get install curl python3 util-linux procps wrk nginx-light)"
done
DURATION_S="${DURATION%s}"; WARMUP_S="${WARMUP%s}"
[[ "$DURATION_S" =~ ^[0-9]+$ && "$WARMUP_S" =~ ^[0-9]+$ ]] || die "DURATION and WARMUP are seconds, like 10s"

wait_idle() {
  local deadline=$((SECONDS + QUIET_WAIT)) said=0
  while pgrep -f 'benches/run.sh|wrk ' >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "other benchmarks still running after ${QUIET_WAIT}s"
    ((said)) || { log "waiting for other benchmarks to end: $(pgrep -af 'benches/run.sh|wrk ' | head -2 | tr '\n' ';')"; said=1; }
    sleep 10
  done
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

stale() { local bin="$1"; shift; [[ -x "$bin" ]] || return 0; [[ -n "$(find "$@" -newer "$bin" -name '*.rs' -print -quit 2>/dev/null)" ]]; }
if stale "$DIGUE_BIN" src; then
  [[ "$BUILD" == 1 && "$DIGUE_BIN" == target/release/digue ]] || die "$DIGUE_BIN is missing or older than src/ (cargo build --release)"
  while pgrep -x cargo >/dev/null 2>&1; do log "another cargo is running; waiting"; sleep 10; done
  log "cargo build --release"; timeout 1800 cargo build --release --bin digue >&2 || die "cargo build --release failed"
fi

TMP="$(mktemp -d -t digue-queue.XXXXXX)"
chmod 755 "$TMP"
PIDS=()
stop_pid() {
  local pid="$1" i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then pkill -KILL -P "$pid" 2>/dev/null || true; kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$? p
  set +e
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  if [[ "$KEEP_TMP" == 1 || $rc != 0 ]]; then log "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_ports() {
  python3 -c 'import socket,sys
s=[socket.socket() for _ in range(int(sys.argv[1]))]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"
}
wait_http() {
  local url="$1" pid="$2" name="$3" logf="$4" deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$logf" >&2 2>/dev/null; die "$name exited during startup (log: $logf)"; }
    curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
    sleep 0.2
  done
  tail -n 20 "$logf" >&2 2>/dev/null
  die "$name did not come up within ${READY_TIMEOUT}s ($url)"
}
render() {
  local tmpl="$1" out="$2" text kv; shift 2
  text="$(<"$tmpl")"
  for kv in "$@"; do text="${text//@${kv%%=*}@/${kv#*=}}"; done
  [[ "$text" != *@[A-Z_]*@* ]] || die "unfilled @MARKER@ left in $out"
  printf '%s\n' "$text" >"$out"
}
metric() {  # metric NAME_PREFIX : sum of the samples whose name{labels} starts with it
  curl -fsS --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" \
    | awk -v p="$1" 'index($0, p) == 1 { s += $NF } END { printf "%.0f\n", s }'
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$DIGUE_PID/status"; }
cpu_ticks() { sed 's/^.*) //' "/proc/$DIGUE_PID/stat" | awk '{print $12 + $13}'; }
HZ="$(getconf CLK_TCK)"

read -r ORIGIN_PORT DIGUE_PORT ADMIN_PORT < <(free_ports 3)
[[ "${ADMIN_PORT:-}" =~ ^[0-9]+$ ]] || die "could not pick free ports"

# ---------------------------------------------------------------- origin (run.sh's nginx origin, 2 KiB /obj)
mkdir -p "$TMP/www" "$TMP/origin"/{tmp/body,tmp/proxy,tmp/fastcgi,tmp/uwsgi,tmp/scgi,logs}
head -c 2048 /dev/urandom | base64 -w 0 | head -c 2048 >"$TMP/www/obj"
chmod 755 "$TMP/www"; chmod 644 "$TMP/www/obj"
vars=(PREFIX="$TMP/origin" USER="$(id -un)" GROUP="$(id -gn)" PORT="$ORIGIN_PORT" ORIGIN_PORT="$ORIGIN_PORT" WWW="$TMP/www")
render benches/nginx/base.conf "$TMP/origin/nginx.conf" "${vars[@]}"
render benches/nginx/origin.conf "$TMP/origin/site.conf" "${vars[@]}"
taskset -c "$SERVER_CPU" nginx -p "$TMP/origin" -e "$TMP/origin/logs/error.log" -c "$TMP/origin/nginx.conf" >/dev/null 2>&1 &
ORIGIN_PID=$!; PIDS+=("$ORIGIN_PID")
wait_http "http://127.0.0.1:$ORIGIN_PORT/obj" "$ORIGIN_PID" origin "$TMP/origin/logs/error.log"

# ---------------------------------------------------------------- digue
cat >"$TMP/digue.toml" <<EOF
[server]
listen = "127.0.0.1:$DIGUE_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
worker_threads = 1

[cache]
max_size = "64MiB"

[[site]]
name = "bench"
hosts = ["*"]
origin = "http://127.0.0.1:$ORIGIN_PORT"
origin_concurrency = 64

[site.admission]
paths = ["$GATED"]
# one a minute: a ticket taken behind a few others stays queued for the whole run
new_users_per_minute = 1
burst = 1
# every request comes from 127.0.0.1
tickets_per_network_per_minute = 100000000
EOF
DIGUE_SECRET="queue-bench-secret-0123456789abcdef" RUST_LOG=warn \
  taskset -c "$SERVER_CPU" "$DIGUE_BIN" run --config "$TMP/digue.toml" >"$TMP/digue.log" 2>&1 &
DIGUE_PID=$!; PIDS+=("$DIGUE_PID")
wait_http "http://127.0.0.1:$ADMIN_PORT/healthz" "$DIGUE_PID" digue "$TMP/digue.log"

HIT_URL="http://127.0.0.1:$DIGUE_PORT/obj"
GATED_URL="http://127.0.0.1:$DIGUE_PORT$GATED"
curl -fsS -o /dev/null "$HIT_URL" || die "digue: /obj failed"
curl -sS -D - -o /dev/null "$HIT_URL" | tr -d '\r' | grep -qi '^cache-status:.*hit' || die "digue: second /obj is not a cache hit"

# A ticket behind 20 others: at 1 a minute it stays queued for ~20 minutes.
for i in $(seq 1 21); do
  curl -sS -o /dev/null -D "$TMP/ticket-headers.txt" "$GATED_URL" || die "digue: GET $GATED failed"
done
TICKET="$(tr -d '\r' <"$TMP/ticket-headers.txt" | sed -n 's/^[Ss]et-[Cc]ookie: digue_ticket=\([^;]*\).*/\1/p' | head -n1)"
[[ -n "$TICKET" ]] || die "digue gave no digue_ticket cookie (headers: $(tr '\r\n' '  ' <"$TMP/ticket-headers.txt"))"
status_json() { curl -sS -H "Cookie: digue_ticket=$TICKET" -H 'Accept: application/json' -w '\n%{http_code}' "$GATED_URL"; }
S0="$(status_json)"
[[ "$(tail -n1 <<<"$S0")" == 503 && "$S0" == *'"state":"queued"'* ]] || die "the ticket is not queued: $S0"
POS0="$(head -n1 <<<"$S0" | python3 -c 'import json,sys; print(json.load(sys.stdin)["position"])')"
log "ticket queued at position $POS0: $(head -n1 <<<"$S0")"

# ---------------------------------------------------------------- wrk runs
cat >"$TMP/poll.lua" <<EOF
wrk.headers["Cookie"] = "digue_ticket=$TICKET"
wrk.headers["Accept"] = "application/json"
EOF
cat >"$TMP/count.lua" <<'EOF'
-- stop after N responses (N from the environment)
local limit = tonumber(os.getenv("N")) or 100000
local n = 0
function response(status, headers, body)
  n = n + 1
  if n >= limit then wrk.thread:stop() end
end
EOF

parse_p99_ms() {
  awk '$1 == "99%" { v = $2; u = v; sub(/^[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
       if (u == "us") v /= 1000; else if (u == "s") v *= 1000; printf "%.3f", v }' "$1"
}
declare -A RPS P99 REQS NON2XX CPU_US LOAD SOCKERR
run_wrk() {  # run_wrk NAME URL [wrk args...]
  local name="$1" url="$2" f="$TMP/wrk-$1.txt" c0 c1; shift 2
  wait_idle
  LOAD[$name]="$(loadavg)"
  timeout $((WARMUP_S + 30)) taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"$WARMUP" "$@" "$url" >"$TMP/warmup-$name.txt" 2>&1 \
    || { cat "$TMP/warmup-$name.txt" >&2; die "$name: wrk warm-up failed"; }
  c0="$(cpu_ticks)"
  timeout $((DURATION_S + 30)) taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$@" "$url" >"$f" 2>&1 \
    || { cat "$f" >&2; die "$name: wrk failed"; }
  c1="$(cpu_ticks)"
  cat "$f" >&2
  RPS[$name]="$(awk '/^Requests\/sec:/ {print $2}' "$f")"
  P99[$name]="$(parse_p99_ms "$f")"
  REQS[$name]="$(awk '/requests in/ {print $1}' "$f")"
  NON2XX[$name]="$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$f")"; NON2XX[$name]="${NON2XX[$name]:-0}"
  SOCKERR[$name]="$(grep -o 'Socket errors:.*' "$f" || echo none)"
  CPU_US[$name]="$(awk -v d="$((c1 - c0))" -v hz="$HZ" -v n="${REQS[$name]}" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')"
  log "$name: ${RPS[$name]} req/s, p99 ${P99[$name]} ms, ${REQS[$name]} requests, non-2xx ${NON2XX[$name]}, digue CPU ${CPU_US[$name]} µs/request, load ${LOAD[$name]}"
}

run_wrk hit "$HIT_URL"
[[ "${NON2XX[hit]}" == 0 ]] || die "cache-hit run had ${NON2XX[hit]} non-2xx answers"
run_wrk poll "$GATED_URL" -s "$TMP/poll.lua"
# every poll must have been a queued 503
[[ "${NON2XX[poll]}" == "${REQS[poll]}" ]] || log "WARNING: ${NON2XX[poll]} of ${REQS[poll]} polls were non-2xx (all should be queued 503s)"
S1="$(status_json)"
[[ "$S1" == *'"state":"queued"'* ]] || die "the ticket is no longer queued after the poll run: $S1"
POS1="$(head -n1 <<<"$S1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["position"])')"

# ---------------------------------------------------------------- memory per queued visitor
wait_idle
LOAD[mem]="$(loadavg)"
sleep 1
RSS0="$(rss_kib)"
N="$TICKETS" timeout 300 taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d120s -s "$TMP/count.lua" "$HIT_URL" >"$TMP/wrk-control.txt" 2>&1 \
  || { cat "$TMP/wrk-control.txt" >&2; die "control run failed"; }
sleep 1
RSS1="$(rss_kib)"
T0="$(metric digue_tickets_issued_total)"
W0="$(metric digue_line_waiting)"
N="$TICKETS" timeout 300 taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d120s -s "$TMP/count.lua" "$GATED_URL" >"$TMP/wrk-tickets.txt" 2>&1 \
  || { cat "$TMP/wrk-tickets.txt" >&2; die "ticket run failed"; }
sleep 1
RSS2="$(rss_kib)"
T1="$(metric digue_tickets_issued_total)"
W1="$(metric digue_line_waiting)"
ISSUED=$((T1 - T0))
((ISSUED >= TICKETS * 9 / 10)) || die "only $ISSUED tickets issued (wanted $TICKETS; see $TMP/wrk-tickets.txt)"
PER_TICKET="$(awk -v a="$RSS1" -v b="$RSS2" -v n="$ISSUED" 'BEGIN { printf "%.2f", (b - a) * 1024 / n }')"
CONTROL_REQS="$(awk '/requests in/ {print $1}' "$TMP/wrk-control.txt")"
log "RSS: start ${RSS0} KiB, after $CONTROL_REQS cache hits ${RSS1} KiB, after $ISSUED tickets ${RSS2} KiB -> ${PER_TICKET} B per queued visitor; line waiting $W0 -> $W1"
kill -0 "$DIGUE_PID" 2>/dev/null || die "digue died during the benchmark (log: $TMP/digue.log)"

# ---------------------------------------------------------------- run.sh's latest cache-hit figure
RUNSH=""
latest="$(ls -t benches/results-[0-9]*.md 2>/dev/null | head -n1 || true)"
if [[ -n "$latest" ]]; then
  row="$(grep -E '^\| digue' "$latest" | head -n1 || true)"
  [[ -n "$row" ]] && RUNSH="$latest ($(date -r "$latest" '+%F %H:%M')): $row"
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
TABLE="$(
  echo "| digue, same process, same run | req/s | p99 (ms) | digue CPU per request (µs) | load avg at start |"
  echo "|---|---:|---:|---:|---|"
  printf '| cache hit (2 KiB /obj) | %.0f | %.2f | %s | %s |\n' "${RPS[hit]}" "${P99[hit]}" "${CPU_US[hit]}" "${LOAD[hit]}"
  printf '| queued poll (JSON status, valid ticket) | %.0f | %.2f | %s | %s |\n' "${RPS[poll]}" "${P99[poll]}" "${CPU_US[poll]}" "${LOAD[poll]}"
  printf '| poll / hit | %s | %s | %s | |\n' "$(ratio "${RPS[poll]}" "${RPS[hit]}")" "$(ratio "${P99[poll]}" "${P99[hit]}")" "$(ratio "${CPU_US[poll]}" "${CPU_US[hit]}")"
  echo
  echo "- polls: ${REQS[poll]} in ${DURATION}, all answered 503 queued: ${NON2XX[poll]} non-2xx; socket errors: ${SOCKERR[poll]}; position $POS0 before, $POS1 after"
  echo "- memory: RSS ${RSS0} KiB at start, ${RSS1} KiB after $CONTROL_REQS cache hits (control), ${RSS2} KiB after $ISSUED new tickets (line: $W0 -> $W1 waiting): **${PER_TICKET} bytes per queued visitor** (load avg ${LOAD[mem]})"
  [[ -z "$RUNSH" ]] || echo "- run.sh's latest result file, for comparison: $RUNSH"
)"
echo
echo "$TABLE"
mkdir -p "$(dirname "$OUT")"
{
  echo "# digue queued-visitor cost, $(date '+%F %T %Z')"
  echo
  echo "- machine: $(nproc) CPUs, $(lscpu 2>/dev/null | awk -F': *' '/^Model name/ {print $2; exit}'), $(uname -sr)"
  echo "- $("$DIGUE_BIN" --version) ($(git describe --always --dirty 2>/dev/null || echo '?')), $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}')"
  echo "- digue worker_threads = 1 on CPU $SERVER_CPU; wrk -t1 -c$CONNS -d$DURATION --latency on CPU $CLIENT_CPU after a $WARMUP warm-up"
  echo
  echo "$TABLE"
  for f in hit poll control tickets; do echo; echo "## wrk: $f"; echo; echo '```'; cat "$TMP/wrk-$f.txt"; echo '```'; done
} >"$OUT"
log "results written to $OUT"
exit 0
}
