#!/usr/bin/env bash
# The audit log readers on a log larger than their memory: generates a chained log of SIZE
# bytes (default 1 GiB) and runs `audit verify`, `summary`, `query` and `replay` on it, each
# under an address-space limit of LIMIT KiB (default 200 MiB), printing the time and peak
# resident memory of each. Every reader must finish within the limit.
#
#   bash benches/audit_stream.sh [SIZE_MIB] [LIMIT_KIB]
#
# Uses the release build (`cargo build --release` first, or set CAPGATE to a binary).
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
limit_kib=${2:-204800}
bin=${CAPGATE:-target/release/capgate}
if [ ! -x "$bin" ]; then
    cargo build --release --quiet
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== generating a ${size_mib} MiB log in $work"
python3 - "$work/big.jsonl" "$size_mib" <<'EOF'
import hashlib, json, sys
path, size = sys.argv[1], int(sys.argv[2]) << 20
prev = "0" * 64
written = 0
with open(path, "w") as f:
    line = json.dumps({"seq": 0, "ts": "2026-11-29T00:00:00.000000Z", "type": "start",
                       "capgate": "0.1.0", "prev": prev}, separators=(",", ":"))
    f.write(line + "\n"); prev = hashlib.sha256(line.encode()).hexdigest(); written += len(line) + 1
    seq = 1
    while written < size:
        rec = {"seq": seq, "ts": "2026-11-29T00:00:00.000000Z", "component": "app",
               "sha256": "a" * 64, "action": "fs.read", "resource": "/data/file-%d.txt" % (seq % 5000),
               "context": {}, "decision": "deny", "reasons": [],
               "policy": {"name": "p", "version": 1, "sha256": "b" * 64}, "prev": prev}
        line = json.dumps(rec, separators=(",", ":"))
        f.write(line + "\n"); prev = hashlib.sha256(line.encode()).hexdigest(); written += len(line) + 1
        seq += 1
print(f"{seq} records, {written >> 20} MiB")
EOF
printf 'capgate: 1\nname: p\nversion: 1\ncomponents:\n  app:\n    component: app.wasm\n' > "$work/policy.yaml"
printf '\0asm' > "$work/app.wasm"

run() {
    local name=$1
    shift
    local start end
    start=$(date +%s.%N)
    # ulimit -v bounds the address space; /proc's VmHWM of the child is its peak resident set.
    bash -c "ulimit -v $limit_kib; exec \"\$@\"" -- "$bin" "$@" > "$work/out.txt" 2> "$work/err.txt" &
    local pid=$! peak=0
    while kill -0 "$pid" 2>/dev/null; do
        local hwm
        hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        [ -n "$hwm" ] && [ "$hwm" -gt "$peak" ] && peak=$hwm
        sleep 0.2
    done
    local status=0
    wait "$pid" || status=$?
    end=$(date +%s.%N)
    printf '%-8s exit %s  %6.1f s  peak RSS %6d KiB  %s\n' "$name" "$status" \
        "$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}')" "$peak" "$(head -c 100 "$work/out.txt" | tr '\n' ' ')"
    if [ "$status" -ne 0 ]; then
        cat "$work/err.txt" >&2
        exit 1
    fi
}

echo "== readers under a ${limit_kib} KiB address-space limit ($bin)"
run verify audit verify "$work/big.jsonl"
run summary audit summary "$work/big.jsonl" --top 3
run query audit query "$work/big.jsonl" --component nobody
run replay audit replay "$work/big.jsonl" --policy "$work/policy.yaml" --allow-unsigned
