#!/usr/bin/env bash
# `capgate serve` against `wasmtime serve`, same component, same machine, same client.
#
# Both serve the `flood` test guest (a wasi:http handler; `GET /16` answers 16 bytes) on
# loopback; `wrk -t2 -c32` drives each for ROUND_SECS in turn, ROUNDS times, interleaved
# (capgate, wasmtime, capgate, ...), and the table reports the medians and the ratios.
# capgate serves under a signed policy with no rules and its default limits (60 s, 10^11
# fuel, 256 MiB) except `limits.instances`, raised to 64 to match `wasmtime serve`, which does
# not bound concurrent instances.
#
#   bash benches/serve.sh [ROUNDS] [ROUND_SECS]      (default 3 rounds of 10 s)
#
# Installs what it lacks: `wrk` from the distribution's packages, `wasmtime` 48.0.8 (with its
# `serve` command) from crates.io into target/bench-tools.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-10}
root="$PWD"

if ! command -v wrk >/dev/null; then
    apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; }
fi
wasmtime=$(command -v wasmtime || true)
if [ -z "$wasmtime" ] || ! "$wasmtime" --version | grep -q '^wasmtime 48\.'; then
    wasmtime="$root/target/bench-tools/bin/wasmtime"
    [ -x "$wasmtime" ] || cargo install wasmtime-cli --version 48.0.8 --locked --root "$root/target/bench-tools"
fi
cargo build --release --quiet --bin capgate
capgate="$root/target/release/capgate"

work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
cp tests/guests/prebuilt/flood.wasm "$work/handler.wasm"
if rustup target list --installed 2>/dev/null | grep -q wasm32-wasip2; then
    cargo build --quiet --release --target wasm32-wasip2 --manifest-path tests/guests/Cargo.toml \
        --target-dir target/guests -p flood
    cp target/guests/wasm32-wasip2/release/flood.wasm "$work/handler.wasm"
fi
cd "$work"
for k in release alice; do "$capgate" keygen --out "$k" >/dev/null; done
cat > trust.yaml <<'YAML'
capgate-trust: 1
keys: { release: release.pub, alice: alice.pub }
roles:
  artifact: { keys: [release], threshold: 1 }
  policy: { keys: [alice], threshold: 1 }
YAML
cat > policy.yaml <<'YAML'
capgate: 1
name: bench
version: 1
components:
  handler:
    component: handler.wasm
    limits: { instances: 64 }
YAML
"$capgate" sign artifact handler.wasm --key release.key >/dev/null
"$capgate" sign policy policy.yaml --key alice.key >/dev/null
export XDG_CACHE_HOME="$work/cache"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 300); do curl -sf "http://127.0.0.1:$1/16" >/dev/null && return 0; sleep 0.1; done; echo "server on $1 did not come up" >&2; exit 1; }

cport=$(free_port)
"$capgate" serve --policy policy.yaml --trust trust.yaml --state-dir state --component handler \
    --listen "127.0.0.1:$cport" 2> capgate.log &
pids+=($!)
wport=$(free_port)
"$wasmtime" serve -S cli --addr "127.0.0.1:$wport" handler.wasm 2> wasmtime.log >/dev/null &
pids+=($!)
wait_up "$cport"
wait_up "$wport"

# One wrk run: prints "REQ_PER_SEC P99_MS".
measure() {
    wrk -t2 -c32 -d"${secs}s" --latency "http://127.0.0.1:$1/16" | python3 -c '
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

# Warm both (compilation, caches), then interleave.
wrk -t2 -c32 -d2s "http://127.0.0.1:$cport/16" >/dev/null
wrk -t2 -c32 -d2s "http://127.0.0.1:$wport/16" >/dev/null
: > results
for r in $(seq "$rounds"); do
    echo "capgate $(measure "$cport")" >> results
    echo "wasmtime $(measure "$wport")" >> results
done
rss() { awk '/VmRSS/ {print int($2/1024)}' "/proc/$1/status"; }
echo "rss $(rss "${pids[0]}") $(rss "${pids[1]}")" >> results

python3 - "$rounds" "$secs" <<'PY'
import platform, statistics, subprocess, sys
rounds, secs = sys.argv[1], sys.argv[2]
rows = [l.split() for l in open("results")]
c = [tuple(map(float, r[1:])) for r in rows if r[0] == "capgate"]
w = [tuple(map(float, r[1:])) for r in rows if r[0] == "wasmtime"]
rss = next(r for r in rows if r[0] == "rss")
med = lambda xs, i: statistics.median(x[i] for x in xs)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"machine: {platform.system()} {platform.release()}, {subprocess.os.cpu_count()} cores of {cpu}")
print(f"client: wrk -t2 -c32, {rounds} interleaved rounds of {secs} s each; medians")
print()
print("| figure | capgate serve | wasmtime serve 48.0.8 | ratio | target |")
print("|---|---|---|---|---|")
print(f"| throughput (req/s) | {med(c,0):,.0f} | {med(w,0):,.0f} | {med(c,0)/med(w,0):.2f}x | >= 1.0x |")
print(f"| p99 latency (ms) | {med(c,1):.2f} | {med(w,1):.2f} | {med(c,1)/med(w,1):.2f}x | <= 1.1x |")
print(f"| resident memory after load (MiB) | {rss[1]} | {rss[2]} | | |")
print()
for name, xs in (("capgate", c), ("wasmtime", w)):
    print(f"{name} rounds: " + ", ".join(f"{r:,.0f} req/s p99 {p:.2f} ms" for r, p in xs))
PY
