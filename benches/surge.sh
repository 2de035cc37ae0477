#!/usr/bin/env bash
# Surge protection, side by side: the fragile demo portal (examples/portal.rs)
# behind digue (waiting room + origin guard) and behind nginx configured as
# well as nginx can be (benches/nginx/surge-nginx.conf), and optionally with
# nothing in front ("bare"), all under the same `digue surge` scenario.
#
# Usage (from anywhere; it cd's to the repo root):
#   benches/surge.sh
#   SIDES="digue nginx" benches/surge.sh        # skip the bare-portal run
#   PUPILS=1500 PEAK_RATE=60 RATE_PER_MIN=1200 benches/surge.sh
#
# Knobs (environment):
#   SIDES="digue nginx bare"   what is measured, in this order
#   PUPILS=3000 PEAK_RATE=120 RAMP=10s DURATION=60s SEED=2020   the scenario (about twice
#                              what the portal can log in: it collapses alone near 55/s)
#   CAPACITY=24                the portal's capacity, = digue origin_concurrency
#                              = nginx upstream max_conns
#   PORTAL_LATENCY_MS=20       the portal's idle latency (a login costs 3x)
#   RATE_PER_MIN=3000          digue new_users_per_minute = nginx limit_req rate (50/s:
#                              the portal then peaks at its capacity, 24 in flight)
#   PROXY_CPU=0 CLIENT_CPU=1   taskset CPUs: proxy under test / portal + simulator
#   DIGUE_BIN, PORTAL_BIN      binaries (default target/release/{digue,examples/portal})
#   BUILD=1                    build them when missing or older than the sources
#   QUIET_WAIT=1200            longest wait (s) for other benchmarks (run.sh, wrk) to end
#   READY_TIMEOUT=20 KEEP_TMP=0
#   OUT                        results file (default benches/results-extra-surge-YYYY-MM-DD.md,
#                              git-ignored)
#   REPORT_DIR                 also keep each side's `digue surge` JSON report and SVG
#                              chart there (surge-SIDE.json, surge-SIDE.svg)
set -euo pipefail
{

LOG_TAG=surge
. "$(dirname "$0")/lib.sh"

SIDES="${SIDES:-digue nginx bare}"
PUPILS="${PUPILS:-3000}"
PEAK_RATE="${PEAK_RATE:-120}"
RAMP="${RAMP:-10s}"
DURATION="${DURATION:-60s}"
SEED="${SEED:-2020}"
CAPACITY="${CAPACITY:-24}"
PORTAL_LATENCY_MS="${PORTAL_LATENCY_MS:-20}"
RATE_PER_MIN="${RATE_PER_MIN:-3000}"
PROXY_CPU="${PROXY_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
DIGUE_BIN="${DIGUE_BIN:-target/release/digue}"
PORTAL_BIN="${PORTAL_BIN:-target/release/examples/portal}"
BUILD="${BUILD:-1}"
QUIET_WAIT="${QUIET_WAIT:-1200}"
READY_TIMEOUT="${READY_TIMEOUT:-20}"
KEEP_TMP="${KEEP_TMP:-0}"
OUT="${OUT:-benches/results-extra-surge-$(date +%F).md}"
REPORT_DIR="${REPORT_DIR:-}"

require_tools "apt-get install curl python3 util-linux procps" curl python3 taskset pgrep
if [[ " $SIDES " == *" nginx "* ]] && ! command -v nginx >/dev/null 2>&1; then
  apt_install "nginx is missing" nginx-light
fi
secs() { local d="$1"; [[ "$d" =~ ^([0-9]+)s?$ ]] && echo "${BASH_REMATCH[1]}" && return; [[ "$d" =~ ^([0-9]+)m$ ]] && echo $((BASH_REMATCH[1] * 60)) && return; die "duration $d: write it as 60s or 2m"; }
DURATION_S="$(secs "$DURATION")"

# ---------------------------------------------------------------- binaries
# (measurements and builds wait for other benchmarks: on this 2-core machine they would overlap)
rebuild_if_stale "$DIGUE_BIN" target/release/digue "--bin digue" src Cargo.toml
rebuild_if_stale "$PORTAL_BIN" target/release/examples/portal "--example portal" src examples/portal.rs

bench_tmp surge

# ---------------------------------------------------------------- one side
BURST=$(( RATE_PER_MIN / 12 )); ((BURST >= 1)) || BURST=1   # 5 s worth, as digue's default
declare -A ROW

run_side() {
  local side="$1" d="$TMP/$1" portal_port proxy_port admin_port target admin_flag=() proxy_pid=""
  mkdir -p "$d"
  pick_ports portal_port proxy_port admin_port

  wait_idle
  # The portal shares the client CPU: it mostly sleeps (its latency is simulated).
  taskset -c "$CLIENT_CPU" "$PORTAL_BIN" "127.0.0.1:$portal_port" "$CAPACITY" "$PORTAL_LATENCY_MS" \
    >"$d/portal.jsonl" 2>"$d/portal.err" &
  local portal_pid=$!; PIDS+=("$portal_pid")
  wait_http "http://127.0.0.1:$portal_port/healthz" "$portal_pid" portal "$d/portal.err"

  case "$side" in
    digue)
      cat >"$d/digue.toml" <<EOF
[server]
listen = "127.0.0.1:$proxy_port"
admin_listen = "127.0.0.1:$admin_port"
worker_threads = 1
max_connections = 20000

[cache]
max_size = "64MiB"

[[site]]
name = "portal"
hosts = ["*"]
origin = "http://127.0.0.1:$portal_port"
origin_concurrency = $CAPACITY
origin_queue_timeout = "2s"
origin_share_per_network = 100   # every pupil is on loopback: one network
origin_timeout = "20s"
origin_connect_timeout = "3s"
session_cookies = ["JSESSIONID"]

[site.cache]
stale_while_revalidate = "30s"
stale_if_error = "1h"

[[site.cache.rule]]
prefix = "/static/"
ttl = "1h"
shared = true

[[site.cache.rule]]
prefix = "/news"
ttl = "1m"

[[site.cache.rule]]
prefix = "/api/"
bypass = true

[[site.cache.rule]]
prefix = "/pronote/appelfonction/"
bypass = true

[site.admission]
paths = ["/pronote/eleve.html"]
new_users_per_minute = $RATE_PER_MIN
session_duration = "20m"
# every simulated pupil comes from 127.0.0.1
tickets_per_network_per_minute = 100000000
EOF
      "$DIGUE_BIN" check --config "$d/digue.toml" >&2 || die "digue config invalid ($d/digue.toml)"
      DIGUE_SECRET="surge-bench-secret-0123456789abcdef" RUST_LOG=warn \
        start_digue digue "$d/digue.toml" "$d/proxy.log" "$admin_port" "$PROXY_CPU"
      proxy_pid="$DIGUE_PID"
      target="http://127.0.0.1:$proxy_port"; admin_flag=(--admin "http://127.0.0.1:$admin_port")
      ;;
    nginx)
      start_nginx "$d" surge-nginx.conf "$PROXY_CPU" "$d/proxy.log" PORT="$proxy_port" \
        ORIGIN_PORT="$portal_port" CAPACITY="$CAPACITY" RATE_PER_MIN="$RATE_PER_MIN" BURST="$BURST"
      proxy_pid="$NGINX_PID"
      wait_http "http://127.0.0.1:$proxy_port/__ready" "$proxy_pid" nginx "$d/logs/error.log"
      target="http://127.0.0.1:$proxy_port"
      ;;
    bare) target="http://127.0.0.1:$portal_port" ;;
    *) die "unknown side $side (digue, nginx, bare)" ;;
  esac

  wait_idle
  local la0 la1 t0 t1
  la0="$(loadavg)"; t0="$(date +%s)"
  log "$side: $PUPILS pupils, ramp to $PEAK_RATE/s over $RAMP, limit $DURATION -> $target (load avg $la0)"
  taskset -c "$CLIENT_CPU" timeout $((DURATION_S + 90)) "$DIGUE_BIN" surge --target "$target" "${admin_flag[@]}" \
    --pupils "$PUPILS" --peak-rate "$PEAK_RATE" --ramp "$RAMP" --duration "$DURATION" --seed "$SEED" \
    --quiet --report "$d/report.json" --chart "$d/chart.svg" >"$d/surge.txt" 2>"$d/surge.err" \
    || { cat "$d/surge.err" >&2; die "$side: digue surge failed (exit $?)"; }
  la1="$(loadavg)"; t1="$(date +%s)"
  [[ "$side" != digue ]] || curl -fsS --max-time 5 "http://127.0.0.1:$admin_port/metrics" >"$d/metrics.txt" || true
  [[ -z "$proxy_pid" ]] || { kill -0 "$proxy_pid" 2>/dev/null || die "$side: the proxy died during the run (log: $d/proxy.log)"; stop_pid "$proxy_pid"; }
  stop_pid "$portal_pid"
  grep -q '"event":"final"' "$d/portal.jsonl" || die "$side: the portal did not print its counters ($d/portal.jsonl)"
  ROW[$side]="$(python3 - "$d" "$la0" "$la1" "$RATE_PER_MIN" <<'EOF'
import json, sys, re, os
d, la0, la1, rate = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
r = json.load(open(f"{d}/report.json"))
portal = [json.loads(l) for l in open(f"{d}/portal.jsonl") if '"final"' in l][-1]
p, resp, s = r["pupils"], r["responses"], r["session"]
tl = r["timeline"]
# admissions/s while a real line stood (>= 20 pupils waiting)
busy = [t["admissions"] for t in tl if t["pupils_waiting"] >= 20]
line_rate = sum(busy) / len(busy) if busy else 0.0
tg = r.get("time_to_get_in") or {}
m = {}
if os.path.exists(f"{d}/metrics.txt"):
    for line in open(f"{d}/metrics.txt"):
        if line.startswith("#"): continue
        mm = re.match(r'^(\w+)(\{[^}]*\})?\s+(\S+)', line)
        if mm: m[mm.group(1) + (mm.group(2) or "")] = float(mm.group(3))
def msum(prefix):
    return int(sum(v for k, v in m.items() if k.startswith(prefix)))
out = {
  "people": p["total"] - p["bots"], "admitted": p["admitted"], "finished": p["finished"],
  "still_waiting": p["still_waiting"], "failed": p["failed"], "gave_up": p["gave_up"],
  "tti_p50": tg.get("p50"), "tti_p90": tg.get("p90"), "tti_p99": tg.get("p99"), "tti_max": tg.get("max"),
  "page": resp["page"]["count"], "hit": resp["cache_hit"]["count"], "waiting": resp["waiting_room"]["count"],
  "busy": resp["busy"]["count"], "error": resp["error"]["count"], "timeout": resp["timeout"]["count"],
  "total": resp["total"], "page_p99_ms": resp["page"]["p99_ms"],
  "steps": s["steps_done"], "mismatched": s["sessions_mismatched"], "assets": s["assets_fetched"],
  "portal_requests": portal["requests"], "portal_peak": portal["peak_in_flight"],
  "portal_errors": portal["overload_errors"],
  "line_rate": round(line_rate, 1), "target_rate": round(rate / 60, 1),
  "elapsed": r["elapsed_seconds"], "sim_cpu": (r["simulator"] or {}).get("cpu_share_of_one_core"),
  "load_before": la0, "load_after": la1,
  "digue_origin_errors": msum("digue_origin_errors_total") if m else None,
  "digue_busy_pages": msum("digue_busy_pages_total") if m else None,
  "digue_tickets": msum("digue_tickets_issued_total") if m else None,
  "digue_admitted_line": msum('digue_admitted_total{how="line"') if m else None,
  "digue_admitted_immediate": msum('digue_admitted_total{how="immediate"') if m else None,
  "digue_turns_missed": msum("digue_turns_missed_total") if m else None,
  "digue_sampled_origin_peak": (r.get("origin") or {}).get("peak_in_flight"),
  "eta_err": (r.get("eta") or {}).get("median_abs_error_seconds"),
  "eta_within": (r.get("eta") or {}).get("within_range_share"),
  "busy_p99_ms": resp["busy"]["p99_ms"], "waiting_p99_ms": resp["waiting_room"]["p99_ms"],
}
print(json.dumps(out))
EOF
)"
  log "$side: $(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("admitted {admitted}/{people}, errors {error}, timeouts {timeout}, portal peak {portal_peak}, portal errors {portal_errors}".format(**r))' "${ROW[$side]}")"
  if [[ -n "$REPORT_DIR" ]]; then
    mkdir -p "$REPORT_DIR"
    cp "$d/report.json" "$REPORT_DIR/surge-$side.json" 2>/dev/null || true
    cp "$d/chart.svg" "$REPORT_DIR/surge-$side.svg" 2>/dev/null || true
  fi
}

mkdir -p "$(dirname "$OUT")"
for side in $SIDES; do run_side "$side"; done

# ---------------------------------------------------------------- report
for s in $SIDES; do printf '%s\t%s\n' "$s" "${ROW[$s]}"; done >"$TMP/rows.tsv"
TABLE="$(python3 - "$TMP/rows.tsv" "$CAPACITY" <<'EOF'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    side, js = line.rstrip("\n").split("\t", 1)
    rows[side] = json.loads(js)
cap = sys.argv[2]
label = {"digue": "digue", "nginx": "nginx (best effort)", "bare": "portal alone"}
def f(v, fmt="{}"):
    return "-" if v is None else fmt.format(v)
target = next(iter(rows.values()))["target_rate"]
cols = [
  ("pupils admitted (got the login page)", lambda r: "{} / {}".format(r["admitted"], r["people"])),
  ("admissions/s while a line stood (rate set: {}/s)".format(target), lambda r: f(r["line_rate"])),
  ("time to get in p50 / p99 / max (s)", lambda r: "{} / {} / {}".format(f(r["tti_p50"], "{:.1f}"), f(r["tti_p99"], "{:.1f}"), f(r["tti_max"], "{:.1f}"))),
  ("ETA shown: median error (s) / share within the range shown", lambda r: "{} / {}".format(f(r["eta_err"], "{:.1f}"), f(r["eta_within"], "{:.2f}"))),
  ("still waiting at the time limit", lambda r: r["still_waiting"]),
  ("pupils who stopped after 5 errors in a row", lambda r: r["failed"]),
  ("error responses seen by pupils", lambda r: r["error"]),
  ("timeouts seen by pupils", lambda r: r["timeout"]),
  ("busy pages (503/429 + Retry-After)", lambda r: r["busy"]),
  ("waiting-room answers", lambda r: r["waiting"]),
  ("pages served / of which digue cache hits (nginx hits are not visible)", lambda r: "{} / {}".format(r["page"] + r["hit"], r["hit"])),
  ("p99 latency of pages served (ms)", lambda r: f(r["page_p99_ms"], "{:.0f}")),
  ("per-user steps answered", lambda r: r["steps"]),
  ("sessions shown to the wrong pupil", lambda r: r["mismatched"]),
  ("portal: requests received", lambda r: r["portal_requests"]),
  ("portal: peak in flight (capacity {})".format(cap), lambda r: r["portal_peak"]),
  ("portal: overload errors (503 or dropped)", lambda r: r["portal_errors"]),
  ("load average before / after", lambda r: "{} / {}".format(r["load_before"], r["load_after"])),
]
names = list(rows)
print("| | " + " | ".join(label.get(n, n) for n in names) + " |")
print("|---|" + "---:|" * len(names))
for title, fn in cols:
    print("| {} | ".format(title) + " | ".join(str(fn(rows[n])) for n in names) + " |")
if "digue" in rows:
    r = rows["digue"]
    print()
    print("digue /metrics: origin errors {}, busy pages {}, tickets issued {}, admitted from the line {}, "
          "admitted at once {}, turns missed {}, origin in-flight peak sampled {}".format(
          r["digue_origin_errors"], r["digue_busy_pages"], r["digue_tickets"], r["digue_admitted_line"],
          r["digue_admitted_immediate"], r["digue_turns_missed"], r["digue_sampled_origin_peak"]))
if "digue" in rows and "nginx" in rows:
    d, n = rows["digue"], rows["nginx"]
    ratio = lambda a, b: "-" if not b else "{:.2f}".format(a / b)
    print()
    print("digue/nginx: pupils admitted {}, per-user steps answered {}; errors+timeouts seen by pupils {} vs {}; "
          "portal overload errors {} vs {}".format(ratio(d["admitted"], n["admitted"]), ratio(d["steps"], n["steps"]),
          d["error"] + d["timeout"], n["error"] + n["timeout"], d["portal_errors"], n["portal_errors"]))
EOF
)"
echo
echo "$TABLE"
{
  echo "# digue surge benchmark, $(date '+%F %T %Z')"
  echo
  echo "- machine: $(machine_info)"
  echo "- $(digue_version), $(nginx -v 2>&1 || true)"
  echo "- scenario: digue surge --pupils $PUPILS --peak-rate $PEAK_RATE --ramp $RAMP --duration $DURATION --seed $SEED"
  echo "- portal: capacity $CAPACITY, idle latency ${PORTAL_LATENCY_MS} ms (login 3x); digue new_users_per_minute = nginx limit_req = $RATE_PER_MIN/min (burst $BURST)"
  echo "- proxy pinned to CPU $PROXY_CPU (digue worker_threads = 1, nginx worker_processes 1); portal and simulator on CPU $CLIENT_CPU"
  echo
  echo "$TABLE"
  for s in $SIDES; do
    echo; echo "## $s: digue surge output"; echo; echo '```'; cat "$TMP/$s/surge.txt"; echo '```'
    echo; echo "portal counters: $(grep '"final"' "$TMP/$s/portal.jsonl")"
  done
} >"$OUT"
log "results written to $OUT${REPORT_DIR:+ (JSON reports and SVG charts in $REPORT_DIR)}"
exit 0
}
