#!/usr/bin/env bash
# bench/ab.sh — A/B of two postern builds against nginx, rounds interleaved in ONE run.
#
#   bench/ab.sh OLD_POSTERN_BINARY [NEW_POSTERN_BINARY]
#
# For a before/after figure on a noisy shared VM: the three servers run side by side and are loaded
# in turn (nginx, A, B, nginx, A, B, ...), so a slow stretch of the machine hits all three alike.
#   nginx   Debian's nginx, TLS 1.3 + ssl_verify_client, 2 workers, one access-log line per request
#           (the nearest equivalent to postern's audit record; NGINX_LOG=0: no access log, the
#           issue's strict baseline), upstream keep-alive                                  (:19444)
#   A, B    `postern serve` on the demo config, upstream http://127.0.0.1:19000      (:19443, :19445)
#   upstream nginx `return 200 "ok"`, 1 worker                                        (:19000)
# Load: oha, N requests (default 60000) per run, 64 keep-alive connections, alice's certificate,
# after one unmeasured warm-up run each. CPU µs/request = utime+stime of the server's processes
# (/proc/PID/stat) / completed requests. Prints each run, the medians, and each pair's CPU ratio
# per round with a distribution-free interval for its median (as bench/load.sh does; a change
# is shown only when that interval excludes 1.0); every address is 127.0.0.1; everything
# started is stopped by PID on exit.
# Needs: nginx, oha, python3 (bench/load.sh install sets them up). Env: N, R (rounds, default 5), RATE (pace each run at RATE req/s; default: closed loop),
# AB_DIR (work dir under /tmp, default /tmp/postern-ab, wiped).
set -euo pipefail
A=${1:?usage: bench/ab.sh OLD_BINARY [NEW_BINARY]}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
B=${2:-$REPO/target/release/postern}
W=${AB_DIR:-/tmp/postern-ab}; N=${N:-60000}; R=${R:-5}
case "${RATE:-}" in *[!0-9]*) echo "RATE must be an integer (req/s)" >&2; exit 2;; esac
PACE=(); [ -n "${RATE:-}" ] && PACE=(-q "$RATE" --latency-correction)
case "$W" in /tmp/?*) ;; *) echo "AB_DIR must be under /tmp/" >&2; exit 2;; esac
export PATH="$HOME/.cargo/bin:$PATH"
TCK=$(getconf CLK_TCK)
rm -rf "$W"; mkdir -p "$W/nginx" "$W/log"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$W/nginx/up.pid" "$W/nginx/front.pid"; do [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
}
trap cleanup EXIT
# shellcheck source=bench/common.sh
. "$REPO/bench/common.sh"

# PKI and config from `postern demo` (binary B), upstream pointed at the nginx upstream.
demo_pki "$B" "$W/a" 127.0.0.1:19443 http://127.0.0.1:19000 "$W/log/demo.out"
cp -r "$W/a" "$W/b"; sed -i 's/127.0.0.1:19443/127.0.0.1:19445/' "$W/b/postern.toml"
D=$W/a; M=(--cacert "$D/ca.pem" --cert "$D/alice.pem" --key "$D/alice.key")

NGLOG="access_log $W/log/nginx-audit.log audit;"; [ "${NGINX_LOG:-1}" = 0 ] && NGLOG="access_log off;"
nginx_upstream "$W" 19000
cat > "$W/nginx/front.conf" <<NG
worker_processes 2; pid $W/nginx/front.pid; error_log $W/log/front.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000; $NGINX_TMP
  upstream app { server 127.0.0.1:19000; keepalive 128; }
  ssl_certificate $D/server.pem; ssl_certificate_key $D/server.key; ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m; ssl_client_certificate $D/ca.pem; ssl_verify_client on; ssl_verify_depth 2;
  log_format audit '\$msec \$remote_addr "\$ssl_client_s_dn" \$ssl_client_verify \$ssl_protocol "\$request" \$status \$upstream_response_time';
  server { listen 127.0.0.1:19444 ssl backlog=4096; $NGLOG
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Client-DN \$ssl_client_s_dn; proxy_set_header X-Client-Verify \$ssl_client_verify; } } }
NG
nginx -c "$W/nginx/up.conf"; nginx -c "$W/nginx/front.conf"
wait_port 19000; wait_port 19444
NGP="$(cat "$W/nginx/front.pid") $(pgrep -P "$(cat "$W/nginx/front.pid")" | tr '\n' ' ')"
RUST_LOG=warn "$A" serve --config "$W/a/postern.toml" > "$W/log/a.out" 2>&1 & PA=$!; PIDS+=("$PA")
RUST_LOG=warn "$B" serve --config "$W/b/postern.toml" > "$W/log/b.out" 2>&1 & PB=$!; PIDS+=("$PB")
wait_port 19443; wait_port 19445

cpu() { local t=0 p; for p in $*; do set -- $(cut -d' ' -f14,15 "/proc/$p/stat"); t=$((t + $1 + $2)); done; echo $t; }
one() {  # name port pids
  local b a; b=$(cpu $3)
  timeout -k 5 120 oha --no-tui --output-format json -n "$N" -c 64 "${PACE[@]}" "${M[@]}" "https://localhost:$2/private" > "$W/o.json" 2>/dev/null
  a=$(cpu $3)
  python3 - "$1" "$W/o.json" "$a" "$b" "$TCK" >> "$W/runs.tsv" <<'PY'
import json, sys
name, path, a, b, tck = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
o = json.load(open(path)); n = sum(o["statusCodeDistribution"].values())
ok = o["statusCodeDistribution"].get("200", 0)
print(f"{name}\t{o['summary']['requestsPerSec']:.0f}\t{o['latencyPercentiles']['p50']*1000:.3f}\t{o['latencyPercentiles']['p99']*1000:.3f}\t{(a-b)*1e6/tck/n:.1f}\t{n}\t{ok}")
PY
  tail -1 "$W/runs.tsv"
}
for p in 19444 19443 19445; do oha --no-tui -n 10000 -c 64 "${M[@]}" "https://localhost:$p/private" > /dev/null 2>&1; done
printf 'server\treq/s\tp50 ms\tp99 ms\tcpu µs/req\trequests\t200s\n' > "$W/runs.tsv"
echo "A = $A"; echo "B = $B"; echo "each run: server req/s p50 p99 cpu-µs/req requests 200s"
for _ in $(seq 1 "$R"); do one nginx 19444 "$NGP"; one A 19443 "$PA"; one B 19445 "$PB"; done
python3 - "$W/runs.tsv" "$REPO/bench" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = {}
for r in rows: by.setdefault(r["server"], []).append(r)
med = lambda k, s: statistics.median(float(r[k]) for r in by[s])
print("\nmedians over the rounds:")
for s in ("nginx", "A", "B"):
    print(f"  {s:5s} {med('req/s', s):8.0f} req/s  p50 {med('p50 ms', s):.3f} ms  p99 {med('p99 ms', s):.3f} ms  cpu {med('cpu µs/req', s):.1f} µs/req")
sys.path.insert(0, sys.argv[2])
from paired import interval  # bench/paired.py, as bench/load.sh's verdict
def ratio(x, y):
    per = [float(a["cpu µs/req"]) / float(b["cpu µs/req"]) for a, b in zip(by[x], by[y])]
    return med("cpu µs/req", x) / med("cpu µs/req", y), statistics.median(per), *interval(per)
for x, y in (("A", "nginx"), ("B", "nginx"), ("B", "A")):
    r, m, lo, hi, cov = ratio(x, y)
    print(f"  CPU per request {x} / {y}: {r:.2f}x (ratio of medians); per round median {m:.2f}x, {cov:.0f} % interval {lo:.2f}-{hi:.2f}x")
PY
