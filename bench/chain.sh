#!/usr/bin/env bash
# bench/chain.sh - the full Bulkhead chain against encrypted NBD peers.
#
#   fio --ioengine=nbd -> bulkhead-cryptd -> bulkhead-storaged -> pool image
#
# Runs ../shared/bench/peers.sh (relative to the repository root) with one
# custom server, `bulkhead` (bench/chain/peer-server.sh), next to the
# built-in peers D2_qemu_luks_2hop (reference), B_nbdkit_luks and R2_nbdkit,
# and reports the paired ratios bulkhead/D2_qemu_luks_2hop,
# bulkhead/B_nbdkit_luks and bulkhead/R2_nbdkit.
#
# Usage: bench/chain.sh [--no-build] [--pool-pct P] [--pool-extra-mib M]
#                       [--cryptd-args ARGS] [peers.sh options...]
#   --no-build          use the existing .build/release binaries
#   --pool-pct P        pool image = P% of the volume size + M MiB (default 300% + 256)
#   --pool-extra-mib M  (see above)
#   --cryptd-args ARGS  extra bulkhead-cryptd options, e.g. '--checkpoint-records 4096'
# Everything else goes to peers.sh and overrides the defaults below, e.g.
#   bench/chain.sh --reps 3 --runtime 4 --size 1G --markdown /tmp/chain.md
#
# Why the pool is much larger than the volume: peers.sh's fio never sends
# FLUSH, and the engine keeps every block overwritten since the last commit
# allocated until the next commit (copy-on-write, deferred free), so a write
# run needs room for all of its overwrites.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
peers="$repo/../shared/bench/peers.sh"
[ -x "$peers" ] || [ -f "$peers" ] || { echo "chain.sh: $peers not found" >&2; exit 1; }

build=1
export BH_POOL_PCT=300 BH_POOL_EXTRA_MIB=256 BH_CRYPTD_ARGS=""
img_dir=/dev/shm
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0; shift;;
    --pool-pct) BH_POOL_PCT=$2; shift 2;;
    --pool-extra-mib) BH_POOL_EXTRA_MIB=$2; shift 2;;
    --cryptd-args) BH_CRYPTD_ARGS=$2; shift 2;;
    --img-dir) img_dir=$2; pass+=("$1" "$2"); shift 2;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0;;
    *) pass+=("$1"); shift;;
  esac
done

if [ "$build" = 1 ] && [ -z "${BH_BIN:-}" ]; then
  (cd "$repo" && swift build -c release) >&2
fi
export BH_BIN="${BH_BIN:-$repo/.build/release}"
. "$repo/bench/chain/lib.sh"
bh_need_binaries chain.sh
bh_need chain.sh nbdcopy

# Pool images live beside peers.sh's images (same filesystem), removed at exit.
mkdir -p "$img_dir"
export BH_POOL_DIR
BH_POOL_DIR=$(mktemp -d "$img_dir/bulkhead-chain.XXXXXX")
trap 'rm -rf "$BH_POOL_DIR"' EXIT

server="bulkhead=exec bash '$repo/bench/chain/peer-server.sh'"
bash "$peers" \
  --servers bulkhead,D2_qemu_luks_2hop,B_nbdkit_luks,R2_nbdkit \
  --ref D2_qemu_luks_2hop \
  --pairs bulkhead/D2_qemu_luks_2hop,bulkhead/B_nbdkit_luks,bulkhead/R2_nbdkit,B_nbdkit_luks/R2_nbdkit,D2_qemu_luks_2hop/R2_nbdkit \
  --no-precondition-custom --ready-timeout 900 \
  --server "$server" \
  "${pass[@]}"
