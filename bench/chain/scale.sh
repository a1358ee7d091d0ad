#!/usr/bin/env bash
# bench/chain/scale.sh - how the chain's cost grows: volume size, volumes
# served at once, queue depth (issue 7). Bulkhead alone, no peers.
#
#   bench/chain/scale.sh [--reps 3] [--runtime 5] [--small 1G] [--big 256G]
#                        [--multi 8] [--multi-size 256M] [--pool-size auto]
#                        [--dir /dev/shm] [--cryptd-args ARGS] [--out FILE]
#                        [--cells 'size-*,qd1-*'] [--profile DIR]
#
# One pool on a sparse image in --dir, served by one bulkhead-storaged and
# one bulkhead-cryptd (all volumes). Volumes:
#   small   --small bytes, fully written (1 MiB sequential writes, FLUSH)
#   big     --big bytes, sparse: the same amount of data as small, written as
#           N = small/1 MiB chunks of 1 MiB spread evenly over the volume
#           (chunk i at i * big/N)
#   m0..m7  --multi volumes of --multi-size, fully written
# The pool is thin: by default (--pool-size auto) twice what is written plus
# 2 GiB, not the 256 GiB the big volume could grow to (the engine allocates
# next-fit, so on tmpfs a pool of the volume's full size would fill memory
# with stale blocks). With only 2 GiB over the 4 GiB written, 1 MiB
# overwrites at ~500 MB/s without FLUSH ran out of space (ENOSPC) in a run
# on 2026-11-28.
#
# Cells (each one fio --ioengine=nbd run; cells interleaved, order rotated
# every rep; the daemons keep running between cells):
#   size-small-W, size-big-W  W = randread4k, randwrite4k (QD32), seqread1m,
#       seqwrite1m (QD4), on the small and the big volume with the same access
#       pattern over the same amount of data: random 4 KiB requests uniform
#       over the N chunks (a generated fio iolog, replayed without stalls),
#       and 1 MiB sequential requests from chunk to chunk (fio rw=read:SKIP).
#       Only the spread differs: the big volume's tree is deeper and its
#       chunks share no tree nodes below the top.
#   vol1-W, vol8-W  the same four workloads (plain fio random/sequential over
#       the whole volume) on m0 alone and on m0..m7 at once (one fio job and
#       one NBD connection per volume, each at the workload's queue depth;
#       figures are the sum over the volumes, fio --group_reporting).
#   qdQ-W  randread4k and randwrite4k on small at QD1, QD8 and QD32.
# --cells runs only the cells matching one of the comma-separated shell
# patterns (e.g. 'size-*' for table E; with no vol* cell, --multi defaults
# to 0 so m0..m7 are neither created nor filled). --profile DIR records
# cryptd with perf (frame pointers) during each cell's fio run and writes
# DIR/<cell>-<rep>.perf.data and DIR/<cell>-<rep>.self.txt (self time by
# symbol, demangled).
# Output lines (stdout and --out):
#   SCALE <cell> <rep> <metric> <value>   metrics: iops MBps lat_mean_us
#     lat_p99_us crypt_cpu_us_per_io srv_cpu_us_per_io (cryptd + storaged
#     CPU time during the fio run / I/Os) cryptd_rss_kib
#   SCALEMETA <key> <value...>
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
export BH_BIN="${BH_BIN:-$repo/.build/release}"
. "$here/lib.sh"

REPS=3; RUNTIME=5; SMALL=1G; BIG=256G; MULTI=""; MSIZE=256M; POOL=auto; DIR=/dev/shm; CARGS=""; OUT=""
CELLPATS="*"; PROFILE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS=$2; shift 2;;
    --runtime) RUNTIME=$2; shift 2;;
    --small) SMALL=$2; shift 2;;
    --big) BIG=$2; shift 2;;
    --multi) MULTI=$2; shift 2;;
    --multi-size) MSIZE=$2; shift 2;;
    --pool-size) POOL=$2; shift 2;;
    --dir) DIR=$2; shift 2;;
    --cryptd-args) CARGS=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --cells) CELLPATS=$2; shift 2;;
    --profile) PROFILE=$2; shift 2;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0;;
    *) echo "scale.sh: unknown option $1" >&2; exit 2;;
  esac
done
cell_selected() {  # name -> 0 if it matches one of --cells
  local p pats
  # Split without pathname expansion: a pattern such as '*' must not match files.
  IFS=, read -r -a pats <<<"$CELLPATS"
  for p in "${pats[@]}"; do
    # shellcheck disable=SC2254
    case "$1" in $p) return 0;; esac
  done
  return 1
}
if [ -z "$MULTI" ]; then
  MULTI=0
  for c in vol1 vol8; do for w in randread4k randwrite4k seqread1m seqwrite1m; do
    if cell_selected "$c-$w"; then MULTI=8; fi
  done; done
fi
[ -z "$PROFILE" ] || { bh_need scale.sh perf; mkdir -p "$PROFILE"; }
bh_need scale.sh fio nbdinfo jq awk
for b in bulkhead bulkhead-storaged bulkhead-cryptd; do
  [ -x "$BH_BIN/$b" ] || { echo "scale.sh: missing $BH_BIN/$b" >&2; exit 1; }
done

to_bytes() { numfmt --from=iec-i "${1%B}" 2>/dev/null || numfmt --from=iec "${1%B}"; }
emit() { printf '%s\n' "$*"; if [ -n "$OUT" ]; then printf '%s\n' "$*" >> "$OUT"; fi; }
MiB=1048576
small_b=$(to_bytes "$SMALL"); big_b=$(to_bytes "$BIG"); m_b=$(to_bytes "$MSIZE")
chunks=$((small_b / MiB))
stride=$((big_b / chunks / MiB * MiB))
[ "$chunks" -ge 1 ] && [ $((small_b % MiB)) = 0 ] || { echo "scale.sh: --small must be a multiple of 1 MiB" >&2; exit 2; }
[ "$stride" -ge "$MiB" ] || { echo "scale.sh: --big must be at least --small" >&2; exit 2; }
if [ "$POOL" = auto ]; then pool_b=$((2 * (2 * small_b + MULTI * m_b) + 2048 * MiB)); else pool_b=$(to_bytes "$POOL"); fi
pool_b=$((pool_b / 4096 * 4096))

W=$(mktemp -d "$DIR/bulkhead-scale.XXXXXX")
PIDS=()
cleanup() {
  bh_stop_all "${PIDS[@]}"
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

emit "SCALEMETA date $(date -Is) loadavg $(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,)"
emit "SCALEMETA config small $SMALL big $BIG chunks $chunks stride_bytes $stride multi $MULTI multi_size $MSIZE pool_bytes $pool_b dir $DIR reps $REPS runtime $RUNTIME cryptd_args '${CARGS}'"

bh_log "scale: pool of $pool_b bytes in $W; volumes small ($SMALL), big ($BIG), m0..m$((MULTI - 1)) ($MSIZE)"
mkdir -p "$W/state" "$W/vols"; bh_keyfile "$W/key"
bh_pool_image "$W/pool.img" "$pool_b"
bh_format "$W/pool.img" "$W/key" "$W/state"
bh_create "$W/pool.img" "$W/key" "$W/state" small "$small_b"
bh_create "$W/pool.img" "$W/key" "$W/state" big "$big_b"
for ((i = 0; i < MULTI; i++)); do bh_create "$W/pool.img" "$W/key" "$W/state" "m$i" "$m_b"; done

"$BH_BIN/bulkhead-storaged" --listen "unix:$W/st.sock" --export "pool=$W/pool.img" --log-level warning &
SP=$!; PIDS+=("$SP")
bh_wait_nbd "nbd+unix:///?socket=$W/st.sock" 30 "$SP"
# shellcheck disable=SC2086
"$BH_BIN/bulkhead-cryptd" --storage "nbd:unix:$W/st.sock" --key-file "$W/key" --state-dir "$W/state" \
  --serve-dir "$W/vols" --retry-window 1 --log-level warning $CARGS 2>>"$W/cryptd.log" &
CP=$!; PIDS+=("$CP")
uri() { echo "nbd+unix:///?socket=$W/vols/$1.sock"; }
bh_wait_nbd "$(uri small)" 120 "$CP"
for v in big $(seq -f 'm%g' 0 $((MULTI - 1))); do bh_wait_nbd "$(uri "$v")" 60 "$CP"; done
emit "SCALEMETA cryptd_rss_kib_idle $(bh_vmrss "$CP")"

# Fill: small and m* fully, big chunk by chunk; FLUSH at the end of each.
fill() {  # volume span skip (io_size: with a skip, fio would wrap around and write span bytes)
  local rw=write; [ "$3" -gt 0 ] && rw="write:$3"
  fio --name=fill --ioengine=nbd --uri="$(uri "$1")" --rw="$rw" --bs=1M --iodepth=4 --size="$2" \
      --io_size=$(( $2 / ($3 + MiB) * MiB )) \
      --end_fsync=1 --output-format=json --output="$W/fill.json" >/dev/null
  jq -e '.jobs[0].error == 0' "$W/fill.json" >/dev/null
}
t0=$(date +%s)
fill small "$small_b" 0
fill big "$((chunks * stride))" $((stride - MiB))
for ((i = 0; i < MULTI; i++)); do fill "m$i" "$m_b" 0; done
bh_log "scale: filled in $(( $(date +%s) - t0 )) s"
emit "SCALEMETA cryptd_rss_kib_after_fill $(bh_vmrss "$CP")"

# Random 4 KiB iologs over the chunks of small and big (same random
# sequence for both; enough requests for 60k IOPS over the runtime).
# Offsets are printed with %.0f: mawk's %d clamps to 2^31 - 1, which turned
# every big-volume offset past 2 GiB into the same unaligned one (before
# 2026-11-29 the size-big 4k cells measured one hot, read-modify-written
# block pair, not a random spread).
iolog() {  # volume stride op file
  local n=$((60000 * RUNTIME))
  { printf 'fio version 2 iolog\nnbd add\nnbd open\n'
    awk -v n="$n" -v c="$chunks" -v s="$2" -v op="$3" 'BEGIN { srand(7)
      for (i = 0; i < n; i++) printf "nbd %s %.0f 4096\n", op, int(rand() * c) * s + int(rand() * 256) * 4096 }'
    printf 'nbd close\n'; } > "$4"
}
for v in small big; do
  s=$MiB; [ "$v" = big ] && s=$stride
  iolog "$v" "$s" read "$W/$v-read.iolog"; iolog "$v" "$s" write "$W/$v-write.iolog"
done

# cell NAME -> fio arguments (global options, then one job per volume)
cell_args() {
  local name=$1 kind wl vol rw bs qd
  kind=${name%%-*}; wl=${name##*-}
  case "$wl" in
    randread4k) rw=randread; bs=4k; qd=32;;
    randwrite4k) rw=randwrite; bs=4k; qd=32;;
    seqread1m) rw=read; bs=1M; qd=4;;
    seqwrite1m) rw=write; bs=1M; qd=4;;
  esac
  local common=(--ioengine=nbd --bs="$bs" --output-format=json --group_reporting)
  case "$kind" in
    size)
      vol=${name#size-}; vol=${vol%%-*}
      local s=$MiB; [ "$vol" = big ] && s=$stride
      if [ "$bs" = 4k ]; then
        ARGS=("${common[@]}" --iodepth="$qd" --read_iolog="$W/$vol-${rw#rand}.iolog" --replay_no_stall=1
              --runtime="$RUNTIME" --name="$name" --uri="$(uri "$vol")")
      else
        local skip=$((s - MiB)) r=$rw; [ "$skip" -gt 0 ] && r="$rw:$skip"
        ARGS=("${common[@]}" --iodepth="$qd" --rw="$r" --size=$((chunks * s)) --time_based --runtime="$RUNTIME"
              --name="$name" --uri="$(uri "$vol")")
      fi;;
    vol1|vol8)
      local n=1 i; [ "$kind" = vol8 ] && n=$MULTI
      ARGS=("${common[@]}" --iodepth="$qd" --rw="$rw" --time_based --runtime="$RUNTIME" --norandommap --randrepeat=0)
      for ((i = 0; i < n; i++)); do ARGS+=(--name="$name-m$i" --uri="$(uri "m$i")"); done;;
    qd*)
      ARGS=("${common[@]}" --iodepth="${kind#qd}" --rw="$rw" --time_based --runtime="$RUNTIME" --norandommap --randrepeat=0
            --name="$name" --uri="$(uri small)");;
  esac
}

ALL=()
for v in small big; do for w in randread4k randwrite4k seqread1m seqwrite1m; do ALL+=("size-$v-$w"); done; done
for k in vol1 vol8; do for w in randread4k randwrite4k seqread1m seqwrite1m; do ALL+=("$k-$w"); done; done
for q in 1 8 32; do for w in randread4k randwrite4k; do ALL+=("qd$q-$w"); done; done
CELLS=()
for c in "${ALL[@]}"; do if cell_selected "$c"; then CELLS+=("$c"); fi; done
[ ${#CELLS[@]} -gt 0 ] || { echo "scale.sh: --cells '$CELLPATS' selects no cell" >&2; exit 2; }

hz=$(getconf CLK_TCK)
run_cell() {  # name rep
  local name=$1 rep=$2 f="$W/fio.json" c0 s0 c1 s1 rc=0
  cell_args "$name"
  local perfpid=""
  if [ -n "$PROFILE" ]; then
    perf record -q -g --call-graph fp -p "$CP" -o "$PROFILE/$name-$rep.perf.data" -- sleep "$RUNTIME" \
      2>"$PROFILE/$name-$rep.perf.err" &
    perfpid=$!
  fi
  c0=$(bh_ticks "$CP"); s0=$(bh_ticks "$SP")
  timeout $((RUNTIME + 120)) fio "${ARGS[@]}" --output="$f" >/dev/null 2>>"$W/fio.err" || rc=$?
  if [ -n "$perfpid" ]; then
    wait "$perfpid" || true
    perf report -i "$PROFILE/$name-$rep.perf.data" --no-children --sort sym --stdio -g none --percent-limit 0.3 2>/dev/null \
      | swift demangle --simplified > "$PROFILE/$name-$rep.self.txt" || true
  fi
  c1=$(bh_ticks "$CP"); s1=$(bh_ticks "$SP")
  kill -0 "$CP" 2>/dev/null || { echo "scale.sh: cryptd exited (log: $(tail -3 "$W/cryptd.log"))" >&2; exit 1; }
  if [ $rc != 0 ] || [ "$(jq '.jobs[0].error' "$f" 2>/dev/null || echo 1)" != 0 ]; then
    emit "SCALE $name $rep error 1"; tail -3 "$W/fio.err" >&2 || true; return
  fi
  jq -r --arg c "$name" --arg r "$rep" --argjson dc $((c1 - c0)) --argjson ds $((s1 - s0)) --argjson hz "$hz" '
    .jobs[0] as $j
    | (if $j.read.io_bytes > 0 then $j.read else $j.write end) as $d
    | ($j.read.total_ios + $j.write.total_ios) as $ios
    | "SCALE \($c) \($r) iops \($j.read.iops + $j.write.iops | floor)",
      "SCALE \($c) \($r) MBps \(($j.read.bw_bytes + $j.write.bw_bytes) / 1e6 * 10 | floor / 10)",
      "SCALE \($c) \($r) lat_mean_us \($d.lat_ns.mean / 1000 * 10 | floor / 10)",
      "SCALE \($c) \($r) lat_p99_us \(($d.clat_ns.percentile["99.000000"] // 0) / 1000 | floor)",
      (if $ios > 0 then
        "SCALE \($c) \($r) crypt_cpu_us_per_io \($dc / $hz * 1e6 / $ios * 100 | floor / 100)",
        "SCALE \($c) \($r) srv_cpu_us_per_io \(($dc + $ds) / $hz * 1e6 / $ios * 100 | floor / 100)"
       else empty end)' "$f" | while read -r line; do emit "$line"; done
  emit "SCALE $name $rep cryptd_rss_kib $(bh_vmrss "$CP")"
}

n=${#CELLS[@]}
for ((rep = 1; rep <= REPS; rep++)); do
  for ((k = 0; k < n; k++)); do
    name=${CELLS[$(( (k + (rep - 1) * 5) % n ))]}
    bh_log "scale rep $rep/$REPS $name"
    run_cell "$name" "$rep"
  done
done
emit "SCALEMETA cryptd_vmhwm_kib $(bh_vmhwm "$CP") cryptd_rss_kib_end $(bh_vmrss "$CP")"
emit "SCALEMETA loadavg_end $(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,)"
