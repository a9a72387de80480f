#!/usr/bin/env bash
# Runs the cargo-fuzz targets (not part of `make test`). Usage: scripts/fuzz.sh [SECONDS] [TARGET]
# cargo fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-600}
target=${2:-verify_token}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p corpus/"$target"
if [ -d seeds/"$target" ]; then cp -n seeds/"$target"/* corpus/"$target"/; fi
export RUSTC_BOOTSTRAP=1
cargo fuzz run "$target" corpus/"$target" -- -max_total_time="$seconds" -max_len=16384 -print_final_stats=1
