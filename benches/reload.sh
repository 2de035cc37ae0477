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

LOG_TAG=reload
. "$(dirname "$0")/lib.sh"

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

require_tools "apt-get install curl python3 util-linux procps wrk nginx-light" curl python3 taskset pgrep wrk nginx
DURATION_S="${DURATION%s}"; WARMUP_S="${WARMUP%s}"
[[ "$DURATION_S" =~ ^[0-9]+$ && "$WARMUP_S" =~ ^[0-9]+$ ]] || die "DURATION and WARMUP are seconds, like 20s"

rebuild_if_stale "$DIGUE_BIN" target/release/digue "--bin digue" src

# (cleanup stops PIDS in order: start_reloader puts the SIGHUP loop first, so
# it never signals anything after digue is gone)
bench_tmp reload

pick_ports ORIGIN_PORT DIGUE_PORT ADMIN_PORT

# ---------------------------------------------------------------- origin: /obj cacheable, /miss/obj never cached by digue
start_origin 2048
mkdir -p "$TMP/www/miss"
cp "$TMP/www/obj" "$TMP/www/miss/obj"
chmod -R a+rX "$TMP/www"

# ---------------------------------------------------------------- two valid configs, differing in limits
write_config() {  # write_config FILE ORIGIN_CONCURRENCY USERS_PER_MINUTE
  { bench_toml "$DIGUE_PORT" "$ADMIN_PORT" "$2"; cat <<EOF

[[site.cache.rule]]
prefix = "/miss/"
bypass = true

[site.admission]
paths = ["/login"]
new_users_per_minute = $3
EOF
  } >"$1"
  "$DIGUE_BIN" check --config "$1" >/dev/null || die "config $1 is invalid"
}
write_config "$TMP/a.toml" 64 600
write_config "$TMP/b.toml" 48 300
cp "$TMP/a.toml" "$TMP/digue.toml"
DIGUE_SECRET="reload-bench-secret-0123456789abcdef" RUST_LOG=warn \
  start_digue digue "$TMP/digue.toml" "$TMP/digue.log" "$ADMIN_PORT" "$SERVER_CPU"

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

ROWS=()
run() {  # run NAME URL RELOADS(0|1)
  local name="$1" url="$2" reloads="$3" f="$TMP/wrk-$1.txt" a0 a1 r0 r1 c0 c1 e0 e1 b0 b1 h0 h1 la rps p99 reqs non2xx sock
  wait_idle
  la="$(loadavg)"
  wrk_run "$name: wrk warm-up" "$TMP/warmup-$name.txt" $((WARMUP_S + 30)) -t1 -c"$CONNS" -d"$WARMUP" "$url"
  a0="$(metric 'digue_config_reloads_total{outcome="applied"}')"; r0="$(metric 'digue_config_reloads_total{outcome="refused"}')"
  c0="$(metric digue_connections_total)"; e0="$(metric digue_origin_errors_total)"; b0="$(metric digue_busy_pages_total)"
  h0="$(wc -l <"$TMP/hups" 2>/dev/null || echo 0)"
  if ((reloads)); then start_reloader; fi
  wrk_run "$name: wrk" "$f" $((DURATION_S + 30)) -t1 -c"$CONNS" -d"$DURATION" --latency "$url"
  if ((reloads)); then stop_pid "$RELOADER_PID"; sleep 0.5; fi
  kill -0 "$DIGUE_PID" 2>/dev/null || die "digue died during $name (log: $TMP/digue.log)"
  a1="$(metric 'digue_config_reloads_total{outcome="applied"}')"; r1="$(metric 'digue_config_reloads_total{outcome="refused"}')"
  c1="$(metric digue_connections_total)"; e1="$(metric digue_origin_errors_total)"; b1="$(metric digue_busy_pages_total)"
  h1="$(wc -l <"$TMP/hups" 2>/dev/null || echo 0)"
  cat "$f" >&2
  rps="$(wrk_rps "$f")"; p99="$(wrk_p99_ms "$f")"
  reqs="$(wrk_requests "$f")"; non2xx="$(wrk_non2xx "$f")"; sock="$(wrk_sockerr "$f")"
  # digue_connections_total counts the public listener only (admin scrapes are not in it)
  ROWS+=("$(printf '| %s | %s | %.0f | %.2f | %s | %s | %s | %s | %s | %s | %s | %s |' \
    "$name" "$reqs" "$rps" "$p99" "$non2xx" "$sock" "$((h1 - h0))" "$((a1 - a0))" "$((r1 - r0))" \
    "$((c1 - c0))" "$((e1 - e0)) / $((b1 - b0))" "$la")")
  log "$name: $reqs requests, non-2xx $non2xx, socket errors: $sock, SIGHUPs $((h1 - h0)), reloads applied $((a1 - a0)) refused $((r1 - r0)), new connections $((c1 - c0))"
}

: >"$TMP/hups"
: >"$TMP/limits"

# The cost of a reload itself, without load: digue's CPU time over 10 s of SIGHUPs.
wait_idle
i0="$(metric 'digue_config_reloads_total{outcome="applied"}')"; k0="$(proc_ticks "$DIGUE_PID")"
start_reloader; sleep 10; stop_pid "$RELOADER_PID"; sleep 0.5
i1="$(metric 'digue_config_reloads_total{outcome="applied"}')"; k1="$(proc_ticks "$DIGUE_PID")"
IDLE_RELOADS=$((i1 - i0))
((IDLE_RELOADS > 0)) || die "no reload applied in 10 s of SIGHUPs (log: $TMP/digue.log)"
MS_PER_RELOAD="$(awk -v k="$((k1 - k0))" -v hz="$HZ" -v n="$IDLE_RELOADS" 'BEGIN { printf "%.2f", k / hz * 1000 / n }')"
log "idle: $IDLE_RELOADS reloads applied in 10 s; digue CPU per reload: $MS_PER_RELOAD ms"

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
  echo "- new connections = increase of digue_connections_total (public listener) during the measured run: wrk's $CONNS connections plus its one address probe, so $((CONNS + 1)) means no connection was dropped or reopened (the runs without reload give the reference)"
  echo "- the reload itself, without load: $IDLE_RELOADS reloads in 10 s, **$MS_PER_RELOAD ms of digue CPU per reload** (utime+stime / reloads)"
  if [[ -s "$TMP/log-errors.txt" ]]; then echo "- digue log (warnings/errors): $(tr '\n' ' ' <"$TMP/log-errors.txt")"; else echo "- digue log: no warning or error"; fi
)"
echo
echo "$TABLE"
mkdir -p "$(dirname "$OUT")"
{
  echo "# digue reload under load, $(date '+%F %T %Z')"
  echo
  echo "- machine: $(machine_info)"
  echo "- $(digue_version), $(wrk_version)"
  echo "- digue worker_threads = 1 and the nginx origin on CPU $SERVER_CPU; wrk -t1 -c$CONNS -d$DURATION --latency (after a $WARMUP warm-up) and the SIGHUP loop on CPU $CLIENT_CPU"
  echo "- configs alternate origin_concurrency 64/48 and new_users_per_minute 600/300; the file is replaced by rename, then SIGHUP"
  echo
  echo "$TABLE"
  raw_sections '##' "$TMP"/wrk-*.txt
} >"$OUT"
log "results written to $OUT"
exit 0
}
