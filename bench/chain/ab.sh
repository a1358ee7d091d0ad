#!/usr/bin/env bash
# bench/chain/ab.sh - cryptd CPU per I/O of two builds, alternated on one pool.
#
#   bench/chain/ab.sh ROUNDS SECONDS BIN_A BIN_B
#
# One pool (512 MiB volume filled with random data) on /dev/shm, one
# storaged (--inline, from BIN_A); per round, cryptd of BIN_A then of BIN_B
# serves 4k random reads then 4k random writes (fio --ioengine=nbd, QD32,
# SECONDS measured after 1 s). Prints one line per cell:
#   AB round R A|B randread|randwrite iops N cryptd_us_per_io U load L
# (cryptd's utime+stime over the window / I/Os in it). Alternating in the
# same conditions is what makes two builds comparable on busy cores; each
# cryptd starts with a cold node cache, as in the peers runs.
set -euo pipefail
[ $# -eq 4 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2; }
ROUNDS=$1; SECS=$2; A=$3; B=$4
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export BH_BIN=$A
. "$repo/bench/chain/lib.sh"
W=$(mktemp -d /dev/shm/cpu-ab.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
vbytes=$((512 << 20))
mkdir -p "$W/state" "$W/vols"; bh_keyfile "$W/key"
bh_pool_image "$W/pool.img" "$(bh_pool_bytes "$vbytes" 300 256)"
bh_format "$W/pool.img" "$W/key" "$W/state"
bh_create "$W/pool.img" "$W/key" "$W/state" v "$vbytes"
"$A/bulkhead-storaged" --listen "unix:$W/st.sock" --export "pool=$W/pool.img" --log-level warning &
SP=$!; PIDS+=("$SP")
bh_wait_nbd "nbd+unix:///?socket=$W/st.sock" 30
uri="nbd+unix:///?socket=$W/vols/v.sock"
start_cryptd() {
  "$1/bulkhead-cryptd" --storage "nbd:unix:$W/st.sock" --key-file "$W/key" --state-dir "$W/state" --serve-dir "$W/vols" --log-level warning &
  CP=$!
  bh_wait_nbd "$uri" 60
}
stop_cryptd() { kill -TERM "$CP"; wait "$CP" || true; rm -f "$W/vols/v.sock"; }
start_cryptd "$A"
head -c "$vbytes" /dev/urandom | nbdcopy --flush - "$uri"
stop_cryptd
hz=$(getconf CLK_TCK)
for r in $(seq "$ROUNDS"); do
  for tag in A B; do
    bin=$A; [ $tag = B ] && bin=$B
    start_cryptd "$bin"
    for load in randread randwrite; do
      fio --name=x --ioengine=nbd --uri="$uri" --size="$vbytes" --rw=$load --bs=4k --iodepth=32 --time_based --runtime=$((SECS+1)) \
          --norandommap --randrepeat=0 --output-format=json --output="$W/f.json" >/dev/null &
      FP=$!
      sleep 1
      s=$(awk '{print $14 + $15}' "/proc/$CP/stat"); t0=$(date +%s%N)
      sleep "$SECS"
      e=$(awk '{print $14 + $15}' "/proc/$CP/stat"); t1=$(date +%s%N)
      wait "$FP"
      iops=$(jq '.jobs[0].read.iops + .jobs[0].write.iops | floor' "$W/f.json")
      ios=$(( iops * (t1 - t0) / 1000000000 ))
      echo "AB round $r $tag $load iops $iops cryptd_us_per_io $(awk -v d=$((e - s)) -v hz=$hz -v n=$ios 'BEGIN{printf "%.1f", d * 1e6 / hz / n}') load $(cut -d' ' -f1 /proc/loadavg)"
    done
    stop_cryptd
  done
done
