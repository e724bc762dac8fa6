#!/usr/bin/env bash
# Flame graph of one speed-layer run: perf samples with DWARF call stacks, folded and drawn by
# inferno (`cargo install inferno`). The release profile keeps line tables, so frames are named.
#
#   benches/flamegraph.sh OUT.svg [speed-layer run arguments...]
#   benches/flamegraph.sh bench-results/flamegraph-after.svg run --output /tmp/fg \
#       --input binance=target/bench-data/full/binance-p0.jsonl ...
#
# SPEED_LAYER_BIN picks another binary (a build of an earlier commit, for a "before" graph).
set -euo pipefail
out=$1
shift
bin=${SPEED_LAYER_BIN:-target/release/speed-layer}
command -v perf >/dev/null || { echo "flamegraph.sh: perf is not installed (Debian: linux-perf)" >&2; exit 1; }
command -v inferno-flamegraph >/dev/null || { echo "flamegraph.sh: inferno is not installed (cargo install inferno)" >&2; exit 1; }
data=$(mktemp --suffix=.perf)
trap 'rm -f "$data"' EXIT
perf record -F 1999 -g --call-graph dwarf,16384 -o "$data" -- "$bin" "$@" >/dev/null
perf script -i "$data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph --minwidth 1 --title "speed-layer $*" >"$out"
echo "wrote $out" >&2
