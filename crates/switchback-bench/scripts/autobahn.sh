#!/usr/bin/env bash
# Autobahn|Testsuite's fuzzingclient, run straight at Autobahn's own echo server and through
# each Switchback path to it; every case's result through a path must equal the direct run's.
#
#   crates/switchback-bench/scripts/autobahn.sh [OUT_DIR]        (default target/autobahn)
#
# Paths (PATHS="joined limits legacy pumped filter", the default, or any subset):
#   joined  the binary, a plain route (tunnels joined, spliced)
#   limits  the binary, a route with every WebSocket limit on, above the suite's largest
#           message (16 MiB) and rate, and keepalive pings on
#   legacy  the binary, a `use_websocket` route (raw TCP after the 101)
#   pumped  the library with an identity wrapper on both bodies (switchback-bench proxy --mode chain)
#   filter  the library with a pass-through ws::MessageFilterLayer (--mode filter)
# Autobahn's server checks `Host` against its own address, so every path rewrites it.
#
# Needs target/release/{switchback,switchback-bench}
# (`cargo build --release -p switchback-cli -p switchback-bench`) and Python 2.7 under pyenv;
# installs autobahntestsuite 0.8.2 there when `wstest` is missing, every dependency pinned
# to its last release for Python 2.7. Cases 12.* and 13.* (permessage-deflate, which this
# echo server does not accept: all UNIMPLEMENTED) run only with FULL=1;
# CASES='["1.*", "9.1.1"]' runs a subset. Writes OUT_DIR/autobahn.md, prints the time taken,
# and exits non-zero if any case through a path ends other than directly. One exception: an
# OK/NON-STRICT swap on a case graded by whether an echo escapes the server's abort (3.4,
# 4.1.5, 4.2.5 are byte-chopped and race; docs/conformance.md), in either direction.
set -euo pipefail

started=$SECONDS
root=$(cd "$(dirname "$0")/../../.." && pwd)
out=$(mkdir -p "${1:-$root/target/autobahn}" && cd "${1:-$root/target/autobahn}" && pwd)
paths=${PATHS:-joined limits legacy pumped filter}
bin=${SWITCHBACK:-$root/target/release/switchback}
bench=${SWITCHBACK_BENCH:-$root/target/release/switchback-bench}

for exe in "$bin" "$bench"; do
    [[ -x $exe ]] || { echo "missing $exe: cargo build --release -p switchback-cli -p switchback-bench" >&2; exit 2; }
done

export PYENV_VERSION=2.7.18
wstest=$(pyenv prefix 2>/dev/null || echo "$HOME/.pyenv/versions/2.7.18")/bin/wstest
if [[ ! -x $wstest ]]; then
    echo "installing autobahntestsuite 0.8.2 (Python 2.7)" >&2
    python2.7 -m pip install --quiet autobahntestsuite==0.8.2 autobahn==0.10.9 Twisted==20.3.0 \
        pyOpenSSL==21.0.0 cryptography==3.3.2 service-identity==21.1.0 txaio==2.1.0 \
        zope.interface==5.5.2 attrs==21.4.0 Automat==22.10.0 hyperlink==21.0.0 idna==2.10 \
        incremental==22.10.0 klein==20.6.0 Werkzeug==1.0.1 Jinja2==2.11.3 MarkupSafe==1.1.1 \
        unittest2==1.1.0 six==1.17.0 cffi==1.15.1 pycparser==2.21 ujson==2.0.3 wsaccel==0.6.6 \
        PyHamcrest==1.10.1 Tubes==0.2.1 constantly==15.1.0 pyasn1==0.5.1 pyasn1-modules==0.3.0 \
        enum34==1.1.10 ipaddress==1.0.23 typing==3.10.0.0 linecache2==1.0.0 traceback2==1.4.0
fi

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

echo_port=$(free_port)
"$wstest" -m echoserver -w "ws://127.0.0.1:$echo_port" >"$out/echoserver.log" 2>&1 &
pids+=($!)
wait_port "$echo_port"

# The binary's configuration for one path: `extra` goes into its only route.
binary_config() {
    local port=$1 extra=$2
    cat <<EOF
listen: 127.0.0.1:$port
access_log: /dev/null
drain_timeout: 0s
upgrade_configs:
  - upgrade_type: websocket
routes:
  - match: { prefix: / }
    cluster: echo
    host_rewrite_literal: "127.0.0.1:$echo_port"
$extra
clusters:
  - name: echo
    endpoints: [127.0.0.1:$echo_port]
EOF
}

servers=("{\"agent\": \"direct\", \"url\": \"ws://127.0.0.1:$echo_port\"}")

# A plain TCP relay (its only work: the handshake's Host rewritten), for comparison: any
# intermediary changes how bytes are cut into reads and when they arrive, and three cases'
# outcomes depend on that alone (docs/conformance.md); the relay shows them too.
relay_port=$(free_port)
python3 - "$relay_port" "$echo_port" >"$out/relay.log" 2>&1 <<'PY' &
import asyncio, sys
listen, upstream = int(sys.argv[1]), int(sys.argv[2])

async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()

async def serve(c_reader, c_writer):
    u_reader, u_writer = await asyncio.open_connection("127.0.0.1", upstream)
    head = await c_reader.readuntil(b"\r\n\r\n")
    lines = [l if not l.lower().startswith(b"host:") else b"Host: 127.0.0.1:%d" % upstream
             for l in head.split(b"\r\n")]
    u_writer.write(b"\r\n".join(lines))
    await asyncio.gather(pipe(c_reader, u_writer), pipe(u_reader, c_writer))
    c_writer.close()
    u_writer.close()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", listen)
    await server.serve_forever()

asyncio.run(main())
PY
pids+=($!)
wait_port "$relay_port"
servers+=("{\"agent\": \"tcp-relay\", \"url\": \"ws://127.0.0.1:$relay_port\"}")
for path in $paths; do
    port=$(free_port)
    case $path in
        joined | limits | legacy)
            extra=""
            [[ $path == limits ]] && extra="    websocket: { max_message_size: 67108864, max_upstream_message_size: 67108864, max_frames_per_second: 1000000, ping_interval: 30s }"
            [[ $path == legacy ]] && extra="    use_websocket: true"
            binary_config "$port" "$extra" >"$out/$path.yaml"
            RUST_LOG=warn "$bin" --config "$out/$path.yaml" >"$out/$path.log" 2>&1 &
            ;;
        pumped | filter)
            mode=$([[ $path == pumped ]] && echo chain || echo filter)
            "$bench" proxy --mode "$mode" --listen "127.0.0.1:$port" --upstream "127.0.0.1:$echo_port" \
                --host-rewrite "127.0.0.1:$echo_port" >"$out/$path.log" 2>&1 &
            ;;
        *) echo "unknown path $path (joined limits legacy pumped filter)" >&2; exit 2 ;;
    esac
    pids+=($!)
    wait_port "$port"
    servers+=("{\"agent\": \"$path\", \"url\": \"ws://127.0.0.1:$port\"}")
done

exclude='["12.*", "13.*"]'
[[ ${FULL:-0} == 1 ]] && exclude='[]'
joined_servers=$(IFS=,; echo "${servers[*]}")
cat >"$out/fuzzingclient.json" <<EOF
{
  "outdir": "$out/reports",
  "servers": [$joined_servers],
  "cases": ${CASES:-[\"*\"]},
  "exclude-cases": $exclude,
  "exclude-agent-cases": {}
}
EOF

echo "running the fuzzing client against: direct tcp-relay $paths" >&2
(cd "$out" && exec "$wstest" -m fuzzingclient -s fuzzingclient.json >"$out/fuzzingclient.log" 2>&1) &
pids+=($!)
wait "${pids[-1]}"

python3 - "$out" "$paths" "$((SECONDS - started))" <<'EOF'
import json, sys
out, paths, took = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
index = json.load(open(f"{out}/reports/index.json"))
direct = index["direct"]

def key(case):
    return [int(p) for p in case.split(".")]

def echo_race(case):
    # The suite grades OK if the valid message's echo arrives, NON-STRICT if nothing does
    # (the server dropped the connection at the bad frame with the echo still queued).
    report = json.load(open(f"{out}/reports/{direct[case]['reportfile']}"))
    return (report.get("expected") or {}).get("NON-STRICT", None) == []

def result(agent, case):
    r = index.get(agent, {}).get(case)
    return (r["behavior"], r["behaviorClose"]) if r else ("missing", "missing")

outcomes = {}
for case in direct:
    outcomes[result("direct", case)] = outcomes.get(result("direct", case), 0) + 1
lines = [
    "| path | cases | as direct | OK and NON-STRICT swapped (echo race) | otherwise different |",
    "|:--|--:|--:|--:|--:|",
]
swapped, different = [], []
for path in ["tcp-relay"] + paths:
    counts = [0, 0, 0]
    for case in sorted(direct, key=key):
        want, have = result("direct", case), result(path, case)
        if have == want:
            counts[0] += 1
        elif want[1] == have[1] and {want[0], have[0]} == {"OK", "NON-STRICT"} and echo_race(case):
            counts[1] += 1
            swapped.append((path, case, want, have))
        else:
            counts[2] += 1
            different.append((path, case, want, have))
    lines.append(f"| {path} | {len(direct)} | {counts[0]} | {counts[1]} | {counts[2]} |")
report = ["Autobahn|Testsuite 0.8.2 fuzzingclient: each case's (behavior, close behavior) through "
          "each path against the direct run's; `tcp-relay` is a plain TCP relay, for comparison.", ""]
report += lines + [""]
report.append("Direct run's outcomes: " + ", ".join(f"{b}/{c}: {n}" for (b, c), n in sorted(outcomes.items())) + ".")
report.append("")
for title, rows in (("OK and NON-STRICT swapped (the echo raced the server's abort; not a failure)", swapped),
                    ("Otherwise different", different)):
    if rows:
        report += [f"{title}:", "", "| path | case | direct | through the path |", "|:--|:--|:--|:--|"]
        report += [f"| {p} | {c} | {w[0]}/{w[1]} | {h[0]}/{h[1]} |" for p, c, w, h in rows]
        report.append("")
failed = [row for row in different if row[0] != "tcp-relay"]
report.append("No Switchback path ends a case otherwise than directly." if not failed
              else f"{len(failed)} case(s) end otherwise through Switchback than directly.")
report += ["", f"Took {took // 60} min {took % 60} s (setup and the fuzzing client)."]
text = "\n".join(report) + "\n"
open(f"{out}/autobahn.md", "w").write(text)
print(text)
sys.exit(1 if failed else 0)
EOF
