#!/usr/bin/env bash
# Runs the README's quick start exactly as written there (the block between the
# quickstart markers), from the repository root.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
script="$(sed -n '/<!-- quickstart:begin -->/,/<!-- quickstart:end -->/p' README.md | sed '1,2d;$d' | sed '$d')"
exec bash -euo pipefail -c "$script"
