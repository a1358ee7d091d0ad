#!/usr/bin/env bash
# bench/chain/profile.sh - CPU profile of bulkhead-cryptd (and storaged) under fio.
#
#   bench/chain/profile.sh [--size 1G] [--seconds 15] [--freq 499] [--call-graph dwarf|fp]
#                          [--loads randread4k,randwrite4k] [--outdir DIR] [--dir /dev/shm]
#
# Sets up a fresh pool on a sparse image in --dir, one volume of --size,
# filled with random data (nbdcopy, 32 MiB requests, FLUSH at the end, so the
# volume is fully mapped and checkpointed), then for each load runs fio
# (--ioengine=nbd, QD32) and `perf record -g` on cryptd and storaged for
# --seconds while it runs. Writes per load:
#   LOAD.perf.data, LOAD.self.txt (self time by symbol, demangled),
#   LOAD.children.txt (inclusive time), LOAD.dso.txt, LOAD.fio.json,
#   LOAD.cryptd-self.txt / LOAD.cryptd-children.txt (cryptd only, % of its samples)
# Loads: randread4k = 4k random reads; randwrite4k = 4k random writes with a
# FLUSH every 1000 writes (--fsync=1000); seqread1m, seqwrite1m = 1 MiB
# sequential reads or writes at QD4. BH_STORAGED_ARGS (environment) is
# added to storaged's arguments, e.g. --inline.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
export BH_BIN="${BH_BIN:-$repo/.build/release}"
. "$here/lib.sh"

SIZE=1G; SECONDS_=15; FREQ=499; CG=dwarf; LOADS="randread4k,randwrite4k"; OUTDIR=""; DIR=/dev/shm
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE=$2; shift 2;;
    --seconds) SECONDS_=$2; shift 2;;
    --freq) FREQ=$2; shift 2;;
    --call-graph) CG=$2; shift 2;;
    --loads) LOADS=$2; shift 2;;
    --outdir) OUTDIR=$2; shift 2;;
    --dir) DIR=$2; shift 2;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0;;
    *) echo "profile.sh: unknown option $1" >&2; exit 2;;
  esac
done
bh_need profile.sh perf fio nbdcopy nbdinfo jq
perf stat -e task-clock true >/dev/null 2>&1 || { echo "profile.sh: perf cannot count (perf_event_paranoid?)" >&2; exit 1; }
[ -n "$OUTDIR" ] || OUTDIR="/tmp/bulkhead-profile-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUTDIR"

W=$(mktemp -d "$DIR/bulkhead-prof.XXXXXX")
PIDS=()
cleanup() {
  bh_stop_all "${PIDS[@]}"
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

vbytes=$(numfmt --from=iec "${SIZE%B}")
mkdir -p "$W/state" "$W/vols"; bh_keyfile "$W/key"
bh_pool_image "$W/pool.img" "$(bh_pool_bytes "$vbytes" 300 256)"
bh_format "$W/pool.img" "$W/key" "$W/state"
bh_create "$W/pool.img" "$W/key" "$W/state" v "$vbytes"
# shellcheck disable=SC2086
"$BH_BIN/bulkhead-storaged" --listen "unix:$W/st.sock" --export "pool=$W/pool.img" --log-level warning ${BH_STORAGED_ARGS:-} &
SP=$!; PIDS+=("$SP")
bh_wait_nbd "nbd+unix:///?socket=$W/st.sock" 30
"$BH_BIN/bulkhead-cryptd" --storage "nbd:unix:$W/st.sock" --key-file "$W/key" --state-dir "$W/state" \
  --serve-dir "$W/vols" --log-level warning &
CP=$!; PIDS+=("$CP")
uri="nbd+unix:///?socket=$W/vols/v.sock"
bh_wait_nbd "$uri" 60
bh_log "fill $SIZE with random data"
head -c "$vbytes" /dev/urandom > "$W/random.img"
t0=$(date +%s%N)
nbdcopy --flush --request-size=$((32 * 1048576)) "$W/random.img" "$uri"
bh_log "filled in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
rm -f "$W/random.img"

{
  echo "date $(date -Is)"; echo "commit $(git -C "$repo" rev-parse --short HEAD)"; echo "bin $BH_BIN"
  echo "size $SIZE seconds $SECONDS_ freq $FREQ call_graph $CG"
  echo "loadavg $(cut -d' ' -f1-3 /proc/loadavg)"; echo "cryptd_pid $CP storaged_pid $SP"
} > "$OUTDIR/meta.txt"

demangle() { swift demangle --simplified 2>/dev/null || cat; }
IFS=, read -r -a loads <<<"$LOADS"
for load in "${loads[@]}"; do
  case "$load" in
    randread4k) fioargs="--rw=randread --bs=4k";;
    randwrite4k) fioargs="--rw=randwrite --bs=4k --fsync=1000";;
    seqread1m) fioargs="--rw=read --bs=1M";;
    seqwrite1m) fioargs="--rw=write --bs=1M";;
    *) echo "profile.sh: unknown load $load" >&2; exit 2;;
  esac
  bh_log "profile $load: fio for $((SECONDS_ + 4)) s, perf for $SECONDS_ s"
  # shellcheck disable=SC2086
  fio --name="$load" --ioengine=nbd --uri="$uri" --size="$vbytes" $fioargs --iodepth="$([ "${load%1m}" != "$load" ] && echo 4 || echo 32)" --time_based \
      --runtime=$((SECONDS_ + 4)) --norandommap --randrepeat=0 --output-format=json --output="$OUTDIR/$load.fio.json" >/dev/null &
  FP=$!
  sleep 2
  s0=$(awk '{print $14 + $15}' "/proc/$CP/stat"); s1=$(awk '{print $14 + $15}' "/proc/$SP/stat")
  cg=(--call-graph "$CG"); [ "$CG" = dwarf ] && cg=(--call-graph dwarf,16384)
  perf record -q -F "$FREQ" "${cg[@]}" -p "$CP,$SP" -o "$OUTDIR/$load.perf.data" -- sleep "$SECONDS_" 2>"$OUTDIR/$load.perf.err" || true
  e0=$(awk '{print $14 + $15}' "/proc/$CP/stat"); e1=$(awk '{print $14 + $15}' "/proc/$SP/stat")
  wait "$FP"
  hz=$(getconf CLK_TCK)
  iops=$(jq '.jobs[0].read.iops + .jobs[0].write.iops | floor' "$OUTDIR/$load.fio.json")
  echo "$load iops $iops cryptd_cpu_pct $(( (e0 - s0) * 100 / hz / SECONDS_ )) storaged_cpu_pct $(( (e1 - s1) * 100 / hz / SECONDS_ ))" \
    | tee -a "$OUTDIR/meta.txt"
  perf report -i "$OUTDIR/$load.perf.data" --no-children --sort comm,sym --stdio --percent-limit 0.3 -g none 2>/dev/null \
    | demangle > "$OUTDIR/$load.self.txt"
  perf report -i "$OUTDIR/$load.perf.data" --children --sort comm,sym --stdio --percent-limit 1 -g none 2>/dev/null \
    | demangle > "$OUTDIR/$load.children.txt"
  perf report -i "$OUTDIR/$load.perf.data" --no-children --sort comm,dso --stdio -g none 2>/dev/null \
    > "$OUTDIR/$load.dso.txt"
  # cryptd alone: percentages of cryptd's own samples (`|| true`: head
  # closes the pipe early, which pipefail would count as a failure)
  perf report -i "$OUTDIR/$load.perf.data" --comm bulkhead-cryptd --no-children --sort sym --stdio -g none 2>/dev/null \
    | demangle | grep -v '^#' | grep -v '^$' | head -40 > "$OUTDIR/$load.cryptd-self.txt" || true
  perf report -i "$OUTDIR/$load.perf.data" --comm bulkhead-cryptd --children --sort sym --stdio -g none 2>/dev/null \
    | demangle | grep -v '^#' | grep -v '^$' | head -150 > "$OUTDIR/$load.cryptd-children.txt" || true
done
bh_log "profiles in $OUTDIR"
