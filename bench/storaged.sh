#!/usr/bin/env bash
# bench/storaged.sh - bulkhead-storaged against nbdkit's file plugin, both
# serving the same raw image on a Unix socket, measured with
# fio --ioengine=nbd by ../shared/bench/peers.sh (path from the repository root).
#
#   bench/storaged.sh [peers.sh options...]     e.g. --reps 3 --runtime 4, --quick
#
# Builds bulkhead-storaged (release), runs peers.sh with it as the custom
# server "storaged" next to the built-in A_nbdkit (`nbdkit file RAW_IMG`, the
# reference), interleaved rep by rep, and prints the paired ratios
# storaged/A_nbdkit (median [min-max] over reps; >1 means storaged is faster
# for iops/MBps, costlier for srv_cpu_us_per_io and lat_mean_us).
# Options are passed through to peers.sh and override the defaults below
# (--servers, --ref ...). Results go to bench/out/storaged-<time>/.
# Needs: fio nbdkit qemu-utils libnbd-bin jq (peers.sh checks).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/bench/peers.sh}
[ -f "$PEERS" ] || { echo "peers.sh not found at $PEERS (set PEERS=...)" >&2; exit 1; }

cd "$ROOT"
echo "==> building bulkhead-storaged (release)" >&2
swift build -c release --product bulkhead-storaged >&2
BIN=$(swift build -c release --show-bin-path)/bulkhead-storaged

OUTDIR=$ROOT/bench/out/storaged-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUTDIR"
STORAGED="exec $(printf %q "$BIN") --listen \"unix:\$SOCK\" --export \"disk=\$RAW_IMG\" --log-level warning"

bash "$PEERS" \
    --servers A_nbdkit,storaged \
    --server "storaged=$STORAGED" \
    --ref A_nbdkit \
    --pairs storaged/A_nbdkit \
    --outdir "$OUTDIR" \
    "$@" | tee "$OUTDIR/stdout.txt"

echo
echo "storaged / A_nbdkit, paired per rep: median [min-max] (n reps)"
awk '$1 == "RATIO" && $2 == "storaged" {
        printf "  %-12s %-18s x%.2f [%.2f-%.2f] (n=%d)\n", $3, $4, $6, $7, $8, $9 }' "$OUTDIR/results.txt"
echo
echo "medians: iops (4k) or MBps (1M)"
awk '$1 == "SUMMARY" && (($3 ~ /4k$/ && $4 == "iops") || ($3 ~ /1m$/ && $4 == "MBps")) {
        printf "  %-10s %-12s %-5s %s [%s-%s]\n", $2, $3, $4, $5, $6, $7 }' "$OUTDIR/results.txt"
echo
echo "report: $OUTDIR/report.md"
