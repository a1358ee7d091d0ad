#!/usr/bin/env bash
# bench/wa.sh - write amplification and peak memory of bulkhead-cryptd.
#
#   bench/wa.sh wa  [--size 1G] [--cases LIST] [--storage nbdkit|storaged]
#   bench/wa.sh mem [--vsize 64G] [--runtime 20] [--records LIST]
#   common: [--dir DIR (default /dev/shm)] [--out FILE (default: stdout only)] [--no-build]
#
# wa: bytes cryptd writes to the storage domain per byte the consumer
#   (fio --ioengine=nbd) writes. Bytes are the wchar delta in /proc/PID/io
#   of the storage process: its pwrite(2)s to the pool image (replies go out
#   with send(2), which wchar does not count), so exact. The storage domain
#   is `nbdkit --filter=stats file POOL` (adds op and flush counts, written
#   when nbdkit exits) or, with --storage storaged, bulkhead-storaged.
#   Per case, on a fresh pool with one volume of --size:
#     idle: start cryptd, stop it (fixed cost of open + clean close);
#     work: start cryptd, run fio, stop cryptd (clean close: final commit).
#   WA = (work bytes - idle bytes) / fio bytes written.
#   Cases (comma list; default all):
#     r4k_16k       4k randwrite, FLUSH every 1000 writes, 16,000 writes (62.5 MiB), default checkpoints
#     r4k_16k_c4096 the same with --checkpoint-records 4096
#     r4k_160k      4k randwrite, FLUSH every 1000, 160,000 writes (625 MiB): crosses 65,536 records twice
#     s1m_end       1 MiB sequential writes over the whole volume, one FLUSH at the end
#     s1m_f64       1 MiB sequential writes over the whole volume, FLUSH every 64 writes
#   All at QD1: fio's --fsync=N at a higher iodepth sends far more flushes
#   than one per N writes (323 instead of 16 for 16,000 writes at QD32,
#   counted with nbdkit --filter=stats), and WA depends on flush frequency,
#   not on queue depth.
# mem: peak RSS (VmHWM) of cryptd serving one --vsize sparse volume (empty
#   tree) on bulkhead-storaged while fio does 4k randwrite QD32 with
#   --fsync=1000 (at QD32 fio flushes about every 50 writes, see above) for
#   --runtime seconds; once per --records value (cryptd --checkpoint-records;
#   "default" = the daemon's default).
# Environment: BH_BIN (binaries; default .build/release, built first),
#   BH_CRYPTD_WRAP (a command prefix for cryptd, e.g. 'env MALLOC_ARENA_MAX=1'
#   or 'setpriv --bounding-set -ipc_lock --inh-caps -ipc_lock' to run it
#   without CAP_IPC_LOCK, so its mlockall fails).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
user_bin=${BH_BIN:-}
export BH_BIN="${BH_BIN:-$repo/.build/release}"
. "$repo/bench/chain/lib.sh"

mode=${1:-}; [ $# -gt 0 ] && shift
SIZE=1G; VSIZE=64G; RUNTIME=20; DIR=/dev/shm; OUT=""; BUILD=1; STORAGE=nbdkit
CASES="r4k_16k,r4k_16k_c4096,r4k_160k,s1m_end,s1m_f64"
RECORDS="default,4096,1000"
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE=$2; shift 2;;
    --vsize) VSIZE=$2; shift 2;;
    --runtime) RUNTIME=$2; shift 2;;
    --cases) CASES=$2; shift 2;;
    --records) RECORDS=$2; shift 2;;
    --storage) STORAGE=$2; shift 2;;
    --dir) DIR=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --no-build) BUILD=0; shift;;
    *) echo "wa.sh: unknown option $1" >&2; exit 2;;
  esac
done
case "$mode" in wa|mem) ;; *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2;; esac
if [ "$BUILD" = 1 ] && [ -z "$user_bin" ]; then
  (cd "$repo" && swift build -c release) >&2
fi
for t in fio nbdkit nbdinfo jq; do command -v $t >/dev/null || { echo "wa.sh: missing $t" >&2; exit 1; }; done

to_bytes() { numfmt --from=iec-i "${1%B}" 2>/dev/null || numfmt --from=iec "${1%B}"; }
emit() { printf '%s\n' "$*"; if [ -n "$OUT" ]; then printf '%s\n' "$*" >> "$OUT"; fi; }

WORK=$(mktemp -d "$DIR/bulkhead-wa.XXXXXX")
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stats_field FILE OP FIELD: OP in read/write/trim/zero/flush; FIELD ops or bytes.
stats_field() {
  awk -v op="$2:" -v f="$3" '$1 == op {
      split($0, p, ","); sub(/^ +/, "", p[3]); split(p[3], q, " ")
      n = q[1]; u = q[2]; m = 1
      if (u == "KiB") m = 1024; else if (u == "MiB") m = 1048576; else if (u == "GiB") m = 1073741824; else if (u == "TiB") m = 1099511627776
      if (f == "ops") print $2; else printf "%.0f\n", n * m; found = 1 }
    END { if (!found) print 0 }' "$1"
}

# start_storage KIND IMG SOCK STATSFILE -> STORAGE_PID
start_storage() {
  rm -f "$3"
  if [ "$1" = nbdkit ]; then
    nbdkit -f -U "$3" --filter=stats file "$2" statsfile="$4" &
  else
    "$BH_BIN/bulkhead-storaged" --listen "unix:$3" --export "pool=$2" --log-level warning &
  fi
  STORAGE_PID=$!; PIDS+=("$STORAGE_PID")
  bh_wait_nbd "nbd+unix:///?socket=$3" 30 "$STORAGE_PID"
}
stop_pid() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
wchar() { awk '/^wchar:/{print $2}' "/proc/$1/io"; }

# start_cryptd DIR VOLUME EXTRA_ARGS -> CRYPTD_PID
start_cryptd() {
  # shellcheck disable=SC2086
  ${BH_CRYPTD_WRAP:-} "$BH_BIN/bulkhead-cryptd" --storage "nbd:unix:$1/st.sock" --key-file "$1/key" --state-dir "$1/state" \
    --serve-dir "$1/vols" --volume "$2" --log-level warning $3 2>>"$1/cryptd.log" &
  CRYPTD_PID=$!; PIDS+=("$CRYPTD_PID")
  bh_wait_nbd "nbd+unix:///?socket=$1/vols/$2.sock" 600 "$CRYPTD_PID"
}

# new_pool DIR VOLUME_BYTES POOL_BYTES: offline format + volume create on a sparse image.
new_pool() {
  mkdir -p "$1/state" "$1/vols"; bh_keyfile "$1/key"
  truncate -s "$3" "$1/pool.img"
  bh_format "$1/pool.img" "$1/key" "$1/state"
  bh_create "$1/pool.img" "$1/key" "$1/state" v "$2"
}

wa_case() {  # name fio-args cryptd-args
  local name=$1 fioargs=$2 cargs=$3 d="$WORK/$1" vbytes
  vbytes=$(to_bytes "$SIZE")
  bh_log "wa $name: fresh pool, volume $SIZE"
  new_pool "$d" "$vbytes" "$(bh_pool_bytes "$vbytes" 250 256)"
  local w0 w1 w2
  # idle phase
  start_storage "$STORAGE" "$d/pool.img" "$d/st.sock" "$d/idle.stats"
  w0=$(wchar "$STORAGE_PID")
  start_cryptd "$d" v "$cargs"; stop_pid "$CRYPTD_PID"
  w1=$(wchar "$STORAGE_PID")
  stop_pid "$STORAGE_PID"
  # work phase
  start_storage "$STORAGE" "$d/pool.img" "$d/st.sock" "$d/work.stats"
  start_cryptd "$d" v "$cargs"
  w2=$(wchar "$STORAGE_PID")
  local t0 t1
  t0=$(date +%s%N)
  # shellcheck disable=SC2086
  fio --name="$name" --ioengine=nbd --uri="nbd+unix:///?socket=$d/vols/v.sock" --size="$vbytes" \
      $fioargs --norandommap --randrepeat=0 --output-format=json --output="$d/fio.json" >/dev/null
  t1=$(date +%s%N)
  local hwm; hwm=$(bh_vmhwm "$CRYPTD_PID")
  stop_pid "$CRYPTD_PID"
  local w3; w3=$(wchar "$STORAGE_PID")
  stop_pid "$STORAGE_PID"
  local fio_w fio_ops fio_syncs secs
  fio_w=$(jq '.jobs[0].write.io_bytes' "$d/fio.json")
  fio_ops=$(jq '.jobs[0].write.total_ios' "$d/fio.json")
  fio_syncs=$(jq '.jobs[0].sync.total_ios // 0' "$d/fio.json")
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", (b-a)/1e9}')
  local dump; dump=$("$BH_BIN/bulkhead" dump "$d/pool.img" --key-file "$d/key" --state-dir "$d/state" 2>&1 || true)
  local gen recs
  gen=$(awk '/^Generation:/{print $2}' <<<"$dump"); recs=$(awk '/^Log records:/{print $3}' <<<"$dump")
  # Exact bytes: the storage process's wchar (pwrite to the image; both
  # servers send replies with send(2), which wchar does not count).
  local work_w=$((w3 - w2)) idle_w=$((w1 - w0)) extra=""
  if [ "$STORAGE" = nbdkit ]; then
    # Op counts from the stats filter (its byte figures are rounded to 3 digits).
    extra="storage_write_ops $(stats_field "$d/work.stats" write ops) storage_flushes $(stats_field "$d/work.stats" flush ops)"
    extra+=" storage_read_bytes $(stats_field "$d/work.stats" read bytes) stats_write_bytes_rounded $(stats_field "$d/work.stats" write bytes)"
    extra+=" idle_write_ops $(stats_field "$d/idle.stats" write ops)"
  fi
  emit "WA $name storage $STORAGE consumer_bytes $fio_w consumer_writes $fio_ops consumer_flushes $fio_syncs" \
       "storage_write_bytes $work_w storage_write_blocks $((work_w / 4096)) idle_write_bytes $idle_w $extra" \
       "wa $(awk -v w="$work_w" -v i="$idle_w" -v c="$fio_w" 'BEGIN{printf "%.4f", (w-i)/c}')" \
       "fio_seconds $secs cryptd_vmhwm_kib $hwm generation $gen log_records_since_checkpoint $recs"
  rm -rf "$d"
}

run_wa() {
  local c
  emit "META wa date $(date -Is) size $SIZE storage $STORAGE loadavg $(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,) commit $(git -C "$repo" rev-parse --short HEAD)"
  IFS=, read -r -a list <<<"$CASES"
  for c in "${list[@]}"; do
    case "$c" in
      r4k_16k) wa_case "$c" "--rw=randwrite --bs=4k --iodepth=1 --fsync=1000 --end_fsync=1 --io_size=$((16000 * 4096))" "";;
      r4k_16k_c4096) wa_case "$c" "--rw=randwrite --bs=4k --iodepth=1 --fsync=1000 --end_fsync=1 --io_size=$((16000 * 4096))" "--checkpoint-records 4096";;
      r4k_160k) wa_case "$c" "--rw=randwrite --bs=4k --iodepth=1 --fsync=1000 --end_fsync=1 --io_size=$((160000 * 4096))" "";;
      s1m_end) wa_case "$c" "--rw=write --bs=1M --iodepth=1 --end_fsync=1" "";;
      s1m_f64) wa_case "$c" "--rw=write --bs=1M --iodepth=1 --fsync=64" "";;
      *) echo "wa.sh: unknown case $c" >&2; exit 2;;
    esac
  done
}

run_mem() {
  local vbytes r d extra
  vbytes=$(to_bytes "$VSIZE")
  emit "META mem date $(date -Is) vsize $VSIZE runtime $RUNTIME loadavg $(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,) commit $(git -C "$repo" rev-parse --short HEAD)"
  IFS=, read -r -a list <<<"$RECORDS"
  for r in "${list[@]}"; do
    d="$WORK/mem-$r"; extra=""; [ "$r" = default ] || extra="--checkpoint-records $r"
    bh_log "mem records=$r: fresh pool, volume $VSIZE"
    new_pool "$d" "$vbytes" "$(bh_pool_bytes "$vbytes" 100 4096)"
    start_storage storaged "$d/pool.img" "$d/st.sock" ""
    start_cryptd "$d" v "$extra"
    local base; base=$(bh_vmrss "$CRYPTD_PID")
    # sample RSS once a second while fio runs
    ( while [ -e "/proc/$CRYPTD_PID" ]; do echo "$(date +%s) $(bh_vmrss "$CRYPTD_PID")"; sleep 1; done ) > "$d/rss.log" 2>/dev/null &
    local sampler=$!
    fio --name=mem --ioengine=nbd --uri="nbd+unix:///?socket=$d/vols/v.sock" --size="$vbytes" \
        --rw=randwrite --bs=4k --iodepth=32 --fsync=1000 --time_based --runtime="$RUNTIME" \
        --norandommap --randrepeat=0 --output-format=json --output="$d/fio.json" >/dev/null
    local hwm rss; hwm=$(bh_vmhwm "$CRYPTD_PID"); rss=$(bh_vmrss "$CRYPTD_PID")
    stop_pid "$CRYPTD_PID"; kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
    stop_pid "$STORAGE_PID"
    local ops iops maxs
    ops=$(jq '.jobs[0].write.total_ios' "$d/fio.json"); iops=$(jq '.jobs[0].write.iops | floor' "$d/fio.json")
    maxs=$(awk 'BEGIN{m=0} $2>m{m=$2} END{print m}' "$d/rss.log")
    local dump gen recs
    dump=$("$BH_BIN/bulkhead" dump "$d/pool.img" --key-file "$d/key" --state-dir "$d/state" 2>&1 || true)
    gen=$(awk '/^Generation:/{print $2}' <<<"$dump"); recs=$(awk '/^Log records:/{print $3}' <<<"$dump")
    # RSS every 5 s (KiB), to tell a plateau from growth
    local series; series=$(awk 'NR == 1 {t0 = $1} ($1 - t0) % 5 == 0 {printf "%s%d", (n++ ? "," : ""), $2}' "$d/rss.log")
    emit "MEM records $r vsize $VSIZE writes $ops iops $iops rss_start_kib $base rss_end_kib $rss vmhwm_kib $hwm" \
         "rss_max_sampled_kib $maxs generation $gen log_records_since_checkpoint $recs rss_every_5s_kib $series"
    rm -rf "$d"
  done
}

if [ "$mode" = wa ]; then run_wa; else run_mem; fi
