#!/usr/bin/env bash
# The cost of a waiting pupil, on digue alone:
#  (a) queued-poll throughput and p99: wrk polling the gated URL with a valid
#      ticket that stays queued (JSON status), beside a cache hit measured the
#      same way in the same run, ROUNDS interleaved rounds, medians (and
#      run.sh's latest cache-hit figure, if a results file is around);
#  (b) memory per queued visitor: RSS before/after issuing 100,000 tickets,
#      with a control run of 100,000 cache hits first;
#  (c) CPU per status poll: digue's utime+stime during the poll run ÷ polls.
# Pinned as in run.sh: digue (worker_threads = 1) and the origin on CPU 0,
# wrk -t1 -c64 on CPU 1.
#
# Usage: benches/queue.sh
# Knobs (environment): CONNS=64 ROUNDS=3 DURATION=10s WARMUP=2s TICKETS=100000
#   SERVER_CPU=0 CLIENT_CPU=1 DIGUE_BIN BUILD=1 QUIET_WAIT=1200 READY_TIMEOUT=20
#   KEEP_TMP=0 OUT (default benches/results-extra-queue-YYYY-MM-DD.md)
set -euo pipefail
{

LOG_TAG=queue
. "$(dirname "$0")/lib.sh"

CONNS="${CONNS:-64}"
ROUNDS="${ROUNDS:-3}"
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

require_tools "apt-get install curl python3 util-linux procps wrk nginx-light" curl python3 taskset pgrep wrk nginx
DURATION_S="${DURATION%s}"; WARMUP_S="${WARMUP%s}"
[[ "$DURATION_S" =~ ^[0-9]+$ && "$WARMUP_S" =~ ^[0-9]+$ ]] || die "DURATION and WARMUP are seconds, like 10s"

rebuild_if_stale "$DIGUE_BIN" target/release/digue "--bin digue" src

bench_tmp queue
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$DIGUE_PID/status"; }

pick_ports ORIGIN_PORT DIGUE_PORT ADMIN_PORT

# ---------------------------------------------------------------- origin (run.sh's nginx origin, 2 KiB /obj)
start_origin 2048

# ---------------------------------------------------------------- digue
{ bench_toml "$DIGUE_PORT" "$ADMIN_PORT" 64; cat <<EOF

[site.admission]
paths = ["$GATED"]
# one a minute: a ticket taken behind a few others stays queued for the whole run
new_users_per_minute = 1
burst = 1
# every request comes from 127.0.0.1
tickets_per_network_per_minute = 100000000
EOF
} >"$TMP/digue.toml"
DIGUE_SECRET="queue-bench-secret-0123456789abcdef" RUST_LOG=warn \
  start_digue digue "$TMP/digue.toml" "$TMP/digue.log" "$ADMIN_PORT" "$SERVER_CPU"

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

declare -A RPS P99 REQS NON2XX CPU_US LOAD SOCKERR
run_wrk() {  # run_wrk NAME URL [wrk args...]
  local name="$1" url="$2" f="$TMP/wrk-$1.txt" c0 c1; shift 2
  wait_idle
  LOAD[$name]="$(loadavg)"
  wrk_run "$name: wrk warm-up" "$TMP/warmup-$name.txt" $((WARMUP_S + 30)) -t1 -c"$CONNS" -d"$WARMUP" "$@" "$url"
  c0="$(proc_ticks "$DIGUE_PID")"
  wrk_run "$name: wrk" "$f" $((DURATION_S + 30)) -t1 -c"$CONNS" -d"$DURATION" --latency "$@" "$url"
  c1="$(proc_ticks "$DIGUE_PID")"
  cat "$f" >&2
  RPS[$name]="$(wrk_rps "$f")"
  P99[$name]="$(wrk_p99_ms "$f")"
  REQS[$name]="$(wrk_requests "$f")"
  NON2XX[$name]="$(wrk_non2xx "$f")"
  SOCKERR[$name]="$(wrk_sockerr "$f")"
  CPU_US[$name]="$(awk -v d="$((c1 - c0))" -v hz="$HZ" -v n="${REQS[$name]}" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')"
  log "$name: ${RPS[$name]} req/s, p99 ${P99[$name]} ms, ${REQS[$name]} requests, non-2xx ${NON2XX[$name]}, digue CPU ${CPU_US[$name]} µs/request, load ${LOAD[$name]}"
}

# ROUNDS interleaved rounds (hit, poll, hit, poll, ...); the table shows medians.
POLLS_TOTAL=0; POLLS_NON2XX=0; POLL_SOCKERR=""
for r in $(seq 1 "$ROUNDS"); do
  run_wrk "hit$r" "$HIT_URL"
  [[ "${NON2XX[hit$r]}" == 0 ]] || die "cache-hit run had ${NON2XX[hit$r]} non-2xx answers"
  run_wrk "poll$r" "$GATED_URL" -s "$TMP/poll.lua"
  # every poll must have been a queued 503
  [[ "${NON2XX[poll$r]}" == "${REQS[poll$r]}" ]] || log "WARNING: ${NON2XX[poll$r]} of ${REQS[poll$r]} polls were non-2xx (all should be queued 503s)"
  POLLS_TOTAL=$((POLLS_TOTAL + REQS[poll$r])); POLLS_NON2XX=$((POLLS_NON2XX + NON2XX[poll$r]))
  [[ "${SOCKERR[poll$r]}" == none ]] || POLL_SOCKERR+="round $r: Socket errors: ${SOCKERR[poll$r]}; "
done
for k in hit poll; do
  for m in RPS P99 CPU_US; do
    declare -n arr="$m"
    vals=""; for r in $(seq 1 "$ROUNDS"); do vals+="${arr[$k$r]} "; done
    arr[$k]="$(median <<<"$vals")"; arr[${k}_all]="$vals"
    unset -n arr
  done
  LOAD[$k]="${LOAD[${k}1]}"
done
S1="$(status_json)"
[[ "$S1" == *'"state":"queued"'* ]] || die "the ticket is no longer queued after the poll run: $S1"
POS1="$(head -n1 <<<"$S1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["position"])')"

# ---------------------------------------------------------------- memory per queued visitor
# run_counted NAME URL METRIC : wrk until digue has counted $TICKETS more of
# METRIC (each wrk thread also stops itself after $TICKETS responses)
run_counted() {
  local name="$1" url="$2" m="$3" base now deadline=$((SECONDS + 300)) wpid
  base="$(metric "$m")"
  N="$TICKETS" taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d600s -s "$TMP/count.lua" "$url" >"$TMP/wrk-$name.txt" 2>&1 &
  wpid=$!; PIDS+=("$wpid")
  while kill -0 "$wpid" 2>/dev/null; do
    now="$(metric "$m")"
    ((now - base >= TICKETS)) && break
    ((SECONDS < deadline)) || { kill -INT "$wpid"; die "$name: fewer than $TICKETS requests in 300 s"; }
    sleep 0.2
  done
  sleep 0.5
  kill -INT "$wpid" 2>/dev/null || true   # wrk prints its report on SIGINT
  wait "$wpid" 2>/dev/null || true
}
wait_idle
LOAD[mem]="$(loadavg)"
sleep 1
RSS0="$(rss_kib)"
run_counted control "$HIT_URL" 'digue_requests_total{outcome="hit"'
sleep 1
RSS1="$(rss_kib)"
T0="$(metric digue_tickets_issued_total)"
W0="$(metric digue_line_waiting)"
run_counted tickets "$GATED_URL" digue_tickets_issued_total
sleep 1
RSS2="$(rss_kib)"
T1="$(metric digue_tickets_issued_total)"
W1="$(metric digue_line_waiting)"
ISSUED=$((T1 - T0))
((ISSUED >= TICKETS * 9 / 10)) || die "only $ISSUED tickets issued (wanted $TICKETS; see $TMP/wrk-tickets.txt)"
PER_TICKET="$(awk -v a="$RSS1" -v b="$RSS2" -v n="$ISSUED" 'BEGIN { printf "%.2f", (b - a) * 1024 / n }')"
CONTROL_REQS="$(wrk_requests "$TMP/wrk-control.txt")"
log "RSS: start ${RSS0} KiB, after $CONTROL_REQS cache hits ${RSS1} KiB, after $ISSUED tickets ${RSS2} KiB -> ${PER_TICKET} B per queued visitor; line waiting $W0 -> $W1"
kill -0 "$DIGUE_PID" 2>/dev/null || die "digue died during the benchmark (log: $TMP/digue.log)"

# ---------------------------------------------------------------- run.sh's latest cache-hit figure
RUNSH=""
latest="$(ls -t benches/results-[0-9]*.md 2>/dev/null | head -n1 || true)"
if [[ -n "$latest" ]]; then
  row="$(grep -E '^\| digue' "$latest" | head -n1 || true)"
  [[ -n "$row" ]] && RUNSH="$latest ($(date -r "$latest" '+%F %H:%M')): $row"
fi

TABLE="$(
  echo "| digue, same process, same run | req/s | p99 (ms) | digue CPU per request (µs) | load avg at first round |"
  echo "|---|---:|---:|---:|---|"
  printf '| cache hit (2 KiB /obj) | %.0f | %.2f | %s | %s |\n' "${RPS[hit]}" "${P99[hit]}" "${CPU_US[hit]}" "${LOAD[hit]}"
  printf '| queued poll (JSON status, valid ticket) | %.0f | %.2f | %s | %s |\n' "${RPS[poll]}" "${P99[poll]}" "${CPU_US[poll]}" "${LOAD[poll]}"
  printf '| poll / hit | %s | %s | %s | |\n' "$(ratio "${RPS[poll]}" "${RPS[hit]}")" "$(ratio "${P99[poll]}" "${P99[hit]}")" "$(ratio "${CPU_US[poll]}" "${CPU_US[hit]}")"
  echo
  echo "- medians of $ROUNDS interleaved rounds; rounds: hit req/s ${RPS[hit_all]}(p99 ms ${P99[hit_all]}, µs ${CPU_US[hit_all]}); poll req/s ${RPS[poll_all]}(p99 ms ${P99[poll_all]}, µs ${CPU_US[poll_all]})"
  echo "- polls: $POLLS_TOTAL in all, every one answered 503 queued ($POLLS_NON2XX non-2xx); socket errors: ${POLL_SOCKERR:-none}; the ticket stood at position $POS0 before, $POS1 after"
  echo "- memory: RSS ${RSS0} KiB at start, ${RSS1} KiB after $CONTROL_REQS cache hits (control), ${RSS2} KiB after $ISSUED new tickets (line: $W0 -> $W1 waiting): **${PER_TICKET} bytes per queued visitor** (load avg ${LOAD[mem]})"
  [[ -z "$RUNSH" ]] || echo "- run.sh's latest result file, for comparison: $RUNSH"
)"
echo
echo "$TABLE"
mkdir -p "$(dirname "$OUT")"
{
  echo "# digue queued-visitor cost, $(date '+%F %T %Z')"
  echo
  echo "- machine: $(machine_info)"
  echo "- $(digue_version), $(wrk_version)"
  echo "- digue worker_threads = 1 on CPU $SERVER_CPU; wrk -t1 -c$CONNS -d$DURATION --latency on CPU $CLIENT_CPU after a $WARMUP warm-up"
  echo
  echo "$TABLE"
  raw_sections '##' "$TMP"/wrk-*.txt
} >"$OUT"
log "results written to $OUT"
exit 0
}
