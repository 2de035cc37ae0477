#!/usr/bin/env bash
# Cache-miss throughput to an HTTPS origin: nginx (proxy_pass https, keepalive
# upstream, proxy_ssl_verify on) vs digue (origin = "https://…",
# origin_ca_file), and the cost of TLS toward the origin: each proxy also in
# front of the same origin over plain HTTP. The origin (nginx) answers /obj
# with Cache-Control: no-store, so every request goes through to it.
# Pinned as in run.sh: the proxy under test (one worker) and the origin on CPU 0,
# wrk on CPU 1. Rounds interleave the four servers; medians are reported.
#
# Usage: benches/tls_origin.sh
# Knobs (environment): CONNS=64 DURATION=10s WARMUP=2s RUNS=3 OBJ_SIZE=2048
#   SERVER_CPU=0 CLIENT_CPU=1 DIGUE_BIN BUILD=1 QUIET_WAIT=1200 READY_TIMEOUT=20
#   KEEP_TMP=0 OUT (default benches/results-extra-tls-origin-YYYY-MM-DD.md)
set -euo pipefail
{

LOG_TAG=tls-origin
. "$(dirname "$0")/lib.sh"

CONNS="${CONNS:-64}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
RUNS="${RUNS:-3}"
OBJ_SIZE="${OBJ_SIZE:-2048}"
SERVER_CPU="${SERVER_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
DIGUE_BIN="${DIGUE_BIN:-target/release/digue}"
BUILD="${BUILD:-1}"
QUIET_WAIT="${QUIET_WAIT:-1200}"
READY_TIMEOUT="${READY_TIMEOUT:-20}"
KEEP_TMP="${KEEP_TMP:-0}"
OUT="${OUT:-benches/results-extra-tls-origin-$(date +%F).md}"

require_tools "apt-get install curl python3 util-linux procps wrk nginx-light openssl" \
  curl python3 taskset pgrep wrk nginx openssl
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"
rebuild_if_stale "$DIGUE_BIN" target/release/digue "--bin digue" src

bench_tmp tls-origin
pick_ports ORIGIN_PORT ORIGIN_TLS_PORT NGINX_TLS_PORT NGINX_PLAIN_PORT \
  DIGUE_TLS_PORT DIGUE_TLS_ADMIN DIGUE_PLAIN_PORT DIGUE_PLAIN_ADMIN

# ---------------------------------------------------------------- a CA and the origin's certificate
tls="$TMP/tls"; mkdir -p "$tls"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$tls/ca.key" -out "$tls/ca.pem" -days 2 \
  -subj "/CN=digue bench CA" 2>/dev/null
openssl req "${ec[@]}" -keyout "$tls/origin.key" -out "$tls/origin.csr" \
  -subj "/CN=origin.bench" 2>/dev/null
openssl x509 -req -in "$tls/origin.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
  -CAcreateserial -days 2 -out "$tls/origin.pem" \
  -extfile <(printf 'subjectAltName=DNS:origin.bench\n') 2>/dev/null
chmod -R a+rX "$tls"

# ---------------------------------------------------------------- the origin, plain and TLS
mkdir -p "$TMP/www"
head -c "$OBJ_SIZE" /dev/urandom | base64 -w 0 | head -c "$OBJ_SIZE" >"$TMP/www/obj"
chmod -R a+rX "$TMP/www"
start_nginx "$TMP/origin" origin-tls.conf "$SERVER_CPU" "$TMP/origin/logs/stdout.log" \
  PORT="$ORIGIN_PORT" TLS_PORT="$ORIGIN_TLS_PORT" WWW="$TMP/www" \
  CERT="$tls/origin.pem" KEY="$tls/origin.key"
wait_http "http://127.0.0.1:$ORIGIN_PORT/obj" "$NGINX_PID" origin "$TMP/origin/logs/error.log"

# ---------------------------------------------------------------- the four proxies
declare -A URL RUNS_RPS RUNS_P99
proxy_nginx() {  # proxy_nginx NAME PORT SCHEME UPSTREAM_PORT
  start_nginx "$TMP/$1" proxy_pass.conf "$SERVER_CPU" "$TMP/$1/logs/stdout.log" \
    PORT="$2" SCHEME="$3" UPSTREAM_PORT="$4" CA="$tls/ca.pem"
  wait_http "http://127.0.0.1:$2/obj" "$NGINX_PID" "$1" "$TMP/$1/logs/error.log"
  URL[$1]="http://127.0.0.1:$2/obj"
}
proxy_digue() {  # proxy_digue NAME PORT ADMIN ORIGIN_LINES
  cat >"$TMP/$1.toml" <<TOML
[server]
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
worker_threads = 1        # bench fairness: nginx gets one worker

[[site]]
name = "bench"
hosts = ["*"]
$4
origin_concurrency = 256
origin_share_per_network = 100
TOML
  start_digue "$1" "$TMP/$1.toml" "$TMP/$1.log" "$3" "$SERVER_CPU"
  URL[$1]="http://127.0.0.1:$2/obj"
}
proxy_nginx nginx-https "$NGINX_TLS_PORT" https "$ORIGIN_TLS_PORT"
proxy_nginx nginx-http "$NGINX_PLAIN_PORT" http "$ORIGIN_PORT"
proxy_digue digue-https "$DIGUE_TLS_PORT" "$DIGUE_TLS_ADMIN" \
  "origin = \"https://127.0.0.1:$ORIGIN_TLS_PORT\"
origin_tls_name = \"origin.bench\"
origin_ca_file = \"$tls/ca.pem\""
proxy_digue digue-http "$DIGUE_PLAIN_PORT" "$DIGUE_PLAIN_ADMIN" \
  "origin = \"http://127.0.0.1:$ORIGIN_PORT\""
SERVERS=(nginx-https digue-https nginx-http digue-http)
for s in "${SERVERS[@]}"; do
  got="$(curl -sS --max-time 5 -o /dev/null -w '%{http_code} %{size_download}' "${URL[$s]}")"
  [[ "$got" == "200 $OBJ_SIZE" ]] || die "$s: expected '200 $OBJ_SIZE', got '$got'"
done
log "origin and the four proxies answer"

# ---------------------------------------------------------------- measure
wait_idle
for round in $(seq 1 "$RUNS"); do
  for s in "${SERVERS[@]}"; do
    log "$s (round $round/$RUNS): warm-up $WARMUP, then $DURATION"
    wrk_run "$s warm-up" "$TMP/warm-$s-$round.txt" 60 -t1 -c"$CONNS" -d"$WARMUP" "${URL[$s]}"
    wrk_run "$s" "$TMP/wrk-$s-$round.txt" 120 -t1 -c"$CONNS" -d"$DURATION" --latency "${URL[$s]}"
    [[ "$(wrk_non2xx "$TMP/wrk-$s-$round.txt")" == 0 && "$(wrk_sockerr "$TMP/wrk-$s-$round.txt")" == none ]] \
      || log "WARNING: $s: wrk saw errors (round $round)"
    RUNS_RPS[$s]+="$(wrk_rps "$TMP/wrk-$s-$round.txt") "
    RUNS_P99[$s]+="$(wrk_p99_ms "$TMP/wrk-$s-$round.txt") "
  done
done

# ---------------------------------------------------------------- report
declare -A RPS P99
for s in "${SERVERS[@]}"; do
  RPS[$s]="$(median <<<"${RUNS_RPS[$s]}")"
  P99[$s]="$(median <<<"${RUNS_P99[$s]}")"
done
{
  echo "# Cache-miss throughput to an HTTPS origin — $(date +%F)"
  echo
  echo "- machine: $(machine_info); load before: $(loadavg)"
  echo "- digue: $(digue_version); nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //'); $(wrk_version)"
  echo "- wrk -t1 -c$CONNS, $DURATION per run after $WARMUP warm-up, $RUNS interleaved rounds, medians;"
  echo "  proxy (1 worker) and origin on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU; /obj is $OBJ_SIZE bytes, no-store"
  echo
  echo "| proxy | origin | req/s (median) | p99 ms | rounds req/s |"
  echo "|---|---|---|---|---|"
  for s in "${SERVERS[@]}"; do
    echo "| ${s%%-*} | ${s#*-} | ${RPS[$s]} | ${P99[$s]} | ${RUNS_RPS[$s]}|"
  done
  echo
  echo "- digue / nginx, HTTPS origin: **$(ratio "${RPS[digue-https]}" "${RPS[nginx-https]}")×**"
  echo "- digue / nginx, HTTP origin: $(ratio "${RPS[digue-http]}" "${RPS[nginx-http]}")×"
  echo "- cost of TLS toward the origin (HTTPS / HTTP throughput): digue $(ratio "${RPS[digue-https]}" "${RPS[digue-http]}"), nginx $(ratio "${RPS[nginx-https]}" "${RPS[nginx-http]}")"
} | tee "$OUT"
log "results in $OUT"

exit 0
}
