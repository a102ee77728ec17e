#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), starting from the committed seed corpus.
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]
#
# FUZZ_SANITIZER=none builds without AddressSanitizer, and FUZZ_DEV=1 without optimisation:
# both build faster, so CI's short smoke run uses them.
#
# Needs the nightly toolchain and cargo-fuzz (installed from crates.io if missing). New
# corpus entries go to a scratch directory, so the committed corpus stays small. A crash stops
# the run with libFuzzer's report; its input is in fuzz/artifacts/TARGET/. Copy it into
# fuzz/regressions/TARGET/ so `cargo test --test fuzz_regressions` replays it from then on.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(policy_yaml cedar_rules trust_root signature_file audit_log patterns inspect)
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo +nightly install cargo-fuzz --locked
fi
san=(--sanitizer "${FUZZ_SANITIZER:-address}")
if [ -n "${FUZZ_DEV:-}" ]; then san+=(--dev); fi
# One build for every target (the `inspect` target needs the runtime feature).
cargo +nightly fuzz build "${san[@]}" --features runtime
for t in "${targets[@]}"; do
    work=$(mktemp -d)
    echo "== $t: ${secs}s"
    set +e
    cargo +nightly fuzz run "${san[@]}" --features runtime "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -max_len=65536 2>&1 \
        | grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done|==[0-9]+==|SUMMARY|artifact_prefix|thread .* panicked)'
    status=${PIPESTATUS[0]}
    set -e
    rm -rf "$work"
    if [ "$status" -ne 0 ]; then
        echo "fuzz target $t failed (exit $status); see fuzz/artifacts/$t/" >&2
        exit "$status"
    fi
done
