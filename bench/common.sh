# bench/common.sh — set-up shared by bench/ab.sh and bench/insn.sh (sourced, not run).

# wait_port PORT: until something accepts on 127.0.0.1:PORT (60 s at most); 1 if nothing does.
wait_port() { for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# demo_pki POSTERN DIR LISTEN UPSTREAM LOG: the demo's PKI and config in DIR, written by
# `POSTERN demo` (started, stopped at its `ready` line), the config's upstream pointed at
# UPSTREAM (http://127.0.0.1:PORT) and the demo's audit log removed.
demo_pki() {
  local bin=$1 dir=$2 listen=$3 upstream=$4 log=$5 dp
  "$bin" demo --dir "$dir" --listen "$listen" > "$log" 2>&1 & dp=$!
  for _ in $(seq 1 300); do grep -q ready "$log" 2>/dev/null && break; sleep 0.1; done
  kill "$dp"; wait "$dp" 2>/dev/null || true
  grep -q ready "$log" || { echo "postern demo did not start (see $log)" >&2; return 1; }
  sed -i "s|url = \"builtin:echo\"|url = \"$upstream\"|" "$dir/postern.toml"
  rm -f "$dir/audit.jsonl" "$dir/audit.jsonl.head"
}

# nginx_upstream DIR PORT: writes DIR/nginx/up.conf, the upstream every proxy is put in front of
# (nginx, one worker, `return 200 "ok"` on 127.0.0.1:PORT, pid in DIR/nginx/up.pid), and sets
# NGINX_TMP to temp-path directives under DIR/nginx/tmp for the other nginx configs.
nginx_upstream() {
  local dir=$1 port=$2
  mkdir -p "$dir/nginx/tmp" "$dir/log"
  NGINX_TMP="client_body_temp_path $dir/nginx/tmp/b; proxy_temp_path $dir/nginx/tmp/p; fastcgi_temp_path $dir/nginx/tmp/f; uwsgi_temp_path $dir/nginx/tmp/u; scgi_temp_path $dir/nginx/tmp/s;"
  cat > "$dir/nginx/up.conf" <<NG
worker_processes 1; pid $dir/nginx/up.pid; error_log $dir/log/up.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000; $NGINX_TMP
  server { listen 127.0.0.1:$port backlog=4096; location / { return 200 "ok"; } } }
NG
}
