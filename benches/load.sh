#!/usr/bin/env bash
# `capgate serve` of the image-service demo under a public load generator (`oha`) on loopback,
# for a bounded time, with allowed and denied requests at once:
#   - POST /dimensions (the handler's call to `get-dimensions` is allowed),
#   - GET /admin (its call to `admin-stats` is denied; the server answers 403).
# Afterwards it checks that every allowed request got 200, every /admin request got 403 and
# has a denial in the audit log, that the log verifies, and prints resident memory.
#
#   bash benches/load.sh [SECONDS]      (default 20)
#
# Needs `oha` on PATH (`cargo install oha --locked`) and a release build of capgate.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
command -v oha >/dev/null || { echo "oha is not installed (see the top of this script)" >&2; exit 2; }
cargo build --release --quiet
capgate="$PWD/target/release/capgate"
root="$PWD"
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/policies/image-service" "$work/examples/image-service/build" "$work/keys"
cp policies/image-service/policy.yaml "$work/policies/image-service/"
cp tests/guests/prebuilt/http_handler.wasm tests/guests/prebuilt/image_processor.wasm \
    "$work/examples/image-service/build/"
cd "$work"
for k in release alice auditor; do "$capgate" keygen --out "keys/$k" >/dev/null; done
cat > trust.yaml <<'YAML'
capgate-trust: 1
keys: { release: keys/release.pub, alice: keys/alice.pub, auditor: keys/auditor.pub }
roles:
  artifact: { keys: [release], threshold: 1 }
  policy: { keys: [alice], threshold: 1 }
  audit: { keys: [auditor], threshold: 1 }
YAML
for f in examples/image-service/build/*.wasm; do
    "$capgate" sign artifact "$f" --key keys/release.key >/dev/null
done
"$capgate" sign policy policies/image-service/policy.yaml --key keys/alice.key >/dev/null

port=$((20000 + RANDOM % 20000))
"$capgate" serve --policy policies/image-service/policy.yaml --trust trust.yaml \
    --component http-handler --listen "127.0.0.1:$port" \
    --audit audit.jsonl --audit-key keys/auditor.key 2>serve.log >/dev/null &
server=$!
for _ in $(seq 100); do
    grep -q "http://" serve.log 2>/dev/null && break
    sleep 0.1
done
rss() { awk '/VmRSS/ { print $2 }' "/proc/$server/status"; }
# Warm up (compilation cache, callee instance), then measure memory before the load.
oha -n 200 -c 4 --no-tui -m POST -D "$root/examples/image-service/sample.png" \
    "http://127.0.0.1:$port/dimensions" >/dev/null
before=$(rss)
denied_before=$(grep -c '"decision":"deny"' audit.jsonl || true)
oha -z "${secs}s" --wait-ongoing-requests-after-deadline -c 3 --no-tui --output-format json -m POST -D "$root/examples/image-service/sample.png" \
    "http://127.0.0.1:$port/dimensions" > allowed.json &
allowed=$!
oha -z "${secs}s" --wait-ongoing-requests-after-deadline -c 1 --no-tui --output-format json "http://127.0.0.1:$port/admin" > denied.json
wait "$allowed"
after=$(rss)
kill "$server"; wait "$server" 2>/dev/null || true
server=

python3 - "$secs" "$before" "$after" "$denied_before" <<'PY'
import json, sys
secs, before, after, denied_before = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
a = json.load(open("allowed.json"))
d = json.load(open("denied.json"))
codes_a = a["statusCodeDistribution"]
codes_d = d["statusCodeDistribution"]
n_a = sum(codes_a.values())
n_d = sum(codes_d.values())
denials = sum(1 for l in open("audit.jsonl") if '"decision":"deny"' in l) - denied_before
print(f"duration {secs} s, allowed requests {n_a} {codes_a}, denied requests {n_d} {codes_d}")
print(f"requests per second: {(n_a + n_d) / float(secs):.0f}; errors (no response): allowed {len(a.get('errorDistribution', {}))} kinds, denied {len(d.get('errorDistribution', {}))} kinds")
print(f"audited denials {denials}; resident memory {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB")
ok = set(codes_a) == {"200"} and set(codes_d) == {"403"} and denials == n_d \
    and not a.get("errorDistribution") and not d.get("errorDistribution")
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
"$capgate" audit verify audit.jsonl --trust trust.yaml
