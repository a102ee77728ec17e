#!/usr/bin/env bash
# Linked components served by capgate against the same components fused into one.
#
# capgate serves the image-service demo: `http-handler` calls `image-processor` through the
# broker, each call authorised and audited at `level: deny` (the processor in its own sandbox,
# a fresh instance for each request, as policies have it by default), and a second time with
# the processor declared `reusable: true` (its instances kept from one request to the next,
# at most `limits.instances` at once). The baseline composes the same two components into
# one with `wac plug` and serves it with `wasmtime serve -S cli` 48.0.8. `wrk` POSTs the
# demo's PNG to `/dimensions` (one call into the processor per request): first with 32
# connections, then with 4 (four clients sharing one callee), in interleaved rounds.
#
#   bash benches/serve_linked.sh [ROUNDS] [ROUND_SECS]      (default 3 rounds of 10 s)
#
# Installs what it lacks: `wrk` (distribution packages), `wasmtime` 48.0.8 and `wac-cli` 0.12
# (crates.io, into target/bench-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-10}
root="$PWD"
tools="$root/target/bench-tools"

if ! command -v wrk >/dev/null; then
    apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; }
fi
wasmtime=$(command -v wasmtime || true)
if [ -z "$wasmtime" ] || ! "$wasmtime" --version | grep -q '^wasmtime 48\.'; then
    wasmtime="$tools/bin/wasmtime"
    [ -x "$wasmtime" ] || cargo install wasmtime-cli --version 48.0.8 --locked --root "$tools"
fi
wac=$(command -v wac || true)
if [ -z "$wac" ]; then
    wac="$tools/bin/wac"
    [ -x "$wac" ] || cargo install wac-cli --version 0.12.0 --locked --root "$tools"
fi
cargo build --release --quiet --bin capgate
capgate="$root/target/release/capgate"

work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
mkdir -p "$work/policies/image-service" "$work/examples/image-service/build"
sed 's/^audit: { level: all }/audit: { level: deny }/' policies/image-service/policy.yaml \
    > "$work/policies/image-service/policy.yaml"
sed 's/^    limits: { memory: 128MiB, timeout: 10s }$/&\n    reusable: true/' \
    "$work/policies/image-service/policy.yaml" > "$work/policies/image-service/reusable.yaml"
grep -q 'reusable: true' "$work/policies/image-service/reusable.yaml"
cp tests/guests/prebuilt/http_handler.wasm tests/guests/prebuilt/image_processor.wasm \
    "$work/examples/image-service/build/"
cp examples/image-service/sample.png "$work/sample.png"
cd "$work"
"$wac" plug examples/image-service/build/http_handler.wasm \
    --plug examples/image-service/build/image_processor.wasm -o composed.wasm
for k in release alice; do "$capgate" keygen --out "$k" >/dev/null; done
cat > trust.yaml <<'YAML'
capgate-trust: 1
keys: { release: release.pub, alice: alice.pub }
roles:
  artifact: { keys: [release], threshold: 1 }
  policy: { keys: [alice], threshold: 1 }
YAML
for f in examples/image-service/build/*.wasm; do "$capgate" sign artifact "$f" --key release.key >/dev/null; done
"$capgate" sign policy policies/image-service/policy.yaml --key alice.key >/dev/null
"$capgate" sign policy policies/image-service/reusable.yaml --key alice.key >/dev/null
export XDG_CACHE_HOME="$work/cache"
cat > post.lua <<'LUA'
local f = io.open("sample.png", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
LUA

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 300); do curl -sf --data-binary @sample.png "http://127.0.0.1:$1/dimensions" >/dev/null && return 0; sleep 0.1; done; echo "server on $1 did not come up" >&2; exit 1; }

cport=$(free_port)
"$capgate" serve --policy policies/image-service/policy.yaml --trust trust.yaml --state-dir state \
    --audit audit.jsonl --component http-handler --listen "127.0.0.1:$cport" 2> capgate.log &
pids+=($!)
rport=$(free_port)
"$capgate" serve --policy policies/image-service/reusable.yaml --trust trust.yaml --state-dir state-reusable \
    --audit audit-reusable.jsonl --component http-handler --listen "127.0.0.1:$rport" 2> reusable.log &
pids+=($!)
wport=$(free_port)
"$wasmtime" serve -S cli --addr "127.0.0.1:$wport" composed.wasm 2> wasmtime.log >/dev/null &
pids+=($!)
wait_up "$cport"
wait_up "$rport"
wait_up "$wport"

# One wrk run with C connections: prints "REQ_PER_SEC P99_MS".
measure() {
    wrk -t2 -c"$2" -d"${secs}s" --latency -s post.lua "http://127.0.0.1:$1/dimensions" | python3 -c '
import re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", text)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if errors:
    sys.exit("non-2xx responses: " + errors.group(1))
print(rps, p99)'
}

wrk -t2 -c32 -d2s -s post.lua "http://127.0.0.1:$cport/dimensions" >/dev/null
wrk -t2 -c32 -d2s -s post.lua "http://127.0.0.1:$rport/dimensions" >/dev/null
wrk -t2 -c32 -d2s -s post.lua "http://127.0.0.1:$wport/dimensions" >/dev/null
: > results
for c in 32 4; do
    for r in $(seq "$rounds"); do
        echo "capgate $c $(measure "$cport" "$c")" >> results
        echo "reusable $c $(measure "$rport" "$c")" >> results
        echo "wasmtime $c $(measure "$wport" "$c")" >> results
    done
done

python3 - "$rounds" "$secs" <<'PY'
import platform, statistics, subprocess, sys
rounds, secs = sys.argv[1], sys.argv[2]
rows = [l.split() for l in open("results")]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"machine: {platform.system()} {platform.release()}, {subprocess.os.cpu_count()} cores of {cpu}")
print(f"client: wrk -t2, POST /dimensions, {rounds} interleaved rounds of {secs} s each; medians")
print()
print("| figure | capgate serve (linked) | ratio | capgate, `reusable: true` | ratio | wasmtime serve (composed) | target |")
print("|---|---|---|---|---|---|---|")
for c, label in (("32", "32 connections"), ("4", "4 clients, one shared callee")):
    pick = lambda who, i: statistics.median(float(r[2 + i]) for r in rows if r[0] == who and r[1] == c)
    cr, rr, wr = pick("capgate", 0), pick("reusable", 0), pick("wasmtime", 0)
    cp, rp, wp = pick("capgate", 1), pick("reusable", 1), pick("wasmtime", 1)
    print(f"| throughput, {label} | {cr:,.0f} req/s | {cr/wr:.2f}x | {rr:,.0f} req/s | {rr/wr:.2f}x | {wr:,.0f} req/s | >= 0.9x |")
    print(f"| p99, {label} | {cp:.2f} ms | {cp/wp:.2f}x | {rp:.2f} ms | {rp/wp:.2f}x | {wp:.2f} ms | |")
PY
