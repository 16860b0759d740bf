#!/usr/bin/env bash
# bench/insn.sh — user-space instructions per proxied request, postern beside nginx, counted by
# callgrind: deterministic, so unaffected by the other tenants of a shared VM.
#
#   bench/insn.sh [POSTERN_BINARY]      (default target/release/postern)
#
# Each proxy runs alone under `valgrind --tool=callgrind --instr-atstart=no` on one thread of work
# (postern: POSTERN_WORKERS=1; nginx: one worker, `master_process off`), TLS 1.3 with a client
# certificate on both (nginx: `ssl_verify_client on`, no access log: the issue's strict baseline),
# in front of the same upstream (nginx `return 200 "ok"`). oha sends N1 and then, in a second
# run, N2 requests over 16 keep-alive connections, with counting switched on around each run
# only (`callgrind_control -i on|off`). Both runs open the same 16 connections, so
#     (Ir(N2) - Ir(N1)) / (N2 - N1)
# is the cost of one request with the handshakes and the start-up taken out.
#
# One difference is not the proxies': valgrind hides SHA-NI, so the SHA-256 of postern's audit
# chain runs in software under it (about 34,000 instructions a record, where SHA-NI natively runs
# at 1-2 cycles a byte: an estimated 1,000-1,500 cycles for a ~660-byte record). The script
# prints postern's figure with and without `compress256`; the like-for-like figure is the second
# plus the native cost of that hash.
# Instructions are not time: this shows the work each proxy asks of the CPU in user space; the
# kernel's share (about 60 % of either proxy's CPU here) and the cycles per instruction are
# bench/load.sh's to measure (its `split` mode counts system calls per request).
#
# Needs: valgrind, nginx, oha, python3 (bench/load.sh install sets up nginx and oha).
# Env: N1 (default 2000), N2 (default 6000), INSN_DIR (work dir under /tmp, default
# /tmp/postern-insn, wiped). Every address is 127.0.0.1; everything started is stopped by PID.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
P=${1:-$REPO/target/release/postern}
W=${INSN_DIR:-/tmp/postern-insn}; N1=${N1:-2000}; N2=${N2:-6000}
case "$W" in /tmp/?*) ;; *) echo "INSN_DIR must be under /tmp/" >&2; exit 2;; esac
case "$N1$N2" in *[!0-9]*) echo "N1 and N2 must be integers" >&2; exit 2;; esac
[ "$N2" -gt "$N1" ] || { echo "N2 must be larger than N1" >&2; exit 2; }
for c in valgrind callgrind_control callgrind_annotate nginx oha python3; do
  command -v "$c" >/dev/null || { echo "bench/insn.sh needs $c" >&2; exit 2; }
done
[ -x "$P" ] || { echo "no postern binary at $P (cargo build --release -p postern)" >&2; exit 2; }
export PATH="$HOME/.cargo/bin:$PATH"
rm -rf "$W"; mkdir -p "$W/nginx/tmp" "$W/log" "$W/cg"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -s "$W/nginx/up.pid" ] && kill "$(cat "$W/nginx/up.pid")" 2>/dev/null || true
}
trap cleanup EXIT
# shellcheck source=bench/common.sh
. "$REPO/bench/common.sh"

# PKI and config from `postern demo`, upstream pointed at the nginx upstream.
D=$W/pki
demo_pki "$P" "$D" 127.0.0.1:29443 http://127.0.0.1:29000 "$W/log/demo.out"

nginx_upstream "$W" 29000
cat > "$W/nginx/front.conf" <<NG
worker_processes 1; master_process off; daemon off; pid $W/nginx/front.pid; error_log $W/log/front.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000; $NGINX_TMP
  upstream app { server 127.0.0.1:29000; keepalive 128; }
  ssl_certificate $D/server.pem; ssl_certificate_key $D/server.key; ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m; ssl_client_certificate $D/ca.pem; ssl_verify_client on; ssl_verify_depth 2;
  server { listen 127.0.0.1:29444 ssl backlog=4096;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Client-DN \$ssl_client_s_dn; proxy_set_header X-Client-Verify \$ssl_client_verify; } } }
NG
nginx -c "$W/nginx/up.conf"; wait_port 29000

M=(--cacert "$D/ca.pem" --cert "$D/alice.pem" --key "$D/alice.key")
# One proxy under callgrind: a warm-up, then N1 and N2 requests, each counted into its own dump.
count() {  # name port command...
  local name=$1 port=$2; shift 2
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$W/cg/$name.%p" "$@" \
    > "$W/log/$name.out" 2>&1 & local vp=$!; PIDS+=("$vp")
  wait_port "$port" || { echo "$name did not start (see $W/log/$name.out)" >&2; exit 1; }
  local url="https://localhost:$port/private" n
  timeout -k 5 300 oha --no-tui -n 500 -c 16 "${M[@]}" "$url" > /dev/null
  for n in "$N1" "$N2"; do
    # (callgrind_control says "sending command ..." on stderr; a failure still stops the script)
    callgrind_control -z "$vp" > /dev/null 2>&1; callgrind_control -i on "$vp" > /dev/null 2>&1
    timeout -k 5 600 oha --no-tui --output-format json -n "$n" -c 16 "${M[@]}" "$url" > "$W/log/$name-$n.json"
    callgrind_control -i off "$vp" > /dev/null 2>&1; callgrind_control -d "$name-$n" "$vp" > /dev/null 2>&1
  done
  kill -INT "$vp" 2>/dev/null || true; wait "$vp" 2>/dev/null || true
}
export POSTERN_WORKERS=1 RUST_LOG=warn   # read by postern only
count postern 29443 "$P" serve --config "$D/postern.toml"
count nginx 29444 nginx -c "$W/nginx/front.conf"

python3 - "$W" "$N1" "$N2" <<'PY'
import glob, json, re, subprocess, sys
w, n1, n2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def dump(name, n):
    # callgrind_control -d writes <out>.<part>, its header naming the dump; find ours by it.
    for f in sorted(glob.glob(f"{w}/cg/{name}.*")):
        with open(f, errors="replace") as fh:
            head = fh.read(4096)
        if f"desc: Trigger: dump {name}-{n}\n" in head:
            return f
    sys.exit(f"no callgrind dump for {name}-{n} in {w}/cg")
def count(f):
    out = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", f],
                         capture_output=True, text=True, check=True).stdout
    total, sha = 0, 0
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)", line)
        if not m:
            continue
        n = int(m.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in m.group(2):
            total = n
        elif "sha2::sha256::compress256" in m.group(2):
            sha += n
    return total, sha
def ok(name, n):
    o = json.load(open(f"{w}/log/{name}-{n}.json"))
    return o["statusCodeDistribution"].get("200", 0)
rows = {}
for name in ("postern", "nginx"):
    (t1, s1), (t2, s2) = count(dump(name, n1)), count(dump(name, n2))
    for n in (n1, n2):
        if ok(name, n) != n:
            sys.exit(f"{name}: {ok(name, n)} of {n} requests answered 200; not counted")
    rows[name] = ((t2 - t1) / (n2 - n1), ((t2 - s2) - (t1 - s1)) / (n2 - n1))
print(f"user-space instructions per proxied request, (Ir({n2}) - Ir({n1})) / {n2 - n1}, callgrind:")
p_all, p_nosha = rows["postern"]
g_all, _ = rows["nginx"]
print(f"  {'nginx-mtls (no log)':42s}{g_all:9.0f}")
print(f"  {'postern-mtls, SHA-256 in software':42s}{p_all:9.0f}   ({p_all / g_all:.2f}x nginx; not like for like)")
print(f"  {'postern-mtls, SHA-256 rounds left out':42s}{p_nosha:9.0f}   ({p_nosha / g_all:.2f}x nginx; "
      f"add SHA-NI's native cost of the audit chain's hash)")
PY
