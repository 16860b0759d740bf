#!/usr/bin/env bash
# bench/threads.sh — postern's CPU per request split by thread, under the load of bench/load.sh.
#
# Runs after bench/load.sh, reusing what it left in LOAD_DIR (the nginx configs and postern's
# demo config and PKI). Starts the upstream nginx (127.0.0.1:9000) and `postern serve`
# (127.0.0.1:9443), warms up 2 s, then loads postern with oha (CONNS keep-alive connections,
# alice's client certificate) for DUR seconds and prints, per thread of postern, user and system
# CPU µs per completed request and context switches per request (/proc/PID/task/*/{stat,status}).
# Stops what it started. Not a benchmark of its own: shares only (the totals move run to run).
#
# Usage: [LOAD_DIR=/tmp/postern-load] [DUR=8] [CONNS=64] [POSTERN=target/release/postern] bench/threads.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
W=${LOAD_DIR:-/tmp/postern-load}
DUR=${DUR:-8}
CONNS=${CONNS:-64}
BIN=${POSTERN:-$REPO/target/release/postern}
export PATH="$HOME/.cargo/bin:$PATH"
case "$DUR" in ''|*[!0-9]*) echo "DUR must be an integer" >&2; exit 2;; esac
[ "$DUR" -ge 1 ] && [ "$DUR" -le 60 ] || { echo "DUR must be 1..60 s" >&2; exit 2; }
for f in "$W/nginx/upstream.conf" "$W/postern/postern.toml" "$W/postern/alice.pem"; do
  [ -f "$f" ] || { echo "missing $f: run bench/load.sh first (same LOAD_DIR)" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "no postern binary at $BIN (cargo build --release -p postern)" >&2; exit 2; }

P=
cleanup() {
  [ -n "$P" ] && kill "$P" 2>/dev/null || true
  [ -f "$W/nginx/upstream.pid" ] && kill "$(cat "$W/nginx/upstream.pid")" 2>/dev/null || true
}
trap cleanup EXIT
nginx -c "$W/nginx/upstream.conf"
rm -f "$W/postern/audit.jsonl"
(cd "$W/postern" && RUST_LOG=warn exec "$BIN" serve --config "$W/postern/postern.toml" > "$W/threads-serve.log" 2>&1) &
P=$!
for _ in $(seq 60); do
  curl -fsk -o /dev/null --cert "$W/postern/alice.pem" --key "$W/postern/alice.key" \
    --connect-to localhost:9443:127.0.0.1:9443 https://localhost:9443/private && break
  sleep 0.5
done
OHA=(oha --no-tui --cacert "$W/postern/ca.pem" --cert "$W/postern/alice.pem" --key "$W/postern/alice.key"
     --connect-to localhost:9443:127.0.0.1:9443)
"${OHA[@]}" -z 2s -c "$CONNS" https://localhost:9443/private > /dev/null
snap() {  # tid comm utime stime voluntary nonvoluntary, sorted by tid
  for t in /proc/"$P"/task/*; do
    echo "$(basename "$t") $(tr ' ' _ < "$t/comm") $(awk '{print $14, $15}' "$t/stat")" \
      "$(awk '/^voluntary_ctxt/{v=$2} /^nonvoluntary_ctxt/{n=$2} END{print v, n}' "$t/status")"
  done | sort
}
snap > "$W/threads-before"
"${OHA[@]}" -z "${DUR}s" -c "$CONNS" --output-format json https://localhost:9443/private > "$W/threads-oha.json"
snap > "$W/threads-after"
n=$(jq '.statusCodeDistribution["200"] // 0' "$W/threads-oha.json")
[ "$n" -gt 0 ] || { echo "no 200 answers; see $W/threads-serve.log" >&2; exit 1; }
tick=$(getconf CLK_TCK)
echo "requests $n (200), $(jq -r '.summary.requestsPerSec|floor' "$W/threads-oha.json") req/s, $CONNS connections, ${DUR}s"
join "$W/threads-before" "$W/threads-after" | awk -v n="$n" -v tick="$tick" '
  { u=$8-$3; s=$9-$4; v=$10-$5; nv=$11-$6; tu+=u; ts+=s
    if (u+s+v+nv>0) printf "%-24s tid %-7s user %6.2f  sys %6.2f µs/req  voluntary %.4f  involuntary %.4f per req\n", $2, $1, u*1e6/tick/n, s*1e6/tick/n, v/n, nv/n }
  END { printf "%-24s             user %6.2f  sys %6.2f µs/req\n", "all threads", tu*1e6/tick/n, ts*1e6/tick/n }'
