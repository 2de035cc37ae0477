#!/usr/bin/env bash
# Memory per cached key (issue 17): digue's resident memory (VmRSS) after
# COUNT distinct small pages, cacheable (stored) or `no-store` (each leaves a
# hit-for-miss mark), with `cache.max_size = MAX_SIZE`. The store and the
# marks must stay near their byte budgets (max_size, 16 MiB of marks): an
# entry's real cost is what the weigher must count.
#
# Usage: benches/cache_memory.sh
# Knobs: COUNTS="3000 6000 50000" MAX_SIZE=8MiB DUR=15s DIGUE_BIN BUILD=1
#        READY_TIMEOUT=20 QUIET_WAIT=1200 KEEP_TMP=0
set -euo pipefail
{

LOG_TAG=cache-memory
. "$(dirname "$0")/lib.sh"

COUNTS="${COUNTS:-3000 6000 50000}"
MAX_SIZE="${MAX_SIZE:-8MiB}"
DUR="${DUR:-15s}"
DIGUE_BIN="${DIGUE_BIN:-target/release/digue}"
BUILD="${BUILD:-1}"
READY_TIMEOUT="${READY_TIMEOUT:-20}"
QUIET_WAIT="${QUIET_WAIT:-1200}"
KEEP_TMP="${KEEP_TMP:-0}"

require_tools "apt-get install nginx wrk curl python3" nginx wrk curl python3
rebuild_if_stale "$DIGUE_BIN" target/release/digue "--bin digue" src Cargo.toml
bench_tmp cache-memory
wait_idle

pick_ports origin_port proxy_port admin_port
mkdir -p "$TMP/nginx/logs"
cat >"$TMP/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
error_log $TMP/nginx/logs/error.log;
pid $TMP/nginx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$origin_port;
    location /c/ { add_header Cache-Control "max-age=3600" always; return 200 "cacheable page body\n"; }
    location /n/ { add_header Cache-Control "no-store" always; return 200 "per-user page\n"; }
  }
}
CONF
nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" >"$TMP/nginx/logs/stdout.log" 2>&1 &
PIDS+=("$!")

# The nth request asks for page n modulo COUNT, under a run-unique prefix.
cat >"$TMP/pages.lua" <<'LUA'
local prefix, count, n = os.getenv("PREFIX"), tonumber(os.getenv("COUNT")), 0
local tag = tostring(os.time())
request = function()
  n = n % count + 1
  return wrk.format("GET", prefix .. tag .. "/" .. n .. "?q=" .. n)
end
LUA

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$DIGUE_PID/status"; }
ROWS=""
for prefix in /c/ /n/; do
  for count in $COUNTS; do
    printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\nworker_threads = 1\n\n[cache]\nmax_size = "%s"\n\n[[site]]\nname = "portal"\nhosts = ["*"]\norigin = "http://127.0.0.1:%s"\norigin_concurrency = 256\norigin_share_per_network = 100\n' \
      "$proxy_port" "$admin_port" "$MAX_SIZE" "$origin_port" >"$TMP/digue.toml"
    start_digue digue "$TMP/digue.toml" "$TMP/digue.log" "$admin_port"
    before="$(rss_kib)"
    PREFIX="$prefix" COUNT="$count" wrk -t1 -c16 -d"$DUR" -s "$TMP/pages.lua" \
      "http://127.0.0.1:$proxy_port/" >"$TMP/wrk.txt"
    sleep 2
    after="$(rss_kib)"
    entries="$(curl -fsS "http://127.0.0.1:$admin_port/metrics" | awk '/^digue_cache_entries / {print $2}')"
    requests="$(awk '/requests in/ {print $1}' "$TMP/wrk.txt")"
    kind=$([[ "$prefix" == /c/ ]] && echo "cacheable" || echo "no-store (hit-for-miss)")
    row="| $kind | $count | $requests | $entries | $((before / 1024)) | $((after / 1024)) | $(((after - before) / 1024)) |"
    log "$row"
    ROWS+="$row"$'\n'
    stop_pid "$DIGUE_PID"
  done
done

echo
echo "# digue memory per cached key, $(date '+%F %T %Z'); $(machine_info); $(digue_version); max_size $MAX_SIZE"
echo
echo "| pages | distinct | requests | entries stored | RSS before (MiB) | RSS after (MiB) | growth (MiB) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
printf '%s' "$ROWS"
exit 0
}
