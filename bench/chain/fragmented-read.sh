#!/usr/bin/env bash
# bench/chain/fragmented-read.sh - 1 MiB sequential reads of a volume before
# and after random 4k overwrites scatter its blocks over the pool.
#
#   bench/chain/fragmented-read.sh [--runtime S] [--scatter S] [--dir DIR]
#                                  [--storaged-args ARGS] [--cryptd-args ARGS]
#
# On a fresh 4 GiB pool (in --dir, default /dev/shm) with one 1 GiB volume:
# fill it with 1 MiB writes, read it (1 MiB, QD4, --runtime s, default 4),
# overwrite random 4k blocks (QD32, --scatter s, default 4), read it again.
# After the overwrites a 1 MiB consumer READ maps to up to 256 storage
# READs; this is where session 3's stall showed (bench/CHAIN.md).
# Prints one line per phase: MB/s (or IOPS) and cryptd CPU seconds.
# BH_BIN: the directory of bulkhead, bulkhead-storaged, bulkhead-cryptd
# (default .build/release; build with swift build -c release).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${BH_BIN:-$repo/.build/release}
runtime=4; scatter=4; dir=/dev/shm; sargs=""; cargs=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runtime) runtime=$2; shift 2;;
    --scatter) scatter=$2; shift 2;;
    --dir) dir=$2; shift 2;;
    --storaged-args) sargs=$2; shift 2;;
    --cryptd-args) cargs=$2; shift 2;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0;;
    *) echo "fragmented-read.sh: unknown option $1" >&2; exit 2;;
  esac
done
for tool in fio "$bin/bulkhead" "$bin/bulkhead-storaged" "$bin/bulkhead-cryptd"; do
  command -v "$tool" >/dev/null || { echo "fragmented-read.sh: missing $tool" >&2; exit 1; }
done

work=$(mktemp -d "$dir/bh-frag.XXXXXX")
storaged=""; cryptd=""
cleanup() {
  for pid in $cryptd $storaged; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

wait_for_socket() {
  for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done
  echo "fragmented-read.sh: $1 never appeared" >&2; exit 1
}

truncate -s 4G "$work/pool.img"
head -c 32 /dev/urandom | base64 >"$work/key"
mkdir -p "$work/state" "$work/serve"
# shellcheck disable=SC2086 # word splitting of the extra arguments is wanted
"$bin/bulkhead-storaged" --export pool="$work/pool.img" --listen "unix:$work/storage.sock" $sargs \
  2>"$work/storaged.log" &
storaged=$!
wait_for_socket "$work/storage.sock"
pool="nbd:unix:$work/storage.sock"
common=(--key-file "$work/key" --state-dir "$work/state")
"$bin/bulkhead" format "$pool" "${common[@]}" --scrypt-log2n 12 --recovery-key-out "$work/recovery" >/dev/null
"$bin/bulkhead" volume create "$pool" v --size 1G "${common[@]}" >/dev/null
# shellcheck disable=SC2086
"$bin/bulkhead-cryptd" --storage "$pool" "${common[@]}" --serve-dir "$work/serve" --volume v $cargs \
  2>"$work/cryptd.log" &
cryptd=$!
wait_for_socket "$work/serve/v.sock"
uri="nbd+unix:///v?socket=$work/serve/v.sock"

cpu_seconds() { awk '{ print ($14 + $15) / 100 }' "/proc/$cryptd/stat"; }

# phase NAME FIO-ARGS...: runs fio, prints its rate and cryptd's CPU time.
phase() {
  local name=$1; shift
  local before after
  before=$(cpu_seconds)
  local terse
  terse=$(fio --name="$name" --ioengine=nbd --uri="$uri" --output-format=terse --terse-version=3 "$@")
  after=$(cpu_seconds)
  # terse v3: field 7 read bandwidth KiB/s, 8 read IOPS, 48 write KiB/s, 49 write IOPS.
  echo "$terse" | awk -F';' -v name="$name" -v cpu="$(awk -v a="$after" -v b="$before" 'BEGIN { print a - b }')" '$1 == "3" {
    if ($7 > 0) printf "%-22s %8.1f MB/s  %8.0f IOPS  cryptd CPU %.2f s\n", name, $7 * 1.024 / 1000, $8, cpu;
    else printf "%-22s %8.1f MB/s  %8.0f IOPS  cryptd CPU %.2f s\n", name, $48 * 1.024 / 1000, $49, cpu }'
}

phase fill --rw=write --bs=1M --iodepth=4 --size=1G
phase read-fresh --rw=read --bs=1M --iodepth=4 --size=1G --time_based --runtime="$runtime"
phase scatter-4k --rw=randwrite --bs=4k --iodepth=32 --size=1G --time_based --runtime="$scatter"
phase read-fragmented --rw=read --bs=1M --iodepth=4 --size=1G --time_based --runtime="$runtime"
if grep -q "did not answer in time" "$work/cryptd.log"; then
  echo "fragmented-read.sh: the storage connection timed out (cryptd.log):" >&2
  grep "did not answer" "$work/cryptd.log" | head -3 >&2
  exit 1
fi
