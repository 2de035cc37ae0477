#!/usr/bin/env bash
# The autopilot against static settings, on a portal whose capacity moves
# during the surge (issue 12): the fragile demo portal (examples/portal.rs)
# with a capacity schedule, behind digue three ways, under the same
# `digue surge` scenario:
#   autopilot  ceilings 10x too high (origin_concurrency, new_users_per_minute),
#              [site.autopilot] on: it must find the capacity and follow it;
#   static     origin_concurrency = the first capacity, the rate it holds;
#   static3x   both three times too high.
# Reports pupils admitted, the portal's failures, timeouts, time to get in,
# the ETA's error, and the share of the portal's capacity used — over the run
# and once converged (leaving out the 30 s after each change of capacity and
# the seconds when no pupil was waiting to get in), per capacity phase too.
#
# Usage: benches/autopilot.sh
# Knobs (environment):
#   SIDES="autopilot static static3x"
#   SCHEDULE="0s:24,50s:12,100s:36"  the portal's capacity over time
#   PUPILS=6000 PEAK_RATE=60 RAMP=10s DURATION=150s SEED=2020   the scenario
#   CAPACITY=24 RATE_PER_MIN=3000     the static side: the first capacity and the
#                                     rate it takes (benches/surge.sh's pairing)
#   PORTAL_LATENCY_MS=20 PROXY_CPU=0 CLIENT_CPU=1
#   DIGUE_BIN PORTAL_BIN BUILD=1 QUIET_WAIT=1200 READY_TIMEOUT=20 KEEP_TMP=0
#   DIGUE_LOG=warn (info logs every autopilot decision in each side's proxy.log)
#   OUT (default benches/results-extra-autopilot-YYYY-MM-DD.md)
set -euo pipefail
{

LOG_TAG=autopilot
. "$(dirname "$0")/lib.sh"

SIDES="${SIDES:-autopilot static static3x}"
SCHEDULE="${SCHEDULE:-0s:24,50s:12,100s:36}"
PUPILS="${PUPILS:-6000}"
PEAK_RATE="${PEAK_RATE:-60}"
RAMP="${RAMP:-10s}"
DURATION="${DURATION:-150s}"
SEED="${SEED:-2020}"
CAPACITY="${CAPACITY:-24}"
RATE_PER_MIN="${RATE_PER_MIN:-3000}"
PORTAL_LATENCY_MS="${PORTAL_LATENCY_MS:-20}"
PROXY_CPU="${PROXY_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
DIGUE_BIN="${DIGUE_BIN:-target/release/digue}"
PORTAL_BIN="${PORTAL_BIN:-target/release/examples/portal}"
BUILD="${BUILD:-1}"
QUIET_WAIT="${QUIET_WAIT:-1200}"
READY_TIMEOUT="${READY_TIMEOUT:-20}"
KEEP_TMP="${KEEP_TMP:-0}"
OUT="${OUT:-benches/results-extra-autopilot-$(date +%F).md}"

require_tools "apt-get install curl python3 util-linux procps" curl python3 taskset pgrep
[[ "$DURATION" =~ ^([0-9]+)s$ ]] || die "DURATION is seconds, like 150s"
DURATION_S="${BASH_REMATCH[1]}"
rebuild_if_stale "$DIGUE_BIN" target/release/digue "--bin digue" src Cargo.toml
rebuild_if_stale "$PORTAL_BIN" target/release/examples/portal "--example portal" src examples/portal.rs

bench_tmp autopilot
declare -A ROW

# side_settings SIDE : "ORIGIN_CONCURRENCY NEW_USERS_PER_MINUTE AUTOPILOT(0|1)"
side_settings() {
  case "$1" in
    autopilot) echo "$((CAPACITY * 10)) $((RATE_PER_MIN * 10)) 1" ;;
    static) echo "$CAPACITY $RATE_PER_MIN 0" ;;
    static3x) echo "$((CAPACITY * 3)) $((RATE_PER_MIN * 3)) 0" ;;
    *) die "unknown side $1 (autopilot, static, static3x)" ;;
  esac
}

# write_config FILE SIDE PORTAL_PORT PROXY_PORT ADMIN_PORT
write_config() {
  local concurrency rate pilot
  read -r concurrency rate pilot <<<"$(side_settings "$2")"
  {
    printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\n' "$4" "$5"
    printf 'worker_threads = 1\nmax_connections = 20000\n\n[cache]\nmax_size = "64MiB"\n\n'
    printf '[[site]]\nname = "portal"\nhosts = ["*"]\norigin = "http://127.0.0.1:%s"\n' "$3"
    printf 'origin_concurrency = %s\norigin_queue_timeout = "2s"\norigin_share_per_network = 100\nsession_cookies = ["JSESSIONID"]\n\n' "$concurrency"
    printf '[[site.cache.rule]]\nprefix = "/static/"\nttl = "1h"\nshared = true\n\n'
    printf '[[site.cache.rule]]\nprefix = "/news"\nttl = "1m"\n\n'
    printf '[[site.cache.rule]]\nprefix = "/api/"\nbypass = true\n\n'
    printf '[[site.cache.rule]]\nprefix = "/pronote/appelfonction/"\nbypass = true\n\n'
    printf '[site.admission]\npaths = ["/pronote/eleve.html"]\nnew_users_per_minute = %s\n' "$rate"
    printf 'session_duration = "20m"\ntickets_per_network_per_minute = 100000000\n'
    if [[ "$pilot" == 1 ]]; then
      printf '\n[site.autopilot]\nenabled = true\nmin_new_users_per_minute = %s\nmax_new_users_per_minute = %s\n' \
        "$((RATE_PER_MIN / 20))" "$rate"
    fi
  } >"$1"
}

run_side() {
  local side="$1" d="$TMP/$1" portal_port proxy_port admin_port
  mkdir -p "$d"
  pick_ports portal_port proxy_port admin_port
  wait_idle
  taskset -c "$CLIENT_CPU" "$PORTAL_BIN" "127.0.0.1:$portal_port" "$SCHEDULE" "$PORTAL_LATENCY_MS" \
    >"$d/portal.jsonl" 2>"$d/portal.err" &
  local portal_pid=$!; PIDS+=("$portal_pid")
  wait_http "http://127.0.0.1:$portal_port/healthz" "$portal_pid" portal "$d/portal.err"
  write_config "$d/digue.toml" "$side" "$portal_port" "$proxy_port" "$admin_port"
  "$DIGUE_BIN" check --config "$d/digue.toml" >&2 || die "digue config invalid ($d/digue.toml)"
  DIGUE_SECRET="autopilot-bench-secret-0123456789ab" RUST_LOG="${DIGUE_LOG:-warn}" \
    start_digue digue "$d/digue.toml" "$d/proxy.log" "$admin_port" "$PROXY_CPU"
  local proxy_pid="$DIGUE_PID"
  log "$side: $PUPILS pupils, ramp to $PEAK_RATE/s over $RAMP, $DURATION, portal capacity $SCHEDULE"
  taskset -c "$CLIENT_CPU" timeout $((DURATION_S + 90)) "$DIGUE_BIN" surge \
    --target "http://127.0.0.1:$proxy_port" --admin "http://127.0.0.1:$admin_port" \
    --portal-stats "http://127.0.0.1:$portal_port" \
    --pupils "$PUPILS" --peak-rate "$PEAK_RATE" --ramp "$RAMP" --duration "$DURATION" --seed "$SEED" \
    --quiet --report "$d/report.json" >"$d/surge.txt" 2>"$d/surge.err" \
    || { cat "$d/surge.err" >&2; die "$side: digue surge failed"; }
  kill -0 "$proxy_pid" 2>/dev/null || die "$side: digue died during the run (log: $d/proxy.log)"
  stop_pid "$proxy_pid"
  stop_pid "$portal_pid"
  ROW[$side]="$(python3 - "$d" "$SCHEDULE" <<'PY'
import json, sys
d, schedule = sys.argv[1], sys.argv[2]
def secs(t):
    t = t.strip()
    if t.endswith("ms"): return float(t[:-2]) / 1000
    if t.endswith("m"): return float(t[:-1]) * 60
    return float(t.rstrip("s"))
changes = [secs(e.split(":")[0]) for e in schedule.split(",")]
r = json.load(open(f"{d}/report.json"))
p, resp, portal = r["pupils"], r["responses"], r.get("portal") or {}
# "Once converged": leaving out the 30 s after each change of capacity, and
# the seconds when no pupil was waiting to get in (a portal nobody asks for
# more cannot be used more: the old reading counted the end of the run,
# everyone in, as capacity the autopilot left unused). Also per phase.
phases = {}
for t in r["timeline"]:
    share = t.get("portal_capacity_used_share")
    if share is None or t["pupils_waiting"] == 0:
        continue
    started = max((c for c in changes if c <= t["second"]), default=0)
    if t["second"] >= started + 30:
        phases.setdefault(started, []).append(share)
settled = [s for shares in phases.values() for s in shares]
tg = r.get("time_to_get_in") or {}
eta = r.get("eta") or {}
print(json.dumps({
  "admitted": p["admitted"], "people": p["total"] - p["bots"],
  "portal_errors": portal.get("overload_errors"), "timeouts": resp["timeout"]["count"],
  "errors": resp["error"]["count"], "busy": resp["busy"]["count"],
  "tti_p50": tg.get("p50"), "tti_p90": tg.get("p90"),
  "eta_err": eta.get("median_abs_error_seconds"),
  "share": portal.get("capacity_used_share"),
  "settled_share": sum(settled) / len(settled) if settled else None,
  "phase_shares": ["{:.0f}s: {:.0%}".format(c, sum(v) / len(v)) for c, v in sorted(phases.items())],
}))
PY
)"
  log "$side: ${ROW[$side]}"
}

for side in $SIDES; do run_side "$side"; done

for s in $SIDES; do printf '%s\t%s\n' "$s" "${ROW[$s]}"; done >"$TMP/rows.tsv"
TABLE="$(python3 - "$TMP/rows.tsv" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    side, js = line.rstrip("\n").split("\t", 1)
    rows[side] = json.loads(js)
label = {"autopilot": "autopilot (ceilings 10x)", "static": "static, first capacity", "static3x": "static, 3x"}
f = lambda v, fmt="{}": "-" if v is None else fmt.format(v)
cols = [
  ("pupils admitted", lambda r: "{} / {}".format(r["admitted"], r["people"])),
  ("portal failures (late 503s, dropped)", lambda r: f(r["portal_errors"])),
  ("timeouts seen by pupils", lambda r: r["timeouts"]),
  ("errors seen by pupils", lambda r: r["errors"]),
  ("busy pages", lambda r: r["busy"]),
  ("time to get in p50 / p90 (s)", lambda r: "{} / {}".format(f(r["tti_p50"], "{:.1f}"), f(r["tti_p90"], "{:.1f}"))),
  ("ETA median error (s)", lambda r: f(r["eta_err"], "{:.1f}")),
  ("portal capacity used, whole run", lambda r: f(r["share"], "{:.0%}")),
  ("portal capacity used, once converged (while pupils waited)", lambda r: f(r["settled_share"], "{:.0%}")),
  ("the same, per capacity phase (from)", lambda r: ", ".join(r["phase_shares"]) or "-"),
]
names = list(rows)
print("| | " + " | ".join(label.get(n, n) for n in names) + " |")
print("|---|" + "---:|" * len(names))
for title, fn in cols:
    print("| {} | ".format(title) + " | ".join(str(fn(rows[n])) for n in names) + " |")
PY
)"
echo
echo "$TABLE"
{
  echo "# digue autopilot benchmark, $(date '+%F %T %Z')"
  echo
  echo "- machine: $(machine_info)"
  echo "- $(digue_version)"
  echo "- portal capacity over time: $SCHEDULE; idle latency ${PORTAL_LATENCY_MS} ms"
  echo "- scenario: digue surge --pupils $PUPILS --peak-rate $PEAK_RATE --ramp $RAMP --duration $DURATION --seed $SEED"
  echo "- static: origin_concurrency $CAPACITY, $RATE_PER_MIN new users/min; static3x: three times both;"
  echo "  autopilot: ceilings ten times both, rate bounds $((RATE_PER_MIN / 20))-$((RATE_PER_MIN * 10))/min"
  echo
  echo "$TABLE"
  for s in $SIDES; do
    echo; echo "## $s: digue surge output"; echo; echo '```'; cat "$TMP/$s/surge.txt"; echo '```'
  done
} >"$OUT"
log "results written to $OUT"
exit 0
}
