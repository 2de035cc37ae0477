#!/usr/bin/env bash
# Surge protection, side by side: the fragile demo portal (examples/portal.rs)
# behind digue (waiting room + origin guard) and behind nginx configured as
# well as nginx can be (benches/nginx/surge-nginx.conf), and optionally with
# nothing in front ("bare"), all under the same `digue surge` scenario.
#
# Usage (from anywhere; it cd's to the repo root):
#   benches/surge.sh
#   SIDES="digue nginx" benches/surge.sh        # skip the bare-portal run
#   PUPILS=3000 PEAK_RATE=100 benches/surge.sh
#
# Knobs (environment):
#   SIDES="digue nginx bare"   what is measured, in this order
#   PUPILS=1500 PEAK_RATE=60 RAMP=10s DURATION=60s SEED=2020   the scenario
#   CAPACITY=24                the portal's capacity, = digue origin_concurrency
#                              = nginx upstream max_conns
#   PORTAL_LATENCY_MS=20       the portal's idle latency (a login costs 3x)
#   RATE_PER_MIN=1200          digue new_users_per_minute = nginx limit_req rate
#   PROXY_CPU=0 CLIENT_CPU=1   taskset CPUs: proxy under test / portal + simulator
#   DIGUE_BIN, PORTAL_BIN      binaries (default target/release/{digue,examples/portal})
#   BUILD=1                    build them when missing or older than the sources
#   QUIET_WAIT=1200            longest wait (s) for other benchmarks (run.sh, wrk) to end
#   READY_TIMEOUT=20 KEEP_TMP=0
#   OUT                        results file (default benches/results-extra-surge-YYYY-MM-DD.md)
set -euo pipefail
{

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SIDES="${SIDES:-digue nginx bare}"
PUPILS="${PUPILS:-1500}"
PEAK_RATE="${PEAK_RATE:-60}"
RAMP="${RAMP:-10s}"
DURATION="${DURATION:-60s}"
SEED="${SEED:-2020}"
CAPACITY="${CAPACITY:-24}"
PORTAL_LATENCY_MS="${PORTAL_LATENCY_MS:-20}"
RATE_PER_MIN="${RATE_PER_MIN:-1200}"
PROXY_CPU="${PROXY_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
DIGUE_BIN="${DIGUE_BIN:-target/release/digue}"
PORTAL_BIN="${PORTAL_BIN:-target/release/examples/portal}"
BUILD="${BUILD:-1}"
QUIET_WAIT="${QUIET_WAIT:-1200}"
READY_TIMEOUT="${READY_TIMEOUT:-20}"
KEEP_TMP="${KEEP_TMP:-0}"
OUT="${OUT:-benches/results-extra-surge-$(date +%F).md}"

log() { printf '[surge] %s\n' "$*" >&2; }
die() { printf '[surge] ERROR: %s\n' "$*" >&2; exit 1; }

for t in curl python3 taskset pgrep; do
  command -v "$t" >/dev/null 2>&1 || die "$t is missing (apt-get install curl python3 util-linux procps)"
done
if [[ " $SIDES " == *" nginx "* ]] && ! command -v nginx >/dev/null 2>&1; then
  [[ "$(id -u)" == 0 ]] || die "nginx is missing: apt-get install nginx-light"
  log "installing nginx-light"
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q nginx-light >&2 \
    || die "apt-get install nginx-light failed"
fi
secs() { local d="$1"; [[ "$d" =~ ^([0-9]+)s?$ ]] && echo "${BASH_REMATCH[1]}" && return; [[ "$d" =~ ^([0-9]+)m$ ]] && echo $((BASH_REMATCH[1] * 60)) && return; die "duration $d: write it as 60s or 2m"; }
DURATION_S="$(secs "$DURATION")"

# ---------------------------------------------------------------- other load
# Measurements must not overlap with other benchmarks on this 2-core machine.
wait_idle() {
  local deadline=$((SECONDS + QUIET_WAIT)) said=0
  while pgrep -f 'benches/run.sh|wrk ' >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "other benchmarks still running after ${QUIET_WAIT}s: $(pgrep -af 'benches/run.sh|wrk ' | head -3 | tr '\n' ';')"
    ((said)) || { log "waiting for other benchmarks to end: $(pgrep -af 'benches/run.sh|wrk ' | head -2 | tr '\n' ';')"; said=1; }
    sleep 10
  done
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ---------------------------------------------------------------- binaries
stale() {  # stale BIN SOURCES... : true when BIN is missing or older than a source
  local bin="$1"; shift
  [[ -x "$bin" ]] || return 0
  [[ -n "$(find "$@" -newer "$bin" -name '*.rs' -print -quit 2>/dev/null)" ]]
}
cargo_build() {
  [[ "$BUILD" == 1 ]] || die "$* needed (BUILD=0)"
  local deadline=$((SECONDS + QUIET_WAIT))
  while pgrep -x cargo >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "another cargo is still running after ${QUIET_WAIT}s"
    log "another cargo process is running; waiting"; sleep 10
  done
  log "cargo build --release $*"
  timeout 1800 cargo build --release "$@" >&2 || die "cargo build --release $* failed"
}
if stale "$DIGUE_BIN" src Cargo.toml; then
  [[ "$DIGUE_BIN" == target/release/digue ]] || die "$DIGUE_BIN is missing or older than src/"
  cargo_build --bin digue
fi
if stale "$PORTAL_BIN" src examples/portal.rs; then
  [[ "$PORTAL_BIN" == target/release/examples/portal ]] || die "$PORTAL_BIN is missing or older than src/"
  cargo_build --example portal
fi

# ---------------------------------------------------------------- temp dir, cleanup
TMP="$(mktemp -d -t digue-surge.XXXXXX)"
chmod 755 "$TMP"
PIDS=()
stop_pid() {  # SIGTERM, then SIGKILL after 5 s (and nginx workers of that master)
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
wait_http() {  # wait_http URL PID NAME LOG
  local url="$1" pid="$2" name="$3" logf="$4" deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$logf" >&2 2>/dev/null; die "$name exited during startup (log: $logf)"; }
    curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
    sleep 0.2
  done
  tail -n 20 "$logf" >&2 2>/dev/null
  die "$name did not come up within ${READY_TIMEOUT}s ($url)"
}
render() {  # render TEMPLATE OUT KEY=VALUE...
  local tmpl="$1" out="$2" text kv; shift 2
  text="$(<"$tmpl")"
  for kv in "$@"; do text="${text//@${kv%%=*}@/${kv#*=}}"; done
  [[ "$text" != *@[A-Z_]*@* ]] || die "unfilled @MARKER@ left in $out (from $tmpl)"
  printf '%s\n' "$text" >"$out"
}

# ---------------------------------------------------------------- one side
BURST=$(( RATE_PER_MIN / 12 )); ((BURST >= 1)) || BURST=1   # 5 s worth, as digue's default
declare -A ROW

run_side() {
  local side="$1" d="$TMP/$1" portal_port proxy_port admin_port target admin_flag=() proxy_pid=""
  mkdir -p "$d"
  read -r portal_port proxy_port admin_port < <(free_ports 3)
  [[ "$admin_port" =~ ^[0-9]+$ ]] || die "could not pick free ports"

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
        taskset -c "$PROXY_CPU" "$DIGUE_BIN" run --config "$d/digue.toml" >"$d/proxy.log" 2>&1 &
      proxy_pid=$!; PIDS+=("$proxy_pid")
      wait_http "http://127.0.0.1:$admin_port/healthz" "$proxy_pid" digue "$d/proxy.log"
      target="http://127.0.0.1:$proxy_port"; admin_flag=(--admin "http://127.0.0.1:$admin_port")
      ;;
    nginx)
      mkdir -p "$d"/{tmp/body,tmp/proxy,tmp/fastcgi,tmp/uwsgi,tmp/scgi,logs}
      local vars=(PREFIX="$d" USER="$(id -un)" GROUP="$(id -gn)" PORT="$proxy_port"
                  ORIGIN_PORT="$portal_port" CAPACITY="$CAPACITY" RATE_PER_MIN="$RATE_PER_MIN" BURST="$BURST")
      render "$ROOT/benches/nginx/base.conf" "$d/nginx.conf" "${vars[@]}"
      render "$ROOT/benches/nginx/surge-nginx.conf" "$d/site.conf" "${vars[@]}"
      nginx -t -q -p "$d" -e "$d/logs/error.log" -c "$d/nginx.conf" 2>"$d/logs/configtest.log" \
        || { cat "$d/logs/configtest.log" >&2; die "nginx config invalid ($d/nginx.conf)"; }
      taskset -c "$PROXY_CPU" nginx -p "$d" -e "$d/logs/error.log" -c "$d/nginx.conf" >"$d/proxy.log" 2>&1 &
      proxy_pid=$!; PIDS+=("$proxy_pid")
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
}
print(json.dumps(out))
EOF
)"
  log "$side: $(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("admitted {admitted}/{people}, errors {error}, timeouts {timeout}, portal peak {portal_peak}, portal errors {portal_errors}".format(**r))' "${ROW[$side]}")"
  cp "$d/report.json" "${OUT%.md}-$side.json" 2>/dev/null || true
  cp "$d/chart.svg" "${OUT%.md}-$side.svg" 2>/dev/null || true
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
  ("time to get in p50 / p99 (s)", lambda r: "{} / {}".format(f(r["tti_p50"], "{:.1f}"), f(r["tti_p99"], "{:.1f}"))),
  ("still waiting at the time limit", lambda r: r["still_waiting"]),
  ("pupils who stopped after 5 errors in a row", lambda r: r["failed"]),
  ("error responses seen by pupils", lambda r: r["error"]),
  ("timeouts seen by pupils", lambda r: r["timeout"]),
  ("busy pages (503/429 + Retry-After)", lambda r: r["busy"]),
  ("waiting-room answers", lambda r: r["waiting"]),
  ("pages from the origin / cache hits", lambda r: "{} / {}".format(r["page"], r["hit"])),
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
  echo "- machine: $(nproc) CPUs, $(lscpu 2>/dev/null | awk -F': *' '/^Model name/ {print $2; exit}'), $(uname -sr)"
  echo "- $("$DIGUE_BIN" --version) ($(git describe --always --dirty 2>/dev/null || echo '?')), $(nginx -v 2>&1 || true)"
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
log "results written to $OUT (reports: ${OUT%.md}-SIDE.json, charts: ${OUT%.md}-SIDE.svg)"
exit 0
}
