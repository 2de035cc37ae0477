# Shell code shared by the benchmark scripts (run.sh, queue.sh, reload.sh,
# surge.sh, redis.sh). Each one sets LOG_TAG, then sources this file first
# thing inside its { ... } block:
#   LOG_TAG=queue
#   . "$(dirname "$0")/lib.sh"
# Sourcing sets ROOT (the repository), cd's there and sets HZ; the rest are
# functions. Where named, they read the sourcing script's settings: LOG_TAG,
# TMP and PIDS (made by bench_tmp), KEEP_TMP, READY_TIMEOUT, QUIET_WAIT, BUILD,
# CLIENT_CPU, SERVER_CPU, ORIGIN_PORT, ADMIN_PORT, DIGUE_BIN.
# bash reads a sourced file whole before running any of it, so, as with the
# scripts' { ... } blocks, editing this file cannot break a benchmark that runs.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
HZ="$(getconf CLK_TCK)"   # clock ticks per second: the unit of /proc CPU times

# ---------------------------------------------------------------- messages
# log MSG... : a progress line on stderr, tagged [LOG_TAG] (stdout is for results)
log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
# die MSG... : an error line on stderr, then exit 1 (the EXIT trap stops the servers)
die() { printf '[%s] ERROR: %s\n' "$LOG_TAG" "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools
# require_tools HINT TOOL... : die naming the first TOOL not on PATH (with HINT, how to get it, if not empty), before any server starts
require_tools() {
  local hint="$1" t; shift
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || die "$t is missing${hint:+ ($hint)}"
  done
}

# apt_install WHAT PKG... : apt-get install PKG (after an apt-get update if the first try fails); not root: die "WHAT: apt-get install PKG"
apt_install() {
  local what="$1"; shift
  [[ "$(id -u)" == 0 ]] || die "$what: apt-get install $*"
  log "installing $*"
  # Debian's nginx package may start a system nginx on :80; it is not used here.
  if ! DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q "$@" >&2; then
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -q >&2 || true
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q "$@" >&2 || die "apt-get install $* failed"
  fi
}

# ---------------------------------------------------------------- other load
# wait_idle : wait (up to QUIET_WAIT s) until no other benchmark (run.sh, wrk) runs: two at once skew both
wait_idle() {
  local deadline=$((SECONDS + QUIET_WAIT)) said=0
  while pgrep -f 'benches/run.sh|wrk ' >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "other benchmarks still running after ${QUIET_WAIT}s: $(pgrep -af 'benches/run.sh|wrk ' | head -3 | tr '\n' ';')"
    ((said)) || { log "waiting for other benchmarks to end: $(pgrep -af 'benches/run.sh|wrk ' | head -2 | tr '\n' ';')"; said=1; }
    sleep 10
  done
}

# loadavg : the 1/5/15-minute load averages, recorded beside each measurement to show other load
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# proc_ticks PID : CPU time PID has used so far (utime + stime, in 1/HZ s), from /proc/PID/stat: a server's own cost, apart from other load
proc_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# ---------------------------------------------------------------- binaries
# stale BIN SOURCES... : true when BIN is missing or older than a .rs file under SOURCES (a benchmark must not measure old code)
stale() {
  local bin="$1"; shift
  [[ -x "$bin" ]] || return 0
  [[ -n "$(find "$@" -newer "$bin" -name '*.rs' -print -quit 2>/dev/null)" ]]
}

# rebuild_if_stale BIN DEFAULT CARGO_TARGET SOURCES... : when BIN is stale, cargo build --release CARGO_TARGET (e.g. "--bin digue"), only for BIN = DEFAULT with BUILD=1, and only once no other benchmark or cargo runs (a build is load too)
rebuild_if_stale() {
  local bin="$1" default="$2" target="$3" deadline; shift 3
  stale "$bin" "$@" || return 0
  [[ "$BUILD" == 1 && "$bin" == "$default" ]] || die "$bin is missing or older than src/ (cargo build --release)"
  wait_idle
  deadline=$((SECONDS + QUIET_WAIT))
  while pgrep -x cargo >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "another cargo is still running after ${QUIET_WAIT}s"
    log "another cargo is running; waiting"; sleep 10
  done
  # shellcheck disable=SC2086  # CARGO_TARGET is two words on purpose
  log "cargo build --release $target"; timeout 1800 cargo build --release $target >&2 || die "cargo build --release $target failed"
}

# ---------------------------------------------------------------- temp dir, processes, cleanup
# bench_tmp NAME : make TMP (digue-NAME.XXXXXX, readable by nginx workers) and an empty PIDS, and trap exit and signals so cleanup always runs
bench_tmp() {
  TMP="$(mktemp -d -t "digue-$1.XXXXXX")"
  chmod 755 "$TMP"
  PIDS=()
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# stop_pid PID : SIGTERM, SIGKILL after 5 s (with the workers of an nginx master), then reap it
stop_pid() {
  local pid="$1" i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# cleanup : the EXIT trap: stop PIDS in order, remove TMP unless KEEP_TMP=1 or the run failed, keep the exit status
cleanup() {
  local rc=$? p
  set +e
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  if [[ "$KEEP_TMP" == 1 || $rc != 0 ]]; then log "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
  exit $rc
}

# ---------------------------------------------------------------- ports, readiness
# free_ports N : N distinct free loopback ports (all bound at once, so they differ)
free_ports() {
  python3 -c 'import socket,sys
s=[socket.socket() for _ in range(int(sys.argv[1]))]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"
}

# pick_ports VAR... : set each VAR (global, or the caller's local) to a free loopback port, or die (fixed ports would clash with tests and other runs)
pick_ports() {
  local _pp_ports _pp_last="${!#}"
  _pp_ports="$(free_ports $#)" || die "could not pick free ports"
  read -r "$@" <<<"$_pp_ports"
  [[ "${!_pp_last:-}" =~ ^[0-9]+$ ]] || die "could not pick free ports"
}

# wait_http URL PID NAME LOG : wait up to READY_TIMEOUT s for URL to answer 2xx; die showing LOG's tail if PID exits first or time runs out
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

# ---------------------------------------------------------------- nginx, origin, digue
# render TEMPLATE OUT KEY=VALUE... : copy TEMPLATE to OUT with each @KEY@ replaced; die if a @MARKER@ is left
render() {
  local tmpl="$1" out="$2" text kv; shift 2
  text="$(<"$tmpl")"
  for kv in "$@"; do text="${text//@${kv%%=*}@/${kv#*=}}"; done
  [[ "$text" != *@[A-Z_]*@* ]] || die "unfilled @MARKER@ left in $out (from $tmpl)"
  printf '%s\n' "$text" >"$out"
}

# start_nginx DIR SITE CPU OUT KEY=VALUE... : an nginx with prefix DIR from benches/nginx/base.conf + SITE (@KEY@s filled), config-tested, pinned to CPU, output to OUT; PID in NGINX_PID and PIDS
start_nginx() {
  local d="$1" site="$2" cpu="$3" out="$4"; shift 4
  mkdir -p "$d"/{tmp/body,tmp/proxy,tmp/fastcgi,tmp/uwsgi,tmp/scgi,logs}
  local vars=(PREFIX="$d" USER="$(id -un)" GROUP="$(id -gn)" "$@")
  render "$ROOT/benches/nginx/base.conf" "$d/nginx.conf" "${vars[@]}"
  render "$ROOT/benches/nginx/$site" "$d/site.conf" "${vars[@]}"
  nginx -t -q -p "$d" -e "$d/logs/error.log" -c "$d/nginx.conf" 2>"$d/logs/configtest.log" \
    || { cat "$d/logs/configtest.log" >&2; die "nginx config invalid ($d/nginx.conf)"; }
  taskset -c "$cpu" nginx -p "$d" -e "$d/logs/error.log" -c "$d/nginx.conf" >"$out" 2>&1 &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
}

# start_origin SIZE : the nginx origin (nginx/origin.conf) on ORIGIN_PORT and SERVER_CPU, serving TMP/www/obj, SIZE random bytes that may be cached an hour; waits until it answers; PID in ORIGIN_PID
start_origin() {
  mkdir -p "$TMP/www"
  head -c "$1" /dev/urandom | base64 -w 0 | head -c "$1" >"$TMP/www/obj"
  chmod 755 "$TMP/www"; chmod 644 "$TMP/www/obj"
  start_nginx "$TMP/origin" origin.conf "$SERVER_CPU" "$TMP/origin/logs/stdout.log" \
    PORT="$ORIGIN_PORT" ORIGIN_PORT="$ORIGIN_PORT" WWW="$TMP/www"
  ORIGIN_PID="$NGINX_PID"
  wait_http "http://127.0.0.1:$ORIGIN_PORT/obj" "$ORIGIN_PID" origin "$TMP/origin/logs/error.log"
}

# start_digue NAME CONFIG LOG ADMIN_PORT [CPU] : DIGUE_BIN run --config CONFIG (pinned to CPU if given), output to LOG, until its /healthz answers; PID in DIGUE_PID and PIDS (pass RUST_LOG, DIGUE_SECRET in the call's environment)
start_digue() {
  local name="$1" config="$2" logf="$3" admin="$4" pin=()
  [[ -z "${5:-}" ]] || pin=(taskset -c "$5")
  "${pin[@]}" "$DIGUE_BIN" run --config "$config" >"$logf" 2>&1 &
  DIGUE_PID=$!
  PIDS+=("$DIGUE_PID")
  wait_http "http://127.0.0.1:$admin/healthz" "$DIGUE_PID" "$name" "$logf"
}

# bench_toml PORT ADMIN_PORT ORIGIN_CONCURRENCY : the common head of the wrk benchmarks' digue config (one worker thread, as nginx gets one core; 64 MiB cache; site "bench", every host, origin ORIGIN_PORT)
bench_toml() {
  cat <<EOF
[server]
listen = "127.0.0.1:$1"
admin_listen = "127.0.0.1:$2"
worker_threads = 1        # digue option: tokio worker threads (bench fairness: one core)

[cache]
max_size = "64MiB"

[[site]]
name = "bench"
hosts = ["*"]
origin = "http://127.0.0.1:$ORIGIN_PORT"
origin_concurrency = $3
origin_share_per_network = 100   # every load client is on loopback: one network
EOF
}

# metric PREFIX [ADMIN_PORT] : sum of digue's /metrics samples whose name{labels} starts with PREFIX (port default ADMIN_PORT)
metric() {
  curl -fsS --max-time 5 "http://127.0.0.1:${2:-$ADMIN_PORT}/metrics" \
    | awk -v p="$1" 'index($0, p) == 1 { s += $NF } END { printf "%.0f\n", s }'
}

# ---------------------------------------------------------------- wrk
# wrk_run WHAT OUT TIMEOUT WRK_ARGS... : wrk WRK_ARGS pinned to CLIENT_CPU (away from the server), output to OUT, killed after TIMEOUT s if it hangs; on failure show OUT and die "WHAT failed"
wrk_run() {
  local what="$1" out="$2" limit="$3"; shift 3
  timeout "$limit" taskset -c "$CLIENT_CPU" wrk "$@" >"$out" 2>&1 || { cat "$out" >&2; die "$what failed"; }
}

# wrk_p99_ms FILE : the 99% latency of a wrk --latency report, in milliseconds
wrk_p99_ms() {
  awk '$1 == "99%" {
         v = $2; u = v; sub(/^[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
         if (u == "us") v /= 1000; else if (u == "s") v *= 1000; else if (u == "m") v *= 60000;
         printf "%.3f", v }' "$1"
}
# wrk_rps FILE : the Requests/sec of a wrk report
wrk_rps() { awk '/^Requests\/sec:/ {print $2}' "$1"; }
# wrk_requests FILE : how many requests a wrk report counts
wrk_requests() { awk '/requests in/ {print $1}' "$1"; }
# wrk_non2xx FILE : the non-2xx/3xx answers a wrk report counts (0 when it names none)
wrk_non2xx() { local n; n="$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$1")"; echo "${n:-0}"; }
# wrk_sockerr FILE : a wrk report's socket errors ("connect 0, read 1, ..."), or "none"
wrk_sockerr() { local s; s="$(grep -o 'Socket errors:.*' "$1" | sed 's/Socket errors: //' || true)"; echo "${s:-none}"; }

# ---------------------------------------------------------------- report
# median : the median of the numbers on stdin (space- or newline-separated), for rounds
median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
# ratio A B : A / B to two decimals, "-" when B is 0
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
# machine_info : "N CPUs, CPU model, kernel", for a results file's header
machine_info() { echo "$(nproc) CPUs, $(lscpu 2>/dev/null | awk -F': *' '/^Model name/ {print $2; exit}'), $(uname -sr)"; }
# digue_version : DIGUE_BIN's --version and the checkout's git describe, for a results file's header
digue_version() { echo "$("$DIGUE_BIN" --version) ($(git describe --always --dirty 2>/dev/null || echo '?'))"; }
# wrk_version : "wrk X.Y.Z", for a results file's header
wrk_version() { { wrk -v 2>&1 || true; } | head -n1 | awk '{print $1, $2}'; }
# raw_sections HEADING FILE... : each FILE as a markdown section "HEADING NAME" (NAME: its base name less .txt) with its text fenced
raw_sections() {
  local h="$1" f; shift
  for f in "$@"; do echo; echo "$h $(basename "$f" .txt)"; echo; echo '```'; cat "$f"; echo '```'; done
}
