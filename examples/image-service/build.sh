#!/usr/bin/env bash
# Builds the image service's two components from tests/guests into examples/image-service/build/.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --release --quiet --target wasm32-wasip2 \
    --manifest-path "$root/tests/guests/Cargo.toml" --target-dir "$root/target/guests" \
    -p http-handler -p image-processor
mkdir -p "$root/examples/image-service/build"
cp "$root/target/guests/wasm32-wasip2/release/http_handler.wasm" \
   "$root/target/guests/wasm32-wasip2/release/image_processor.wasm" \
   "$root/examples/image-service/build/"
echo "built examples/image-service/build/{http_handler,image_processor}.wasm"
