#!/usr/bin/env bash
# bench/load.sh — postern vs nginx, mTLS reverse proxy, measured in ONE run on loopback.
#
# Scenarios (all traffic to 127.0.0.1 only; every load run is bounded in time and stops by itself):
#   direct           the upstream alone: nginx `return 200 "ok"` on 127.0.0.1:9000 (HTTP/1.1, keep-alive)
#   nginx-mtls       Debian's nginx, TLS 1.3 reverse proxy with `ssl_verify_client on` (:9444 -> :9000)
#   nginx-mtls-log   as nginx-mtls plus one unbuffered access-log line per request (:9445 -> :9000),
#                    the closest nginx stand-in for postern's per-request audit record (NGINX_LOG=0 skips it)
#   postern-mtls     `postern serve` with mTLS, alice's demo certificate, route `/` (:9443 -> :9000),
#                    writing its audit record for every request
# All with keep-alive, CONNS connections, load generator oha presenting a client certificate.
#
# Handshake scenarios (HS=0 skips them; not run with RATE): no keep-alive, every request is a new
# TCP connection + TLS 1.3 handshake with alice's client certificate + one request, HS_CONNS
# (default 16) connections in parallel, so req/s = handshakes/s:
#   nginx-mtls-hs      FULL handshakes: nginx server block :9446 with `ssl_session_cache off;
#                      ssl_session_tickets off;`, load from bench/hsload (resumption disabled)
#   postern-mtls-hs    FULL handshakes: postern, load from bench/hsload (resumption disabled).
#                      postern's rustls server always offers resumption (rustls' default stateful
#                      cache of 256 sessions, 2 TLS 1.3 tickets per handshake; tls.rs does not change
#                      it), and oha always resumes: with oha, postern's handshakes are resumed ones.
#                      hsload uses oha's rustls client config with `resumption` disabled instead.
#   postern-mtls-hs-x25519  as postern-mtls-hs, the client offering X25519 only: rustls (oha, hsload)
#                      prefers the post-quantum hybrid X25519MLKEM768, which postern negotiates and
#                      nginx with OpenSSL 3.0 cannot (it gets X25519): this one is like for like
#   nginx-mtls-hs-oha  the full-handshake nginx block again, loaded by oha --disable-keepalive:
#                      checks that hsload and oha measure the same thing
#   nginx-mtls-hsr     RESUMED handshakes: oha --disable-keepalive against nginx-mtls-log (:9445,
#                      session cache + tickets on, one log line per request)
#   postern-mtls-hsr   RESUMED handshakes: oha --disable-keepalive against postern
# Whether each handshake was full or resumed is checked, not assumed: hsload reports rustls'
# handshake kind for every connection, nginx logs $ssl_session_reused, and the sanity checks
# resume a session against postern with openssl s_client -sess_out/-sess_in.
# Both proxies use postern's demo PKI (ECDSA P-256 CA, server and client certificates), so the
# TLS work is the same key type on both sides.
#
# Per scenario: req/s, p50, p99 (ms), and the server's own CPU time per completed request
#   = (utime+stime after - before, /proc/PID/stat, clock ticks -> µs) / completed requests
# for the proxy under test (nginx: master + all workers; postern: its process, all threads) and,
# separately, for the upstream nginx. The load generator shares the cores, so CPU/request is the
# honest figure; req/s and latency are bounded by the machine, not by the proxy alone.
#
# Usage: bench/load.sh [all|install|stop|profile|threads|split]   (default: all; profile: perf of postern
#        alone, see do_profile; threads: postern's CPU per request split by thread, see do_threads;
#        split: nginx-mtls and postern, user and system CPU per request and system calls per request,
#        see do_split)
# Env:   DUR        seconds per load run (default 10, 1..60)
#        CONNS      connections (default 64)
#        LOAD_DIR   work dir, must be under /tmp/ (default /tmp/postern-load); wiped at each run
#        ROUNDS     rounds of all scenarios in turn (default 3); the table gives each run and the median;
#                   the CPU verdict (postern / nginx-mtls paired by round, see paired_ratios) needs at
#                   least 5 rounds, and on a noisy VM 15 to 31 (ROUNDS=15 DUR=5: ~12 minutes; ROUNDS=31 NGINX_LOG=0: ~23)
#        RESULTS    TSV of every run (default $LOAD_DIR/results.tsv); medians in ${RESULTS%.tsv}-median.tsv
#        SKIP_INSTALL=1  skip apt-get / cargo install;   SKIP_BUILD=1  use the existing target/release/postern
#        SKIP_POSTERN=1  nginx scenarios only, PKI made with openssl (for testing the harness)
#        NGINX_LOG=0     skip the nginx-mtls-log scenario
#        HS=0            skip the handshake scenarios;  HS_CONNS  their connections (default 16)
#        KEEP_AUDIT=1    keep postern's audit.jsonl after the run (~660 bytes per request: hundreds of MB)
#        WARMUP     seconds of unmeasured load right before each measured run (default 3; 0 = none)
#        PERF=0     do not count instructions/cycles with perf stat (default: counted when perf works)
#        RATE       if set, every run is paced at RATE req/s in total (oha -q RATE --latency-correction):
#                   latency at a fixed, sub-saturation load instead of closed-loop saturation
#        IDLE_WAIT  s to wait for a busy machine to calm down before each run (default 90)
#        IDLE_MAX   machine busy % counted as idle (default 10)
#        OTHER_MAX / RETRIES  a run during which other processes used > OTHER_MAX % (default 10) of
#                   the CPUs is retried up to RETRIES (default 1) more times; the cleanest is kept
#
# Everything it starts (two nginx, postern) is stopped by PID on exit (trap), never by name.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
W=${LOAD_DIR:-/tmp/postern-load}
DUR=${DUR:-10}
CONNS=${CONNS:-64}
RES=${RESULTS:-$W/results${RATE:+-rate$RATE}.tsv}   # one row per run
SUM=${RES%.tsv}-median.tsv                          # one row per scenario: medians over the rounds
ROUNDS=${ROUNDS:-3}
HOST=127.0.0.1            # the only address this script ever sends traffic to
P_UP=9000 P_NGX=9444 P_NGXLOG=9445 P_NGXFULL=9446 P_PST=9443
POSTERN="$REPO/target/release/postern"
HSLOAD="$REPO/target/hsload/release/hsload"   # bench/hsload, built by do_build
HS_CONNS=${HS_CONNS:-16}
export PATH="$HOME/.cargo/bin:$PATH"

case "$W" in /tmp/?*) ;; *) echo "LOAD_DIR must be under /tmp/" >&2; exit 2;; esac
case "$DUR" in ''|*[!0-9]*) echo "DUR must be an integer" >&2; exit 2;; esac
case "$ROUNDS" in ''|0|*[!0-9]*) echo "ROUNDS must be a positive integer" >&2; exit 2;; esac
case "$CONNS" in ''|*[!0-9]*) echo "CONNS must be an integer" >&2; exit 2;; esac
case "$HS_CONNS" in ''|0|*[!0-9]*) echo "HS_CONNS must be a positive integer" >&2; exit 2;; esac
WARMUP=${WARMUP:-3}
case "$WARMUP" in ''|*[!0-9]*) echo "WARMUP must be an integer" >&2; exit 2;; esac
case "${RATE:-}" in *[!0-9]*) echo "RATE must be an integer (req/s)" >&2; exit 2;; esac
if [ "$DUR" -lt 1 ] || [ "$DUR" -gt 60 ]; then echo "DUR must be 1..60 s (bounded loads)" >&2; exit 2; fi
KILL_AFTER=$((DUR + 30))   # hard wall-clock bound for every load-generator process
TCK=$(getconf CLK_TCK)

log() { printf '[load %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- install / build
do_install() {
  local need=()
  command -v nginx >/dev/null || need+=(nginx)
  command -v openssl >/dev/null || need+=(openssl)
  command -v curl >/dev/null || need+=(curl)
  command -v jq >/dev/null || need+=(jq)
  [ -x /usr/bin/time ] || need+=(time)
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends --no-upgrade "${need[@]}" >/dev/null
  fi
  if ! command -v perf >/dev/null && [ "${PERF:-1}" != 0 ]; then   # optional: instructions/cycles columns
    log "apt-get install linux-perf (optional)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-perf >/dev/null 2>&1 \
      || log "linux-perf not installed: no instructions/cycles columns"
  fi
  if ! command -v oha >/dev/null; then
    # plain `cargo install oha` fails: a dependency of the newest release needs a newer rustc
    log "cargo install --locked oha (takes ~5 min)"
    cargo install --locked oha
  fi
}

do_build() {
  log "cargo build --release -p postern"
  (cd "$REPO" && cargo build --release -p postern) >&2
  if [ "${HS:-1}" != 0 ]; then
    log "cargo build --release bench/hsload (the full-handshake load generator)"
    (cd "$REPO" && cargo build --release --manifest-path bench/hsload/Cargo.toml --target-dir "$REPO/target/hsload") >&2
  fi
}

versions() {
  {
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "kernel: $(uname -r); cpus: $(nproc); mem: $(free -g | awk '/Mem:/{print $2}') GiB"
    echo "nginx: $(nginx -v 2>&1 | sed 's/.*nginx\///')"
    echo "openssl: $(openssl version)"
    echo "oha: $(oha --version 2>/dev/null || echo missing)"
    echo "rustc: $(rustc --version 2>/dev/null || echo missing)"
    echo "postern: HEAD $(git -C "$REPO" log -1 --format='%h' 2>/dev/null || echo '?'); last change to the code: $(git -C "$REPO" log -1 --format='%h %s' -- crates Cargo.toml Cargo.lock 2>/dev/null | cut -c1-100)$(git -C "$REPO" diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || echo ' (+ uncommitted changes in crates/)')"
    echo "load: DUR=${DUR}s CONNS=$CONNS keep-alive, ${RATE:+paced at $RATE req/s, }oha --worker-threads default ($(nproc) cores)"
    [ "${HS:-1}" = 0 ] || [ -n "${RATE:-}" ] || echo "handshakes: HS_CONNS=$HS_CONNS connections, no keep-alive; hsload (bench/hsload, $(git -C "$REPO" log -1 --format=%h -- bench/hsload 2>/dev/null || echo '?')) for full, oha for resumed handshakes"
  } | tee "$W/versions.txt" >&2
}

# ---------------------------------------------------------------- process helpers
alive() {  # PID exists and is not a zombie (PID 1 here may not reap daemons promptly)
  local st; st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "${st#Z}" = "$st" ]
}

stop_pid() {  # stop one process by PID, wait for it to go
  local pid=$1 sig=${2:-TERM}
  [ -n "$pid" ] || return 0
  if alive "$pid"; then
    kill -"$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && { log "pid $pid ignored SIG$sig, sending KILL"; kill -KILL "$pid" 2>/dev/null || true; }
  fi
  return 0
}

stop_pidfile() {  # stop one daemon by the PID in its pidfile (never by name)
  local pf=$1 sig=${2:-TERM}
  [ -s "$pf" ] || return 0
  stop_pid "$(cat "$pf")" "$sig"
  rm -f "$pf"
}

wait_port() {  # port timeout_s: until something accepts on 127.0.0.1:port
  local i
  for i in $(seq 1 $(($2 * 10))); do
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------- PKI
# postern's demo writes its CA, server and client certificates (ECDSA P-256) and its config.
postern_prepare() {
  local d="$W/postern" pid i
  rm -rf "$d"; mkdir -p "$d"
  log "postern demo --dir $d --listen $HOST:$P_PST (to write PKI + config), stopped at 'ready'"
  RUST_LOG=warn "$POSTERN" demo --dir "$d" --listen "$HOST:$P_PST" > "$W/log/postern-demo.out" 2> "$W/log/postern-demo.err" &
  pid=$!
  for i in $(seq 1 600); do
    grep -q ready "$W/log/postern-demo.out" 2>/dev/null && break
    alive "$pid" || break
    sleep 0.1
  done
  if ! grep -q ready "$W/log/postern-demo.out" 2>/dev/null; then
    stop_pid "$pid"; wait "$pid" 2>/dev/null || true
    tail -5 "$W/log/postern-demo.err" >&2
    die "postern demo did not print 'ready'"
  fi
  stop_pid "$pid" TERM; wait "$pid" 2>/dev/null || true
  for f in ca.pem server.pem server.key alice.pem alice.key postern.toml; do
    [ -s "$d/$f" ] || die "postern demo did not write $d/$f"
  done
  grep -q 'url = "builtin:echo"' "$d/postern.toml" || die "postern.toml has no 'url = \"builtin:echo\"' to replace"
  sed -i "s|url = \"builtin:echo\"|url = \"http://$HOST:$P_UP\"|" "$d/postern.toml"
  grep -q "listen = \"$HOST:$P_PST\"" "$d/postern.toml" || die "postern.toml does not listen on $HOST:$P_PST"
  # the PKI both proxies use
  CA="$d/ca.pem" SRV_CRT="$d/server.pem" SRV_KEY="$d/server.key" CLI_CRT="$d/alice.pem" CLI_KEY="$d/alice.key"
  openssl verify -CAfile "$CA" "$SRV_CRT" "$CLI_CRT" >&2
}

# SKIP_POSTERN=1: the same key types made with openssl (harness test without a working postern).
openssl_pki() {
  local d="$W/pki"
  mkdir -p "$d"; cd "$d"
  log "making an ECDSA P-256 CA, server and client certs with openssl in $d"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
  openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=load-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.pem 2>/dev/null
  for who in server client; do
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $who.key 2>/dev/null
    openssl req -new -key $who.key -subj "/CN=load-$who" -out $who.csr 2>/dev/null
  done
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' > server.ext
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=URI:spiffe://postern.demo/user/bench\n' > client.ext
  for who in server client; do
    openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 \
      -extfile $who.ext -out $who.pem 2>/dev/null
  done
  cd - >/dev/null
  CA="$d/ca.pem" SRV_CRT="$d/server.pem" SRV_KEY="$d/server.key" CLI_CRT="$d/client.pem" CLI_KEY="$d/client.key"
  openssl verify -CAfile "$CA" "$SRV_CRT" "$CLI_CRT" >&2
}

# ---------------------------------------------------------------- nginx
write_nginx_confs() {
  mkdir -p "$W/nginx/tmp"
  local common="worker_processes auto;
worker_rlimit_nofile 16384;
events { worker_connections 4096; }"
  local httpcommon="access_log off; default_type text/plain; keepalive_requests 10000000; keepalive_timeout 65s;
  client_body_temp_path $W/nginx/tmp/body; proxy_temp_path $W/nginx/tmp/proxy;
  fastcgi_temp_path $W/nginx/tmp/fcgi; uwsgi_temp_path $W/nginx/tmp/uwsgi; scgi_temp_path $W/nginx/tmp/scgi;"

  cat > "$W/nginx/upstream.conf" <<EOF
$common
pid $W/nginx/upstream.pid;
error_log $W/log/nginx-upstream.err warn;
http {
  $httpcommon
  server { listen $HOST:$P_UP backlog=4096; location / { return 200 "ok"; } }
}
EOF

  cat > "$W/nginx/front.conf" <<EOF
$common
pid $W/nginx/front.pid;
error_log $W/log/nginx-front.err warn;
http {
  $httpcommon
  upstream app { server $HOST:$P_UP; keepalive 128; }
  log_format audit '\$msec \$remote_addr "\$ssl_client_s_dn" \$ssl_client_verify \$ssl_protocol reused=\$ssl_session_reused "\$request" \$status \$upstream_response_time';
  ssl_certificate     $SRV_CRT;
  ssl_certificate_key $SRV_KEY;
  ssl_protocols TLSv1.2 TLSv1.3;   # nginx 1.22's default lacks TLSv1.3 (added to the default in 1.23.4)
  ssl_session_cache shared:SSL:10m;
  ssl_client_certificate $CA; ssl_verify_client on; ssl_verify_depth 2;

  # nginx-mtls: TLS reverse proxy with mandatory client certificate, identity forwarded upstream
  server { listen $HOST:$P_NGX ssl backlog=4096;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Client-DN \$ssl_client_s_dn; proxy_set_header X-Client-Verify \$ssl_client_verify; } }

  # nginx-mtls-log: as nginx-mtls plus one unbuffered log line per request (audit stand-in)
  server { listen $HOST:$P_NGXLOG ssl backlog=4096;
    access_log $W/log/nginx-audit.log audit;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Client-DN \$ssl_client_s_dn; proxy_set_header X-Client-Verify \$ssl_client_verify; } }

  # nginx-mtls-hs: as nginx-mtls-log, but resumption refused (no session cache, no tickets), so every
  # new connection is a full handshake; the log line records \$ssl_session_reused to check it
  server { listen $HOST:$P_NGXFULL ssl backlog=4096;
    ssl_session_cache off; ssl_session_tickets off;
    access_log $W/log/nginx-full.log audit;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Client-DN \$ssl_client_s_dn; proxy_set_header X-Client-Verify \$ssl_client_verify; } }
}
EOF
}

start_nginx() {
  local name=$1
  nginx -t -q -c "$W/nginx/$name.conf" -e "$W/log/nginx-$name.err"
  nginx -c "$W/nginx/$name.conf" -e "$W/log/nginx-$name.err"
  for _ in $(seq 1 50); do [ -s "$W/nginx/$name.pid" ] && break; sleep 0.1; done
  log "nginx $name master pid $(cat "$W/nginx/$name.pid")"
}

# ---------------------------------------------------------------- postern
start_postern() {
  log "postern serve --config $W/postern/postern.toml (RUST_LOG=warn)"
  RUST_LOG=warn "$POSTERN" serve --config "$W/postern/postern.toml" \
    > "$W/log/postern-serve.out" 2> "$W/log/postern-serve.err" &
  POSTERN_PID=$!
  echo "$POSTERN_PID" > "$W/postern.pid"
  if ! wait_port "$P_PST" 30 || ! alive "$POSTERN_PID"; then
    tail -5 "$W/log/postern-serve.err" >&2
    die "postern serve did not come up on $HOST:$P_PST"
  fi
  log "postern pid $POSTERN_PID"
}

stop_postern() { stop_pidfile "$W/postern.pid" TERM; }

stop_all() {
  stop_postern
  stop_pidfile "$W/nginx/front.pid" QUIT
  stop_pidfile "$W/nginx/upstream.pid" QUIT
}

# ---------------------------------------------------------------- sanity
CURL_TLS() {  # port, extra curl args...: TLS to localhost (SNI + cert name) pinned to 127.0.0.1
  local port=$1; shift
  curl -sS --max-time 10 --resolve "localhost:$port:$HOST" --cacert "$CA" "$@"
}

sanity() {
  log "sanity checks (curl)"
  curl -fsS --max-time 10 "http://$HOST:$P_UP/" | grep -qx ok || die "upstream does not answer ok"
  local code
  code=$(CURL_TLS $P_NGX -o /dev/null -w '%{http_code}' --cert "$CLI_CRT" --key "$CLI_KEY" "https://localhost:$P_NGX/private")
  [ "$code" = 200 ] || die "nginx-mtls with client cert -> $code, want 200"
  code=$(CURL_TLS $P_NGX -o /dev/null -w '%{http_code}' "https://localhost:$P_NGX/private")
  [ "$code" = 400 ] || die "nginx-mtls accepted a request without client cert ($code)"
  log "nginx: with cert -> 200, without -> 400"
  if [ "${HS:-1}" != 0 ] && [ -z "${RATE:-}" ]; then
    code=$(CURL_TLS $P_NGXFULL -o /dev/null -w '%{http_code}' --cert "$CLI_CRT" --key "$CLI_KEY" "https://localhost:$P_NGXFULL/private")
    [ "$code" = 200 ] || die "nginx full-handshake block (:$P_NGXFULL) with cert -> $code, want 200"
    # does each server resume a TLS 1.3 session? (openssl s_client keeps the session, then offers it)
    local port what
    for port in $P_NGXLOG $P_NGXFULL $([ "${SKIP_POSTERN:-0}" = 1 ] || echo $P_PST); do
      what=$(resumes $port)
      log "TLS resumption offered by :$port? $what"
    done
  fi
  if [ "${SKIP_POSTERN:-0}" != 1 ]; then
    code=$(CURL_TLS $P_PST -o "$W/log/postern-sanity.body" -w '%{http_code}' --cert "$CLI_CRT" --key "$CLI_KEY" "https://localhost:$P_PST/private")
    [ "$code" = 200 ] || die "postern with alice's cert -> $code, want 200 ($(head -c 300 "$W/log/postern-sanity.body"))"
    grep -qx ok "$W/log/postern-sanity.body" || log "WARNING: postern's 200 body is not the upstream's 'ok': $(head -c 200 "$W/log/postern-sanity.body")"
    code=$(CURL_TLS $P_PST -o /dev/null -w '%{http_code}' "https://localhost:$P_PST/private" || true)
    [ "$code" = 401 ] || log "WARNING: postern without credentials -> $code (expected 401)"
    log "postern: alice's cert -> 200 (upstream body ok), no credentials -> $code"
  fi
}

# resumes PORT: connect twice with openssl s_client (client cert, TLS 1.3), the second time offering the
# session (ticket) the first connection received: "Reused" if the server resumed it.
resumes() {
  local port=$1 sess="$W/log/sess-$1.pem" out
  rm -f "$sess"
  timeout 10 openssl s_client -connect "$HOST:$port" -servername localhost -tls1_3 -CAfile "$CA" \
    -cert "$CLI_CRT" -key "$CLI_KEY" -sess_out "$sess" -ign_eof > /dev/null 2>&1 <<< $'GET /private HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' || true
  [ -s "$sess" ] || { echo "no session saved (no ticket received): NO"; return; }
  out=$(timeout 10 openssl s_client -connect "$HOST:$port" -servername localhost -tls1_3 -CAfile "$CA" \
    -cert "$CLI_CRT" -key "$CLI_KEY" -sess_in "$sess" < /dev/null 2>/dev/null | grep -E '^(New|Reused),' | head -1)
  case "$out" in Reused*) echo "YES ($out)";; New*) echo "NO, ticket not accepted ($out)";; *) echo "? ($out)";; esac
}

# reuse_stats LOG: nginx log lines (one per request = per connection here): TLS versions, % resumed
reuse_stats() {
  awk '{for(i=1;i<=NF;i++){ if($i ~ /^TLSv/) p[$i]++; if($i=="reused=r") r++ }} END{
    printf "%d lines", NR; for(k in p) printf " %s=%d", k, p[k]; printf " resumed=%.1f%%", (NR ? 100*r/NR : 0) }' "$1"
}

# ---------------------------------------------------------------- measuring
stat_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9, $9}' /proc/stat; }  # busy total steal

busy_pct() {  # machine busy % over a 1 s sample (all CPUs)
  local a b
  a=$(stat_busy); sleep 1; b=$(stat_busy)
  awk -v a="$a" -v b="$b" 'BEGIN{split(a,x," "); split(b,y," "); d=y[2]-x[2]; printf "%.0f", (d>0 ? 100*(y[1]-x[1])/d : 0)}'
}

# Wait (up to IDLE_WAIT s) until other work on the machine (other sessions' builds...) calms down.
wait_idle() {
  local lim=${IDLE_WAIT:-90} t0=$SECONDS warned=0
  BG=$(busy_pct)
  while [ "$BG" -gt "${IDLE_MAX:-10}" ] && [ $((SECONDS - t0)) -lt "$lim" ]; do
    [ $warned = 0 ] && { log "machine busy (${BG}%), waiting up to ${lim}s for it to calm down"; warned=1; }
    sleep 4; BG=$(busy_pct)
  done
  [ "$BG" -le "${IDLE_MAX:-10}" ] || log "WARNING: machine still ${BG}% busy before this run; figures contaminated"
}

pid_in() { cat "$1" 2>/dev/null || true; }
server_pids() {  # field -> comma-separated PIDs of that server (nginx: master + workers)
  local m
  case "$1" in 1) m=$(pid_in "$W/nginx/front.pid");; 2) m=$(pid_in "$W/nginx/upstream.pid");; 3) m=$(pid_in "$W/postern.pid");; esac
  [ -n "$m" ] || return 0
  { echo "$m"; pgrep -P "$m" 2>/dev/null || true; } | paste -sd, -
}
# field -> "utime stime" ticks of that server: all threads of its PID plus its direct children
# (nginx workers). Field 2 of /proc/PID/stat (comm) may contain spaces: cut up to ") " first; then
# utime/stime are fields 12/13.
split_ticks() {
  local p u=0 s=0 v
  for p in $(server_pids "$1" | tr , ' '); do
    v=$(awk '{sub(/^.*\) /,""); print $12, $13}' "/proc/$p/stat" 2>/dev/null) || continue
    [ -n "$v" ] || continue
    u=$((u + ${v% *})); s=$((s + ${v#* }))
  done
  echo "$u $s"
}
ticks() { local v; v=$(split_ticks "$1"); echo $((${v% *} + ${v#* })); }  # field -> utime+stime
PERF_OK=0
snap() {  # "front upstream postern" ticks
  echo "$(ticks 1) $(ticks 2) $(ticks 3)"
}

# Run oha (after a warm-up) under GNU time; sets S0/S1 (server ticks), GEN_CPU (% of the machine), OTHER (% of the
# machine used during the run by anything that is neither oha nor a server under test).
# With COUNT=1 (the extra "perf" round), also counts instructions and cycles of the server under
# test (field $FIELD: 1 front nginx, 2 upstream nginx, 3 postern) with `perf stat -p`. Instructions
# per request hardly depend on what else the host runs, unlike CPU time. But counting is NOT free
# here: on this VM every context switch of a counted thread saves/restores the PMU (trapped MSR
# writes), and postern switches threads several times per request: with perf attached its CPU per
# request roughly doubles (nginx's much less). So the perf round's times are not used: CPU, req/s
# and latency come from the rounds without perf, instructions/cycles from the perf round only.
timed() {  # outfile oha-args... (without -z: warm-up, then DUR seconds measured)
  local out=$1; shift
  local tf; tf=$(mktemp)
  wait_idle
  local st0 st1 pp="" pids
  rm -f "$out.perf"
  # warm-up, not measured: a freshly started server (postern's heap, TLS sessions, upstream pool)
  # runs its first seconds markedly slower; every scenario gets the same warm-up
  if [ "$WARMUP" -gt 0 ]; then
    timeout -k 5 $((WARMUP + 20)) "${GEN:-oha}" -z "${WARMUP}s" "$@" > /dev/null 2>&1 || true
  fi
  if [ "${COUNT:-0}" = 1 ]; then
    pids=$(server_pids "$FIELD")
    if [ -n "$pids" ]; then
      perf stat -x, -e instructions,cycles -p "$pids" -o "$out.perf" 2>/dev/null &
      pp=$!
      sleep 0.2
    fi
  fi
  st0=$(stat_busy); S0=$(snap)
  /usr/bin/time -f '%U %S %e' -o "$tf" timeout -k 5 "$KILL_AFTER" "${GEN:-oha}" -z "${DUR}s" "$@" > "$out" 2> "$out.err" || true
  S1=$(snap); st1=$(stat_busy)
  if [ -n "$pp" ]; then kill -INT "$pp" 2>/dev/null || true; wait "$pp" 2>/dev/null || true; fi
  STEAL=$(awk -v a="$st0" -v b="$st1" 'BEGIN{split(a,x," "); split(b,y," "); d=y[2]-x[2]; printf "%.0f%%", (d>0 ? 100*(y[3]-x[3])/d : 0)}')
  INSN=""; CYC=""
  if [ -n "$pp" ]; then
    INSN=$(awk -F, '$3 ~ /^instructions/ && $1 ~ /^[0-9]+$/ {print $1}' "$out.perf" 2>/dev/null | head -1)
    CYC=$(awk -F, '$3 ~ /^cycles/ && $1 ~ /^[0-9]+$/ {print $1}' "$out.perf" 2>/dev/null | head -1)
  fi
  GEN_CPU=$(awk -v n="$(nproc)" '{ if ($3>0) printf "%.0f%%", 100*($1+$2)/($3*n); else print "?" }' "$tf" 2>/dev/null)
  OTHER=$(awk -v a="$st0" -v b="$st1" -v s0="$S0" -v s1="$S1" -v tck="$TCK" -v g="$(awk '{print $1+$2}' "$tf" 2>/dev/null)" 'BEGIN{
      split(a,x," "); split(b,y," "); split(s0,p," "); split(s1,q," ");
      srv=0; for(i=1;i<=3;i++) srv+=q[i]-p[i];
      tot=y[2]-x[2]; oth=(y[1]-x[1]) - srv - g*tck;
      printf "%.0f%%", (tot>0 ? 100*oth/tot : 0) }')
  rm -f "$tf"
}

us_per_req() {  # field(1=front 2=upstream 3=postern) nreq -> µs of CPU per request
  awk -v a="$S0" -v b="$S1" -v i="$1" -v n="$2" -v tck="$TCK" 'BEGIN{split(a,x," "); split(b,y," ");
    d=(y[i]-x[i])/tck*1e6; if (n>0) printf "%.1f", d/n; else printf "-" }'
}

# run_oha scenario proxy_field url [oha args...]: one bounded oha run, one result row in ROW.
# GEN (default oha) and C (default CONNS), set for one call, pick another generator / connection count.
run_oha() {
  local sc=$1 field=$2 url=$3; shift 3
  case "$url" in
    http://$HOST:*|https://localhost:*) ;;
    *) echo "refusing target $url" >&2; exit 3;;
  esac
  local out="$W/raw/oha-$sc-r$ROUND.json"
  # https://localhost:PORT is pinned to 127.0.0.1 with --connect-to (SNI and cert name stay localhost)
  local pin=()
  case "$url" in https://localhost:*)
    local port=${url#https://localhost:}; port=${port%%/*}
    pin=(--connect-to "localhost:$port:$HOST:$port");;
  esac
  local pace=()
  [ -n "${RATE:-}" ] && pace=(-q "$RATE" --latency-correction)
  # keep-alive runs with oha: every request's times into SQLite (written after the run), for the
  # steady-state latency below
  local db=() a
  if [ -z "${GEN:-}" ]; then
    db=(--db-url "$out.db")
    for a in "$@"; do [ "$a" = --disable-keepalive ] && db=(); done
  fi
  rm -f "$out.db"
  FIELD=$field
  timed "$out" --no-tui --output-format json -c "${C:-$CONNS}" "${pace[@]}" "${pin[@]}" "${db[@]}" "$@" "$url"
  # Steady-state latency: the requests scheduled after the first STEADY_SKIP seconds. Each oha run
  # opens its connections anew, and over TLS the first request of each of the 64 waits for the
  # handshakes of all of them (client certificate verification, 2 cores): 50-80 ms here, for
  # nginx and postern alike, the first ~100 ms of every run. Paced, that start is several hundred
  # requests, enough to set the run's p99 by itself; handshakes have their own scenarios.
  local p50s=- p99s=-
  if [ -s "$out.db" ]; then
    read -r p50s p99s < <(python3 - "$out.db" "${STEADY_SKIP:-1}" <<'PY' 2>/dev/null || echo "- -"
import sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute(
    "select coalesce(start_latency_correction, start), end from oha").fetchall()
t0 = min(r[0] for r in rows)
lat = sorted(e - s for s, e in rows if s - t0 >= float(sys.argv[2]))
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3
print(f"{pick(0.50):.3f} {pick(0.99):.3f}")
PY
)
    rm -f "$out.db"
  fi
  local rps p50 p99 n ok codes errs
  rps=$(jq -r '.summary.requestsPerSec // 0 | floor' "$out" 2>/dev/null || echo ERR)
  p50=$(jq -r '(.latencyPercentiles.p50 // 0)*1e3' "$out" 2>/dev/null | awk '{printf "%.3f", $1}' || echo -)
  p99=$(jq -r '(.latencyPercentiles.p99 // 0)*1e3' "$out" 2>/dev/null | awk '{printf "%.3f", $1}' || echo -)
  n=$(jq '[.statusCodeDistribution[]?] | add // 0' "$out" 2>/dev/null || echo 0)
  ok=$(jq '.statusCodeDistribution["200"] // 0' "$out" 2>/dev/null || echo 0)
  codes=$(jq -c '.statusCodeDistribution // {}' "$out" 2>/dev/null | tr -d '"' || echo '?')
  # with -z, oha aborts the requests in flight at the deadline (one per connection): not errors
  errs=$(jq -c '.errorDistribution // {} | del(.["aborted due to deadline"])' "$out" 2>/dev/null || echo '?')
  [ "$n" = "$ok" ] || log "WARNING: $sc: not every response was 200: $codes"
  # hsload: how many handshakes were full / resumed, and the key exchange negotiated
  jq -e .tls "$out" >/dev/null 2>&1 && log "  $sc: hsload handshakes $(jq -c '.tls.handshakes' "$out"), key exchange $(jq -c '.tls.kx' "$out"), errors $errs"
  local cpu up kin kcy
  cpu=$(us_per_req "$field" "$n"); up=$(us_per_req 2 "$n")
  [ "$field" = 2 ] && up="-"
  kin=$(awk -v v="${INSN:-}" -v n="$n" 'BEGIN{ if (v!="" && n>0) printf "%.1f", v/n/1000; else printf "-" }')
  kcy=$(awk -v v="${CYC:-}" -v n="$n" 'BEGIN{ if (v!="" && n>0) printf "%.1f", v/n/1000; else printf "-" }')
  ROW=$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' \
    "$sc" "$ROUND" "$rps" "$p50" "$p99" "$cpu" "$kin" "$kcy" "$up" "$n" "$GEN_CPU" "${BG}%" "$OTHER" "$STEAL" "$codes" "$errs" "$p50s" "$p99s")
  printf '  r%s %-22s %8s req/s  p50 %6s ms  p99 %6s ms  steady p50 %6s p99 %6s ms  cpu %6s µs/req  %s kinsn/req %s kcycles/req  (upstream %s µs; n=%s gen=%s bg=%s%% other=%s steal=%s)\n' \
    "$ROUND" "$sc" "$rps" "$p50" "$p99" "$p50s" "$p99s" "$cpu" "$kin" "$kcy" "$up" "$n" "$GEN_CPU" "$BG" "$OTHER" "$STEAL" >&2
}

# bench args...: run one scenario; if other work stole more than OTHER_MAX % of the machine
# during it, retry (up to RETRIES more times) and keep the cleanest attempt.
bench() {
  local best="" bestoth=100000 o _
  local tries=$((${RETRIES:-1} + 1)) i
  for i in $(seq 1 "$tries"); do
    "$@"
    o=${OTHER%\%}; [[ $o =~ ^-?[0-9]+$ ]] || o=999
    if [ "$o" -lt "$bestoth" ]; then best=$ROW; bestoth=$o; fi
    [ "$o" -le "${OTHER_MAX:-10}" ] && break
    if [ "$i" -lt "$tries" ]; then log "$2: other=${OTHER} > ${OTHER_MAX:-10}% (another workload was running): retrying"
    else log "WARNING: $2: every attempt had other > ${OTHER_MAX:-10}%; kept the cleanest (other=${bestoth}%)"; fi
  done
  printf '%s\n' "$best" >> "$RES"
}

# Per scenario, the median over the rounds of each figure (taken column by column), and the
# range of CPU µs/req: the host's noise moves single runs by tens of percent.
summarize() {
  awk -F'\t' 'NR==1{next}
    { sc=$1; if (!(sc in seen)) { seen[sc]=1; order[++ns]=sc }
      if ($2=="perf") { kp[sc]++; for (c=7; c<=8; c++) v[sc, c, kp[sc]]=$c; next }
      k[sc]++; for (c=3; c<=18; c++) if ((c<7 || c>8) && (c<=9 || c>=17)) v[sc, c, k[sc]]=$c; cpus[sc]=cpus[sc] (cpus[sc]==""?"":" ") $6 }
    function f(x, fmt) { return (x=="-") ? x : sprintf(fmt, x) }
    function med(sc, c,   n, i, j, t, a) {
      n=0; for (i=1; i<=k[sc]+kp[sc]; i++) if (v[sc,c,i] ~ /^[0-9.]+$/) a[++n]=v[sc,c,i]+0
      if (n==0) return "-"
      for (i=2; i<=n; i++) { t=a[i]; for (j=i-1; j>=1 && a[j]>t; j--) a[j+1]=a[j]; a[j+1]=t }
      return (n%2) ? a[(n+1)/2] : (a[n/2]+a[n/2+1])/2 }
    BEGIN{ printf "scenario\trounds\treq_per_s\tp50_ms\tp99_ms\tcpu_us_per_req\tkinsn_per_req\tkcycles_per_req\tupstream_cpu_us_per_req\tcpu_us_per_req_each_round\tsteady_p50_ms\tsteady_p99_ms\n" }
    END{ for (i=1; i<=ns; i++) { sc=order[i]
      printf "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", sc, k[sc], f(med(sc,3),"%.0f"), f(med(sc,4),"%.3f"), f(med(sc,5),"%.3f"),
        f(med(sc,6),"%.1f"), f(med(sc,7),"%.1f"), f(med(sc,8),"%.1f"), f(med(sc,9),"%.1f"), cpus[sc], f(med(sc,17),"%.3f"), f(med(sc,18),"%.3f") } }' "$RES" > "$SUM"
}

# postern's CPU per request over nginx-mtls's and nginx-mtls-log's, paired by round, with the
# median's distribution-free interval and the verdict (at least 5 rounds, the whole interval on
# one side of 1.0; otherwise parity within the noise): bench/paired.py, shared with bench/ab.sh.
paired_ratios() {
  python3 "$REPO/bench/paired.py" "$1"
}

print_table() {
  local f
  echo
  echo "== postern load bench ($(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores shared by oha and the servers; ${DUR}s per run, $CONNS keep-alive connections${RATE:+, paced at $RATE req/s})"
  echo "   cpu µs/req: CPU time (utime+stime) of the proxy under test per completed request (direct: the upstream nginx);"
  echo "   kinsn/kcycles: thousands of instructions / cycles of the same process(es) per request, from the extra round 'perf'"
  echo "   (perf stat attached; that round's own times are inflated by the counting and not used in the medians)"
  echo "   upstream: the upstream nginx's µs/req; gen: oha's CPU, % of all cores; other: CPU used by anything else; steal: hypervisor steal"
  echo "   *-hs / *-hsr: no keep-alive, $HS_CONNS connections, a new TCP + TLS handshake per request (req/s = handshakes/s, cpu µs/req = per handshake);"
  echo "   -hs: full handshakes (load from bench/hsload, resumption disabled), -hsr: resumed (oha), -hs-oha: the full-handshake nginx block loaded by oha;"
  echo "   key exchange: postern-mtls-hs X25519MLKEM768 (rustls' preference), postern-mtls-hs-x25519 and nginx X25519"
  echo "-- each run:"
  printf '%-22s %2s %9s %8s %8s %8s %8s %11s %8s %8s %9s %9s %5s %6s %6s  %s\n' scenario r "req/s" "p50 ms" "p99 ms" "st.p50" "st.p99" "cpu µs/req" "kinsn" "kcycles" "upstream" requests gen other steal codes
  while IFS=$'\t' read -r sc rd rps p50 p99 cpu kin kcy up n gen bg oth stl codes errs sp50 sp99; do
    [ "$sc" = scenario ] && continue
    printf '%-22s %2s %9s %8s %8s %8s %8s %11s %8s %8s %9s %9s %5s %6s %6s  %s %s\n' "$sc" "$rd" "$rps" "$p50" "$p99" "${sp50:--}" "${sp99:--}" "$cpu" "$kin" "$kcy" "$up" "$n" "$gen" "$oth" "$stl" "$codes" "$( [ "$errs" = '{}' ] || echo "errors=$errs")"
  done < "$RES"
  echo "-- median over the rounds without perf (each column separately; kinsn/kcycles from the perf round;"
  echo "   st.p50/st.p99: steady state, the requests scheduled after the first ${STEADY_SKIP:-1} s of each run, see run_oha):"
  printf '%-22s %9s %8s %8s %8s %8s %11s %8s %8s %9s  %s\n' scenario "req/s" "p50 ms" "p99 ms" "st.p50" "st.p99" "cpu µs/req" "kinsn" "kcycles" "upstream" "cpu µs/req of each round"
  while IFS=$'\t' read -r sc nr rps p50 p99 cpu kin kcy up each sp50 sp99; do
    [ "$sc" = scenario ] && continue
    printf '%-22s %9s %8s %8s %8s %8s %11s %8s %8s %9s  %s\n' "$sc" "$rps" "$p50" "$p99" "$sp50" "$sp99" "$cpu" "$kin" "$kcy" "$up" "$each"
  done < "$SUM"
  if grep -q '^postern-mtls' "$SUM"; then
    echo
    awk -F'\t' '
      $1=="direct"{dp99=$5; ds=$12} $1=="nginx-mtls"{ncpu=$6; nin=$7; np99=$5; ns=$12} $1=="nginx-mtls-log"{lcpu=$6} $1=="postern-mtls"{pcpu=$6; pin=$7; pp99=$5; ps=$12}
      END{
        if (ncpu>0) printf "postern / nginx-mtls CPU per request: %.2fx (%s vs %s µs; medians, the verdict is on the paired line below)\n", pcpu/ncpu, pcpu, ncpu;
        if (nin>0 && pin>0) printf "postern / nginx-mtls instructions per request: %.2fx (%s vs %s thousand)\n", pin/nin, pin, nin;
        if (lcpu>0) printf "postern / nginx-mtls-log CPU per request: %.2fx (%s vs %s µs)\n", pcpu/lcpu, pcpu, lcpu;
        if (ds ~ /^[0-9.]+$/ && ps ~ /^[0-9.]+$/) printf "p99 added over direct, steady state: postern %+.3f ms (target <= 1 ms: %s), nginx-mtls %+.3f ms\n", ps-ds, (ps-ds<=1?"MET":"NOT MET"), ns-ds;
        printf "p99 added over direct, whole run (connection set-up included): postern %+.3f ms, nginx-mtls %+.3f ms\n", pp99-dp99, np99-dp99 }' "$SUM"
    paired_ratios "$RES"
    awk -F'\t' '{ r[$1]=$3; c[$1]=$6; k[$1]=$7; p50[$1]=$4; p99[$1]=$5 }
      function line(a, b, what) { if (r[a]>0 && r[b]>0) printf "%-44s handshakes/s %.2fx (%s vs %s), CPU/handshake %.2fx (%s vs %s µs), p50 %s vs %s ms, p99 %s vs %s ms%s\n",
          what, r[a]/r[b], r[a], r[b], (c[b]>0 ? c[a]/c[b] : 0), c[a], c[b], p50[a], p50[b], p99[a], p99[b],
          (k[a]>0 && k[b]>0 ? sprintf(", instructions %.2fx (%s vs %s k)", k[a]/k[b], k[a], k[b]) : "") }
      END{ line("postern-mtls-hs", "nginx-mtls-hs", "full handshakes, postern / nginx:");
           line("postern-mtls-hs-x25519", "nginx-mtls-hs", "full, both X25519, postern / nginx:");
           line("postern-mtls-hsr", "nginx-mtls-hsr", "resumed handshakes, postern / nginx:");
           line("nginx-mtls-hs", "nginx-mtls-hs-oha", "nginx full handshakes, hsload / oha:") }' "$SUM"
    [ -n "${AUDIT_NOTE:-}" ] && echo "$AUDIT_NOTE"
  fi
  echo "results: $SUM (medians), $RES (each run); raw oha JSON: $W/raw/"
}

# ---------------------------------------------------------------- main
do_all() {
  rm -rf "$W/raw" "$W/log" "$W/nginx" "$W/pki"
  mkdir -p "$W/raw" "$W/log"
  if [ "${PERF:-1}" != 0 ] && command -v perf >/dev/null && perf stat -e instructions true >/dev/null 2>&1; then PERF_OK=1
  else log "perf stat unavailable (or PERF=0): no instructions/cycles columns"; fi
  if [ "${SKIP_POSTERN:-0}" = 1 ]; then openssl_pki
  else
    [ "${SKIP_BUILD:-0}" = 1 ] || do_build
    [ -x "$POSTERN" ] || die "no $POSTERN"
    postern_prepare
  fi
  versions
  stop_all
  write_nginx_confs
  start_nginx upstream
  start_nginx front
  [ "${SKIP_POSTERN:-0}" = 1 ] || start_postern
  sanity

  printf 'scenario\tround\treq_per_s\tp50_ms\tp99_ms\tcpu_us_per_req\tkinsn_per_req\tkcycles_per_req\tupstream_cpu_us_per_req\trequests\tgen_cpu\tbusy_before\tother_cpu\tsteal\tstatus_codes\terrors\tsteady_p50_ms\tsteady_p99_ms\n' > "$RES"
  local M=(--cacert "$CA" --cert "$CLI_CRT" --key "$CLI_KEY")
  log "load runs: $ROUNDS round(s) of the scenarios in turn, ${WARMUP}s warm-up + ${DUR}s measured each, $CONNS keep-alive connections, oha"
  local a0 l0 a1 l1
  a0=$(stat -c %s "$W/postern/audit.jsonl" 2>/dev/null || echo 0); l0=$(wc -l < "$W/postern/audit.jsonl" 2>/dev/null || echo 0)
  HSRUN=0
  if [ "${HS:-1}" != 0 ] && [ -z "${RATE:-}" ]; then
    [ -x "$HSLOAD" ] || die "no $HSLOAD (built by do_build; HS=0 skips the handshake scenarios)"
    HSRUN=1
  fi
  local rounds; rounds=$(seq 1 "$ROUNDS")
  [ "$PERF_OK" = 1 ] && rounds="$rounds perf"
  for ROUND in $rounds; do
    COUNT=0; [ "$ROUND" = perf ] && { COUNT=1; log "extra round with perf stat attached: only its instructions/cycles per request are used"; }
    bench run_oha direct 2 "http://$HOST:$P_UP/private"
    bench run_oha nginx-mtls 1 "https://localhost:$P_NGX/private" "${M[@]}"
    if [ "${NGINX_LOG:-1}" != 0 ]; then
      bench run_oha nginx-mtls-log 1 "https://localhost:$P_NGXLOG/private" "${M[@]}"
      log "nginx-audit.log: $(wc -l < "$W/log/nginx-audit.log") lines, $(stat -c %s "$W/log/nginx-audit.log") bytes"
      : > "$W/log/nginx-audit.log"
    fi
    if [ "${SKIP_POSTERN:-0}" != 1 ]; then
      bench run_oha postern-mtls 3 "https://localhost:$P_PST/private" "${M[@]}"
      alive "$POSTERN_PID" || die "postern died during the run (see $W/log/postern-serve.err)"
    fi
    if [ "$HSRUN" = 1 ]; then   # handshakes: a new connection per request, HS_CONNS connections
      : > "$W/log/nginx-full.log"
      GEN=$HSLOAD C=$HS_CONNS bench run_oha nginx-mtls-hs 1 "https://localhost:$P_NGXFULL/private" "${M[@]}" --disable-keepalive
      [ "${SKIP_POSTERN:-0}" = 1 ] || GEN=$HSLOAD C=$HS_CONNS bench run_oha postern-mtls-hs 3 "https://localhost:$P_PST/private" "${M[@]}" --disable-keepalive
      [ "${SKIP_POSTERN:-0}" = 1 ] || GEN=$HSLOAD C=$HS_CONNS bench run_oha postern-mtls-hs-x25519 3 "https://localhost:$P_PST/private" "${M[@]}" --disable-keepalive --x25519
      log "nginx-mtls-hs (hsload) nginx log: $(reuse_stats "$W/log/nginx-full.log")"; : > "$W/log/nginx-full.log"
      C=$HS_CONNS bench run_oha nginx-mtls-hs-oha 1 "https://localhost:$P_NGXFULL/private" "${M[@]}" --disable-keepalive
      log "nginx-mtls-hs-oha nginx log: $(reuse_stats "$W/log/nginx-full.log")"; : > "$W/log/nginx-full.log"
      : > "$W/log/nginx-audit.log"
      C=$HS_CONNS bench run_oha nginx-mtls-hsr 1 "https://localhost:$P_NGXLOG/private" "${M[@]}" --disable-keepalive
      log "nginx-mtls-hsr (oha) nginx log: $(reuse_stats "$W/log/nginx-audit.log")"; : > "$W/log/nginx-audit.log"
      [ "${SKIP_POSTERN:-0}" = 1 ] || C=$HS_CONNS bench run_oha postern-mtls-hsr 3 "https://localhost:$P_PST/private" "${M[@]}" --disable-keepalive
      [ "${SKIP_POSTERN:-0}" = 1 ] || alive "$POSTERN_PID" || die "postern died during the run (see $W/log/postern-serve.err)"
    fi
  done
  summarize
  if [ "${SKIP_POSTERN:-0}" != 1 ]; then
    a1=$(stat -c %s "$W/postern/audit.jsonl" 2>/dev/null || echo 0); l1=$(wc -l < "$W/postern/audit.jsonl" 2>/dev/null || echo 0)
    AUDIT_NOTE="postern audit.jsonl: +$((a1 - a0)) bytes, +$((l1 - l0)) lines during the postern runs (incl. warm-up and retries); now $a1 bytes, $l1 lines; $(awk -v b=$((a1 - a0)) -v l=$((l1 - l0)) 'BEGIN{ if (l>0) printf "%.0f bytes/line", b/l }')"
    log "$AUDIT_NOTE"
    stop_postern
    # hundreds of MB: removed unless KEEP_AUDIT=1 (postern audit verify FILE --key $W/postern/audit.pub checks it)
    [ "${KEEP_AUDIT:-0}" = 1 ] || rm -f "$W/postern/audit.jsonl"
    [ -s "$W/log/postern-serve.err" ] && log "postern stderr (RUST_LOG=warn): $(wc -l < "$W/log/postern-serve.err") lines, last: $(tail -1 "$W/log/postern-serve.err" | head -c 300)"
  fi
  stop_all
  print_table | tee "$W/table.txt"
}

# postern alone behind its upstream, from a clean work dir (the profile and threads modes); with
# the argument `front`, the nginx front proxy too (the split mode).
start_postern_alone() {
  rm -rf "$W/raw" "$W/log" "$W/nginx" "$W/pki"
  mkdir -p "$W/raw" "$W/log"
  [ "${SKIP_BUILD:-0}" = 1 ] || do_build
  postern_prepare
  stop_all
  write_nginx_confs
  start_nginx upstream
  [ "${1:-}" = front ] && start_nginx front
  start_postern
}

# profile: postern alone (upstream nginx + postern-mtls) under the same load, sampled with perf
# (call graphs from DWARF; the release profile keeps line tables). Figures from this mode are
# NOT benchmark figures: perf itself costs CPU.
do_profile() {
  command -v perf >/dev/null || die "perf missing (Debian: apt-get install linux-perf)"
  perf stat -e instructions true >/dev/null 2>&1 || die "perf cannot count here (perf_event_paranoid / no PMU access)"
  start_postern_alone
  local M=(--cacert "$CA" --cert "$CLI_CRT" --key "$CLI_KEY") pp
  wait_idle
  log "perf record -p $POSTERN_PID for ${DUR}s while oha loads postern-mtls"
  timeout -k 5 "$KILL_AFTER" perf record -q -F "${PERF_FREQ:-499}" --call-graph dwarf,16384 -o "$W/perf.data" \
    -p "$POSTERN_PID" -- sleep "$DUR" > "$W/log/perf-record.log" 2>&1 &
  pp=$!
  timeout -k 5 "$KILL_AFTER" oha --no-tui --output-format json -z "${DUR}s" -c "$CONNS" \
    --connect-to "localhost:$P_PST:$HOST:$P_PST" "${M[@]}" "https://localhost:$P_PST/private" > "$W/raw/oha-profile.json" 2>/dev/null || true
  wait "$pp" || true
  stop_all
  log "oha under perf: $(jq -r '"\(.summary.requestsPerSec|floor) req/s, codes \(.statusCodeDistribution|tostring)"' "$W/raw/oha-profile.json")"
  perf report -i "$W/perf.data" --no-children --sort dso,symbol --percent-limit 0.7 --stdio -g none 2>/dev/null \
    | grep -v '^$' > "$W/perf-self.txt" || true
  perf report -i "$W/perf.data" --children --sort symbol --percent-limit 3 --stdio -g none 2>/dev/null \
    | grep -v '^$' > "$W/perf-children.txt" || true
  echo "== self time (top):"; grep -v '^#' "$W/perf-self.txt" | head -40
  echo "== inclusive time (top):"; grep -v '^#' "$W/perf-children.txt" | head -60
  log "full reports: $W/perf-self.txt, $W/perf-children.txt; data: $W/perf.data"
}

# threads: postern's CPU per request split by thread (/proc/PID/task/*/stat and status), under the
# same load as postern-mtls. Shares only: the totals move from run to run on a shared VM.
do_threads() {
  start_postern_alone
  local M=(--cacert "$CA" --cert "$CLI_CRT" --key "$CLI_KEY") n tick
  local url="https://localhost:$P_PST/private" to="localhost:$P_PST:$HOST:$P_PST"
  wait_idle
  timeout -k 5 "$KILL_AFTER" oha --no-tui -z 2s -c "$CONNS" --connect-to "$to" "${M[@]}" "$url" > /dev/null 2>&1 || true
  thread_snap > "$W/threads-before"
  timeout -k 5 "$KILL_AFTER" oha --no-tui --output-format json -z "${DUR}s" -c "$CONNS" \
    --connect-to "$to" "${M[@]}" "$url" > "$W/raw/oha-threads.json" 2>/dev/null || true
  thread_snap > "$W/threads-after"
  stop_all
  n=$(jq '.statusCodeDistribution["200"] // 0' "$W/raw/oha-threads.json")
  [ "$n" -gt 0 ] || die "no 200 answers from postern under load"
  tick=$(getconf CLK_TCK)
  echo "requests $n (200), $(jq -r '.summary.requestsPerSec|floor' "$W/raw/oha-threads.json") req/s, $CONNS connections, ${DUR}s"
  join "$W/threads-before" "$W/threads-after" | awk -v n="$n" -v tick="$tick" '
    { u=$8-$3; s=$9-$4; v=$10-$5; nv=$11-$6; tu+=u; ts+=s
      if (u+s+v+nv>0) printf "%-24s tid %-7s user %6.2f  sys %6.2f µs/req  voluntary %.4f  involuntary %.4f per req\n", $2, $1, u*1e6/tick/n, s*1e6/tick/n, v/n, nv/n }
    END { printf "%-24s             user %6.2f  sys %6.2f µs/req\n", "all threads", tu*1e6/tick/n, ts*1e6/tick/n }'
}

# split: is a proxy's CPU its own code or the kernel's? nginx-mtls and postern-mtls in turn, ROUNDS
# times, under the same load: user and system CPU per request apart (/proc/PID/stat); then, once each,
# every system call of the proxy counted with `strace -c -f` over SPLIT_N requests (strace slows the
# proxy many times over, so these runs give counts only, no times).
do_split() {
  command -v strace >/dev/null || die "strace missing (Debian: apt-get install strace)"
  start_postern_alone front
  sanity
  local M=(--cacert "$CA" --cert "$CLI_CRT" --key "$CLI_KEY") r sc field port n a b
  local N=${SPLIT_N:-20000}
  for r in $(seq 1 "$ROUNDS"); do
    for sc in nginx-mtls postern-mtls; do
      case $sc in nginx-mtls) field=1 port=$P_NGX;; *) field=3 port=$P_PST;; esac
      wait_idle
      timeout -k 5 "$KILL_AFTER" oha --no-tui -z "${WARMUP}s" -c "$CONNS" --connect-to "localhost:$port:$HOST:$port" \
        "${M[@]}" "https://localhost:$port/private" > /dev/null 2>&1 || true
      a=$(split_ticks "$field")
      timeout -k 5 "$KILL_AFTER" oha --no-tui --output-format json -z "${DUR}s" -c "$CONNS" \
        --connect-to "localhost:$port:$HOST:$port" "${M[@]}" "https://localhost:$port/private" > "$W/raw/oha-split.json" 2>/dev/null || true
      b=$(split_ticks "$field")
      n=$(jq '.statusCodeDistribution["200"] // 0' "$W/raw/oha-split.json")
      awk -v a="$a" -v b="$b" -v n="$n" -v tck="$TCK" -v sc="$sc" -v r="$r" 'BEGIN{ split(a,x," "); split(b,y," ");
        if (n>0) printf "r%s %-13s user %5.1f  sys %5.1f  total %5.1f µs/req  (n=%d)\n", r, sc,
          (y[1]-x[1])/tck*1e6/n, (y[2]-x[2])/tck*1e6/n, (y[1]+y[2]-x[1]-x[2])/tck*1e6/n, n }' | tee -a "$W/split.txt"
    done
  done
  for sc in nginx-mtls postern-mtls; do
    case $sc in nginx-mtls) field=1 port=$P_NGX;; *) field=3 port=$P_PST;; esac
    local pids=() p sp
    for p in $(server_pids "$field" | tr , ' '); do pids+=(-p "$p"); done
    strace -c -f -q -o "$W/raw/strace-$sc.txt" "${pids[@]}" &
    sp=$!
    sleep 1
    timeout -k 5 300 oha --no-tui --output-format json -n "$N" -c "$CONNS" --connect-to "localhost:$port:$HOST:$port" \
      "${M[@]}" "https://localhost:$port/private" > "$W/raw/oha-strace.json" 2>/dev/null || true
    sleep 0.5
    kill -INT "$sp" 2>/dev/null || true; wait "$sp" 2>/dev/null || true
    n=$(jq '.statusCodeDistribution["200"] // 0' "$W/raw/oha-strace.json")
    echo "$sc: system calls per request over $n requests (strace -c -f)" | tee -a "$W/split.txt"
    # strace -c columns: % time, seconds, usecs/call, calls, [errors,] syscall
    awk -v n="$n" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { c=$4; e=(NF==6 ? $5 : 0); t+=c
        if (n>0 && c/n >= 0.001) printf "  %-18s %8.3f  (failed %.3f)\n", $NF, c/n, e/n }
      END { if (n>0) printf "  %-18s %8.3f\n", "all", t/n }' "$W/raw/strace-$sc.txt" | sort -k2 -rn | tee -a "$W/split.txt"
  done
  stop_all
}

thread_snap() {  # per thread of postern: tid comm utime stime voluntary involuntary, sorted by tid
  local t
  for t in /proc/"$POSTERN_PID"/task/*; do
    echo "$(basename "$t") $(tr ' ' _ < "$t/comm") $(awk '{print $14, $15}' "$t/stat")" \
      "$(awk '/^voluntary_ctxt/{v=$2} /^nonvoluntary_ctxt/{n=$2} END{print v, n}' "$t/status")"
  done | sort
}

main() {
  local what=${1:-all}
  mkdir -p "$W"
  case "$what" in
    install) do_install; return;;
    stop) stop_all; return;;
    all|profile|threads|split) ;;
    *) echo "usage: $0 [all|install|stop|profile|threads|split]" >&2; exit 2;;
  esac
  trap 'stop_all 2>/dev/null || true' EXIT
  trap 'exit 130' INT TERM
  [ "${SKIP_INSTALL:-0}" = 1 ] || do_install
  case "$what" in profile) do_profile;; threads) do_threads;; split) do_split;; *) do_all;; esac
}

main "$@"
