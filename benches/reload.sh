#!/usr/bin/env bash
# Reload under load: wrk -t1 -c64 on a cache hit and on a proxied miss path,
# first without reloads (baseline), then while digue gets a SIGHUP every
# 200 ms, alternating two valid configs that differ in a limit
# (origin_concurrency 64 / 48, new_users_per_minute 600 / 300). Reports wrk's
# non-2xx and socket errors, the reloads applied (digue_config_reloads_total),
# and the connections digue accepted during each run: 64 means wrk never had to
# reconnect, i.e. no connection was dropped.
# Pinned as in run.sh: digue (worker_threads = 1) and the origin on CPU 0,
# wrk and the SIGHUP loop on CPU 1.
#
# Usage: benches/reload.sh
# Knobs (environment): CONNS=64 DURATION=20s WARMUP=2s EVERY=0.2 BASELINE=1
#   SERVER_CPU=0 CLIENT_CPU=1 DIGUE_BIN BUILD=1 QUIET_WAIT=1200 READY_TIMEOUT=20
#   KEEP_TMP=0 OUT (default benches/results-extra-reload-YYYY-MM-DD.md)
set -euo pipefail
{

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CONNS="${CONNS:-64}"
DURATION="${DURATION:-20s}"
WARMUP="${WARMUP:-2s}"
EVERY="${EVERY:-0.2}"
BASELINE="${BASELINE:-1}"
SERVER_CPU="${SERVER_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
DIGUE_BIN="${DIGUE_BIN:-target/release/digue}"
BUILD="${BUILD:-1}"
QUIET_WAIT="${QUIET_WAIT:-1200}"
READY_TIMEOUT="${READY_TIMEOUT:-20}"
KEEP_TMP="${KEEP_TMP:-0}"
OUT="${OUT:-benches/results-extra-reload-$(date +%F).md}"

log() { printf '[reload] %s\n' "$*" >&2; }
die() { printf '[reload] ERROR: %s\n' "$*" >&2; exit 1; }

for t in curl python3 taskset pgrep wrk nginx; do
  command -v "$t" >/dev/null 2>&1 || die "$t is missing (apt-get install curl python3 util-linux procps wrk nginx-light)"
done
DURATION_S="${DURATION%s}"; WARMUP_S="${WARMUP%s}"
[[ "$DURATION_S" =~ ^[0-9]+$ && "$WARMUP_S" =~ ^[0-9]+$ ]] || die "DURATION and WARMUP are seconds, like 20s"

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

TMP="$(mktemp -d -t digue-reload.XXXXXX)"
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
  # the SIGHUP loop first, so it never signals anything after digue is gone
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
metric() {  # metric PREFIX : sum of the samples whose name{labels} starts with PREFIX
  curl -fsS --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" \
    | awk -v p="$1" 'index($0, p) == 1 { s += $NF } END { printf "%.0f\n", s }'
}

read -r ORIGIN_PORT DIGUE_PORT ADMIN_PORT < <(free_ports 3)
[[ "${ADMIN_PORT:-}" =~ ^[0-9]+$ ]] || die "could not pick free ports"

# ---------------------------------------------------------------- origin: /obj cacheable, /miss/obj never cached by digue
mkdir -p "$TMP/www/miss" "$TMP/origin"/{tmp/body,tmp/proxy,tmp/fastcgi,tmp/uwsgi,tmp/scgi,logs}
head -c 2048 /dev/urandom | base64 -w 0 | head -c 2048 >"$TMP/www/obj"
cp "$TMP/www/obj" "$TMP/www/miss/obj"
chmod -R a+rX "$TMP/www"
vars=(PREFIX="$TMP/origin" USER="$(id -un)" GROUP="$(id -gn)" PORT="$ORIGIN_PORT" ORIGIN_PORT="$ORIGIN_PORT" WWW="$TMP/www")
render benches/nginx/base.conf "$TMP/origin/nginx.conf" "${vars[@]}"
render benches/nginx/origin.conf "$TMP/origin/site.conf" "${vars[@]}"
taskset -c "$SERVER_CPU" nginx -p "$TMP/origin" -e "$TMP/origin/logs/error.log" -c "$TMP/origin/nginx.conf" >/dev/null 2>&1 &
ORIGIN_PID=$!; PIDS+=("$ORIGIN_PID")
wait_http "http://127.0.0.1:$ORIGIN_PORT/obj" "$ORIGIN_PID" origin "$TMP/origin/logs/error.log"

# ---------------------------------------------------------------- two valid configs, differing in limits
write_config() {  # write_config FILE ORIGIN_CONCURRENCY USERS_PER_MINUTE
  cat >"$1" <<EOF
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
origin_concurrency = $2

[[site.cache.rule]]
prefix = "/miss/"
bypass = true

[site.admission]
paths = ["/login"]
new_users_per_minute = $3
EOF
  "$DIGUE_BIN" check --config "$1" >/dev/null || die "config $1 is invalid"
}
write_config "$TMP/a.toml" 64 600
write_config "$TMP/b.toml" 48 300
cp "$TMP/a.toml" "$TMP/digue.toml"
DIGUE_SECRET="reload-bench-secret-0123456789abcdef" RUST_LOG=warn \
  taskset -c "$SERVER_CPU" "$DIGUE_BIN" run --config "$TMP/digue.toml" >"$TMP/digue.log" 2>&1 &
DIGUE_PID=$!; PIDS+=("$DIGUE_PID")
wait_http "http://127.0.0.1:$ADMIN_PORT/healthz" "$DIGUE_PID" digue "$TMP/digue.log"

HIT_URL="http://127.0.0.1:$DIGUE_PORT/obj"
MISS_URL="http://127.0.0.1:$DIGUE_PORT/miss/obj"
curl -fsS -o /dev/null "$HIT_URL" || die "digue: /obj failed"
curl -sS -D - -o /dev/null "$HIT_URL" | tr -d '\r' | grep -qi '^cache-status:.*hit' || die "digue: second /obj is not a cache hit"
curl -sS -D - -o /dev/null "$MISS_URL" | tr -d '\r' | grep -qi '^cache-status:.*bypass' || die "digue: /miss/obj is not forwarded (bypass)"

# ---------------------------------------------------------------- the SIGHUP loop
# Swaps the file atomically (rename), then signals; records each send and,
# every 5th time, the origin limit digue reports, to see both configs live.
start_reloader() {
  (
    trap 'exit 0' TERM
    i=0
    while kill -0 "$DIGUE_PID" 2>/dev/null; do
      if ((i % 2)); then src="$TMP/a.toml"; else src="$TMP/b.toml"; fi
      cp "$src" "$TMP/digue.toml.new" && mv -f "$TMP/digue.toml.new" "$TMP/digue.toml"
      kill -HUP "$DIGUE_PID" 2>/dev/null || break
      echo sent >>"$TMP/hups"
      i=$((i + 1))
      if ((i % 5 == 0)); then
        curl -fsS --max-time 1 "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null \
          | awk '/^digue_origin_limit/ {print $NF}' >>"$TMP/limits" || true
      fi
      sleep "$EVERY"
    done
  ) &
  RELOADER_PID=$!
  PIDS=("$RELOADER_PID" "${PIDS[@]}")
}

parse_p99_ms() {
  awk '$1 == "99%" { v = $2; u = v; sub(/^[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
       if (u == "us") v /= 1000; else if (u == "s") v *= 1000; printf "%.3f", v }' "$1"
}
ROWS=()
run() {  # run NAME URL RELOADS(0|1)
  local name="$1" url="$2" reloads="$3" f="$TMP/wrk-$1.txt" a0 a1 r0 r1 c0 c1 e0 e1 b0 b1 h0 h1 la rps p99 reqs non2xx sock
  wait_idle
  la="$(loadavg)"
  timeout $((WARMUP_S + 30)) taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"$WARMUP" "$url" >"$TMP/warmup-$name.txt" 2>&1 \
    || { cat "$TMP/warmup-$name.txt" >&2; die "$name: wrk warm-up failed"; }
  a0="$(metric 'digue_config_reloads_total{outcome="applied"}')"; r0="$(metric 'digue_config_reloads_total{outcome="refused"}')"
  c0="$(metric digue_connections_total)"; e0="$(metric digue_origin_errors_total)"; b0="$(metric digue_busy_pages_total)"
  h0="$(wc -l <"$TMP/hups" 2>/dev/null || echo 0)"
  if ((reloads)); then start_reloader; fi
  timeout $((DURATION_S + 30)) taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$url" >"$f" 2>&1 \
    || { cat "$f" >&2; die "$name: wrk failed"; }
  if ((reloads)); then stop_pid "$RELOADER_PID"; sleep 0.5; fi
  kill -0 "$DIGUE_PID" 2>/dev/null || die "digue died during $name (log: $TMP/digue.log)"
  a1="$(metric 'digue_config_reloads_total{outcome="applied"}')"; r1="$(metric 'digue_config_reloads_total{outcome="refused"}')"
  c1="$(metric digue_connections_total)"; e1="$(metric digue_origin_errors_total)"; b1="$(metric digue_busy_pages_total)"
  h1="$(wc -l <"$TMP/hups" 2>/dev/null || echo 0)"
  cat "$f" >&2
  rps="$(awk '/^Requests\/sec:/ {print $2}' "$f")"; p99="$(parse_p99_ms "$f")"
  reqs="$(awk '/requests in/ {print $1}' "$f")"
  non2xx="$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$f")"; non2xx="${non2xx:-0}"
  sock="$(grep -o 'Socket errors:.*' "$f" | sed 's/Socket errors: //' || true)"; sock="${sock:-none}"
  # digue_connections_total counts the public listener only (admin scrapes are not in it)
  ROWS+=("$(printf '| %s | %s | %.0f | %.2f | %s | %s | %s | %s | %s | %s | %s | %s |' \
    "$name" "$reqs" "$rps" "$p99" "$non2xx" "$sock" "$((h1 - h0))" "$((a1 - a0))" "$((r1 - r0))" \
    "$((c1 - c0))" "$((e1 - e0)) / $((b1 - b0))" "$la")")
  log "$name: $reqs requests, non-2xx $non2xx, socket errors: $sock, SIGHUPs $((h1 - h0)), reloads applied $((a1 - a0)) refused $((r1 - r0)), new connections $((c1 - c0))"
}

if [[ "$BASELINE" == 1 ]]; then
  run "cache hit, no reload" "$HIT_URL" 0
  run "proxied miss, no reload" "$MISS_URL" 0
fi
run "cache hit, SIGHUP every ${EVERY}s" "$HIT_URL" 1
run "proxied miss, SIGHUP every ${EVERY}s" "$MISS_URL" 1
LIMITS="$(sort -n "$TMP/limits" 2>/dev/null | uniq -c | awk '{printf "%s (%s samples) ", $2, $1}')"
grep -iE 'error|warn' "$TMP/digue.log" | head -n 5 >"$TMP/log-errors.txt" || true

TABLE="$(
  echo "| run | requests | req/s | p99 (ms) | non-2xx | socket errors | SIGHUPs sent | reloads applied | refused | new connections | origin errors / busy pages | load avg at start |"
  echo "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "- digue_origin_limit sampled during the reload runs: ${LIMITS:-none} (both configs were live)"
  echo "- new connections = increase of digue_connections_total (public listener) during the measured run; $CONNS means wrk kept its $CONNS connections for the whole run"
  if [[ -s "$TMP/log-errors.txt" ]]; then echo "- digue log (warnings/errors): $(tr '\n' ' ' <"$TMP/log-errors.txt")"; else echo "- digue log: no warning or error"; fi
)"
echo
echo "$TABLE"
mkdir -p "$(dirname "$OUT")"
{
  echo "# digue reload under load, $(date '+%F %T %Z')"
  echo
  echo "- machine: $(nproc) CPUs, $(lscpu 2>/dev/null | awk -F': *' '/^Model name/ {print $2; exit}'), $(uname -sr)"
  echo "- $("$DIGUE_BIN" --version) ($(git describe --always --dirty 2>/dev/null || echo '?')), $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}')"
  echo "- digue worker_threads = 1 and the nginx origin on CPU $SERVER_CPU; wrk -t1 -c$CONNS -d$DURATION --latency (after a $WARMUP warm-up) and the SIGHUP loop on CPU $CLIENT_CPU"
  echo "- configs alternate origin_concurrency 64/48 and new_users_per_minute 600/300; the file is replaced by rename, then SIGHUP"
  echo
  echo "$TABLE"
  for f in "$TMP"/wrk-*.txt; do echo; echo "## $(basename "$f" .txt)"; echo; echo '```'; cat "$f"; echo '```'; done
} >"$OUT"
log "results written to $OUT"
exit 0
}
