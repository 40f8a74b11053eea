#!/usr/bin/env bash
# Instructions the `switchback` binary executes per new WebSocket tunnel, counted by valgrind's
# callgrind: repeatable to a fraction of a percent whatever else the machine is doing, where
# CPU time per tunnel spreads by ±15% on a shared VM. User space only: the kernel's share
# (accept, connect, loopback TCP) is not counted, so this is the figure for cuts in our own
# code, not a replacement for `switchback-bench --only handshake`.
#
# Usage: instructions-per-tunnel.sh [SWITCHBACK_BIN] [TUNNELS]
#   defaults: target/release/switchback next to this workspace, 2000 tunnels.
#   KEEP=DIR keeps callgrind's output files there, for `callgrind_annotate --inclusive=yes`;
#   for annotated source, build the `profiling` profile (release with full debug info:
#   `cargo build --profile profiling -p switchback-cli -p switchback-bench`) and pass
#   target/profiling/switchback (docs/performance.md, "Profiling").
#   ROLE=library counts the library's stack instead (`switchback-bench proxy --mode fast`, the
#   bench's `switchback` system): SWITCHBACK_BIN is then a switchback-bench binary.
#   ROLE=nginx counts nginx (the bench's configuration, one process, no access log), for the
#   same figure beside a peer; SWITCHBACK_BIN then only locates switchback-bench's upstream.
#   TOOL=strace counts system calls per tunnel instead (`strace -c`, each call by name), with
#   the same client and the same subtraction; it needs strace.
# Each tunnel, one after another: upgrade, one 64-byte echo, close frames each way, close.
# The proxy runs one worker; the count is (run with 2N tunnels - run with N) / N, so start-up
# and shutdown cancel out. Needs valgrind, python3 and `switchback-bench` built beside the binary.
set -euo pipefail
here=$(cd "$(dirname "$0")/../../.." && pwd)
bin=${1:-$here/target/release/switchback}
n=${2:-2000}
benchbin=$(dirname "$bin")/switchback-bench
[ -x "$benchbin" ] || benchbin=$here/target/release/switchback-bench
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

"$benchbin" upstream --listen 127.0.0.1:0 >"$work/upstream.out" &
for _ in $(seq 100); do grep -q LISTENING "$work/upstream.out" 2>/dev/null && break; sleep 0.05; done
upstream=$(awk '/LISTENING/ {print $2}' "$work/upstream.out")

client() { # PORT COUNT
  python3 - "$1" "$2" <<'PY'
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
def read_until(s, marker):
    buf = b""
    while marker not in buf:
        chunk = s.recv(4096)
        if not chunk: raise SystemExit("closed early")
        buf += chunk
    return buf
mask = bytes([1, 2, 3, 4])
payload = bytes([0x42]) * 64
frame = bytes([0x82, 0x80 | 64]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
close = bytes([0x88, 0x82]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"\x03\xe8"))
for i in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    head = read_until(s, b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"): raise SystemExit(head[:200])
    rest = head.split(b"\r\n\r\n", 1)[1]
    s.sendall(frame)
    while len(rest) < 66: rest += s.recv(4096)
    s.sendall(close)
    while len(rest) < 70:
        chunk = s.recv(4096)
        if not chunk: break
        rest += chunk
    s.shutdown(socket.SHUT_WR)
    while s.recv(4096): pass
    s.close()
PY
}

count() { # TUNNELS -> instructions of the whole proxy run
  local port out
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$work/switchback.yaml" <<YAML
listen: 127.0.0.1:$port
workers: 1
access_log: /dev/null
drain_timeout: 0s
use_remote_address: false
x_forwarded_proto: false
generate_request_id: false
upgrade_configs:
  - upgrade_type: websocket
routes:
  - match: { prefix: / }
    cluster: upstream
clusters:
  - name: upstream
    endpoints: [$upstream]
YAML
  out="$work/callgrind.$1"
  local proxy=("$bin" --config "$work/switchback.yaml")
  if [ "${ROLE:-}" = library ]; then
    proxy=("$bin" proxy --mode fast --listen "127.0.0.1:$port" --upstream "$upstream")
  elif [ "${ROLE:-}" = nginx ]; then
    # The bench's nginx, as one process: no master, one worker, no log.
    mkdir -p "$work/nginx"
    cat >"$work/nginx/nginx.conf" <<NGINX
daemon off;
master_process off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/nginx/client_body;
    proxy_temp_path $work/nginx/proxy;
    upstream echo { server $upstream; }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host \$host;
        }
    }
}
NGINX
    proxy=(nginx -p "$work/nginx" -c "$work/nginx/nginx.conf")
  fi
  if [ "${TOOL:-}" = strace ]; then
    "${proxy[@]}" >"$work/proxy.log" 2>&1 &
  else
    valgrind --tool=callgrind --callgrind-out-file="$out" "${proxy[@]}" >"$work/proxy.log" 2>&1 &
  fi
  local pid=$! tracer=
  for _ in $(seq 400); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$port)).close()" 2>/dev/null && break
    sleep 0.1
  done
  if [ "${TOOL:-}" = strace ]; then
    # Attached once the proxy listens: start-up and the probes above are not counted.
    strace -f -c -o "$out" -p "$pid" 2>/dev/null &
    tracer=$!
    sleep 1
  fi
  client "$port" "$1"
  if [ -n "$tracer" ]; then kill -INT "$tracer"; wait "$tracer" || true; fi
  kill -TERM $pid; wait $pid || true
  [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$out" "$KEEP/"
  if [ "${TOOL:-}" = strace ]; then
    # `calls` is the fourth column; the name is the last (an `errors` column may come between).
    awk '$4 ~ /^[0-9]+$/ && $NF != "total" {print $NF, $4}' "$out"
  else
    awk '/^summary:|^totals:/ {print $2; exit}' "$out"
  fi
}

label=$([ "${ROLE:-}" = nginx ] && echo nginx || echo "$bin")
one=$(count "$n")
two=$(count $((2 * n)))
if [ "${TOOL:-}" = strace ]; then
  # Per system call: (calls with 2N tunnels - calls with N) / N, then the sum.
  python3 - "$n" "$label" "$one" "$two" <<'PY'
import sys
n, label = int(sys.argv[1]), sys.argv[2]
def table(text):
    return {name: int(calls) for name, calls in (l.split() for l in text.splitlines() if l.strip())}
one, two = table(sys.argv[3]), table(sys.argv[4])
per = {k: (two.get(k, 0) - one.get(k, 0)) / n for k in set(one) | set(two)}
for name, calls in sorted(per.items(), key=lambda kv: -kv[1]):
    if calls >= 0.05:
        print(f"{name:16} {calls:6.2f}")
print(f"system calls per tunnel: {sum(per.values()):.1f} ({label})")
PY
else
  echo "instructions per tunnel: $(( (two - one) / n )) (N=$n: $one, 2N: $two; $label)"
fi
