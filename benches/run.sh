#!/usr/bin/env bash
# End-to-end cache-hit benchmark: nginx proxy_cache vs digue (plus a bare
# static-file nginx as a reference ceiling), all in front of the same origin,
# same object, same client, same connection count.
#
# Usage (from anywhere; it cd's to the repo root):
#   benches/run.sh
#   SKIP_DIGUE=1 benches/run.sh              # nginx only
#   DIGUE_BIN=/path/to/digue OUT=/tmp/r.md benches/run.sh
#   ALL=1 benches/run.sh                     # then the other benchmarks of
#                                            # benches/README.md: surge protection
#                                            # vs nginx (surge.sh), cost of a waiting
#                                            # pupil (queue.sh), reload under load
#                                            # (reload.sh), cluster cost (redis.sh)
#
# Knobs (environment):
#   DIGUE_BIN      digue binary (default target/release/digue; built with
#                  `cargo build --release` if that default is missing)
#   SKIP_DIGUE=1   do not build/run digue
#   SKIP_STATIC=1  do not run the bare static-file nginx reference
#   OUT            markdown results file (default benches/results-YYYY-MM-DD.md)
#   CONNS=64 THREADS=1 DURATION=10s WARMUP=2s OBJ_SIZE=2048
#   SERVER_CPU=0 CLIENT_CPU=1      taskset CPU lists for server / wrk
#   READY_TIMEOUT=20               seconds to wait for a server to come up
#   BUILD_TIMEOUT=1800             seconds allowed for `cargo build --release`
#   INSTALL=0      do not try to apt-get missing nginx/wrk/curl
#   KEEP_TMP=1     keep the temp dir (configs, logs, raw wrk output)
#   RUNS=1         rounds; with RUNS>1 the servers are measured in interleaved
#                  rounds and the median req/s and median p99 are reported
#   QUIET_PCT=15 QUIET_WAIT=120    before each measured run, wait up to
#                  QUIET_WAIT s for the machine to be under QUIET_PCT % busy
#                  for 3 s in a row
#   OTHER_MAX=10 RETRIES=2         a measured run during which other processes
#                  used more than OTHER_MAX % of a CPU is redone (RETRIES times at
#                  most), then kept with a warning
set -euo pipefail
# The whole script is one { ... } block, so bash parses all of it before running
# anything: editing this file while a benchmark runs cannot break that run.
{

LOG_TAG=bench
. "$(dirname "$0")/lib.sh"

DIGUE_BIN_DEFAULT="${CARGO_TARGET_DIR:-target}/release/digue"
DIGUE_BIN="${DIGUE_BIN:-$DIGUE_BIN_DEFAULT}"
SKIP_DIGUE="${SKIP_DIGUE:-0}"
SKIP_STATIC="${SKIP_STATIC:-0}"
OUT="${OUT:-benches/results-$(date +%F).md}"
CONNS="${CONNS:-64}"
THREADS="${THREADS:-1}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
OBJ_SIZE="${OBJ_SIZE:-2048}"
SERVER_CPU="${SERVER_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
READY_TIMEOUT="${READY_TIMEOUT:-20}"
BUILD_TIMEOUT="${BUILD_TIMEOUT:-1800}"
INSTALL="${INSTALL:-1}"
KEEP_TMP="${KEEP_TMP:-0}"
RUNS="${RUNS:-1}"
QUIET_PCT="${QUIET_PCT:-15}"
QUIET_WAIT="${QUIET_WAIT:-120}"
OTHER_MAX="${OTHER_MAX:-10}"
RETRIES="${RETRIES:-2}"

# ---------------------------------------------------------------- tools
ensure_tools() {
  local missing=()
  command -v nginx   >/dev/null 2>&1 || missing+=(nginx-light)
  command -v wrk     >/dev/null 2>&1 || missing+=(wrk)
  command -v curl    >/dev/null 2>&1 || missing+=(curl)
  command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  command -v pgrep   >/dev/null 2>&1 || missing+=(procps)
  ((${#missing[@]} == 0)) && return 0
  [[ "$INSTALL" == 1 ]] || die "missing tools (${missing[*]}) and INSTALL=0"
  apt_install "missing tools (${missing[*]}); install them" "${missing[@]}"
}
ensure_tools

# ---------------------------------------------------------------- digue binary (before any measurement)
DIGUE_REV=""
if [[ "$SKIP_DIGUE" != 1 ]]; then
  if [[ ! -x "$DIGUE_BIN" ]]; then
    [[ "$DIGUE_BIN" == "$DIGUE_BIN_DEFAULT" ]] || die "DIGUE_BIN=$DIGUE_BIN does not exist or is not executable"
    command -v cargo >/dev/null 2>&1 || die "$DIGUE_BIN missing and cargo not found (or set SKIP_DIGUE=1)"
    log "building digue: cargo build --release (timeout ${BUILD_TIMEOUT}s)"
    timeout "$BUILD_TIMEOUT" cargo build --release >&2 || die "cargo build --release failed (or set SKIP_DIGUE=1)"
    [[ -x "$DIGUE_BIN" ]] || die "cargo build --release did not produce $DIGUE_BIN"
  fi
  if [[ "$DIGUE_BIN" == "$DIGUE_BIN_DEFAULT" ]]; then
    DIGUE_REV="$(git -C "$ROOT" describe --always --dirty 2>/dev/null || true)"
  fi
fi

# ---------------------------------------------------------------- temp dir + cleanup, free ports
bench_tmp bench
pick_ports ORIGIN_PORT STATIC_PORT NGINX_PORT DIGUE_PORT DIGUE_ADMIN_PORT

# ---------------------------------------------------------------- helpers
# headers URL -> response headers of a GET (body discarded), CR stripped
headers() { { curl -sS --max-time 5 -D - -o /dev/null "$1" || true; } | tr -d '\r'; }

check_body() {  # check_body URL NAME : body must be OBJ_SIZE bytes with 200
  local got
  got="$(curl -sS --max-time 5 -o /dev/null -w '%{http_code} %{size_download}' "$1")" \
    || die "$2: request to $1 failed"
  [[ "$got" == "200 $OBJ_SIZE" ]] || die "$2: expected '200 $OBJ_SIZE' from $1, got '$got'"
}

# nginx_site NAME SITE_TEMPLATE PORT : an nginx under test in $TMP/NAME, from
# benches/nginx/base.conf + benches/nginx/SITE_TEMPLATE, on SERVER_CPU; PID in NGINX_PID
nginx_site() {
  start_nginx "$TMP/$1" "$2" "$SERVER_CPU" "$TMP/$1/logs/stdout.log" \
    PORT="$3" ORIGIN_PORT="$ORIGIN_PORT" WWW="$TMP/www"
}

# ---------------------------------------------------------------- wrk + parsing
declare -A RPS P99 RUNS_RPS RUNS_P99 RAW
SERVERS=()        # names, in measurement order
declare -A URL SPID OTHER CPUS

# --- interference accounting (the machine may be shared with builds/tests)
total_busy_jiffies() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9}' /proc/stat; }
tree_jiffies() {  # CPU jiffies used so far by PID and its direct children (nginx master + worker)
  local pid="$1" p kids
  kids="$(pgrep -P "$pid" 2>/dev/null || true)"
  for p in $pid $kids; do
    proc_ticks "$p" 2>/dev/null || true
  done | awk '{ s += $1 } END { print s + 0 }'
}
children_jiffies() {  # CPU time of reaped children of this shell (the `times` builtin), in jiffies
  # must run in the main shell (a $(...) subshell has its own, empty, child accounting):
  # usage: children_jiffies; c0=$CHILD_J
  times >"$TMP/times.txt"
  CHILD_J="$(awk -v hz="$HZ" 'NR == 2 { t = 0
      for (i = 1; i <= 2; i++) { split($i, a, "m"); sub(/s$/, "", a[2]); t += a[1] * 60 + a[2] }
      printf "%d", t * hz }' "$TMP/times.txt")"
}
cpu_busy_pct() {  # % of all CPUs busy over 1 s
  local a b
  a="$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)"; sleep 1
  b="$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)"
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
    busy = y[1] - x[1]; idle = y[2] - x[2];
    printf "%.0f", (busy + idle > 0) ? 100 * busy / (busy + idle) : 0 }'
}
wait_quiet() {  # wait (bounded) until the machine has been idle for 3 s in a row
  local deadline=$((SECONDS + QUIET_WAIT)) busy warned=0 calm=0
  while :; do
    busy="$(cpu_busy_pct)"
    if ((busy <= QUIET_PCT)); then
      calm=$((calm + 1))
      ((calm >= 3)) && return 0
      continue
    fi
    calm=0
    if ((SECONDS >= deadline)); then
      log "WARNING: machine still ${busy}% busy after waiting ${QUIET_WAIT}s; measuring anyway (numbers will be low)"
      return 0
    fi
    ((warned)) || { log "machine is ${busy}% busy (other work); waiting up to ${QUIET_WAIT}s for it to settle"; warned=1; }
  done
}

run_wrk() {  # run_wrk NAME ROUND
  local name="$1" round="$2" url="${URL[$1]}" f="$TMP/wrk-$1-$2.txt" secs wsecs attempt=0
  local t0 s0 c0 w0 t1 s1 c1 w1 srv cli other rps p99
  secs="${DURATION%s}"; [[ "$secs" =~ ^[0-9]+$ ]] || secs=60
  wsecs="${WARMUP%s}"; [[ "$wsecs" =~ ^[0-9]+$ ]] || wsecs=60
  while :; do
    attempt=$((attempt + 1))
    wait_quiet
    log "$name (round $round/$RUNS): warm-up ${WARMUP}, then ${DURATION} measured ($url)"
    wrk_run "$name: wrk warm-up" "$TMP/warmup-$name-$round.txt" $((wsecs + 30)) -t"$THREADS" -c"$CONNS" -d"$WARMUP" "$url"
    t0="$(total_busy_jiffies)"; s0="$(tree_jiffies "${SPID[$name]}")"; children_jiffies; c0=$CHILD_J; w0="$(date +%s%N)"
    wrk_run "$name: wrk" "$f" $((secs + 30)) -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$url"
    t1="$(total_busy_jiffies)"; s1="$(tree_jiffies "${SPID[$name]}")"; children_jiffies; c1=$CHILD_J; w1="$(date +%s%N)"
    # CPU used by anything other than the server under test and wrk, as % of one CPU
    # CPU used during the measured run, as % of one CPU: the server under test,
    # wrk, and anything else (which should be ~0)
    read -r srv cli other < <(awk -v t="$((t1 - t0))" -v s="$((s1 - s0))" -v c="$((c1 - c0))" \
      -v w="$(((w1 - w0) / 1000000))" -v hz="$HZ" \
      'BEGIN { o = t - s - c; if (o < 0) o = 0; d = (w > 0) ? w / 1000 * hz / 100 : 1;
               printf "%.0f %.0f %.0f\n", s / d, c / d, o / d }')
    cat "$f" >&2
    log "$name (round $round): CPU used: server ${srv}%, wrk ${cli}%, other processes ${other}%"
    ((other > OTHER_MAX)) || break
    if ((attempt > RETRIES)); then
      log "WARNING: $name (round $round): other work used ${other}% of a CPU during the run; numbers are suspect"
      break
    fi
    log "$name (round $round): other work above ${OTHER_MAX}%; measuring again (retry $attempt/$RETRIES)"
  done
  if ((cli >= 90)); then
    log "WARNING: $name (round $round): wrk used ${cli}% of its CPU: the load generator may be the bottleneck, so this req/s is a lower bound"
  fi
  if grep -qE 'Non-2xx or 3xx responses|Socket errors' "$f"; then
    log "WARNING: $name: wrk reported errors (see above); numbers are suspect"
  fi
  rps="$(wrk_rps "$f")"
  p99="$(wrk_p99_ms "$f")"
  [[ -n "$rps" && -n "$p99" ]] || die "$name: could not parse wrk output ($f)"
  RUNS_RPS[$name]+="$rps "; RUNS_P99[$name]+="$p99 "; RAW[$name]+="$f "; OTHER[$name]+="$other "; CPUS[$name]+="$srv/$cli/$other "
}

[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"

# ---------------------------------------------------------------- origin
# The origin is pinned to the server CPU too, but it only sees traffic on a
# cache miss: it is idle during the measured (all-hit) runs.
start_origin "$OBJ_SIZE"
check_body "http://127.0.0.1:$ORIGIN_PORT/obj" origin
origin_headers="$(headers "http://127.0.0.1:$ORIGIN_PORT/obj")"
grep -qi '^cache-control: max-age=3600' <<<"$origin_headers" \
  || die "origin: missing Cache-Control: max-age=3600"
log "origin up on :$ORIGIN_PORT"

# All servers under test are started and verified first, then measured one at a
# time (the others sit idle). With RUNS>1 the rounds interleave the servers.

# ---------------------------------------------------------------- (0) bare static nginx
if [[ "$SKIP_STATIC" != 1 ]]; then
  nginx_site static static.conf "$STATIC_PORT"
  wait_http "http://127.0.0.1:$STATIC_PORT/obj" "$NGINX_PID" nginx-static "$TMP/static/logs/error.log"
  check_body "http://127.0.0.1:$STATIC_PORT/obj" nginx-static
  log "nginx static up on :$STATIC_PORT"
  SERVERS+=(nginx-static); URL[nginx-static]="http://127.0.0.1:$STATIC_PORT/obj"; SPID[nginx-static]="$NGINX_PID"
fi

# ---------------------------------------------------------------- (a) nginx proxy_cache
nginx_site proxy proxy_cache.conf "$NGINX_PORT"
# readiness on a local path, so the benchmark object is first fetched below
wait_http "http://127.0.0.1:$NGINX_PORT/__ready" "$NGINX_PID" nginx-proxy_cache "$TMP/proxy/logs/error.log"
check_body "http://127.0.0.1:$NGINX_PORT/obj" nginx-proxy_cache   # miss: fills the cache
nginx_x_cache() { headers "http://127.0.0.1:$NGINX_PORT/obj" | awk -F': *' 'tolower($1) == "x-cache" {print $2}'; }
x_cache="$(nginx_x_cache)"
[[ "$x_cache" == HIT ]] || die "nginx proxy_cache: second request was X-Cache: '${x_cache:-<none>}', expected HIT"
log "nginx proxy_cache up on :$NGINX_PORT (X-Cache: $x_cache)"
SERVERS+=(nginx); URL[nginx]="http://127.0.0.1:$NGINX_PORT/obj"; SPID[nginx]="$NGINX_PID"

# ---------------------------------------------------------------- (b) digue
digue_cache_status() {
  headers "http://127.0.0.1:$DIGUE_PORT/obj" \
    | awk 'tolower($0) ~ /^cache-status:/ { sub(/^[^:]*: */, ""); print }'
}
is_hit() { grep -qiE '(^|[^a-z-])hit([^a-z-]|$)' <<<"$1"; }

if [[ "$SKIP_DIGUE" != 1 ]]; then
  mkdir -p "$TMP/digue"
  bench_toml "$DIGUE_PORT" "$DIGUE_ADMIN_PORT" 64 >"$TMP/digue/digue.toml"
  # Quiet logs, like nginx's access_log off (override with RUST_LOG).
  RUST_LOG="${RUST_LOG:-warn}" \
    start_digue digue "$TMP/digue/digue.toml" "$TMP/digue/digue.log" "$DIGUE_ADMIN_PORT" "$SERVER_CPU"
  check_body "http://127.0.0.1:$DIGUE_PORT/obj" digue   # miss: fills the cache
  cache_status="$(digue_cache_status)"
  is_hit "$cache_status" \
    || die "digue: second request had Cache-Status '${cache_status:-<none>}', expected it to contain 'hit'"
  log "digue up on :$DIGUE_PORT (Cache-Status: $cache_status)"
  SERVERS+=(digue); URL[digue]="http://127.0.0.1:$DIGUE_PORT/obj"; SPID[digue]="$DIGUE_PID"
fi

# ---------------------------------------------------------------- measure
for round in $(seq 1 "$RUNS"); do
  for name in "${SERVERS[@]}"; do
    run_wrk "$name" "$round"
  done
done

# still all hits afterwards?
x_cache="$(nginx_x_cache)"
[[ "$x_cache" == HIT ]] || log "WARNING: nginx proxy_cache: X-Cache after the runs is '${x_cache:-<none>}'"
if [[ "$SKIP_DIGUE" != 1 ]]; then
  kill -0 "$DIGUE_PID" 2>/dev/null || die "digue died during the benchmark (log: $TMP/digue/digue.log)"
  cache_status="$(digue_cache_status)"
  is_hit "$cache_status" || log "WARNING: digue: Cache-Status after the runs is '${cache_status:-<none>}'"
fi

for name in "${SERVERS[@]}"; do
  RPS[$name]="$(median <<<"${RUNS_RPS[$name]}")"
  P99[$name]="$(median <<<"${RUNS_P99[$name]}")"
done

# ---------------------------------------------------------------- report
table() {
  echo "| server | req/s | p99 (ms) | req/s vs nginx | p99 vs nginx |"
  echo "|---|---:|---:|---:|---:|"
  local n label
  for n in "${SERVERS[@]}"; do
    case "$n" in
      nginx-static) label="nginx static file, no proxy (ceiling)" ;;
      nginx)        label="nginx proxy_cache" ;;
      digue)        label="digue${DIGUE_REV:+ ($DIGUE_REV)}" ;;
      *)            label="$n" ;;
    esac
    printf '| %s | %.0f | %.2f | %s | %s |\n' "$label" "${RPS[$n]}" "${P99[$n]}" \
      "$(ratio "${RPS[$n]}" "${RPS[nginx]}")" "$(ratio "${P99[$n]}" "${P99[nginx]}")"
  done
  if [[ "$SKIP_DIGUE" == 1 ]]; then
    echo "| digue | skipped | skipped | - | - |"
  fi
}

TABLE="$(table)"
echo
echo "$TABLE"
if [[ -n "${RPS[digue]:-}" ]]; then
  echo
  echo "digue/nginx: req/s ratio $(ratio "${RPS[digue]}" "${RPS[nginx]}"), p99 ratio $(ratio "${P99[digue]}" "${P99[nginx]}")"
fi

mkdir -p "$(dirname "$OUT")"
{
  echo "# digue cache-hit benchmark, $(date +%F)"
  echo
  echo "- machine: $(machine_info)"
  echo "- $(nginx -v 2>&1), $(wrk_version)"
  echo "- server under test pinned to CPU $SERVER_CPU, wrk to CPU $CLIENT_CPU"
  echo "- wrk -t$THREADS -c$CONNS -d$DURATION --latency, after a $WARMUP warm-up; ${OBJ_SIZE} B object, every measured request a cache hit"
  if ((RUNS > 1)); then
    echo "- $RUNS interleaved rounds; table shows the median req/s and median p99 of each server"
    for n in "${SERVERS[@]}"; do echo "  - $n req/s: ${RUNS_RPS[$n]}; p99 ms: ${RUNS_P99[$n]}"; done
  fi
  echo "- CPU used during each measured run, server/wrk/other processes, in % of one CPU"
  echo "  (other should be ~0; wrk near 100 means the client, not the server, was the limit):"
  for n in "${SERVERS[@]}"; do echo "  - $n: ${CPUS[$n]}"; done
  echo
  echo "$TABLE"
  echo
  echo "## Raw wrk output"
  for n in "${SERVERS[@]}"; do
    for f in ${RAW[$n]}; do
      echo
      echo "### $n ($(basename "$f" .txt))"
      echo
      echo '```'
      cat "$f"
      echo '```'
    done
  done
} >"$OUT"
log "results written to $OUT"
if [[ "${ALL:-0}" == 1 ]]; then
  for next in surge queue reload redis; do
    log "next: benches/$next.sh"
    "$ROOT/benches/$next.sh" || die "benches/$next.sh failed"
  done
fi
exit 0
}
