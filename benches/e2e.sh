#!/usr/bin/env bash
# End to end: `capgate run` of a signed component against `wasmtime run` of the same
# component with equivalent flags, each with and without its compilation cache.
#
#   bash benches/e2e.sh
#
# Needs `hyperfine` and `wasmtime` 48 on PATH (`cargo install hyperfine --version 1.20.0` and
# `cargo install wasmtime-cli --version '^48'`), and a release build of capgate.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in hyperfine wasmtime; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed (see the top of this script)" >&2; exit 2; }
done
cargo build --release --quiet
capgate="$PWD/target/release/capgate"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp tests/guests/prebuilt/hello.wasm "$work/app.wasm"
cd "$work"
"$capgate" keygen --out k >/dev/null
cat > trust.yaml <<'YAML'
capgate-trust: 1
keys: { k: k.pub }
roles:
  artifact: { keys: [k], threshold: 1 }
  policy: { keys: [k], threshold: 1 }
YAML
cat > policy.yaml <<'YAML'
capgate: 1
name: e2e
version: 1
components:
  app: { component: app.wasm, args: [--greeting] }
YAML
"$capgate" sign artifact app.wasm --key k.key >/dev/null
"$capgate" sign policy policy.yaml --key k.key >/dev/null
mkdir -p cache && chmod 700 cache
# What capgate always turns on for a component with default limits: epoch interruption (here
# through a timeout), fuel metering (the time and fuel limits), and a 256 MiB memory limit.
limits="-W timeout=3600s,fuel=1000000000000000,max-memory-size=268435456"
# Each pair in its own hyperfine run, so each table's "Relative" column is the ratio.
hyperfine --warmup 5 --runs 100 --shell=none --export-markdown "$OLDPWD/target/e2e-cache.md" \
    -n "wasmtime run (cache)" "wasmtime run -C cache=y $limits app.wasm --greeting x" \
    -n "capgate run (cache)" "env XDG_CACHE_HOME=$work/cache $capgate run --policy policy.yaml --trust trust.yaml --state-dir state -- x"
hyperfine --warmup 2 --runs 20 --shell=none --export-markdown "$OLDPWD/target/e2e-no-cache.md" \
    -n "wasmtime run (no cache)" "wasmtime run -C cache=n $limits app.wasm --greeting x" \
    -n "capgate run (no cache)" "$capgate run --no-cache --policy policy.yaml --trust trust.yaml --state-dir state -- x"
cat "$OLDPWD/target/e2e-cache.md" "$OLDPWD/target/e2e-no-cache.md"
